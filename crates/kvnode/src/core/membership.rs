//! Membership: which nodes make up the cluster, as replicated state that
//! every node converges on.
//!
//! The configured node list seeds it (every entry at version 0). After that,
//! changes are made online at any node (add, remove, replace an address) and
//! spread by merging: each node sends its membership to every node it knows
//! of, and takes the merge of what it is answered.
//!
//! The merge is entry by entry, so it is commutative, associative and
//! idempotent, and concurrent changes at different nodes both survive:
//!
//! - a removed entry wins over a present one: removal is final, and a
//!   removed id is never reused (a new node with that id would number its
//!   writes from 1 again, reusing the removed node's dots);
//! - of two present entries (an address changed twice), the higher
//!   `(version, by, url)` wins.
//!
//! A change takes version one above the highest this node holds, as a
//! Lamport clock: a change made after seeing another wins over it.
//!
//! A removed node keeps its entry. Its writes stay in every node's store and
//! clocks keep its entry; peers no longer send to it and it no longer holds
//! back log collection.

use std::collections::BTreeMap;

use vclock_proto::{MemberEntry, NodeId};

/// Why a membership change is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MembershipError {
    /// The request itself is malformed (an id or a URL).
    #[error("{0}")]
    Invalid(String),
    /// The change conflicts with the membership (an id in use, an unknown
    /// node, the last member).
    #[error("{0}")]
    Conflict(String),
    /// No such node.
    #[error("{0}")]
    Unknown(String),
}

/// Most nodes a membership lists, removed ones included: every clock keeps an
/// entry for each.
pub const MAX_MEMBERS: usize = 1024;

/// What a node holds of the membership.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Membership {
    entries: BTreeMap<NodeId, MemberEntry>,
}

/// True when `id` is a valid node id: 1-64 letters, digits, `-`, `_` or `.`,
/// and neither `.` nor `..` (it names a data directory and labels metrics).
pub fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id != "."
        && id != ".."
        && id.len() <= 64
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
}

/// `url` as a member's base URL (no trailing slash), or why it is not one.
pub fn base_url(url: &str) -> Result<String, String> {
    let url = url.trim().trim_end_matches('/');
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"));
    match rest {
        Some(host) if !host.is_empty() && url.len() <= 512 && url.chars().all(|c| c.is_ascii_graphic()) => {
            Ok(url.to_owned())
        }
        _ => Err(format!(
            "url {url:?} must be an http:// or https:// base URL of at most 512 printable characters"
        )),
    }
}

fn check_entry(e: &MemberEntry) -> Result<(), String> {
    if !valid_id(&e.id) {
        return Err(format!("member id {:?} is not a valid node id", e.id));
    }
    if !e.by.is_empty() && !valid_id(&e.by) {
        return Err(format!(
            "member {} was changed by {:?}, not a valid node id",
            e.id, e.by
        ));
    }
    base_url(&e.url).map(|_| ())
}

/// The key that decides which of two entries of one id wins.
fn rank(e: &MemberEntry) -> (bool, u64, &str, &str) {
    (e.removed, e.version, e.by.as_str(), e.url.as_str())
}

impl Membership {
    /// The membership seeded from the configured list of `(id, url)`.
    pub fn seed<'a>(members: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        let entries = members
            .into_iter()
            .map(|(id, url)| {
                let entry = MemberEntry {
                    id: id.to_owned(),
                    url: url.to_owned(),
                    removed: false,
                    version: 0,
                    by: String::new(),
                };
                (entry.id.clone(), entry)
            })
            .collect();
        Self { entries }
    }

    /// A membership from entries sent by a peer or read from disk; refused
    /// when an entry is malformed or an id appears twice.
    pub fn from_entries(entries: Vec<MemberEntry>) -> Result<Self, String> {
        if entries.len() > MAX_MEMBERS {
            return Err(format!(
                "{} members: a cluster has at most {MAX_MEMBERS}, removed ones included",
                entries.len()
            ));
        }
        let mut out = BTreeMap::new();
        for e in entries {
            check_entry(&e)?;
            let id = e.id.clone();
            if out.insert(id.clone(), e).is_some() {
                return Err(format!("member {id} is listed twice"));
            }
        }
        Ok(Self { entries: out })
    }

    /// Every entry, removed ones included, in id order.
    pub fn entries(&self) -> Vec<MemberEntry> {
        self.entries.values().cloned().collect()
    }

    /// The highest version of any entry.
    pub fn version(&self) -> u64 {
        self.entries.values().map(|e| e.version).max().unwrap_or(0)
    }

    /// The entry of `id`, removed or not.
    pub fn get(&self, id: &str) -> Option<&MemberEntry> {
        self.entries.get(id)
    }

    /// Every node ever a member, removed ones included, in id order: the
    /// nodes whose writes and clock entries are valid.
    pub fn known(&self) -> Vec<NodeId> {
        self.entries.keys().cloned().collect()
    }

    /// The members that are not removed, in id order.
    pub fn active(&self) -> impl Iterator<Item = &MemberEntry> {
        self.entries.values().filter(|e| !e.removed)
    }

    /// True when `id` is a member that is not removed.
    pub fn is_active(&self, id: &str) -> bool {
        self.entries.get(id).is_some_and(|e| !e.removed)
    }

    /// True when `id` is or was a member.
    pub fn is_known(&self, id: &str) -> bool {
        self.entries.contains_key(id)
    }

    /// Takes in `other`, entry by entry; true when anything changed.
    pub fn merge(&mut self, other: &Membership) -> bool {
        let mut changed = false;
        for (id, theirs) in &other.entries {
            match self.entries.get_mut(id) {
                Some(ours) if rank(ours) >= rank(theirs) => {}
                Some(ours) => {
                    *ours = theirs.clone();
                    changed = true;
                }
                None => {
                    self.entries.insert(id.clone(), theirs.clone());
                    changed = true;
                }
            }
        }
        changed
    }

    fn stamp(&self, by: &str, id: &str, url: String, removed: bool) -> MemberEntry {
        MemberEntry {
            id: id.to_owned(),
            url,
            removed,
            // A peer may claim any version; at the top, changes tie and the
            // rest of the rank decides.
            version: self.version().saturating_add(1),
            by: by.to_owned(),
        }
    }

    /// Adds node `id` at `url`, a change made at node `by`. Adding a member
    /// again at the same address changes nothing (`Ok(false)`).
    pub fn add(&mut self, by: &str, id: &str, url: &str) -> Result<bool, MembershipError> {
        if !valid_id(id) {
            return Err(MembershipError::Invalid(format!(
                "node id {id:?} must be 1-64 characters of letters, digits, '-', '_' or '.', and not \".\" or \"..\""
            )));
        }
        let url = base_url(url).map_err(MembershipError::Invalid)?;
        match self.entries.get(id) {
            Some(e) if e.removed => Err(MembershipError::Conflict(format!(
                "{id} was removed from the cluster, and a removed id is never reused: \
                 give the new node another id"
            ))),
            Some(e) if e.url == url => Ok(false),
            Some(e) => Err(MembershipError::Conflict(format!(
                "{id} is already a member at {}; to move it to {url}, replace it",
                e.url
            ))),
            None if self.entries.len() >= MAX_MEMBERS => Err(MembershipError::Conflict(format!(
                "the cluster has had {MAX_MEMBERS} members, removed ones included: no more"
            ))),
            None => {
                let entry = self.stamp(by, id, url, false);
                self.entries.insert(id.to_owned(), entry);
                Ok(true)
            }
        }
    }

    /// Removes node `id`, a change made at node `by` (another member).
    /// Removing a removed node changes nothing (`Ok(false)`); the last
    /// member stays.
    pub fn remove(&mut self, by: &str, id: &str) -> Result<bool, MembershipError> {
        let Some(e) = self.entries.get(id) else {
            return Err(self.unknown(id));
        };
        if e.removed {
            return Ok(false);
        }
        if id == by {
            return Err(MembershipError::Conflict(format!(
                "{id} cannot remove itself: ask another member"
            )));
        }
        if self.active().count() == 1 {
            return Err(MembershipError::Conflict(format!(
                "{id} is the cluster's last member"
            )));
        }
        let entry = self.stamp(by, id, e.url.clone(), true);
        self.entries.insert(id.to_owned(), entry);
        Ok(true)
    }

    /// Gives member `id` a new address (a replacement machine), a change made
    /// at node `by`. The same address changes nothing (`Ok(false)`).
    pub fn replace(&mut self, by: &str, id: &str, url: &str) -> Result<bool, MembershipError> {
        let url = base_url(url).map_err(MembershipError::Invalid)?;
        let Some(e) = self.entries.get(id) else {
            return Err(self.unknown(id));
        };
        if e.removed {
            return Err(MembershipError::Conflict(format!(
                "{id} was removed from the cluster; add a node with a new id instead"
            )));
        }
        if e.url == url {
            return Ok(false);
        }
        let entry = self.stamp(by, id, url, false);
        self.entries.insert(id.to_owned(), entry);
        Ok(true)
    }

    fn unknown(&self, id: &str) -> MembershipError {
        let ids: Vec<&str> = self.entries.keys().map(String::as_str).collect();
        MembershipError::Unknown(format!(
            "unknown node {id:?}: the cluster's nodes are {}",
            ids.join(", ")
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn seeded() -> Membership {
        Membership::seed([
            ("a", "http://a:1"),
            ("b", "http://b:1"),
            ("c", "http://c:1"),
        ])
    }

    #[test]
    fn changes_take_a_version_above_any_seen() {
        let mut m = seeded();
        assert_eq!(m.version(), 0);
        assert_eq!(m.add("a", "d", "http://d:1/"), Ok(true));
        assert_eq!(
            m.get("d").unwrap().url,
            "http://d:1",
            "trailing slash dropped"
        );
        assert_eq!(m.version(), 1);
        assert_eq!(
            m.add("b", "d", "http://d:1"),
            Ok(false),
            "the same add again"
        );
        assert!(matches!(
            m.add("b", "d", "http://d:2"),
            Err(MembershipError::Conflict(_))
        ));
        assert_eq!(m.remove("b", "c"), Ok(true));
        assert_eq!(m.get("c").unwrap().version, 2);
        assert_eq!(m.known(), ["a", "b", "c", "d"]);
        let active: Vec<&str> = m.active().map(|e| e.id.as_str()).collect();
        assert_eq!(active, ["a", "b", "d"]);
    }

    #[test]
    fn a_removed_id_is_never_reused() {
        let mut m = seeded();
        m.remove("a", "c").unwrap();
        let err = m.add("a", "c", "http://c:1").unwrap_err();
        assert!(err.to_string().contains("never reused"), "{err}");
        assert!(matches!(
            m.replace("a", "c", "http://c:2"),
            Err(MembershipError::Conflict(_))
        ));
        assert_eq!(m.remove("b", "c"), Ok(false));
    }

    #[test]
    fn the_last_member_stays_and_bad_input_changes_nothing() {
        let mut m = Membership::seed([("a", "http://a:1"), ("b", "http://b:1")]);
        assert!(matches!(
            m.remove("a", "a"),
            Err(MembershipError::Conflict(_))
        ));
        m.remove("a", "b").unwrap();
        let before = m.clone();
        assert!(matches!(
            m.remove("b", "a"),
            Err(MembershipError::Conflict(_))
        ));
        assert!(matches!(
            m.add("a", "..", "http://x:1"),
            Err(MembershipError::Invalid(_))
        ));
        assert!(matches!(
            m.add("a", "x", "ftp://x"),
            Err(MembershipError::Invalid(_))
        ));
        assert!(matches!(
            m.add("a", "x", "http://"),
            Err(MembershipError::Invalid(_))
        ));
        assert!(matches!(
            m.remove("a", "zz"),
            Err(MembershipError::Unknown(_))
        ));
        assert_eq!(m, before);
    }

    #[test]
    fn removal_wins_over_a_concurrent_move() {
        let (mut at_a, mut at_b) = (seeded(), seeded());
        at_a.replace("a", "c", "http://c:2").unwrap();
        at_b.remove("b", "c").unwrap();
        let mut merged = at_a.clone();
        merged.merge(&at_b);
        assert!(merged.get("c").unwrap().removed);
        at_b.merge(&at_a);
        assert_eq!(merged, at_b);
    }

    #[test]
    fn a_claimed_top_version_does_not_overflow() {
        let mut m = seeded();
        let top = MemberEntry {
            id: "d".into(),
            url: "http://d:1".into(),
            removed: false,
            version: u64::MAX,
            by: "x".into(),
        };
        m.merge(&Membership::from_entries(vec![top]).unwrap());
        assert_eq!(m.remove("a", "d"), Ok(true));
        assert!(m.get("d").unwrap().removed, "the removal still wins");
        let many = (0..=MAX_MEMBERS)
            .map(|i| MemberEntry {
                id: format!("n{i}"),
                url: "http://n:1".into(),
                removed: false,
                version: 0,
                by: String::new(),
            })
            .collect();
        assert!(Membership::from_entries(many).is_err());
    }

    #[test]
    fn malformed_entries_are_refused() {
        let entry = |id: &str, url: &str| MemberEntry {
            id: id.into(),
            url: url.into(),
            removed: false,
            version: 1,
            by: "a".into(),
        };
        assert!(Membership::from_entries(vec![entry("a", "http://a:1")]).is_ok());
        assert!(Membership::from_entries(vec![entry("a/b", "http://a:1")]).is_err());
        assert!(Membership::from_entries(vec![entry("a", "a:1")]).is_err());
        let twice = vec![entry("a", "http://a:1"), entry("a", "http://a:2")];
        assert!(Membership::from_entries(twice)
            .unwrap_err()
            .contains("twice"));
    }

    /// A random change at a random node of `a`..`e`.
    fn change(m: &mut Membership, by: u8, op: u8, id: u8, port: u8) {
        let by = ((b'a' + by % 5) as char).to_string();
        let id = ((b'a' + id % 6) as char).to_string();
        let url = format!("http://{id}:{}", port % 3);
        let _ = match op % 3 {
            0 => m.add(&by, &id, &url),
            1 => m.remove(&by, &id),
            _ => m.replace(&by, &id, &url),
        };
    }

    proptest! {
        /// Replicas that make changes concurrently and then exchange what
        /// they hold, in any order, end with the same membership.
        #[test]
        fn replicas_converge_whatever_the_order(
            changes in prop::collection::vec((0u8..3, any::<u8>(), any::<u8>(), any::<u8>(), any::<u8>()), 0..30),
            order in prop::collection::vec((0usize..3, 0usize..3), 0..20),
        ) {
            let mut replicas = [seeded(), seeded(), seeded()];
            let mut order = order.into_iter();
            for (at, by, op, id, port) in changes {
                change(&mut replicas[at as usize], by, op, id, port);
                if let Some((from, to)) = order.next() {
                    let sent = replicas[from].clone();
                    replicas[to].merge(&sent);
                }
            }
            // Then everyone hears everyone (two rounds spread everything).
            for _ in 0..2 {
                for from in 0..3 {
                    for to in 0..3 {
                        let sent = replicas[from].clone();
                        replicas[to].merge(&sent);
                    }
                }
            }
            prop_assert_eq!(&replicas[0], &replicas[1]);
            prop_assert_eq!(&replicas[1], &replicas[2]);
            // Merging again changes nothing.
            let again = replicas[0].clone();
            prop_assert!(!replicas[0].merge(&again));
        }
    }
}
