//! A hierarchical task supervisor for tokio: every task registered under a path, every subtree
//! shut down against a deadline, and shutdown never reported complete while a task lives.
//!
//! # Embedding it in a subsystem
//!
//! A subsystem takes a [`Scope`] from whoever embeds it, spawns its tasks there, and watches the
//! scope's token to know when to stop. The owner of the [`Supervisor`] shuts the whole tree down
//! and gets a report, or an error naming each task that would not stop.
//!
//! ```
//! use std::time::Duration;
//! use bus_supervisor::{Scope, SpawnError, Supervisor};
//! use tokio::sync::mpsc;
//!
//! /// A subsystem that owns two tasks under the scope it is given.
//! struct Pipeline {
//!     input: mpsc::Sender<u64>,
//! }
//!
//! impl Pipeline {
//!     fn start(scope: &Scope) -> Result<(Pipeline, mpsc::Receiver<u64>), SpawnError> {
//!         let (input, mut stage) = mpsc::channel::<u64>(16);
//!         let (output, results) = mpsc::channel::<u64>(16);
//!         let token = scope.token();
//!         scope.spawn("double", async move {
//!             loop {
//!                 tokio::select! {
//!                     _ = token.cancelled() => break,
//!                     item = stage.recv() => match item {
//!                         Some(n) => { let _ = output.send(n * 2).await; }
//!                         None => break,
//!                     },
//!                 }
//!             }
//!         })?;
//!         Ok((Pipeline { input }, results))
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let supervisor = Supervisor::new("app");
//! let (pipeline, mut results) = Pipeline::start(&supervisor.root().child("pipeline"))?;
//!
//! pipeline.input.send(21).await?;
//! assert_eq!(results.recv().await, Some(42));
//! println!("{}", supervisor.snapshot()); // app/ [1 live] ... app/pipeline/double
//!
//! let report = supervisor.shutdown(Duration::from_secs(5)).await?;
//! assert_eq!(supervisor.live(), 0); // Ok is only ever returned at zero
//! assert!(report.is_graceful());
//! # Ok(())
//! # }
//! ```
//!
//! # What it guarantees
//!
//! - **Registration.** [`Scope::spawn`] and [`Scope::spawn_blocking`] register a task before it
//!   starts; a drop guard owned by the task deregisters it whether it completes, panics or is
//!   aborted. Live counts include descendants. Spawn sites are recorded with `#[track_caller]`.
//! - **Shutdown.** [`Scope::shutdown`] closes the scope, shuts children down newest first within
//!   the parent's deadline, cancels, waits, aborts shortly before the deadline, waits for the
//!   aborted tasks and reports, by the deadline (the abort grace comes out of the caller's
//!   time, not on top of it). It returns `Ok` only when the live count is zero; otherwise a
//!   [`ScopeShutdownError`] names each task still alive (path, spawn site, age). It is
//!   idempotent and every concurrent caller gets the same result.
//! - **Drop.** Dropping a [`Supervisor`] without shutting it down cancels and aborts its tree.
//! - **Restarts.** [`Scope::supervise`] runs a child with an OTP-style [`ChildSpec`]: permanent,
//!   transient or temporary; restart intensity with backoff; escalation upwards when exceeded.
//!   Panics are caught with their message and spawn site and reported as [`Exit`]s.
//! - **Visibility.** [`Scope::snapshot`] lists the live tree; every task runs inside a tracing
//!   span `task{path=…}`; [`LeakGuard`] checks in tests that nothing was left behind.
//! - **No global state.** Each supervisor's tree is independent; several can share a runtime,
//!   current-thread or multi-thread.
//!
//! # Requirements
//!
//! The runtime must have its time driver enabled (`enable_time` or `enable_all`, as
//! `#[tokio::main]` and `#[tokio::test]` do): deadlines and backoff use tokio's timers.

mod error;
mod exit;
mod handover;
mod info;
mod leak;
mod report;
mod restart;
mod scope;
mod shutdown;
mod snapshot;
mod supervisor;
mod table;
mod task;
mod watchdog;

pub use error::{JoinTimeout, SpawnError, TaskError};
pub use exit::{Action, Escalation, Exit, SupervisionEvent};
pub use handover::{Handover, Held};
pub use info::{TaskId, TaskInfo, TaskKind, TaskState};
pub use leak::{LeakGuard, LeakReport};
pub use report::ScopeShutdownReport;
pub use restart::{Backoff, ChildSpec, Restart, RestartIntensity, SupervisionOutcome};
pub use scope::Scope;
pub use shutdown::{MIN_ABORT_WAIT, ScopeShutdownError};
pub use snapshot::{ScopeSnapshot, Snapshot};
pub use supervisor::{Supervisor, SupervisorBuilder};
pub use task::TaskHandle;

/// Re-exported so that users can name the token type tasks watch.
pub use tokio_util::sync::CancellationToken;
