//! Decoding a `Event` from arbitrary bytes: no panic, and a lossless round trip.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vclock_proto::Event;

fuzz_target!(|data: &[u8]| {
    if let Some(event) = causal_kv_fuzz::round_trip::<Event>(data) {
        assert_eq!(event.timestamp().get(&event.origin), event.seq);
        assert!(event.timestamp().covers(&event.deps) || event.deps.get(&event.origin) > event.seq);
    }
});
