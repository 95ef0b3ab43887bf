//! `cargo xtask leakcheck`: runs the leak scenarios (the `leakcheck` package, in release mode)
//! against a broker, starting one when none is running and stopping it afterwards.

use std::process::Command;

use crate::Result;
use crate::broker;

pub(crate) fn run(args: &[String]) -> Result<()> {
    let broker = broker::ensure_running()?;
    let mut command = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    command
        .args(["run", "--release", "--quiet", "-p", "leakcheck", "--"])
        .args(args)
        .env(broker::BOOTSTRAP_VAR, &broker.bootstrap);
    let outcome = crate::cmd::run(&mut command);
    if broker.started_here {
        broker::stop()?;
    }
    outcome
}
