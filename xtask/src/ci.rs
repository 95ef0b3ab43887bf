//! `cargo xtask ci`: the gate every change passes, and what `.ci/run` calls.
//!
//! Owns the order of the checks: formatting, clippy (warnings are errors), rustdoc (broken links
//! are errors), cargo-deny (licenses, bans, sources; the advisory database cannot be fetched on
//! these machines), each fuzz target briefly (`FUZZ_SECONDS`), every test against a broker, then
//! the leak scenarios. The first failure stops the run.

use std::process::Command;

use crate::Result;
use crate::cmd::{Step, run as run_command};

/// Seconds each fuzz target runs in CI (the build of the targets is most of the step).
const FUZZ_SECONDS: u64 = 5;

fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

pub(crate) fn run() -> Result<()> {
    {
        let _step = Step::new("fmt");
        run_command(cargo().args(["fmt", "--all", "--", "--check"]))?;
    }
    {
        let _step = Step::new("clippy");
        run_command(cargo().args([
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ]))?;
    }
    {
        let _step = Step::new("doc");
        // Every public item is documented (a lint) and every doc link resolves (here).
        run_command(
            cargo()
                .args(["doc", "--workspace", "--no-deps", "--quiet"])
                .env("RUSTDOCFLAGS", "-D warnings"),
        )?;
    }
    deny()?;
    {
        let _step = Step::new("fuzz");
        crate::fuzz::run(FUZZ_SECONDS, None)?;
    }
    {
        let _step = Step::new("test");
        crate::test::run(&[])?;
    }
    {
        let _step = Step::new("leakcheck");
        crate::leakcheck::run(&[])?;
    }
    eprintln!("\nci: all checks passed");
    Ok(())
}

/// cargo-deny's licenses, bans and sources checks. Advisories are left out: their database is
/// fetched from GitHub, which these machines cannot reach (see deny.toml).
pub(crate) fn deny() -> Result<()> {
    let _step = Step::new("deny");
    let binary = crate::tools::ensure(&crate::tools::CARGO_DENY)?;
    run_command(Command::new(binary).args(["deny", "check", "licenses", "bans", "sources"]))
}
