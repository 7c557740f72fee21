//! Decoding a `WriteRequest` from arbitrary bytes: no panic, and a lossless round trip.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vclock_proto::WriteRequest;

fuzz_target!(|data: &[u8]| {
    causal_kv_fuzz::round_trip::<WriteRequest>(data);
});
