//! Client contexts: how a context relates to a replica's history, and the wait
//! for one to be satisfied (rules 1 and 5).
//!
//! A read or write that carries a context waits until the replica has applied
//! everything the context counts, at most `causal_wait`. Waiting alone cannot
//! tell a context that is merely ahead (its writes are on their way) from one
//! that counts writes nobody made (a forged or corrupt context, or a client that
//! talked to another cluster): the second would wait out the whole bound and
//! end in a timeout that invites a retry. So [`ContextWait`] asks the origin of
//! each missing entry for its clock, once; an origin that has not made the
//! writes turns the wait into a refusal (409, `unknown_history`) at once.
//!
//! [`ContextWait`] is a state machine: the shell feeds it the replica's clock
//! whenever it changes, the origins' answers and the time, and carries out what
//! it asks (send a clock exchange to an origin, wake up at a deadline).

use std::collections::BTreeSet;
use std::time::Duration;

use vclock_proto::{Missing, NodeId, VClock};

/// How a client's context relates to this node's history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContextCheck {
    /// Everything the context counts is applied here.
    Satisfied,
    /// Some entries are ahead of this node; they may still arrive.
    Behind(Vec<Missing>),
    /// The context counts writes of this node that it never made.
    Impossible(Vec<Missing>),
    /// The context names a node outside the cluster.
    UnknownNode(String),
}

/// The first node `clock` counts writes of that is not in `nodes` (sorted).
/// A zero entry counts nothing: a client or a peer may name a member added
/// before this node heard of it.
pub fn unknown_node<'c>(clock: &'c VClock, nodes: &[NodeId]) -> Option<&'c NodeId> {
    clock
        .iter()
        .find(|(n, seq)| **seq > 0 && nodes.binary_search(n).is_err())
        .map(|(n, _)| n)
}

/// Relates a client's `context` to the clock `applied` of node `id` in a cluster
/// of `nodes` (sorted).
pub fn check_context(
    id: &str,
    nodes: &[NodeId],
    applied: &VClock,
    context: &VClock,
) -> ContextCheck {
    if let Some(unknown) = unknown_node(context, nodes) {
        return ContextCheck::UnknownNode(unknown.clone());
    }
    let missing: Vec<Missing> = applied.missing(context).collect();
    if missing.is_empty() {
        return ContextCheck::Satisfied;
    }
    let impossible: Vec<Missing> = missing.iter().filter(|m| m.node == id).cloned().collect();
    if impossible.is_empty() {
        ContextCheck::Behind(missing)
    } else {
        ContextCheck::Impossible(impossible)
    }
}

/// Why a context could not be satisfied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContextError {
    /// The context names a node outside the cluster.
    UnknownNode(String),
    /// The context counts writes that their origin never made.
    UnknownHistory(Vec<Missing>),
    /// The bound passed with these entries still missing.
    Timeout(Vec<Missing>),
}

/// What a [`ContextWait`] needs next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WaitStep {
    /// The replica has applied everything the context counts.
    Satisfied,
    /// The wait is over without success.
    Failed(ContextError),
    /// Ask each of these origins for its clock (a clock exchange), then call
    /// [`ContextWait::origin_answered`] with each answer.
    Ask(Vec<NodeId>),
    /// Nothing to do until the replica's clock changes, an origin answers, or
    /// the deadline passes.
    Wait {
        /// When the wait times out, on the shell's clock.
        deadline: Duration,
    },
}

/// One client's wait for its context (see the module's essay). Time is the
/// shell's monotonic clock as a [`Duration`] since any fixed start.
#[derive(Debug, Clone)]
pub struct ContextWait {
    context: VClock,
    deadline: Duration,
    asked: BTreeSet<NodeId>,
}

impl ContextWait {
    /// A wait for `context` that started at `now` and lasts at most `bound`.
    pub fn new(context: VClock, now: Duration, bound: Duration) -> Self {
        Self {
            context,
            deadline: now.saturating_add(bound),
            asked: BTreeSet::new(),
        }
    }

    /// The context waited for.
    pub fn context(&self) -> &VClock {
        &self.context
    }

    /// Relates the context to replica `id`'s clock `applied` (of a cluster of
    /// sorted `nodes`) at `now`.
    pub fn step(
        &mut self,
        now: Duration,
        id: &str,
        nodes: &[NodeId],
        applied: &VClock,
    ) -> WaitStep {
        let missing = match check_context(id, nodes, applied, &self.context) {
            ContextCheck::Satisfied => return WaitStep::Satisfied,
            ContextCheck::UnknownNode(node) => {
                return WaitStep::Failed(ContextError::UnknownNode(node))
            }
            ContextCheck::Impossible(missing) => {
                return WaitStep::Failed(ContextError::UnknownHistory(missing))
            }
            ContextCheck::Behind(missing) => missing,
        };
        if now >= self.deadline {
            return WaitStep::Failed(ContextError::Timeout(missing));
        }
        let ask: Vec<NodeId> = missing
            .into_iter()
            .map(|m| m.node)
            .filter(|origin| self.asked.insert(origin.clone()))
            .collect();
        if ask.is_empty() {
            WaitStep::Wait {
                deadline: self.deadline,
            }
        } else {
            WaitStep::Ask(ask)
        }
    }

    /// `origin`'s answer to the question: its own `applied` clock. Fails the
    /// wait when the origin has made fewer writes than the context counts.
    pub fn origin_answered(&self, origin: &str, clock: &VClock) -> Option<ContextError> {
        let (have, want) = (clock.get(origin), self.context.get(origin));
        (have < want).then(|| {
            ContextError::UnknownHistory(vec![Missing {
                node: origin.to_owned(),
                have,
                want,
            }])
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clock(entries: &[(&str, u64)]) -> VClock {
        entries.iter().map(|(n, c)| (n.to_string(), *c)).collect()
    }

    fn nodes() -> Vec<NodeId> {
        vec!["a".into(), "b".into(), "c".into()]
    }

    const SECOND: Duration = Duration::from_secs(1);

    #[test]
    fn a_context_ahead_asks_each_origin_once_then_waits_until_the_deadline() {
        let mut wait = ContextWait::new(clock(&[("b", 2), ("c", 1)]), SECOND, 5 * SECOND);
        let applied = clock(&[("a", 3)]);
        assert_eq!(
            wait.step(SECOND, "a", &nodes(), &applied),
            WaitStep::Ask(vec!["b".into(), "c".into()])
        );
        let deadline = 6 * SECOND;
        assert_eq!(
            wait.step(2 * SECOND, "a", &nodes(), &applied),
            WaitStep::Wait { deadline }
        );
        // The origins have made those writes: no verdict, keep waiting.
        assert_eq!(wait.origin_answered("b", &clock(&[("b", 2)])), None);
        assert_eq!(wait.origin_answered("c", &clock(&[("c", 7)])), None);
        let applied = clock(&[("a", 3), ("b", 2)]);
        match wait.step(deadline, "a", &nodes(), &applied) {
            WaitStep::Failed(ContextError::Timeout(missing)) => {
                assert_eq!(missing.len(), 1);
                assert_eq!((missing[0].node.as_str(), missing[0].want), ("c", 1));
            }
            other => panic!("expected a timeout, got {other:?}"),
        }
        let applied = clock(&[("b", 2), ("c", 1)]);
        assert_eq!(
            wait.step(deadline, "a", &nodes(), &applied),
            WaitStep::Satisfied
        );
    }

    #[test]
    fn an_origin_that_never_made_the_writes_fails_the_wait_at_once() {
        let wait = ContextWait::new(clock(&[("b", 9)]), Duration::ZERO, SECOND);
        assert_eq!(
            wait.origin_answered("b", &clock(&[("b", 4), ("a", 10)])),
            Some(ContextError::UnknownHistory(vec![Missing {
                node: "b".into(),
                have: 4,
                want: 9
            }]))
        );
    }

    #[test]
    fn own_writes_never_made_and_unknown_nodes_fail_without_asking() {
        let mut wait = ContextWait::new(clock(&[("a", 2)]), Duration::ZERO, SECOND);
        assert!(matches!(
            wait.step(Duration::ZERO, "a", &nodes(), &clock(&[("a", 1)])),
            WaitStep::Failed(ContextError::UnknownHistory(_))
        ));
        let mut wait = ContextWait::new(clock(&[("zz", 1)]), Duration::ZERO, SECOND);
        assert_eq!(
            wait.step(Duration::ZERO, "a", &nodes(), &VClock::new()),
            WaitStep::Failed(ContextError::UnknownNode("zz".into()))
        );
    }
}
