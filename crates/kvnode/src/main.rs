//! The kvnode binary: loads the configuration, starts the node, serves HTTP.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use actix_web::{middleware, App, HttpServer};
use clap::Parser;
use kvnode::config::Config;
use kvnode::node::Node;
use kvnode::store::MemStore;

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
}

fn main() -> ExitCode {
    let args = Args::parse();
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
    let peers: Vec<String> = config
        .peers()
        .map(|m| format!("{} at {}", m.id, m.url))
        .collect();
    let node = Node::start(config, Box::new(MemStore::new())).map_err(std::io::Error::other)?;
    let app_node = node.clone();
    let server = HttpServer::new(move || {
        App::new()
            .configure(kvnode::http::configure(app_node.clone()))
            .wrap(middleware::Logger::new("%r %s %b %Dms").log_level(log::Level::Debug))
    })
    .workers(workers)
    .bind(address.clone())
    .map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!("cannot listen on {}:{}: {e}", address.0, address.1),
        )
    })?
    .run();
    log::info!(
        "listening on http://{}:{} with {workers} workers; storage in memory",
        address.0,
        address.1
    );
    if peers.is_empty() {
        log::info!("no peers: a single-node cluster");
    } else {
        log::info!("peers: {}", peers.join(", "));
    }
    if node.config().faults {
        log::warn!("the fault hook is enabled: POST /admin/v1/links/<peer>/pause and /resume");
    }
    kvnode::replication::spawn_links(&node);
    server.await?;
    log::info!("stopped");
    Ok(())
}
