//! The table of one scope's live tasks.
//!
//! Owns: [`TaskTable`], the entries of a scope's live tasks, split over a few independently
//! locked shards so that the thread spawning tasks and the workers ending them rarely wait for
//! each other. Each shard is a slab with a free list: registering and deregistering cost no
//! hashing and no search. A task's [`TaskKey`] (shard and slot) is kept by its guard.
//!
//! Invariants:
//! - A slot holds at most one entry and is reused only after its entry was removed.
//! - Each shard carries the scope's `closed` flag, set under the shard's lock by
//!   [`TaskTable::close`], and [`TaskTable::insert`] checks it under the same lock: once `close`
//!   has returned, no insert can succeed.
//! - A shard that empties keeps room for at most `RETAIN` tasks; a larger burst's memory is
//!   given back.

use parking_lot::Mutex;

use crate::task::TaskEntry;

/// Shards per table (a power of two).
const SHARDS: usize = 4;
/// Slots a shard keeps when it empties (about 1.4 MiB): what a burst beyond this used is given
/// back.
const RETAIN: usize = 1 << 15;

/// Where a task's entry lives.
#[derive(Clone, Copy, Debug)]
pub(crate) struct TaskKey {
    shard: u8,
    slot: u32,
}

#[derive(Default)]
struct Shard {
    closed: bool,
    slots: Vec<Option<TaskEntry>>,
    free: Vec<u32>,
    len: usize,
}

/// One shard on its own cache lines, so that threads working on different shards do not contend
/// through false sharing.
#[repr(align(128))]
struct Padded(Mutex<Shard>);

pub(crate) struct TaskTable {
    shards: [Padded; SHARDS],
}

/// The table was closed: no insert.
pub(crate) struct Closed;

impl TaskTable {
    pub(crate) fn new(closed: bool) -> Self {
        TaskTable {
            shards: std::array::from_fn(|_| {
                Padded(Mutex::new(Shard { closed, ..Shard::default() }))
            }),
        }
    }

    /// Stores `entry` unless the table is closed, and runs `counted` under the shard's lock (so
    /// that whoever closes the table afterwards sees what `counted` did).
    pub(crate) fn insert(
        &self,
        entry: TaskEntry,
        counted: impl FnOnce(),
    ) -> Result<TaskKey, Closed> {
        let shard_index = (entry.id as usize) & (SHARDS - 1);
        let mut shard = self.shards[shard_index].0.lock();
        if shard.closed {
            return Err(Closed);
        }
        shard.len += 1;
        let slot = match shard.free.pop() {
            Some(slot) => {
                shard.slots[slot as usize] = Some(entry);
                slot
            }
            None => {
                shard.slots.push(Some(entry));
                // More than 4 billion live tasks in one shard would exhaust memory first.
                u32::try_from(shard.slots.len() - 1).unwrap_or(u32::MAX)
            }
        };
        counted();
        drop(shard);
        // shard_index < SHARDS <= 256
        Ok(TaskKey { shard: shard_index as u8, slot })
    }

    /// Removes and returns the entry at `key`.
    pub(crate) fn remove(&self, key: TaskKey) -> Option<TaskEntry> {
        let mut shard = self.shards[usize::from(key.shard)].0.lock();
        let entry = shard.slots.get_mut(key.slot as usize)?.take()?;
        shard.len -= 1;
        if shard.len == 0 {
            shard.slots.clear();
            shard.free.clear();
            // Keep the room of a moderate burst for the next one; give back the excess of a
            // large one.
            if shard.slots.capacity() > RETAIN {
                shard.slots.shrink_to(RETAIN);
                shard.free.shrink_to(RETAIN);
            }
        } else {
            shard.free.push(key.slot);
        }
        Some(entry)
    }

    /// Reads the entry at `key`.
    pub(crate) fn with<R>(&self, key: TaskKey, f: impl FnOnce(&TaskEntry) -> R) -> Option<R> {
        let shard = self.shards[usize::from(key.shard)].0.lock();
        shard.slots.get(key.slot as usize)?.as_ref().map(f)
    }

    /// Closes every shard.
    pub(crate) fn close(&self) {
        for shard in &self.shards {
            shard.0.lock().closed = true;
        }
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.shards[0].0.lock().closed
    }

    /// The number of entries.
    pub(crate) fn len(&self) -> usize {
        self.shards.iter().map(|s| s.0.lock().len).sum()
    }

    /// Maps every entry (shard by shard).
    pub(crate) fn map<T>(&self, mut f: impl FnMut(&TaskEntry) -> T) -> Vec<T> {
        let mut out = Vec::new();
        for shard in &self.shards {
            out.extend(shard.0.lock().slots.iter().flatten().map(&mut f));
        }
        out
    }
}
