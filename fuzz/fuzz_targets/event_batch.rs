//! Decoding a `EventBatch` from arbitrary bytes: no panic, and a lossless round trip.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vclock_proto::EventBatch;

fuzz_target!(|data: &[u8]| {
    if let Some(batch) = causal_kv_fuzz::round_trip::<EventBatch>(data) {
        for event in &batch.events {
            // What a receiver computes from every event it decodes.
            let timestamp = event.timestamp();
            assert_eq!(timestamp.get(&event.origin), event.seq);
            let _ = event.dot().to_string();
        }
    }
});
