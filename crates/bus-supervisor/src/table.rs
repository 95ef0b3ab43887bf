//! The table of one scope's live tasks.
//!
//! Owns: [`TaskTable`], the entries of a scope's live tasks, split over a few independently
//! locked [`Shard`]s so that the thread spawning tasks and the workers ending them rarely wait
//! for each other. Each shard is a slab with a free list (no hashing, no search) and is its own
//! `Arc`: a task's guard holds its shard and slot, so registering and deregistering touch the
//! shard's cache lines only (its lock, its reference count), not the scope's.
//!
//! Invariants:
//! - A slot holds at most one entry and is reused only after its entry was removed.
//! - Each shard carries the scope's `closed` flag, set under the shard's lock by
//!   [`TaskTable::close`], and insertion checks it under the same lock: once `close` has
//!   returned, no insert can succeed.
//! - A non-empty shard holds its scope (so a scope with live tasks stays alive) and counts once
//!   in the scope's `busy` count: the shard's transitions between empty and not empty, made
//!   under its lock, are the only times a task's registration touches the scope.
//! - A shard that empties keeps room for at most `RETAIN` tasks; a larger burst's memory is
//!   given back.

use std::panic::Location;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::Mutex;

use crate::scope::ScopeInner;
use crate::task::TaskEntry;

/// Shards per table (a power of two).
const SHARDS: usize = 4;
/// Slots a shard keeps when it empties (about 1.4 MiB): what a burst beyond this used is given
/// back.
const RETAIN: usize = 1 << 15;

struct ShardState {
    closed: bool,
    slots: Vec<Option<TaskEntry>>,
    free: Vec<u32>,
    len: usize,
    /// The scope, held while the shard has entries.
    scope: Option<Arc<ScopeInner>>,
}

/// One independently locked part of a scope's table.
pub(crate) struct Shard {
    state: Mutex<ShardState>,
    /// The scope's abort switch, mirrored here so that a task's poll reads it from the shard
    /// its guard already holds.
    aborted: AtomicBool,
}

/// The table was closed: no insert.
pub(crate) struct Closed;

pub(crate) struct TaskTable {
    shards: [Arc<Shard>; SHARDS],
}

impl TaskTable {
    pub(crate) fn new(closed: bool, aborted: bool) -> Self {
        TaskTable {
            shards: std::array::from_fn(|_| {
                Arc::new(Shard {
                    state: Mutex::new(ShardState {
                        closed,
                        slots: Vec::new(),
                        free: Vec::new(),
                        len: 0,
                        scope: None,
                    }),
                    aborted: AtomicBool::new(aborted),
                })
            }),
        }
    }

    /// Stores `entry` unless the table is closed; returns its shard and slot. When the shard was
    /// empty it takes hold of `scope` and counts in it (under the shard's lock, so that whoever
    /// closes the table afterwards sees the count).
    pub(crate) fn insert(
        &self,
        scope: &Arc<ScopeInner>,
        entry: TaskEntry,
    ) -> Result<(Arc<Shard>, u32), Closed> {
        let shard = &self.shards[(entry.id as usize) & (SHARDS - 1)];
        let mut state = shard.state.lock();
        if state.closed {
            return Err(Closed);
        }
        if state.len == 0 {
            state.scope = Some(Arc::clone(scope));
            scope.acquire();
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
        Ok((Arc::clone(shard), slot))
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

    /// Maps every entry (shard by shard).
    pub(crate) fn map<T>(&self, mut f: impl FnMut(&TaskEntry) -> T) -> Vec<T> {
        let mut out = Vec::new();
        for shard in &self.shards {
            out.extend(shard.state.lock().slots.iter().flatten().map(&mut f));
        }
        out
    }
}

impl Shard {
    /// Removes the entry in `slot`; when the shard empties, lets go of its scope and uncounts it.
    pub(crate) fn remove(&self, slot: u32) {
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
                state.scope.take()
            } else {
                if entry.is_some() {
                    state.free.push(slot);
                }
                None
            };
            (entry, emptied)
        };
        drop(entry);
        if let Some(scope) = emptied {
            scope.release();
        }
    }

    /// Whether the scope's abort switch was thrown (one atomic load).
    pub(crate) fn is_aborted(&self) -> bool {
        self.aborted.load(Ordering::Acquire)
    }

    /// The scope (held while the shard has entries, so while a guard of it lives).
    pub(crate) fn scope(&self) -> Option<Arc<ScopeInner>> {
        self.state.lock().scope.clone()
    }

    /// The name and spawn site of the entry in `slot`.
    pub(crate) fn name_and_site(
        &self,
        slot: u32,
    ) -> Option<(std::borrow::Cow<'static, str>, &'static Location<'static>)> {
        let state = self.state.lock();
        state.slots.get(slot as usize)?.as_ref().map(|e| (e.name.clone(), e.site))
    }
}
