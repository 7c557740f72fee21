//! `cargo xtask image`: build the `kvnode` container image from scratch.
//!
//! No registry is needed: the binaries are built on the host as static executables
//! (`+crt-static` on the gnu target; a static glibc binary runs in an empty root and
//! resolves peer host names through the `/etc/hosts` and DNS that Docker provides),
//! staged with an empty `data/` directory in `target/kvnode-image/`, and
//! `deploy/Dockerfile` copies them into an image that starts `FROM scratch`.
//!
//! The static build goes to `target/x86_64-unknown-linux-gnu/release`, so its
//! `RUSTFLAGS` do not invalidate the cache of the ordinary builds.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};

/// The only target the images are built for.
const TARGET: &str = "x86_64-unknown-linux-gnu";
/// Static linking; debug info stripped (it would double the image), symbols kept
/// for readable panics.
const STATIC_RUSTFLAGS: &str = "-C target-feature=+crt-static -C strip=debuginfo";
/// How long `docker info` may take before we say no engine answers.
const DOCKER_INFO_TIMEOUT: Duration = Duration::from_secs(15);
/// The image's repository name.
pub(crate) const IMAGE_NAME: &str = "kvnode";

/// A built image.
#[derive(Debug)]
pub(crate) struct Image {
    /// Its tag besides `latest`: the workspace version.
    pub(crate) tag: String,
    /// The binaries it contains.
    pub(crate) binaries: Vec<&'static str>,
    /// Its size in bytes, as `docker image inspect` reports it.
    pub(crate) size: u64,
}

/// What the image step needs to know about the workspace.
#[derive(Debug, PartialEq, Eq)]
struct Workspace {
    version: String,
    target_dir: PathBuf,
    /// Whether the `kvctl` package has a `kvctl` binary target yet.
    has_kvctl_binary: bool,
}

pub(crate) fn run(root: &Path) -> anyhow::Result<()> {
    let image = build(root)?;
    println!(
        "\nbuilt {IMAGE_NAME}:{} and {IMAGE_NAME}:latest with {}: {}",
        image.tag,
        image.binaries.join(" and "),
        human_size(image.size)
    );
    Ok(())
}

/// Builds the static binaries and the image tagged `kvnode:<version>` and
/// `kvnode:latest`.
pub(crate) fn build(root: &Path) -> anyhow::Result<Image> {
    docker_answers()?;
    let workspace = workspace(root)?;
    let mut binaries = vec!["kvnode"];
    if workspace.has_kvctl_binary {
        binaries.push("kvctl");
    } else {
        println!("note: the kvctl package has no binary target yet; the image holds kvnode only");
    }

    let mut cargo = Command::new(crate::cargo());
    cargo
        .args(["build", "--release", "--target", TARGET])
        .current_dir(root)
        .env("RUSTFLAGS", STATIC_RUSTFLAGS);
    for binary in &binaries {
        cargo.args(["-p", binary]);
    }
    println!("==> static build: RUSTFLAGS=\"{STATIC_RUSTFLAGS}\" cargo build --release --target {TARGET}");
    let status = cargo.status().context("cannot run cargo build")?;
    ensure!(status.success(), "the static build failed ({status})");

    let context = stage_context(&workspace, &binaries)?;
    let versioned_tag = format!("{IMAGE_NAME}:{}", workspace.version);
    let latest_tag = format!("{IMAGE_NAME}:latest");
    let dockerfile = root.join("deploy").join("Dockerfile");
    let replaced = image_id(&latest_tag);
    println!("==> docker build -t {versioned_tag} -t {latest_tag}");
    let status = Command::new("docker")
        .arg("build")
        .arg("-f")
        .arg(&dockerfile)
        .args(["-t", &versioned_tag, "-t", &latest_tag])
        .arg("--build-arg")
        .arg(format!("VERSION={}", workspace.version))
        .arg(&context)
        .status()
        .context("cannot run docker build")?;
    ensure!(status.success(), "docker build failed ({status})");

    let size = image_size(&versioned_tag)?;
    if let Some(old) = replaced {
        remove_if_untagged(&old);
    }
    Ok(Image {
        tag: workspace.version,
        binaries,
        size,
    })
}

/// Fails with a plain message when no Docker engine answers `docker info` within
/// [`DOCKER_INFO_TIMEOUT`].
pub(crate) fn docker_answers() -> anyhow::Result<()> {
    let mut child = Command::new("docker")
        .args(["info", "--format", "{{.ServerVersion}}"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot run `docker` (is it installed?)")?;
    let deadline = Instant::now() + DOCKER_INFO_TIMEOUT;
    while child.try_wait()?.is_none() {
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("no Docker engine answered `docker info` within {DOCKER_INFO_TIMEOUT:?}");
        }
        thread::sleep(Duration::from_millis(50));
    }
    let output = child.wait_with_output()?;
    if !output.status.success() {
        bail!(
            "no Docker engine answers `docker info`: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}

fn workspace(root: &Path) -> anyhow::Result<Workspace> {
    let output = Command::new(crate::cargo())
        .args(["metadata", "--format-version", "1", "--no-deps"])
        .current_dir(root)
        .output()
        .context("cannot run cargo metadata")?;
    ensure!(
        output.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&output.stderr).trim()
    );
    let metadata: serde_json::Value =
        serde_json::from_slice(&output.stdout).context("cargo metadata printed invalid JSON")?;
    parse_metadata(&metadata)
}

fn parse_metadata(metadata: &serde_json::Value) -> anyhow::Result<Workspace> {
    let packages = metadata["packages"]
        .as_array()
        .context("cargo metadata lists no packages")?;
    let package = |name: &str| packages.iter().find(|p| p["name"] == name);
    let kvnode = package("kvnode").context("the workspace has no kvnode package")?;
    let version = kvnode["version"]
        .as_str()
        .context("kvnode has no version")?
        .to_owned();
    let has_kvctl_binary = package("kvctl").is_some_and(|kvctl| {
        kvctl["targets"].as_array().is_some_and(|targets| {
            targets.iter().any(|t| {
                t["name"] == "kvctl"
                    && t["kind"]
                        .as_array()
                        .is_some_and(|kinds| kinds.iter().any(|k| k == "bin"))
            })
        })
    });
    let target_dir = metadata["target_directory"]
        .as_str()
        .context("cargo metadata names no target directory")?
        .into();
    Ok(Workspace {
        version,
        target_dir,
        has_kvctl_binary,
    })
}

/// `target/kvnode-image/`: `bin/` with the binaries and an empty `data/`.
fn stage_context(workspace: &Workspace, binaries: &[&str]) -> anyhow::Result<PathBuf> {
    let context = workspace.target_dir.join("kvnode-image");
    if context.exists() {
        fs::remove_dir_all(&context)
            .with_context(|| format!("cannot empty {}", context.display()))?;
    }
    let bin = context.join("bin");
    fs::create_dir_all(&bin).with_context(|| format!("cannot create {}", bin.display()))?;
    fs::create_dir_all(context.join("data"))
        .with_context(|| format!("cannot create {}/data", context.display()))?;
    let built = workspace.target_dir.join(TARGET).join("release");
    for binary in binaries {
        let from = built.join(binary);
        fs::copy(&from, bin.join(binary))
            .with_context(|| format!("cannot copy {} into the context", from.display()))?;
    }
    Ok(context)
}

/// The id of the image `tag` names, if any.
fn image_id(tag: &str) -> Option<String> {
    let output = Command::new("docker")
        .args(["image", "inspect", "--format", "{{.Id}}", tag])
        .output()
        .ok()?;
    let id = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    (output.status.success() && !id.is_empty()).then_some(id)
}

/// Removes an image the new build replaced, once no tag names it, so rebuilds do not
/// pile up unnamed images. One that a container still uses stays.
fn remove_if_untagged(id: &str) {
    let tags = Command::new("docker")
        .args(["image", "inspect", "--format", "{{len .RepoTags}}", id])
        .output();
    let untagged = tags.is_ok_and(|out| {
        out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == "0"
    });
    if untagged {
        let _ = Command::new("docker")
            .args(["image", "rm", id])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

fn image_size(tag: &str) -> anyhow::Result<u64> {
    let output = Command::new("docker")
        .args(["image", "inspect", "--format", "{{.Size}}", tag])
        .output()
        .context("cannot run docker image inspect")?;
    ensure!(
        output.status.success(),
        "docker image inspect {tag} failed: {}",
        String::from_utf8_lossy(&output.stderr).trim()
    );
    let text = String::from_utf8_lossy(&output.stdout);
    text.trim()
        .parse()
        .with_context(|| format!("docker image inspect printed {text:?}, not a size"))
}

/// Megabytes as Docker counts them (10^6 bytes), and the exact count.
fn human_size(bytes: u64) -> String {
    format!("{:.1} MB ({bytes} bytes)", bytes as f64 / 1e6)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metadata(kvctl_targets: serde_json::Value) -> serde_json::Value {
        serde_json::json!({
            "target_directory": "/w/target",
            "packages": [
                {"name": "kvnode", "version": "0.1.0",
                 "targets": [{"name": "kvnode", "kind": ["lib"]}, {"name": "kvnode", "kind": ["bin"]}]},
                {"name": "kvctl", "version": "0.1.0", "targets": kvctl_targets},
            ]
        })
    }

    #[test]
    fn kvctl_binary_is_included_only_when_it_exists() {
        let library_only = metadata(serde_json::json!([{"name": "kvctl", "kind": ["lib"]}]));
        assert_eq!(
            parse_metadata(&library_only).unwrap(),
            Workspace {
                version: "0.1.0".into(),
                target_dir: "/w/target".into(),
                has_kvctl_binary: false,
            }
        );
        let with_binary = metadata(serde_json::json!([
            {"name": "kvctl", "kind": ["lib"]},
            {"name": "kvctl", "kind": ["bin"]},
        ]));
        assert!(parse_metadata(&with_binary).unwrap().has_kvctl_binary);
    }

    #[test]
    fn sizes_are_in_decimal_megabytes() {
        assert_eq!(human_size(21_400_000), "21.4 MB (21400000 bytes)");
    }
}
