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
use std::fmt;
use std::future::Future;
use std::panic::Location;
use std::pin::pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::runtime::Handle;
use tokio::sync::{Notify, OnceCell, broadcast};
use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};

use crate::error::SpawnError;
use crate::restart::{Escalation, SupervisionEvent};
use crate::shutdown::{JoinTimeout, Outcome, ScopeShutdownError, ScopeShutdownReport};
use crate::snapshot::ScopeSnapshot;
use crate::table::TaskTable;
use crate::task::{
    Supervised, TaskEntry, TaskGuard, TaskHandle, TaskId, TaskInfo, TaskKind, TaskPath,
    run_blocking,
};

/// State shared by every scope of one supervisor tree.
pub(crate) struct Tree {
    next_id: AtomicU64,
    /// Task start times are kept as nanoseconds since this instant.
    epoch: Instant,
    runtime: Option<Handle>,
    pub(crate) events: broadcast::Sender<SupervisionEvent>,
    pub(crate) abort_grace: Duration,
}

impl Tree {
    pub(crate) fn new(
        runtime: Option<Handle>,
        abort_grace: Duration,
        event_capacity: usize,
    ) -> Self {
        let (events, _) = broadcast::channel(event_capacity.max(1));
        Tree { next_id: AtomicU64::new(1), epoch: Instant::now(), runtime, events, abort_grace }
    }

    /// Nanoseconds since the tree's epoch (saturating: 584 years).
    pub(crate) fn now_ns(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }
}

struct Children {
    list: Vec<Weak<ScopeInner>>,
    /// Prune dead children when the list reaches this length (amortised O(1) per child).
    prune_at: usize,
}

/// A value on its own cache lines: the live counter is written on every spawn and every exit and
/// must not share a line with what tasks read.
#[repr(align(128))]
struct CachePadded<T>(T);

/// What a [`TaskHandle`] carries besides the join handle.
struct HandleParts {
    id: TaskId,
    scope_path: Arc<str>,
    name: Cow<'static, str>,
    site: &'static Location<'static>,
}

impl HandleParts {
    fn with<T>(
        self,
        join: tokio::task::JoinHandle<Result<T, crate::task::Ended>>,
    ) -> TaskHandle<T> {
        let HandleParts { id, scope_path, name, site } = self;
        TaskHandle { join, id, scope_path, name, site }
    }
}

/// The shared state behind a [`Scope`] handle.
pub(crate) struct ScopeInner {
    pub(crate) name: Box<str>,
    pub(crate) path: Arc<str>,
    pub(crate) parent: Option<Arc<ScopeInner>>,
    pub(crate) tree: Arc<Tree>,
    /// Cancelled to ask the subtree's tasks to stop.
    pub(crate) token: CancellationToken,
    /// The abort switch: thrown to end the subtree's tasks at their next poll. The flag is what
    /// every poll reads (an atomic load); the token wakes tasks that wait.
    abort: CancellationToken,
    aborted: AtomicBool,
    /// Whether this scope is one incarnation of a supervised child: escalations stop here.
    pub(crate) supervised: bool,
    /// Own live tasks plus children whose own `busy` is not zero. Zero exactly when the subtree
    /// has no live task. Only transitions to and from zero touch the parent, so a task's
    /// registration does not write to every ancestor.
    busy: CachePadded<AtomicUsize>,
    idle: Notify,
    tasks: TaskTable,
    children: Mutex<Children>,
    pub(crate) shutdown: OnceCell<Outcome>,
    pub(crate) failure: Mutex<Option<Escalation>>,
    pub(crate) failed: Notify,
}

impl ScopeInner {
    pub(crate) fn new_root(name: &str, tree: Arc<Tree>) -> Arc<Self> {
        let (token, abort) = (CancellationToken::new(), CancellationToken::new());
        Arc::new(Self::new(name, Arc::from(name), None, tree, token, abort, false, false))
    }

    #[allow(clippy::too_many_arguments)]
    fn new(
        name: &str,
        path: Arc<str>,
        parent: Option<Arc<ScopeInner>>,
        tree: Arc<Tree>,
        token: CancellationToken,
        abort: CancellationToken,
        supervised: bool,
        closed: bool,
    ) -> Self {
        ScopeInner {
            name: name.into(),
            path,
            parent,
            tree,
            token,
            aborted: AtomicBool::new(abort.is_cancelled()),
            tasks: TaskTable::new(closed, abort.is_cancelled()),
            abort,
            supervised,
            busy: CachePadded(AtomicUsize::new(0)),
            idle: Notify::new(),
            children: Mutex::new(Children { list: Vec::new(), prune_at: 8 }),
            shutdown: OnceCell::new(),
            failure: Mutex::new(None),
            failed: Notify::new(),
        }
    }

    pub(crate) fn new_child(self: &Arc<Self>, name: &str, supervised: bool) -> Arc<ScopeInner> {
        let path: Arc<str> = Arc::from(format!("{}/{}", self.path, name));
        // Holding the children lock while reading `closed`: a concurrent `close` either sees
        // this child in the list or the child is born closed.
        let mut children = self.children.lock();
        let child = Arc::new(ScopeInner::new(
            name,
            path,
            Some(Arc::clone(self)),
            Arc::clone(&self.tree),
            self.token.child_token(),
            self.abort.child_token(),
            supervised,
            self.tasks.is_closed(),
        ));
        if children.list.len() >= children.prune_at {
            children.list.retain(|c| c.strong_count() > 0);
            children.prune_at = (children.list.len() * 2).max(8);
        }
        children.list.push(Arc::downgrade(&child));
        child
    }

    /// The abort switch tasks wait on.
    pub(crate) fn abort_switch(&self) -> &CancellationToken {
        &self.abort
    }

    /// Whether the abort switch was thrown (what each poll checks: one atomic load).
    pub(crate) fn is_aborted(&self) -> bool {
        self.aborted.load(Ordering::Acquire)
    }

    fn children(&self) -> Vec<Arc<ScopeInner>> {
        self.children.lock().list.iter().filter_map(Weak::upgrade).collect()
    }

    /// The number of live tasks in the subtree.
    pub(crate) fn live(&self) -> usize {
        let own = self.tasks.len();
        own + self.children().iter().map(|c| c.live()).sum::<usize>()
    }

    pub(crate) fn is_idle(&self) -> bool {
        self.busy.0.load(Ordering::Acquire) == 0
    }

    pub(crate) fn acquire(&self) {
        if self.busy.0.fetch_add(1, Ordering::AcqRel) == 0
            && let Some(parent) = &self.parent
        {
            parent.acquire();
        }
    }

    pub(crate) fn release(&self) {
        if self.busy.0.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.idle.notify_waiters();
            if let Some(parent) = &self.parent {
                parent.release();
            }
        }
    }

    /// Registers a task: entered in the table and counted, atomically with respect to closing.
    fn register(
        self: &Arc<Self>,
        name: Cow<'static, str>,
        site: &'static Location<'static>,
        kind: TaskKind,
    ) -> Result<(TaskGuard, u64), SpawnError> {
        let id = self.tree.next_id.fetch_add(1, Ordering::Relaxed);
        let entry = TaskEntry { id, name, site, started_ns: self.tree.now_ns(), kind };
        // Counted under the shard's lock: a shutdown that closes this scope afterwards sees it.
        let (shard, slot) = self
            .tasks
            .insert(self, entry)
            .map_err(|_| SpawnError::Closed { scope: self.path.to_string() })?;
        Ok((TaskGuard { shard, slot }, id))
    }

    /// The runtime to spawn on: the tree's, else the current one.
    fn runtime(&self) -> Result<Cow<'_, Handle>, SpawnError> {
        match &self.tree.runtime {
            Some(handle) => Ok(Cow::Borrowed(handle)),
            None => Handle::try_current()
                .map(Cow::Owned)
                .map_err(|_| SpawnError::NoRuntime { scope: self.path.to_string() }),
        }
    }

    /// Marks the scope closed and returns its live children, oldest first.
    pub(crate) fn close(&self) -> Vec<Arc<ScopeInner>> {
        self.tasks.close();
        self.children()
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.tasks.is_closed()
    }

    /// Waits until the subtree has no live task or `deadline` passes; true when it has none.
    pub(crate) async fn wait_idle_until(&self, deadline: tokio::time::Instant) -> bool {
        loop {
            let mut notified = pin!(self.idle.notified());
            notified.as_mut().enable();
            if self.is_idle() {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.is_idle();
            }
        }
    }

    /// Cancels the subtree's tokens, throws its abort switch (every async task ends at its next
    /// poll; blocking closures not yet started never start) and closes every scope in it.
    /// Returns the tasks that were alive. Blocking closures already running cannot be stopped;
    /// they are listed all the same.
    pub(crate) fn abort_subtree(&self) -> Vec<TaskInfo> {
        self.token.cancel();
        self.abort.cancel();
        let mut aborted = Vec::new();
        self.close_and_list(&mut aborted);
        aborted.sort_by_key(|t| t.id);
        aborted
    }

    fn close_and_list(&self, into: &mut Vec<TaskInfo>) {
        self.aborted.store(true, Ordering::Release);
        self.tasks.abort();
        let now = self.tree.now_ns();
        let children = self.close();
        into.extend(self.tasks.map(|e| e.info(&self.path, now, true)));
        for child in children {
            child.close_and_list(into);
        }
    }

    /// This scope's own live tasks (not its children's), oldest first.
    pub(crate) fn own_tasks(&self) -> Vec<TaskInfo> {
        let now = self.tree.now_ns();
        let aborted = self.is_aborted();
        let mut tasks = self.tasks.map(|e| e.info(&self.path, now, aborted));
        tasks.sort_by_key(|t| t.id);
        tasks
    }

    /// The live tasks of the subtree, oldest first.
    pub(crate) fn live_tasks(&self) -> Vec<TaskInfo> {
        let mut tasks = Vec::new();
        self.snapshot_at(self.tree.now_ns()).collect_tasks(&mut tasks);
        tasks.sort_by_key(|t| t.id);
        tasks
    }

    pub(crate) fn snapshot_at(&self, now: u64) -> ScopeSnapshot {
        let aborted = self.is_aborted();
        let mut tasks = self.tasks.map(|e| e.info(&self.path, now, aborted));
        tasks.sort_by_key(|t| t.id);
        let closed = self.is_closed();
        let children = self.children();
        let children: Vec<ScopeSnapshot> = children.iter().map(|c| c.snapshot_at(now)).collect();
        ScopeSnapshot {
            path: self.path.to_string(),
            live: tasks.len() + children.iter().map(|c| c.live).sum::<usize>(),
            closed,
            cancelled: self.token.is_cancelled(),
            tasks,
            children,
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
        let (runtime, guard, span, handle) = self.prepare(name, site, TaskKind::Async)?;
        #[allow(clippy::disallowed_methods)] // the one place tasks are handed to the runtime
        let join = runtime.spawn(Supervised::new(guard, span, future));
        Ok(handle.with(join))
    }

    /// Everything a spawn needs before the runtime gets the task: the runtime, the
    /// registration, the span carrying the task's path, and the handle's description.
    fn prepare(
        &self,
        name: Cow<'static, str>,
        site: &'static Location<'static>,
        kind: TaskKind,
    ) -> Result<(Cow<'_, Handle>, TaskGuard, tracing::Span, HandleParts), SpawnError> {
        let runtime = self.inner.runtime()?;
        let (guard, id) = self.inner.register(name.clone(), site, kind)?;
        // A root span: a task's path says where it is; it does not belong to its spawner's span.
        let span = tracing::info_span!(
            target: "bus_supervisor",
            parent: None,
            "task",
            path = %TaskPath { scope: &self.inner.path, name: &name },
        );
        let parts =
            HandleParts { id: TaskId(id), scope_path: Arc::clone(&self.inner.path), name, site };
        Ok((runtime, guard, span, parts))
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
        let (runtime, guard, span, handle) =
            self.prepare(name.into(), Location::caller(), TaskKind::Blocking)?;
        #[allow(clippy::disallowed_methods)] // the one place blocking work is handed to the runtime
        let join = runtime.spawn_blocking(move || run_blocking(guard, span, f));
        Ok(handle.with(join))
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
    /// [`ScopeShutdownError`] when tasks are still alive after the abort grace: a task blocking its
    /// thread inside `poll`, or a blocking closure. It names each one; [`ScopeShutdownError::wait`]
    /// waits for them to end.
    pub async fn shutdown(
        &self,
        timeout: Duration,
    ) -> Result<ScopeShutdownReport, ScopeShutdownError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let outcome = Arc::clone(&self.inner).shutdown_until(deadline).await;
        outcome.into_result(self)
    }

    /// A snapshot of this scope's subtree: every live task with its path, id, spawn site, age
    /// and state. It renders as an indented tree with `Display`.
    pub fn snapshot(&self) -> crate::Snapshot {
        crate::Snapshot { root: self.inner.snapshot_at(self.inner.tree.now_ns()) }
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
