//! The recovery shell: carries out what the core's [`Recovery`] decides at
//! start-up, and bootstraps the node from a peer's snapshot when it must.
//!
//! A bootstrap copies the peer's keys chunk by chunk (`POST
//! /peer/v1/snapshot`), each chunk read at one moment of the peer's state and
//! installed by the writer in one commit, so memory holds one chunk at a time.
//! The keys of different chunks are read at different moments: the node then
//! counts as applied only the meet of the chunks' clocks, and takes what lies
//! beyond it through normal replication. A write delivered again to a key that
//! already shows it is skipped (see [`crate::core::Core::install_chunk`]).
//! Every request carries the node's own (old) clock, which the peer records as
//! what this node holds: the peer's log then keeps every event beyond it.
//!
//! While the bootstrap runs, a marker file in the data directory says that
//! the store is incomplete, and how far the copy got ([`Progress`]): a node
//! restarted half-way does not trust its store, and goes on from the last
//! chunk installed, from whichever peer holds the most of its writes. (The
//! meet of every chunk's clock, whichever peer sent it, is still a causally
//! closed clock that every installed key covers.)
//!
//! [`Recovery`]: crate::core::Recovery

use std::io::Write as _;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use log::{info, warn};
use serde::{Deserialize, Serialize};
use vclock_proto::{NodeId, SnapshotChunk, SnapshotRequest, VClock};

use super::peer::{request, Failure};
use super::{InstallStep, Node, BOOTSTRAP_MARKER, NODE_IDENTITY};
use crate::core::Decision;

/// The largest chunk answer taken, in bytes.
const CHUNK_ANSWER_BYTES: usize = 64 << 20;
/// How often the waiting node says in its log what it waits for.
const REMIND: Duration = Duration::from_secs(5);

/// Starts the recovery task on the current actix runtime; it ends once the
/// node is live or stopping.
pub fn spawn_recovery(node: &Arc<Node>) -> actix_web::rt::task::JoinHandle<()> {
    actix_web::rt::spawn(run(node.clone()))
}

async fn run(node: Arc<Node>) {
    let mut stopping = node.stopping();
    let mut reminded = node.now();
    loop {
        if *stopping.borrow_and_update() {
            return;
        }
        let decision = node.decide(node.now());
        match decision {
            Decision::Live => {
                let own = node.committed().get(node.id());
                info!("live: serving reads and writes from this node's {own} writes on");
                if !node.config().memory {
                    if let Err(e) = write_identity(&node.config().data_dir, node.id()) {
                        warn!("{e}; the next start will not trust this data directory");
                    }
                }
                return;
            }
            Decision::Bootstrap(source) => {
                if let Some(why) = node.not_live() {
                    warn!("{why}");
                }
                match bootstrap(&node, &source).await {
                    Ok((keys, join)) => {
                        info!("bootstrap from {source} done: {keys} keys");
                        let mut state = node.shared.recovery();
                        state.copied = keys;
                        state.recovery.bootstrapped(join);
                    }
                    Err(e) => {
                        warn!("bootstrap from {source} failed: {e}; checking again");
                        node.shared.recovery().recovery.bootstrap_failed();
                        tokio::select! {
                            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                            _ = stopping.changed() => {}
                        }
                    }
                }
            }
            Decision::Wait => {
                if node.now() >= reminded + REMIND {
                    reminded = node.now();
                    if let Some(why) = node.not_live() {
                        warn!("{why}");
                    }
                }
                // Woken by every peer clock or failure; the timeout lets a
                // trusted store's grace end.
                tokio::select! {
                    _ = node.shared.recovery_news.notified() => {}
                    _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                    _ = stopping.changed() => {}
                }
            }
        }
    }
}

/// How far a bootstrap got: the last key installed and the meet of the
/// clocks of the chunks installed so far. Kept in the marker file, so that a
/// bootstrap interrupted by a crash of either side goes on from there.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    /// The last key installed.
    pub after: Option<String>,
    /// The meet of the installed chunks' clocks; `None` before the first.
    pub meet: Option<VClock>,
    /// Keys installed so far.
    #[serde(default)]
    pub copied: u64,
    /// The join of the installed chunks' clocks: the installed keys may show
    /// writes up to it.
    #[serde(default)]
    pub join: VClock,
}

/// Reads the progress the marker file in `dir` records, if any: `None` when
/// there is no marker (the store is complete), the start when the marker
/// cannot be read (the bootstrap starts again from the first key).
pub fn read_marker(dir: &Path) -> Option<Progress> {
    let path = dir.join(BOOTSTRAP_MARKER);
    let text = std::fs::read_to_string(&path).ok()?;
    Some(serde_json::from_str(&text).unwrap_or_else(|e| {
        warn!(
            "{}: unreadable ({e}); the bootstrap starts again from the first key",
            path.display()
        );
        Progress::default()
    }))
}

/// Writes `progress` into the marker file in `dir`, through a temporary
/// file; with `sync`, durably (the first marker must be on disk before the
/// store changes: without it a half-copied store would be trusted).
fn write_marker(dir: &Path, progress: &Progress, sync: bool) -> Result<(), String> {
    let path = dir.join(BOOTSTRAP_MARKER);
    let temporary = dir.join(format!("{BOOTSTRAP_MARKER}.tmp"));
    let fail = |what: &str, e: std::io::Error| format!("cannot {what} {}: {e}", path.display());
    let text = serde_json::to_string(progress).map_err(|e| e.to_string())?;
    let mut file = std::fs::File::create(&temporary).map_err(|e| fail("write", e))?;
    file.write_all(text.as_bytes())
        .map_err(|e| fail("write", e))?;
    if sync {
        file.sync_all().map_err(|e| fail("sync", e))?;
    }
    std::fs::rename(&temporary, &path).map_err(|e| fail("write", e))?;
    if sync {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| fail("sync the directory of", e))?;
    }
    Ok(())
}

/// Writes the identity file into `dir`, durably: this node has been live on
/// it, so the store holds every write it acknowledges from now on.
fn write_identity(dir: &Path, id: &str) -> Result<(), String> {
    let path = dir.join(NODE_IDENTITY);
    let fail = |e: std::io::Error| format!("cannot write {}: {e}", path.display());
    let mut file = std::fs::File::create(&path).map_err(fail)?;
    file.write_all(format!("{id}\n").as_bytes()).map_err(fail)?;
    file.sync_all().map_err(fail)?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(fail)
}

/// Copies `source`'s state into this node, going on from where an earlier
/// bootstrap stopped; the number of keys copied in all, and the join of the
/// chunks' clocks.
async fn bootstrap(node: &Node, source: &NodeId) -> Result<(u64, VClock), String> {
    let member = node
        .members()
        .get(source)
        .filter(|m| !m.removed)
        .cloned()
        .ok_or_else(|| format!("{source} is not a member"))?;
    let url = format!("{}/peer/v1/snapshot", member.url);
    let client = node.peer_client(node.config().peer_timeout);
    let dir = node.config().data_dir.clone();
    let on_disk = !node.config().memory;
    let mut progress = {
        let mut state = node.shared.recovery();
        match state.progress.clone() {
            Some(progress) => {
                info!(
                    "bootstrap from {source}: going on after key {:?} ({} keys copied earlier)",
                    progress.after, progress.copied
                );
                progress
            }
            None => {
                let progress = Progress::default();
                state.progress = Some(progress.clone());
                progress
            }
        }
    };
    if on_disk {
        write_marker(&dir, &progress, true)?;
    }
    // Drops the log and the buffer: what was applied since the node started
    // is counted from the old clock, not the snapshot's.
    node.install(InstallStep::Begin)
        .await
        .map_err(|e| e.to_string())?;
    loop {
        let ask = SnapshotRequest {
            node: node.id().clone(),
            applied: node.shown(node.committed()),
            after: progress.after.clone(),
            limit: Some(node.config().bootstrap_chunk_keys as u64),
        };
        let chunk: SnapshotChunk = request(&client, &url, &ask, None, CHUNK_ANSWER_BYTES)
            .await
            .map_err(|e: Failure| e.to_string())?;
        check_chunk(&chunk, source, progress.after.as_deref())?;
        let through = match (chunk.more, chunk.keys.last()) {
            (false, _) => None,
            (true, Some(last)) => Some(last.key.clone()),
            (true, None) => return Err(format!("{source} sent an empty chunk with more to come")),
        };
        let entries = chunk
            .keys
            .into_iter()
            .map(|k| (k.key, k.siblings.into_iter().map(Arc::new).collect()))
            .collect::<Vec<_>>();
        let keys = entries.len() as u64;
        node.install(InstallStep::Chunk {
            after: progress.after.clone(),
            through: through.clone(),
            entries,
        })
        .await
        .map_err(|e| e.to_string())?;
        progress.join.merge(&chunk.applied);
        match &mut progress.meet {
            Some(meet) => meet.meet(&chunk.applied),
            None => progress.meet = Some(chunk.applied),
        }
        progress.copied += keys;
        if let Some(last) = &through {
            progress.after = Some(last.clone());
        }
        node.shared.recovery().progress = Some(progress.clone());
        if through.is_none() {
            break;
        }
        if on_disk {
            // Behind the store at worst: a chunk installed again is harmless.
            write_marker(&dir, &progress, false)?;
        }
    }
    let clock = progress.meet.clone().unwrap_or_default();
    node.install(InstallStep::Finish(clock.clone()))
        .await
        .map_err(|e| e.to_string())?;
    if on_disk {
        let marker = dir.join(BOOTSTRAP_MARKER);
        std::fs::remove_file(&marker)
            .map_err(|e| format!("cannot remove {}: {e}", marker.display()))?;
    }
    node.shared.recovery().progress = None;
    info!("installed the snapshot of {source} at {clock}");
    Ok((progress.copied, progress.join))
}

/// A chunk must come from `source`, hold keys in order after `after`, and
/// siblings that write their key.
fn check_chunk(chunk: &SnapshotChunk, source: &str, after: Option<&str>) -> Result<(), String> {
    if chunk.node != source {
        return Err(format!("asked {source}, answered by {}", chunk.node));
    }
    let mut previous = after;
    for entry in &chunk.keys {
        if previous.is_some_and(|p| entry.key.as_str() <= p) {
            return Err(format!(
                "{source} sent key {:?} out of order (after {previous:?})",
                entry.key
            ));
        }
        if entry.siblings.is_empty() {
            return Err(format!(
                "{source} sent key {:?} without siblings",
                entry.key
            ));
        }
        if let Some(e) = entry
            .siblings
            .iter()
            .find(|e| !e.writes().any(|(key, _)| key == entry.key))
        {
            return Err(format!(
                "{source} sent {} as a sibling of {:?}, which it does not write",
                e.dot(),
                entry.key
            ));
        }
        previous = Some(&entry.key);
    }
    Ok(())
}
