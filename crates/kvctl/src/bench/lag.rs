//! Visibility lag: how long after a write is acknowledged at one node its value
//! can be read at each other node.
//!
//! One sample at a time (the cluster is otherwise idle): write a fresh key at
//! node `i mod n`, and as soon as the write is acknowledged, poll every other
//! node concurrently until it shows the value. Polling is tight: each read is
//! sent as soon as the previous answer has arrived, with no sleep in between (a
//! timer would add a millisecond of granularity, more than the lag itself), so
//! the resolution is one read's round trip, and the figure is an upper bound of
//! the true lag by at most that. The time is taken from the write's answer to
//! the first answer that shows the value.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use super::conn::{shows_value, Conn, Failure};
use super::report::{new_histogram, record, ErrorTally, LagReport, Percentiles};
use crate::check::Api;
use crate::transport::Transport;

/// What the lag phase needs.
#[derive(Debug)]
pub(crate) struct LagPlan {
    pub nodes: Vec<String>,
    pub node_ids: Vec<String>,
    pub api: Api,
    pub samples: u64,
    /// How long a node may take to show a value before the pair counts as not visible.
    pub visible_within: Duration,
    pub transport: Transport,
    /// Distinguishes this run's keys from every other run's.
    pub run_id: String,
}

/// Measures the lag (on an actix runtime); `done` counts finished samples.
pub(crate) async fn measure(plan: &LagPlan, done: &AtomicU64) -> Result<LagReport, Failure> {
    let mut conns = Vec::new();
    for node in &plan.nodes {
        conns.push(Conn::new(node, plan.api, &plan.transport)?);
    }
    let n = conns.len();
    let mut per_node: Vec<Histogram<u64>> = (0..n).map(|_| new_histogram()).collect();
    let mut all = new_histogram();
    let mut errors = ErrorTally::default();
    let mut not_visible = 0u64;
    let mut polls = 0u64;
    let mut seen = 0u64;
    for sample in 0..plan.samples {
        let origin = (sample % n as u64) as usize;
        let key = format!("lag-{}-{sample}", plan.run_id);
        let value = sample.to_string();
        if let Err(f) = conns[origin].write(&key, &value, None).await {
            errors.add(&f.kind, || {
                format!("writing at {}: {}", plan.nodes[origin], f.message)
            });
            done.fetch_add(1, Relaxed);
            continue;
        }
        let acked = Instant::now();
        let deadline = acked + plan.visible_within;
        let pollers = conns
            .iter_mut()
            .enumerate()
            .filter(|(i, _)| *i != origin)
            .map(|(i, conn)| {
                let key = &key;
                async move { (i, poll_until_visible(conn, key, acked, deadline).await) }
            });
        for (i, outcome) in futures_util::future::join_all(pollers).await {
            match outcome {
                Polled::Visible { after, reads } => {
                    record(&mut per_node[i], after);
                    record(&mut all, after);
                    polls += reads;
                    seen += 1;
                }
                Polled::NotVisible => not_visible += 1,
                Polled::Failed(f) => errors.add(&f.kind, || {
                    format!("reading at {}: {}", plan.nodes[i], f.message)
                }),
            }
        }
        done.fetch_add(1, Relaxed);
    }
    let per_node_ms: BTreeMap<String, Percentiles> = per_node
        .iter()
        .enumerate()
        .filter_map(|(i, h)| Some((plan.node_ids[i].clone(), Percentiles::from_histogram(h)?)))
        .collect();
    Ok(LagReport {
        samples: plan.samples,
        all_ms: Percentiles::from_histogram(&all),
        per_node_ms,
        not_visible,
        errors_by_kind: errors.by_kind,
        error_samples: errors.samples,
        mean_polls: if seen == 0 {
            0.0
        } else {
            polls as f64 / seen as f64
        },
    })
}

enum Polled {
    Visible { after: Duration, reads: u64 },
    NotVisible,
    Failed(Failure),
}

/// Reads `key` back to back until the answer shows a value, the deadline
/// passes, or a read fails.
async fn poll_until_visible(
    conn: &mut Conn,
    key: &str,
    acked: Instant,
    deadline: Instant,
) -> Polled {
    let mut reads = 0;
    loop {
        let body = match conn.read(key, None).await {
            Ok(body) => body,
            Err(f) => return Polled::Failed(f),
        };
        reads += 1;
        match shows_value(&body) {
            Ok(true) => {
                return Polled::Visible {
                    after: acked.elapsed(),
                    reads,
                }
            }
            Ok(false) if Instant::now() >= deadline => return Polled::NotVisible,
            Ok(false) => {}
            Err(f) => return Polled::Failed(f),
        }
    }
}
