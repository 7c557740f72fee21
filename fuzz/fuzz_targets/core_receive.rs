//! The causal core against arbitrary batches from a peer: decode a list of
//! batches, hand each to `Core::receive` of node1 in a cluster of three, and
//! check that nothing panics, that a refused batch changes nothing, and that
//! what is applied and buffered stays consistent.
#![no_main]

use kvnode::core::{Core, Limits};
use kvnode::storage::MemStore;
use libfuzzer_sys::fuzz_target;
use vclock_proto::EventBatch;

fuzz_target!(|data: &[u8]| {
    let Ok(batches) = serde_json::from_slice::<Vec<EventBatch>>(data) else {
        return;
    };
    let nodes = ["node1", "node2", "node3"].map(String::from).to_vec();
    let mut core = Core::new(
        "node1".into(),
        nodes,
        MemStore::new(),
        Limits {
            max_buffered: 8,
            ..Limits::default()
        },
    )
    .expect("a core over an empty store");
    for batch in batches {
        let applied = core.applied().clone();
        let buffered = core.buffered();
        match core.receive(batch.events) {
            Ok(receipt) => {
                core.commit().expect("the memory store commits");
                assert!(core.applied().covers(&applied), "applied went back");
                assert!(core.buffered() <= 8, "the buffer grew past its bound");
                for dot in &receipt.delivered {
                    assert!(core.applied().contains(&dot.origin, dot.seq));
                }
            }
            Err(_) => {
                assert_eq!(core.applied(), &applied, "a refused batch moved applied");
                assert_eq!(core.buffered(), buffered, "a refused batch was buffered");
            }
        }
    }
});
