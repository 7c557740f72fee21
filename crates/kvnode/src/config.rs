//! The node's configuration: defaults, then a TOML file, then the environment.
//!
//! Sources, later ones winning:
//! 1. the defaults below;
//! 2. a TOML file given with `--config FILE`;
//! 3. the prototype's variables `NODE_ID`, `NODES` and `PORT`;
//! 4. `KVNODE_*` variables, one per field (`KVNODE_NODE_ID`, `KVNODE_CAUSAL_WAIT`...).
//!
//! `nodes` lists the cluster, as a comma-separated string or a TOML array. Each
//! entry is an id (its URL is then `http://<id>:<port>`, as in docker compose) or
//! `id=url`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use vclock_proto::NodeId;

use crate::storage::durable::Durability;

/// A configuration that cannot be used; the message names the setting.
#[derive(Debug, thiserror::Error)]
#[error("configuration: {0}")]
pub struct ConfigError(pub String);

/// The settings as written by the user, before validation.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    node_id: Option<String>,
    #[serde(default)]
    nodes: Option<NodeList>,
    #[serde(default = "defaults::listen")]
    listen: String,
    #[serde(default = "defaults::port")]
    port: u16,
    #[serde(default)]
    data_dir: Option<PathBuf>,
    #[serde(default)]
    durability: Durability,
    #[serde(default)]
    memory: bool,
    #[serde(default)]
    force_new_history: bool,
    #[serde(default = "defaults::cache_bytes")]
    cache_bytes: u64,
    #[serde(default = "defaults::log_memory_events")]
    log_memory_events: usize,
    #[serde(default = "defaults::log_memory_bytes")]
    log_memory_bytes: usize,
    #[serde(default = "defaults::max_queued_bytes")]
    max_queued_bytes: usize,
    #[serde(default = "defaults::repair_after", with = "humantime_serde")]
    repair_after: Duration,
    #[serde(default = "defaults::causal_wait", with = "humantime_serde")]
    causal_wait: Duration,
    #[serde(default = "defaults::max_key_bytes")]
    max_key_bytes: usize,
    #[serde(default = "defaults::max_value_bytes")]
    max_value_bytes: usize,
    #[serde(default = "defaults::max_value_depth")]
    max_value_depth: usize,
    #[serde(default = "defaults::max_txn_keys")]
    max_txn_keys: usize,
    #[serde(default = "defaults::bootstrap_chunk_keys")]
    bootstrap_chunk_keys: usize,
    #[serde(default = "defaults::max_txn_bytes")]
    max_txn_bytes: usize,
    #[serde(default = "defaults::max_buffered")]
    max_buffered: usize,
    #[serde(default = "defaults::max_buffered_bytes")]
    max_buffered_bytes: usize,
    #[serde(default = "defaults::max_batch_events")]
    max_batch_events: usize,
    #[serde(default = "defaults::max_batch_bytes")]
    max_batch_bytes: usize,
    #[serde(default = "defaults::sync_interval", with = "humantime_serde")]
    sync_interval: Duration,
    #[serde(default = "defaults::retransmit_after", with = "humantime_serde")]
    retransmit_after: Duration,
    #[serde(default = "defaults::peer_timeout", with = "humantime_serde")]
    peer_timeout: Duration,
    #[serde(default)]
    faults: bool,
    #[serde(default)]
    trace_buffer: usize,
    #[serde(default = "defaults::trace_buffer_bytes")]
    trace_buffer_bytes: usize,
    #[serde(default = "defaults::max_trace_streams")]
    max_trace_streams: usize,
    #[serde(default = "defaults::trace_stream_idle", with = "humantime_serde")]
    trace_stream_idle: Duration,
    #[serde(default)]
    trace_file: Option<PathBuf>,
    #[serde(default)]
    cluster_secret: Option<String>,
    #[serde(default)]
    cluster_secret_file: Option<PathBuf>,
    #[serde(default)]
    client_token: Option<String>,
    #[serde(default)]
    client_token_file: Option<PathBuf>,
    #[serde(default)]
    workers: Option<usize>,
    #[serde(default)]
    tls_cert: Option<PathBuf>,
    #[serde(default)]
    tls_key: Option<PathBuf>,
    #[serde(default)]
    tls_ca: Option<PathBuf>,
    #[serde(default = "defaults::header_timeout", with = "humantime_serde")]
    header_timeout: Duration,
    #[serde(default, with = "humantime_serde")]
    request_timeout: Option<Duration>,
    #[serde(default = "defaults::keep_alive", with = "humantime_serde")]
    keep_alive: Duration,
    #[serde(default = "defaults::disconnect_timeout", with = "humantime_serde")]
    disconnect_timeout: Duration,
    #[serde(default = "defaults::shutdown_timeout", with = "humantime_serde")]
    shutdown_timeout: Duration,
    #[serde(default = "defaults::max_connections")]
    max_connections: usize,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum NodeList {
    Text(String),
    List(Vec<String>),
}

mod defaults {
    pub fn cache_bytes() -> u64 {
        crate::storage::durable::DEFAULT_CACHE_BYTES
    }
    pub fn log_memory_events() -> usize {
        crate::storage::durable::DEFAULT_LOG_MEMORY_EVENTS
    }
    pub fn log_memory_bytes() -> usize {
        crate::storage::durable::DEFAULT_LOG_MEMORY_BYTES
    }
    pub fn max_queued_bytes() -> usize {
        64 << 20
    }
    pub fn trace_buffer_bytes() -> usize {
        64 << 20
    }
    pub fn max_trace_streams() -> usize {
        32
    }
    pub fn trace_stream_idle() -> std::time::Duration {
        std::time::Duration::from_secs(300)
    }

    use std::time::Duration;

    pub fn listen() -> String {
        "0.0.0.0".into()
    }
    pub fn port() -> u16 {
        5000
    }
    pub fn repair_after() -> Duration {
        Duration::from_secs(10)
    }
    pub fn causal_wait() -> Duration {
        Duration::from_secs(5)
    }
    pub fn max_key_bytes() -> usize {
        1024
    }
    pub fn max_value_bytes() -> usize {
        1024 * 1024
    }
    pub fn max_value_depth() -> usize {
        100
    }
    pub fn max_txn_keys() -> usize {
        1000
    }
    pub fn bootstrap_chunk_keys() -> usize {
        2000
    }
    pub fn max_txn_bytes() -> usize {
        16 * 1024 * 1024
    }
    pub fn max_buffered() -> usize {
        100_000
    }
    pub fn max_buffered_bytes() -> usize {
        256 * 1024 * 1024
    }
    pub fn max_batch_events() -> usize {
        1024
    }
    pub fn max_batch_bytes() -> usize {
        8 * 1024 * 1024
    }
    pub fn sync_interval() -> Duration {
        Duration::from_secs(1)
    }
    pub fn retransmit_after() -> Duration {
        Duration::from_secs(1)
    }
    pub fn peer_timeout() -> Duration {
        Duration::from_secs(5)
    }
    pub fn header_timeout() -> Duration {
        Duration::from_secs(5)
    }
    /// 30 s, and always longer than `causal_wait`.
    pub fn request_timeout(causal_wait: Duration) -> Duration {
        Duration::from_secs(30).max(causal_wait + Duration::from_secs(10))
    }
    pub fn keep_alive() -> Duration {
        Duration::from_secs(30)
    }
    pub fn disconnect_timeout() -> Duration {
        Duration::from_secs(1)
    }
    pub fn shutdown_timeout() -> Duration {
        Duration::from_secs(10)
    }
    pub fn max_connections() -> usize {
        10_000
    }
}

/// The largest values the settings accept: beyond them the node's arithmetic on
/// instants and sizes could overflow, and no deployment needs more.
pub mod limits {
    use std::time::Duration;

    /// Largest `max_key_bytes`: 64 KiB.
    pub const MAX_KEY_BYTES: usize = 64 * 1024;
    /// Largest `max_value_bytes`: 256 MiB.
    pub const MAX_VALUE_BYTES: usize = 256 * 1024 * 1024;
    /// Largest `max_batch_bytes`: 1 GiB.
    pub const MAX_BATCH_BYTES: usize = 1024 * 1024 * 1024;
    /// Largest `max_batch_events`.
    pub const MAX_BATCH_EVENTS: usize = 1_000_000;
    /// Largest `max_txn_keys`.
    pub const MAX_TXN_KEYS: usize = 100_000;
    /// Largest `bootstrap_chunk_keys`: what a peer gives in one chunk.
    pub const MAX_BOOTSTRAP_CHUNK_KEYS: usize = 10_000;
    /// Largest `max_txn_bytes`: 1 GiB.
    pub const MAX_TXN_BYTES: usize = 1024 * 1024 * 1024;
    /// Largest `max_value_depth`.
    pub const MAX_VALUE_DEPTH: usize = 10_000;
    /// Largest `max_buffered`.
    pub const MAX_BUFFERED: usize = 10_000_000;
    /// Largest `max_buffered_bytes`, `log_memory_bytes`, `max_queued_bytes` and
    /// `trace_buffer_bytes`: 64 GiB.
    pub const MAX_BUFFERED_BYTES: usize = 64 * 1024 * 1024 * 1024;
    /// Longest `causal_wait`: 1 hour.
    pub const MAX_CAUSAL_WAIT: Duration = Duration::from_secs(3600);
    /// Longest of the other durations (timeouts and intervals): 1 day.
    pub const MAX_DURATION: Duration = Duration::from_secs(24 * 3600);
}

/// One member of the cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    /// Its id.
    pub id: NodeId,
    /// Its base URL, without a trailing slash.
    pub url: String,
}

/// A validated configuration.
#[derive(Clone, Debug)]
pub struct Config {
    /// This node's id (`node_id`, `KVNODE_NODE_ID`, `NODE_ID`).
    pub node_id: NodeId,
    /// Every node of the cluster, this one included, sorted by id.
    pub members: Vec<Member>,
    /// Address to listen on (`listen`, default `0.0.0.0`).
    pub listen: String,
    /// Port to listen on (`port`, `KVNODE_PORT`, `PORT`; default 5000).
    pub port: u16,
    /// Where the node keeps its data (`data_dir`, default `./data/<node_id>`).
    pub data_dir: PathBuf,
    /// `fsync` (default): a write is acknowledged once it is on disk. `none`:
    /// commits are not synced; for throwaway benchmarks only.
    pub durability: Durability,
    /// Keep everything in memory instead of `data_dir` (lost on restart).
    pub memory: bool,
    /// Accept writes at once even when this node's data may be incomplete and
    /// a peer has not answered yet (default false). Only for the first start of
    /// a new cluster whose other nodes are not up, or to give up on writes that
    /// only an unreachable peer holds: the node may then reuse the dots of
    /// writes it made before it lost its data.
    pub force_new_history: bool,
    /// Bytes of recently used keys' siblings kept decoded in memory (default
    /// 64 MiB; 0 turns the cache off).
    pub cache_bytes: u64,
    /// Most events of the log kept in memory (default 65 536); while a peer is
    /// down the log grows, and its older events are then read from disk.
    pub log_memory_events: usize,
    /// Most bytes of the log's events kept in memory (default 64 MiB); the
    /// bound that counts with large values.
    pub log_memory_bytes: usize,
    /// Most bytes of writes and peer batches waiting for the writer (default
    /// 64 MiB); past it, requests get 503 naming the limit.
    pub max_queued_bytes: usize,
    /// How long a peer may lack events this node holds (of any origin) before
    /// this node sends them itself (default 10 s).
    pub repair_after: Duration,
    /// How long a request waits for its causal context before a 503 (default 5 s).
    pub causal_wait: Duration,
    /// Largest key, in bytes (default 1 KiB).
    pub max_key_bytes: usize,
    /// Largest value, in bytes of JSON text (default 1 MiB).
    pub max_value_bytes: usize,
    /// Deepest nesting of arrays and objects in a client's value (default 100).
    pub max_value_depth: usize,
    /// Most keys one transaction reads or writes (default 1000).
    pub max_txn_keys: usize,
    /// Keys a bootstrapping node asks a peer for in one chunk (default 2000;
    /// a chunk also stops at about 4 MiB of siblings).
    pub bootstrap_chunk_keys: usize,
    /// Most bytes of keys and values' JSON one transaction writes (default 16 MiB).
    pub max_txn_bytes: usize,
    /// Most events held in the buffer of undeliverable events (default 100 000).
    pub max_buffered: usize,
    /// Most bytes of events (keys, values, clocks) held in that buffer
    /// (default 256 MiB).
    pub max_buffered_bytes: usize,
    /// Most events per replication batch (default 1024).
    pub max_batch_events: usize,
    /// Approximate largest replication batch, in bytes (default 8 MiB).
    pub max_batch_bytes: usize,
    /// How often an idle link exchanges clocks with its peer (default 1 s).
    pub sync_interval: Duration,
    /// How long a sent batch may stay unacknowledged before it is sent again (default 1 s).
    pub retransmit_after: Duration,
    /// Timeout of one request to a peer (default 5 s).
    pub peer_timeout: Duration,
    /// Enables the fault hook under `/admin/v1/links` (default off).
    pub faults: bool,
    /// How many trace records the node keeps in memory and serves at
    /// `/v1/trace` (default 0: no trace in memory).
    pub trace_buffer: usize,
    /// Most bytes of trace records kept in memory (default 64 MiB); the oldest
    /// records go first.
    pub trace_buffer_bytes: usize,
    /// Most trace streams open at once, proxied ones included (default 32; at
    /// most half of `max_connections`, so that peers and clients always keep
    /// the other half).
    pub max_trace_streams: usize,
    /// A trace stream that has had no record for this long ends (default 5
    /// min); a client reconnects with `after`.
    pub trace_stream_idle: Duration,
    /// Appends every trace record to this file, one JSON object per line
    /// (default: none).
    pub trace_file: Option<PathBuf>,
    /// When set, peer and admin requests must carry it as a bearer token
    /// (`cluster_secret`, or read from `cluster_secret_file`).
    pub cluster_secret: Option<Secret>,
    /// When set, client API requests (all but `/health`) must carry it as a
    /// bearer token (`client_token` or `client_token_file`).
    pub client_token: Option<Secret>,
    /// HTTP worker threads (default: one per core).
    pub workers: Option<usize>,
    /// Serve HTTPS with this certificate chain (PEM; needs `tls_key`).
    pub tls_cert: Option<PathBuf>,
    /// The private key of `tls_cert` (PEM: PKCS#8, PKCS#1 or SEC1).
    pub tls_key: Option<PathBuf>,
    /// Verify `https://` peers against these CA certificates (PEM) instead of
    /// the public web roots.
    pub tls_ca: Option<PathBuf>,
    /// How long a client may take to send a request's head, from the moment
    /// it connects (default 5 s); then 408 and the connection is closed.
    pub header_timeout: Duration,
    /// How long a request may take from its head to the end of its answer,
    /// body upload and causal wait included (default 30 s, or `causal_wait`
    /// + 10 s if that is longer); then 408. Longer than `causal_wait`.
    pub request_timeout: Duration,
    /// How long an idle keep-alive connection stays open (default 30 s; `0s`
    /// turns keep-alive off).
    pub keep_alive: Duration,
    /// How long the node waits for a client to close a connection it is done
    /// with (default 1 s).
    pub disconnect_timeout: Duration,
    /// On SIGTERM or SIGINT, how long in-flight requests may take to finish
    /// before their connections are closed (default 10 s).
    pub shutdown_timeout: Duration,
    /// Most open client connections, over all workers (default 10 000);
    /// further connections wait to be accepted.
    pub max_connections: usize,
}

impl Config {
    /// Loads the configuration from `file` (if any) and the process environment.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        Self::load_from(file, std::env::vars().collect())
    }

    /// Loads the configuration from `file` (if any) and the given environment.
    pub fn load_from(
        file: Option<&Path>,
        env: HashMap<String, String>,
    ) -> Result<Self, ConfigError> {
        let mut builder = config::Config::builder();
        if let Some(path) = file {
            if !path.exists() {
                return Err(ConfigError(format!(
                    "config file {} does not exist",
                    path.display()
                )));
            }
            builder = builder.add_source(config::File::from(path).format(config::FileFormat::Toml));
        }
        let prototype: HashMap<String, String> = ["NODE_ID", "NODES", "PORT"]
            .into_iter()
            .filter_map(|var| env.get(var).map(|v| (var.to_owned(), v.clone())))
            .collect();
        builder = builder
            .add_source(
                config::Environment::default()
                    .source(Some(prototype))
                    .try_parsing(true),
            )
            .add_source(
                config::Environment::with_prefix("KVNODE")
                    .source(Some(env))
                    .try_parsing(true),
            );
        let raw: RawConfig = builder
            .build()
            .and_then(|c| c.try_deserialize())
            .map_err(|e| ConfigError(e.to_string()))?;
        Self::validate(raw)
    }

    fn validate(raw: RawConfig) -> Result<Self, ConfigError> {
        let err = |msg: String| Err(ConfigError(msg));
        let Some(node_id) = raw.node_id.filter(|id| !id.is_empty()) else {
            return err("node_id is not set: set KVNODE_NODE_ID (or NODE_ID), or node_id in the config file".into());
        };
        check_id(&node_id, "node_id")?;
        let entries: Vec<String> = match raw.nodes {
            None => vec![node_id.clone()],
            Some(NodeList::Text(text)) => text
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect(),
            Some(NodeList::List(list)) => list,
        };
        let mut members = Vec::new();
        for entry in entries {
            let (id, url) = match entry.split_once('=') {
                Some((id, url)) => (
                    id.trim().to_owned(),
                    url.trim().trim_end_matches('/').to_owned(),
                ),
                None => (
                    entry.trim().to_owned(),
                    format!("http://{}:{}", entry.trim(), raw.port),
                ),
            };
            check_id(&id, "nodes")?;
            if !(url.starts_with("http://") || url.starts_with("https://")) || url.len() < 10 {
                return err(format!(
                    "nodes: the URL of {id} must start with http:// or https://, got {url:?}"
                ));
            }
            if members.iter().any(|m: &Member| m.id == id) {
                return err(format!("nodes: {id} is listed twice"));
            }
            members.push(Member { id, url });
        }
        if members.is_empty() {
            return err("nodes is empty".into());
        }
        if !members.iter().any(|m| m.id == node_id) {
            return err(format!("nodes must include this node's id {node_id}"));
        }
        members.sort_by(|a, b| a.id.cmp(&b.id));
        for (name, value) in [
            ("max_key_bytes", raw.max_key_bytes),
            ("max_value_bytes", raw.max_value_bytes),
            ("max_value_depth", raw.max_value_depth),
            ("max_txn_keys", raw.max_txn_keys),
            ("max_txn_bytes", raw.max_txn_bytes),
            ("bootstrap_chunk_keys", raw.bootstrap_chunk_keys),
            ("max_buffered", raw.max_buffered),
            ("max_buffered_bytes", raw.max_buffered_bytes),
            ("log_memory_bytes", raw.log_memory_bytes),
            ("max_queued_bytes", raw.max_queued_bytes),
            ("trace_buffer_bytes", raw.trace_buffer_bytes),
            ("max_batch_events", raw.max_batch_events),
            ("max_batch_bytes", raw.max_batch_bytes),
            ("max_connections", raw.max_connections),
            ("max_trace_streams", raw.max_trace_streams),
        ] {
            if value == 0 {
                return err(format!("{name} must be at least 1"));
            }
        }
        for (name, value, max) in [
            ("max_key_bytes", raw.max_key_bytes, limits::MAX_KEY_BYTES),
            (
                "max_value_bytes",
                raw.max_value_bytes,
                limits::MAX_VALUE_BYTES,
            ),
            (
                "max_value_depth",
                raw.max_value_depth,
                limits::MAX_VALUE_DEPTH,
            ),
            ("max_txn_keys", raw.max_txn_keys, limits::MAX_TXN_KEYS),
            ("max_txn_bytes", raw.max_txn_bytes, limits::MAX_TXN_BYTES),
            (
                "bootstrap_chunk_keys",
                raw.bootstrap_chunk_keys,
                limits::MAX_BOOTSTRAP_CHUNK_KEYS,
            ),
            ("max_buffered", raw.max_buffered, limits::MAX_BUFFERED),
            (
                "max_buffered_bytes",
                raw.max_buffered_bytes,
                limits::MAX_BUFFERED_BYTES,
            ),
            (
                "log_memory_bytes",
                raw.log_memory_bytes,
                limits::MAX_BUFFERED_BYTES,
            ),
            (
                "max_queued_bytes",
                raw.max_queued_bytes,
                limits::MAX_BUFFERED_BYTES,
            ),
            (
                "trace_buffer_bytes",
                raw.trace_buffer_bytes,
                limits::MAX_BUFFERED_BYTES,
            ),
            (
                "max_batch_events",
                raw.max_batch_events,
                limits::MAX_BATCH_EVENTS,
            ),
            (
                "max_batch_bytes",
                raw.max_batch_bytes,
                limits::MAX_BATCH_BYTES,
            ),
        ] {
            if value > max {
                return err(format!("{name} must be at most {max}, got {value}"));
            }
        }
        for (name, value) in [
            ("sync_interval", raw.sync_interval),
            ("retransmit_after", raw.retransmit_after),
            ("peer_timeout", raw.peer_timeout),
            ("repair_after", raw.repair_after),
            ("header_timeout", raw.header_timeout),
            ("disconnect_timeout", raw.disconnect_timeout),
            ("shutdown_timeout", raw.shutdown_timeout),
            ("trace_stream_idle", raw.trace_stream_idle),
        ] {
            if value.is_zero() {
                return err(format!("{name} must be longer than 0"));
            }
        }
        let durations = [
            (
                "causal_wait",
                Some(raw.causal_wait),
                limits::MAX_CAUSAL_WAIT,
            ),
            ("request_timeout", raw.request_timeout, limits::MAX_DURATION),
            (
                "sync_interval",
                Some(raw.sync_interval),
                limits::MAX_DURATION,
            ),
            (
                "retransmit_after",
                Some(raw.retransmit_after),
                limits::MAX_DURATION,
            ),
            ("peer_timeout", Some(raw.peer_timeout), limits::MAX_DURATION),
            ("repair_after", Some(raw.repair_after), limits::MAX_DURATION),
            (
                "header_timeout",
                Some(raw.header_timeout),
                limits::MAX_DURATION,
            ),
            ("keep_alive", Some(raw.keep_alive), limits::MAX_DURATION),
            (
                "disconnect_timeout",
                Some(raw.disconnect_timeout),
                limits::MAX_DURATION,
            ),
            (
                "shutdown_timeout",
                Some(raw.shutdown_timeout),
                limits::MAX_DURATION,
            ),
            (
                "trace_stream_idle",
                Some(raw.trace_stream_idle),
                limits::MAX_DURATION,
            ),
        ];
        for (name, value, max) in durations {
            if value.is_some_and(|value| value > max) {
                return err(format!(
                    "{name} must be at most {}",
                    humantime_serde::re::humantime::format_duration(max)
                ));
            }
        }
        if raw.workers == Some(0) {
            return err("workers must be at least 1".into());
        }
        if raw.max_trace_streams > raw.max_connections / 2 {
            return err(format!(
                "max_trace_streams ({}) must be at most half of max_connections ({}), so that \
                 peers and clients always keep the other half",
                raw.max_trace_streams, raw.max_connections
            ));
        }
        let request_timeout = raw
            .request_timeout
            .unwrap_or_else(|| defaults::request_timeout(raw.causal_wait));
        if request_timeout <= raw.causal_wait {
            return err(format!(
                "request_timeout ({request_timeout:?}) must be longer than causal_wait ({:?})",
                raw.causal_wait
            ));
        }
        if raw.tls_cert.is_some() != raw.tls_key.is_some() {
            return err(
                "tls_cert and tls_key go together: set both to serve HTTPS, or neither".into(),
            );
        }
        for (name, path) in [
            ("tls_cert", &raw.tls_cert),
            ("tls_key", &raw.tls_key),
            ("tls_ca", &raw.tls_ca),
        ] {
            if let Some(path) = path {
                if !path.is_file() {
                    return err(format!("{name}: {} is not a readable file", path.display()));
                }
            }
        }
        let cluster_secret = secret(
            raw.cluster_secret,
            raw.cluster_secret_file,
            "cluster_secret",
        )?;
        let client_token = secret(raw.client_token, raw.client_token_file, "client_token")?;
        if client_token.is_some() && cluster_secret.is_none() {
            return err(
                "client_token is set without cluster_secret: the peer API (replication, \
                 fault hook) would stay open to anyone while clients need a token; set \
                 cluster_secret (or cluster_secret_file) too"
                    .into(),
            );
        }
        let data_dir = raw
            .data_dir
            .unwrap_or_else(|| PathBuf::from("data").join(&node_id));
        let config = Self {
            node_id,
            members,
            listen: raw.listen,
            port: raw.port,
            data_dir,
            durability: raw.durability,
            memory: raw.memory,
            force_new_history: raw.force_new_history,
            cache_bytes: raw.cache_bytes,
            log_memory_events: raw.log_memory_events,
            log_memory_bytes: raw.log_memory_bytes,
            max_queued_bytes: raw.max_queued_bytes,
            repair_after: raw.repair_after,
            causal_wait: raw.causal_wait,
            max_key_bytes: raw.max_key_bytes,
            max_value_bytes: raw.max_value_bytes,
            max_value_depth: raw.max_value_depth,
            max_txn_keys: raw.max_txn_keys,
            bootstrap_chunk_keys: raw.bootstrap_chunk_keys,
            max_txn_bytes: raw.max_txn_bytes,
            max_buffered: raw.max_buffered,
            max_buffered_bytes: raw.max_buffered_bytes,
            max_batch_events: raw.max_batch_events,
            max_batch_bytes: raw.max_batch_bytes,
            sync_interval: raw.sync_interval,
            retransmit_after: raw.retransmit_after,
            peer_timeout: raw.peer_timeout,
            faults: raw.faults,
            trace_buffer: raw.trace_buffer,
            trace_buffer_bytes: raw.trace_buffer_bytes,
            max_trace_streams: raw.max_trace_streams,
            trace_stream_idle: raw.trace_stream_idle,
            trace_file: raw.trace_file,
            cluster_secret,
            client_token,
            workers: raw.workers,
            tls_cert: raw.tls_cert,
            tls_key: raw.tls_key,
            tls_ca: raw.tls_ca,
            header_timeout: raw.header_timeout,
            request_timeout,
            keep_alive: raw.keep_alive,
            disconnect_timeout: raw.disconnect_timeout,
            shutdown_timeout: raw.shutdown_timeout,
            max_connections: raw.max_connections,
        };
        Ok(config)
    }

    /// The ids of every node, sorted.
    pub fn node_ids(&self) -> Vec<NodeId> {
        self.members.iter().map(|m| m.id.clone()).collect()
    }

    /// Every member but this node.
    pub fn peers(&self) -> impl Iterator<Item = &Member> {
        self.members.iter().filter(move |m| m.id != self.node_id)
    }

    /// A configuration for tests: `node_id` in a cluster of `members`.
    pub fn for_test(node_id: &str, members: Vec<Member>) -> Self {
        let mut env = HashMap::new();
        env.insert("KVNODE_NODE_ID".to_owned(), node_id.to_owned());
        let nodes: Vec<String> = members
            .iter()
            .map(|m| format!("{}={}", m.id, m.url))
            .collect();
        env.insert("KVNODE_NODES".to_owned(), nodes.join(","));
        Self::load_from(None, env).expect("a valid test configuration")
    }
}

/// A secret: compared in constant time, never printed.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    /// The secret's text, to send it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// True when `candidate` is the secret (constant time in its content).
    pub fn matches(&self, candidate: &str) -> bool {
        use subtle::ConstantTimeEq;
        self.0.as_bytes().ct_eq(candidate.as_bytes()).into()
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

fn secret(
    value: Option<String>,
    file: Option<PathBuf>,
    setting: &str,
) -> Result<Option<Secret>, ConfigError> {
    let text = match (value, file) {
        (Some(_), Some(_)) => {
            return Err(ConfigError(format!(
                "{setting} and {setting}_file are both set; use one"
            )))
        }
        (Some(text), None) => text,
        (None, Some(path)) => std::fs::read_to_string(&path).map_err(|e| {
            ConfigError(format!(
                "{setting}_file: cannot read {}: {e}",
                path.display()
            ))
        })?,
        (None, None) => return Ok(None),
    };
    let text = text.trim().to_owned();
    if text.len() < 16 {
        return Err(ConfigError(format!(
            "{setting} must be at least 16 characters"
        )));
    }
    if !text.chars().all(|c| c.is_ascii_graphic()) {
        return Err(ConfigError(format!(
            "{setting} must be printable ASCII without spaces"
        )));
    }
    Ok(Some(Secret(text)))
}

fn check_id(id: &str, setting: &str) -> Result<(), ConfigError> {
    if crate::core::membership::valid_id(id) {
        Ok(())
    } else {
        Err(ConfigError(format!(
            "{setting}: node id {id:?} must be 1-64 characters of letters, digits, '-', '_' or '.', and not \".\" or \"..\""
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn prototype_variables_work() {
        let c = Config::load_from(
            None,
            env(&[
                ("NODE_ID", "node2"),
                ("NODES", "node1,node2,node3"),
                ("PORT", "5000"),
            ]),
        )
        .unwrap();
        assert_eq!(c.node_id, "node2");
        assert_eq!(c.port, 5000);
        assert_eq!(
            c.members[0],
            Member {
                id: "node1".into(),
                url: "http://node1:5000".into()
            }
        );
        assert_eq!(c.peers().count(), 2);
    }

    #[test]
    fn kvnode_variables_win_and_accept_urls() {
        let c = Config::load_from(
            None,
            env(&[
                ("NODE_ID", "node9"),
                ("KVNODE_NODE_ID", "a"),
                (
                    "KVNODE_NODES",
                    "a=http://127.0.0.1:7001/, b=http://127.0.0.1:7002",
                ),
                ("KVNODE_CAUSAL_WAIT", "250ms"),
                ("KVNODE_FAULTS", "true"),
            ]),
        )
        .unwrap();
        assert_eq!(c.node_id, "a");
        assert_eq!(c.members[0].url, "http://127.0.0.1:7001");
        assert_eq!(c.causal_wait, Duration::from_millis(250));
        assert!(c.faults);
    }

    #[test]
    fn toml_file_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.toml");
        std::fs::write(
            &path,
            "node_id = \"n1\"\nnodes = [\"n1=http://10.0.0.1:5000\", \"n2=http://10.0.0.2:5000\"]\nport = 6000\nmax_key_bytes = 64\n",
        )
        .unwrap();
        let c = Config::load_from(Some(&path), env(&[("KVNODE_PORT", "6001")])).unwrap();
        assert_eq!(
            (c.node_id.as_str(), c.port, c.max_key_bytes),
            ("n1", 6001, 64)
        );
        assert_eq!(c.members.len(), 2);
    }

    #[test]
    fn the_example_config_is_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/node.example.toml");
        let c = Config::load_from(Some(&path), HashMap::new()).unwrap();
        assert_eq!(c.node_id, "node1");
        assert_eq!(c.members.len(), 3);
        assert_eq!(c.durability, Durability::Fsync);
        assert_eq!(c.data_dir, PathBuf::from("/var/lib/kvnode"));
    }

    #[test]
    fn durability_and_data_dir() {
        let c = Config::load_from(
            None,
            env(&[("NODE_ID", "n"), ("KVNODE_DURABILITY", "none")]),
        )
        .unwrap();
        assert_eq!(c.durability, Durability::None);
        assert_eq!(c.data_dir, PathBuf::from("data/n"));
        let err = Config::load_from(
            None,
            env(&[("NODE_ID", "n"), ("KVNODE_DURABILITY", "sometimes")]),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("durability") || err.contains("sometimes"),
            "{err}"
        );
    }

    #[test]
    fn secrets_come_from_values_or_files_and_are_never_printed() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("secret");
        std::fs::write(&file, "0123456789abcdef-file\n").unwrap();
        let c = Config::load_from(
            None,
            env(&[
                ("NODE_ID", "n"),
                ("KVNODE_CLUSTER_SECRET_FILE", file.to_str().unwrap()),
                ("KVNODE_CLIENT_TOKEN", "client-token-0123456789"),
            ]),
        )
        .unwrap();
        let secret = c.cluster_secret.as_ref().unwrap();
        assert!(secret.matches("0123456789abcdef-file"));
        assert!(!secret.matches("0123456789abcdef-filX"));
        assert!(c
            .client_token
            .as_ref()
            .unwrap()
            .matches("client-token-0123456789"));
        let printed = format!("{c:?}");
        assert!(!printed.contains("0123456789abcdef") && !printed.contains("client-token"));
        let err = Config::load_from(
            None,
            env(&[("NODE_ID", "n"), ("KVNODE_CLUSTER_SECRET", "short")]),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("cluster_secret"), "{err}");
    }

    #[test]
    fn bad_settings_are_named() {
        let cases: &[(&[(&str, &str)], &str)] = &[
            (&[], "node_id is not set"),
            (
                &[("NODE_ID", "node1"), ("NODES", "node2,node3")],
                "must include this node",
            ),
            (
                &[("NODE_ID", "node1"), ("NODES", "node1,node1")],
                "listed twice",
            ),
            (&[("NODE_ID", "no de")], "node id"),
            (&[("NODE_ID", "n"), ("NODES", "n=ftp://x")], "http://"),
            (&[("NODE_ID", "n"), ("PORT", "http")], "port"),
            (
                &[("NODE_ID", "n"), ("KVNODE_CAUSAL_WAIT", "soon")],
                "causal_wait",
            ),
            (
                &[("NODE_ID", "n"), ("KVNODE_MAX_BUFFERED", "0")],
                "max_buffered",
            ),
            (
                &[("NODE_ID", "n"), ("KVNODE_CAUSAL_WIAT", "1s")],
                "causal_wiat",
            ),
            (
                &[
                    ("NODE_ID", "n"),
                    ("KVNODE_MAX_CONNECTIONS", "100"),
                    ("KVNODE_MAX_TRACE_STREAMS", "51"),
                ],
                "max_trace_streams (51) must be at most half of max_connections (100)",
            ),
            (
                &[("NODE_ID", "n"), ("KVNODE_TRACE_STREAM_IDLE", "0s")],
                "trace_stream_idle must be longer than 0",
            ),
        ];
        for (vars, expected) in cases {
            let err = Config::load_from(None, env(vars)).unwrap_err().to_string();
            assert!(
                err.contains(expected),
                "{vars:?}: {err:?} should mention {expected:?}"
            );
        }
    }

    #[test]
    fn a_client_token_needs_a_cluster_secret() {
        let err = Config::load_from(
            None,
            env(&[
                ("NODE_ID", "n"),
                ("KVNODE_CLIENT_TOKEN", "client-token-0123456789"),
            ]),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("client_token") && err.contains("cluster_secret"),
            "{err}"
        );
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, "client-token-from-a-file\n").unwrap();
        let err = Config::load_from(
            None,
            env(&[
                ("NODE_ID", "n"),
                ("KVNODE_CLIENT_TOKEN_FILE", file.to_str().unwrap()),
            ]),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("client_token") && err.contains("cluster_secret"),
            "{err}"
        );
        // A cluster secret alone, or both, are fine.
        for vars in [
            &[
                ("NODE_ID", "n"),
                ("KVNODE_CLUSTER_SECRET", "cluster-secret-0123456789"),
            ][..],
            &[
                ("NODE_ID", "n"),
                ("KVNODE_CLUSTER_SECRET", "cluster-secret-0123456789"),
                ("KVNODE_CLIENT_TOKEN", "client-token-0123456789"),
            ],
        ] {
            Config::load_from(None, env(vars)).unwrap();
        }
    }

    #[test]
    fn durations_are_bounded() {
        let settings = [
            ("CAUSAL_WAIT", "causal_wait", "1h"),
            ("PEER_TIMEOUT", "peer_timeout", "1day"),
            ("REQUEST_TIMEOUT", "request_timeout", "1day"),
            ("HEADER_TIMEOUT", "header_timeout", "1day"),
            ("SYNC_INTERVAL", "sync_interval", "1day"),
            ("RETRANSMIT_AFTER", "retransmit_after", "1day"),
            ("REPAIR_AFTER", "repair_after", "1day"),
            ("SHUTDOWN_TIMEOUT", "shutdown_timeout", "1day"),
            ("KEEP_ALIVE", "keep_alive", "1day"),
            ("DISCONNECT_TIMEOUT", "disconnect_timeout", "1day"),
        ];
        for (var, name, bound) in settings {
            let var = format!("KVNODE_{var}");
            for huge in ["1000000000years", "25h"] {
                let err = Config::load_from(None, env(&[("NODE_ID", "n"), (&var, huge)]))
                    .unwrap_err()
                    .to_string();
                assert!(
                    err.contains(&format!("{name} must be at most {bound}")),
                    "{var}={huge}: {err}"
                );
            }
        }
        // The bounds themselves are accepted.
        let c = Config::load_from(
            None,
            env(&[
                ("NODE_ID", "n"),
                ("KVNODE_CAUSAL_WAIT", "1h"),
                ("KVNODE_REQUEST_TIMEOUT", "24h"),
                ("KVNODE_PEER_TIMEOUT", "24h"),
                ("KVNODE_REPAIR_AFTER", "24h"),
                ("KVNODE_KEEP_ALIVE", "24h"),
            ]),
        )
        .unwrap();
        assert_eq!(c.causal_wait, limits::MAX_CAUSAL_WAIT);
        assert_eq!(c.request_timeout, limits::MAX_DURATION);
        // The default request_timeout of the longest causal_wait is accepted.
        let c = Config::load_from(None, env(&[("NODE_ID", "n"), ("KVNODE_CAUSAL_WAIT", "1h")]))
            .unwrap();
        assert!(c.request_timeout > c.causal_wait);
        for (var, name) in [
            ("KVNODE_PEER_TIMEOUT", "peer_timeout"),
            ("KVNODE_SYNC_INTERVAL", "sync_interval"),
            ("KVNODE_SHUTDOWN_TIMEOUT", "shutdown_timeout"),
        ] {
            let err = Config::load_from(None, env(&[("NODE_ID", "n"), (var, "0s")]))
                .unwrap_err()
                .to_string();
            assert!(
                err.contains(&format!("{name} must be longer than 0")),
                "{err}"
            );
        }
    }

    #[test]
    fn sizes_are_bounded() {
        let settings = [
            (
                "KVNODE_MAX_KEY_BYTES",
                "max_key_bytes",
                limits::MAX_KEY_BYTES,
            ),
            (
                "KVNODE_MAX_VALUE_BYTES",
                "max_value_bytes",
                limits::MAX_VALUE_BYTES,
            ),
            (
                "KVNODE_MAX_BATCH_BYTES",
                "max_batch_bytes",
                limits::MAX_BATCH_BYTES,
            ),
            (
                "KVNODE_MAX_BATCH_EVENTS",
                "max_batch_events",
                limits::MAX_BATCH_EVENTS,
            ),
            ("KVNODE_MAX_BUFFERED", "max_buffered", limits::MAX_BUFFERED),
            (
                "KVNODE_MAX_VALUE_DEPTH",
                "max_value_depth",
                limits::MAX_VALUE_DEPTH,
            ),
            (
                "KVNODE_MAX_BUFFERED_BYTES",
                "max_buffered_bytes",
                limits::MAX_BUFFERED_BYTES,
            ),
            (
                "KVNODE_LOG_MEMORY_BYTES",
                "log_memory_bytes",
                limits::MAX_BUFFERED_BYTES,
            ),
            (
                "KVNODE_MAX_QUEUED_BYTES",
                "max_queued_bytes",
                limits::MAX_BUFFERED_BYTES,
            ),
            (
                "KVNODE_TRACE_BUFFER_BYTES",
                "trace_buffer_bytes",
                limits::MAX_BUFFERED_BYTES,
            ),
        ];
        for (var, name, max) in settings {
            for too_big in [(max + 1).to_string(), usize::MAX.to_string()] {
                let err = Config::load_from(None, env(&[("NODE_ID", "n"), (var, &too_big)]))
                    .unwrap_err()
                    .to_string();
                assert!(
                    err.contains(&format!("{name} must be at most {max}")),
                    "{var}={too_big}: {err}"
                );
            }
            Config::load_from(None, env(&[("NODE_ID", "n"), (var, &max.to_string())])).unwrap();
        }
    }

    #[test]
    fn node_ids_are_safe_path_components() {
        let long = "n".repeat(65);
        for bad in [
            ".", "..", "a/b", "../x", "a\\b", "a\0b", "a b", "a\tb", &long,
        ] {
            for vars in [
                &[("NODE_ID", bad)][..],
                &[("KVNODE_NODE_ID", bad)],
                &[("NODE_ID", "node1"), ("NODES", &format!("node1,{bad}"))],
                &[
                    ("NODE_ID", "node1"),
                    ("KVNODE_NODES", &format!("node1,{bad}=http://10.0.0.2:5000")),
                ],
            ] {
                let err = Config::load_from(None, env(vars)).unwrap_err().to_string();
                assert!(err.contains("node id"), "{vars:?}: {err}");
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.toml");
        std::fs::write(
            &path,
            "node_id = \"node1\"\nnodes = [\"node1=http://10.0.0.1:5000\", \"..=http://10.0.0.2:5000\"]\n",
        )
        .unwrap();
        let err = Config::load_from(Some(&path), HashMap::new())
            .unwrap_err()
            .to_string();
        assert!(err.contains("nodes") && err.contains("\"..\""), "{err}");
        // The prototype's ids, and the longest id, are valid.
        let longest = "n".repeat(64);
        let c = Config::load_from(
            None,
            env(&[
                ("NODE_ID", "node1"),
                ("NODES", &format!("node1,node2,node3,n-1_a.b,{longest}")),
            ]),
        )
        .unwrap();
        assert_eq!(c.data_dir, PathBuf::from("data/node1"));
        assert_eq!(c.members.len(), 5);
    }

    /// A configuration built in code is not bounded by `validate`: the body
    /// limits derived from it saturate instead of overflowing.
    #[actix_web::test]
    async fn body_limits_of_unbounded_sizes_do_not_overflow() {
        use actix_web::{test, App};
        let mut config = Config::for_test(
            "n1",
            vec![Member {
                id: "n1".into(),
                url: "http://127.0.0.1:9".into(),
            }],
        );
        config.max_key_bytes = usize::MAX;
        config.max_value_bytes = usize::MAX;
        config.max_batch_bytes = usize::MAX;
        let node = crate::node::Node::start(config, Box::new(crate::storage::MemStore::new()))
            .expect("a node");
        let app = test::init_service(App::new().configure(crate::http::configure(node))).await;
        let res =
            test::call_service(&app, test::TestRequest::get().uri("/health").to_request()).await;
        assert!(res.status().is_success(), "{}", res.status());
    }
}
