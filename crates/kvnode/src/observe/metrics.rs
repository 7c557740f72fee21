//! Metrics, served at `GET /metrics` in the Prometheus text format (0.0.4).
//!
//! Two kinds of numbers:
//!
//! - **Counters and histograms of events** (requests, writes, reads, batches,
//!   commits) are plain atomics, bumped on the hot path without a lock. Request
//!   series are keyed by route pattern (`/v1/kv/{key}`, never the raw path), method
//!   and status, so their number is bounded by the routes the HTTP layer
//!   registers ([`Metrics::register_routes`]); each
//!   series is allocated the first time it is used and found again with two
//!   lock-free lookups.
//! - **Gauges of state** (buffered events, log length, applied clock, peers' lag)
//!   are rendered from a status snapshot the node takes when `/metrics` is
//!   scraped (under the core's lock once per scrape); this module never sees
//!   the node itself.
//!
//! Every name is listed in [`NAMES`]; the Grafana dashboard in
//! `deploy/grafana/` uses only those, and a test checks it.

use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use actix_web::http::{Method, StatusCode};

use vclock_proto::StatusResponse;

/// Every metric family this node exports, in the order of the output.
pub const NAMES: &[&str] = &[
    "kvnode_info",
    "kvnode_uptime_seconds",
    "kvnode_http_requests_total",
    "kvnode_http_request_duration_seconds",
    "kvnode_http_requests_in_flight",
    "kvnode_writes_total",
    "kvnode_reads_total",
    "kvnode_received_batches_total",
    "kvnode_received_events_total",
    "kvnode_buffer_deliveries_total",
    "kvnode_commits_total",
    "kvnode_commit_commands_total",
    "kvnode_commit_duration_seconds",
    "kvnode_fsyncs_total",
    "kvnode_conflicting_events_total",
    "kvnode_buffered_events",
    "kvnode_buffered_bytes",
    "kvnode_log_events",
    "kvnode_log_events_in_memory",
    "kvnode_log_bytes_in_memory",
    "kvnode_queued_bytes",
    "kvnode_trace_bytes",
    "kvnode_applied",
    "kvnode_stable",
    "kvnode_recovery_phase",
    "kvnode_bootstrap_keys_copied",
    "kvnode_members",
    "kvnode_membership_version",
    "kvnode_peer_lag_events",
    "kvnode_peer_lag_seconds",
    "kvnode_peer_seconds_since_ack",
    "kvnode_peer_reachable",
    "kvnode_peer_paused",
    "kvnode_peer_batches_sent_total",
    "kvnode_peer_send_errors_total",
];

/// The `Content-Type` of the text format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Upper bounds (seconds) of the request latency buckets.
const REQUEST_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
/// Upper bounds (seconds) of the commit latency buckets (an fsync is 0.1-20 ms).
const COMMIT_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
];

/// Methods with a series of their own; any other is counted as `OTHER`.
const METHODS: &[Method] = &[
    Method::GET,
    Method::POST,
    Method::PUT,
    Method::DELETE,
    Method::HEAD,
    Method::OPTIONS,
    Method::PATCH,
];
const METHOD_SLOTS: usize = METHODS.len() + 1;
/// Status codes 100..=599 have a slot each.
const STATUS_SLOTS: usize = 500;

/// The route label of requests that match no route.
pub const UNMATCHED: &str = "unmatched";

/// A histogram with fixed buckets, updated with atomics.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    /// Per bucket (not cumulative); the last one is `+Inf`.
    counts: Box<[AtomicU64]>,
    sum_nanos: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_nanos: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }

    /// Records one observation.
    pub fn observe(&self, elapsed: Duration) {
        let seconds = elapsed.as_secs_f64();
        let bucket = self.bounds.partition_point(|&bound| bound < seconds);
        self.counts[bucket].fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    /// How many observations.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        let mut cumulative = 0;
        for (i, count) in self.counts.iter().enumerate() {
            cumulative += count.load(Ordering::Relaxed);
            let le = match self.bounds.get(i) {
                Some(bound) => bound.to_string(),
                None => "+Inf".to_owned(),
            };
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels}{sep}le=\"{le}\"}} {cumulative}"
            );
        }
        let sum = self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        let braces = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let _ = writeln!(out, "{name}_sum{braces} {sum}");
        let _ = writeln!(out, "{name}_count{braces} {}", self.count());
    }
}

/// The request series of one route and method, one slot per status code.
#[derive(Debug)]
struct StatusTable(Box<[OnceLock<Box<Histogram>>]>);

impl StatusTable {
    fn new() -> Self {
        Self((0..STATUS_SLOTS).map(|_| OnceLock::new()).collect())
    }
}

/// Identifies a route's series; resolved once, when the route is registered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RouteId(usize);

/// Counters of the replication link to one peer (kept on each of the node's links).
#[derive(Debug, Default)]
pub struct LinkMetrics {
    batches_sent: AtomicU64,
    send_errors: AtomicU64,
    /// Milliseconds since the node started, plus one, of the last
    /// acknowledgement (0: none yet).
    acked_at: AtomicU64,
    /// Same, of the last acknowledgement that covered every write of this node.
    caught_up_at: AtomicU64,
}

impl LinkMetrics {
    /// A batch (or clock exchange) reached the peer and was acknowledged.
    pub fn acknowledged(&self, metrics: &Metrics, was_batch: bool, caught_up: bool) {
        let now = metrics.millis() + 1;
        if was_batch {
            self.batches_sent.fetch_add(1, Ordering::Relaxed);
        }
        self.acked_at.store(now, Ordering::Relaxed);
        if caught_up {
            self.caught_up_at.store(now, Ordering::Relaxed);
        }
    }

    /// A request to the peer failed.
    pub fn failed(&self) {
        self.send_errors.fetch_add(1, Ordering::Relaxed);
    }
}

/// The HTTP routes' series: labels indexed by [`RouteId`] (the last one is
/// [`UNMATCHED`]) and `labels.len() * METHOD_SLOTS` tables, allocated on first use.
#[derive(Debug)]
struct Routes {
    labels: Vec<&'static str>,
    requests: Box<[OnceLock<Box<StatusTable>>]>,
}

/// The node's counters and histograms.
#[derive(Debug)]
pub struct Metrics {
    started: Instant,
    /// Set once by the HTTP layer ([`Metrics::register_routes`]).
    routes: OnceLock<Routes>,
    in_flight: AtomicI64,
    writes_put: AtomicU64,
    writes_delete: AtomicU64,
    writes_txn: AtomicU64,
    reads: AtomicU64,
    received_batches: AtomicU64,
    received_events: AtomicU64,
    buffer_deliveries: AtomicU64,
    commits: AtomicU64,
    commit_commands: AtomicU64,
    commit_duration: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Fresh metrics; request series exist once the routes are registered.
    pub fn new() -> Self {
        Self {
            started: Instant::now(),
            routes: OnceLock::new(),
            in_flight: AtomicI64::new(0),
            writes_put: AtomicU64::new(0),
            writes_delete: AtomicU64::new(0),
            writes_txn: AtomicU64::new(0),
            reads: AtomicU64::new(0),
            received_batches: AtomicU64::new(0),
            received_events: AtomicU64::new(0),
            buffer_deliveries: AtomicU64::new(0),
            commits: AtomicU64::new(0),
            commit_commands: AtomicU64::new(0),
            commit_duration: Histogram::new(COMMIT_BUCKETS),
        }
    }

    /// Names the routes requests are counted by (the HTTP layer's route
    /// table), with a series table for each. The first call wins: every
    /// worker registers the same table.
    pub fn register_routes(&self, labels: impl IntoIterator<Item = &'static str>) {
        self.routes.get_or_init(|| {
            let mut routes: Vec<&'static str> = Vec::new();
            for label in labels {
                if !routes.contains(&label) {
                    routes.push(label);
                }
            }
            routes.push(UNMATCHED);
            Routes {
                requests: (0..routes.len() * METHOD_SLOTS)
                    .map(|_| OnceLock::new())
                    .collect(),
                labels: routes,
            }
        });
    }

    fn millis(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// The series of `route` (a registered label); unknown labels count as
    /// [`UNMATCHED`].
    pub fn route(&self, route: &str) -> RouteId {
        let Some(routes) = self.routes.get() else {
            return RouteId(usize::MAX);
        };
        RouteId(
            routes
                .labels
                .iter()
                .position(|r| *r == route)
                .unwrap_or(routes.labels.len() - 1),
        )
    }

    /// A request started; the guard counts it in flight until it is dropped.
    pub fn request_started(&self) -> InFlight<'_> {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self)
    }

    /// Records one answered request.
    pub fn request(&self, route: RouteId, method: &Method, status: StatusCode, elapsed: Duration) {
        let method = METHODS
            .iter()
            .position(|m| m == method)
            .unwrap_or(METHODS.len());
        let Some(table) = self
            .routes
            .get()
            .and_then(|routes| routes.requests.get(route.0 * METHOD_SLOTS + method))
        else {
            return;
        };
        let table = table.get_or_init(|| Box::new(StatusTable::new()));
        let slot = usize::from(status.as_u16().clamp(100, 599) - 100);
        table.0[slot]
            .get_or_init(|| Box::new(Histogram::new(REQUEST_BUCKETS)))
            .observe(elapsed);
    }

    /// A client write was committed.
    pub fn write(&self, delete: bool) {
        let counter = if delete {
            &self.writes_delete
        } else {
            &self.writes_put
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// A client's atomic transaction of several writes was committed.
    pub fn txn_write(&self) {
        self.writes_txn.fetch_add(1, Ordering::Relaxed);
    }

    /// A client read was answered.
    pub fn read(&self) {
        self.reads.fetch_add(1, Ordering::Relaxed);
    }

    /// A batch of `events` from a peer was received.
    pub fn batch_received(&self, events: usize) {
        self.received_batches.fetch_add(1, Ordering::Relaxed);
        self.received_events
            .fetch_add(events as u64, Ordering::Relaxed);
    }

    /// `n` buffered events became deliverable and were applied.
    pub fn delivered_from_buffer(&self, n: usize) {
        self.buffer_deliveries
            .fetch_add(n as u64, Ordering::Relaxed);
    }

    /// The writer committed a group of `commands` in `elapsed`.
    pub fn commit(&self, commands: usize, elapsed: Duration) {
        self.commits.fetch_add(1, Ordering::Relaxed);
        self.commit_commands
            .fetch_add(commands as u64, Ordering::Relaxed);
        self.commit_duration.observe(elapsed);
    }
}

/// Counts a request in flight while it lives.
#[derive(Debug)]
pub struct InFlight<'a>(&'a Metrics);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Escapes a label value.
fn label(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn single(out: &mut String, name: &str, kind: &str, help: &str, value: impl std::fmt::Display) {
    header(out, name, kind, help);
    let _ = writeln!(out, "{name} {value}");
}

/// The whole exposition of a node, in the text format: its counters, a
/// snapshot of its status, and its links' counters (in the order of
/// `status.peers`).
pub fn render<'a>(
    metrics: &Metrics,
    status: &StatusResponse,
    links: impl IntoIterator<Item = &'a LinkMetrics>,
) -> String {
    let mut out = String::with_capacity(8 * 1024);
    let o = &mut out;

    header(o, "kvnode_info", "gauge", "This node's id and version.");
    let _ = writeln!(
        o,
        "kvnode_info{{node=\"{}\",version=\"{}\"}} 1",
        label(&status.node),
        env!("CARGO_PKG_VERSION")
    );
    single(
        o,
        "kvnode_uptime_seconds",
        "gauge",
        "Seconds since the node started.",
        metrics.started.elapsed().as_secs_f64(),
    );

    // Requests.
    let mut series = Vec::new();
    let (labels, requests) = metrics
        .routes
        .get()
        .map_or((&[][..], &[][..]), |r| (&r.labels[..], &r.requests[..]));
    for (r, route) in labels.iter().enumerate() {
        for m in 0..METHOD_SLOTS {
            let Some(table) = requests[r * METHOD_SLOTS + m].get() else {
                continue;
            };
            let method = METHODS.get(m).map_or("OTHER", Method::as_str);
            for (s, histogram) in table.0.iter().enumerate() {
                if let Some(histogram) = histogram.get() {
                    let labels = format!(
                        "route=\"{}\",method=\"{method}\",status=\"{}\"",
                        label(route),
                        s + 100
                    );
                    series.push((labels, histogram));
                }
            }
        }
    }
    header(
        o,
        "kvnode_http_requests_total",
        "counter",
        "HTTP requests answered, by route pattern, method and status.",
    );
    for (labels, histogram) in &series {
        let _ = writeln!(
            o,
            "kvnode_http_requests_total{{{labels}}} {}",
            histogram.count()
        );
    }
    header(
        o,
        "kvnode_http_request_duration_seconds",
        "histogram",
        "Time from a request's head to its answer, by route pattern, method and status.",
    );
    for (labels, histogram) in &series {
        histogram.render(o, "kvnode_http_request_duration_seconds", labels);
    }
    single(
        o,
        "kvnode_http_requests_in_flight",
        "gauge",
        "HTTP requests being handled.",
        metrics.in_flight.load(Ordering::Relaxed),
    );

    // Client operations and replication.
    header(
        o,
        "kvnode_writes_total",
        "counter",
        "Client writes committed, by operation (a transaction counts once, as txn).",
    );
    let _ = writeln!(
        o,
        "kvnode_writes_total{{op=\"put\"}} {}",
        metrics.writes_put.load(Ordering::Relaxed)
    );
    let _ = writeln!(
        o,
        "kvnode_writes_total{{op=\"delete\"}} {}",
        metrics.writes_delete.load(Ordering::Relaxed)
    );
    let _ = writeln!(
        o,
        "kvnode_writes_total{{op=\"txn\"}} {}",
        metrics.writes_txn.load(Ordering::Relaxed)
    );
    let counters = [
        (
            "kvnode_reads_total",
            "Client reads answered.",
            &metrics.reads,
        ),
        (
            "kvnode_received_batches_total",
            "Replication batches received from peers.",
            &metrics.received_batches,
        ),
        (
            "kvnode_received_events_total",
            "Events received from peers (duplicates included).",
            &metrics.received_events,
        ),
        (
            "kvnode_buffer_deliveries_total",
            "Buffered events applied once their dependencies arrived.",
            &metrics.buffer_deliveries,
        ),
        (
            "kvnode_commits_total",
            "Commits of the writer (one per group of commands).",
            &metrics.commits,
        ),
        (
            "kvnode_commit_commands_total",
            "Commands committed (writes, batches, acknowledgements); divided by commits, the group size.",
            &metrics.commit_commands,
        ),
    ];
    for (name, help, counter) in counters {
        single(o, name, "counter", help, counter.load(Ordering::Relaxed));
    }
    header(
        o,
        "kvnode_commit_duration_seconds",
        "histogram",
        "Time of one commit of the writer, fsync included.",
    );
    metrics
        .commit_duration
        .render(o, "kvnode_commit_duration_seconds", "");
    single(
        o,
        "kvnode_fsyncs_total",
        "counter",
        "Storage syncs since the node started.",
        status.fsyncs,
    );
    single(
        o,
        "kvnode_conflicting_events_total",
        "counter",
        "Events refused because the node held a different event with the same dot.",
        status.conflicts,
    );
    single(
        o,
        "kvnode_buffered_events",
        "gauge",
        "Events received but not yet deliverable.",
        status.buffered_total,
    );
    single(
        o,
        "kvnode_buffered_bytes",
        "gauge",
        "Bytes of the events received but not yet deliverable.",
        status.buffered_bytes,
    );
    single(
        o,
        "kvnode_log_events",
        "gauge",
        "Events kept in the log until every node has applied them.",
        status.log_len,
    );
    single(
        o,
        "kvnode_log_events_in_memory",
        "gauge",
        "Logged events held in memory; older ones are read from disk when needed.",
        status.log_in_memory,
    );
    single(
        o,
        "kvnode_log_bytes_in_memory",
        "gauge",
        "Bytes of the logged events held in memory (bounded by log_memory_bytes).",
        status.log_in_memory_bytes,
    );
    single(
        o,
        "kvnode_queued_bytes",
        "gauge",
        "Bytes of writes and peer batches waiting for the writer (bounded by max_queued_bytes).",
        status.queued_bytes,
    );
    single(
        o,
        "kvnode_trace_bytes",
        "gauge",
        "Bytes of the trace records held in memory (bounded by trace_buffer_bytes).",
        status.trace_bytes,
    );
    // Every node that is or was a member: a removed node's writes stay.
    let mut members: Vec<&str> = std::iter::once(status.node.as_str())
        .chain(status.peers.iter().map(|p| p.node.as_str()))
        .chain(status.members.iter().map(|m| m.id.as_str()))
        .collect();
    members.sort_unstable();
    members.dedup();
    for (name, help, clock) in [
        (
            "kvnode_applied",
            "Writes of each origin applied by this node.",
            &status.applied,
        ),
        (
            "kvnode_stable",
            "Writes of each origin applied by every node.",
            &status.stable,
        ),
    ] {
        header(o, name, "gauge", help);
        for member in &members {
            let _ = writeln!(
                o,
                "{name}{{origin=\"{}\"}} {}",
                label(member),
                clock.get(member)
            );
        }
    }

    // Recovery.
    header(
        o,
        "kvnode_recovery_phase",
        "gauge",
        "1 for the phase the node is in: checking (writes refused until no peer holds more \
         of its writes), bootstrapping (copying a peer's state) or live.",
    );
    for phase in ["checking", "bootstrapping", "live"] {
        let on = u8::from(status.recovery.phase == phase);
        let _ = writeln!(o, "kvnode_recovery_phase{{phase=\"{phase}\"}} {on}");
    }
    single(
        o,
        "kvnode_bootstrap_keys_copied",
        "gauge",
        "Keys copied by the current or last bootstrap from a peer.",
        status.recovery.keys_copied,
    );

    // Membership.
    header(
        o,
        "kvnode_members",
        "gauge",
        "Nodes of the cluster's membership as this node holds it, by state: active or \
         removed.",
    );
    let removed = status.members.iter().filter(|m| m.removed).count();
    let active = status.members.len() - removed;
    let _ = writeln!(o, "kvnode_members{{state=\"active\"}} {active}");
    let _ = writeln!(o, "kvnode_members{{state=\"removed\"}} {removed}");
    single(
        o,
        "kvnode_membership_version",
        "gauge",
        "The highest version of the membership this node holds; every node converges on the \
         same.",
        status.members_version,
    );

    // Peers.
    let now = metrics.millis() + 1;
    let seconds_since = |at: u64| now.saturating_sub(at) as f64 / 1000.0;
    let mut peer_rows = Vec::new();
    for (m, peer) in links.into_iter().zip(&status.peers) {
        let acked_at = m.acked_at.load(Ordering::Relaxed);
        let caught_up_at = m.caught_up_at.load(Ordering::Relaxed);
        let since_ack = if acked_at == 0 {
            seconds_since(1)
        } else {
            seconds_since(acked_at)
        };
        let lag_seconds = match (peer.lag, caught_up_at) {
            (0, _) => 0.0,
            (_, 0) => seconds_since(1),
            (_, at) => seconds_since(at),
        };
        peer_rows.push((
            label(&peer.node),
            [
                peer.lag as f64,
                lag_seconds,
                since_ack,
                f64::from(u8::from(peer.reachable)),
                f64::from(u8::from(peer.paused)),
                m.batches_sent.load(Ordering::Relaxed) as f64,
                m.send_errors.load(Ordering::Relaxed) as f64,
            ],
        ));
    }
    let peer_families = [
        (
            "kvnode_peer_lag_events",
            "gauge",
            "Writes of this node the peer has not acknowledged.",
        ),
        (
            "kvnode_peer_lag_seconds",
            "gauge",
            "Seconds since the peer last had every write of this node (0 when it has them all).",
        ),
        (
            "kvnode_peer_seconds_since_ack",
            "gauge",
            "Seconds since the peer last acknowledged anything (since start when never).",
        ),
        (
            "kvnode_peer_reachable",
            "gauge",
            "1 when the last request to the peer succeeded.",
        ),
        (
            "kvnode_peer_paused",
            "gauge",
            "1 when the fault hook paused the link to the peer.",
        ),
        (
            "kvnode_peer_batches_sent_total",
            "counter",
            "Batches the peer acknowledged.",
        ),
        (
            "kvnode_peer_send_errors_total",
            "counter",
            "Failed requests to the peer.",
        ),
    ];
    for (i, (name, kind, help)) in peer_families.into_iter().enumerate() {
        header(o, name, kind, help);
        for (peer, values) in &peer_rows {
            let _ = writeln!(o, "{name}{{peer=\"{peer}\"}} {}", values[i]);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let h = Histogram::new(&[0.001, 0.01]);
        h.observe(Duration::from_micros(500));
        h.observe(Duration::from_millis(5));
        h.observe(Duration::from_millis(5));
        h.observe(Duration::from_secs(1));
        let mut out = String::new();
        h.render(&mut out, "x", "a=\"b\"");
        assert_eq!(
            out,
            "x_bucket{a=\"b\",le=\"0.001\"} 1\nx_bucket{a=\"b\",le=\"0.01\"} 3\n\
             x_bucket{a=\"b\",le=\"+Inf\"} 4\nx_sum{a=\"b\"} 1.0105\nx_count{a=\"b\"} 4\n"
        );
    }

    #[test]
    fn labels_are_escaped() {
        assert_eq!(label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }

    #[test]
    fn request_series_are_per_route_method_and_status() {
        let m = Metrics::new();
        m.register_routes(["/health", "/write"]);
        let health = m.route("/health");
        assert_ne!(health, m.route(UNMATCHED));
        assert_eq!(m.route("/no/such/route"), m.route(UNMATCHED));
        m.request(
            health,
            &Method::GET,
            StatusCode::OK,
            Duration::from_millis(1),
        );
        m.request(
            health,
            &Method::GET,
            StatusCode::OK,
            Duration::from_millis(1),
        );
        m.request(
            health,
            &Method::from_bytes(b"BREW").unwrap(),
            StatusCode::METHOD_NOT_ALLOWED,
            Duration::ZERO,
        );
        let get = METHODS.iter().position(|x| x == Method::GET).unwrap();
        let requests = &m.routes.get().unwrap().requests;
        let table = requests[health.0 * METHOD_SLOTS + get].get().unwrap();
        assert_eq!(table.0[100].get().unwrap().count(), 2);
        let other = requests[health.0 * METHOD_SLOTS + METHODS.len()]
            .get()
            .unwrap();
        assert_eq!(other.0[305].get().unwrap().count(), 1);
        {
            let _a = m.request_started();
            let _b = m.request_started();
            assert_eq!(m.in_flight.load(Ordering::Relaxed), 2);
        }
        assert_eq!(m.in_flight.load(Ordering::Relaxed), 0);
    }
}
