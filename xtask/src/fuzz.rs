//! `cargo xtask fuzz`: runs every cargo-fuzz target of `fuzz/` (one per decoder
//! of the wire and API messages) for a bounded time each.
//!
//! libFuzzer needs a nightly toolchain and the `cargo fuzz` command; when either
//! is missing this says which, and how to get it, and fails. It is not a step of
//! `cargo xtask ci`: CI runs the property tests of the HTTP handlers
//! (`crates/kvnode/tests/hostile_input.rs`) instead. Each target starts from the
//! seeds in `fuzz/seeds/<target>` and keeps what it finds in
//! `fuzz/corpus/<target>` (ignored by git); a crash leaves its input in
//! `fuzz/artifacts/<target>`.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{bail, Context};

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Seconds to fuzz each target.
    #[arg(long, default_value_t = 60)]
    seconds: u64,
    /// Targets to run (default: every target in fuzz/Cargo.toml).
    targets: Vec<String>,
}

/// The toolchain cargo-fuzz runs on.
const TOOLCHAIN: &str = "nightly";

/// A command on the nightly toolchain, without what the calling cargo set.
fn nightly(args: &[&str]) -> Command {
    let mut command = Command::new("rustup");
    command.args(["run", TOOLCHAIN]).args(args);
    for var in [
        "CARGO",
        "RUSTC",
        "RUSTDOC",
        "RUSTUP_TOOLCHAIN",
        "RUSTC_WRAPPER",
    ] {
        command.env_remove(var);
    }
    command
}

fn succeeds(mut command: Command) -> bool {
    command
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// What is missing to run libFuzzer here, in words; empty when nothing is.
fn missing() -> Vec<String> {
    if !succeeds(nightly(&["rustc", "--version"])) {
        return vec![format!(
            "no {TOOLCHAIN} Rust toolchain (cargo-fuzz needs one: `rustup toolchain install {TOOLCHAIN}`)"
        )];
    }
    if !succeeds(nightly(&["cargo", "fuzz", "--version"])) {
        return vec!["the `cargo fuzz` command (`cargo install cargo-fuzz`)".into()];
    }
    Vec::new()
}

/// The `[[bin]]` names of `fuzz/Cargo.toml`.
fn all_targets(fuzz: &Path) -> anyhow::Result<Vec<String>> {
    let manifest = std::fs::read_to_string(fuzz.join("Cargo.toml"))
        .with_context(|| format!("cannot read {}", fuzz.join("Cargo.toml").display()))?;
    let mut targets = Vec::new();
    let mut in_bin = false;
    for line in manifest.lines().map(str::trim) {
        if line.starts_with('[') {
            in_bin = line == "[[bin]]";
        } else if let Some(name) = line.strip_prefix("name = ").filter(|_| in_bin) {
            targets.push(name.trim_matches('"').to_owned());
        }
    }
    Ok(targets)
}

pub(crate) fn run(root: &Path, args: &Args) -> anyhow::Result<()> {
    let fuzz = root.join("fuzz");
    let missing = missing();
    if !missing.is_empty() {
        bail!(
            "cannot run the fuzzers: missing {}. The property tests of the handlers \
             (cargo test -p kvnode --test hostile_input) run without them.",
            missing.join(", ")
        );
    }
    let targets = if args.targets.is_empty() {
        all_targets(&fuzz)?
    } else {
        args.targets.clone()
    };
    let max_time = format!("-max_total_time={}", args.seconds);
    let mut results = Vec::new();
    for target in &targets {
        println!("\n==> fuzz {target} for {} s", args.seconds);
        let corpus = fuzz.join("corpus").join(target);
        std::fs::create_dir_all(&corpus)?;
        let started = Instant::now();
        let status = nightly(&["cargo", "fuzz", "run", target])
            .arg(&corpus)
            .arg(fuzz.join("seeds").join(target))
            .args(["--", &max_time, "-print_final_stats=1"])
            .arg(format!("-dict={}", fuzz.join("json.dict").display()))
            .current_dir(root)
            .status()
            .with_context(|| format!("cannot run cargo fuzz for {target}"))?;
        let corpus_size = std::fs::read_dir(&corpus).map_or(0, |d| d.count());
        results.push((target, status.success(), started.elapsed(), corpus_size));
    }
    println!("\n==> summary");
    for (target, ok, elapsed, corpus) in &results {
        let outcome = if *ok { "ok" } else { "CRASHED" };
        println!(
            "    {target:<14} {outcome:<8} {:>6.0}s  corpus {corpus}",
            elapsed.as_secs_f64()
        );
    }
    let crashed: Vec<_> = results.iter().filter(|r| !r.1).map(|r| r.0).collect();
    if !crashed.is_empty() {
        bail!(
            "crashes in {}: see fuzz/artifacts/<target>/",
            crashed
                .iter()
                .map(|t| t.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    Ok(())
}
