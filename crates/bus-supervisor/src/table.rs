//! The table of one scope's live tasks, and the registration each task holds in it.
//!
//! Owns: [`TaskTable`], the entries ([`TaskEntry`]) of a scope's live tasks, split over a few
//! independently locked shards so that the thread spawning tasks and the workers ending them
//! rarely wait for each other; [`TaskGuard`], one task's registration (its shard and slot),
//! released on drop; and [`Owner`], all a table knows of the scope it belongs to. Each shard is a
//! slab with a free list (no hashing, no search) and is its own `Arc`: a task's guard holds its
//! shard and slot, so registering and deregistering touch the shard's cache lines only (its lock,
//! its reference count), not the scope's.
//!
//! Invariants:
//! - A slot holds at most one entry and is reused only after its entry was removed. Only a
//!   guard's drop removes an entry.
//! - Each shard carries the scope's `closed` flag, set under the shard's lock by
//!   [`TaskTable::close`], and insertion checks it under the same lock: once `close` has
//!   returned, no insert can succeed.
//! - A non-empty shard holds its owner (so a scope with live tasks stays alive) and counts once
//!   in it ([`Owner::acquire`] under the shard's lock, [`Owner::release`] when it empties): the
//!   shard's transitions between empty and not empty are the only times a task's registration
//!   touches the scope.
//! - Each shard mirrors its scope's abort switch (the flag each poll reads, thrown by
//!   [`TaskTable::abort`]; the token a waiting task waits on) and its path, so that a running
//!   task needs nothing but its guard.
//! - A shard that empties keeps room for at most `RETAIN` tasks; a larger burst's memory is
//!   given back.

use std::borrow::Cow;
use std::panic::Location;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;

use crate::info::{TaskId, TaskInfo, TaskKind, TaskPath, TaskState};

/// Shards per table (a power of two).
const SHARDS: usize = 4;
/// Slots a shard keeps when it empties (about 1.4 MiB): what a burst beyond this used is given
/// back.
const RETAIN: usize = 1 << 15;

/// The scope a table belongs to, as the table's shards see it: each shard holds it while the
/// shard has entries, and counts in it once while it does.
pub(crate) trait Owner: Send + Sync {
    /// A shard received its first entry (called under the shard's lock).
    fn acquire(&self);
    /// A shard lost its last entry (called after the shard's lock is released).
    fn release(&self);
}

/// The entry a table keeps for each live task.
///
/// Kept small (every live task has one): the start time is nanoseconds since the tree's epoch.
pub(crate) struct TaskEntry {
    id: u64,
    name: Cow<'static, str>,
    site: &'static Location<'static>,
    started_ns: u64,
    kind: TaskKind,
}

impl TaskEntry {
    pub(crate) fn new(
        id: u64,
        name: Cow<'static, str>,
        site: &'static Location<'static>,
        started_ns: u64,
        kind: TaskKind,
    ) -> Self {
        TaskEntry { id, name, site, started_ns, kind }
    }

    /// Describes the entry; `now_ns` is nanoseconds since the tree's epoch.
    fn info(&self, scope_path: &str, now_ns: u64, aborted: bool) -> TaskInfo {
        TaskInfo {
            id: TaskId(self.id),
            path: TaskPath { scope: scope_path, name: &self.name }.to_string(),
            spawned_at: self.site,
            age: Duration::from_nanos(now_ns.saturating_sub(self.started_ns)),
            kind: self.kind,
            state: if aborted { TaskState::AbortRequested } else { TaskState::Running },
        }
    }
}

struct ShardState {
    closed: bool,
    slots: Vec<Option<TaskEntry>>,
    free: Vec<u32>,
    len: usize,
    /// The owner, held while the shard has entries.
    owner: Option<Arc<dyn Owner>>,
}

/// One independently locked part of a scope's table.
///
/// Laid out in declaration order (`repr(C)`), what every registration and every poll touches
/// first: the lock and the state, then the abort flag; the rarely read mirrors come last, so that
/// they do not push the hot fields onto another cache line.
#[repr(C)]
struct Shard {
    state: Mutex<ShardState>,
    /// The scope's abort switch, mirrored here so that a task reads it from the shard its guard
    /// already holds: the flag each poll checks (one atomic load) and the token a waiting task
    /// waits on.
    aborted: AtomicBool,
    abort: CancellationToken,
    /// The scope's path, for a task's panic report.
    scope_path: Arc<str>,
}

/// The table was closed: no insert.
pub(crate) struct Closed;

pub(crate) struct TaskTable {
    shards: [Arc<Shard>; SHARDS],
}

impl TaskTable {
    /// An empty table of the scope at `scope_path`, whose abort switch is `abort`.
    pub(crate) fn new(closed: bool, abort: &CancellationToken, scope_path: &Arc<str>) -> Self {
        let aborted = abort.is_cancelled();
        TaskTable {
            shards: std::array::from_fn(|_| {
                Arc::new(Shard {
                    state: Mutex::new(ShardState {
                        closed,
                        slots: Vec::new(),
                        free: Vec::new(),
                        len: 0,
                        owner: None,
                    }),
                    aborted: AtomicBool::new(aborted),
                    abort: abort.clone(),
                    scope_path: Arc::clone(scope_path),
                })
            }),
        }
    }

    /// Stores `entry` unless the table is closed, and returns its registration. When the shard
    /// was empty it takes hold of `owner` and counts in it (under the shard's lock, so that
    /// whoever closes the table afterwards sees the count).
    pub(crate) fn insert<O: Owner + 'static>(
        &self,
        owner: &Arc<O>,
        entry: TaskEntry,
    ) -> Result<TaskGuard, Closed> {
        let shard = &self.shards[(entry.id as usize) & (SHARDS - 1)];
        let mut state = shard.state.lock();
        if state.closed {
            return Err(Closed);
        }
        if state.len == 0 {
            state.owner = Some(Arc::clone(owner) as Arc<dyn Owner>);
            owner.acquire();
        }
        state.len += 1;
        let slot = match state.free.pop() {
            Some(slot) => {
                state.slots[slot as usize] = Some(entry);
                slot
            }
            None => {
                state.slots.push(Some(entry));
                // More than 4 billion live tasks in one shard would exhaust memory first.
                u32::try_from(state.slots.len() - 1).unwrap_or(u32::MAX)
            }
        };
        drop(state);
        Ok(TaskGuard { shard: Arc::clone(shard), slot })
    }

    /// Closes every shard.
    pub(crate) fn close(&self) {
        for shard in &self.shards {
            shard.state.lock().closed = true;
        }
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.shards[0].state.lock().closed
    }

    /// Throws the abort switch of every shard.
    pub(crate) fn abort(&self) {
        for shard in &self.shards {
            shard.aborted.store(true, Ordering::Release);
        }
    }

    /// The number of entries.
    pub(crate) fn len(&self) -> usize {
        self.shards.iter().map(|s| s.state.lock().len).sum()
    }

    /// Describes every entry (shard by shard, not sorted); `now_ns` is nanoseconds since the
    /// tree's epoch, `aborted` whether the scope's abort switch was thrown.
    pub(crate) fn infos(&self, now_ns: u64, aborted: bool) -> Vec<TaskInfo> {
        let mut out = Vec::new();
        for shard in &self.shards {
            let state = shard.state.lock();
            let entries = state.slots.iter().flatten();
            out.extend(entries.map(|e| e.info(&shard.scope_path, now_ns, aborted)));
        }
        out
    }
}

impl Shard {
    /// Removes the entry in `slot`; when the shard empties, lets go of its owner and uncounts
    /// it.
    fn remove(&self, slot: u32) {
        let (entry, emptied) = {
            let mut state = self.state.lock();
            let entry = state.slots.get_mut(slot as usize).and_then(Option::take);
            if entry.is_some() {
                state.len -= 1;
            }
            let emptied = if state.len == 0 {
                state.slots.clear();
                state.free.clear();
                // Keep the room of a moderate burst for the next one.
                if state.slots.capacity() > RETAIN {
                    state.slots.shrink_to(RETAIN);
                    state.free.shrink_to(RETAIN);
                }
                state.owner.take()
            } else {
                if entry.is_some() {
                    state.free.push(slot);
                }
                None
            };
            (entry, emptied)
        };
        drop(entry);
        if let Some(owner) = emptied {
            owner.release();
        }
    }
}

/// The registration of one task: its entry in its scope's table. Dropping it removes the entry
/// and, when that empties the shard, uncounts the shard in its scope.
pub(crate) struct TaskGuard {
    shard: Arc<Shard>,
    slot: u32,
}

impl TaskGuard {
    /// Whether the scope's abort switch was thrown (one atomic load).
    pub(crate) fn is_aborted(&self) -> bool {
        self.shard.aborted.load(Ordering::Acquire)
    }

    /// The scope's abort switch, for a task that waits.
    pub(crate) fn abort_switch(&self) -> &CancellationToken {
        &self.shard.abort
    }

    /// The path of the task's scope.
    pub(crate) fn scope_path(&self) -> &str {
        &self.shard.scope_path
    }

    /// The task's name and spawn site.
    pub(crate) fn name_and_site(&self) -> Option<(Cow<'static, str>, &'static Location<'static>)> {
        let state = self.shard.state.lock();
        state.slots.get(self.slot as usize)?.as_ref().map(|e| (e.name.clone(), e.site))
    }
}

impl Drop for TaskGuard {
    fn drop(&mut self) {
        self.shard.remove(self.slot);
    }
}
