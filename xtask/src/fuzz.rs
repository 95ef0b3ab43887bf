//! `cargo xtask fuzz`: the coverage-guided fuzz targets of `fuzz/` (cargo-fuzz, libFuzzer), each
//! for a while, with a summary of executions, coverage and crashes; and `--seeds`, which
//! captures seed corpora from real traffic with the test broker.
//!
//! Owns: the list of targets, how they are built and run on stable Rust, where their corpora
//! and crashes go, and the summary.
//!
//! Invariants:
//! - Only stable Rust 1.95 is installed; cargo-fuzz passes `-Z` flags (coverage
//!   instrumentation, libFuzzer's entry point), which a stable compiler accepts with
//!   `RUSTC_BOOTSTRAP=1`, set for these commands only. No sanitizer: the bus's crates forbid
//!   unsafe code, and what the targets check (panics, allocation bounds, invariants of what is
//!   decoded) needs none; it would double the build.
//! - The committed seeds in `fuzz/corpus/<target>` are read, never written: what a run finds is
//!   kept in `target/fuzz/corpus/<target>` (reused by the next run) and crashes go to
//!   `target/fuzz/artifacts/<target>`, named in the error.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::Result;
use crate::cmd::Step;

/// The fuzz targets (`fuzz/fuzz_targets/<name>.rs`).
pub(crate) const TARGETS: [&str; 4] =
    ["record_batches", "responses", "consumer_protocol", "envelope"];

/// What one run of a target did.
struct Run {
    target: &'static str,
    executions: u64,
    edges: u64,
    features: u64,
    corpus: u64,
    seconds: u64,
}

fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

fn fuzz_dir() -> PathBuf {
    crate::workspace_root().join("fuzz")
}

fn work_dir(kind: &str, target: &str) -> PathBuf {
    crate::workspace_root().join("target").join("fuzz").join(kind).join(target)
}

/// `cargo fuzz <args>` on stable, without a sanitizer.
fn cargo_fuzz(args: &[&str]) -> Command {
    let mut command = cargo();
    command.arg("fuzz").args(args).env("RUSTC_BOOTSTRAP", "1");
    command
}

/// Runs every target (or `only`) for `seconds` each.
pub(crate) fn run(seconds: u64, only: Option<&str>) -> Result<()> {
    if let Some(only) = only
        && !TARGETS.contains(&only)
    {
        return Err(format!("no fuzz target `{only}`: the targets are {}", TARGETS.join(", ")));
    }
    crate::tools::ensure(&crate::tools::CARGO_FUZZ)?;
    {
        let _step = Step::new("fuzz: build");
        let log = crate::workspace_root().join("target").join("xtask").join("fuzz-build.log");
        crate::cmd::run_with_progress(
            &mut cargo_fuzz(&["build", "--sanitizer", "none"]),
            "building the fuzz targets",
            &log,
        )?;
    }
    let mut runs = Vec::new();
    for target in TARGETS.iter().copied().filter(|t| only.is_none_or(|o| o == *t)) {
        let _step = Step::new(target);
        runs.push(run_target(target, seconds)?);
    }
    println!("{}", table(&runs));
    Ok(())
}

fn run_target(target: &'static str, seconds: u64) -> Result<Run> {
    let corpus = work_dir("corpus", target);
    let artifacts = work_dir("artifacts", target);
    for dir in [&corpus, &artifacts] {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    let seeds = fuzz_dir().join("corpus").join(target);
    let mut command = cargo_fuzz(&["run", "--sanitizer", "none", target]);
    command.arg(&corpus);
    if seeds.is_dir() {
        command.arg(&seeds);
    }
    command
        .arg("--")
        .arg(format!("-max_total_time={seconds}"))
        .arg(format!("-artifact_prefix={}/", artifacts.display()))
        .arg("-print_final_stats=1")
        .current_dir(crate::workspace_root());
    eprintln!("$ {}", crate::cmd::describe(&command));
    let output = command
        .output()
        .map_err(|e| format!("cannot run {}: {e}", crate::cmd::describe(&command)))?;
    let log = String::from_utf8_lossy(&output.stderr);
    let log_path = work_dir("logs", target).with_extension("log");
    if let Some(dir) = log_path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    let _ = std::fs::write(&log_path, log.as_bytes());
    if !output.status.success() {
        let crash = newest(&artifacts).map_or_else(
            || "no artifact was written".to_owned(),
            |p| format!("the input is {}", p.display()),
        );
        let reason = log
            .lines()
            .find(|l| l.contains("panicked at") || l.contains("ERROR: libFuzzer"))
            .unwrap_or("see the log");
        return Err(format!(
            "fuzz target `{target}` found a crash: {reason}; {crash}; reproduce with \
             `RUSTC_BOOTSTRAP=1 cargo fuzz run -s none {target} <input>` (log: {})",
            log_path.display()
        ));
    }
    Ok(Run {
        target,
        executions: stat(&log, "stat::number_of_executed_units:"),
        edges: done_field(&log, "cov:"),
        features: done_field(&log, "ft:"),
        corpus: done_field(&log, "corp:"),
        seconds,
    })
}

/// The newest file of `dir`.
fn newest(dir: &Path) -> Option<PathBuf> {
    std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok())
        .max_by_key(|e| e.metadata().and_then(|m| m.modified()).ok())
        .map(|e| e.path())
}

/// A `-print_final_stats` value.
fn stat(log: &str, name: &str) -> u64 {
    log.lines()
        .find_map(|l| l.trim().strip_prefix(name))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// A field of libFuzzer's last status line (`#N DONE cov: X ft: Y corp: Z/…`).
fn done_field(log: &str, field: &str) -> u64 {
    let line = log.lines().rev().find(|l| l.contains(" DONE ") || l.contains("\tDONE "));
    line.and_then(|l| l.split_whitespace().skip_while(|w| *w != field).nth(1))
        .and_then(|v| v.split('/').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn table(runs: &[Run]) -> String {
    let mut out = String::from(
        "| target | seconds | executions | exec/s | coverage (edges) | features | corpus \
         | crashes |\n|---|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for r in runs {
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | 0 |\n",
            r.target,
            r.seconds,
            r.executions,
            r.executions / r.seconds.max(1),
            r.edges,
            r.features,
            r.corpus
        ));
    }
    out
}

/// Captures seed corpora from real traffic: the bus against the test broker (every codec, a
/// consumer group), its responses written under `fuzz/corpus/<target>/real-*`.
pub(crate) fn seeds() -> Result<()> {
    let broker = crate::broker::ensure_running()?;
    let mut command = cargo();
    command
        .args(["run", "--quiet", "-p", "bus-kafka", "--features", "fuzzing"])
        .args(["--example", "fuzz_seeds", "--"])
        .arg(fuzz_dir().join("corpus"))
        .env(crate::broker::BOOTSTRAP_VAR, &broker.bootstrap);
    let outcome = crate::cmd::run(&mut command);
    if broker.started_here {
        crate::broker::stop()?;
    }
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_final_stats_are_read() {
        let log = "#123\tDONE   cov: 1954 ft: 4500 corp: 1212/90Kb lim: 4096 exec/s: 114238 \
                   rss: 43Mb\nDone 123 runs in 1 second(s)\n\
                   stat::number_of_executed_units: 3541405\n";
        assert_eq!(stat(log, "stat::number_of_executed_units:"), 3_541_405);
        assert_eq!(done_field(log, "cov:"), 1954);
        assert_eq!(done_field(log, "ft:"), 4500);
        assert_eq!(done_field(log, "corp:"), 1212);
    }
}
