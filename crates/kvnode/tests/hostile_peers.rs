//! Property tests of the causal core against peers that lie: junk copies of
//! real dots whose dependencies never arrive, events from far in an origin's
//! future, second copies of applied dots with other content, and clocks that
//! claim writes never made, mixed at random into an honest history delivered
//! in random order with duplicates.
//!
//! Whatever the mix, the core never panics, every honest write is applied once
//! its sender has sent it again as a link does, the state ends exactly as with
//! the honest history alone, and every lie that can be told from the truth (a
//! second copy of an applied dot, a clock claiming writes never made) is
//! refused. A junk copy that comes first cannot be told from the truth until
//! the real one is deliverable; then the real one wins.

use std::sync::Arc;

use kvnode::core::{Core, CoreError, Limits};
use kvnode::storage::MemStore;
use proptest::prelude::*;
use vclock_proto::{Event, Op, Seq, VClock, Value};

const NODES: [&str; 3] = ["a", "b", "c"];

fn core(id: &str) -> Core<MemStore> {
    let nodes = NODES.map(String::from).to_vec();
    Core::new(id.into(), nodes, MemStore::new(), Limits::default()).unwrap()
}

/// What the hostile peer does at one step.
#[derive(Clone, Debug)]
enum Lie {
    /// A copy of honest event `i` whose dependencies name writes of the other
    /// origin that will never exist.
    Junk(usize),
    /// A copy of honest event `i` with another value, sent only once the
    /// receiver has applied the real one.
    Forged(usize),
    /// An event of `a` far beyond its last write, waiting for nothing real.
    Future(Seq),
    /// A clock exchange claiming this many writes of the receiver.
    Overclaim(Seq),
}

fn lie() -> impl Strategy<Value = Lie> {
    prop_oneof![
        (0usize..64).prop_map(Lie::Junk),
        (0usize..64).prop_map(Lie::Forged),
        (2u64..1_000_000).prop_map(Lie::Future),
        (1u64..u64::MAX).prop_map(Lie::Overclaim),
    ]
}

/// An honest history: `writes` local writes at `a` and `c` (a key each, and
/// whether `c` has seen `a`'s writes so far), as events in the order made.
fn honest(writes: &[(bool, u8, bool)]) -> Vec<Event> {
    let (mut a, mut c) = (core("a"), core("c"));
    let mut events = Vec::new();
    let mut a_sent = 0;
    for &(at_a, key, sync) in writes {
        if sync {
            // c catches up with a: c's next writes depend on them.
            let new: Vec<Event> = events
                .iter()
                .filter(|e: &&Event| e.origin == "a")
                .skip(a_sent)
                .cloned()
                .collect();
            a_sent += new.len();
            c.receive(new).unwrap();
        }
        let (writer, key) = (if at_a { &mut a } else { &mut c }, format!("k{key}"));
        let value = Op::Put(Value::from_serialize(&events.len()).unwrap());
        events.push((*writer.local_write(key, value).unwrap()).clone());
    }
    events
}

fn forged(e: &Event, what: &str) -> Event {
    Event {
        op: Op::Put(Value::from_serialize(what).unwrap()),
        ..e.clone()
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn lies_never_stop_honest_writes_nor_change_the_state(
        writes in prop::collection::vec((any::<bool>(), 0u8..4, any::<bool>()), 1..24),
        order in prop::collection::vec(any::<prop::sample::Index>(), 0..64),
        lies in prop::collection::vec((any::<prop::sample::Index>(), lie()), 0..16),
    ) {
        let events = honest(&writes);
        let mut reference = core("b");
        reference.receive(events.clone()).unwrap();

        let mut b = core("b");
        // Honest events in a random order, with duplicates; lies in between.
        let mut lies = lies.into_iter().peekable();
        let mut forged_sent = 0;
        for (step, pick) in order.iter().enumerate() {
            let e = pick.get(&events).clone();
            b.receive(vec![e]).unwrap();
            while let Some((_, lie)) = lies.next_if(|(at, _)| at.index(order.len().max(1)) <= step) {
                match lie {
                    Lie::Junk(i) => {
                        let mut junk = forged(&events[i % events.len()], "junk");
                        let other = if junk.origin == "a" { "c" } else { "a" };
                        junk.deps.set(other, 1_000_000);
                        b.receive(vec![junk]).unwrap();
                    }
                    Lie::Forged(i) => {
                        let real = &events[i % events.len()];
                        if b.applied().get(&real.origin) >= real.seq {
                            let receipt = b.receive(vec![forged(real, "forged")]).unwrap();
                            prop_assert_eq!(receipt.conflicts, vec![real.dot()]);
                            forged_sent += 1;
                        }
                    }
                    Lie::Future(ahead) => {
                        let last = events.iter().filter(|e| e.origin == "a").count() as Seq;
                        let seq = last + ahead;
                        let mut deps: VClock = [("a", seq - 1)].into_iter().collect();
                        deps.set("c", 1_000_000);
                        let future = Event {
                            origin: "a".into(),
                            seq,
                            key: "k0".into(),
                            op: Op::Delete,
                            also: Vec::new(),
                            deps,
                        };
                        b.receive(vec![future]).unwrap();
                    }
                    Lie::Overclaim(claimed) => {
                        let made = b.applied().get("b");
                        let clock: VClock = [("b", made.saturating_add(claimed))].into_iter().collect();
                        let refused = matches!(
                            b.record_ack("a", &clock),
                            Err(CoreError::Overclaimed { .. })
                        );
                        prop_assert!(refused);
                    }
                }
            }
        }
        // The links send again whatever was not applied, in order, as often
        // as needed (without a sweep of the buffer: junk must not need one).
        for _ in 0..events.len() + 2 {
            if b.applied() == reference.applied() {
                break;
            }
            let missing: Vec<Event> = events
                .iter()
                .filter(|e| b.applied().get(&e.origin) < e.seq)
                .cloned()
                .collect();
            b.receive(missing).unwrap();
        }
        prop_assert_eq!(b.applied(), reference.applied());
        prop_assert!(b.conflicts() >= forged_sent);
        for key in 0..4 {
            let key = format!("k{key}");
            let (got, want) = (b.read(&key).unwrap(), reference.read(&key).unwrap());
            let dots = |s: &[Arc<Event>]| s.iter().map(|e| e.dot()).collect::<Vec<_>>();
            prop_assert_eq!(dots(&got.siblings), dots(&want.siblings), "key {}", key);
            prop_assert_eq!(got.winner(), want.winner());
        }
    }
}
