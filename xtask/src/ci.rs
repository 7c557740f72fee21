//! `cargo xtask ci`: the checks CI runs, in order, stopping at the first failure.
//!
//! Every step inherits stdout and stderr, so cargo's output (and its colors, as set by
//! `CARGO_TERM_COLOR`) reaches the log unchanged.

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
];

pub(crate) fn run(root: &Path) -> anyhow::Result<()> {
    let mut done: Vec<(&str, Duration)> = Vec::new();
    for step in STEPS {
        let command_line = format!("cargo {}", step.cargo_args.join(" "));
        println!("\n==> {}: {command_line}", step.name);
        let started = Instant::now();
        let status = Command::new(crate::cargo())
            .args(step.cargo_args)
            .current_dir(root)
            .status()
            .with_context(|| format!("cannot run `{command_line}`"))?;
        done.push((step.name, started.elapsed()));
        if !status.success() {
            print_summary(&done, Some(step.name));
            bail!(
                "ci step `{}` failed: `{command_line}` exited with {status}",
                step.name
            );
        }
    }
    print_summary(&done, None);
    Ok(())
}

fn print_summary(done: &[(&str, Duration)], failed: Option<&str>) {
    println!("\n==> summary");
    for &(name, elapsed) in done {
        let outcome = if failed == Some(name) { "FAILED" } else { "ok" };
        println!("    {name:<8} {outcome:<6} {:>7.1}s", elapsed.as_secs_f64());
    }
}
