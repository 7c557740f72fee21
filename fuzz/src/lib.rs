//! What every fuzz target checks, for one message type `T`: decoding arbitrary
//! bytes never panics, and a message that decodes encodes again to bytes that
//! decode to the same message (so a node never stores or forwards something
//! it cannot read back).

use std::fmt::Debug;

use serde::de::DeserializeOwned;
use serde::Serialize;

/// Decodes `data` as `T`; when it decodes, checks `decode(encode(m)) == m`.
pub fn round_trip<T>(data: &[u8]) -> Option<T>
where
    T: DeserializeOwned + Serialize + PartialEq + Debug,
{
    let message: T = serde_json::from_slice(data).ok()?;
    let encoded = serde_json::to_vec(&message).expect("a decoded message encodes");
    let again: T = serde_json::from_slice(&encoded).unwrap_or_else(|e| {
        panic!(
            "{message:?} encodes as {:?}, which does not decode: {e}",
            String::from_utf8_lossy(&encoded)
        )
    });
    assert_eq!(message, again, "decode(encode(m)) differs from m");
    Some(message)
}
