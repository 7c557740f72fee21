//! `cargo xtask ci`: the checks CI runs, in order, stopping at the first failure.
//!
//! Every step inherits stdout and stderr, so cargo's output (and its colors, as set by
//! `CARGO_TERM_COLOR`) reaches the log unchanged. After the tests, `bench` runs the
//! benchmark suite with tiny counts (`cargo xtask bench --smoke`) to keep it working.
//! Then `openapi` fuzzes a live node with schemathesis, and `python` checks the Python
//! client against live nodes (`cargo xtask pytest`). The last step, `e2e`, runs the
//! end-to-end scenarios against containers (`cargo xtask e2e`) when a Docker engine
//! answers `docker info`; otherwise it says plainly that it skipped them, and why.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// One check: a cargo invocation.
struct Step {
    name: &'static str,
    cargo_args: &'static [&'static str],
}

const STEPS: &[Step] = &[
    Step {
        name: "fmt",
        cargo_args: &["fmt", "--all", "--", "--check"],
    },
    Step {
        name: "clippy",
        cargo_args: &[
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ],
    },
    Step {
        name: "test",
        cargo_args: &["test", "--workspace"],
    },
    // A separate process: it installs its own Ctrl-C handler, and a process has one.
    Step {
        name: "bench",
        cargo_args: &["xtask", "bench", "--smoke"],
    },
];

/// How a step ended, for the summary.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Ok,
    Failed,
    Skipped,
}

pub(crate) fn run(root: &Path) -> anyhow::Result<()> {
    ensure_chromium()?;
    let mut done: Vec<(&str, Duration, Outcome)> = Vec::new();
    for step in STEPS {
        let command_line = format!("cargo {}", step.cargo_args.join(" "));
        println!("\n==> {}: {command_line}", step.name);
        let started = Instant::now();
        let status = Command::new(crate::cargo())
            .args(step.cargo_args)
            .current_dir(root)
            .status()
            .with_context(|| format!("cannot run `{command_line}`"))?;
        if !status.success() {
            done.push((step.name, started.elapsed(), Outcome::Failed));
            print_summary(&done);
            bail!(
                "ci step `{}` failed: `{command_line}` exited with {status}",
                step.name
            );
        }
        done.push((step.name, started.elapsed(), Outcome::Ok));
    }

    println!("\n==> openapi: schemathesis against a live kvnode's /openapi.json");
    let started = Instant::now();
    match crate::schemathesis::run(root) {
        Ok(None) => done.push(("openapi", started.elapsed(), Outcome::Ok)),
        Ok(Some(why)) => {
            println!("skipped schemathesis: {why}");
            done.push(("openapi", started.elapsed(), Outcome::Skipped));
        }
        Err(err) => {
            done.push(("openapi", started.elapsed(), Outcome::Failed));
            print_summary(&done);
            return Err(err.context("ci step `openapi` failed"));
        }
    }

    println!("\n==> python: cargo xtask pytest (the Python client against live nodes)");
    let started = Instant::now();
    if let Err(err) = crate::python::run(root) {
        done.push(("python", started.elapsed(), Outcome::Failed));
        print_summary(&done);
        return Err(err.context("ci step `python` failed"));
    }
    done.push(("python", started.elapsed(), Outcome::Ok));

    println!("\n==> e2e: cargo xtask e2e");
    let started = Instant::now();
    match crate::image::docker_answers() {
        Err(why) => {
            println!("skipped e2e: {why:#}");
            println!("(the end-to-end scenarios need a Docker engine; run `cargo xtask e2e` where one answers)");
            done.push(("e2e", started.elapsed(), Outcome::Skipped));
        }
        Ok(()) => {
            let result = crate::e2e::run(root, &crate::e2e::Args::default());
            let outcome = if result.is_ok() {
                Outcome::Ok
            } else {
                Outcome::Failed
            };
            done.push(("e2e", started.elapsed(), outcome));
            if let Err(err) = result {
                print_summary(&done);
                return Err(err.context("ci step `e2e` failed"));
            }
        }
    }
    print_summary(&done);
    Ok(())
}

fn print_summary(done: &[(&str, Duration, Outcome)]) {
    println!("\n==> summary");
    for &(name, elapsed, outcome) in done {
        let outcome = match outcome {
            Outcome::Ok => "ok",
            Outcome::Failed => "FAILED",
            Outcome::Skipped => "skipped",
        };
        println!("    {name:<8} {outcome:<7} {:>7.1}s", elapsed.as_secs_f64());
    }
}

/// The explorer's browser test drives Debian's `chromium`: installs it with
/// apt-get when it is missing and this runs as root, or says how to.
fn ensure_chromium() -> anyhow::Result<()> {
    let found = |name: &str| {
        Command::new("sh")
            .args(["-c", &format!("command -v {name}")])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if found("chromium") || std::env::var_os("KVNODE_SKIP_BROWSER_TEST").is_some() {
        return Ok(());
    }
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.trim_ascii() == b"0");
    if !(root && found("apt-get")) {
        bail!(
            "the explorer's browser test needs Chromium: install it (Debian: `apt-get install \
             chromium`), or set KVNODE_SKIP_BROWSER_TEST=1 to skip that test"
        );
    }
    println!("==> setup: apt-get install chromium (for the explorer's browser test)");
    for args in [
        &["update", "-qq"][..],
        &[
            "install",
            "-y",
            "-qq",
            "--no-install-recommends",
            "chromium",
            "fonts-dejavu-core",
        ][..],
    ] {
        let status = Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .context("cannot run apt-get")?;
        if !status.success() {
            bail!(
                "apt-get {} failed ({status}); install chromium by hand",
                args.join(" ")
            );
        }
    }
    Ok(())
}
