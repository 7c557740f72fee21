//! The membership shell: keeps the node's [`Membership`] on disk, carries
//! out a change (links to start or stop, the core's members), and spreads it.
//!
//! The rules of the membership (how entries merge, which changes are
//! allowed) are the core's: see [`crate::core::membership`]. Here:
//!
//! - **Start.** The `MEMBERS` file of the data directory wins over the
//!   configured node list, which only seeds a first start; the node logs
//!   where the two disagree.
//! - **Change.** An admin request (add, remove, replace) or a peer's
//!   membership that merges into something new is written to `MEMBERS`
//!   (durably, before anything acts on it), handed to the core through the
//!   writer, and then published: links to new members start, links to
//!   removed or moved ones stop.
//! - **Spread.** An announcer task sends the membership to every node it
//!   knows (removed ones too, until they have heard it) and merges their
//!   answers, until each answers with the same membership; then again every
//!   `MEMBERS_RESEND`, so that a node that lost its data learns it back.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use log::{debug, info, warn};
use vclock_proto::{MemberEntry, MembersMessage, NodeId};

use super::peer::{self, Failure};
use super::{Command, Link, Node};
use crate::config::{Config, Member};
use crate::core::{Membership, MembershipError};
use crate::error::{Error, Result};

/// The file of a data directory that holds the node's membership.
pub const MEMBERS_FILE: &str = "MEMBERS";

/// How often the announcer sends the membership to nodes that already hold it.
const MEMBERS_RESEND: Duration = Duration::from_secs(10);

/// The membership and the ids it knows, as the hot paths read them.
#[derive(Debug)]
pub(super) struct Members {
    membership: Membership,
    known: Arc<Vec<NodeId>>,
}

impl Members {
    pub(super) fn new(membership: Membership) -> Self {
        Self {
            known: Arc::new(membership.known()),
            membership,
        }
    }
}

/// The node's membership at start: its `MEMBERS` file, or the configured
/// node list for a first start.
pub(super) fn load(config: &Config) -> Result<Membership> {
    let seed = Membership::seed(
        config
            .members
            .iter()
            .map(|m| (m.id.as_str(), m.url.as_str())),
    );
    if config.memory {
        return Ok(seed);
    }
    let path = config.data_dir.join(MEMBERS_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(seed),
        Err(e) => {
            return Err(Error::Internal(format!(
                "cannot read {}: {e}",
                path.display()
            )))
        }
    };
    let entries: Vec<MemberEntry> = serde_json::from_str(&text)
        .map_err(|e| Error::Internal(format!("{} is not valid: {e}", path.display())))?;
    let held = Membership::from_entries(entries)
        .map_err(|e| Error::Internal(format!("{} is not valid: {e}", path.display())))?;
    if !held.is_known(&config.node_id) {
        return Err(Error::Internal(format!(
            "{} does not list this node ({}): give each node its own data_dir",
            path.display(),
            config.node_id
        )));
    }
    let configured: Vec<(&str, &str)> = config
        .members
        .iter()
        .map(|m| (m.id.as_str(), m.url.as_str()))
        .collect();
    let active: Vec<(&str, &str)> = held
        .active()
        .map(|m| (m.id.as_str(), m.url.as_str()))
        .collect();
    if configured != active {
        warn!(
            "the configured nodes ({}) differ from the cluster's membership (version {}: {}); \
             the membership wins: the node list only seeds a first start",
            list(&configured),
            held.version(),
            list(&active)
        );
    }
    Ok(held)
}

fn list(members: &[(&str, &str)]) -> String {
    let items: Vec<String> = members
        .iter()
        .map(|(id, url)| format!("{id}={url}"))
        .collect();
    items.join(", ")
}

/// Writes the membership to `dir`, durably, replacing the file at once.
fn persist(dir: &Path, membership: &Membership) -> Result<()> {
    let path = dir.join(MEMBERS_FILE);
    let staged = dir.join(format!("{MEMBERS_FILE}.new"));
    let fail = |e: std::io::Error| Error::Internal(format!("cannot write {}: {e}", path.display()));
    let text = serde_json::to_vec_pretty(&membership.entries())
        .map_err(|e| Error::Internal(e.to_string()))?;
    let mut file = std::fs::File::create(&staged).map_err(fail)?;
    file.write_all(&text).map_err(fail)?;
    file.sync_all().map_err(fail)?;
    std::fs::rename(&staged, &path).map_err(fail)?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(fail)
}

impl From<MembershipError> for Error {
    fn from(e: MembershipError) -> Self {
        match e {
            MembershipError::Invalid(m) => Error::BadRequest(m),
            MembershipError::Conflict(m) => Error::Conflict(m),
            MembershipError::Unknown(m) => Error::NotFound(m),
        }
    }
}

impl Node {
    /// The membership as this node holds it.
    pub fn members(&self) -> Membership {
        self.shared
            .members
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .membership
            .clone()
    }

    /// Every node that is or was a member, in id order.
    pub fn node_ids(&self) -> Arc<Vec<NodeId>> {
        self.shared
            .members
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .known
            .clone()
    }

    /// True when `id` is or was a member (a removed node's writes still come
    /// in, from it or relayed).
    pub fn is_known(&self, id: &str) -> bool {
        self.shared
            .members
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .membership
            .is_known(id)
    }

    /// True once this node was removed from the cluster.
    pub fn is_removed(&self) -> bool {
        !self
            .shared
            .members
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .membership
            .is_active(self.id())
    }

    /// The membership as an answer.
    pub fn members_message(&self) -> MembersMessage {
        let membership = self.members();
        MembersMessage {
            node: self.id().clone(),
            version: membership.version(),
            members: membership.entries(),
        }
    }

    /// Makes a change (`change` returns whether it changed anything) and
    /// carries it out; the membership after it.
    pub async fn change_members(
        self: &Arc<Self>,
        change: impl FnOnce(&mut Membership, &str) -> std::result::Result<bool, MembershipError>,
    ) -> Result<MembersMessage> {
        let _one = self.shared.members_change.lock().await;
        let mut membership = self.members();
        if change(&mut membership, self.id())? {
            info!("membership changed to version {}", membership.version());
            self.carry_out(membership).await?;
        }
        Ok(self.members_message())
    }

    /// Merges a peer's membership into this node's.
    pub async fn merge_members(self: &Arc<Self>, theirs: &Membership) -> Result<()> {
        let _one = self.shared.members_change.lock().await;
        let mut membership = self.members();
        if membership.merge(theirs) {
            info!(
                "membership version {} learnt from a peer",
                membership.version()
            );
            self.carry_out(membership).await?;
        }
        Ok(())
    }

    /// Persists `membership`, hands it to the core, publishes it, and starts
    /// and stops links to match.
    async fn carry_out(self: &Arc<Self>, membership: Membership) -> Result<()> {
        let config = self.config();
        if !config.memory {
            persist(&config.data_dir, &membership)?;
        }
        let active: Vec<NodeId> = membership.active().map(|m| m.id.clone()).collect();
        // Through the writer, before the new members are published: the
        // core takes their events only once it knows them, and batches that
        // pass the new membership's checks come after this command.
        self.submit(Command::Members {
            known: membership.known(),
            active,
        })
        .await?;
        let wanted: BTreeMap<&str, &str> = membership
            .active()
            .filter(|m| &m.id != self.id())
            .map(|m| (m.id.as_str(), m.url.as_str()))
            .collect();
        let mut started = Vec::new();
        {
            let mut links = self.shared.links.write().unwrap_or_else(|e| e.into_inner());
            let mut kept = Vec::new();
            for link in links.iter() {
                if wanted.get(link.member.id.as_str()) == Some(&link.member.url.as_str()) {
                    kept.push(link.clone());
                } else {
                    info!("{}: link stopped (removed or moved)", link.member.id);
                    link.close();
                }
            }
            for (id, url) in &wanted {
                if !kept.iter().any(|l| l.member.id == *id) {
                    let link = Arc::new(Link::new(Member {
                        id: (*id).to_owned(),
                        url: (*url).to_owned(),
                    }));
                    info!("{id}: link started to {url}");
                    kept.push(link.clone());
                    started.push(link);
                }
            }
            kept.sort_by(|a, b| a.member.id.cmp(&b.member.id));
            *links = Arc::new(kept);
        }
        *self
            .shared
            .members
            .write()
            .unwrap_or_else(|e| e.into_inner()) = Members::new(membership);
        for link in started {
            super::replication::spawn_link(self, link);
        }
        self.shared.members_news.notify_one();
        Ok(())
    }
}

/// Starts the task that spreads this node's membership to every node it knows.
pub fn spawn_announcer(node: &Arc<Node>) -> actix_web::rt::task::JoinHandle<()> {
    actix_web::rt::spawn(announce(node.clone()))
}

async fn announce(node: Arc<Node>) {
    let client = node.peer_client(node.config().peer_timeout);
    // What each node answered last, and when.
    let mut heard: BTreeMap<NodeId, (Membership, tokio::time::Instant)> = BTreeMap::new();
    let mut stopping = node.stopping();
    let mut attempt = 0u32;
    loop {
        if *stopping.borrow_and_update() {
            return;
        }
        let ours = node.members();
        let message = node.members_message();
        let now = tokio::time::Instant::now();
        let mut pending = false;
        for entry in ours.entries() {
            if &entry.id == node.id() {
                continue;
            }
            let fresh = heard.get(&entry.id).is_some_and(|(theirs, at)| {
                *theirs == ours && now.duration_since(*at) < MEMBERS_RESEND
            });
            // A removed node is told once; then it is left alone.
            let told = entry.removed && heard.get(&entry.id).is_some_and(|(t, _)| *t == ours);
            if fresh || told {
                continue;
            }
            let url = format!("{}/peer/v1/members", entry.url);
            match peer::request::<_, MembersMessage>(&client, &url, &message, None, 1 << 20).await {
                Ok(answer) => match Membership::from_entries(answer.members) {
                    Ok(theirs) => {
                        if let Err(e) = node.merge_members(&theirs).await {
                            warn!("cannot take the membership of {}: {e}", entry.id);
                        }
                        let synced = theirs == node.members();
                        pending |= !synced;
                        heard.insert(entry.id.clone(), (theirs, now));
                    }
                    Err(e) => {
                        pending = true;
                        warn!("{}: its membership is not valid: {e}", entry.id);
                    }
                },
                Err(Failure::Unreachable(m) | Failure::Answered(_, m)) => {
                    pending = true;
                    debug!("{}: membership not sent: {m}", entry.id);
                }
            }
        }
        attempt = if pending {
            attempt.saturating_add(1)
        } else {
            0
        };
        let pause = if pending {
            crate::core::replication::backoff(attempt).min(Duration::from_secs(2))
        } else {
            MEMBERS_RESEND
        };
        tokio::select! {
            _ = node.shared.members_news.notified() => {}
            _ = stopping.changed() => {}
            _ = tokio::time::sleep(pause) => {}
        }
    }
}
