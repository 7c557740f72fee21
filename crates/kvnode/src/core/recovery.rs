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
//!   ([`Phase::Bootstrapping`]), then checks again. A store that may be
//!   incomplete also bootstraps when a peer holds writes of other origins it
//!   lacks ([`Recovery::ahead`]): the peers' logs may no longer hold them.
//! - Every peer answered and none holds more: the node is [`Phase::Live`].
//! - A [`Trust::Complete`] store (kept on disk with fsync, in a data
//!   directory this node made once it was live, and not left half-way
//!   through a bootstrap) cannot have lost writes it acknowledged: it goes
//!   live once every peer has answered or failed once, or after `grace`; it
//!   still checks, so that a restored backup is caught when its peers are up.
//! - A [`Trust::Unknown`] store waits for every peer, unless the operator
//!   starts a new history on purpose (`force_new_history`): with a peer down,
//!   that peer may be the only one holding this node's last writes.
//! - A [`Trust::Unfinished`] store (a bootstrap began and did not finish, in
//!   this run or an earlier one) holds keys copied at a peer's clock that its
//!   own clock does not count: it finishes a bootstrap before anything else.
//!
//! A bootstrap installs keys read at several moments of the source; the node
//! counts as applied only the meet of those moments, and its keys may show
//! writes up to their join. It serves nothing until replication has brought
//! it that join: a read would show a write without its causal past.
//!
//! Once live, a node stays live: what a peer claims later is checked by the
//! links (see [`super::replication`]), not here.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use vclock_proto::{NodeId, Seq, VClock};

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

/// What a node may assume of the store it starts with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trust {
    /// Everything it acknowledged is there.
    Complete,
    /// It may have lost writes (new or lost data directory, memory, no fsync).
    Unknown,
    /// A bootstrap began on it and has not finished.
    Unfinished,
}

/// What the shell must do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Nothing yet: poll again when a peer's clock or failure comes in, or
    /// this node's clock moves.
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
    me: NodeId,
    peers: Vec<NodeId>,
    trust: Trust,
    force_new_history: bool,
    /// What each peer that answered holds of this node's writes.
    heard: BTreeMap<NodeId, Seq>,
    /// Peers whose last request failed.
    failed: BTreeSet<NodeId>,
    /// Peers that hold writes of other origins this node lacks.
    ahead: BTreeSet<NodeId>,
    /// Peers removed from the membership: never a bootstrap's source, and
    /// not waited for, but what they hold of this node's writes still counts.
    removed: BTreeSet<NodeId>,
    /// When a complete store goes live even if a peer has not answered.
    deadline: Duration,
    /// A bootstrap was installed in this run.
    installed: bool,
    /// The join of the installed chunks' clocks, while this node's clock
    /// does not cover it yet.
    catching_up: Option<VClock>,
    phase: Phase,
}

impl Recovery {
    /// Node `me` with these peers, starting at `now` over a store it may
    /// assume `trust` of; `grace` bounds a complete store's wait.
    pub fn new(
        me: NodeId,
        peers: Vec<NodeId>,
        trust: Trust,
        force_new_history: bool,
        now: Duration,
        grace: Duration,
    ) -> Self {
        Self {
            me,
            peers,
            trust,
            force_new_history,
            heard: BTreeMap::new(),
            failed: BTreeSet::new(),
            ahead: BTreeSet::new(),
            removed: BTreeSet::new(),
            deadline: now + grace,
            installed: false,
            catching_up: None,
            phase: Phase::Checking,
        }
    }

    /// A node that needs no check (for tests of other parts).
    pub fn live() -> Self {
        let mut recovery = Self::new(
            NodeId::new(),
            Vec::new(),
            Trust::Complete,
            true,
            Duration::ZERO,
            Duration::ZERO,
        );
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

    /// True when reads may be served: live, or a complete store still
    /// checking (its state is what it acknowledged). A store that may lack
    /// some of this node's writes serves none: a client's context counting
    /// them would be refused as counting writes never made.
    pub fn serves_reads(&self) -> bool {
        match self.phase {
            Phase::Live => true,
            Phase::Checking => self.trust == Trust::Complete,
            Phase::Bootstrapping { .. } => false,
        }
    }

    /// `peer`'s clock counts `holds` of this node's writes.
    pub fn heard(&mut self, peer: &str, holds: Seq) {
        if self.is_peer(peer) {
            self.failed.remove(peer);
            let entry = self.heard.entry(peer.to_owned()).or_default();
            *entry = (*entry).max(holds);
        }
    }

    /// `peer`'s clock counts writes of other origins that this node lacks.
    /// A complete store gets them through the peers' logs, which keep what
    /// it has not acknowledged; another may lack writes the logs no longer
    /// hold (every node had acknowledged them), so it bootstraps.
    pub fn ahead(&mut self, peer: &str) {
        if self.is_peer(peer) {
            self.ahead.insert(peer.to_owned());
        }
    }

    /// `peer` was removed from the membership. No node sends to it any
    /// more, so its state lags: a snapshot of it may lack writes that the
    /// members' logs no longer hold, and it is no source. If it holds more of
    /// this node's writes than any member, the node waits: the removed node
    /// still sends them to the members, and the node then bootstraps from one.
    pub fn remove(&mut self, peer: &str) {
        if self.is_peer(peer) {
            self.removed.insert(peer.to_owned());
        }
    }

    /// A request to `peer` failed.
    pub fn unreachable(&mut self, peer: &str) {
        if self.is_peer(peer) && !self.heard.contains_key(peer) {
            self.failed.insert(peer.to_owned());
        }
    }

    /// What the node must do, given its committed clock `applied`.
    pub fn decide(&mut self, now: Duration, applied: &VClock) -> Decision {
        match self.phase {
            Phase::Live => return Decision::Live,
            Phase::Bootstrapping { .. } => return Decision::Wait,
            Phase::Checking => {}
        }
        let own = applied.get(&self.me);
        let member = |peer: &&NodeId| !self.removed.contains(*peer);
        let best = self
            .heard
            .iter()
            .filter(|(peer, _)| member(peer))
            .max_by_key(|(peer, holds)| (**holds, std::cmp::Reverse(*peer)));
        let unfinished = self.trust == Trust::Unfinished;
        let behind = unfinished || (self.trust == Trust::Unknown && !self.installed);
        let source = match best {
            Some((source, &holds)) if holds > own => Some((source, holds)),
            // Behind on other origins: from the peer ahead that holds the most
            // of this node's writes. An unfinished store counts every peer as
            // ahead: it must finish, whatever the clocks say.
            _ if behind => self
                .heard
                .iter()
                .filter(|(peer, _)| member(peer))
                .filter(|(peer, _)| unfinished || self.ahead.contains(*peer))
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
        if unfinished && !self.force_new_history {
            return Decision::Wait;
        }
        if self
            .catching_up
            .as_ref()
            .is_some_and(|c| !applied.covers(c))
        {
            return Decision::Wait;
        }
        self.catching_up = None;
        // A removed peer holding more of this node's writes than any member:
        // wait until a member has them too.
        let removed_holds = self
            .heard
            .iter()
            .filter(|(peer, _)| !member(peer))
            .map(|(_, &holds)| holds)
            .max()
            .unwrap_or(0);
        if removed_holds > own && !self.force_new_history {
            return Decision::Wait;
        }
        let members = || self.peers.iter().filter(|p| member(p));
        let all_heard = members().all(|p| self.heard.contains_key(p));
        let all_tried = members().all(|p| self.heard.contains_key(p) || self.failed.contains(p));
        let complete = self.trust == Trust::Complete;
        let complete_done = complete && (all_tried || now >= self.deadline);
        if all_heard || self.force_new_history || complete_done {
            self.phase = Phase::Live;
            return Decision::Live;
        }
        Decision::Wait
    }

    /// The bootstrap is installed; its keys show writes up to `join`, the
    /// join of its chunks' clocks. Check again before writes (another peer,
    /// not heard yet, may hold more of this node's writes than the source
    /// did), and serve nothing before this node's clock covers `join`.
    pub fn bootstrapped(&mut self, join: VClock) {
        self.phase = Phase::Checking;
        self.installed = true;
        if self.trust == Trust::Unfinished {
            self.trust = Trust::Unknown;
        }
        self.catching_up = Some(join);
    }

    /// The bootstrap failed (the source went away): its store is unfinished;
    /// check again, without counting on the source until it answers again.
    pub fn bootstrap_failed(&mut self) {
        if let Phase::Bootstrapping { source, .. } = &self.phase {
            self.heard.remove(source);
            self.ahead.remove(source);
        }
        self.trust = Trust::Unfinished;
        self.phase = Phase::Checking;
    }

    /// Why the node does not serve writes yet, for logs, `/status` and 503s;
    /// `None` once live.
    pub fn waiting_for(&self, applied: &VClock) -> Option<String> {
        let own = applied.get(&self.me);
        match &self.phase {
            Phase::Live => None,
            Phase::Bootstrapping { source, target: 0 } => Some(format!(
                "bootstrapping from {source}: copying its keys (no node holds writes of this \
                 node: a new member, or one that never wrote)"
            )),
            Phase::Bootstrapping { source, target } => Some(format!(
                "bootstrapping from {source}, which holds {target} writes of this node \
                 (this node holds {own})"
            )),
            Phase::Checking if self.trust == Trust::Unfinished => Some(format!(
                "an unfinished bootstrap must go on first; waiting for a peer to answer ({} \
                 did not)",
                self.silent().join(", ")
            )),
            Phase::Checking => match &self.catching_up {
                Some(join) if !applied.covers(join) => Some(format!(
                    "catching up through replication: the installed keys show writes up to \
                     {join}, this node has applied {applied}"
                )),
                _ => Some(format!(
                    "checking that no peer holds more of this node's writes than its {own} \
                     before it accepts writes; waiting for {}{}",
                    self.silent().join(", "),
                    if self.trust == Trust::Complete {
                        ""
                    } else {
                        " (this node's data may be incomplete: start it with \
                         force_new_history only to begin a new history on purpose)"
                    }
                )),
            },
        }
    }

    fn is_peer(&self, node: &str) -> bool {
        self.peers.iter().any(|p| p == node)
    }

    /// The members not heard from yet.
    fn silent(&self) -> Vec<&str> {
        self.peers
            .iter()
            .filter(|p| !self.heard.contains_key(*p) && !self.removed.contains(*p))
            .map(String::as_str)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    /// A clock of n1 holding `seq` of its own writes.
    fn own(seq: Seq) -> VClock {
        VClock::from_iter([("n1".to_owned(), seq)])
    }

    fn peers() -> Vec<NodeId> {
        vec!["n2".into(), "n3".into()]
    }

    /// n1 with peers n2 and n3, at time zero, with a grace of `S`.
    fn start(trust: Trust) -> Recovery {
        Recovery::new("n1".into(), peers(), trust, false, Duration::ZERO, S)
    }

    #[test]
    fn an_untrusted_store_waits_for_every_peer() {
        let mut r = start(Trust::Unknown);
        assert_eq!(r.decide(Duration::ZERO, &own(0)), Decision::Wait);
        r.heard("n2", 0);
        r.unreachable("n3");
        assert_eq!(
            r.decide(10 * S, &own(0)),
            Decision::Wait,
            "n3 may hold our writes"
        );
        assert!(!r.serves_reads());
        r.heard("n3", 0);
        assert_eq!(r.decide(10 * S, &own(0)), Decision::Live);
        assert!(r.is_live() && r.serves_reads());
    }

    #[test]
    fn a_peer_holding_more_is_bootstrapped_from_the_one_holding_most() {
        let mut r = start(Trust::Unknown);
        r.heard("n2", 4);
        r.heard("n3", 7);
        assert_eq!(
            r.decide(Duration::ZERO, &own(0)),
            Decision::Bootstrap("n3".into())
        );
        assert_eq!(r.decide(Duration::ZERO, &own(0)), Decision::Wait);
        assert!(!r.serves_reads());
        assert!(r
            .waiting_for(&own(0))
            .unwrap()
            .contains("bootstrapping from n3"));
        r.bootstrapped(VClock::new());
        assert_eq!(r.decide(Duration::ZERO, &own(7)), Decision::Live);
    }

    #[test]
    fn a_removed_peer_is_no_source_but_its_writes_are_waited_for() {
        let mut r = start(Trust::Unknown);
        r.remove("n3");
        r.heard("n2", 4);
        r.heard("n3", 7);
        assert_eq!(
            r.decide(Duration::ZERO, &own(0)),
            Decision::Bootstrap("n2".into()),
            "the removed n3 lags behind the members"
        );
        r.bootstrapped(VClock::new());
        assert_eq!(
            r.decide(Duration::ZERO, &own(4)),
            Decision::Wait,
            "n3 holds writes of n1 that no member holds yet"
        );
        // n3 sends them to the members; n2 then holds them.
        r.heard("n2", 7);
        assert_eq!(
            r.decide(Duration::ZERO, &own(4)),
            Decision::Bootstrap("n2".into())
        );
        r.bootstrapped(VClock::new());
        assert_eq!(r.decide(Duration::ZERO, &own(7)), Decision::Live);
    }

    #[test]
    fn a_removed_peer_is_not_waited_for() {
        let mut r = start(Trust::Unknown);
        r.remove("n3");
        r.heard("n2", 0);
        assert!(!r.waiting_for(&own(0)).unwrap().contains("n3"));
        assert_eq!(r.decide(Duration::ZERO, &own(0)), Decision::Live);
    }

    #[test]
    fn a_failed_bootstrap_chooses_again_among_the_peers_that_answer() {
        let mut r = start(Trust::Unknown);
        r.heard("n2", 4);
        r.heard("n3", 7);
        assert_eq!(
            r.decide(Duration::ZERO, &own(0)),
            Decision::Bootstrap("n3".into())
        );
        r.bootstrap_failed();
        // n2 holds less than n3 did: bootstrapping from it now and from n3
        // later is still safe, but the node may not go live before n3 answers.
        assert_eq!(
            r.decide(Duration::ZERO, &own(0)),
            Decision::Bootstrap("n2".into())
        );
        r.bootstrapped(VClock::new());
        assert!(!r.serves_reads(), "n3 may hold writes of n1 that n2 lacks");
        r.unreachable("n3");
        assert_eq!(r.decide(10 * S, &own(4)), Decision::Wait, "n3 held more");
        r.heard("n3", 7);
        assert_eq!(
            r.decide(Duration::ZERO, &own(4)),
            Decision::Bootstrap("n3".into())
        );
    }

    #[test]
    fn a_trusted_store_goes_live_once_every_peer_answered_or_failed_or_after_grace() {
        let mut r = start(Trust::Complete);
        assert!(r.serves_reads());
        r.heard("n2", 3);
        assert_eq!(r.decide(Duration::ZERO, &own(3)), Decision::Wait);
        r.unreachable("n3");
        assert_eq!(r.decide(Duration::ZERO, &own(3)), Decision::Live);

        let mut r = start(Trust::Complete);
        assert_eq!(r.decide(S / 2, &own(3)), Decision::Wait);
        assert_eq!(r.decide(S, &own(3)), Decision::Live);
    }

    #[test]
    fn a_restored_backup_is_caught_when_a_peer_answers() {
        let mut r = start(Trust::Complete);
        r.heard("n2", 9);
        assert_eq!(
            r.decide(Duration::ZERO, &own(5)),
            Decision::Bootstrap("n2".into())
        );
    }

    #[test]
    fn a_forced_new_history_goes_live_alone_and_live_stays_live() {
        let mut r = Recovery::new(
            "n1".into(),
            peers(),
            Trust::Unknown,
            true,
            Duration::ZERO,
            S,
        );
        assert_eq!(r.decide(Duration::ZERO, &own(0)), Decision::Live);
        r.heard("n2", 9);
        assert_eq!(r.decide(Duration::ZERO, &own(0)), Decision::Live);
        assert_eq!(r.waiting_for(&own(0)), None);
    }

    #[test]
    fn an_untrusted_store_behind_on_other_origins_bootstraps_a_trusted_one_does_not() {
        let mut r = start(Trust::Unknown);
        r.heard("n2", 0);
        r.heard("n3", 0);
        r.ahead("n3");
        assert_eq!(
            r.decide(Duration::ZERO, &own(0)),
            Decision::Bootstrap("n3".into())
        );
        r.bootstrapped(VClock::new());
        assert_eq!(r.decide(Duration::ZERO, &own(0)), Decision::Live);

        let mut r = start(Trust::Complete);
        r.heard("n2", 5);
        r.heard("n3", 5);
        r.ahead("n3");
        assert_eq!(
            r.decide(Duration::ZERO, &own(5)),
            Decision::Live,
            "the logs hold the rest"
        );
    }

    #[test]
    fn a_node_without_peers_is_live_at_once() {
        let mut r = Recovery::new(
            "n1".into(),
            Vec::new(),
            Trust::Unknown,
            false,
            Duration::ZERO,
            S,
        );
        assert_eq!(r.decide(Duration::ZERO, &own(0)), Decision::Live);
    }

    #[test]
    fn strangers_are_ignored() {
        let mut r = start(Trust::Unknown);
        r.heard("n9", 100);
        r.heard("n2", 0);
        r.heard("n3", 0);
        assert_eq!(r.decide(Duration::ZERO, &own(0)), Decision::Live);
    }

    #[test]
    fn an_unfinished_store_finishes_its_bootstrap_before_anything_else() {
        let mut r = start(Trust::Unfinished);
        assert!(!r.serves_reads());
        r.heard("n2", 3);
        r.heard("n3", 3);
        assert_eq!(
            r.decide(10 * S, &own(3)),
            Decision::Bootstrap("n2".into()),
            "no peer holds more, but the copied keys are not what this clock counts"
        );
        r.bootstrap_failed();
        assert_eq!(r.decide(10 * S, &own(3)), Decision::Bootstrap("n3".into()));
        r.bootstrap_failed();
        assert_eq!(r.decide(10 * S, &own(3)), Decision::Wait);
        assert!(r
            .waiting_for(&own(3))
            .unwrap()
            .contains("unfinished bootstrap"));
        r.heard("n2", 3);
        assert_eq!(r.decide(10 * S, &own(3)), Decision::Bootstrap("n2".into()));
        r.bootstrapped(own(3));
        r.heard("n3", 3);
        assert_eq!(r.decide(10 * S, &own(3)), Decision::Live);
    }

    #[test]
    fn a_bootstrap_that_fails_half_way_leaves_an_unfinished_store() {
        let mut r = start(Trust::Complete);
        r.heard("n2", 5);
        assert_eq!(
            r.decide(Duration::ZERO, &own(2)),
            Decision::Bootstrap("n2".into())
        );
        r.bootstrap_failed();
        assert!(!r.serves_reads(), "half copied");
        r.unreachable("n2");
        r.heard("n3", 2);
        assert_eq!(
            r.decide(10 * S, &own(2)),
            Decision::Bootstrap("n3".into()),
            "a complete store's grace no longer applies"
        );
    }

    #[test]
    fn a_bootstrapped_node_serves_nothing_until_it_has_what_its_keys_show() {
        let mut r = start(Trust::Unknown);
        r.heard("n2", 4);
        r.heard("n3", 4);
        assert_eq!(
            r.decide(Duration::ZERO, &own(0)),
            Decision::Bootstrap("n2".into())
        );
        // The chunks were read at n2's clocks {n1:4,n2:7} and {n1:4,n2:9}.
        let join: VClock = [("n1", 4), ("n2", 9)].into_iter().collect();
        r.bootstrapped(join);
        let meet: VClock = [("n1", 4), ("n2", 7)].into_iter().collect();
        assert_eq!(r.decide(Duration::ZERO, &meet), Decision::Wait);
        assert!(!r.serves_reads());
        assert!(r.waiting_for(&meet).unwrap().contains("catching up"));
        let caught_up: VClock = [("n1", 4), ("n2", 9), ("n3", 1)].into_iter().collect();
        assert_eq!(r.decide(Duration::ZERO, &caught_up), Decision::Live);
        assert!(r.serves_reads());
    }

    #[test]
    fn an_unfinished_store_goes_live_only_when_forced() {
        let mut r = Recovery::new(
            "n1".into(),
            peers(),
            Trust::Unfinished,
            true,
            Duration::ZERO,
            S,
        );
        assert_eq!(r.decide(Duration::ZERO, &own(0)), Decision::Live);
    }
}
