//! `cargo xtask leakcheck`: runs the leak scenarios (the `leakcheck` package, in release mode)
//! against a broker and the secured broker (SASL_SSL, for the load scenario over it), starting
//! them when they are not running and stopping them afterwards.

use std::process::Command;

use crate::Result;
use crate::broker;

pub(crate) fn run(args: &[String]) -> Result<()> {
    let broker = broker::ensure_running()?;
    let secured = match crate::secure::ensure_running(true, true) {
        Ok(secured) => secured,
        Err(error) => {
            if broker.started_here {
                broker::stop()?;
            }
            return Err(error);
        }
    };
    let mut command = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    command
        .args(["run", "--release", "--quiet", "-p", "leakcheck", "--"])
        .args(args)
        .env(broker::BOOTSTRAP_VAR, &broker.bootstrap);
    secured.apply(&mut command);
    let outcome = crate::cmd::run(&mut command);
    if secured.started_here {
        crate::secure::stop()?;
    }
    if broker.started_here {
        broker::stop()?;
    }
    outcome
}
