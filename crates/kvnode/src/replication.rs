//! Replication: one sender per peer pushes this node's writes, in batches, over
//! a keep-alive connection.
//!
//! A sender keeps two cursors into this node's own writes: `acked`, the last one
//! the peer acknowledged (its `applied` clock counts it), and `sent`, the last
//! one put on the wire. It sends what lies after `sent` as soon as there is
//! something; if the peer's acknowledgement does not catch up with `sent` for
//! `retransmit_after` (a lost batch, a batch the peer had to buffer or refuse),
//! it goes back to `acked` and sends again. Receiving is idempotent, so
//! resending is always safe. When there is nothing to send, the sender exchanges
//! clocks with the peer every `sync_interval`, which feeds log collection.
//!
//! On shutdown ([`Node::begin_shutdown`]) a sender finishes the request it is
//! sending (bounded by `peer_timeout`) and stops; nothing is lost, since the
//! peer is sent again whatever it has not acknowledged.
//!
//! **Repair.** Every answer from the peer carries its `applied` clock. When the
//! peer has lacked the same event of some other origin for `repair_after` while
//! this node holds it, this node sends it (and what follows it in the log). So
//! a write reaches every live node even if its origin died right after
//! replicating it to one peer, or a link between two nodes is cut.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use log::{debug, info, warn};
use serde::Serialize;
use vclock_proto::{ClockMessage, ErrorResponse, Event, NodeId, Seq, TraceKind, VClock};

use crate::node::{backoff, Link, Node};

/// Starts one sender per peer on the current actix runtime. Each ends after
/// [`Node::begin_shutdown`], once the request it is sending is answered.
pub fn spawn_links(node: &Arc<Node>) -> Vec<actix_web::rt::task::JoinHandle<()>> {
    node.links()
        .iter()
        .map(|link| actix_web::rt::spawn(run_link(node.clone(), link.clone())))
        .collect()
}

/// What a batch looks like on the wire ([`vclock_proto::EventBatch`]), borrowed.
#[derive(Serialize)]
struct OutgoingBatch<'a> {
    from: &'a str,
    events: &'a [Arc<Event>],
}

enum SendError {
    /// The peer is unreachable or answered garbage.
    Transport(String),
    /// The peer's buffer is full; it asks us to come back later.
    Busy(String),
    /// The peer refused the request: a bug or a misconfiguration.
    Refused(String),
}

impl SendError {
    fn message(&self) -> &str {
        match self {
            SendError::Transport(m) | SendError::Busy(m) | SendError::Refused(m) => m,
        }
    }
}

async fn post<T: Serialize>(
    client: &awc::Client,
    url: &str,
    body: &T,
) -> Result<ClockMessage, SendError> {
    post_traced(client, url, body, None).await
}

/// [`post`], naming the sender's trace record of the send, if any.
async fn post_traced<T: Serialize>(
    client: &awc::Client,
    url: &str,
    body: &T,
    cause: Option<String>,
) -> Result<ClockMessage, SendError> {
    let mut request = client.post(url);
    if let Some(cause) = cause {
        request = request.insert_header((vclock_proto::TRACE_CAUSE_HEADER, cause));
    }
    let mut response = request
        .send_json(body)
        .await
        .map_err(|e| SendError::Transport(format!("{url}: {e}")))?;
    let status = response.status();
    let bytes = response
        .body()
        .limit(1 << 20)
        .await
        .map_err(|e| SendError::Transport(format!("{url}: reading the answer: {e}")))?;
    if status.is_success() {
        return serde_json::from_slice(&bytes)
            .map_err(|e| SendError::Transport(format!("{url}: unexpected answer: {e}")));
    }
    let message = serde_json::from_slice::<ErrorResponse>(&bytes)
        .map(|e| e.error.message)
        .unwrap_or_else(|_| String::from_utf8_lossy(&bytes).into_owned());
    let message = format!("{url}: {status}: {message}");
    Err(if status.as_u16() == 503 {
        SendError::Busy(message)
    } else {
        SendError::Refused(message)
    })
}

/// Sends this node's clock (if given) to the node at `url` with `client` (see
/// [`Node::peer_client`]) and returns that node's `applied` clock.
pub async fn exchange_clock(
    client: &awc::Client,
    url: &str,
    me: &str,
    applied: Option<&VClock>,
) -> Result<VClock, String> {
    let message = ClockMessage {
        node: me.to_owned(),
        applied: applied.cloned().unwrap_or_default(),
    };
    post(client, &format!("{url}/peer/v1/sync"), &message)
        .await
        .map(|answer| answer.applied)
        .map_err(|e| e.message().to_owned())
}

struct Sender {
    node: Arc<Node>,
    link: Arc<Link>,
    client: awc::Client,
    events_url: String,
    sync_url: String,
    /// The peer's last acknowledged clock, once known.
    acked: Option<VClock>,
    /// The last of our own writes put on the wire.
    sent: Seq,
    /// When `acked` last moved forward, or when we last went back to it.
    progress_at: Instant,
    failures: u32,
    /// Per other origin: the first event of it the peer lacks, and since when.
    lacking: BTreeMap<NodeId, (Seq, Instant)>,
}

async fn run_link(node: Arc<Node>, link: Arc<Link>) {
    let config = node.config();
    let mut sender = Sender {
        client: node.peer_client(config.peer_timeout),
        events_url: format!("{}/peer/v1/events", link.member.url),
        sync_url: format!("{}/peer/v1/sync", link.member.url),
        acked: None,
        sent: 0,
        progress_at: Instant::now(),
        failures: 0,
        lacking: BTreeMap::new(),
        node: node.clone(),
        link,
    };
    sender.run().await;
}

impl Sender {
    async fn run(&mut self) {
        let (sync_interval, retransmit_after) = {
            let c = self.node.config();
            (c.sync_interval, c.retransmit_after)
        };
        let mut stopping = self.node.stopping();
        loop {
            if *stopping.borrow_and_update() {
                debug!("{}: sender stopped", self.link.member.id);
                return;
            }
            if self.link.paused.load(Ordering::Acquire) {
                tokio::select! {
                    _ = self.link.wake.notified() => {}
                    _ = stopping.changed() => {}
                }
                continue;
            }
            if self.failures > 0 {
                tokio::select! {
                    _ = tokio::time::sleep(backoff(self.failures)) => {}
                    _ = stopping.changed() => continue,
                }
            }
            let Some(acked) = self.acked.clone() else {
                self.sync().await;
                continue;
            };
            let acked_own = acked.get(self.node.id());
            if self.sent > acked_own && self.progress_at.elapsed() >= retransmit_after {
                debug!(
                    "{}: no acknowledgement past {acked_own}, resending",
                    self.link.member.id
                );
                self.sent = acked_own;
                self.progress_at = Instant::now();
            }
            if let Some(repair) = self.repair_batch(&acked) {
                match self.send_batch(&repair).await {
                    Ok(answer) => self.acknowledged(answer.applied, true).await,
                    Err(e) => self.failed(e),
                }
                continue;
            }
            let batch = self.next_batch();
            if batch.is_empty() {
                tokio::select! {
                    _ = self.link.wake.notified() => {}
                    _ = stopping.changed() => {}
                    _ = tokio::time::sleep(sync_interval) => self.sync().await,
                }
                continue;
            }
            if batch[0].seq != self.sent + 1 {
                warn!(
                    "{} needs writes {}..{} of this node, which are no longer in the log \
                     (every node had acknowledged them); it may have lost its data",
                    self.link.member.id,
                    self.sent + 1,
                    batch[0].seq - 1
                );
            }
            let last = batch.last().map_or(self.sent, |e| e.seq);
            match self.send_batch(&batch).await {
                Ok(answer) => {
                    self.sent = self.sent.max(last);
                    self.acknowledged(answer.applied, true).await;
                }
                Err(e) => self.failed(e),
            }
        }
    }

    /// Sends a batch to the peer, recording the send in the node's trace.
    async fn send_batch(&self, events: &[Arc<Event>]) -> Result<ClockMessage, SendError> {
        let tracer = self.node.tracer();
        let cause = tracer.is_on().then(|| {
            let id = tracer.record(TraceKind::Send, &self.node.applied(), |e| {
                e.peer = Some(self.link.member.id.clone());
                e.dots = events.iter().map(|e| e.dot()).collect();
            });
            format!("{}/{id}", self.node.id())
        });
        let body = OutgoingBatch {
            from: self.node.id(),
            events,
        };
        post_traced(&self.client, &self.events_url, &body, cause).await
    }

    /// The next events to send: our own writes after `sent`, within the batch limits.
    fn next_batch(&self) -> Vec<Arc<Event>> {
        let config = self.node.config();
        // Only what is durable: the core may hold a group whose sync is under way.
        let durable = self.node.applied().get(self.node.id());
        let mut events = self
            .node
            .with_core(|core| core.own_events_after(self.sent, config.max_batch_events))
            .unwrap_or_default();
        events.retain(|e| e.seq <= durable);
        within_bytes(events, config.max_batch_bytes)
    }

    /// Events of other origins that the peer has lacked for `repair_after`.
    fn repair_batch(&mut self, peer_applied: &VClock) -> Option<Vec<Arc<Event>>> {
        let config = self.node.config();
        let mine = self.node.applied();
        let now = Instant::now();
        let (me, peer) = (self.node.id(), &self.link.member.id);
        for (origin, &have) in mine.iter() {
            if origin == me || origin == peer {
                continue;
            }
            let lacks = peer_applied.get(origin) + 1;
            if lacks > have {
                self.lacking.remove(origin);
                continue;
            }
            let since = match self.lacking.get(origin) {
                Some(&(seq, since)) if seq == lacks => since,
                _ => {
                    self.lacking.insert(origin.clone(), (lacks, now));
                    now
                }
            };
            if now.duration_since(since) < config.repair_after {
                continue;
            }
            let mut events = self
                .node
                .with_core(|core| {
                    core.store()
                        .log_after(origin, lacks - 1, config.max_batch_events)
                })
                .unwrap_or_default();
            events.retain(|e| e.seq <= have);
            self.lacking.insert(origin.clone(), (lacks, now));
            if events.is_empty() {
                continue;
            }
            info!(
                "repair: {peer} has lacked {origin}:{lacks} for {:?}; sending {} events of {origin}",
                config.repair_after,
                events.len()
            );
            return Some(events);
        }
        None
    }

    async fn sync(&mut self) {
        let message = ClockMessage {
            node: self.node.id().clone(),
            applied: self.node.applied(),
        };
        match post(&self.client, &self.sync_url, &message).await {
            Ok(answer) => self.acknowledged(answer.applied, false).await,
            Err(e) => self.failed(e),
        }
    }

    async fn acknowledged(&mut self, applied: VClock, was_batch: bool) {
        let me = self.node.id();
        let own = applied.get(me);
        let caught_up = own >= self.node.applied().get(me);
        self.link
            .metrics
            .acknowledged(self.node.metrics(), was_batch, caught_up);
        match &self.acked {
            None => {
                self.sent = own;
                self.progress_at = Instant::now();
            }
            Some(before) if own > before.get(me) => self.progress_at = Instant::now(),
            Some(before) if own < before.get(me) => {
                warn!(
                    "{} went back from {} to {} of this node's writes (restarted without its data?); resending",
                    self.link.member.id,
                    before.get(me),
                    own
                );
                self.sent = own;
            }
            Some(_) => {}
        }
        if self.link.record(Ok(())) {
            info!(
                "{} is reachable at {}",
                self.link.member.id, self.link.member.url
            );
        }
        self.failures = 0;
        self.acked = Some(applied.clone());
        let _ = self.node.record_ack(&self.link.member.id, applied).await;
    }

    fn failed(&mut self, error: SendError) {
        let peer = &self.link.member.id;
        let message = error.message().to_owned();
        let changed = self.link.record(Err(message.clone()));
        self.link.metrics.failed();
        match error {
            SendError::Transport(_) if changed || self.failures == 0 => {
                warn!("{peer} is unreachable: {message}; retrying with backoff")
            }
            SendError::Transport(_) => debug!("{peer} still unreachable: {message}"),
            SendError::Busy(_) => info!("{peer} is busy: {message}; retrying with backoff"),
            SendError::Refused(_) => warn!("{peer} refused a request: {message}"),
        }
        if let Some(acked) = &self.acked {
            self.sent = acked.get(self.node.id());
        }
        self.failures = self.failures.saturating_add(1);
    }
}

/// Keeps the longest prefix of `events` (at least one) of about `max_bytes` on the wire.
fn within_bytes(mut events: Vec<Arc<Event>>, max_bytes: usize) -> Vec<Arc<Event>> {
    let mut bytes = 0usize;
    let keep = events
        .iter()
        .take_while(|e| {
            bytes += e.key.len() + e.op.value().map_or(0, |v| v.json().len()) + 64 * e.deps.len();
            bytes <= max_bytes
        })
        .count()
        .max(1);
    events.truncate(keep);
    events
}
