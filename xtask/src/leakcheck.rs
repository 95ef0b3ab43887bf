//! `cargo xtask leakcheck`: runs the leak scenarios (the `leakcheck` package, in release mode)
//! against the test cluster (plaintext, and SASL_SSL for the load scenario over it), starting it
//! when it is not running and stopping it afterwards.

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
    if let Some(secured) = &broker.secured {
        secured.apply(&mut command);
    }
    let outcome = crate::cmd::run(&mut command);
    if broker.started_here {
        broker::stop()?;
    }
    outcome
}
