//! `cargo xtask e2e`: the end-to-end scenarios, against three containers.
//!
//! The run builds the image (`cargo xtask image`), brings the compose project
//! `kvnode-e2e` down (docker-compose 1.29 cannot recreate containers from a rebuilt
//! image) and up again from `deploy/compose.yaml` with the `deploy/compose.e2e.yaml`
//! override (fault hook on, a cluster secret, no restart policy), on host ports
//! 15001-15003 so that it runs beside a local cluster on 5001-5003. It waits until
//! Docker reports every container healthy and every node answers, runs each
//! scenario, and prints a table of scenario, result and time.
//!
//! Whatever happens (a failed scenario, an error, a panic, Ctrl-C) the project is
//! torn down: containers, networks and volumes. The nodes' logs are kept in
//! `target/e2e/kvnode-e2e.log`. The run fails when any scenario does.
//!
//! Every scenario bounds its own time: fixed amounts of work, and every wait is a
//! poll with a deadline. The scenarios are in [`scenarios`].

mod docker;
mod http;
mod scenarios;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};

use self::docker::Compose;
use self::http::NodeClient;
use self::scenarios::{Cluster, SCENARIOS};
use crate::image;

/// The compose project name: its containers, network and volumes are named after it.
const PROJECT: &str = "kvnode-e2e";
/// The services of `deploy/compose.yaml`, in order.
const SERVICES: [&str; 3] = ["node1", "node2", "node3"];
/// The bearer token the e2e nodes share (`deploy/compose.e2e.yaml`).
const CLUSTER_SECRET: &str = "e2e-cluster-secret-not-for-production";
/// How long the containers get to become healthy after `up`.
const HEALTHY_DEADLINE: Duration = Duration::from_secs(60);

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Do not build the image: use kvnode:latest as it is.
    #[arg(long)]
    no_build: bool,
    /// Run only this scenario (repeat for several); default: all of them.
    #[arg(long = "scenario", value_name = "NAME")]
    scenarios: Vec<String>,
    /// Seed of the random choices (the run prints the one it used).
    #[arg(long)]
    seed: Option<u64>,
    /// Host port of node1; node2 and node3 get the next two.
    #[arg(long, default_value_t = DEFAULT_BASE_PORT)]
    base_port: u16,
}

/// Host port of node1 in the e2e project: beside a local cluster on 5001-5003.
const DEFAULT_BASE_PORT: u16 = 15001;

impl Default for Args {
    /// What `cargo xtask ci` runs: every scenario, image built, a fresh seed.
    fn default() -> Self {
        Self {
            no_build: false,
            scenarios: Vec::new(),
            seed: None,
            base_port: DEFAULT_BASE_PORT,
        }
    }
}

/// The outcome of one scenario.
struct Outcome {
    name: &'static str,
    elapsed: Duration,
    result: anyhow::Result<String>,
}

pub(crate) fn run(root: &Path, args: &Args) -> anyhow::Result<()> {
    let selected = select(&args.scenarios)?;
    let base_port = args.base_port;
    ensure!(
        base_port.checked_add(2).is_some(),
        "--base-port {base_port} leaves no room for three nodes"
    );
    let seed = args.seed.unwrap_or_else(random_seed);
    image::docker_answers()?;

    let ports: Vec<u16> = (0..3).map(|i| base_port + i).collect();
    let tag = if args.no_build {
        "latest".to_owned()
    } else {
        image::build(root)?.tag
    };
    let mut env: Vec<(String, String)> = ports
        .iter()
        .enumerate()
        .map(|(i, port)| (format!("KVNODE_HOST_PORT_{}", i + 1), port.to_string()))
        .collect();
    env.push(("KVNODE_TAG".into(), tag.clone()));
    let deploy = root.join("deploy");
    let compose = Compose::detect(
        PROJECT,
        vec![deploy.join("compose.yaml"), deploy.join("compose.e2e.yaml")],
        env,
    )?;
    let access_network = format!("{PROJECT}-access");
    let teardown = Arc::new(Teardown {
        compose,
        access_network: access_network.clone(),
        log_path: root
            .join("target")
            .join("e2e")
            .join(format!("{PROJECT}.log")),
        done: Mutex::new(false),
    });
    let on_signal = Arc::clone(&teardown);
    if let Err(err) = ctrlc::set_handler(move || {
        eprintln!("\ninterrupted: tearing the e2e cluster down");
        on_signal.run();
        std::process::exit(130);
    }) {
        eprintln!("warning: cannot install the Ctrl-C handler ({err}); Ctrl-C will not tear the cluster down");
    }
    // Tears down on every way out, a panic included.
    let _guard = TeardownOnDrop(Arc::clone(&teardown));

    println!(
        "\n==> e2e: project {PROJECT}, image kvnode:{tag}, host ports {base_port}-{}, seed {seed}",
        base_port + 2
    );
    teardown.compose.down()?;
    for port in &ports {
        ensure!(
            TcpListener::bind(("0.0.0.0", *port)).is_ok(),
            "port {port} is in use; choose others with --base-port"
        );
    }
    teardown.compose.up()?;
    let started = Instant::now();
    let cluster = wait_healthy(&teardown.compose, &ports, &access_network, seed)?;
    println!(
        "==> cluster healthy after {:.1}s",
        started.elapsed().as_secs_f64()
    );

    let mut outcomes = Vec::new();
    for scenario in selected {
        println!("\n==> scenario {}: {}", scenario.name, scenario.about);
        let started = Instant::now();
        let result =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| (scenario.run)(&cluster)))
                .unwrap_or_else(|_| Err(anyhow::anyhow!("the scenario panicked")));
        let elapsed = started.elapsed();
        match &result {
            Ok(detail) => println!("    pass ({:.1}s): {detail}", elapsed.as_secs_f64()),
            Err(err) => println!("    FAIL ({:.1}s): {err:#}", elapsed.as_secs_f64()),
        }
        outcomes.push(Outcome {
            name: scenario.name,
            elapsed,
            result,
        });
    }

    teardown.run();
    print_table(&outcomes);
    println!("node logs: {}", teardown.log_path.display());
    let failed: Vec<&str> = outcomes
        .iter()
        .filter(|o| o.result.is_err())
        .map(|o| o.name)
        .collect();
    if !failed.is_empty() {
        bail!("e2e scenarios failed: {}", failed.join(", "));
    }
    Ok(())
}

/// The scenarios named on the command line, in their usual order; all by default.
fn select(names: &[String]) -> anyhow::Result<Vec<&'static scenarios::Scenario>> {
    for name in names {
        if !SCENARIOS.iter().any(|s| s.name == name) {
            let known: Vec<&str> = SCENARIOS.iter().map(|s| s.name).collect();
            bail!(
                "no scenario named {name:?}; the scenarios are {}",
                known.join(", ")
            );
        }
    }
    Ok(SCENARIOS
        .iter()
        .filter(|s| names.is_empty() || names.iter().any(|n| n == s.name))
        .collect())
}

fn random_seed() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(std::process::id())
}

/// Polls until Docker reports every container healthy and every node answers
/// `GET /health` through its published port.
fn wait_healthy(
    compose: &Compose,
    ports: &[u16],
    access_network: &str,
    seed: u64,
) -> anyhow::Result<Cluster> {
    let mut containers = Vec::new();
    for service in SERVICES {
        containers.push(compose.container_id(service)?);
    }
    let nodes: Vec<NodeClient> = SERVICES
        .iter()
        .zip(ports)
        .map(|(id, port)| {
            NodeClient::new(
                id,
                &format!("http://127.0.0.1:{port}"),
                Some(CLUSTER_SECRET),
            )
        })
        .collect();
    let deadline = Instant::now() + HEALTHY_DEADLINE;
    for (node, container) in nodes.iter().zip(&containers) {
        loop {
            let docker_health = docker::health_status(container)?;
            let answer = node.health();
            if docker_health == "healthy" {
                if let Ok(health) = &answer {
                    ensure!(
                        health.node == node.id,
                        "{} answers as {}",
                        node.url,
                        health.node
                    );
                    break;
                }
            }
            if Instant::now() >= deadline {
                let why = match answer {
                    Ok(_) => "answers".to_owned(),
                    Err(err) => format!("{err:#}"),
                };
                bail!(
                    "{} is not healthy after {HEALTHY_DEADLINE:?}: Docker says {docker_health}; GET /health: {why}",
                    node.id
                );
            }
            thread::sleep(Duration::from_millis(250));
        }
    }
    Ok(Cluster {
        nodes,
        containers,
        access_network: access_network.to_owned(),
        seed,
    })
}

fn print_table(outcomes: &[Outcome]) {
    let width = outcomes
        .iter()
        .map(|o| o.name.len())
        .max()
        .unwrap_or(0)
        .max("scenario".len());
    println!("\n==> e2e results");
    println!(
        "{:<width$}  {:<6}  {:>7}  detail",
        "scenario", "result", "time"
    );
    for outcome in outcomes {
        let (result, detail) = match &outcome.result {
            Ok(detail) => ("pass", detail.clone()),
            Err(err) => ("FAIL", format!("{err:#}")),
        };
        println!(
            "{:<width$}  {result:<6}  {:>6.1}s  {detail}",
            outcome.name,
            outcome.elapsed.as_secs_f64()
        );
    }
    let passed = outcomes.iter().filter(|o| o.result.is_ok()).count();
    println!("{passed} of {} passed", outcomes.len());
}

/// Saves the nodes' logs and brings the project down, once, from whichever thread
/// gets there first.
struct Teardown {
    compose: Compose,
    access_network: String,
    log_path: PathBuf,
    done: Mutex<bool>,
}

impl Teardown {
    fn run(&self) {
        let mut done = self.done.lock().unwrap_or_else(|e| e.into_inner());
        if *done {
            return;
        }
        if let Err(err) = self.save_logs() {
            eprintln!("error: the nodes' logs are not saved: {err:#}");
        }
        println!("\n==> tearing down {PROJECT}: containers, networks, volumes");
        if let Err(err) = self.compose.down() {
            eprintln!("error: {err:#}");
        }
        if let Err(err) = docker::remove_network(&self.access_network) {
            eprintln!("error: {err:#}");
        }
        *done = true;
    }

    fn save_logs(&self) -> anyhow::Result<()> {
        if let Some(dir) = self.log_path.parent() {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
        std::fs::write(&self.log_path, self.compose.logs()?)
            .with_context(|| format!("cannot write {}", self.log_path.display()))
    }
}

struct TeardownOnDrop(Arc<Teardown>);

impl Drop for TeardownOnDrop {
    fn drop(&mut self) {
        self.0.run();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deploy_file(name: &str) -> String {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../deploy")
            .join(name);
        std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
    }

    #[test]
    fn the_override_sets_the_secret_the_scenarios_send() {
        let mut file: serde_yaml::Value =
            serde_yaml::from_str(&deploy_file("compose.e2e.yaml")).unwrap();
        file.apply_merge().unwrap();
        for service in SERVICES {
            assert_eq!(
                file["services"][service]["environment"]["KVNODE_CLUSTER_SECRET"],
                CLUSTER_SECRET
            );
        }
    }

    #[test]
    fn compose_takes_the_ports_and_tag_the_run_sets() {
        let compose = deploy_file("compose.yaml");
        for (index, service) in SERVICES.iter().enumerate() {
            let variable = format!("KVNODE_HOST_PORT_{}", index + 1);
            assert!(
                compose.contains(&format!("${{{variable}:-500{}}}:5000", index + 1)),
                "{service}'s host port does not come from {variable}"
            );
        }
        assert!(compose.contains("kvnode:${KVNODE_TAG:-latest}"));
    }

    #[test]
    fn scenarios_have_unique_names() {
        let names: std::collections::BTreeSet<&str> = SCENARIOS.iter().map(|s| s.name).collect();
        assert_eq!(names.len(), SCENARIOS.len());
        assert!(select(&["partition".to_owned()]).is_ok());
        assert!(select(&["no-such".to_owned()]).is_err());
    }
}
