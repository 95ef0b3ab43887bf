//! Scopes: the nodes of the task tree, and spawning into them.
//!
//! Owns: [`Scope`] (the cloneable handle users hold), spawning, and the node behind the handle,
//! private to this module: `ScopeInner` (name, path, cancellation token, abort switch, busy
//! count, task table, children, and the record of its shutdown and failure) and the per-tree
//! state `Tree` (task-id counter, runtime handle, supervision events, abort grace). The rest of
//! the crate reaches a node only through `Scope`: its public methods and the crate-internal node
//! API at the end of this file, on which the supervisor, the shutdown procedure (`shutdown`),
//! restart supervision (`restart`) and the leak guard are built.
//!
//! Invariants:
//! - `busy` of a scope is zero exactly when the scope and all its descendants have no registered
//!   task. A task is entered in the scope's table (which counts the scope busy when the task's
//!   shard was empty) before it starts, and leaves it only by its guard's drop.
//! - A closed scope admits no task: the closed flag is set and read under the same lock that
//!   registration takes, so once a shutdown has closed a scope and seen its count at zero, the
//!   count stays at zero. A child created under a closed scope is born closed.
//! - A scope's token is a child of its parent's token; cancelling a scope cancels its subtree and
//!   nothing above it.
//! - Parents hold their children weakly and children hold their parent strongly (each non-empty
//!   shard of a table holds its scope), so a scope lives while it has tasks or handles, and the
//!   tree has no reference cycle. There is no global state: everything hangs off the `Tree` of
//!   one supervisor.

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

use crate::error::{JoinTimeout, SpawnError};
use crate::exit::{Escalation, SupervisionEvent};
use crate::info::{TaskId, TaskInfo, TaskKind, TaskPath};
use crate::report::Outcome;
use crate::snapshot::{ScopeSnapshot, Snapshot};
use crate::table::{Owner, TaskEntry, TaskGuard, TaskTable};
use crate::task::{HandleParts, Supervised, TaskHandle, run_blocking};

/// State shared by every scope of one supervisor tree.
struct Tree {
    next_id: AtomicU64,
    /// Task start times are kept as nanoseconds since this instant.
    epoch: Instant,
    runtime: Option<Handle>,
    events: broadcast::Sender<SupervisionEvent>,
    abort_grace: Duration,
}

impl Tree {
    /// Nanoseconds since the tree's epoch (saturating: 584 years).
    fn now_ns(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }
}

struct Children {
    list: Vec<Weak<ScopeInner>>,
    /// Prune dead children when the list reaches this length (amortised O(1) per child).
    prune_at: usize,
}

/// A value on its own cache lines: the busy counter is written whenever a shard fills or empties
/// and must not share a line with what tasks read.
#[repr(align(128))]
struct CachePadded<T>(T);

/// The node behind a [`Scope`] handle.
struct ScopeInner {
    name: Box<str>,
    path: Arc<str>,
    parent: Option<Arc<ScopeInner>>,
    tree: Arc<Tree>,
    /// Cancelled to ask the subtree's tasks to stop.
    token: CancellationToken,
    /// The abort switch: thrown to end the subtree's tasks at their next poll. The table's shards
    /// mirror it for the tasks; `aborted` is what this scope's own listings read.
    abort: CancellationToken,
    aborted: AtomicBool,
    /// Whether this scope is one incarnation of a supervised child: escalations stop here.
    supervised: bool,
    /// Non-empty shards of the own table plus children whose own `busy` is not zero. Zero exactly
    /// when the subtree has no live task. Only transitions to and from zero touch the parent, so
    /// a task's registration does not write to every ancestor.
    busy: CachePadded<AtomicUsize>,
    idle: Notify,
    tasks: TaskTable,
    children: Mutex<Children>,
    /// The outcome of this scope's shutdown, once it ran.
    shutdown: OnceCell<Outcome>,
    /// The escalation that failed this scope, if one did.
    failure: Mutex<Option<Escalation>>,
    failed: Notify,
}

impl ScopeInner {
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
            aborted: AtomicBool::new(abort.is_cancelled()),
            tasks: TaskTable::new(closed, &abort, &path),
            path,
            parent,
            tree,
            token,
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

    fn new_child(self: &Arc<Self>, name: &str, supervised: bool) -> Arc<ScopeInner> {
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

    /// Whether the abort switch was thrown.
    fn is_aborted(&self) -> bool {
        self.aborted.load(Ordering::Acquire)
    }

    fn children(&self) -> Vec<Arc<ScopeInner>> {
        self.children.lock().list.iter().filter_map(Weak::upgrade).collect()
    }

    /// The number of live tasks in the subtree.
    fn live(&self) -> usize {
        let own = self.tasks.len();
        own + self.children().iter().map(|c| c.live()).sum::<usize>()
    }

    /// Marks the scope closed and returns its live children, oldest first.
    fn close(&self) -> Vec<Arc<ScopeInner>> {
        self.tasks.close();
        self.children()
    }

    fn close_and_list(&self, into: &mut Vec<TaskInfo>) {
        self.aborted.store(true, Ordering::Release);
        self.tasks.abort();
        let now = self.tree.now_ns();
        let children = self.close();
        into.extend(self.tasks.infos(now, true));
        for child in children {
            child.close_and_list(into);
        }
    }

    fn snapshot_at(&self, now: u64) -> ScopeSnapshot {
        let mut tasks = self.tasks.infos(now, self.is_aborted());
        tasks.sort_by_key(|t| t.id);
        let closed = self.tasks.is_closed();
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

/// The table's shards count in their scope: a scope is busy while a shard of its own or a child
/// is, and tells its parent only when that changes.
impl Owner for ScopeInner {
    fn acquire(&self) {
        if self.busy.0.fetch_add(1, Ordering::AcqRel) == 0
            && let Some(parent) = &self.parent
        {
            parent.acquire();
        }
    }

    fn release(&self) {
        if self.busy.0.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.idle.notify_waiters();
            if let Some(parent) = &self.parent {
                parent.release();
            }
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
    inner: Arc<ScopeInner>,
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

    /// Creates a child scope named `name` that contains escalations: a supervised child below it
    /// that exceeds its restart intensity fails this scope (its token is cancelled, the
    /// escalation recorded: see [`Scope::failure`] and [`Scope::failed`]) and the failure goes
    /// no higher. The owner of such a scope (a subscription, a producer) watches `failed` and
    /// reports itself failed while the rest of the tree keeps running.
    pub fn isolated_child(&self, name: impl AsRef<str>) -> Scope {
        Scope { inner: self.inner.new_child(name.as_ref(), true) }
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
        self.inner.tasks.is_closed()
    }

    /// The number of live tasks in this scope and all its descendants.
    pub fn live(&self) -> usize {
        self.inner.live()
    }

    /// The live tasks of this scope's subtree, oldest first.
    pub fn live_tasks(&self) -> Vec<TaskInfo> {
        self.snapshot().tasks()
    }

    /// Waits, without cancelling anything, until the subtree's live count is zero.
    ///
    /// # Errors
    ///
    /// [`JoinTimeout`] naming the tasks still alive when `timeout` passes.
    pub async fn join(&self, timeout: Duration) -> Result<(), JoinTimeout> {
        let deadline = tokio::time::Instant::now() + timeout;
        if self.wait_idle_until(deadline).await {
            Ok(())
        } else {
            Err(JoinTimeout { path: self.path().to_owned(), still_running: self.live_tasks() })
        }
    }

    /// A snapshot of this scope's subtree: every live task with its path, id, spawn site, age
    /// and state. It renders as an indented tree with `Display`.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot { root: self.inner.snapshot_at(self.inner.tree.now_ns()) }
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
}

/// Spawning: a task is registered (entered in the table and counted) before the runtime gets it.
impl Scope {
    /// [`Scope::spawn`] with the spawn site given.
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
        let runtime = self.runtime()?;
        let (guard, id) = self.register(name.clone(), site, kind)?;
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

    /// The runtime to spawn on: the tree's, else the current one.
    fn runtime(&self) -> Result<Cow<'_, Handle>, SpawnError> {
        match &self.inner.tree.runtime {
            Some(handle) => Ok(Cow::Borrowed(handle)),
            None => Handle::try_current()
                .map(Cow::Owned)
                .map_err(|_| SpawnError::NoRuntime { scope: self.path().to_owned() }),
        }
    }

    /// Registers a task: entered in the table and counted, atomically with respect to closing.
    fn register(
        &self,
        name: Cow<'static, str>,
        site: &'static Location<'static>,
        kind: TaskKind,
    ) -> Result<(TaskGuard, u64), SpawnError> {
        let tree = &self.inner.tree;
        let id = tree.next_id.fetch_add(1, Ordering::Relaxed);
        let entry = TaskEntry::new(id, name, site, tree.now_ns(), kind);
        // Counted under the shard's lock: a shutdown that closes this scope afterwards sees it.
        let guard = self
            .inner
            .tasks
            .insert(&self.inner, entry)
            .map_err(|_| SpawnError::Closed { scope: self.path().to_owned() })?;
        Ok((guard, id))
    }
}

/// The node API: what the rest of the crate (the supervisor, the shutdown procedure, restart
/// supervision, the leak guard) may do to a scope. Everything else about a node is private.
impl Scope {
    /// The root scope of a new tree named `name`, running its tasks on `runtime` (the current
    /// runtime at each spawn when `None`).
    pub(crate) fn new_tree(
        name: &str,
        runtime: Option<Handle>,
        abort_grace: Duration,
        event_capacity: usize,
    ) -> Scope {
        let (events, _) = broadcast::channel(event_capacity.max(1));
        let tree = Arc::new(Tree {
            next_id: AtomicU64::new(1),
            epoch: Instant::now(),
            runtime,
            events,
            abort_grace,
        });
        let (token, abort) = (CancellationToken::new(), CancellationToken::new());
        let inner = ScopeInner::new(name, Arc::from(name), None, tree, token, abort, false, false);
        Scope { inner: Arc::new(inner) }
    }

    /// A child scope that is one incarnation of a supervised child: escalations from below stop
    /// at it.
    pub(crate) fn supervised_child(&self, name: &str) -> Scope {
        Scope { inner: self.inner.new_child(name, true) }
    }

    /// Whether this scope stops escalations: one incarnation of a supervised child, or an
    /// isolated child.
    pub(crate) fn is_supervised(&self) -> bool {
        self.inner.supervised
    }

    /// The parent scope; `None` at the root.
    pub(crate) fn parent(&self) -> Option<Scope> {
        self.inner.parent.clone().map(|inner| Scope { inner })
    }

    /// The id the next task spawned anywhere in this tree will get; tasks with smaller ids were
    /// spawned before this call.
    pub(crate) fn next_task_id(&self) -> u64 {
        self.inner.tree.next_id.load(Ordering::Relaxed)
    }

    /// Closes the scope to new tasks (children created from now on are born closed) and returns
    /// its live children, oldest first.
    pub(crate) fn close(&self) -> Vec<Scope> {
        self.inner.close().into_iter().map(|inner| Scope { inner }).collect()
    }

    /// Cancels the scope's token (and with it the subtree's).
    pub(crate) fn cancel(&self) {
        self.inner.token.cancel();
    }

    /// Whether the subtree has no live task.
    pub(crate) fn is_idle(&self) -> bool {
        self.inner.busy.0.load(Ordering::Acquire) == 0
    }

    /// Waits until the subtree has no live task or `deadline` passes; true when it has none.
    pub(crate) async fn wait_idle_until(&self, deadline: tokio::time::Instant) -> bool {
        loop {
            let mut notified = pin!(self.inner.idle.notified());
            notified.as_mut().enable();
            if self.is_idle() {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.is_idle();
            }
        }
    }

    /// This scope's own live tasks (not its children's), oldest first.
    pub(crate) fn own_tasks(&self) -> Vec<TaskInfo> {
        let inner = &self.inner;
        let mut tasks = inner.tasks.infos(inner.tree.now_ns(), inner.is_aborted());
        tasks.sort_by_key(|t| t.id);
        tasks
    }

    /// Cancels the subtree's tokens, throws its abort switch (every async task ends at its next
    /// poll; blocking closures not yet started never start) and closes every scope in it.
    /// Returns the tasks that were alive, oldest first. Blocking closures already running cannot
    /// be stopped; they are listed all the same.
    pub(crate) fn abort_subtree(&self) -> Vec<TaskInfo> {
        self.inner.token.cancel();
        self.inner.abort.cancel();
        let mut aborted = Vec::new();
        self.inner.close_and_list(&mut aborted);
        aborted.sort_by_key(|t| t.id);
        aborted
    }

    /// How long a shutdown waits for aborted tasks to end.
    pub(crate) fn abort_grace(&self) -> Duration {
        self.inner.tree.abort_grace
    }

    /// The outcome of this scope's shutdown: `run` makes it the first time it is asked for;
    /// every caller, concurrent or later, gets a clone of that one.
    pub(crate) async fn shutdown_once<F>(&self, run: impl FnOnce() -> F) -> Outcome
    where
        F: Future<Output = Outcome>,
    {
        self.inner.shutdown.get_or_init(run).await.clone()
    }

    /// Fails this scope with `escalation` (the first one recorded stays), cancels it and wakes
    /// whoever waits in [`Scope::failed`].
    pub(crate) fn fail(&self, escalation: &Escalation) {
        self.inner.failure.lock().get_or_insert_with(|| escalation.clone());
        self.inner.token.cancel();
        self.inner.failed.notify_waiters();
    }

    /// Publishes a supervision event to the tree's receivers (having none is fine).
    pub(crate) fn publish(&self, event: SupervisionEvent) {
        let _ = self.inner.tree.events.send(event);
    }
}
