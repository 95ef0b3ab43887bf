//! The dispatch's locked state machine, [`State`] (behind `Shared::state`): a slot per message
//! accepted and not finished, the key chains, the ready queue, the partitions with their
//! [`CommitTracker`]s, the admission queue of waiting submitters, and the transitions: enqueue,
//! claim, start, unclaim, finish, discard, abandon.
//!
//! A slot is `Waiting` (in its key's chain) or `Ready` (in the ready queue), then `Claimed` by a
//! worker, `Running` once its future was seen pending, `Abandoned` when a drain abandons it on a
//! worker, and `Free` again once it ended or was discarded.
//!
//! Invariants:
//! - **Per-key FIFO.** For each dispatch key at most one message is ready or running; the others
//!   wait in the key's chain in submission order. The next one becomes ready only when the
//!   previous one has ended (done, retained, abandoned, panicked) or was discarded. Keys are
//!   global to the dispatch, so a key seen in two partitions is serialised across both.
//! - **Commit safety.** A message's offset is in its partition's [`CommitTracker`] before the
//!   message can run, and is marked done only when processing returned [`Processed::Done`].
//!   Discarded, abandoned, retained and panicked messages stay pending, so the committable
//!   position never passes them: they are redelivered.
//! - A claimed message counts as running: its key stays taken and a drain waits for it.

use std::collections::VecDeque;
use std::hash::BuildHasher;

use hashbrown::HashTable;
use rustc_hash::FxBuildHasher;

use super::shared::Wake;
use super::{DispatchConfig, DispatchStats, Processed, dispatch_key};
use crate::commit::CommitTracker;
use crate::record::Message;
use crate::record::TopicPartition;

/// No index.
const NIL: usize = usize::MAX;

/// Key buffers larger than this are not kept for reuse.
const MAX_KEPT_KEY_CAPACITY: usize = 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SlotState {
    Free,
    /// In its key's chain, behind the key's ready or running message.
    Waiting,
    /// In the ready queue.
    Ready,
    /// Claimed by a worker, not started or started and not yet seen pending.
    Claimed,
    /// On a worker.
    Running,
    /// On a worker, abandoned by a drain: its future is being dropped.
    Abandoned,
}

/// A message accepted and not finished.
struct Slot {
    /// The message, until a worker takes it.
    msg: Option<Message>,
    offset: i64,
    part: usize,
    /// Its key entry, or `NIL` when independent.
    key: usize,
    /// The next message of the same key waiting (or the next free slot).
    next: usize,
    state: SlotState,
    /// While running: the worker and the job's sequence number.
    worker: usize,
    seq: u64,
}

/// A key with a message ready or running; `head`..`tail` are its waiting messages.
struct KeyEntry {
    bytes: Vec<u8>,
    hash: u64,
    head: usize,
    tail: usize,
}

/// A partition's tracking.
pub(super) struct Part {
    pub(super) tp: TopicPartition,
    pub(super) tracker: CommitTracker,
    /// Its messages queued or running (slots referring to this entry).
    in_flight: usize,
    /// Its messages running (including abandoned ones not yet dropped).
    pub(super) running: usize,
    /// Drains in progress on it.
    pub(super) draining: usize,
    /// Claims discarded while a drain was waiting (added to that drain's report).
    pub(super) late_discarded: usize,
    /// The highest offset of it ever claimed by a worker (-1: none): what was handled, or is
    /// being handled, lies at or below it.
    claimed_up_to: i64,
    /// A drain is finishing its queued messages at or below `claimed_up_to` (before the
    /// drain's deadline), so that its commit covers every message handled.
    pub(super) finishing: bool,
    /// Forgotten: no longer found by lookups; freed once nothing refers to it.
    pub(super) forgotten: bool,
}

/// How a message ended on a worker.
pub(super) enum Finish {
    Processed(Processed),
    Abandoned,
    Panicked,
}

/// A message taken by a worker.
pub(super) struct Job {
    pub(super) slot: usize,
    pub(super) msg: Message,
    pub(super) seq: u64,
}

/// The state of a dispatch, behind `Shared::state`.
pub(super) struct State {
    max_in_flight: usize,
    ordering_by_key: bool,
    pub(super) closed: bool,
    /// Messages accepted and not finished.
    pub(super) in_flight: usize,
    /// Messages admitted and not yet enqueued (a submission between pieces).
    pub(super) incoming: usize,
    slots: Vec<Slot>,
    free_slot: usize,
    keys: Vec<KeyEntry>,
    free_keys: Vec<usize>,
    /// Key bytes -> index in `keys`, for the keys with a message ready or running.
    key_index: HashTable<usize>,
    pub(super) ready: VecDeque<usize>,
    pub(super) parts: Vec<Option<Part>>,
    free_parts: Vec<usize>,
    /// The partition of the last message submitted (batches are usually of one partition).
    last_part: usize,
    /// Workers waiting for work, registered with `work` and not yet notified.
    pub(super) sleepers: usize,
    /// The last message a worker reported finished at its first poll (workers claim several
    /// at once then).
    pub(super) fast: bool,
    /// Submitters waiting for room, in arrival order: ticket and batch size.
    pub(super) admit: VecDeque<(u64, usize)>,
    pub(super) next_ticket: u64,
    /// The head submitter was notified and has not looked yet.
    pub(super) head_woken: bool,
    /// The sequence number of the next job taken by a worker.
    next_seq: u64,
    pub(super) stats: DispatchStats,
}

impl State {
    pub(super) fn new(config: DispatchConfig) -> Self {
        State {
            max_in_flight: config.max_in_flight,
            ordering_by_key: config.ordering_by_key,
            closed: false,
            in_flight: 0,
            incoming: 0,
            slots: Vec::new(),
            free_slot: NIL,
            keys: Vec::new(),
            free_keys: Vec::new(),
            key_index: HashTable::new(),
            ready: VecDeque::new(),
            parts: Vec::new(),
            free_parts: Vec::new(),
            last_part: NIL,
            sleepers: 0,
            fast: false,
            admit: VecDeque::new(),
            next_ticket: 0,
            head_woken: false,
            next_seq: 0,
            stats: DispatchStats::default(),
        }
    }

    pub(super) fn fits(&self, need: usize) -> bool {
        let used = self.in_flight + self.incoming;
        used == 0 || used + need <= self.max_in_flight
    }

    /// Whether to wake the submitters because the head one now fits (once per wake-up).
    pub(super) fn room_for_head(&mut self) -> bool {
        if self.head_woken {
            return false;
        }
        match self.admit.front() {
            Some(&(_, need)) if self.fits(need) => {
                self.head_woken = true;
                true
            }
            _ => false,
        }
    }

    pub(super) fn find_part(&self, topic: &str, partition: i32) -> Option<usize> {
        let matches =
            |p: &Part| !p.forgotten && p.tp.partition == partition && &*p.tp.topic == topic;
        if let Some(Some(part)) = self.parts.get(self.last_part)
            && matches(part)
        {
            return Some(self.last_part);
        }
        self.parts.iter().position(|p| p.as_ref().is_some_and(matches))
    }

    pub(super) fn part_for(&mut self, topic: &str, partition: i32) -> usize {
        if let Some(p) = self.find_part(topic, partition) {
            self.last_part = p;
            return p;
        }
        let part = Part {
            tp: TopicPartition::new(topic, partition),
            tracker: CommitTracker::new(),
            in_flight: 0,
            running: 0,
            draining: 0,
            late_discarded: 0,
            claimed_up_to: -1,
            finishing: false,
            forgotten: false,
        };
        let p = match self.free_parts.pop() {
            Some(p) => {
                self.parts[p] = Some(part);
                p
            }
            None => {
                self.parts.push(Some(part));
                self.parts.len() - 1
            }
        };
        self.last_part = p;
        p
    }

    /// Frees a forgotten partition entry once nothing refers to it.
    pub(super) fn release_part(&mut self, p: usize) {
        let free = self.parts[p]
            .as_ref()
            .is_some_and(|part| part.forgotten && part.in_flight == 0 && part.draining == 0);
        if free {
            self.parts[p] = None;
            self.free_parts.push(p);
            if self.last_part == p {
                self.last_part = NIL;
            }
        }
    }

    /// Whether none of `parts` has a message running, or queued and kept by a drain.
    pub(super) fn stopped(&self, parts: &[usize]) -> bool {
        parts.iter().all(|&p| {
            self.parts[p].as_ref().is_none_or(|part| part.running == 0 && part.in_flight == 0)
        })
    }

    fn alloc_slot(&mut self, slot: Slot) -> usize {
        if self.free_slot == NIL {
            self.slots.push(slot);
            self.slots.len() - 1
        } else {
            let s = self.free_slot;
            self.free_slot = self.slots[s].next;
            self.slots[s] = slot;
            s
        }
    }

    fn free_slot(&mut self, s: usize) {
        let slot = &mut self.slots[s];
        slot.msg = None;
        slot.state = SlotState::Free;
        slot.key = NIL;
        slot.next = self.free_slot;
        self.free_slot = s;
    }

    /// The entry of key `bytes` and whether it existed (a message of it is ready or running).
    fn key_entry(&mut self, bytes: &[u8], hasher: &FxBuildHasher) -> (usize, bool) {
        let hash = hasher.hash_one(bytes);
        let keys = &self.keys;
        if let Some(&k) = self.key_index.find(hash, |&k| keys[k].bytes == bytes) {
            return (k, true);
        }
        let k = match self.free_keys.pop() {
            Some(k) => {
                let entry = &mut self.keys[k];
                if entry.bytes.capacity() > MAX_KEPT_KEY_CAPACITY {
                    entry.bytes = Vec::new();
                }
                entry.bytes.clear();
                entry.bytes.extend_from_slice(bytes);
                entry.hash = hash;
                entry.head = NIL;
                entry.tail = NIL;
                k
            }
            None => {
                self.keys.push(KeyEntry { bytes: bytes.to_vec(), hash, head: NIL, tail: NIL });
                self.keys.len() - 1
            }
        };
        let keys = &self.keys;
        self.key_index.insert_unique(hash, k, |&k| keys[k].hash);
        (k, false)
    }

    /// Accepts one message; true when it was made ready.
    // Called once per message from `submit.rs`: inlined there, as when both were in one file.
    #[inline]
    pub(super) fn enqueue(&mut self, msg: Message, hasher: &FxBuildHasher) -> bool {
        let p = self.part_for(&msg.topic, msg.partition);
        let offset = msg.offset;
        let Some(part) = self.parts[p].as_mut() else {
            return false;
        };
        if !part.tracker.submit(offset) {
            self.stats.skipped += 1;
            tracing::warn!(
                partition = %part.tp,
                offset,
                last_submitted = ?part.tracker.last_submitted(),
                "message skipped: its offset is not above the last one submitted for the partition"
            );
            return false;
        }
        part.in_flight += 1;
        self.in_flight += 1;
        let key = match dispatch_key(&msg) {
            Some(bytes) if self.ordering_by_key => Some(self.key_entry(bytes, hasher)),
            _ => None,
        };
        match key {
            Some((k, true)) => {
                let s = self.alloc_slot(Slot {
                    msg: Some(msg),
                    offset,
                    part: p,
                    key: k,
                    next: NIL,
                    state: SlotState::Waiting,
                    worker: NIL,
                    seq: 0,
                });
                let entry = &mut self.keys[k];
                if entry.tail == NIL {
                    entry.head = s;
                } else {
                    self.slots[entry.tail].next = s;
                }
                entry.tail = s;
                false
            }
            key => {
                let s = self.alloc_slot(Slot {
                    msg: Some(msg),
                    offset,
                    part: p,
                    key: key.map_or(NIL, |(k, _)| k),
                    next: NIL,
                    state: SlotState::Ready,
                    worker: NIL,
                    seq: 0,
                });
                self.ready.push_back(s);
                true
            }
        }
    }

    /// Claims up to `want` ready messages for worker `worker`, appended to `claims`.
    pub(super) fn claim(&mut self, worker: usize, want: usize, claims: &mut VecDeque<Job>) {
        while claims.len() < want {
            let Some(s) = self.ready.pop_front() else {
                return;
            };
            let slot = &mut self.slots[s];
            let Some(msg) = slot.msg.take() else {
                continue;
            };
            let seq = self.next_seq;
            self.next_seq += 1;
            slot.state = SlotState::Claimed;
            slot.worker = worker;
            slot.seq = seq;
            if let Some(part) = self.parts[slot.part].as_mut() {
                part.running += 1;
                part.claimed_up_to = part.claimed_up_to.max(slot.offset);
            }
            self.stats.running += 1;
            claims.push_back(Job { slot: s, msg, seq });
        }
    }

    /// A claimed message was seen pending: it is now running (a drain can abandon it through
    /// its worker's control). False when a drain abandoned it in the meantime.
    pub(super) fn start(&mut self, s: usize) -> bool {
        let slot = &mut self.slots[s];
        match slot.state {
            SlotState::Claimed => {
                slot.state = SlotState::Running;
                true
            }
            SlotState::Running => true,
            _ => false,
        }
    }

    /// Takes back a worker's claims (not started), in order: to the front of the ready queue
    /// (also while their partition drains and finishes what was claimed); discarded when the
    /// dispatch is closed or their partition's drain passed its deadline (counted for the
    /// drain); ended as abandoned when a drain abandoned them.
    pub(super) fn unclaim(&mut self, claims: &mut VecDeque<Job>, wake: &mut Wake) {
        while let Some(Job { slot: s, msg, .. }) = claims.pop_back() {
            let (p, k) = (self.slots[s].part, self.slots[s].key);
            if self.slots[s].state == SlotState::Abandoned {
                self.finish(s, Finish::Abandoned, wake);
                continue;
            }
            self.stats.running -= 1;
            let draining = match self.parts[p].as_mut() {
                Some(part) => {
                    part.running -= 1;
                    if part.running == 0 && part.draining > 0 {
                        wake.drained = true;
                    }
                    part.draining > 0 && !part.finishing
                }
                None => false,
            };
            if self.closed || draining {
                if draining && let Some(part) = self.parts[p].as_mut() {
                    part.late_discarded += 1;
                }
                self.drop_queued(s);
                if k != NIL {
                    self.advance_key(k);
                }
                wake.room |= self.room_for_head();
            } else {
                let slot = &mut self.slots[s];
                slot.msg = Some(msg);
                slot.state = SlotState::Ready;
                slot.worker = NIL;
                self.ready.push_front(s);
            }
        }
    }

    /// Records how a running message ended.
    pub(super) fn finish(&mut self, s: usize, finish: Finish, wake: &mut Wake) {
        let slot = &self.slots[s];
        let (p, k, offset) = (slot.part, slot.key, slot.offset);
        let abandoned = slot.state == SlotState::Abandoned;
        self.free_slot(s);
        self.stats.running -= 1;
        self.in_flight -= 1;
        if let Some(part) = self.parts[p].as_mut() {
            part.running -= 1;
            part.in_flight -= 1;
            match finish {
                // Finished just as it was abandoned: it was reported uncommitted, so it stays so
                // (redelivered; at least once).
                Finish::Processed(Processed::Done) if abandoned => {}
                Finish::Processed(Processed::Done) => {
                    part.tracker.mark_done(offset);
                    self.stats.processed += 1;
                }
                Finish::Processed(Processed::Retain) => self.stats.retained += 1,
                Finish::Abandoned => {}
                Finish::Panicked => {
                    self.stats.panicked += 1;
                    tracing::error!(
                        partition = %part.tp,
                        offset,
                        "processing panicked; the message stays uncommitted"
                    );
                }
            }
            if part.running == 0 && part.draining > 0 {
                wake.drained = true;
            }
        }
        self.release_part(p);
        if k != NIL {
            self.advance_key(k);
        }
        wake.room |= self.room_for_head();
    }

    /// The key's ready or running message is gone: make its next one ready, or retire the key.
    fn advance_key(&mut self, k: usize) {
        let entry = &mut self.keys[k];
        if entry.head == NIL {
            let hash = entry.hash;
            if let Ok(found) = self.key_index.find_entry(hash, |&i| i == k) {
                found.remove();
            }
            self.free_keys.push(k);
        } else {
            let s = entry.head;
            entry.head = self.slots[s].next;
            if entry.head == NIL {
                entry.tail = NIL;
            }
            let slot = &mut self.slots[s];
            slot.next = NIL;
            slot.state = SlotState::Ready;
            self.ready.push_back(s);
        }
    }

    /// Removes a queued message (it stays pending in its tracker).
    fn drop_queued(&mut self, s: usize) {
        let p = self.slots[s].part;
        self.free_slot(s);
        self.in_flight -= 1;
        self.stats.discarded += 1;
        if let Some(part) = self.parts[p].as_mut() {
            part.in_flight -= 1;
        }
        self.release_part(p);
    }

    /// Removes the queued messages of the partitions in `mask`, except, when `keep_claimed`,
    /// those at or below their partition's highest claimed offset (a drain finishes them, so
    /// that no handled message lies above an uncommitted one); returns how many.
    pub(super) fn discard_queued(&mut self, mask: &[bool], keep_claimed: bool) -> usize {
        // Per partition: `None` when kept whole, else the highest offset kept.
        let kept_up_to: Vec<Option<i64>> = self
            .parts
            .iter()
            .enumerate()
            .map(|(p, part)| match part {
                Some(part) if mask.get(p).copied().unwrap_or(false) => {
                    Some(if keep_claimed { part.claimed_up_to } else { i64::MIN })
                }
                _ => None,
            })
            .collect();
        let doomed = |slot: &Slot| {
            kept_up_to.get(slot.part).copied().flatten().is_some_and(|kept| slot.offset > kept)
        };
        let mut discarded = 0;
        // Waiting chains first, so that a key's next message made ready below is a survivor.
        let keys: Vec<usize> = self.key_index.iter().copied().collect();
        for k in keys {
            let mut prev = NIL;
            let mut cur = self.keys[k].head;
            while cur != NIL {
                let next = self.slots[cur].next;
                if doomed(&self.slots[cur]) {
                    if prev == NIL {
                        self.keys[k].head = next;
                    } else {
                        self.slots[prev].next = next;
                    }
                    self.drop_queued(cur);
                    discarded += 1;
                } else {
                    prev = cur;
                }
                cur = next;
            }
            self.keys[k].tail = prev;
        }
        let ready = std::mem::take(&mut self.ready);
        for s in ready {
            let k = self.slots[s].key;
            if doomed(&self.slots[s]) {
                self.drop_queued(s);
                discarded += 1;
                if k != NIL {
                    self.advance_key(k);
                }
            } else {
                self.ready.push_back(s);
            }
        }
        discarded
    }

    /// Abandons the running messages of the partitions in `mask`. Returns them, and the
    /// workers to signal (worker, job) once the lock is released.
    #[allow(clippy::type_complexity)]
    pub(super) fn abandon(
        &mut self,
        mask: &[bool],
    ) -> (Vec<(TopicPartition, i64)>, Vec<(usize, u64)>) {
        let mut abandoned = Vec::new();
        let mut signals = Vec::new();
        for slot in &mut self.slots {
            let on_worker = matches!(slot.state, SlotState::Running | SlotState::Claimed);
            if on_worker && mask.get(slot.part).copied().unwrap_or(false) {
                // A claim is not waited on: its worker sees the state when it next locks.
                if slot.state == SlotState::Running {
                    signals.push((slot.worker, slot.seq));
                }
                slot.state = SlotState::Abandoned;
                if let Some(part) = &self.parts[slot.part] {
                    abandoned.push((part.tp.clone(), slot.offset));
                }
            }
        }
        self.stats.abandoned += abandoned.len() as u64;
        abandoned.sort();
        (abandoned, signals)
    }
}
