//! Decoding a `PutRequest` from arbitrary bytes: no panic, and a lossless round trip.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vclock_proto::PutRequest;

fuzz_target!(|data: &[u8]| {
    causal_kv_fuzz::round_trip::<PutRequest>(data);
});
