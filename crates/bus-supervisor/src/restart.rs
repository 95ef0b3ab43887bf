//! Restart supervision in the manner of OTP: child specs, restart intensity, backoff and
//! escalation.
//!
//! Owns: [`Scope::supervise`] and the monitor task it starts, [`ChildSpec`] (restart type,
//! intensity, backoff, shutdown timeout), [`SupervisionOutcome`], and escalation (failing the
//! scopes above a child that exceeded its intensity). The monitor works through the scope's
//! crate-internal node API (supervised child scopes, failure, the tree's events); what it
//! publishes ([`Exit`], [`SupervisionEvent`], [`Escalation`]) is in `exit`.
//!
//! Each run ("incarnation") of a supervised child gets a fresh child scope, so whatever the child
//! spawned is shut down with it before a restart: a restart never leaves the old run's tasks
//! behind. The monitor lives in the scope `supervise` was called on, under the task name
//! `<name>.supervisor`; the child's main task has the path of its incarnation scope.
//!
//! Invariants:
//! - An exit is always observed: completion, error, panic (with message and spawn site), abort,
//!   or escalation from below. Each produces one [`SupervisionEvent`] and a log line.
//! - A child is restarted only after its previous incarnation's scope has been shut down.
//! - More than `max_restarts` restarts within `within` escalate: the scope the monitor lives in
//!   fails (its token is cancelled and the escalation recorded), and so on upwards until a scope
//!   that is itself a supervised incarnation (whose monitor treats it as an abnormal exit) or the
//!   root (where [`Supervisor::failure`](crate::Supervisor::failure) reports it).
//! - A monitor never restarts into a scope that is shutting down.

use std::borrow::Cow;
use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::panic::Location;
use std::time::Duration;

use crate::error::{SpawnError, TaskError};
use crate::exit::{Action, Escalation, Exit, SupervisionEvent};
use crate::scope::Scope;
use crate::task::TaskHandle;

/// When a supervised child is restarted after it exits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Restart {
    /// Always restarted, whatever the exit (a service loop that must keep running).
    Permanent,
    /// Restarted only after an abnormal exit: an error, a panic, an abort, an escalation.
    /// Completing normally ends it.
    Transient,
    /// Never restarted; its exit is reported and supervision ends.
    Temporary,
}

/// The most restarts allowed within a window of time before the failure escalates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RestartIntensity {
    /// Restarts allowed within `within`. The next one escalates instead.
    pub max_restarts: u32,
    /// The sliding window.
    pub within: Duration,
}

/// A backoff policy: the delay before a retry or restart is `initial`, multiplied by
/// `multiplier` for each earlier one that still counts, capped at `max` (a `multiplier` of 1.0
/// gives a constant delay). The one backoff type of the workspace: restarts here, and every
/// retry loop of the bus (handler retries, group and fetch retries, produce retries).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    /// The delay before the first restart.
    pub initial: Duration,
    /// The largest delay.
    pub max: Duration,
    /// The growth factor per restart (1.0 for a constant delay).
    pub multiplier: f64,
}

impl Backoff {
    /// The delay after `recent` earlier retries (restarts: those still in the intensity window);
    /// `delay(0)` is `initial`. Never more than `max`, whatever the inputs.
    pub fn delay(&self, recent: u32) -> Duration {
        let factor = self.multiplier.max(1.0).powi(i32::try_from(recent).unwrap_or(i32::MAX));
        let secs = self.initial.as_secs_f64() * factor;
        if !secs.is_finite() || secs >= self.max.as_secs_f64() {
            self.max
        } else {
            Duration::from_secs_f64(secs)
        }
    }
}

/// How one supervised child is run: its restart type, restart intensity, backoff and the time
/// its incarnation gets to shut down before its tasks are aborted.
#[derive(Debug, Clone, PartialEq)]
pub struct ChildSpec {
    /// When it is restarted.
    pub restart: Restart,
    /// How many restarts are tolerated before escalation.
    pub intensity: RestartIntensity,
    /// The delay before each restart.
    pub backoff: Backoff,
    /// The deadline for shutting down one incarnation's scope.
    pub shutdown_timeout: Duration,
}

impl ChildSpec {
    /// A spec with the given restart type and the defaults: at most 3 restarts in 5 s, backoff
    /// from 100 ms doubling to 5 s, 5 s to shut down.
    pub fn new(restart: Restart) -> Self {
        ChildSpec {
            restart,
            intensity: RestartIntensity { max_restarts: 3, within: Duration::from_secs(5) },
            backoff: Backoff {
                initial: Duration::from_millis(100),
                max: Duration::from_secs(5),
                multiplier: 2.0,
            },
            shutdown_timeout: Duration::from_secs(5),
        }
    }

    /// A permanent child with the defaults.
    pub fn permanent() -> Self {
        Self::new(Restart::Permanent)
    }

    /// A transient child with the defaults.
    pub fn transient() -> Self {
        Self::new(Restart::Transient)
    }

    /// A temporary child with the defaults.
    pub fn temporary() -> Self {
        Self::new(Restart::Temporary)
    }

    /// Sets the restart intensity.
    pub fn intensity(mut self, max_restarts: u32, within: Duration) -> Self {
        self.intensity = RestartIntensity { max_restarts, within };
        self
    }

    /// Sets the backoff.
    pub fn backoff(mut self, initial: Duration, max: Duration, multiplier: f64) -> Self {
        self.backoff = Backoff { initial, max, multiplier };
        self
    }

    /// Sets the shutdown timeout of each incarnation.
    pub fn shutdown_timeout(mut self, timeout: Duration) -> Self {
        self.shutdown_timeout = timeout;
        self
    }
}

/// How supervision of one child ended (the output of the monitor's [`TaskHandle`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SupervisionOutcome {
    /// The child exited and its restart type said not to restart it.
    Stopped(Exit),
    /// The restart intensity was exceeded and the failure escalated.
    Escalated(Escalation),
    /// The parent scope shut down.
    ShutDown,
}

impl Scope {
    /// Supervises a child named `name`: runs `factory(scope)` in a fresh child scope, watches how
    /// it exits, and restarts it according to `spec` (restart type, intensity, backoff).
    ///
    /// The factory receives the incarnation's scope; tasks it spawns there are shut down with the
    /// incarnation. The child should return when that scope is cancelled. Each exit is published
    /// as a [`SupervisionEvent`] (see [`Scope::events`]) and logged.
    ///
    /// The returned handle resolves to the [`SupervisionOutcome`] when supervision ends.
    ///
    /// # Errors
    ///
    /// As for [`Scope::spawn`]: the monitor task could not be spawned.
    #[track_caller]
    pub fn supervise<F, Fut, E>(
        &self,
        name: impl AsRef<str>,
        spec: ChildSpec,
        factory: F,
    ) -> Result<TaskHandle<SupervisionOutcome>, SpawnError>
    where
        F: FnMut(Scope) -> Fut + Send + 'static,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        E: fmt::Display + Send + 'static,
    {
        let site = Location::caller();
        let name = name.as_ref().to_owned();
        let monitor = Monitor { parent: self.clone(), name: name.clone(), spec, site };
        self.spawn_at(Cow::Owned(format!("{name}.supervisor")), monitor.run(factory), site)
    }
}

struct Monitor {
    parent: Scope,
    name: String,
    spec: ChildSpec,
    site: &'static Location<'static>,
}

impl Monitor {
    async fn run<F, Fut, E>(self, mut factory: F) -> SupervisionOutcome
    where
        F: FnMut(Scope) -> Fut + Send + 'static,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        E: fmt::Display + Send + 'static,
    {
        let mut recent: VecDeque<tokio::time::Instant> = VecDeque::new();
        let mut incarnation: u32 = 0;
        loop {
            let child = self.parent.supervised_child(&self.name);
            let Ok(mut handle) =
                child.spawn_at(Cow::Borrowed(""), factory(child.clone()), self.site)
            else {
                return SupervisionOutcome::ShutDown;
            };
            let exit = tokio::select! {
                biased;
                () = self.parent.cancelled() => None,
                escalation = child.failed() => Some(Exit::Escalated(Box::new(escalation))),
                joined = &mut handle => Some(match joined {
                    Ok(Ok(())) => Exit::Completed,
                    Ok(Err(error)) => Exit::Failed(error.to_string()),
                    Err(TaskError::Panicked { message, spawned_at, .. }) => {
                        Exit::Panicked { message, spawned_at }
                    }
                    Err(TaskError::Aborted { .. }) => Exit::Aborted,
                }),
            };
            if let Err(error) = child.shutdown(self.spec.shutdown_timeout).await {
                tracing::error!(
                    target: "bus_supervisor",
                    %error,
                    "supervised child left tasks behind"
                );
            }
            let Some(exit) = exit else {
                return SupervisionOutcome::ShutDown;
            };
            if self.parent.is_cancelled() || self.parent.is_closed() {
                self.emit(incarnation, exit, Action::Shutdown);
                return SupervisionOutcome::ShutDown;
            }
            let restart = match self.spec.restart {
                Restart::Permanent => true,
                Restart::Transient => exit.is_abnormal(),
                Restart::Temporary => false,
            };
            if !restart {
                self.emit(incarnation, exit.clone(), Action::Stop);
                return SupervisionOutcome::Stopped(exit);
            }
            let now = tokio::time::Instant::now();
            let window = self.spec.intensity.within;
            while recent.front().is_some_and(|t| now.duration_since(*t) >= window) {
                recent.pop_front();
            }
            let made = u32::try_from(recent.len()).unwrap_or(u32::MAX);
            if made >= self.spec.intensity.max_restarts {
                let escalation = Escalation {
                    path: child.path().to_owned(),
                    restarts: made,
                    within: window,
                    last_exit: Box::new(exit.clone()),
                };
                self.emit(incarnation, exit, Action::Escalate);
                escalate(&self.parent, &escalation);
                return SupervisionOutcome::Escalated(escalation);
            }
            recent.push_back(now);
            let after = self.spec.backoff.delay(made);
            self.emit(incarnation, exit, Action::Restart { after });
            tokio::select! {
                biased;
                () = self.parent.cancelled() => return SupervisionOutcome::ShutDown,
                () = tokio::time::sleep(after) => {}
            }
            incarnation = incarnation.saturating_add(1);
        }
    }

    fn emit(&self, incarnation: u32, exit: Exit, action: Action) {
        let path = format!("{}/{}", self.parent.path(), self.name);
        if exit.is_abnormal() {
            tracing::warn!(
                target: "bus_supervisor",
                %path, incarnation, %exit, ?action,
                "supervised child exited"
            );
        } else {
            tracing::info!(
                target: "bus_supervisor",
                %path, incarnation, %exit, ?action,
                "supervised child exited"
            );
        }
        // No receiver is fine: events are also logged.
        self.parent.publish(SupervisionEvent { path, incarnation, exit, action });
    }
}

/// Fails `scope` with `escalation` and carries it upwards through scopes that are not supervised
/// incarnations, cancelling each; the first supervised incarnation (whose monitor sees it as an
/// abnormal exit) or the root ends the climb.
fn escalate(scope: &Scope, escalation: &Escalation) {
    let mut next = Some(scope.clone());
    while let Some(scope) = next {
        scope.fail(escalation);
        tracing::error!(
            target: "bus_supervisor",
            scope = %scope.path(), %escalation,
            "scope failed by escalation"
        );
        if scope.is_supervised() {
            break;
        }
        next = scope.parent();
    }
}
