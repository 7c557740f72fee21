//! The kvnode binary: loads the configuration, binds the configured address and
//! serves it with [`kvnode::server::run`] until SIGTERM or SIGINT.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use kvnode::config::{Config, ConfigError};

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
    /// container health checks: the image has no curl). A node answers 503
    /// until it is live (see --alive).
    Healthcheck {
        /// host:port of the node; default 127.0.0.1 and the configured port
        /// (KVNODE_PORT, PORT, or 5000).
        address: Option<String>,
        /// Exit 0 also while the node is recovering (503 on /health: checking
        /// with its peers or bootstrapping from one), for liveness probes that
        /// must not restart a node in the middle of a bootstrap.
        #[arg(long)]
        alive: bool,
    },
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Some(Command::Healthcheck { address, alive }) = args.command {
        return healthcheck(address, alive);
    }
    let config = match Config::load(args.config.as_deref()).and_then(check_certificates) {
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

/// The certificate files the configuration names must load: one that does not
/// is a bad setting, refused like the others before the node starts (the
/// server and the peer client load them again).
fn check_certificates(config: Config) -> Result<Config, ConfigError> {
    kvnode::tls::server_config(&config)?;
    kvnode::tls::peer_client_config(&config)?;
    Ok(config)
}

fn healthcheck(address: Option<String>, alive: bool) -> ExitCode {
    let address = address.unwrap_or_else(|| {
        let port = ["KVNODE_PORT", "PORT"]
            .iter()
            .find_map(|v| std::env::var(v).ok())
            .unwrap_or_else(|| "5000".into());
        format!("127.0.0.1:{port}")
    });
    match kvnode::probe_health(&address, Duration::from_secs(3)) {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) if alive && e.to_string().contains(" 503 ") => {
            eprintln!("kvnode healthcheck: {address}: recovering");
            ExitCode::SUCCESS
        }
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

/// Serves until the first SIGTERM or SIGINT, then stops gracefully.
#[actix_web::main]
async fn serve(config: Config) -> std::io::Result<()> {
    let listener = kvnode::server::bind(&config.listen, config.port).map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!("cannot listen on {}:{}: {e}", config.listen, config.port),
        )
    })?;
    let shutdown = first_signal(config.shutdown_timeout);
    kvnode::server::run(config, listener, shutdown).await
}

/// Completes on the first SIGTERM or SIGINT, after which in-flight requests have
/// `timeout` to finish. A second one exits at once. The handlers are installed
/// now, before the node serves: a signal that comes once it answers is never
/// left to the default action, which would kill it without a shutdown.
fn first_signal(timeout: Duration) -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{signal, SignalKind};
    let handlers = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    );
    async move {
        let (Ok(mut term), Ok(mut int)) = handlers else {
            log::error!("cannot install the SIGTERM and SIGINT handlers");
            return std::future::pending().await;
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
    }
}
