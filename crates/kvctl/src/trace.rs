//! `kvctl trace`: the traces of every node as one ShiViz log.
//!
//! [ShiViz](https://bestchai.bitbucket.io/shiviz/) draws a space-time diagram
//! from a log of one line per event, read with a regular expression that has
//! the named groups `host`, `event` and `clock`. The log written here starts
//! with that expression ([`SHIVIZ_REGEX`]) and an empty line (the delimiter of
//! multiple executions, unused), as ShiViz expects of an uploaded file, then
//! has one line per trace record:
//!
//! ```text
//! node3 "deliver_from_buffer node2:1 x=200 applied={node1:1,node2:1,node3:0}" {"node3":5,"node1":3,"node2":3}
//! ```
//!
//! The clocks of the log are not the store's `applied` clocks (those go into
//! the description). ShiViz wants, per host, its own entry to count that
//! host's events 1, 2, 3..., and a message to show as an increase of the
//! receiver's entry for the sender. So the [`Collator`] computes them: each
//! record ticks its node's own entry, and a `receive` merges the clock of the
//! `send` it names as its `cause`. Sends are placed before their receives, so
//! the log is in an order consistent with causality, and a clock only counts
//! hosts, and events, that the log has.
//!
//! # What is left out
//!
//! A receive whose send is not in the log (gone from the sender's ring, made
//! before the sender restarted, or still unseen after the wait of `--follow`)
//! is written without the merge: ShiViz then draws no arrow for it, and the
//! description says so. A node restarted while followed numbers its records
//! from 1 again; the log goes on with its line, but receives naming its sends
//! from before the restart are written without their arrow.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io::Write;
use std::time::{Duration, Instant};

use futures_util::stream::{self, LocalBoxStream, StreamExt};
use vclock_proto::{NodeId, TraceEvent, TraceKind, TraceRef, TraceResponse, VClock};

use crate::transport::{Agent, CallError, Transport};
use crate::Error;

/// The regular expression that reads the ShiViz log, with JavaScript's named
/// groups (`(?<name>...)`, which Rust's `regex` crate reads too). It is the
/// first line of the log.
pub const SHIVIZ_REGEX: &str = r#"(?<host>\S+) "(?<event>.*)" (?<clock>\{.*\})"#;

/// Values and keys longer than this many characters are cut in descriptions.
const MAX_SHOWN_CHARS: usize = 60;

/// Largest trace answer read (a node keeps at most `trace_buffer` records).
const TRACE_BODY_LIMIT: usize = 1 << 30;

/// How long a followed node that cannot be reached waits before trying again.
const RECONNECT_AFTER: Duration = Duration::from_secs(1);

/// What the log is written as.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// A ShiViz log: the regular expression, an empty line, one line per record.
    Shiviz,
    /// One [`TraceEvent`] as JSON per line, in the same order.
    Json,
}

/// What to read and how.
#[derive(Clone, Debug)]
pub struct TraceOptions {
    /// The nodes' base URLs.
    pub nodes: Vec<String>,
    /// A bearer token to send (the nodes' `client_token`), if any.
    pub token: Option<String>,
    /// Timeout of each request (not of a followed stream).
    pub timeout: Duration,
    /// The output format.
    pub format: Format,
    /// With [`follow`]: how long a receive waits for its send's record before
    /// it is written without it.
    pub max_wait: Duration,
}

/// What can go wrong writing a trace.
#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    /// No node answered, or one refused.
    #[error(transparent)]
    Client(#[from] Error),
    /// Every node that answered keeps no trace: `(node, url)` of each.
    #[error(
        "no node keeps a trace ({}): start the nodes with KVNODE_TRACE_BUFFER=10000 \
         (cargo xtask cluster does)",
        .0.iter().map(|(n, u)| format!("{n} at {u}")).collect::<Vec<_>>().join(", ")
    )]
    Off(Vec<(NodeId, String)>),
    /// The output could not be written.
    #[error("writing the trace: {0}")]
    Write(#[from] std::io::Error),
}

// ---- the log's lines ---------------------------------------------------------------

/// One record placed in the log, with its ShiViz clock.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// The record.
    pub event: TraceEvent,
    /// Its ShiViz clock: the node's own entry counts its records in the log;
    /// the others come from the sends it received, directly or not.
    pub clock: VClock,
    /// For a receive: whether its send is in the log (and merged into `clock`).
    pub send_found: Option<bool>,
}

impl Entry {
    /// The event description: the kind, what it concerns, and the node's
    /// applied clock; on one line, without `"`.
    pub fn description(&self) -> String {
        let e = &self.event;
        let mut d = String::from(e.kind.as_str());
        if let Some(dot) = &e.dot {
            d.push_str(&format!(" {dot}"));
        }
        if e.writes.len() > 1 {
            // A transaction: every key it writes.
            let writes: Vec<String> = e
                .writes
                .iter()
                .map(|w| match w.op.value() {
                    Some(value) => format!("{}={}", shorten(&w.key), compact_value(value)),
                    None => format!("{} (deleted)", shorten(&w.key)),
                })
                .collect();
            d.push_str(&format!(" txn {}", writes.join(" ")));
        } else if let Some(key) = &e.key {
            d.push(' ');
            d.push_str(&shorten(key));
            match (e.kind, &e.value) {
                (_, Some(value)) => d.push_str(&format!("={}", compact_value(value))),
                (TraceKind::Write | TraceKind::Deliver | TraceKind::DeliverFromBuffer, None) => {
                    d.push_str(" (deleted)")
                }
                (TraceKind::Read, None) => d.push_str(" (not found)"),
                _ => {}
            }
        }
        if let Some(peer) = &e.peer {
            let way = if e.kind == TraceKind::Send {
                "to"
            } else {
                "from"
            };
            d.push_str(&format!(" {way} {peer}"));
        }
        if !e.dots.is_empty() {
            let dots: Vec<String> = e.dots.iter().map(|d| d.to_string()).collect();
            d.push_str(&format!(" [{}]", dots.join(",")));
        }
        if !e.missing.is_empty() {
            let missing: Vec<String> = e.missing.iter().map(|m| m.to_string()).collect();
            d.push_str(&format!(" waiting for {}", missing.join(", ")));
        }
        match (e.kind, e.siblings) {
            (TraceKind::Siblings | TraceKind::Resolved, Some(n)) => {
                d.push_str(&format!(" ({n} value{})", if n == 1 { "" } else { "s" }))
            }
            (_, Some(n)) if n > 1 => d.push_str(&format!(" ({n} siblings)")),
            _ => {}
        }
        if self.send_found == Some(false) {
            d.push_str(" (its send is not in the log)");
        }
        d.push_str(&format!(" applied={}", e.clock));
        one_line(&d)
    }

    /// The ShiViz clock as a JSON object, the node's own entry first.
    pub fn clock_json(&self) -> String {
        let own = &self.event.node;
        let entries = std::iter::once((own, self.clock.get(own)))
            .chain(
                self.clock
                    .iter()
                    .filter(|(n, s)| *n != own && **s > 0)
                    .map(|(n, s)| (n, *s)),
            )
            .map(|(n, s)| {
                format!(
                    "{}:{s}",
                    serde_json::to_string(n).expect("strings serialise")
                )
            })
            .collect::<Vec<_>>();
        format!("{{{}}}", entries.join(","))
    }

    /// The line of the ShiViz log (without its newline).
    pub fn shiviz_line(&self) -> String {
        format!(
            "{} \"{}\" {}",
            self.event.node,
            self.description(),
            self.clock_json()
        )
    }
}

/// The first lines of a ShiViz log: the regular expression and an empty
/// delimiter line.
pub fn shiviz_header() -> String {
    format!("{SHIVIZ_REGEX}\n\n")
}

/// Writes `entry` as one line in `format`.
pub fn write_entry(out: &mut dyn Write, format: Format, entry: &Entry) -> std::io::Result<()> {
    match format {
        Format::Shiviz => writeln!(out, "{}", entry.shiviz_line()),
        Format::Json => {
            serde_json::to_writer(&mut *out, &entry.event)?;
            out.write_all(b"\n")
        }
    }
}

/// `text` on one line that ShiViz's expression reads back: `"` becomes `'`,
/// and line breaks and other control characters are escaped (JavaScript's `.`
/// matches neither `\r` nor U+2028/U+2029).
fn one_line(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '"' => out.push('\''),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() || c == '\u{2028}' || c == '\u{2029}' => {
                out.push_str(&format!("\\u{{{:04x}}}", c as u32))
            }
            c => out.push(c),
        }
    }
    out
}

/// A value as compact JSON (its text without insignificant whitespace), cut
/// if long.
fn compact_value(value: &vclock_proto::Value) -> String {
    shorten(&crate::compact_json(value.json()))
}

/// `text`, cut to [`MAX_SHOWN_CHARS`] characters with an ellipsis.
fn shorten(text: &str) -> String {
    match text.char_indices().nth(MAX_SHOWN_CHARS) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_owned(),
    }
}

// ---- the collator: a causal order and ShiViz clocks ------------------------------

/// Puts the records of several nodes in one order consistent with causality
/// and gives each its ShiViz clock.
///
/// Records are [`push`](Self::push)ed in each node's id order, the nodes in
/// any interleaving. [`ready`](Self::ready) places every record that can be:
/// a receive only once its send is placed, or once the send is known to be
/// missing, or once it has waited `max_wait`. [`finish`](Self::finish) places
/// the rest. It never reads the clock: times are passed in.
#[derive(Debug)]
pub struct Collator {
    hosts: BTreeMap<NodeId, Host>,
    /// The ShiViz clocks of placed sends that no receive has merged yet.
    sends: HashMap<TraceRef, VClock>,
    max_wait: Duration,
}

#[derive(Debug, Default)]
struct Host {
    /// Records pushed and not placed yet, in id order.
    queue: VecDeque<Arrived>,
    /// The highest id pushed (0: none).
    seen: u64,
    /// Records placed so far: the host's own ShiViz entry.
    count: u64,
    /// The ShiViz clock of its last placed record.
    clock: VClock,
}

#[derive(Debug)]
struct Arrived {
    event: TraceEvent,
    /// When it was pushed, if a wait for its send is bounded.
    at: Option<Instant>,
}

/// Where a queued record stands.
enum Readiness {
    /// It can be placed, merging this send's clock if any.
    Ready(Option<TraceRef>),
    /// A receive whose send is queued but not placed.
    SendQueued,
    /// A receive whose send may still arrive, until the deadline if any.
    SendPending(Option<Instant>),
}

impl Collator {
    /// A collator where a receive waits at most `max_wait` (from when it was
    /// pushed with [`push_at`](Self::push_at)) for its send.
    pub fn new(max_wait: Duration) -> Self {
        Self {
            hosts: BTreeMap::new(),
            sends: HashMap::new(),
            max_wait,
        }
    }

    /// Declares that the records of `node` will come, so that receives wait
    /// for its sends. A pushed record declares its node too.
    pub fn expect(&mut self, node: &str) {
        self.hosts.entry(node.to_owned()).or_default();
    }

    /// Adds a record; a receive waits for its send until [`finish`](Self::finish).
    /// Records with an id already pushed for their node are ignored.
    pub fn push(&mut self, event: TraceEvent) {
        self.push_inner(event, None);
    }

    /// Adds a record pushed at `now`; a receive waits for its send until
    /// `now + max_wait`.
    pub fn push_at(&mut self, event: TraceEvent, now: Instant) {
        self.push_inner(event, Some(now));
    }

    fn push_inner(&mut self, event: TraceEvent, at: Option<Instant>) {
        let host = self.hosts.entry(event.node.clone()).or_default();
        if event.id <= host.seen {
            return;
        }
        host.seen = event.id;
        host.queue.push_back(Arrived { event, at });
    }

    /// `node` restarted: its records are numbered from 1 again, and receives
    /// naming its earlier sends cannot find them.
    pub fn restarted(&mut self, node: &str) {
        if let Some(host) = self.hosts.get_mut(node) {
            host.seen = 0;
        }
        self.sends.retain(|send, _| send.node != node);
    }

    /// Places every record that can be placed at `now`.
    pub fn ready(&mut self, now: Instant) -> Vec<Entry> {
        self.drain(Some(now))
    }

    /// Places every record left, receives without the sends not found.
    pub fn finish(&mut self) -> Vec<Entry> {
        self.drain(None)
    }

    /// The next time a waiting receive gives up on its send, if one waits.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.hosts
            .values()
            .filter_map(|h| h.queue.front())
            .filter_map(|a| match self.readiness(a) {
                Readiness::SendPending(deadline) => deadline,
                _ => None,
            })
            .min()
    }

    /// True when no record waits to be placed.
    pub fn is_empty(&self) -> bool {
        self.hosts.values().all(|h| h.queue.is_empty())
    }

    fn readiness(&self, arrived: &Arrived) -> Readiness {
        let event = &arrived.event;
        let Some(cause) = event
            .cause
            .as_ref()
            .filter(|_| event.kind == TraceKind::Receive)
        else {
            return Readiness::Ready(None);
        };
        if self.sends.contains_key(cause) {
            return Readiness::Ready(Some(cause.clone()));
        }
        let Some(sender) = self.hosts.get(&cause.node) else {
            return Readiness::Ready(None);
        };
        // Queues are in id order (after a restart, until the records from
        // before it are placed, a lookup may miss: the receive then waits its
        // deadline at most).
        if sender
            .queue
            .binary_search_by_key(&cause.id, |a| a.event.id)
            .is_ok()
        {
            Readiness::SendQueued
        } else if sender.seen >= cause.id {
            Readiness::Ready(None)
        } else {
            Readiness::SendPending(arrived.at.map(|at| at + self.max_wait))
        }
    }

    /// Places records until none can be: at each step the placeable head with
    /// the earliest time (ties by node id), so the log reads in time order
    /// where causality allows. `now` is `None` when finishing: nothing more
    /// will come, so no receive waits.
    fn drain(&mut self, now: Option<Instant>) -> Vec<Entry> {
        let mut placed = Vec::new();
        loop {
            let mut best: Option<(u64, NodeId, Option<TraceRef>)> = None;
            let mut pending = false;
            for (node, host) in &self.hosts {
                let Some(head) = host.queue.front() else {
                    continue;
                };
                let merge = match self.readiness(head) {
                    Readiness::Ready(merge) => merge,
                    Readiness::SendQueued => continue,
                    Readiness::SendPending(deadline) => {
                        let expired = match (now, deadline) {
                            (None, _) => true,
                            (Some(now), Some(deadline)) => now >= deadline,
                            (Some(_), None) => false,
                        };
                        if !expired {
                            pending = true;
                            continue;
                        }
                        None
                    }
                };
                let time = head.event.time_us;
                if best.as_ref().is_none_or(|(t, _, _)| time < *t) {
                    best = Some((time, node.clone(), merge));
                }
            }
            // Heads that all wait for sends queued behind other heads form a
            // cycle, which records of real nodes never do: break it.
            if best.is_none() && !pending {
                best = self
                    .hosts
                    .iter()
                    .filter_map(|(node, h)| h.queue.front().map(|a| (a.event.time_us, node)))
                    .min()
                    .map(|(time, node)| (time, node.clone(), None));
            }
            let Some((_, node, merge)) = best else {
                return placed;
            };
            placed.push(self.place(&node, merge));
        }
    }

    fn place(&mut self, node: &str, merge: Option<TraceRef>) -> Entry {
        let send_clock = merge.and_then(|send| self.sends.remove(&send));
        let host = self.hosts.get_mut(node).expect("placed from a known host");
        let event = host
            .queue
            .pop_front()
            .expect("placed from a non-empty queue")
            .event;
        let send_found = (event.kind == TraceKind::Receive).then_some(send_clock.is_some());
        if let Some(send_clock) = &send_clock {
            host.clock.merge(send_clock);
        }
        host.count += 1;
        host.clock.set(node, host.count);
        if event.kind == TraceKind::Send {
            let send = TraceRef {
                node: event.node.clone(),
                id: event.id,
            };
            self.sends.insert(send, host.clock.clone());
        }
        Entry {
            clock: host.clock.clone(),
            event,
            send_found,
        }
    }
}

/// The records of several nodes in one causal order, with ShiViz clocks.
pub fn collate(events: impl IntoIterator<Item = TraceEvent>) -> Vec<Entry> {
    let mut collator = Collator::new(Duration::ZERO);
    for event in events {
        collator.push(event);
    }
    collator.finish()
}

// ---- reading the nodes ------------------------------------------------------------

impl TraceOptions {
    /// How the trace is read: the token and timeout, and answers as large as a
    /// node's whole trace.
    pub fn transport(&self) -> Transport {
        Transport::new()
            .with_timeout(self.timeout)
            .with_optional_token(self.token.clone())
            .with_body_limit(TRACE_BODY_LIMIT)
    }
}

/// `GET {url}/v1/trace?after={after}` of one node.
async fn trace_of(agent: &Agent, url: &str, after: u64) -> Result<TraceResponse, Error> {
    agent
        .get(&format!("{url}/v1/trace?after={after}"))
        .await
        .map_err(|e| Error::at(url, e))
}

/// The nodes that keep a trace, from every node's answer; warns about the
/// others. Fails when none does (then warns only about what the error does
/// not say).
fn keeping_a_trace(
    answers: Vec<(String, Result<TraceResponse, Error>)>,
    warn: &mut dyn FnMut(&str),
) -> Result<Vec<(String, TraceResponse)>, TraceError> {
    let mut kept: Vec<(String, TraceResponse)> = Vec::new();
    let mut off = Vec::new();
    let mut failed = Vec::new();
    let mut duplicates = Vec::new();
    for (url, answer) in answers {
        match answer {
            Ok(trace) if !trace.enabled => off.push((trace.node, url)),
            Ok(trace) => match kept.iter().find(|(_, t)| t.node == trace.node) {
                Some((first, _)) => duplicates.push(format!(
                    "{url} is {} again (as {first}); read once",
                    trace.node
                )),
                None => kept.push((url, trace)),
            },
            Err(e) => failed.push(e),
        }
    }
    let off_warnings = off.iter().map(|(node, url)| {
        format!(
            "{node} at {url} keeps no trace (start it with KVNODE_TRACE_BUFFER=10000); \
             going on without it"
        )
    });
    let failed_warnings = failed.iter().flat_map(|e| match e {
        Error::Unreachable(tried) => tried
            .iter()
            .map(|(url, why)| format!("cannot reach {url}: {why}; going on without it"))
            .collect(),
        other => vec![format!("{other}; going on without it")],
    });
    if !kept.is_empty() {
        for warning in off_warnings.chain(failed_warnings).chain(duplicates) {
            warn(&warning);
        }
        return Ok(kept);
    }
    if !off.is_empty() {
        for warning in failed_warnings {
            warn(&warning);
        }
        return Err(TraceError::Off(off));
    }
    // Nobody answered: the error names every node, or the first refusal.
    let mut unreachable = Vec::new();
    for e in failed {
        match e {
            Error::Unreachable(tried) => unreachable.extend(tried),
            refused => return Err(refused.into()),
        }
    }
    Err(Error::Unreachable(unreachable).into())
}

/// Reads the trace of every node, and writes them as one log to `out`.
/// Returns the number of records written.
pub async fn snapshot(
    options: &TraceOptions,
    out: &mut dyn Write,
    warn: &mut dyn FnMut(&str),
) -> Result<usize, TraceError> {
    let agent = options.transport().agent();
    let answers = futures_util::future::join_all(options.nodes.iter().map(|url| {
        let agent = &agent;
        async move { (url.clone(), trace_of(agent, url, 0).await) }
    }))
    .await;
    let traces = keeping_a_trace(answers, warn)?;
    for (url, trace) in &traces {
        if let Some(first) = trace.events.first() {
            if first.id > 1 {
                warn(&format!(
                    "{} at {url} holds records from id {} only (KVNODE_TRACE_BUFFER keeps the last ones)",
                    trace.node, first.id
                ));
            }
        }
    }
    let entries = collate(traces.into_iter().flat_map(|(_, t)| t.events));
    if options.format == Format::Shiviz {
        out.write_all(shiviz_header().as_bytes())?;
    }
    for entry in &entries {
        write_entry(out, options.format, entry)?;
    }
    out.flush()?;
    Ok(entries.len())
}

/// Writes the records of every node as they are made, until Ctrl-C (then the
/// receives still waiting for their sends are written without them) or until
/// no node is left to follow. Starts with the records the nodes hold.
pub async fn follow(
    options: &TraceOptions,
    out: &mut dyn Write,
    warn: &mut dyn FnMut(&str),
) -> Result<(), TraceError> {
    use futures_util::future::{select, Either};

    let agent = options.transport().agent();
    let answers = futures_util::future::join_all(options.nodes.iter().map(|url| {
        let agent = &agent;
        async move { (url.clone(), trace_of(agent, url, u64::MAX).await) }
    }))
    .await;
    // Nodes unreachable now are followed too, in case they come up; the
    // nodes that keep no trace are not.
    let unreachable: Vec<String> = answers
        .iter()
        .filter(|(_, a)| matches!(a, Err(Error::Unreachable(_))))
        .map(|(url, _)| url.clone())
        .collect();
    let traces = keeping_a_trace(answers, warn)?;
    let mut collator = Collator::new(options.max_wait);
    for (_, trace) in &traces {
        collator.expect(&trace.node);
    }
    let followed = traces
        .into_iter()
        .map(|(url, _)| url)
        .chain(unreachable.clone());
    let mut news = stream::select_all(followed.map(|url| {
        let mut node = NodeStream::new(url, agent.clone());
        // Unreachable now, which was told: try again, quietly.
        node.lost = unreachable.contains(&node.url);
        node.into_stream()
    }));

    if options.format == Format::Shiviz {
        out.write_all(shiviz_header().as_bytes())?;
        out.flush()?;
    }
    let mut ctrl_c = Box::pin(async {
        if actix_rt::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    });
    loop {
        let deadline = collator.next_deadline();
        let timer = Box::pin(async move {
            match deadline {
                Some(d) => actix_rt::time::sleep_until(d.into()).await,
                None => std::future::pending().await,
            }
        });
        let next = select(news.next(), timer);
        match select(ctrl_c.as_mut(), next).await {
            Either::Left(_) => break,
            Either::Right((Either::Left((None, _)), _)) => break,
            Either::Right((Either::Left((Some(update), _)), _)) => match update {
                NodeNews::Event(event) => collator.push_at(*event, Instant::now()),
                NodeNews::Restarted(node) => {
                    warn(&format!(
                        "{node} restarted: its records are numbered from 1 again"
                    ));
                    collator.restarted(&node);
                }
                NodeNews::Warning(message) => warn(&message),
            },
            Either::Right((Either::Right(_), _)) => {}
        }
        for entry in collator.ready(Instant::now()) {
            write_entry(out, options.format, &entry)?;
        }
        out.flush()?;
    }
    for entry in collator.finish() {
        write_entry(out, options.format, &entry)?;
    }
    out.flush()?;
    Ok(())
}

/// What a followed node's stream tells.
#[derive(Debug)]
enum NodeNews {
    Event(Box<TraceEvent>),
    Restarted(NodeId),
    Warning(String),
}

/// One node's `/v1/trace/stream`, read again after it breaks.
struct NodeStream {
    url: String,
    agent: Agent,
    node: Option<NodeId>,
    last_id: u64,
    body: Option<LocalBoxStream<'static, Result<Vec<u8>, String>>>,
    sse: SseParser,
    news: VecDeque<NodeNews>,
    /// The stream broke (and this was told); reconnect after a pause.
    lost: bool,
    /// The stream was read before.
    was_read: bool,
    /// The node keeps no trace: nothing more to read.
    off: bool,
}

impl std::fmt::Debug for NodeStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeStream")
            .field("url", &self.url)
            .field("node", &self.node)
            .field("last_id", &self.last_id)
            .finish_non_exhaustive()
    }
}

impl NodeStream {
    fn new(url: String, agent: Agent) -> Self {
        Self {
            url,
            agent,
            node: None,
            last_id: 0,
            body: None,
            sse: SseParser::default(),
            news: VecDeque::new(),
            lost: false,
            was_read: false,
            off: false,
        }
    }

    fn into_stream(self) -> LocalBoxStream<'static, NodeNews> {
        stream::unfold(self, |mut s| async move {
            let news = s.next().await?;
            Some((news, s))
        })
        .boxed_local()
    }

    async fn next(&mut self) -> Option<NodeNews> {
        loop {
            if let Some(news) = self.news.pop_front() {
                return Some(news);
            }
            if self.off {
                return None;
            }
            let Some(body) = self.body.as_mut() else {
                self.connect().await;
                continue;
            };
            match body.next().await {
                Some(Ok(chunk)) => {
                    for data in self.sse.push(&chunk) {
                        match serde_json::from_str::<TraceEvent>(&data) {
                            Ok(event) => {
                                self.last_id = self.last_id.max(event.id);
                                self.news.push_back(NodeNews::Event(Box::new(event)));
                            }
                            Err(e) => self.news.push_back(NodeNews::Warning(format!(
                                "{}: a record that is not a trace event ({e}): {data}",
                                self.url
                            ))),
                        }
                    }
                }
                Some(Err(why)) => self.lose(why),
                None => self.lose("the stream ended".into()),
            }
        }
    }

    fn lose(&mut self, why: String) {
        self.body = None;
        if !self.lost {
            self.lost = true;
            let who = self.node.as_deref().unwrap_or("the node");
            self.news.push_back(NodeNews::Warning(format!(
                "lost {who} at {}: {why}; trying again every {}s",
                self.url,
                RECONNECT_AFTER.as_secs()
            )));
        }
    }

    async fn connect(&mut self) {
        if self.lost {
            actix_rt::time::sleep(RECONNECT_AFTER).await;
        }
        // The node's last id tells whether it restarted since.
        let trace = match trace_of(&self.agent, &self.url, u64::MAX).await {
            Ok(trace) => trace,
            Err(e) => return self.lose(e.to_string()),
        };
        if !trace.enabled {
            self.off = true;
            self.news.push_back(NodeNews::Warning(format!(
                "{} at {} keeps no trace (start it with KVNODE_TRACE_BUFFER=10000); not following it",
                trace.node, self.url
            )));
            return;
        }
        if self.node.as_ref() == Some(&trace.node) && trace.last_id < self.last_id {
            self.last_id = 0;
            self.news.push_back(NodeNews::Restarted(trace.node.clone()));
        }
        self.node = Some(trace.node);
        let url = format!("{}/v1/trace/stream?after={}", self.url, self.last_id);
        match self.agent.stream(&url).await {
            Ok(body) => {
                self.body = Some(
                    body.map(|chunk| chunk.map(|b| b.to_vec()).map_err(|e| e.to_string()))
                        .boxed_local(),
                );
                self.sse = SseParser::default();
                if self.lost {
                    self.lost = false;
                    self.news.push_back(NodeNews::Warning(format!(
                        "following {} at {}{}",
                        self.node.as_deref().unwrap_or("the node"),
                        self.url,
                        if self.was_read { " again" } else { "" }
                    )));
                }
                self.was_read = true;
            }
            Err(e @ CallError::Refused { .. }) => {
                self.lose(format!("the stream was refused ({e})"))
            }
            Err(e) => self.lose(e.to_string()),
        }
    }
}

/// Reads server-sent events: the `data` of each event, from chunks cut anywhere.
#[derive(Debug, Default)]
struct SseParser {
    /// The start of a line not complete yet.
    partial: Vec<u8>,
    /// The data lines of the event being read.
    data: Option<String>,
}

impl SseParser {
    /// Reads `chunk`; returns the data of every event it completes.
    fn push(&mut self, chunk: &[u8]) -> Vec<String> {
        self.partial.extend_from_slice(chunk);
        let mut events = Vec::new();
        let mut start = 0;
        while let Some(end) = self.partial[start..].iter().position(|b| *b == b'\n') {
            let line = &self.partial[start..start + end];
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            let line = String::from_utf8_lossy(line);
            start += end + 1;
            if line.is_empty() {
                events.extend(self.data.take());
            } else if let Some(value) = line.strip_prefix("data:") {
                let value = value.strip_prefix(' ').unwrap_or(value);
                match &mut self.data {
                    Some(data) => {
                        data.push('\n');
                        data.push_str(value);
                    }
                    None => self.data = Some(value.to_owned()),
                }
            }
            // Comments (`:`), `id:`, `event:` and `retry:` lines say nothing we need.
        }
        self.partial.drain(..start);
        events
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vclock_proto::{Dot, Missing, Value};

    fn clock(entries: &[(&str, u64)]) -> VClock {
        entries.iter().map(|(n, s)| (*n, *s)).collect()
    }

    fn record(node: &str, id: u64, time_us: u64, kind: TraceKind) -> TraceEvent {
        TraceEvent::new(node.into(), id, time_us, kind, VClock::new())
    }

    fn send(node: &str, id: u64, time_us: u64, to: &str) -> TraceEvent {
        let mut e = record(node, id, time_us, TraceKind::Send);
        e.peer = Some(to.into());
        e
    }

    fn receive(node: &str, id: u64, time_us: u64, from: &str, send_id: u64) -> TraceEvent {
        let mut e = record(node, id, time_us, TraceKind::Receive);
        e.peer = Some(from.into());
        e.cause = Some(TraceRef {
            node: from.into(),
            id: send_id,
        });
        e
    }

    fn lines(entries: &[Entry]) -> Vec<(String, u64, VClock)> {
        entries
            .iter()
            .map(|e| (e.event.node.clone(), e.event.id, e.clock.clone()))
            .collect()
    }

    #[test]
    fn a_receive_merges_its_send_and_every_host_ticks_by_one() {
        // n2's records come first and are earlier in time, but its receive
        // must wait for n1's send.
        let entries = collate([
            record("n2", 1, 1, TraceKind::Read),
            receive("n2", 2, 2, "n1", 2),
            record("n2", 3, 3, TraceKind::Deliver),
            record("n1", 1, 10, TraceKind::Write),
            send("n1", 2, 11, "n2"),
            record("n1", 3, 12, TraceKind::Read),
        ]);
        assert_eq!(
            lines(&entries),
            [
                ("n2".into(), 1, clock(&[("n2", 1)])),
                ("n1".into(), 1, clock(&[("n1", 1)])),
                ("n1".into(), 2, clock(&[("n1", 2)])),
                ("n2".into(), 2, clock(&[("n1", 2), ("n2", 2)])),
                ("n2".into(), 3, clock(&[("n1", 2), ("n2", 3)])),
                ("n1".into(), 3, clock(&[("n1", 3)])),
            ]
        );
        assert_eq!(entries[3].send_found, Some(true));
        assert_eq!(entries[0].send_found, None);
    }

    #[test]
    fn a_receive_whose_send_is_missing_is_placed_without_the_merge() {
        let entries = collate([
            // n1's ring lost ids 1-4: the send 3 is gone.
            send("n1", 5, 1, "n2"),
            receive("n2", 1, 2, "n1", 3),
            // A sender that is not in the log at all.
            receive("n2", 2, 3, "n9", 1),
            // A send later than anything n1 gave (read before it was made).
            receive("n2", 3, 4, "n1", 8),
            receive("n2", 4, 5, "n1", 5),
        ]);
        assert_eq!(
            lines(&entries),
            [
                ("n1".into(), 5, clock(&[("n1", 1)])),
                ("n2".into(), 1, clock(&[("n2", 1)])),
                ("n2".into(), 2, clock(&[("n2", 2)])),
                ("n2".into(), 3, clock(&[("n2", 3)])),
                ("n2".into(), 4, clock(&[("n1", 1), ("n2", 4)])),
            ]
        );
        let found: Vec<Option<bool>> = entries.iter().map(|e| e.send_found).collect();
        assert_eq!(
            found,
            [None, Some(false), Some(false), Some(false), Some(true)]
        );
        assert!(entries[1]
            .description()
            .ends_with("(its send is not in the log) applied={}"));
    }

    #[test]
    fn clocks_carry_causality_through_a_chain_of_messages() {
        // n1 -> n2 -> n3: n3's receive counts n1's send through n2.
        let entries = collate([
            receive("n3", 1, 30, "n2", 2),
            send("n1", 1, 10, "n2"),
            receive("n2", 1, 20, "n1", 1),
            send("n2", 2, 21, "n3"),
        ]);
        let n3 = entries.iter().find(|e| e.event.node == "n3").unwrap();
        assert_eq!(n3.clock, clock(&[("n1", 1), ("n2", 2), ("n3", 1)]));
        // The order is causal: every send before its receive.
        let order: Vec<(&str, u64)> = entries
            .iter()
            .map(|e| (e.event.node.as_str(), e.event.id))
            .collect();
        assert_eq!(order, [("n1", 1), ("n2", 1), ("n2", 2), ("n3", 1)]);
        // Only hosts with events appear, each at most at its count.
        for e in &entries {
            for (host, seq) in &e.clock {
                let count = entries.iter().filter(|x| &x.event.node == host).count();
                assert!(*seq as usize <= count, "{e:?}");
            }
        }
    }

    #[test]
    fn large_traces_are_collated_quickly() {
        // n1 sends each of its writes to n2 and to n3, which receive them; the
        // nodes' records are given one node after the other, receivers first.
        let n = 20_000;
        let mut events = Vec::new();
        for (to, offset) in [("n2", 2), ("n3", 1)] {
            for i in 1..=n {
                events.push(receive(to, i, 4 * i + 1, "n1", 4 * i - offset));
            }
        }
        for i in 1..=n {
            events.push(record("n1", 4 * i - 3, 4 * i - 3, TraceKind::Write));
            events.push(send("n1", 4 * i - 2, 4 * i - 2, "n2"));
            events.push(send("n1", 4 * i - 1, 4 * i - 1, "n3"));
            events.push(record("n1", 4 * i, 4 * i, TraceKind::Read));
        }
        let started = std::time::Instant::now();
        let entries = collate(events);
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(entries.len(), 6 * n as usize);
        assert!(entries.iter().all(|e| e.send_found != Some(false)));
        let last_n3 = entries.iter().rfind(|e| e.event.node == "n3").unwrap();
        assert_eq!(last_n3.clock, clock(&[("n1", 4 * n - 1), ("n3", n)]));
    }

    #[test]
    fn a_cycle_of_bogus_causes_is_broken_and_duplicates_are_dropped() {
        let mut collator = Collator::new(Duration::ZERO);
        collator.push(receive("a", 1, 1, "b", 1));
        collator.push(receive("b", 1, 2, "a", 1));
        collator.push(receive("b", 1, 2, "a", 1));
        let entries = collator.ready(Instant::now());
        assert_eq!(entries.len(), 2);
        assert!(collator.is_empty());
    }

    #[test]
    fn following_a_receive_waits_for_its_send_a_bounded_time() {
        let start = Instant::now();
        let wait = Duration::from_secs(2);
        let mut collator = Collator::new(wait);
        collator.expect("n1");
        collator.push_at(receive("n2", 1, 5, "n1", 1), start);
        collator.push_at(record("n2", 2, 6, TraceKind::Deliver), start);
        assert!(collator.ready(start).is_empty());
        assert_eq!(collator.next_deadline(), Some(start + wait));
        // The send arrives in time: the receive merges it.
        let later = start + Duration::from_millis(500);
        collator.push_at(send("n1", 1, 4, "n2"), later);
        let placed = collator.ready(later);
        assert_eq!(placed.len(), 3);
        assert_eq!(placed[1].clock, clock(&[("n1", 1), ("n2", 1)]));
        assert_eq!(collator.next_deadline(), None);

        // A receive whose send never comes is placed at its deadline.
        collator.push_at(receive("n2", 3, 7, "n1", 2), later);
        assert!(collator.ready(later + Duration::from_secs(1)).is_empty());
        let placed = collator.ready(later + wait);
        assert_eq!(placed.len(), 1);
        assert_eq!(placed[0].send_found, Some(false));
        assert_eq!(placed[0].clock, clock(&[("n1", 1), ("n2", 3)]));
        // ...and the late send is still placed, after it.
        collator.push_at(send("n1", 2, 8, "n2"), later + wait);
        assert_eq!(collator.ready(later + wait)[0].clock, clock(&[("n1", 2)]));

        // A restarted sender numbers from 1 again; its old sends are forgotten.
        collator.push_at(send("n1", 3, 9, "n2"), later + wait);
        collator.ready(later + wait);
        collator.restarted("n1");
        collator.push_at(send("n1", 1, 10, "n2"), later + wait);
        collator.push_at(receive("n2", 4, 11, "n1", 1), later + wait);
        let placed = collator.ready(later + wait);
        assert_eq!(placed.len(), 2);
        assert_eq!(placed[1].clock, clock(&[("n1", 4), ("n2", 4)]));
    }

    /// The description of `event` placed at n1's first step.
    fn description_at_n1(event: TraceEvent) -> String {
        Entry {
            event,
            clock: clock(&[("n1", 1)]),
            send_found: None,
        }
        .description()
    }

    #[test]
    fn a_transaction_is_described_with_every_key() {
        let mut e = record("node1", 3, 1, TraceKind::Write);
        e.dot = Some(Dot::new("node1", 3));
        e.key = Some("a".into());
        e.value = Some(Value::from_json("1").unwrap());
        e.writes = vec![
            vclock_proto::Write::put("a", Value::from_json("1").unwrap()),
            vclock_proto::Write::delete("b"),
        ];
        let entry = Entry {
            event: e,
            clock: clock(&[("node1", 3)]),
            send_found: None,
        };
        let description = entry.description();
        assert!(
            description.starts_with("write node1:3 txn a=1 b (deleted) "),
            "{description}"
        );
    }

    #[test]
    fn descriptions_stay_on_one_line_without_quotes() {
        let mut e = record("node3", 5, 1, TraceKind::DeliverFromBuffer);
        e.clock = clock(&[("node1", 1), ("node2", 1)]);
        e.dot = Some(Dot::new("node2", 1));
        e.key = Some("x".into());
        e.value = Some(Value::from_json("200").unwrap());
        e.siblings = Some(1);
        let entry = Entry {
            event: e,
            clock: clock(&[("node1", 3), ("node2", 2), ("node3", 5)]),
            send_found: None,
        };
        assert_eq!(
            entry.shiviz_line(),
            r#"node3 "deliver_from_buffer node2:1 x=200 applied={node1:1,node2:1}" {"node3":5,"node1":3,"node2":2}"#
        );

        let mut e = record("n1", 2, 1, TraceKind::Write);
        e.key = Some("a \"key\"\nwith\u{2028}breaks".into());
        e.value = Some(Value::from_json("[ \"line\\none\" ,\n 1 ]").unwrap());
        let d = description_at_n1(e);
        assert_eq!(
            d,
            r#"write a 'key'\nwith\u{2028}breaks=['line\none',1] applied={}"#
        );

        let mut e = record("n1", 3, 1, TraceKind::Buffered);
        e.dot = Some(Dot::new("n2", 1));
        e.key = Some("x".into());
        e.missing = vec![Missing {
            node: "n1".into(),
            have: 0,
            want: 1,
        }];
        let d = description_at_n1(e);
        assert_eq!(
            d,
            "buffered n2:1 x waiting for n1 (have 0, need 1) applied={}"
        );

        let mut e = record("n1", 4, 1, TraceKind::Read);
        e.key = Some("k".into());
        e.value = Some(Value::from_serialize(&"y".repeat(100)).unwrap());
        let d = description_at_n1(e);
        assert_eq!(d, format!("read k='{}… applied={{}}", "y".repeat(59)));
    }

    #[test]
    fn the_regex_reads_every_line_back() {
        let re = regex::Regex::new(&format!("^{SHIVIZ_REGEX}$")).unwrap();
        let mut e = receive("node-3.a_b", 9, 1, "node1", 2);
        e.dots = vec![Dot::new("node1", 1), Dot::new("node1", 2)];
        let entry = Entry {
            event: e,
            clock: clock(&[("node1", 2), ("node-3.a_b", 7)]),
            send_found: Some(true),
        };
        let line = entry.shiviz_line();
        let caps = re.captures(&line).expect(&line);
        assert_eq!(&caps["host"], "node-3.a_b");
        assert_eq!(
            &caps["event"],
            "receive from node1 [node1:1,node1:2] applied={}"
        );
        let parsed: serde_json::Value = serde_json::from_str(&caps["clock"]).unwrap();
        assert_eq!(parsed, serde_json::json!({"node-3.a_b": 7, "node1": 2}));
        assert!(shiviz_header().starts_with(SHIVIZ_REGEX));
        assert!(shiviz_header().ends_with(")\n\n"));
    }

    #[test]
    fn server_sent_events_are_read_from_chunks_cut_anywhere() {
        let text = ": idle\n\nid: 1\ndata: {\"a\":1}\n\nid: 2\r\ndata:{\"b\":2}\r\n\r\n: skipped 3\n\ndata: x\ndata: y\n\n";
        for cut in 0..text.len() {
            let mut parser = SseParser::default();
            let mut events = parser.push(&text.as_bytes()[..cut]);
            events.extend(parser.push(&text.as_bytes()[cut..]));
            assert_eq!(events, ["{\"a\":1}", "{\"b\":2}", "x\ny"], "cut at {cut}");
        }
    }

    #[test]
    fn only_nodes_keeping_a_trace_are_read_and_none_is_an_error() {
        let response = |node: &str, enabled: bool| TraceResponse {
            node: node.into(),
            enabled,
            last_id: 0,
            events: Vec::new(),
        };
        let mut warnings = Vec::new();
        let kept = keeping_a_trace(
            vec![
                ("u1".into(), Ok(response("node1", true))),
                ("u2".into(), Ok(response("node2", false))),
                (
                    "u3".into(),
                    Err(Error::Unreachable(vec![("u3".into(), "refused".into())])),
                ),
                ("u4".into(), Ok(response("node1", true))),
            ],
            &mut |w| warnings.push(w.to_owned()),
        )
        .unwrap();
        assert_eq!(kept.len(), 1);
        assert_eq!(warnings.len(), 3, "{warnings:?}");
        assert!(warnings[0].contains("KVNODE_TRACE_BUFFER"), "{warnings:?}");
        assert!(
            warnings[1].starts_with("cannot reach u3: refused"),
            "{warnings:?}"
        );
        assert!(warnings[2].starts_with("u4 is node1 again"), "{warnings:?}");

        // None keeps a trace: the error says so; the warnings say the rest.
        let unreachable = || Err(Error::Unreachable(vec![("u3".into(), "refused".into())]));
        let mut warnings = Vec::new();
        let err = keeping_a_trace(
            vec![
                ("u2".into(), Ok(response("node2", false))),
                ("u3".into(), unreachable()),
            ],
            &mut |w| warnings.push(w.to_owned()),
        )
        .unwrap_err();
        assert!(matches!(err, TraceError::Off(_)));
        assert!(err.to_string().contains("node2 at u2"), "{err}");
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        let mut warnings = Vec::new();
        let err = keeping_a_trace(vec![("u3".into(), unreachable())], &mut |w| {
            warnings.push(w.to_owned())
        })
        .unwrap_err();
        assert!(matches!(err, TraceError::Client(Error::Unreachable(_))));
        assert!(warnings.is_empty(), "{warnings:?}");
    }
}
