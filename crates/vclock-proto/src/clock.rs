//! The vector clock.

use std::collections::btree_map::{self, BTreeMap};
use std::fmt;

use serde::{Deserialize, Serialize};

/// The name of a node, such as `node1`.
pub type NodeId = String;

/// A position in one origin's sequence of writes; the first write is 1.
pub type Seq = u64;

/// How two clocks are ordered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Causality {
    /// Every entry of the left clock is `<=` the right one, and one is `<`.
    Before,
    /// Every entry of the left clock is `>=` the right one, and one is `>`.
    After,
    /// All entries are equal.
    Equal,
    /// Each clock has an entry larger than the other's.
    Concurrent,
}

/// A vector clock: node id -> counter. A missing entry is 0, so `{}` and
/// `{"node1":0}` are the same clock (they compare `Equal` and `==`).
///
/// On the wire it is a JSON object, `{"node1":2,"node2":1,"node3":0}`. Entries are
/// kept sorted by node id, so iteration and serialisation are deterministic, and
/// comparison walks both clocks once without allocating.
#[derive(Clone, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct VClock(BTreeMap<NodeId, Seq>);

impl VClock {
    /// The empty clock (every entry 0).
    pub fn new() -> Self {
        Self::default()
    }

    /// A clock with an explicit zero entry for each node, so that it serialises
    /// with every node named, as the prototype's clocks did.
    pub fn zeroed<I, S>(nodes: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<NodeId>,
    {
        Self(nodes.into_iter().map(|n| (n.into(), 0)).collect())
    }

    /// The counter of `node` (0 when absent).
    pub fn get(&self, node: &str) -> Seq {
        self.0.get(node).copied().unwrap_or(0)
    }

    /// Sets the counter of `node`.
    pub fn set(&mut self, node: &str, seq: Seq) {
        match self.0.get_mut(node) {
            Some(entry) => *entry = seq,
            None => {
                self.0.insert(node.to_owned(), seq);
            }
        }
    }

    /// Adds one to the counter of `node` and returns the new value.
    pub fn increment(&mut self, node: &str) -> Seq {
        let next = self.get(node) + 1;
        self.set(node, next);
        next
    }

    /// Pointwise maximum, in place.
    pub fn merge(&mut self, other: &VClock) {
        for (node, &seq) in &other.0 {
            if seq > self.get(node) {
                self.set(node, seq);
            }
        }
    }

    /// Pointwise minimum, in place. Entries absent from `other` become 0.
    pub fn meet(&mut self, other: &VClock) {
        for (node, seq) in self.0.iter_mut() {
            *seq = (*seq).min(other.get(node));
        }
    }

    /// True when every entry of `self` is `>=` the same entry of `other`.
    pub fn covers(&self, other: &VClock) -> bool {
        other.0.iter().all(|(node, &seq)| self.get(node) >= seq)
    }

    /// True when `self` counts the write `seq` of `origin`, that is
    /// `self[origin] >= seq`.
    pub fn contains(&self, origin: &str, seq: Seq) -> bool {
        self.get(origin) >= seq
    }

    /// Compares two clocks in one pass over both, without allocating.
    pub fn compare(&self, other: &VClock) -> Causality {
        let (mut less, mut greater) = (false, false);
        let mut a = self.0.iter().peekable();
        let mut b = other.0.iter().peekable();
        loop {
            let (x, y) = match (a.peek(), b.peek()) {
                (None, None) => break,
                (Some((_, &x)), None) => {
                    a.next();
                    (x, 0)
                }
                (None, Some((_, &y))) => {
                    b.next();
                    (0, y)
                }
                (Some((ka, &x)), Some((kb, &y))) => match ka.cmp(kb) {
                    std::cmp::Ordering::Less => {
                        a.next();
                        (x, 0)
                    }
                    std::cmp::Ordering::Greater => {
                        b.next();
                        (0, y)
                    }
                    std::cmp::Ordering::Equal => {
                        a.next();
                        b.next();
                        (x, y)
                    }
                },
            };
            less |= x < y;
            greater |= x > y;
            if less && greater {
                return Causality::Concurrent;
            }
        }
        match (less, greater) {
            (false, false) => Causality::Equal,
            (true, false) => Causality::Before,
            (false, true) => Causality::After,
            (true, true) => Causality::Concurrent,
        }
    }

    /// The entries where `self` is behind `want`: `(node, have, want)`.
    pub fn missing<'a>(&'a self, want: &'a VClock) -> impl Iterator<Item = Missing> + 'a {
        want.0.iter().filter_map(move |(node, &w)| {
            let have = self.get(node);
            (have < w).then(|| Missing {
                node: node.clone(),
                have,
                want: w,
            })
        })
    }

    /// Sum of all entries. Used to order concurrent writes deterministically:
    /// if `a` happened before `b`, `a.sum() < b.sum()`.
    pub fn sum(&self) -> u64 {
        self.0.values().fold(0u64, |acc, &v| acc.saturating_add(v))
    }

    /// Iterates over the explicit entries in node order.
    pub fn iter(&self) -> btree_map::Iter<'_, NodeId, Seq> {
        self.0.iter()
    }

    /// The node ids with an explicit entry (possibly 0).
    pub fn nodes(&self) -> impl Iterator<Item = &NodeId> {
        self.0.keys()
    }

    /// Number of explicit entries.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True when the clock has no explicit entry.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl PartialEq for VClock {
    fn eq(&self, other: &Self) -> bool {
        self.compare(other) == Causality::Equal
    }
}

impl Eq for VClock {}

impl PartialOrd for VClock {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        match self.compare(other) {
            Causality::Before => Some(std::cmp::Ordering::Less),
            Causality::After => Some(std::cmp::Ordering::Greater),
            Causality::Equal => Some(std::cmp::Ordering::Equal),
            Causality::Concurrent => None,
        }
    }
}

impl fmt::Debug for VClock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.0.iter()).finish()
    }
}

impl fmt::Display for VClock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("{")?;
        for (i, (node, seq)) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{node}:{seq}")?;
        }
        f.write_str("}")
    }
}

impl<S: Into<NodeId>> FromIterator<(S, Seq)> for VClock {
    fn from_iter<I: IntoIterator<Item = (S, Seq)>>(iter: I) -> Self {
        Self(iter.into_iter().map(|(n, s)| (n.into(), s)).collect())
    }
}

impl<'a> IntoIterator for &'a VClock {
    type Item = (&'a NodeId, &'a Seq);
    type IntoIter = btree_map::Iter<'a, NodeId, Seq>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

/// One entry a clock lacks: `node` is at `have`, `want` was asked for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Missing {
    /// The node whose writes are missing.
    pub node: NodeId,
    /// How many of its writes are here.
    pub have: Seq,
    /// How many were required.
    pub want: Seq,
}

impl fmt::Display for Missing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (have {}, need {})", self.node, self.have, self.want)
    }
}

/// A JSON object of node ids to non-negative counters.
#[cfg(feature = "openapi")]
impl utoipa::PartialSchema for VClock {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{KnownFormat, ObjectBuilder, SchemaFormat, Type};
        let counter = ObjectBuilder::new()
            .schema_type(Type::Integer)
            .format(Some(SchemaFormat::KnownFormat(KnownFormat::Int64)))
            .minimum(Some(0));
        ObjectBuilder::new()
            .schema_type(Type::Object)
            .additional_properties(Some(counter))
            .description(Some(
                "A vector clock: node id to counter; a missing entry is 0",
            ))
            .examples([serde_json::json!({"node1": 2, "node2": 1, "node3": 0})])
            .into()
    }
}

#[cfg(feature = "openapi")]
impl utoipa::ToSchema for VClock {}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn clock(entries: &[(&str, Seq)]) -> VClock {
        entries.iter().map(|&(n, s)| (n, s)).collect()
    }

    #[test]
    fn missing_entries_are_zero() {
        let a = clock(&[("node1", 0), ("node2", 3)]);
        let b = clock(&[("node2", 3)]);
        assert_eq!(a, b);
        assert_eq!(a.compare(&b), Causality::Equal);
        assert_eq!(a.get("node9"), 0);
    }

    #[test]
    fn compare_cases() {
        let a = clock(&[("node1", 1)]);
        let b = clock(&[("node1", 1), ("node2", 1)]);
        let c = clock(&[("node3", 1)]);
        assert_eq!(a.compare(&b), Causality::Before);
        assert_eq!(b.compare(&a), Causality::After);
        assert_eq!(b.compare(&c), Causality::Concurrent);
        assert!(b.covers(&a));
        assert!(!a.covers(&b));
        assert!(a < b);
        assert_eq!(b.partial_cmp(&c), None);
    }

    #[test]
    fn wire_format_is_the_prototypes() {
        let c = VClock::zeroed(["node1", "node2", "node3"]);
        assert_eq!(
            serde_json::to_string(&c).unwrap(),
            r#"{"node1":0,"node2":0,"node3":0}"#
        );
        let parsed: VClock = serde_json::from_str(r#"{"node2":1,"node1":2}"#).unwrap();
        assert_eq!(parsed.get("node1"), 2);
        assert_eq!(parsed.get("node2"), 1);
        assert!(serde_json::from_str::<VClock>(r#"{"node1":-1}"#).is_err());
        assert!(serde_json::from_str::<VClock>(r#"{"node1":1.5}"#).is_err());
        assert!(serde_json::from_str::<VClock>(r#"[1,2]"#).is_err());
    }

    #[test]
    fn missing_names_each_lagging_entry() {
        let have = clock(&[("node1", 2), ("node2", 5)]);
        let want = clock(&[("node1", 3), ("node2", 5), ("node3", 1)]);
        let missing: Vec<_> = have.missing(&want).collect();
        assert_eq!(
            missing,
            vec![
                Missing {
                    node: "node1".into(),
                    have: 2,
                    want: 3
                },
                Missing {
                    node: "node3".into(),
                    have: 0,
                    want: 1
                },
            ]
        );
    }

    fn arb_clock() -> impl Strategy<Value = VClock> {
        proptest::collection::btree_map(
            prop_oneof![Just("a"), Just("b"), Just("c"), Just("d")].prop_map(String::from),
            0u64..5,
            0..4,
        )
        .prop_map(VClock)
    }

    fn merged(a: &VClock, b: &VClock) -> VClock {
        let mut m = a.clone();
        m.merge(b);
        m
    }

    proptest! {
        #[test]
        fn merge_is_commutative(a in arb_clock(), b in arb_clock()) {
            prop_assert_eq!(merged(&a, &b), merged(&b, &a));
        }

        #[test]
        fn merge_is_associative(a in arb_clock(), b in arb_clock(), c in arb_clock()) {
            prop_assert_eq!(merged(&merged(&a, &b), &c), merged(&a, &merged(&b, &c)));
        }

        #[test]
        fn merge_is_idempotent(a in arb_clock(), b in arb_clock()) {
            prop_assert_eq!(merged(&a, &a), a.clone());
            let ab = merged(&a, &b);
            prop_assert_eq!(merged(&ab, &b), ab);
        }

        #[test]
        fn merge_is_the_least_upper_bound(a in arb_clock(), b in arb_clock(), c in arb_clock()) {
            let m = merged(&a, &b);
            prop_assert!(m.covers(&a) && m.covers(&b));
            if c.covers(&a) && c.covers(&b) {
                prop_assert!(c.covers(&m));
            }
            // a <= b exactly when merging b into a gives b.
            prop_assert_eq!(b.covers(&a), merged(&a, &b) == b);
        }

        #[test]
        fn compare_is_antisymmetric(a in arb_clock(), b in arb_clock()) {
            let flipped = match a.compare(&b) {
                Causality::Before => Causality::After,
                Causality::After => Causality::Before,
                other => other,
            };
            prop_assert_eq!(b.compare(&a), flipped);
            prop_assert_eq!(a.compare(&a), Causality::Equal);
        }

        #[test]
        fn compare_is_transitive(a in arb_clock(), b in arb_clock(), c in arb_clock()) {
            if a <= b && b <= c {
                prop_assert!(a <= c);
            }
            if a < b && b < c {
                prop_assert!(a < c);
            }
        }

        #[test]
        fn compare_agrees_with_covers(a in arb_clock(), b in arb_clock()) {
            let expected = match (b.covers(&a), a.covers(&b)) {
                (true, true) => Causality::Equal,
                (true, false) => Causality::Before,
                (false, true) => Causality::After,
                (false, false) => Causality::Concurrent,
            };
            prop_assert_eq!(a.compare(&b), expected);
            if a < b {
                prop_assert!(a.sum() < b.sum());
            }
        }

        #[test]
        fn meet_is_the_greatest_lower_bound(a in arb_clock(), b in arb_clock()) {
            let mut m = a.clone();
            m.meet(&b);
            prop_assert!(a.covers(&m) && b.covers(&m));
        }

        #[test]
        fn serde_round_trips(a in arb_clock()) {
            let text = serde_json::to_string(&a).unwrap();
            let back: VClock = serde_json::from_str(&text).unwrap();
            prop_assert_eq!(back, a);
        }
    }
}
