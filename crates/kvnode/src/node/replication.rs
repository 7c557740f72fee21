//! The replication shell: one task per peer carries out what the core's
//! [`protocol::Link`] decides, over a keep-alive connection.
//!
//! All decisions (what to send, when to resend, what to repair, when to
//! exchange clocks, whether an acknowledgement is believable) are the core's;
//! see [`crate::core::replication`]. This task only polls the link, sends the
//! request it asks for, feeds back the answer, sleeps until the link's next
//! deadline or a wake-up (new writes, a resumed link), and turns the link's
//! notices into logs, metrics and acknowledgements for log collection.
//!
//! On shutdown ([`Node::begin_shutdown`]) a task finishes the request it is
//! sending (bounded by `peer_timeout`) and stops; nothing is lost, since the
//! peer is sent again whatever it has not acknowledged.

use std::sync::Arc;

use log::{debug, info, warn};
use serde::Serialize;
use vclock_proto::{ClockMessage, Event, TraceKind};

use super::peer::post;
use super::{Link, Node};
use crate::core::replication::{self as protocol, Action, Answer, Notice, RequestBody};

/// Starts one replication task per peer on the current actix runtime. Each
/// ends after [`Node::begin_shutdown`], once the request it is sending is
/// answered.
pub fn spawn_links(node: &Arc<Node>) -> Vec<actix_web::rt::task::JoinHandle<()>> {
    node.links()
        .iter()
        .map(|link| spawn_link(node, link.clone()))
        .collect()
}

/// Starts the replication task of one link; it ends after
/// [`Node::begin_shutdown`], or once the link is closed (its peer left the
/// membership).
pub fn spawn_link(node: &Arc<Node>, link: Arc<Link>) -> actix_web::rt::task::JoinHandle<()> {
    actix_web::rt::spawn(run_link(node.clone(), link))
}

/// What a batch looks like on the wire ([`vclock_proto::EventBatch`]), borrowed.
#[derive(Serialize)]
struct OutgoingBatch<'a> {
    from: &'a str,
    events: &'a [Arc<Event>],
}

async fn run_link(node: Arc<Node>, link: Arc<Link>) {
    let config = node.config();
    let client = node.peer_client(config.peer_timeout);
    let events_url = format!("{}/peer/v1/events", link.member.url);
    let sync_url = format!("{}/peer/v1/sync", link.member.url);
    let mut protocol = protocol::Link::new(
        node.id().clone(),
        link.member.id.clone(),
        node.replication_settings(),
        node.now(),
    );
    let mut stopping = node.stopping();
    loop {
        if *stopping.borrow_and_update() || link.is_removed() {
            debug!("{}: sender stopped", link.member.id);
            return;
        }
        if link.is_paused() {
            tokio::select! {
                _ = link.wake.notified() => {}
                _ = stopping.changed() => {}
            }
            continue;
        }
        let durable = node.committed();
        let action = node.with_core(|core| protocol.poll(node.now(), &durable, core));
        report(&node, &link, protocol.take_notices()).await;
        match action {
            Action::Send(request) => {
                let answer = match &request.body {
                    RequestBody::Events { events, .. } => {
                        let cause = trace_send(&node, &link, events);
                        let body = OutgoingBatch {
                            from: node.id(),
                            events,
                        };
                        post(&client, &events_url, &body, cause).await
                    }
                    RequestBody::Exchange { applied } => {
                        let body = ClockMessage {
                            node: node.id().clone(),
                            applied: node.shown(applied.clone()),
                        };
                        post(&client, &sync_url, &body, None).await
                    }
                };
                protocol.answered(node.now(), request.id, answer, &node.committed());
                report(&node, &link, protocol.take_notices()).await;
            }
            Action::Wait { until } => {
                tokio::select! {
                    _ = link.wake.notified() => {}
                    _ = stopping.changed() => {}
                    _ = tokio::time::sleep_until(node.instant(until)) => {}
                }
            }
        }
    }
}

/// Records a batch's send in the node's trace; the trace reference of the send.
fn trace_send(node: &Node, link: &Link, events: &[Arc<Event>]) -> Option<String> {
    let tracer = node.tracer();
    tracer.is_on().then(|| {
        let id = tracer.record(TraceKind::Send, &node.committed(), |e| {
            e.peer = Some(link.member.id.clone());
            e.dots = events.iter().map(|e| e.dot()).collect();
        });
        format!("{}/{id}", node.id())
    })
}

/// Turns the link's notices into logs, metrics, reachability and recorded
/// acknowledgements.
async fn report(node: &Node, link: &Link, notices: Vec<Notice>) {
    let peer = &link.member.id;
    for notice in notices {
        match notice {
            Notice::Acknowledged {
                clock,
                batch,
                caught_up,
            } => {
                link.metrics.acknowledged(node.metrics(), batch, caught_up);
                link.record(Ok(()));
                node.peer_clock(peer, &clock);
                // Fails only while the node stops; the peer answers again later.
                let _ = node.record_ack(peer, clock).await;
            }
            // A request under way when the link stopped says nothing new.
            Notice::Reachable if link.is_removed() => {}
            Notice::Reachable => info!("{peer} is reachable at {}", link.member.url),
            Notice::Failed { answer, first } => {
                link.metrics.failed();
                node.peer_unreachable(peer);
                let message = match &answer {
                    Answer::Unreachable(m) | Answer::Busy(m) | Answer::Refused(m) => m.clone(),
                    Answer::Clock(_) => String::new(),
                };
                link.record(Err(message.clone()));
                match answer {
                    Answer::Unreachable(_) if first => {
                        warn!("{peer} is unreachable: {message}; retrying with backoff")
                    }
                    Answer::Unreachable(_) => debug!("{peer} still unreachable: {message}"),
                    Answer::Busy(_) => info!("{peer} is busy: {message}; retrying with backoff"),
                    Answer::Refused(_) | Answer::Clock(_) => {
                        warn!("{peer} refused a request: {message}")
                    }
                }
            }
            Notice::Resending { from } => {
                debug!("{peer}: no acknowledgement past {from}, resending")
            }
            Notice::WentBack { from, to } => warn!(
                "{peer} went back from {from} to {to} of this node's writes \
                 (restarted without its data?); resending"
            ),
            Notice::Collected { from, through } => warn!(
                "{peer} needs writes {from}..{through} of this node, which are no longer in \
                 the log (every node had acknowledged them): it gets them from a snapshot \
                 (a new member, or a node that lost its data)"
            ),
            Notice::Repairing {
                origin,
                from,
                events,
            } => info!(
                "repair: {peer} has lacked {origin}:{from} for {:?}; sending {events} events \
                 of {origin}",
                node.config().repair_after
            ),
            Notice::Overclaimed { claimed, made } if node.not_live().is_some() => {
                // Expected while recovering: the peer holds writes this node lost.
                link.record(Ok(()));
                info!("{peer} holds {claimed} writes of this node, which holds {made}");
                // More of this node's writes: a bootstrap whatever the rest.
                node.peer_holds(peer, claimed, false);
            }
            Notice::Overclaimed { claimed, made } => {
                link.metrics.failed();
                let message = format!(
                    "acknowledged {claimed} writes of this node, which has made only {made}"
                );
                warn!("{peer} {message}: a peer with another history? refused");
                link.record(Err(message));
            }
            Notice::LogUnreadable(e) => warn!("cannot read the log to send {peer}: {e}"),
        }
    }
}
