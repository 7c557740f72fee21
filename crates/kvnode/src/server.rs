//! The server of one node, from a validated configuration to a clean stop.
//!
//! [`run`] opens the storage, starts the [`Node`], its replication links and the
//! HTTP server (TLS, limits and timeouts as configured) on a listening socket,
//! and serves until a shutdown future completes. Then it stops in order: no new
//! connections, in-flight requests finish (at most `shutdown_timeout`), the
//! replication senders finish the batch they are sending, the writer commits
//! what it holds. The `kvnode` binary adds only what belongs to a process:
//! arguments, configuration loading, logging, and the signals that end it.
//! Tests run whole clusters in one process through the same function.
//!
//! ```no_run
//! # fn main() -> std::io::Result<()> {
//! use kvnode::config::Config;
//!
//! let settings = [("KVNODE_NODE_ID", "node1"), ("KVNODE_MEMORY", "true")];
//! let env = settings.map(|(k, v)| (k.to_owned(), v.to_owned())).into();
//! let config = Config::load_from(None, env).map_err(std::io::Error::other)?;
//! let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
//! let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
//! let node = std::thread::spawn(move || {
//!     actix_web::rt::System::new().block_on(kvnode::server::run(config, listener, async {
//!         let _ = stopped.await;
//!     }))
//! });
//! // ... serve requests, then:
//! let _ = stop.send(());
//! node.join().expect("the node's thread")?;
//! # Ok(())
//! # }
//! ```

use std::future::Future;
use std::io;
use std::net::{SocketAddr, TcpListener, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

use actix_web::http::KeepAlive;
use actix_web::{middleware, App, HttpServer};

use crate::config::Config;
use crate::node::{BoxStore, Node, NODE_IDENTITY};
use crate::storage::durable::{Durability, DurableStore};
use crate::storage::MemStore;

/// Pending connections the listening socket queues before they are accepted.
const BACKLOG: u32 = 1024;

/// Binds `host:port` for [`run`]: the first address it resolves to that can be
/// bound, with `SO_REUSEADDR` and a backlog of 1024 pending connections (the
/// standard library's `TcpListener::bind` queues only 128). Call it on the
/// runtime that will serve.
pub fn bind(host: &str, port: u16) -> io::Result<TcpListener> {
    let mut last = None;
    for address in (host, port).to_socket_addrs()? {
        match bind_one(address) {
            Ok(listener) => return Ok(listener),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| io::Error::other("the address resolves to nothing")))
}

fn bind_one(address: SocketAddr) -> io::Result<TcpListener> {
    use actix_web::rt::net::TcpSocket;
    let socket = if address.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(address)?;
    socket.listen(BACKLOG)?.into_std()
}

/// Serves one node on `listener` until `shutdown` completes, then stops it in
/// order (see the module's documentation) and returns. `Err` when the node
/// cannot start (storage, TLS settings) or the HTTP server fails.
///
/// `config.listen` and `config.port` are not used: `listener` is where the
/// node serves. Call it on an actix system (`#[actix_web::main]`, or
/// `actix_web::rt::System::new().block_on(..)`).
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + 'static,
) -> io::Result<()> {
    let address = listener.local_addr()?;
    let workers = config
        .workers
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()));
    let tls = crate::tls::server_config(&config).map_err(io::Error::other)?;
    let peers: Vec<String> = config
        .peers()
        .map(|m| format!("{} at {}", m.id, m.url))
        .collect();
    check_identity(&config)?;
    let (store, storage) = open_store(&config)?;
    let node = Node::start(config, store).map_err(io::Error::other)?;
    let applied = node.committed();
    if applied.iter().any(|(_, &seq)| seq > 0) {
        log::info!(
            "recovered state: applied {applied}, {} events in the log",
            node.status().log_len
        );
    }
    let config = node.config().clone();
    let app_node = node.clone();
    let shutdown_timeout = config.shutdown_timeout.as_secs_f64().ceil() as u64;
    // The access log renders every request, even when its level is filtered
    // out: wrap it in only when it is shown.
    let access_log = log::log_enabled!(target: "actix_web::middleware::logger", log::Level::Debug);
    let server = HttpServer::new(move || {
        App::new()
            .configure(crate::http::configure(app_node.clone()))
            .wrap(middleware::Condition::new(
                access_log,
                middleware::Logger::new("%r %s %b %Dms").log_level(log::Level::Debug),
            ))
    })
    .workers(workers)
    .max_connections(config.max_connections.div_ceil(workers))
    .client_request_timeout(config.header_timeout)
    .client_disconnect_timeout(config.disconnect_timeout)
    .keep_alive(if config.keep_alive.is_zero() {
        KeepAlive::Disabled
    } else {
        KeepAlive::Timeout(config.keep_alive)
    })
    .shutdown_timeout(shutdown_timeout)
    // `shutdown` stops the server: SIGINT must stop it gracefully too.
    .disable_signals();
    let scheme = if tls.is_some() { "https" } else { "http" };
    let server = match tls {
        Some(tls) => server.listen_rustls_0_23(listener, tls),
        None => server.listen(listener),
    }
    .map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {address}: {e}")))?
    .run();
    log::info!("listening on {scheme}://{address} with {workers} workers; storage {storage}");
    if peers.is_empty() {
        log::info!("no peers: a single-node cluster");
    } else {
        log::info!("peers: {}", peers.join(", "));
    }
    if config.cluster_secret.is_none() {
        log::warn!("no cluster_secret: the peer API (replication, clock exchange, fault hook) is open to anyone who can reach this node");
    }
    if config.faults {
        log::warn!("the fault hook is enabled: POST /admin/v1/links/<peer>/pause and /resume");
    }
    let senders = crate::node::replication::spawn_links(&node);
    crate::node::bootstrap::spawn_recovery(&node);
    crate::node::membership::spawn_announcer(&node);
    actix_web::rt::spawn(stop_http_on(shutdown, server.handle(), node.clone()));
    server.await?;

    // The HTTP server has stopped: no request is in flight any more.
    node.begin_shutdown();
    let bound = config.peer_timeout + Duration::from_secs(1);
    let stopped = tokio::time::timeout(bound, async {
        for sender in senders {
            let _ = sender.await;
        }
    })
    .await;
    match stopped {
        Ok(()) => log::info!("shutdown: replication senders stopped"),
        Err(_) => log::warn!(
            "shutdown: a replication sender did not finish its request within {bound:?}; \
             the peer will be sent it again"
        ),
    }
    if node.stop_writer().await {
        log::info!("shutdown: the writer committed its last group");
    }
    log::info!(
        "stopped: applied {}, {} events in the log",
        node.committed(),
        node.status().log_len
    );
    Ok(())
}

/// Stops a node started on another node's data directory (its identity file
/// names that node). A directory without one is new, lost what it held, or
/// the node was never live on it: the node does not trust it to hold all of
/// its writes (see [`crate::core::recovery`]).
fn check_identity(config: &Config) -> io::Result<()> {
    if config.memory {
        return Ok(());
    }
    let path = config.data_dir.join(NODE_IDENTITY);
    match std::fs::read_to_string(&path) {
        Ok(text) if text.trim() == config.node_id => Ok(()),
        Ok(text) => Err(io::Error::other(format!(
            "{} belongs to node {:?}, not to {:?}: give each node its own data_dir",
            config.data_dir.display(),
            text.trim(),
            config.node_id
        ))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io::Error::other(format!(
            "cannot read {}: {e}",
            path.display()
        ))),
    }
}

/// The configured store, and how it keeps the data (for the log).
fn open_store(config: &Config) -> io::Result<(BoxStore, String)> {
    if config.memory {
        return Ok((
            Box::new(MemStore::new()),
            "in memory (lost on restart)".into(),
        ));
    }
    let store = DurableStore::open(&config.data_dir, config.durability)
        .map_err(io::Error::other)?
        .with_cache_bytes(config.cache_bytes)
        .with_log_memory_events(config.log_memory_events)
        .with_log_memory_bytes(config.log_memory_bytes);
    let sync = match config.durability {
        Durability::Fsync => "fsync before every acknowledgement",
        Durability::None => {
            log::warn!("durability = none: a crash of the machine can lose acknowledged writes; use only for throwaway benchmarks");
            "durability = none: commits are NOT synced"
        }
    };
    Ok((
        Box::new(store),
        format!("in {} ({sync})", config.data_dir.display()),
    ))
}

/// Once `shutdown` completes: stop accepting connections and let in-flight
/// requests finish, at most `shutdown_timeout`.
async fn stop_http_on(
    shutdown: impl Future<Output = ()>,
    server: actix_web::dev::ServerHandle,
    node: Arc<Node>,
) {
    shutdown.await;
    // Live trace streams never end by themselves: end them, or they would hold
    // the shutdown for its whole timeout.
    node.tracer().close_streams();
    server.stop(true).await;
    log::info!("shutdown: the HTTP server has stopped");
}
