//! Recovery: whether a starting node may accept writes, or must first get its
//! own history back from a peer.
//!
//! A node numbers its writes from its `applied` clock (rule 1). If it starts
//! with less of its own history than its peers hold (its data directory was
//! lost or replaced by an old backup, it ran in memory, or it ran without
//! fsync and the machine crashed), its next write would take a dot that names
//! another, older write: the peers would drop it as a duplicate and the client
//! would hold an acknowledgement that no other node will ever honour.
//!
//! So a node starts [`Phase::Checking`]: it refuses writes until it has
//! compared what it holds of its own writes with what its peers hold of them,
//! from their clocks (their answers to its clock exchanges, and their own).
//!
//! - A peer holds more: the node bootstraps from the peer that holds the most
//!   ([`Phase::Bootstrapping`]), then checks again. An untrusted store also
//!   bootstraps when a peer holds writes of other origins it lacks
//!   ([`Recovery::ahead`]): the peers' logs may no longer hold them.
//! - Every peer answered and none holds more: the node is [`Phase::Live`].
//! - A *trusted* store (kept on disk with fsync, in a data directory this node
//!   made, and not left half-way through a bootstrap) cannot have lost writes
//!   it acknowledged: it goes live once
//!   every peer has answered or failed once, or after `grace`; it still
//!   checks, so that a restored backup is caught when its peers are up.
//! - An untrusted store waits for every peer, unless the operator starts a new
//!   history on purpose (`force_new_history`): with a peer down, that peer may
//!   be the only one holding this node's last writes.
//!
//! Once live, a node stays live: what a peer claims later is checked by the
//! links (see [`super::replication`]), not here.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use vclock_proto::{NodeId, Seq};

/// Where a node stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Phase {
    /// Comparing its history with its peers'; writes are refused.
    Checking,
    /// Copying a peer's state; reads and writes are refused.
    Bootstrapping {
        /// The peer copied from.
        source: NodeId,
        /// What that peer holds of this node's writes.
        target: Seq,
    },
    /// Serving reads and writes.
    Live,
}

/// What the shell must do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Nothing yet: poll again when a peer's clock or failure comes in.
    Wait,
    /// Bootstrap from this peer, then report with [`Recovery::bootstrapped`]
    /// or [`Recovery::bootstrap_failed`].
    Bootstrap(NodeId),
    /// Serve writes.
    Live,
}

/// The recovery state of one node.
#[derive(Debug, Clone)]
pub struct Recovery {
    peers: Vec<NodeId>,
    trusted: bool,
    force_new_history: bool,
    /// What each peer that answered holds of this node's writes.
    heard: BTreeMap<NodeId, Seq>,
    /// Peers whose last request failed.
    failed: BTreeSet<NodeId>,
    /// Peers that hold writes of other origins this node lacks.
    ahead: BTreeSet<NodeId>,
    /// When a trusted store goes live even if a peer has not answered.
    deadline: Duration,
    /// A bootstrap is installed: reads may be served.
    installed: bool,
    phase: Phase,
}

impl Recovery {
    /// A node with these peers, starting at `now`; `trusted` as the module
    /// says, `grace` bounding a trusted store's wait.
    pub fn new(
        peers: Vec<NodeId>,
        trusted: bool,
        force_new_history: bool,
        now: Duration,
        grace: Duration,
    ) -> Self {
        Self {
            peers,
            trusted,
            force_new_history,
            heard: BTreeMap::new(),
            failed: BTreeSet::new(),
            ahead: BTreeSet::new(),
            deadline: now + grace,
            installed: false,
            phase: Phase::Checking,
        }
    }

    /// A node that needs no check (for tests of other parts).
    pub fn live() -> Self {
        let mut recovery = Self::new(Vec::new(), true, true, Duration::ZERO, Duration::ZERO);
        recovery.phase = Phase::Live;
        recovery
    }

    /// Where the node stands.
    pub fn phase(&self) -> &Phase {
        &self.phase
    }

    /// True once the node serves writes.
    pub fn is_live(&self) -> bool {
        self.phase == Phase::Live
    }

    /// True when reads may be served: live, or a trusted store still checking
    /// (its state is what it acknowledged).
    pub fn serves_reads(&self) -> bool {
        match self.phase {
            Phase::Live => true,
            Phase::Checking => self.trusted || self.installed,
            Phase::Bootstrapping { .. } => false,
        }
    }

    /// `peer`'s clock counts `holds` of this node's writes.
    pub fn heard(&mut self, peer: &str, holds: Seq) {
        if self.peers.iter().any(|p| p == peer) {
            self.failed.remove(peer);
            let entry = self.heard.entry(peer.to_owned()).or_default();
            *entry = (*entry).max(holds);
        }
    }

    /// `peer`'s clock counts writes of other origins that this node lacks.
    /// A trusted store gets them through the peers' logs, which keep what it
    /// has not acknowledged; an untrusted one may lack writes the logs no
    /// longer hold (every node had acknowledged them), so it bootstraps.
    pub fn ahead(&mut self, peer: &str) {
        if self.peers.iter().any(|p| p == peer) {
            self.ahead.insert(peer.to_owned());
        }
    }

    /// A request to `peer` failed.
    pub fn unreachable(&mut self, peer: &str) {
        if self.peers.iter().any(|p| p == peer) && !self.heard.contains_key(peer) {
            self.failed.insert(peer.to_owned());
        }
    }

    /// What the node must do, given that it holds `own` of its own writes.
    pub fn decide(&mut self, now: Duration, own: Seq) -> Decision {
        match self.phase {
            Phase::Live => return Decision::Live,
            Phase::Bootstrapping { .. } => return Decision::Wait,
            Phase::Checking => {}
        }
        let best = self
            .heard
            .iter()
            .max_by_key(|(peer, holds)| (**holds, std::cmp::Reverse(*peer)));
        let behind = !self.trusted && !self.installed;
        let source = match best {
            Some((source, &holds)) if holds > own => Some((source, holds)),
            // Behind on other origins: from the peer ahead that holds the most
            // of this node's writes.
            _ if behind => self
                .heard
                .iter()
                .filter(|(peer, _)| self.ahead.contains(*peer))
                .max_by_key(|(peer, holds)| (**holds, std::cmp::Reverse(*peer)))
                .map(|(source, &holds)| (source, holds.max(own))),
            _ => None,
        };
        if let Some((source, target)) = source {
            let source = source.clone();
            self.phase = Phase::Bootstrapping {
                source: source.clone(),
                target,
            };
            return Decision::Bootstrap(source);
        }
        let all_heard = self.peers.iter().all(|p| self.heard.contains_key(p));
        let all_tried = self
            .peers
            .iter()
            .all(|p| self.heard.contains_key(p) || self.failed.contains(p));
        let trusted_done = self.trusted && (all_tried || now >= self.deadline);
        if all_heard || self.force_new_history || trusted_done {
            self.phase = Phase::Live;
            return Decision::Live;
        }
        Decision::Wait
    }

    /// The bootstrap from the current source is installed: reads may be
    /// served, but check again before writes: another peer, not heard yet,
    /// may hold more of this node's writes than the source did.
    pub fn bootstrapped(&mut self) {
        self.phase = Phase::Checking;
        self.installed = true;
    }

    /// The bootstrap failed (the source went away): check again, without
    /// counting on the source until it answers again.
    pub fn bootstrap_failed(&mut self) {
        if let Phase::Bootstrapping { source, .. } = &self.phase {
            self.heard.remove(source);
            self.ahead.remove(source);
        }
        self.phase = Phase::Checking;
    }

    /// Why the node does not serve writes yet, for logs, `/status` and 503s;
    /// `None` once live.
    pub fn waiting_for(&self, own: Seq) -> Option<String> {
        match &self.phase {
            Phase::Live => None,
            Phase::Bootstrapping { source, target } => Some(format!(
                "bootstrapping from {source}, which holds {target} writes of this node \
                 (this node holds {own})"
            )),
            Phase::Checking => {
                let silent: Vec<&str> = self
                    .peers
                    .iter()
                    .filter(|p| !self.heard.contains_key(*p))
                    .map(String::as_str)
                    .collect();
                Some(format!(
                    "checking that no peer holds more of this node's writes than its {own} \
                     before it accepts writes; waiting for {}{}",
                    silent.join(", "),
                    if self.trusted {
                        ""
                    } else {
                        " (this node's data may be incomplete: start it with \
                         force_new_history only to begin a new history on purpose)"
                    }
                ))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    fn peers() -> Vec<NodeId> {
        vec!["n2".into(), "n3".into()]
    }

    #[test]
    fn an_untrusted_store_waits_for_every_peer() {
        let mut r = Recovery::new(peers(), false, false, Duration::ZERO, S);
        assert_eq!(r.decide(Duration::ZERO, 0), Decision::Wait);
        r.heard("n2", 0);
        r.unreachable("n3");
        assert_eq!(
            r.decide(10 * S, 0),
            Decision::Wait,
            "n3 may hold our writes"
        );
        assert!(!r.serves_reads());
        r.heard("n3", 0);
        assert_eq!(r.decide(10 * S, 0), Decision::Live);
        assert!(r.is_live() && r.serves_reads());
    }

    #[test]
    fn a_peer_holding_more_is_bootstrapped_from_the_one_holding_most() {
        let mut r = Recovery::new(peers(), false, false, Duration::ZERO, S);
        r.heard("n2", 4);
        r.heard("n3", 7);
        assert_eq!(
            r.decide(Duration::ZERO, 0),
            Decision::Bootstrap("n3".into())
        );
        assert_eq!(r.decide(Duration::ZERO, 0), Decision::Wait);
        assert!(!r.serves_reads());
        assert!(r.waiting_for(0).unwrap().contains("bootstrapping from n3"));
        r.bootstrapped();
        assert_eq!(r.decide(Duration::ZERO, 7), Decision::Live);
    }

    #[test]
    fn a_failed_bootstrap_chooses_again_among_the_peers_that_answer() {
        let mut r = Recovery::new(peers(), false, false, Duration::ZERO, S);
        r.heard("n2", 4);
        r.heard("n3", 7);
        assert_eq!(
            r.decide(Duration::ZERO, 0),
            Decision::Bootstrap("n3".into())
        );
        r.bootstrap_failed();
        // n2 holds less than n3 did: bootstrapping from it now and from n3
        // later is still safe, but the node may not go live before n3 answers.
        assert_eq!(
            r.decide(Duration::ZERO, 0),
            Decision::Bootstrap("n2".into())
        );
        r.bootstrapped();
        assert!(r.serves_reads());
        r.unreachable("n3");
        assert_eq!(r.decide(10 * S, 4), Decision::Wait, "n3 held more");
        r.heard("n3", 7);
        assert_eq!(
            r.decide(Duration::ZERO, 4),
            Decision::Bootstrap("n3".into())
        );
    }

    #[test]
    fn a_trusted_store_goes_live_once_every_peer_answered_or_failed_or_after_grace() {
        let mut r = Recovery::new(peers(), true, false, Duration::ZERO, S);
        assert!(r.serves_reads());
        r.heard("n2", 3);
        assert_eq!(r.decide(Duration::ZERO, 3), Decision::Wait);
        r.unreachable("n3");
        assert_eq!(r.decide(Duration::ZERO, 3), Decision::Live);

        let mut r = Recovery::new(peers(), true, false, Duration::ZERO, S);
        assert_eq!(r.decide(S / 2, 3), Decision::Wait);
        assert_eq!(r.decide(S, 3), Decision::Live);
    }

    #[test]
    fn a_restored_backup_is_caught_when_a_peer_answers() {
        let mut r = Recovery::new(peers(), true, false, Duration::ZERO, S);
        r.heard("n2", 9);
        assert_eq!(
            r.decide(Duration::ZERO, 5),
            Decision::Bootstrap("n2".into())
        );
    }

    #[test]
    fn a_forced_new_history_goes_live_alone_and_live_stays_live() {
        let mut r = Recovery::new(peers(), false, true, Duration::ZERO, S);
        assert_eq!(r.decide(Duration::ZERO, 0), Decision::Live);
        r.heard("n2", 9);
        assert_eq!(r.decide(Duration::ZERO, 0), Decision::Live);
        assert_eq!(r.waiting_for(0), None);
    }

    #[test]
    fn an_untrusted_store_behind_on_other_origins_bootstraps_a_trusted_one_does_not() {
        let mut r = Recovery::new(peers(), false, false, Duration::ZERO, S);
        r.heard("n2", 0);
        r.heard("n3", 0);
        r.ahead("n3");
        assert_eq!(
            r.decide(Duration::ZERO, 0),
            Decision::Bootstrap("n3".into())
        );
        r.bootstrapped();
        assert_eq!(r.decide(Duration::ZERO, 0), Decision::Live);

        let mut r = Recovery::new(peers(), true, false, Duration::ZERO, S);
        r.heard("n2", 5);
        r.heard("n3", 5);
        r.ahead("n3");
        assert_eq!(
            r.decide(Duration::ZERO, 5),
            Decision::Live,
            "the logs hold the rest"
        );
    }

    #[test]
    fn a_node_without_peers_is_live_at_once() {
        let mut r = Recovery::new(Vec::new(), false, false, Duration::ZERO, S);
        assert_eq!(r.decide(Duration::ZERO, 0), Decision::Live);
    }

    #[test]
    fn strangers_are_ignored() {
        let mut r = Recovery::new(peers(), false, false, Duration::ZERO, S);
        r.heard("n9", 100);
        r.heard("n2", 0);
        r.heard("n3", 0);
        assert_eq!(r.decide(Duration::ZERO, 0), Decision::Live);
    }
}
