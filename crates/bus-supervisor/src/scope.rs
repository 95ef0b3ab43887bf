//! Scopes: the nodes of the task tree, and spawning into them.
//!
//! Owns: [`Scope`] (the cloneable handle users hold), its shared state [`ScopeInner`] (name,
//! path, cancellation token, live count, task table, children) and the per-tree state [`Tree`]
//! (task-id counter, runtime handle, supervision events).
//!
//! Invariants:
//! - `live` of a scope equals the number of registered tasks in the scope and all its
//!   descendants. It is incremented, under the scope's lock, when a task is registered (before it
//!   starts) and decremented only by [`TaskGuard`]'s drop.
//! - A closed scope admits no task: the closed flag is set and read under the same lock that
//!   registration takes, so once a shutdown has closed a scope and seen its count at zero, the
//!   count stays at zero. A child created under a closed scope is born closed.
//! - A scope's token is a child of its parent's token; cancelling a scope cancels its subtree and
//!   nothing above it.
//! - Parents hold their children weakly and children hold their parent strongly (each task's
//!   guard holds its scope), so a scope lives while it has tasks or handles, and the tree has no
//!   reference cycle. There is no global state: everything hangs off the [`Tree`] of one
//!   supervisor.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::hash::{BuildHasherDefault, Hasher};
use std::panic::Location;
use std::pin::pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::runtime::Handle;
use tokio::sync::{Notify, OnceCell, broadcast};
use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};

use crate::error::SpawnError;
use crate::restart::{Escalation, SupervisionEvent};
use crate::shutdown::{JoinTimeout, Outcome, ShutdownError, ShutdownReport};
use crate::snapshot::ScopeSnapshot;
use crate::task::{
    TaskEntry, TaskGuard, TaskHandle, TaskId, TaskInfo, TaskKind, TaskPath, run_async,
    run_blocking,
};

/// State shared by every scope of one supervisor tree.
pub(crate) struct Tree {
    next_id: AtomicU64,
    runtime: Option<Handle>,
    pub(crate) events: broadcast::Sender<SupervisionEvent>,
    pub(crate) abort_grace: Duration,
}

impl Tree {
    pub(crate) fn new(runtime: Option<Handle>, abort_grace: Duration, event_capacity: usize) -> Self {
        let (events, _) = broadcast::channel(event_capacity.max(1));
        Tree { next_id: AtomicU64::new(1), runtime, events, abort_grace }
    }
}

/// Hashes task ids (sequential numbers) with one multiplication, spreading them over the whole
/// word so the table's probe bits differ.
#[derive(Default)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

type TaskTable = HashMap<u64, TaskEntry, BuildHasherDefault<IdHasher>>;

struct ScopeState {
    closed: bool,
    tasks: TaskTable,
    children: Vec<Weak<ScopeInner>>,
    /// Prune dead children when the list reaches this length (amortised O(1) per child).
    prune_at: usize,
}

/// The shared state behind a [`Scope`] handle.
pub(crate) struct ScopeInner {
    pub(crate) name: Box<str>,
    pub(crate) path: Arc<str>,
    pub(crate) parent: Option<Arc<ScopeInner>>,
    pub(crate) tree: Arc<Tree>,
    pub(crate) token: CancellationToken,
    /// Whether this scope is one incarnation of a supervised child: escalations stop here.
    pub(crate) supervised: bool,
    live: AtomicUsize,
    idle: Notify,
    state: Mutex<ScopeState>,
    pub(crate) shutdown: OnceCell<Outcome>,
    pub(crate) failure: Mutex<Option<Escalation>>,
    pub(crate) failed: Notify,
}

impl ScopeInner {
    pub(crate) fn new_root(name: &str, tree: Arc<Tree>) -> Arc<Self> {
        Arc::new(Self::new(name, Arc::from(name), None, tree, CancellationToken::new(), false, false))
    }

    fn new(
        name: &str,
        path: Arc<str>,
        parent: Option<Arc<ScopeInner>>,
        tree: Arc<Tree>,
        token: CancellationToken,
        supervised: bool,
        closed: bool,
    ) -> Self {
        ScopeInner {
            name: name.into(),
            path,
            parent,
            tree,
            token,
            supervised,
            live: AtomicUsize::new(0),
            idle: Notify::new(),
            state: Mutex::new(ScopeState {
                closed,
                tasks: TaskTable::default(),
                children: Vec::new(),
                prune_at: 8,
            }),
            shutdown: OnceCell::new(),
            failure: Mutex::new(None),
            failed: Notify::new(),
        }
    }

    pub(crate) fn new_child(self: &Arc<Self>, name: &str, supervised: bool) -> Arc<ScopeInner> {
        let path: Arc<str> = Arc::from(format!("{}/{}", self.path, name));
        let mut state = self.state.lock();
        let child = Arc::new(ScopeInner::new(
            name,
            path,
            Some(Arc::clone(self)),
            Arc::clone(&self.tree),
            self.token.child_token(),
            supervised,
            state.closed,
        ));
        if state.children.len() >= state.prune_at {
            state.children.retain(|c| c.strong_count() > 0);
            state.prune_at = (state.children.len() * 2).max(8);
        }
        state.children.push(Arc::downgrade(&child));
        child
    }

    pub(crate) fn live(&self) -> usize {
        self.live.load(Ordering::Acquire)
    }

    /// Registers a task: entered in the table and counted up the chain, atomically with respect
    /// to closing.
    fn register(
        self: &Arc<Self>,
        name: Cow<'static, str>,
        site: &'static Location<'static>,
        kind: TaskKind,
    ) -> Result<TaskGuard, SpawnError> {
        let id = self.tree.next_id.fetch_add(1, Ordering::Relaxed);
        let mut state = self.state.lock();
        if state.closed {
            return Err(SpawnError::Closed { scope: self.path.to_string() });
        }
        state.tasks.insert(
            id,
            TaskEntry {
                name,
                site,
                started: Instant::now(),
                kind,
                abort: None,
                abort_requested: false,
            },
        );
        let mut scope = Some(&**self);
        while let Some(s) = scope {
            s.live.fetch_add(1, Ordering::AcqRel);
            scope = s.parent.as_deref();
        }
        drop(state);
        Ok(TaskGuard { scope: Arc::clone(self), id })
    }

    /// Stores the abort handle of a task spawned after its registration. If an abort was asked
    /// for in between, it is carried out now.
    fn attach_abort(&self, id: u64, abort: tokio::task::AbortHandle) {
        let mut state = self.state.lock();
        if let Some(entry) = state.tasks.get_mut(&id) {
            if entry.abort_requested {
                abort.abort();
            }
            entry.abort = Some(abort);
        }
    }

    /// Removes a task: called only from [`TaskGuard`]'s drop.
    pub(crate) fn deregister(&self, id: u64) {
        let entry = self.state.lock().tasks.remove(&id);
        drop(entry);
        let mut scope = Some(self);
        while let Some(s) = scope {
            if s.live.fetch_sub(1, Ordering::AcqRel) == 1 {
                s.idle.notify_waiters();
            }
            scope = s.parent.as_deref();
        }
    }

    pub(crate) fn task_name(&self, id: u64) -> Cow<'static, str> {
        self.state.lock().tasks.get(&id).map(|e| e.name.clone()).unwrap_or_default()
    }

    fn runtime(&self) -> Result<Handle, SpawnError> {
        match &self.tree.runtime {
            Some(handle) => Ok(handle.clone()),
            None => Handle::try_current()
                .map_err(|_| SpawnError::NoRuntime { scope: self.path.to_string() }),
        }
    }

    /// Marks the scope closed and returns its live children, oldest first.
    pub(crate) fn close(&self) -> Vec<Arc<ScopeInner>> {
        let mut state = self.state.lock();
        state.closed = true;
        state.children.iter().filter_map(Weak::upgrade).collect()
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.state.lock().closed
    }

    /// Waits until the subtree's live count is zero or `deadline` passes; true when zero.
    pub(crate) async fn wait_idle_until(&self, deadline: tokio::time::Instant) -> bool {
        loop {
            let mut notified = pin!(self.idle.notified());
            notified.as_mut().enable();
            if self.live() == 0 {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.live() == 0;
            }
        }
    }

    /// Closes the whole subtree, cancels its tokens and aborts every task in it. Returns what it
    /// aborted. Blocking closures that already run cannot be aborted; they are listed all the same.
    pub(crate) fn abort_subtree(&self) -> Vec<TaskInfo> {
        let (mut aborted, children) = self.abort_own();
        for child in children {
            aborted.extend(child.abort_subtree());
        }
        aborted.sort_by_key(|t| t.id);
        aborted
    }

    /// Closes this scope, cancels its token and aborts its own tasks (not its children's).
    /// Returns what it aborted and the live children.
    pub(crate) fn abort_own(&self) -> (Vec<TaskInfo>, Vec<Arc<ScopeInner>>) {
        self.token.cancel();
        let now = Instant::now();
        let mut state = self.state.lock();
        state.closed = true;
        let mut aborted = Vec::with_capacity(state.tasks.len());
        for (&id, entry) in state.tasks.iter_mut() {
            entry.abort_requested = true;
            if let Some(abort) = &entry.abort {
                abort.abort();
            }
            aborted.push(entry.info(id, &self.path, now));
        }
        aborted.sort_by_key(|t| t.id);
        let children = state.children.iter().filter_map(Weak::upgrade).collect();
        (aborted, children)
    }

    /// The live tasks of the subtree, oldest first.
    pub(crate) fn live_tasks(&self) -> Vec<TaskInfo> {
        let mut tasks = Vec::new();
        self.snapshot_at(Instant::now()).collect_tasks(&mut tasks);
        tasks.sort_by_key(|t| t.id);
        tasks
    }

    pub(crate) fn snapshot_at(&self, now: Instant) -> ScopeSnapshot {
        let (mut tasks, closed, children) = {
            let state = self.state.lock();
            let tasks: Vec<TaskInfo> =
                state.tasks.iter().map(|(&id, e)| e.info(id, &self.path, now)).collect();
            let children: Vec<_> = state.children.iter().filter_map(Weak::upgrade).collect();
            (tasks, state.closed, children)
        };
        tasks.sort_by_key(|t| t.id);
        ScopeSnapshot {
            path: self.path.to_string(),
            live: self.live(),
            closed,
            cancelled: self.token.is_cancelled(),
            tasks,
            children: children.iter().map(|c| c.snapshot_at(now)).collect(),
        }
    }
}

/// A node of the task tree: a named group of tasks with a path, a cancellation token, and a live
/// count that includes every descendant.
///
/// `Scope` is a cheap handle (an `Arc`); clones refer to the same scope. Tasks spawned into a
/// scope are registered before they start and deregistered when they end, however they end. A
/// scope is shut down with [`Scope::shutdown`], which is not reported complete while any task in
/// its subtree is alive.
///
/// Tasks are expected to watch [`Scope::token`] (or [`Scope::cancelled`]) and return when it is
/// cancelled; those that do not are aborted at the shutdown deadline.
#[derive(Clone)]
pub struct Scope {
    pub(crate) inner: Arc<ScopeInner>,
}

impl fmt::Debug for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Scope")
            .field("path", &&*self.inner.path)
            .field("live", &self.inner.live())
            .finish()
    }
}

impl Scope {
    /// The scope's own name (the last segment of its path).
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The scope's path: its ancestors' names and its own, joined by `/`.
    pub fn path(&self) -> &str {
        &self.inner.path
    }

    /// Creates a child scope named `name`, whose path is this path, `/`, and `name`.
    ///
    /// The child's token is a child of this scope's token. A child created under a scope that is
    /// shutting down is born closed: spawning into it fails with [`SpawnError::Closed`].
    /// Children are shut down before their parent's own tasks, newest first.
    pub fn child(&self, name: impl AsRef<str>) -> Scope {
        Scope { inner: self.inner.new_child(name.as_ref(), false) }
    }

    /// Spawns `future` as a task named `name` in this scope.
    ///
    /// The task is registered before it starts, runs inside a tracing span carrying its path
    /// (`task{path=…}`), has panics caught and reported, and is deregistered when it ends,
    /// whether it completes, panics or is aborted. The spawn site is recorded.
    ///
    /// # Errors
    ///
    /// [`SpawnError::Closed`] when the scope is shutting down; [`SpawnError::NoRuntime`] when
    /// there is no runtime to run on. In both cases nothing was registered.
    #[track_caller]
    pub fn spawn<F>(
        &self,
        name: impl Into<Cow<'static, str>>,
        future: F,
    ) -> Result<TaskHandle<F::Output>, SpawnError>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.spawn_at(name.into(), future, Location::caller())
    }

    pub(crate) fn spawn_at<F>(
        &self,
        name: Cow<'static, str>,
        future: F,
        site: &'static Location<'static>,
    ) -> Result<TaskHandle<F::Output>, SpawnError>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let runtime = self.inner.runtime()?;
        let guard = self.inner.register(name.clone(), site, TaskKind::Async)?;
        let id = guard.id;
        let span = tracing::info_span!(
            target: "bus_supervisor",
            "task",
            path = %TaskPath { scope: &self.inner.path, name: &name },
        );
        #[allow(clippy::disallowed_methods)] // the one place tasks are handed to the runtime
        let join = runtime.spawn(run_async(guard, span, site, future));
        self.inner.attach_abort(id, join.abort_handle());
        Ok(TaskHandle { join, id: TaskId(id), scope_path: Arc::clone(&self.inner.path), name, site })
    }

    /// Runs the blocking closure `f` on the runtime's blocking pool as a task named `name`.
    ///
    /// It is registered and reported like any task. Once started it cannot be aborted: a
    /// shutdown whose deadline passes while it runs returns an error naming it, and the count
    /// reaches zero when the closure returns.
    ///
    /// # Errors
    ///
    /// As for [`Scope::spawn`].
    #[track_caller]
    pub fn spawn_blocking<F, R>(
        &self,
        name: impl Into<Cow<'static, str>>,
        f: F,
    ) -> Result<TaskHandle<R>, SpawnError>
    where
        F: FnOnce() -> R + Send + 'static,
        R: Send + 'static,
    {
        let site = Location::caller();
        let name = name.into();
        let runtime = self.inner.runtime()?;
        let guard = self.inner.register(name.clone(), site, TaskKind::Blocking)?;
        let id = guard.id;
        let span = tracing::info_span!(
            target: "bus_supervisor",
            "task",
            path = %TaskPath { scope: &self.inner.path, name: &name },
        );
        #[allow(clippy::disallowed_methods)] // the one place blocking work is handed to the runtime
        let join = runtime.spawn_blocking(move || run_blocking(guard, span, site, f));
        self.inner.attach_abort(id, join.abort_handle());
        Ok(TaskHandle { join, id: TaskId(id), scope_path: Arc::clone(&self.inner.path), name, site })
    }

    /// A clone of the scope's cancellation token. It is cancelled when the scope (or an ancestor)
    /// shuts down, fails by escalation, or its supervisor is dropped.
    pub fn token(&self) -> CancellationToken {
        self.inner.token.clone()
    }

    /// Completes when the scope's token is cancelled.
    pub fn cancelled(&self) -> WaitForCancellationFuture<'_> {
        self.inner.token.cancelled()
    }

    /// Whether the scope's token is cancelled.
    pub fn is_cancelled(&self) -> bool {
        self.inner.token.is_cancelled()
    }

    /// Whether the scope admits no more tasks (it is shutting down or shut down).
    pub fn is_closed(&self) -> bool {
        self.inner.is_closed()
    }

    /// The number of live tasks in this scope and all its descendants.
    pub fn live(&self) -> usize {
        self.inner.live()
    }

    /// The live tasks of this scope's subtree, oldest first.
    pub fn live_tasks(&self) -> Vec<TaskInfo> {
        self.inner.live_tasks()
    }

    /// Waits, without cancelling anything, until the subtree's live count is zero.
    ///
    /// # Errors
    ///
    /// [`JoinTimeout`] naming the tasks still alive when `timeout` passes.
    pub async fn join(&self, timeout: Duration) -> Result<(), JoinTimeout> {
        let deadline = tokio::time::Instant::now() + timeout;
        if self.inner.wait_idle_until(deadline).await {
            Ok(())
        } else {
            Err(JoinTimeout { path: self.path().to_owned(), still_running: self.live_tasks() })
        }
    }

    /// Shuts the subtree down against a deadline `timeout` from now: close it to new tasks, shut
    /// children down newest first, cancel, wait for the count to reach zero, abort what is left at
    /// the deadline, wait for the aborted tasks to finish (up to the supervisor's abort grace),
    /// and report.
    ///
    /// Idempotent: the first call runs the shutdown and every call, concurrent or later, gets the
    /// same result (later callers' timeouts are not used).
    ///
    /// # Errors
    ///
    /// [`ShutdownError`] when tasks are still alive after the abort grace: a task blocking its
    /// thread inside `poll`, or a blocking closure. It names each one; [`ShutdownError::wait`]
    /// waits for them to end.
    pub async fn shutdown(&self, timeout: Duration) -> Result<ShutdownReport, ShutdownError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let outcome = Arc::clone(&self.inner).shutdown_until(deadline).await;
        outcome.into_result(self)
    }

    /// A snapshot of this scope's subtree: every live task with its path, id, spawn site, age
    /// and state. It renders as an indented tree with `Display`.
    pub fn snapshot(&self) -> crate::Snapshot {
        crate::Snapshot { root: self.inner.snapshot_at(Instant::now()) }
    }

    /// Receives the supervision events (exits, restarts, escalations) of the whole tree.
    pub fn events(&self) -> broadcast::Receiver<SupervisionEvent> {
        self.inner.tree.events.subscribe()
    }

    /// The escalation that failed this scope, if one did.
    pub fn failure(&self) -> Option<Escalation> {
        self.inner.failure.lock().clone()
    }

    /// Completes when an escalation fails this scope, with that escalation.
    pub async fn failed(&self) -> Escalation {
        loop {
            let mut notified = pin!(self.inner.failed.notified());
            notified.as_mut().enable();
            if let Some(escalation) = self.failure() {
                return escalation;
            }
            notified.await;
        }
    }

    /// The id the next task spawned anywhere in this tree will get; tasks with smaller ids were
    /// spawned before this call.
    pub(crate) fn next_task_id(&self) -> u64 {
        self.inner.tree.next_id.load(Ordering::Relaxed)
    }
}
