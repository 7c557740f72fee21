//! Decoding a `VClock` from arbitrary bytes: no panic, and a lossless round trip.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vclock_proto::VClock;

fuzz_target!(|data: &[u8]| {
    if let Some(clock) = causal_kv_fuzz::round_trip::<VClock>(data) {
        // The operations a node runs on clocks it receives: total, no panic,
        // and the laws hold against the clock itself and the empty clock.
        let empty = VClock::new();
        assert!(clock.covers(&clock) && clock.covers(&empty));
        assert_eq!(clock.compare(&clock), vclock_proto::Causality::Equal);
        let mut merged = clock.clone();
        merged.merge(&empty);
        assert_eq!(merged, clock);
        let mut met = clock.clone();
        met.meet(&empty);
        assert!(clock.covers(&met));
        let _ = clock.to_string();
    }
});
