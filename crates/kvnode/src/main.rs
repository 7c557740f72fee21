//! The kvnode binary: loads the configuration, starts the node, serves HTTP.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use std::time::Duration;

use actix_web::http::KeepAlive;
use actix_web::{middleware, App, HttpServer};
use clap::Parser;
use kvnode::config::Config;
use kvnode::durable::{Durability, DurableStore};
use kvnode::node::{BoxStore, Node};
use kvnode::store::MemStore;

/// The node allocates per request and per event from several threads; glibc's
/// allocator spent about a tenth of a loaded node's CPU in its own locking and
/// consolidation.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A node of the causally consistent key-value store.
///
/// Settings come from defaults, then the TOML file given with --config, then the
/// prototype's NODE_ID, NODES and PORT variables, then KVNODE_* variables
/// (KVNODE_NODE_ID, KVNODE_NODES, KVNODE_PORT, KVNODE_LISTEN, KVNODE_CAUSAL_WAIT,
/// KVNODE_FAULTS...). RUST_LOG sets the log level (default info).
#[derive(Debug, Parser)]
#[command(version, about, long_about)]
struct Args {
    /// A TOML configuration file.
    #[arg(long, short, value_name = "FILE", env = "KVNODE_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Exits 0 when the node at ADDRESS answers GET /health with 200 (for
    /// container health checks: the image has no curl).
    Healthcheck {
        /// host:port of the node; default 127.0.0.1 and the configured port
        /// (KVNODE_PORT, PORT, or 5000).
        address: Option<String>,
    },
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Some(Command::Healthcheck { address }) = args.command {
        return healthcheck(address);
    }
    let config = match Config::load(args.config.as_deref()) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("kvnode: {e}");
            return ExitCode::from(2);
        }
    };
    init_logging(&config.node_id);
    match serve(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("{e}");
            ExitCode::FAILURE
        }
    }
}

fn healthcheck(address: Option<String>) -> ExitCode {
    let address = address.unwrap_or_else(|| {
        let port = ["KVNODE_PORT", "PORT"]
            .iter()
            .find_map(|v| std::env::var(v).ok())
            .unwrap_or_else(|| "5000".into());
        format!("127.0.0.1:{port}")
    });
    match kvnode::probe_health(&address, std::time::Duration::from_secs(3)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kvnode healthcheck: {address}: {e}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(node_id: &str) {
    let node_id = node_id.to_owned();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format(move |buf, record| {
            writeln!(
                buf,
                "{} {:<5} {} {}: {}",
                buf.timestamp_millis(),
                record.level(),
                node_id,
                record.target(),
                record.args()
            )
        })
        .init();
}

#[actix_web::main]
async fn serve(config: Config) -> std::io::Result<()> {
    let address = (config.listen.clone(), config.port);
    let workers = config
        .workers
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()));
    let tls = kvnode::tls::server_config(&config).map_err(std::io::Error::other)?;
    let peers: Vec<String> = config
        .peers()
        .map(|m| format!("{} at {}", m.id, m.url))
        .collect();
    let (store, storage): (BoxStore, String) = if config.memory {
        (
            Box::new(MemStore::new()),
            "in memory (lost on restart)".into(),
        )
    } else {
        let store = DurableStore::open(&config.data_dir, config.durability)
            .map_err(std::io::Error::other)?
            .with_cache_bytes(config.cache_bytes)
            .with_log_memory_events(config.log_memory_events);
        let sync = match config.durability {
            Durability::Fsync => "fsync before every acknowledgement",
            Durability::None => "durability = none: commits are NOT synced",
        };
        (
            Box::new(store),
            format!("in {} ({sync})", config.data_dir.display()),
        )
    };
    if config.durability == Durability::None && !config.memory {
        log::warn!("durability = none: a crash of the machine can lose acknowledged writes; use only for throwaway benchmarks");
    }
    let node = Node::start(config, store).map_err(std::io::Error::other)?;
    let applied = node.applied();
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
            .configure(kvnode::http::configure(app_node.clone()))
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
    // Signals are handled below: SIGINT must stop gracefully too.
    .disable_signals();
    let scheme = if tls.is_some() { "https" } else { "http" };
    let bound = match tls {
        Some(tls) => server.bind_rustls_0_23(address.clone(), tls),
        None => server.bind(address.clone()),
    };
    let server = bound
        .map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("cannot listen on {}:{}: {e}", address.0, address.1),
            )
        })?
        .run();
    log::info!(
        "listening on {scheme}://{}:{} with {workers} workers; storage {storage}",
        address.0,
        address.1
    );
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
    let senders = kvnode::replication::spawn_links(&node);
    actix_web::rt::spawn(stop_on_signal(
        server.handle(),
        node.clone(),
        config.shutdown_timeout,
    ));
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
        node.applied(),
        node.status().log_len
    );
    Ok(())
}

/// On the first SIGTERM or SIGINT: stop accepting connections and let in-flight
/// requests finish, at most `timeout`. On a second one: exit at once.
async fn stop_on_signal(
    server: actix_web::dev::ServerHandle,
    node: std::sync::Arc<kvnode::node::Node>,
    timeout: Duration,
) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        log::error!("cannot install the SIGTERM and SIGINT handlers");
        return;
    };
    let name = tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    };
    log::info!(
        "{name}: shutting down; no new connections, in-flight requests have {timeout:?} to finish"
    );
    actix_web::rt::spawn(async move {
        let again = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        log::warn!("second {again}: exiting now");
        std::process::exit(130);
    });
    // Live trace streams never end by themselves: end them, or they would hold
    // the shutdown for its whole timeout.
    node.tracer().close_streams();
    server.stop(true).await;
    log::info!("shutdown: the HTTP server has stopped");
}
