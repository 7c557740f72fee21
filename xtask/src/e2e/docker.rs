//! The Docker side of the end-to-end run: the compose project and single containers.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use anyhow::{bail, Context};

/// A compose project: which tool, which files, which name, which variables.
#[derive(Debug)]
pub(crate) struct Compose {
    /// `docker-compose` (v1), or `docker` with `compose` (v2).
    program: Vec<OsString>,
    project: String,
    files: Vec<PathBuf>,
    env: Vec<(String, String)>,
}

impl Compose {
    /// Uses `docker-compose` when it answers, else `docker compose`.
    pub(crate) fn detect(
        project: &str,
        files: Vec<PathBuf>,
        env: Vec<(String, String)>,
    ) -> anyhow::Result<Self> {
        let candidates: [&[&str]; 2] = [&["docker-compose"], &["docker", "compose"]];
        for program in candidates {
            let answers = Command::new(program[0])
                .args(&program[1..])
                .arg("version")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|status| status.success());
            if answers {
                return Ok(Self {
                    program: program.iter().map(OsString::from).collect(),
                    project: project.to_owned(),
                    files,
                    env,
                });
            }
        }
        bail!("neither `docker-compose` nor `docker compose` answers")
    }

    /// The compose command line for `args`, with the project's name, files and
    /// variables.
    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(&self.program[0]);
        command.args(&self.program[1..]).args(["-p", &self.project]);
        for file in &self.files {
            command.arg("-f").arg(file);
        }
        command
            .args(args)
            .envs(self.env.iter().map(|(k, v)| (k, v)));
        command
    }

    /// Runs a compose command, its output shown.
    fn run(&self, args: &[&str]) -> anyhow::Result<()> {
        let status = self
            .command(args)
            .stdin(Stdio::null())
            .status()
            .with_context(|| format!("cannot run compose {}", args.join(" ")))?;
        if !status.success() {
            bail!("compose {} failed ({status})", args.join(" "));
        }
        Ok(())
    }

    pub(crate) fn up(&self) -> anyhow::Result<()> {
        self.run(&["up", "-d"])
    }

    /// Removes the project's containers, networks and volumes.
    pub(crate) fn down(&self) -> anyhow::Result<()> {
        self.run(&["down", "-v", "--remove-orphans", "--timeout", "5"])
    }

    /// The id of the container of `service`.
    pub(crate) fn container_id(&self, service: &str) -> anyhow::Result<String> {
        let output = self
            .command(&["ps", "-q", service])
            .output()
            .context("cannot run compose ps")?;
        let id = String::from_utf8_lossy(&output.stdout).trim().to_owned();
        if !output.status.success() || id.is_empty() {
            bail!(
                "compose ps found no container for {service}: {}",
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        Ok(id)
    }

    /// Every container's log, with service prefixes.
    pub(crate) fn logs(&self) -> anyhow::Result<Vec<u8>> {
        let output = self
            .command(&["logs", "--no-color"])
            .output()
            .context("cannot run compose logs")?;
        let mut all = output.stdout;
        all.extend_from_slice(&output.stderr);
        Ok(all)
    }
}

/// Runs `docker args...` and returns its standard output, trimmed; fails with its
/// standard error.
pub(crate) fn docker(args: &[&str]) -> anyhow::Result<String> {
    let output = Command::new("docker")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run docker {}", args.join(" ")))?;
    if !output.status.success() {
        bail!(
            "docker {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

/// The health Docker reports for a container (`healthy`, `starting`, ...).
pub(crate) fn health_status(container: &str) -> anyhow::Result<String> {
    docker(&[
        "inspect",
        "--format",
        "{{if .State.Health}}{{.State.Health.Status}}{{else}}none{{end}}",
        container,
    ])
}

/// One network a container is attached to, and its aliases there.
#[derive(Debug, Clone)]
pub(crate) struct Attachment {
    pub(crate) network: String,
    pub(crate) aliases: Vec<String>,
}

/// The networks `container` is attached to.
pub(crate) fn attachments(container: &str) -> anyhow::Result<Vec<Attachment>> {
    let json = docker(&[
        "inspect",
        "--format",
        "{{json .NetworkSettings.Networks}}",
        container,
    ])?;
    let networks: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(&json).context("docker inspect printed invalid JSON")?;
    Ok(networks
        .into_iter()
        .map(|(network, settings)| Attachment {
            network,
            aliases: settings["Aliases"]
                .as_array()
                .map(|aliases| {
                    aliases
                        .iter()
                        .filter_map(|a| a.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default(),
        })
        .collect())
}

/// Connects `container` to `network` with `aliases` (host names other containers of
/// the network resolve to it).
pub(crate) fn connect(container: &str, network: &str, aliases: &[String]) -> anyhow::Result<()> {
    let mut args = vec!["network", "connect"];
    for alias in aliases {
        args.extend(["--alias", alias]);
    }
    args.extend([network, container]);
    docker(&args).map(drop)
}

pub(crate) fn disconnect(container: &str, network: &str) -> anyhow::Result<()> {
    docker(&["network", "disconnect", network, container]).map(drop)
}

/// Creates a bridge network unless it exists.
pub(crate) fn ensure_network(name: &str) -> anyhow::Result<()> {
    if docker(&["network", "inspect", name]).is_err() {
        docker(&["network", "create", name])?;
    }
    Ok(())
}

/// Removes a network if it exists.
pub(crate) fn remove_network(name: &str) -> anyhow::Result<()> {
    if docker(&["network", "inspect", name]).is_ok() {
        docker(&["network", "rm", name])?;
    }
    Ok(())
}

/// Empties the named volume mounted at `/data` in `container` (stopped), as a
/// lost or replaced disk would leave it. The image has no shell, so this is
/// done from the host, through the volume's mount point (which needs root).
pub(crate) fn wipe_data_volume(container: &str) -> anyhow::Result<String> {
    let volume = docker(&[
        "inspect",
        "--format",
        "{{range .Mounts}}{{if eq .Destination \"/data\"}}{{.Name}}{{end}}{{end}}",
        container,
    ])?;
    anyhow::ensure!(!volume.is_empty(), "{container} has no volume at /data");
    let mountpoint = docker(&["volume", "inspect", "--format", "{{.Mountpoint}}", &volume])?;
    let entries = std::fs::read_dir(&mountpoint).with_context(|| {
        format!("cannot read the volume {volume} at {mountpoint} (this needs root)")
    })?;
    for entry in entries {
        let path = entry?.path();
        let removed = if path.is_dir() {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
        removed.with_context(|| format!("cannot remove {}", path.display()))?;
    }
    Ok(volume)
}

/// The image a container runs, as it was asked for (e.g. `kvnode:0.1.0`).
pub(crate) fn image(container: &str) -> anyhow::Result<String> {
    docker(&["inspect", "--format", "{{.Config.Image}}", container])
}

/// A container's environment, `NAME=value` each (the image's variables
/// included).
pub(crate) fn env(container: &str) -> anyhow::Result<Vec<String>> {
    let json = docker(&["inspect", "--format", "{{json .Config.Env}}", container])?;
    serde_json::from_str(&json).context("docker inspect printed invalid JSON")
}

/// The host port published for `port` (e.g. `5000/tcp`) of a running
/// container.
pub(crate) fn host_port(container: &str, port: &str) -> anyhow::Result<u16> {
    let published = docker(&["port", container, port])?;
    // One line per binding, e.g. `127.0.0.1:49153` or `[::]:49153`.
    let first = published
        .lines()
        .next()
        .with_context(|| format!("{container} publishes no {port}"))?;
    first
        .rsplit_once(':')
        .and_then(|(_, host_port)| host_port.trim().parse().ok())
        .with_context(|| format!("docker port printed {first:?} for {container} {port}"))
}

/// A container's log, standard output and error.
pub(crate) fn logs(container: &str) -> anyhow::Result<Vec<u8>> {
    let output = Command::new("docker")
        .args(["logs", container])
        .stdin(Stdio::null())
        .output()
        .context("cannot run docker logs")?;
    if !output.status.success() {
        bail!(
            "docker logs {container} failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    let mut all = output.stdout;
    all.extend_from_slice(&output.stderr);
    Ok(all)
}
