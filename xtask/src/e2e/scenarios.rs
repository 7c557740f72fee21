//! The end-to-end scenarios.
//!
//! Each takes the running cluster, bounds its own time (fixed amounts of work; every
//! wait polls with a deadline), puts the cluster back as it found it (links resumed,
//! containers running, networks reconnected) even when it fails, and returns a
//! one-line account of what it checked. Keys are prefixed with the scenario's
//! name, so scenarios do not see each other's writes.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::{self, Display};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;
use vclock_proto::{Causality, Dot, GetResponse, VClock};

use super::docker;
use super::http::{LinkAction, NodeClient};

/// A scenario: a name for the command line and the table, a sentence, the check.
#[derive(Debug)]
pub(crate) struct Scenario {
    pub(crate) name: &'static str,
    pub(crate) about: &'static str,
    pub(crate) run: fn(&Cluster) -> anyhow::Result<String>,
}

/// Every scenario, in the order they run.
pub(crate) const SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "causal-chain",
        about: "the prototype's scenario 1: x=5 at node1, x=x+5 at node2 after reading it, node3 reads 10",
        run: causal_chain,
    },
    Scenario {
        name: "out-of-order",
        about: "the prototype's scenario 2 through the fault hook: node3 buffers node2's write until node1's arrives",
        run: out_of_order,
    },
    Scenario {
        name: "kill-restart",
        about: "docker kill node2 while writers run, start it again: no acknowledged write lost, all nodes converge",
        run: kill_restart,
    },
    Scenario {
        name: "partition",
        about: "node3 cut off the network, writes on both sides, reconnect: concurrent writes kept as siblings everywhere",
        run: partition,
    },
    Scenario {
        name: "sessions",
        about: "concurrent causal sessions at random nodes, checked for causal anomalies",
        run: sessions,
    },
    Scenario {
        name: "checker",
        about: "kvctl check through the native and the prototype API: no violation, convergence",
        run: checker,
    },
    Scenario {
        name: "replace-disk",
        about: "kvctl check while node2 is killed, its volume emptied and started again: it answers 503 recovering, bootstraps from a peer, reuses no dot its peers hold; no violation (writes it acknowledged that no peer had yet go with the disk), convergence",
        run: replace_disk,
    },
    Scenario {
        name: "txn-faults",
        about: "kvctl check --txn (snapshot reads, atomic writes) while node2 is killed and node3 cut off: no violation, convergence",
        run: txn_under_faults,
    },
    Scenario {
        name: "membership",
        about: "a 3-node cluster under kvctl check grows to 4 nodes and back to 3: node4 started beside it, added at node1, bootstraps and goes live, removed; no violation, convergence, every node holds node4 removed",
        run: membership,
    },
];

/// How long a single expected change (one replication hop) may take.
const SHORT: Duration = Duration::from_secs(10);
/// How long the nodes may take to converge after a fault heals.
const CONVERGE: Duration = Duration::from_secs(60);
/// How often polls retry.
const POLL_EVERY: Duration = Duration::from_millis(100);

/// The running cluster, as the scenarios see it.
#[derive(Debug)]
pub(crate) struct Cluster {
    /// node1, node2, node3, through their published ports.
    pub(crate) nodes: Vec<NodeClient>,
    /// Their container ids, in the same order.
    pub(crate) containers: Vec<String>,
    /// A network the partition scenario attaches the cut-off node to, so that the
    /// host still reaches it through its published port.
    pub(crate) access_network: String,
    /// Seed of the random choices.
    pub(crate) seed: u64,
}

impl Cluster {
    /// The workload checked while a scenario injects faults: 8 sessions of
    /// 300 operations over 4 keys, half of them writes, on the native API.
    fn fault_workload(&self) -> kvctl::check::Workload {
        kvctl::check::Workload {
            nodes: self.nodes.iter().map(|n| n.url.clone()).collect(),
            api: kvctl::check::Api::Native,
            sessions: 8,
            ops_per_session: 300,
            keys: 4,
            write_ratio: 0.5,
            timeout: Duration::from_secs(5),
            quiesce_timeout: CONVERGE,
            seed: self.seed,
            token: None,
        }
    }

    fn three(&self) -> [&NodeClient; 3] {
        [&self.nodes[0], &self.nodes[1], &self.nodes[2]]
    }

    /// Polls `GET /health` until every node has the same clock and it covers
    /// `floor` (the writes that were acknowledged); returns that clock.
    fn converge(&self, floor: &VClock) -> anyhow::Result<VClock> {
        poll("the nodes to converge", CONVERGE, || {
            let mut clocks = Vec::new();
            for node in &self.nodes {
                clocks.push((node.id.as_str(), node.health()?.timestamp));
            }
            for (id, clock) in &clocks {
                let missing: Vec<String> = clock.missing(floor).map(|m| m.to_string()).collect();
                ensure!(
                    missing.is_empty(),
                    "{id} at {clock} lacks acknowledged writes: {}",
                    missing.join(", ")
                );
            }
            let first = &clocks[0].1;
            if clocks.iter().any(|(_, clock)| clock != first) {
                let all: Vec<String> = clocks.iter().map(|(id, c)| format!("{id} {c}")).collect();
                bail!("clocks differ: {}", all.join(", "));
            }
            Ok(first.clone())
        })
    }

    /// Whether node `from` says its last request to node `to` succeeded.
    fn reachable(&self, from: usize, to: usize) -> anyhow::Result<bool> {
        let status = self.nodes[from].status()?;
        let peer = status
            .peers
            .iter()
            .find(|p| p.node == self.nodes[to].id)
            .with_context(|| {
                format!(
                    "{} does not list {} as a peer",
                    self.nodes[from].id, self.nodes[to].id
                )
            })?;
        Ok(peer.reachable)
    }

    /// Reads every key at every node and checks that all nodes hold the same
    /// siblings and show the same winner; returns node1's answers.
    fn agree<'k>(
        &self,
        keys: impl IntoIterator<Item = &'k str>,
    ) -> anyhow::Result<BTreeMap<String, GetResponse>> {
        let mut agreed = BTreeMap::new();
        for key in keys {
            let mut answers = Vec::new();
            for node in &self.nodes {
                answers.push((node.id.as_str(), node.get(key, None)?));
            }
            let (_, first) = &answers[0];
            for (id, answer) in &answers[1..] {
                ensure!(
                    Siblings(answer) == Siblings(first) && answer.value == first.value,
                    "the nodes disagree on {key}: {} has {} (value {}), {} has {} (value {})",
                    answers[0].0,
                    Siblings(first),
                    first.value,
                    id,
                    Siblings(answer),
                    answer.value
                );
            }
            let (_, first) = answers.swap_remove(0);
            agreed.insert(key.to_owned(), first);
        }
        Ok(agreed)
    }
}

/// Retries `attempt` every [`POLL_EVERY`] until it succeeds; after `timeout`, fails
/// with its last error (which says what was not there yet). A [`Fatal`] error stops
/// it at once.
fn poll<T>(
    what: impl Display,
    timeout: Duration,
    mut attempt: impl FnMut() -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        match attempt() {
            Ok(value) => return Ok(value),
            Err(err) if err.is::<Fatal>() => return Err(err),
            Err(err) if Instant::now() >= deadline => {
                bail!("waited {timeout:?} for {what}: {err:#}")
            }
            Err(_) => thread::sleep(POLL_EVERY),
        }
    }
}

/// An error that waiting longer cannot mend.
#[derive(Debug)]
struct Fatal(String);

impl Display for Fatal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Fatal {}

/// Runs a closure when dropped: puts the cluster back on every way out of a scenario.
struct OnDrop<F: FnMut()>(F);

impl<F: FnMut()> Drop for OnDrop<F> {
    fn drop(&mut self) {
        (self.0)()
    }
}

/// A key's siblings, compared as a set of (dot, deleted, value) and printed short.
struct Siblings<'a>(&'a GetResponse);

impl Siblings<'_> {
    fn set(&self) -> BTreeSet<(Dot, bool, String)> {
        self.0
            .siblings
            .iter()
            .map(|s| (s.dot.clone(), s.deleted, s.value.to_string()))
            .collect()
    }
}

impl PartialEq for Siblings<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.set() == other.set()
    }
}

impl Display for Siblings<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let all: Vec<String> = self
            .0
            .siblings
            .iter()
            .map(|s| {
                let value = if s.deleted {
                    "(deleted)".to_owned()
                } else {
                    s.value.to_string()
                };
                format!("{}={value}", s.dot)
            })
            .collect();
        write!(f, "[{}]", all.join(", "))
    }
}

/// An acknowledged write.
#[derive(Clone, Debug)]
struct Acked {
    key: String,
    value: serde_json::Value,
    dot: Dot,
    timestamp: VClock,
}

/// Checks that `answer` (a read of `w.key`) shows `w` or a write that overwrote it,
/// directly or not: a sibling whose timestamp covers `w`'s. (A write is removed
/// only by one that saw it, so one of these always remains once `w` is applied.)
fn shows(answer: &GetResponse, w: &Acked) -> bool {
    answer
        .siblings
        .iter()
        .any(|s| s.timestamp.covers(&w.timestamp))
}

fn merged<'a>(clocks: impl IntoIterator<Item = &'a VClock>) -> VClock {
    let mut all = VClock::new();
    for clock in clocks {
        all.merge(clock);
    }
    all
}

// ---- (a) the prototype's scenario 1 ---------------------------------------------

fn causal_chain(cluster: &Cluster) -> anyhow::Result<String> {
    let [node1, node2, node3] = cluster.three();
    let key = "causal-chain/x";
    cluster.converge(&VClock::new())?;

    let first = node1.write(key, &json!(5), None)?;
    let read = poll("node2 to read x=5", SHORT, || {
        let read = node2.read(key)?;
        ensure!(
            read.value.to_json_value().ok() == Some(json!(5)),
            "node2 reads {}",
            read.value
        );
        Ok(read)
    })?;
    let five = read
        .value
        .to_json_value()?
        .as_i64()
        .context("x is not a number")?;
    let second = node2.write(key, &json!(five + 5), Some(&read.timestamp))?;
    ensure!(
        second.timestamp.compare(&first.timestamp) == Causality::After,
        "node2's write {} does not follow node1's {}",
        second.timestamp,
        first.timestamp
    );
    let third = poll("node3 to read x=10", SHORT, || {
        let read = node3.read(key)?;
        ensure!(
            read.value.to_json_value().ok() == Some(json!(10)),
            "node3 reads {}",
            read.value
        );
        Ok(read)
    })?;
    ensure!(
        third.timestamp.covers(&second.timestamp),
        "node3 shows 10 with clock {}, which does not count the write {}",
        third.timestamp,
        second.timestamp
    );
    Ok(format!(
        "x=5 at node1 {}, x=10 at node2 {}, node3 reads 10 at {}",
        first.timestamp, second.timestamp, third.timestamp
    ))
}

// ---- (b) the prototype's scenario 2, with the fault hook ------------------------

fn out_of_order(cluster: &Cluster) -> anyhow::Result<String> {
    let [node1, node2, node3] = cluster.three();
    let key = "out-of-order/x";
    cluster.converge(&VClock::new())?;

    node1.link(&node3.id, LinkAction::Pause)?;
    let _resume = OnDrop(|| {
        let _ = node1.link(&node3.id, LinkAction::Resume);
    });
    let first = node1.write(key, &json!(100), None)?;
    let read = poll("node2 to read x=100", SHORT, || {
        let read = node2.read(key)?;
        ensure!(
            read.value.to_json_value().ok() == Some(json!(100)),
            "node2 reads {}",
            read.value
        );
        Ok(read)
    })?;
    let second = node2.write(key, &json!(200), Some(&read.timestamp))?;
    let second_dot = Dot::new(node2.id.as_str(), second.timestamp.get(&node2.id));
    let first_seq = first.timestamp.get(&node1.id);

    let status = poll("node3 to buffer node2's write", SHORT, || {
        let status = node3.status()?;
        ensure!(status.buffered_total > 0, "node3 buffers nothing yet");
        Ok(status)
    })?;
    ensure!(
        status.buffered_total == 1,
        "node3 buffers {} events, expected 1: {:?}",
        status.buffered_total,
        status.buffered_events
    );
    let buffered = status
        .buffered_events
        .first()
        .context("node3's status counts a buffered event but lists none")?;
    ensure!(
        buffered.dot == second_dot,
        "node3 buffers {}, expected node2's write {second_dot}",
        buffered.dot
    );
    ensure!(
        buffered
            .waiting_for
            .iter()
            .any(|m| m.node == node1.id && m.want >= first_seq),
        "node3 says {second_dot} waits for {:?}, expected node1:{first_seq}",
        buffered.waiting_for
    );
    let early = node3.read(key)?;
    ensure!(
        early.value.json() == "null",
        "node3 shows {} before node1's write reached it",
        early.value
    );

    node1.link(&node3.id, LinkAction::Resume)?;
    let applied = poll("node3 to apply both writes", SHORT, || {
        let read = node3.read(key)?;
        ensure!(
            read.value.to_json_value().ok() == Some(json!(200)),
            "node3 reads {}",
            read.value
        );
        let status = node3.status()?;
        ensure!(
            status.buffered_total == 0,
            "node3 still buffers {:?}",
            status.buffered_events
        );
        Ok(read)
    })?;
    ensure!(
        applied.timestamp.covers(&second.timestamp),
        "node3 reads 200 at {}, which does not count {}",
        applied.timestamp,
        second.timestamp
    );
    let answer = node3.get(key, None)?;
    ensure!(
        answer.siblings.len() == 1 && answer.siblings[0].dot == second_dot,
        "node3 holds {} for x: 200 ({second_dot}) should have replaced 100",
        Siblings(&answer)
    );
    Ok(format!(
        "node3 buffered {second_dot} waiting for node1:{first_seq}, showed nothing, then applied both in order and reads 200"
    ))
}

// ---- (c) a container killed while writers run -----------------------------------

/// Writes each writer must get acknowledged in each phase.
const WRITES_PER_PHASE: usize = 40;

fn kill_restart(cluster: &Cluster) -> anyhow::Result<String> {
    const VICTIM: usize = 1;
    let victim = &cluster.nodes[VICTIM];
    let container = cluster.containers[VICTIM].as_str();
    cluster.converge(&VClock::new())?;

    let acked = Mutex::new(Vec::<Acked>::new());
    let failures = Mutex::new(Vec::<String>::new());
    let counts: Vec<AtomicUsize> = cluster.nodes.iter().map(|_| AtomicUsize::new(0)).collect();
    let stop = AtomicBool::new(false);
    let killed = AtomicBool::new(false);
    let count = |i: usize| counts[i].load(Ordering::SeqCst);
    // Whatever happens, the victim runs again when the scenario ends.
    let _restart = OnDrop(|| {
        let _ = docker::docker(&["start", container]);
    });

    let writer = |index: usize, phase: &'static str| {
        let node = &cluster.nodes[index];
        let mut n = 0usize;
        while !stop.load(Ordering::SeqCst) {
            n += 1;
            let key = if n.is_multiple_of(4) {
                format!("kill-restart/shared/{}", n / 4 % 4)
            } else {
                format!("kill-restart/{}/{}", node.id, n % 16)
            };
            let value = json!({ "writer": node.id, "phase": phase, "n": n });
            match node.put(&key, &value, None) {
                Ok(answer) => {
                    acked.lock().unwrap().push(Acked {
                        key,
                        value,
                        dot: answer.dot,
                        timestamp: answer.timestamp,
                    });
                    counts[index].fetch_add(1, Ordering::SeqCst);
                }
                // The victim died under this writer: expected, and the end of it.
                Err(_) if phase == "before" && killed.load(Ordering::SeqCst) => return,
                Err(err) => {
                    failures.lock().unwrap().push(format!("{err:#}"));
                    return;
                }
            }
        }
    };

    let (before_kill, during_outage) = thread::scope(|scope| -> anyhow::Result<_> {
        let _stop = OnDrop(|| stop.store(true, Ordering::SeqCst));
        let victim_writer = scope.spawn(move || writer(VICTIM, "before"));
        for index in (0..cluster.nodes.len()).filter(|&i| i != VICTIM) {
            scope.spawn(move || writer(index, "all"));
        }
        let no_failures = || -> anyhow::Result<()> {
            match failures.lock().unwrap().first() {
                Some(failure) => Err(Fatal(format!("a write failed: {failure}")).into()),
                None => Ok(()),
            }
        };
        poll("writes at the victim", SHORT * 2, || {
            no_failures()?;
            ensure!(
                count(VICTIM) >= WRITES_PER_PHASE,
                "{} so far",
                count(VICTIM)
            );
            Ok(())
        })?;

        killed.store(true, Ordering::SeqCst);
        docker::docker(&["kill", container])?;
        let others: Vec<(usize, usize)> = (0..counts.len())
            .filter(|&i| i != VICTIM)
            .map(|i| (i, count(i)))
            .collect();
        poll("the victim's writer to stop", SHORT, || {
            ensure!(victim_writer.is_finished(), "it still writes");
            Ok(())
        })?;
        let before_kill = count(VICTIM);
        // Down until its peers have noticed (their requests to it fail), and the
        // others took writes meanwhile.
        poll(
            "the other nodes to notice the victim is down",
            SHORT * 2,
            || {
                for (i, node) in cluster
                    .nodes
                    .iter()
                    .enumerate()
                    .filter(|&(i, _)| i != VICTIM)
                {
                    ensure!(
                        !cluster.reachable(i, VICTIM)?,
                        "{} still reaches {}",
                        node.id,
                        victim.id
                    );
                }
                Ok(())
            },
        )?;
        poll(
            "writes at the other nodes while the victim is down",
            SHORT * 2,
            || {
                no_failures()?;
                for &(i, at_kill) in &others {
                    ensure!(
                        count(i) >= at_kill + WRITES_PER_PHASE,
                        "{}: {} since the kill",
                        cluster.nodes[i].id,
                        count(i) - at_kill
                    );
                }
                Ok(())
            },
        )?;
        let during_outage = others
            .iter()
            .map(|&(i, at_kill)| count(i) - at_kill)
            .sum::<usize>();

        docker::docker(&["start", container])?;
        poll("the victim to answer again", CONVERGE, || victim.health())?;
        scope.spawn(move || writer(VICTIM, "after"));
        poll("writes at the restarted victim", SHORT * 2, || {
            no_failures()?;
            ensure!(
                count(VICTIM) >= before_kill + WRITES_PER_PHASE,
                "{} since the restart",
                count(VICTIM) - before_kill
            );
            Ok(())
        })?;
        no_failures()?;
        Ok((before_kill, during_outage))
    })?;

    let acked = acked.into_inner().unwrap();
    let mut by_dot: HashMap<&Dot, &Acked> = HashMap::new();
    for write in &acked {
        if let Some(earlier) = by_dot.insert(&write.dot, write) {
            bail!(
                "two acknowledged writes got the same dot {}: {} = {} and {} = {} (a restarted node reused a sequence number)",
                write.dot,
                earlier.key,
                earlier.value,
                write.key,
                write.value
            );
        }
    }
    cluster.converge(&merged(acked.iter().map(|w| &w.timestamp)))?;
    let keys: BTreeSet<&str> = acked.iter().map(|w| w.key.as_str()).collect();
    for node in &cluster.nodes {
        for &key in &keys {
            let answer = node.get(key, None)?;
            for write in acked.iter().filter(|w| w.key == key) {
                ensure!(
                    shows(&answer, write),
                    "{} lost the acknowledged write {} ({key} = {}): it holds {}",
                    node.id,
                    write.dot,
                    write.value,
                    Siblings(&answer)
                );
            }
        }
    }
    cluster.agree(keys.iter().copied())?;
    Ok(format!(
        "{} writes acknowledged ({before_kill} at {} before the kill, {during_outage} at the others while it was down), none lost; {} keys agree on every node",
        acked.len(),
        victim.id,
        keys.len()
    ))
}

// ---- (d) a partition ------------------------------------------------------------

fn partition(cluster: &Cluster) -> anyhow::Result<String> {
    const CUT: usize = 2;
    let [node1, node2, node3] = cluster.three();
    let container = cluster.containers[CUT].as_str();
    let key = "partition/k";
    cluster.converge(&VClock::new())?;
    let before = node1.put(key, &json!("before"), None)?;
    cluster.converge(&before.timestamp)?;

    let attachments = docker::attachments(container)?;
    let network = attachments
        .iter()
        .find(|a| a.network.ends_with("_kvstore"))
        .with_context(|| format!("{} is on no *_kvstore network: {attachments:?}", node3.id))?
        .clone();
    // Attached to a network of its own first, the container keeps its published
    // port: the host still reaches it, its peers do not (they resolve node3 only
    // on the cluster network).
    docker::ensure_network(&cluster.access_network)?;
    let heal = || -> anyhow::Result<()> {
        let now = docker::attachments(container)?;
        if !now.iter().any(|a| a.network == network.network) {
            docker::connect(container, &network.network, &network.aliases)?;
        }
        if now.iter().any(|a| a.network == cluster.access_network) {
            docker::disconnect(container, &cluster.access_network)?;
        }
        Ok(())
    };
    let _heal = OnDrop(|| {
        if let Err(err) = heal() {
            eprintln!("    cannot reconnect {}: {err:#}", node3.id);
        }
    });
    docker::connect(container, &cluster.access_network, &[])?;
    docker::disconnect(container, &network.network)?;
    poll("the host to reach the cut-off node3", SHORT, || {
        node3.health()
    })?;

    // Both sides accept writes at once.
    let started = Instant::now();
    let left = node1.put(key, &json!("left"), None)?;
    let majority = node2.put("partition/majority", &json!("written on node2"), None)?;
    let right = node3.put(key, &json!("right"), None)?;
    let minority = node3.put("partition/minority", &json!("written on node3"), None)?;
    let write_time = started.elapsed();

    // The cut is real: node2 gets node1's write, node3 does not, and node1 does not
    // get node3's.
    poll("node2 to apply node1's write", SHORT, || {
        let clock = node2.health()?.timestamp;
        ensure!(clock.covers(&left.timestamp), "node2 is at {clock}");
        Ok(())
    })?;
    let at3 = node3.get(key, None)?;
    ensure!(
        !at3.context.contains(&left.dot.origin, left.dot.seq),
        "node3 applied node1's write {} through the partition",
        left.dot
    );
    let at1 = node1.get(key, None)?;
    ensure!(
        !at1.context.contains(&right.dot.origin, right.dot.seq),
        "node1 applied node3's write {} through the partition",
        right.dot
    );

    // Cut until both sides have noticed: their requests to the other side fail.
    poll("both sides to notice the partition", SHORT * 2, || {
        for (from, to) in [(0, CUT), (1, CUT), (CUT, 0), (CUT, 1)] {
            ensure!(
                !cluster.reachable(from, to)?,
                "{} still reaches {}",
                cluster.nodes[from].id,
                cluster.nodes[to].id
            );
        }
        Ok(())
    })?;

    heal()?;
    let floor = merged([
        &before.timestamp,
        &left.timestamp,
        &majority.timestamp,
        &right.timestamp,
        &minority.timestamp,
    ]);
    cluster.converge(&floor)?;
    let agreed = cluster.agree([key, "partition/majority", "partition/minority"])?;
    let answer = &agreed[key];
    let dots: BTreeSet<&Dot> = answer.siblings.iter().map(|s| &s.dot).collect();
    ensure!(
        dots == BTreeSet::from([&left.dot, &right.dot]),
        "every node holds {} for {key}; expected the concurrent {}=\"left\" and {}=\"right\" (and \"before\" replaced)",
        Siblings(answer),
        left.dot,
        right.dot
    );
    let winner = [(&left, "left"), (&right, "right")]
        .into_iter()
        .max_by_key(|(w, _)| (w.timestamp.sum(), w.dot.origin.clone()))
        .map(|(_, value)| value)
        .expect("two candidates");
    ensure!(
        answer.value.to_json_value().ok() == Some(json!(winner)),
        "every node shows {} for {key}; the rule (largest timestamp sum, then origin) picks {winner:?}",
        answer.value
    );
    for (other, value) in [
        ("partition/majority", "written on node2"),
        ("partition/minority", "written on node3"),
    ] {
        ensure!(
            agreed[other].value.to_json_value().ok() == Some(json!(value)),
            "{other} reads {} after healing",
            agreed[other].value
        );
    }
    Ok(format!(
        "both sides wrote in {:.0} ms; after reconnecting, every node keeps siblings {}=\"left\" and {}=\"right\" and shows {winner:?}",
        write_time.as_secs_f64() * 1000.0,
        left.dot,
        right.dot
    ))
}

// ---- (e) concurrent causal sessions ---------------------------------------------

const SESSIONS: usize = 8;
const OPS_PER_SESSION: usize = 100;
const SESSION_KEYS: usize = 4;

/// What one session did.
#[derive(Debug, Default)]
struct SessionCount {
    reads: usize,
    writes: usize,
}

fn sessions(cluster: &Cluster) -> anyhow::Result<String> {
    use kvctl::check::{self, Api, FinalState, OpKind, Recorder};

    cluster.converge(&VClock::new())?;
    let recorder = Recorder::new(Api::Native, cluster.nodes.iter().map(|n| n.url.clone()));
    let counts = thread::scope(|scope| {
        let handles: Vec<_> = (0..SESSIONS)
            .map(|id| {
                let recorder = &recorder;
                scope.spawn(move || session(cluster, id, recorder))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| bail!("a session panicked")))
            .collect::<anyhow::Result<Vec<SessionCount>>>()
    })?;
    let mut history = recorder.into_history();
    let acked = merged(history.ops.iter().filter_map(|op| match &op.kind {
        OpKind::Write {
            timestamp: Some(ts),
            ..
        } => Some(ts),
        OpKind::Write { .. } | OpKind::Read { .. } => None,
    }));
    cluster.converge(&acked)?;
    let keys: Vec<String> = (0..SESSION_KEYS).map(session_key).collect();
    cluster.agree(keys.iter().map(String::as_str))?;
    // Every node's final state, for the checker: nothing acknowledged lost,
    // nothing overwritten kept.
    let mut states = Vec::new();
    for node in &cluster.nodes {
        let mut state = FinalState::new(node.url.clone(), node.health()?.timestamp);
        for key in &keys {
            state.insert(key.clone(), &node.get(key, None)?);
        }
        states.push(state);
    }
    history.finish(states);
    let report = check::check(&history);
    if !report.violations.is_empty() {
        let first: Vec<String> = report
            .violations
            .iter()
            .take(5)
            .map(ToString::to_string)
            .collect();
        bail!(
            "{} causal anomalies (seed {}), first: {}",
            report.violations.len(),
            cluster.seed,
            first.join("; ")
        );
    }
    let reads: usize = counts.iter().map(|c| c.reads).sum();
    let writes: usize = counts.iter().map(|c| c.writes).sum();
    Ok(format!(
        "{SESSIONS} sessions: {reads} reads ({} checked), {writes} writes at random nodes, no anomaly; the nodes agree on {SESSION_KEYS} keys",
        report.reads_checked
    ))
}

fn session_key(index: usize) -> String {
    format!("sessions/{index}")
}

/// One session: random operations at random nodes, each with the merge of every
/// clock the session received as its context, each recorded for the checker.
fn session(
    cluster: &Cluster,
    id: usize,
    recorder: &kvctl::check::Recorder,
) -> anyhow::Result<SessionCount> {
    let mut rng = StdRng::seed_from_u64(cluster.seed.wrapping_add(id as u64));
    let mut context = VClock::new();
    let mut count = SessionCount::default();
    for op in 0..OPS_PER_SESSION {
        let node = &cluster.nodes[rng.random_range(0..cluster.nodes.len())];
        let key = session_key(rng.random_range(0..SESSION_KEYS));
        if rng.random_bool(0.5) {
            let value = json!({ "session": id, "op": op });
            // As the checker reads it back from the node.
            let text = kvctl::check::value_text(&vclock_proto::Value::from_serialize(&value)?)
                .context("a session's value is not null")?;
            let call = recorder.invoke_write(id, &node.url, &key, text, &context);
            let answer = node
                .put(&key, &value, Some(&context))
                .with_context(|| format!("session {id}, op {op}: put {key}"))?;
            context.merge(&answer.timestamp);
            recorder.written(call, answer.timestamp);
            count.writes += 1;
        } else {
            let call = recorder.invoke_read(id, &node.url, &key, &context);
            let answer = node
                .get(&key, Some(&context))
                .with_context(|| format!("session {id}, op {op}: get {key}"))?;
            context.merge(&answer.context);
            recorder.read_siblings(call, &answer);
            count.reads += 1;
        }
    }
    Ok(count)
}

/// Runs `kvctl check --txn` (the library: 8 sessions of 300 operations, half
/// of the reads snapshot reads and half of the writes atomic writes, at random
/// nodes) while node2 is killed and node3's links are cut both ways with the
/// fault hook; both faults start before the sessions can be done, and heal
/// after 6 s. Then the nodes must converge, and the history show no
/// violation.
fn txn_under_faults(cluster: &Cluster) -> anyhow::Result<String> {
    use kvctl::check::{self, Mix};

    const VICTIM: usize = 1;
    const CUT: usize = 2;
    // Longer than the nodes' causal_wait (5 s): sessions whose context
    // node1 cannot meet without node2 get their 503 and go on.
    const OUTAGE: Duration = Duration::from_secs(6);
    cluster.converge(&VClock::new())?;
    let container = cluster.containers[VICTIM].as_str();
    let cut = &cluster.nodes[CUT];
    let others: Vec<&NodeClient> = (0..cluster.nodes.len())
        .filter(|&i| i != CUT)
        .map(|i| &cluster.nodes[i])
        .collect();
    // Every link between node3 and the others, both ways; the first error
    // after trying them all.
    let set_cut = |action: fn() -> LinkAction| -> anyhow::Result<()> {
        let mut results = Vec::new();
        for other in &others {
            results.push(cut.link(&other.id, action()));
            results.push(other.link(&cut.id, action()));
        }
        results.into_iter().collect()
    };
    let workload = cluster.fault_workload();
    let started = Instant::now();
    let (mut history, faults_in_run, killed_at) = thread::scope(|scope| -> anyhow::Result<_> {
        let run = scope.spawn(|| {
            actix_rt::System::new().block_on(check::run_sessions_with(&workload, Mix::txn()))
        });
        // Whatever happens, node2 runs again and node3 is reconnected as
        // soon as this closure ends; the sessions then end by themselves.
        let _heal = OnDrop(|| {
            let _ = set_cut(|| LinkAction::Resume);
        });
        let _restart = OnDrop(|| {
            let _ = docker::docker(&["start", container]);
        });
        // Let the sessions get going, then take the faults in: the cut
        // first, while node2 still answers the fault hook.
        thread::sleep(Duration::from_millis(200));
        set_cut(|| LinkAction::Pause)?;
        docker::docker(&["kill", container])?;
        let killed_at = started.elapsed();
        let faults_in_run = !run.is_finished();
        thread::sleep(OUTAGE);
        docker::docker(&["start", container])?;
        poll("node2 to answer again", CONVERGE, || {
            cluster.nodes[VICTIM].health()
        })?;
        // node2 restarted with its links flowing; the others' links to and
        // from node3 are resumed.
        set_cut(|| LinkAction::Resume)?;
        let history = run
            .join()
            .map_err(|_| anyhow::anyhow!("the checker's sessions panicked"))?;
        Ok((history, faults_in_run, killed_at))
    })?;
    ensure!(
        faults_in_run,
        "the sessions were done before the faults: give them more operations"
    );
    actix_rt::System::new().block_on(check::finish(&workload, &mut history));
    let report = check::check(&history);
    checked_clean(&report, cluster.seed).context("after the faults healed")?;
    // Operations sent to node2 from its kill until the outage ended (the
    // recorder's clock started a little after `started`).
    let outage = killed_at.as_secs_f64() * 1000.0..(killed_at + OUTAGE).as_secs_f64() * 1000.0;
    let victim_url = &cluster.nodes[VICTIM].url;
    let in_outage: Vec<&check::Op> = history
        .ops
        .iter()
        .filter(|op| op.node == *victim_url && outage.contains(&op.invoked_ms))
        .collect();
    let failed = in_outage
        .iter()
        .filter(|op| op.outcome != check::Outcome::Ok)
        .count();
    Ok(format!(
        "{} ops ({} sent to node2 while it was down, {failed} of them failed or unknown), {} reads and {} snapshots checked, {} atomic writes, 0 violations, converged",
        history.ops.len(),
        in_outage.len(),
        report.reads_checked,
        report.snapshots_checked,
        report.atomic_writes
    ))
}

/// `kvctl check` runs while node2 loses its disk: killed, its volume emptied,
/// started again with the same id. Its writes acknowledged before the loss
/// must come back, its next writes must take new dots (a reused one would show
/// as a lost or duplicated write to the checker), and all nodes converge.
fn replace_disk(cluster: &Cluster) -> anyhow::Result<String> {
    use kvctl::check::{self, Mix};

    const VICTIM: usize = 1;
    cluster.converge(&VClock::new())?;
    let container = cluster.containers[VICTIM].as_str();
    let victim = &cluster.nodes[VICTIM];
    let workload = cluster.fault_workload();
    let run_started = Instant::now();
    let (mut history, faults_in_run, volume, back_after, survived, restarted_ms) =
        thread::scope(|scope| -> anyhow::Result<_> {
            let run = scope.spawn(|| {
                actix_rt::System::new().block_on(check::run_sessions_with(&workload, Mix::txn()))
            });
            // Whatever happens, node2 runs again once this closure ends.
            let _restart = OnDrop(|| {
                let _ = docker::docker(&["start", container]);
            });
            thread::sleep(Duration::from_millis(300));
            docker::docker(&["kill", container])?;
            let faults_in_run = !run.is_finished();
            // What survives of node2's writes is what its peers hold (they
            // may apply a batch they were given a little later still: what
            // they hold now is a floor).
            let mut survived = 0;
            for (i, node) in cluster.nodes.iter().enumerate() {
                if i != VICTIM {
                    survived = survived.max(node.health()?.timestamp.get(&victim.id));
                }
            }
            let volume = docker::wipe_data_volume(container)?;
            let killed = Instant::now();
            let restarted_ms = run_started.elapsed().as_secs_f64() * 1000.0;
            docker::docker(&["start", container])?;
            // 200 on /health: live, after its bootstrap.
            poll("node2 to be live again", CONVERGE, || victim.health())?;
            let back_after = killed.elapsed();
            let history = run
                .join()
                .map_err(|_| anyhow::anyhow!("the checker's sessions panicked"))?;
            Ok((
                history,
                faults_in_run,
                volume,
                back_after,
                survived,
                restarted_ms,
            ))
        })?;
    ensure!(
        faults_in_run,
        "the sessions were done before the disk was lost: give them more operations"
    );
    let lost = forget_unreplicated(&mut history, victim, survived, restarted_ms);
    actix_rt::System::new().block_on(check::finish(&workload, &mut history));
    let report = check::check(&history);
    checked_clean(&report, cluster.seed).context("after node2 lost its disk")?;
    let status = victim.status()?;
    ensure!(
        status.recovery.phase == "live" && status.recovery.keys_copied > 0,
        "node2 did not bootstrap: {:?}",
        status.recovery
    );
    for node in &cluster.nodes {
        let conflicts = node.status()?.conflicts;
        ensure!(
            conflicts == 0,
            "{} refused {conflicts} events holding a dot it already had",
            node.id
        );
    }
    Ok(format!(
        "{} ops, {} reads and {} snapshots checked, 0 violations, converged; node2 (volume {volume} emptied) live again after {:.1} s with {} keys copied; its peers held {survived} of its writes ({lost} acknowledged writes beyond them went with its disk)",
        history.ops.len(),
        report.reads_checked,
        report.snapshots_checked,
        back_after.as_secs_f64(),
        status.recovery.keys_copied
    ))
}

/// Replication is asynchronous: a write `victim` acknowledged (durable on
/// its disk) that no peer had received yet when its disk was lost went with
/// the disk, and its dot, which no peer knew, is given again to a later
/// write. Such writes, acknowledged before the restart (`restarted_ms` into
/// the run) with a seq of `victim` beyond what its peers held (`survived`),
/// become writes whose outcome is unknown: the check then neither expects
/// them nor takes their dot for theirs. How many there were.
fn forget_unreplicated(
    history: &mut kvctl::check::History,
    victim: &NodeClient,
    survived: u64,
    restarted_ms: f64,
) -> usize {
    use kvctl::check::{OpKind, Outcome};

    let mut lost = 0;
    for op in &mut history.ops {
        if op.node != victim.url || op.outcome != Outcome::Ok || op.completed_ms >= restarted_ms {
            continue;
        }
        if let OpKind::Write { timestamp, .. } = &mut op.kind {
            if timestamp
                .as_ref()
                .is_some_and(|t| t.get(&victim.id) > survived)
            {
                *timestamp = None;
                op.outcome = Outcome::Unknown;
                op.error =
                    Some("acknowledged, then lost with the disk before any peer had it".into());
                lost += 1;
            }
        }
    }
    lost
}

// ---- (f) a fourth node joins and leaves under load ------------------------------

/// The node the membership scenario adds, then removes. A removed id is
/// never reused in a cluster; every e2e run starts a fresh project (`down
/// -v` before `up`: new volumes, so a new membership), and a run runs each
/// scenario once, so the same id serves every run.
const NEW_NODE: &str = "node4";
/// Operations per session of the membership scenario's checker: enough for
/// the sessions to still run while the new node starts, is added, bootstraps,
/// goes live and is removed.
const MEMBERSHIP_OPS: usize = 500;

/// `kvctl check` runs against node1-node3 while a fourth node joins and
/// leaves: its container is started beside the compose services (same image,
/// network and environment), it waits until it is added at node1, bootstraps
/// from a peer and goes live; then it is removed at node1. The history must
/// show no violation, node1-node3 converge, each holds node4 as removed and
/// sends to it no more, and node4 learns it was removed and refuses writes.
/// Whatever happens, node4 is taken out of the membership (when it was added)
/// and its container and volume are removed: the cluster is left with three
/// nodes.
fn membership(cluster: &Cluster) -> anyhow::Result<String> {
    use kvctl::check::{self, Mix};

    let node1 = &cluster.nodes[0];
    let container = format!("{}-{NEW_NODE}", super::PROJECT);
    let volume = format!("{}_{NEW_NODE}-data", super::PROJECT);
    cluster.converge(&VClock::new())?;
    // A container or volume an interrupted run left behind.
    remove_container(&container, &volume);
    // Set from the moment node4 may be a member until its removal succeeds.
    let member = AtomicBool::new(false);
    let _remove = OnDrop(|| {
        if member.load(Ordering::SeqCst) {
            if let Err(err) = node1.remove_member(NEW_NODE) {
                eprintln!("    cannot remove {NEW_NODE} from the membership: {err:#}");
            }
        }
        let log = crate::workspace_root()
            .join("target")
            .join("e2e")
            .join(format!("{container}.log"));
        match save_log(&container, &log) {
            Ok(true) => println!("    {NEW_NODE}'s log: {}", log.display()),
            Ok(false) => {}
            Err(err) => eprintln!("    {NEW_NODE}'s log is not saved: {err:#}"),
        }
        remove_container(&container, &volume);
    });
    let workload = check::Workload {
        ops_per_session: MEMBERSHIP_OPS,
        ..cluster.fault_workload()
    };
    let (mut history, changed_in_run, joined) = thread::scope(|scope| -> anyhow::Result<_> {
        let run = scope.spawn(|| {
            actix_rt::System::new().block_on(check::run_sessions_with(&workload, Mix::txn()))
        });
        let new = start_new_node(cluster, &container, &volume)?;
        // Up, but no member yet: every peer refuses it, and it waits.
        let waiting = poll(
            format!("node1-node3 to refuse {NEW_NODE}"),
            SHORT * 2,
            || {
                let status = new.client.status()?;
                let refused = status
                    .peers
                    .iter()
                    .filter(|p| !p.reachable && p.last_error.is_some())
                    .count();
                ensure!(
                    refused == cluster.nodes.len(),
                    "{refused} of its peers refused it: {:?}",
                    status.peers
                );
                Ok(status)
            },
        )?;
        ensure!(
            waiting.recovery.phase != "live",
            "{NEW_NODE} is live before it was added: {:?}",
            waiting.recovery
        );
        match new.client.health() {
            Ok(_) => bail!("{NEW_NODE} answers 200 on /health before it was added"),
            Err(err) => ensure!(
                format!("{err:#}").contains(": 503 recovering"),
                "{NEW_NODE} does not answer 503 recovering on /health before it was added: {err:#}"
            ),
        }
        let added_in_run = !run.is_finished();
        let added = Instant::now();
        member.store(true, Ordering::SeqCst);
        let answer = node1.add_member(NEW_NODE, &new.peer_url)?;
        ensure!(
            answer
                .members
                .iter()
                .any(|m| m.id == NEW_NODE && !m.removed && m.url == new.peer_url),
            "node1 added {NEW_NODE} at {}, and answers {:?}",
            new.peer_url,
            answer.members
        );
        // 200 on /health: live, after its bootstrap and catching up.
        poll(format!("{NEW_NODE} to be live"), CONVERGE, || {
            new.client.health()
        })?;
        let live_after = added.elapsed();
        let live = new.client.status()?;
        ensure!(
            live.recovery.phase == "live" && live.recovery.keys_copied > 0,
            "{NEW_NODE} went live without a bootstrap: {:?}",
            live.recovery
        );
        // A member for a while: it catches up with what node1 held then.
        let floor = node1.health()?.timestamp;
        poll(format!("{NEW_NODE} to catch up with node1"), SHORT, || {
            let clock = new.client.health()?.timestamp;
            let missing: Vec<String> = clock.missing(&floor).map(|m| m.to_string()).collect();
            ensure!(missing.is_empty(), "it lacks {}", missing.join(", "));
            Ok(())
        })?;
        let answer = node1.remove_member(NEW_NODE)?;
        member.store(false, Ordering::SeqCst);
        ensure!(
            answer.members.iter().any(|m| m.id == NEW_NODE && m.removed),
            "node1 removed {NEW_NODE}, and answers {:?}",
            answer.members
        );
        let removed_in_run = !run.is_finished();
        let history = run
            .join()
            .map_err(|_| anyhow::anyhow!("the checker's sessions panicked"))?;
        let joined = Joined {
            client: new.client,
            live_after,
            keys_copied: live.recovery.keys_copied,
        };
        Ok((history, added_in_run && removed_in_run, joined))
    })?;
    ensure!(
        changed_in_run,
        "the sessions were done before {NEW_NODE} was removed: give them more operations"
    );
    actix_rt::System::new().block_on(check::finish(&workload, &mut history));
    let report = check::check(&history);
    checked_clean(&report, cluster.seed)
        .with_context(|| format!("after {NEW_NODE} was added and removed"))?;
    for node in &cluster.nodes {
        poll(
            format!("{} to hold {NEW_NODE} as removed", node.id),
            SHORT,
            || {
                let status = node.status()?;
                let entry = status
                    .members
                    .iter()
                    .find(|m| m.id == NEW_NODE)
                    .with_context(|| {
                        format!("{} does not list {NEW_NODE}: {:?}", node.id, status.members)
                    })?;
                ensure!(entry.removed, "{} holds {entry:?}", node.id);
                ensure!(
                    !status.peers.iter().any(|p| p.node == NEW_NODE),
                    "{} still has a link to {NEW_NODE}",
                    node.id
                );
                Ok(())
            },
        )?;
        let conflicts = node.status()?.conflicts;
        ensure!(
            conflicts == 0,
            "{} refused {conflicts} events holding a dot it already had",
            node.id
        );
    }
    // node4 no longer holds back log collection: once every remaining
    // member has acknowledged every write, the logs empty.
    let collected = Instant::now();
    poll("node1-node3 to collect their logs", CONVERGE, || {
        for node in &cluster.nodes {
            let log_len = node.status()?.log_len;
            ensure!(log_len == 0, "{} keeps {log_len} events", node.id);
        }
        Ok(())
    })?;
    let collected_after = collected.elapsed();
    // Told by the others, node4 knows it was removed and takes no writes.
    poll(format!("{NEW_NODE} to learn it was removed"), SHORT, || {
        let status = joined.client.status()?;
        ensure!(
            status.members.iter().any(|m| m.id == NEW_NODE && m.removed),
            "{NEW_NODE} holds {:?}",
            status.members
        );
        Ok(())
    })?;
    match joined
        .client
        .put("membership/after-removal", &json!("refused"), None)
    {
        Ok(answer) => bail!(
            "{NEW_NODE} took the write {} after it was removed",
            answer.dot
        ),
        Err(err) => ensure!(
            format!("{err:#}").contains(": 503 "),
            "{NEW_NODE} refused a write after its removal, but not with 503: {err:#}"
        ),
    }
    Ok(format!(
        "{} ops, {} reads and {} snapshots checked, 0 violations, converged; {NEW_NODE} refused by its peers (503 recovering) until added, then live after {:.1} s with {} keys copied, caught up; removed: node1-node3 hold it removed, send to it no more and collected their logs ({:.1} s), it refuses writes (503)",
        history.ops.len(),
        report.reads_checked,
        report.snapshots_checked,
        joined.live_after.as_secs_f64(),
        joined.keys_copied,
        collected_after.as_secs_f64()
    ))
}

/// The membership scenario's new node, once started.
struct NewNode {
    /// Through its published port.
    client: NodeClient,
    /// Its URL as its peers reach it, by host name on the cluster network.
    peer_url: String,
}

/// What the membership scenario saw of the new node while it was a member.
struct Joined {
    client: NodeClient,
    /// From its addition at node1 until it answered 200 on `/health`.
    live_after: Duration,
    keys_copied: u64,
}

/// Starts the container of [`NEW_NODE`] as compose starts node1: the same
/// image, on the cluster network with its id as host name, the same
/// environment but for its id and a node list that ends with it, a named
/// volume of its own on `/data`, its port published on a free host port of
/// the loopback interface. It is labelled as an extra container of the
/// compose project, so that `down --remove-orphans` (which the e2e run
/// does at its start and end, on Ctrl-C too) removes it if this scenario
/// could not.
fn start_new_node(cluster: &Cluster, container: &str, volume: &str) -> anyhow::Result<NewNode> {
    let template = cluster.containers[0].as_str();
    let image = docker::image(template)?;
    let attachments = docker::attachments(template)?;
    let network = attachments
        .iter()
        .find(|a| a.network.ends_with("_kvstore"))
        .with_context(|| format!("node1 is on no *_kvstore network: {attachments:?}"))?;
    let mut env = Vec::new();
    let mut port = None;
    let mut listed = false;
    for variable in docker::env(template)? {
        let (name, value) = variable.split_once('=').unwrap_or((variable.as_str(), ""));
        match name {
            "NODE_ID" => env.push(format!("NODE_ID={NEW_NODE}")),
            "NODES" => {
                listed = true;
                env.push(format!("NODES={value},{NEW_NODE}"));
            }
            _ => {
                if name == "PORT" {
                    port = Some(value.to_owned());
                }
                env.push(variable.clone());
            }
        }
    }
    ensure!(
        listed,
        "node1's container has no NODES variable to start {NEW_NODE} from"
    );
    let port = port.unwrap_or_else(|| "5000".to_owned());
    let project_label = format!("com.docker.compose.project={}", super::PROJECT);
    let service_label = format!("com.docker.compose.service={NEW_NODE}");
    let mount = format!("{volume}:/data");
    let publish = format!("127.0.0.1::{port}");
    let mut args = vec![
        "run",
        "--detach",
        "--name",
        container,
        "--hostname",
        NEW_NODE,
        "--network",
        &network.network,
        "--network-alias",
        NEW_NODE,
        "--label",
        &project_label,
        "--label",
        &service_label,
        "--label",
        "com.docker.compose.oneoff=False",
        "--volume",
        &mount,
        "--publish",
        &publish,
    ];
    for variable in &env {
        args.extend(["--env", variable]);
    }
    args.push(&image);
    docker::docker(&args)?;
    let host_port = docker::host_port(container, &format!("{port}/tcp"))?;
    Ok(NewNode {
        client: NodeClient::new(
            NEW_NODE,
            &format!("http://127.0.0.1:{host_port}"),
            Some(super::CLUSTER_SECRET),
        ),
        peer_url: format!("http://{NEW_NODE}:{port}"),
    })
}

/// Removes a container and its volume, if they exist; says what failed.
fn remove_container(container: &str, volume: &str) {
    if docker::docker(&["inspect", "--type", "container", container]).is_ok() {
        if let Err(err) = docker::docker(&["rm", "--force", container]) {
            eprintln!("    {err:#}");
        }
    }
    if docker::docker(&["volume", "inspect", volume]).is_ok() {
        if let Err(err) = docker::docker(&["volume", "rm", volume]) {
            eprintln!("    {err:#}");
        }
    }
}

/// Writes a container's log to `path`, if the container exists (then true).
fn save_log(container: &str, path: &std::path::Path) -> anyhow::Result<bool> {
    if docker::docker(&["inspect", "--type", "container", container]).is_err() {
        return Ok(false);
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    std::fs::write(path, docker::logs(container)?)
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(true)
}

/// Fails on the first violation a checker's report holds (naming the seed
/// that replays the run), or when the nodes did not converge.
fn checked_clean(report: &kvctl::check::Report, seed: u64) -> anyhow::Result<()> {
    if let Some(first) = report.violations.first() {
        bail!(
            "{} violations (seed {seed}), first: {}: {}",
            report.violations.len(),
            first.kind,
            first.message
        );
    }
    ensure!(
        report.converged == Some(true),
        "the nodes did not converge after the run"
    );
    Ok(())
}

/// Runs `kvctl check` (the library) against the cluster, once per API.
fn checker(cluster: &Cluster) -> anyhow::Result<String> {
    use kvctl::check::{self, Api, Workload};

    let mut lines = Vec::new();
    for (api, name) in [(Api::Native, "native"), (Api::Compat, "compat")] {
        let workload = Workload {
            nodes: cluster.nodes.iter().map(|n| n.url.clone()).collect(),
            api,
            sessions: 8,
            ops_per_session: 150,
            keys: 4,
            write_ratio: 0.5,
            timeout: Duration::from_secs(10),
            quiesce_timeout: Duration::from_secs(30),
            seed: cluster.seed,
            token: None,
        };
        let history = actix_rt::System::new().block_on(check::run(&workload));
        let report = check::check(&history);
        checked_clean(&report, cluster.seed).context(name)?;
        lines.push(format!(
            "{name}: {} ops, {} reads checked, 0 violations",
            history.ops.len(),
            report.reads_checked
        ));
    }
    Ok(lines.join("; "))
}

#[cfg(test)]
mod tests {
    use kvctl::check::{Api, History, Op, OpKind, Outcome};

    use super::*;

    fn write(id: usize, node: &str, seq: u64, completed_ms: f64) -> Op {
        Op {
            id,
            session: 0,
            node: node.into(),
            key: "k".into(),
            kind: OpKind::Write {
                value: format!("v{id}"),
                timestamp: Some([("node2", seq)].into_iter().collect()),
            },
            context: VClock::new(),
            api: None,
            snapshot: None,
            txn: None,
            outcome: Outcome::Ok,
            invoked_ms: completed_ms - 1.0,
            completed_ms,
            error: None,
        }
    }

    #[test]
    fn only_the_victims_unreplicated_writes_before_the_restart_are_forgotten() {
        let victim = NodeClient::new("node2", "http://127.0.0.1:15002", None);
        let mut history = History {
            api: Api::Native,
            nodes: vec![],
            keys: vec!["k".into()],
            ops: vec![
                write(0, &victim.url, 9, 10.0),               // its peers hold it
                write(1, &victim.url, 11, 20.0),              // lost with the disk
                write(2, "http://127.0.0.1:15001", 12, 30.0), // another node's
                write(3, &victim.url, 11, 90.0),              // after the restart: the dot again
            ],
            final_states: vec![],
            quiescent: false,
        };
        assert_eq!(forget_unreplicated(&mut history, &victim, 10, 50.0), 1);
        let outcomes: Vec<Outcome> = history.ops.iter().map(|op| op.outcome).collect();
        assert_eq!(
            outcomes,
            [Outcome::Ok, Outcome::Unknown, Outcome::Ok, Outcome::Ok]
        );
        assert!(matches!(
            &history.ops[1].kind,
            OpKind::Write {
                timestamp: None,
                ..
            }
        ));
    }
}
