//! Commit tracking for one partition: which offsets were handed out, which are finished, and the
//! position that may be committed.
//!
//! Owns: [`CommitTracker`].
//!
//! Invariants:
//! - Offsets are submitted in strictly increasing order; gaps are allowed (compacted records,
//!   transaction markers). An offset not above the last one submitted is refused.
//! - The committable position is the lowest submitted offset not yet done, or the last submitted
//!   offset + 1 when every one is done; `None` before anything was submitted. It never moves
//!   backwards, and it never passes an offset that is not done, so committing it loses nothing.
//! - Done entries behind an unfinished one are kept as tombstones so that the list stays sorted
//!   for binary search; they are compacted away once they outnumber the pending entries, so memory
//!   stays proportional to the pending count (never to the number of offsets processed, even when
//!   one offset stays pending forever).
//!
//! Every operation is O(log n) in the pending count (amortised O(1) for the bookkeeping).

use std::collections::VecDeque;

/// Tombstones tolerated before a compaction, at least.
const MIN_TOMBSTONES: usize = 64;

/// Tracks the offsets of one partition submitted for processing and finished out of order, and
/// yields the contiguous finished prefix: the position to commit.
///
/// ```
/// use bus_core::commit::CommitTracker;
///
/// let mut tracker = CommitTracker::new();
/// assert_eq!(tracker.committable(), None);
/// for offset in [10, 11, 13] {
///     assert!(tracker.submit(offset)); // 12 is a gap (compacted away)
/// }
/// assert!(tracker.mark_done(11));
/// assert_eq!(tracker.committable(), Some(10)); // 10 is still running
/// assert!(tracker.mark_done(10));
/// assert_eq!(tracker.committable(), Some(13));
/// assert!(tracker.mark_done(13));
/// assert_eq!(tracker.committable(), Some(14));
/// ```
#[derive(Debug, Clone, Default)]
pub struct CommitTracker {
    /// Submitted offsets in increasing order with their done flag. The front is never done.
    entries: VecDeque<(i64, bool)>,
    /// The last offset submitted.
    last: Option<i64>,
    /// Entries not done.
    pending: usize,
}

impl CommitTracker {
    /// An empty tracker.
    pub fn new() -> Self {
        CommitTracker::default()
    }

    /// Records `offset` as handed out for processing. Returns false (and records nothing) when
    /// `offset` is not above the last offset submitted.
    pub fn submit(&mut self, offset: i64) -> bool {
        if self.last.is_some_and(|last| offset <= last) {
            return false;
        }
        self.entries.push_back((offset, false));
        self.last = Some(offset);
        self.pending += 1;
        true
    }

    /// Marks `offset` as finished. Returns false when it is unknown: never submitted, already
    /// done, or dropped by [`CommitTracker::reset`].
    pub fn mark_done(&mut self, offset: i64) -> bool {
        let Some(index) = self.find(offset) else {
            return false;
        };
        let Some(entry) = self.entries.get_mut(index) else {
            return false;
        };
        if entry.1 {
            return false;
        }
        entry.1 = true;
        self.pending -= 1;
        if index == 0 {
            while self.entries.front().is_some_and(|&(_, done)| done) {
                self.entries.pop_front();
            }
        } else {
            let tombstones = self.entries.len() - self.pending;
            if tombstones > self.pending.max(MIN_TOMBSTONES) {
                self.entries.retain(|&(_, done)| !done);
            }
        }
        true
    }

    /// The index of `offset`. Entries appended since the last compaction are contiguous unless
    /// the partition has gaps, so entry `i` usually holds `front + i` (nothing compacted) or
    /// `back - (len - 1 - i)` (compacted before): try both, then search.
    fn find(&self, offset: i64) -> Option<usize> {
        let &(front, _) = self.entries.front()?;
        let &(back, _) = self.entries.back()?;
        if offset < front || offset > back {
            return None;
        }
        let holds = |i: usize| self.entries.get(i).is_some_and(|&(o, _)| o == offset);
        let from_front = usize::try_from(offset - front).ok()?;
        if holds(from_front) {
            return Some(from_front);
        }
        let from_back = usize::try_from(back - offset).ok()?;
        if let Some(i) = (self.entries.len() - 1).checked_sub(from_back)
            && holds(i)
        {
            return Some(i);
        }
        self.entries.binary_search_by_key(&offset, |&(o, _)| o).ok()
    }

    /// The position to commit (the next offset to read): the lowest offset submitted and not
    /// done, or the last submitted + 1 when all are done. `None` before the first submission.
    pub fn committable(&self) -> Option<i64> {
        match self.entries.front() {
            Some(&(offset, _)) => Some(offset),
            None => self.last.map(|last| last.saturating_add(1)),
        }
    }

    /// The number of offsets submitted and not done.
    pub fn pending(&self) -> usize {
        self.pending
    }

    /// The last offset submitted.
    pub fn last_submitted(&self) -> Option<i64> {
        self.last
    }

    /// Forgets everything (the partition was revoked): back to the state of a new tracker.
    /// Returns the number of pending offsets dropped.
    pub fn reset(&mut self) -> usize {
        let pending = self.pending;
        *self = CommitTracker::default();
        pending
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    #[test]
    fn nothing_submitted_is_none() {
        let mut t = CommitTracker::new();
        assert_eq!(t.committable(), None);
        assert_eq!(t.pending(), 0);
        assert!(!t.mark_done(0));
        assert_eq!(t.committable(), None);
    }

    #[test]
    fn in_order_completion_advances() {
        let mut t = CommitTracker::new();
        for o in 0..5 {
            assert!(t.submit(o));
        }
        assert_eq!(t.committable(), Some(0));
        for o in 0..5 {
            assert!(t.mark_done(o));
            assert_eq!(t.committable(), Some(o + 1));
        }
        assert_eq!(t.pending(), 0);
    }

    #[test]
    fn out_of_order_completion_yields_the_contiguous_prefix() {
        let mut t = CommitTracker::new();
        for o in 100..110 {
            t.submit(o);
        }
        for o in [105, 109, 101, 102] {
            assert!(t.mark_done(o));
            assert_eq!(t.committable(), Some(100), "after {o}");
        }
        assert_eq!(t.pending(), 6);
        assert!(t.mark_done(100));
        assert_eq!(t.committable(), Some(103));
        for o in [104, 103] {
            assert!(t.mark_done(o));
        }
        assert_eq!(t.committable(), Some(106));
        for o in [108, 107, 106] {
            assert!(t.mark_done(o));
        }
        assert_eq!(t.committable(), Some(110));
        assert_eq!(t.pending(), 0);
    }

    #[test]
    fn gaps_are_skipped() {
        let mut t = CommitTracker::new();
        for o in [3, 7, 8, 20] {
            assert!(t.submit(o));
        }
        assert!(t.mark_done(7));
        assert_eq!(t.committable(), Some(3));
        assert!(t.mark_done(3));
        assert_eq!(t.committable(), Some(8));
        assert!(!t.mark_done(5), "a gap was never submitted");
        assert!(t.mark_done(8));
        assert_eq!(t.committable(), Some(20));
        assert!(t.mark_done(20));
        assert_eq!(t.committable(), Some(21));
    }

    #[test]
    fn duplicates_and_unknown_offsets_are_refused() {
        let mut t = CommitTracker::new();
        assert!(t.submit(5));
        assert!(!t.submit(5), "duplicate submission");
        assert!(!t.submit(4), "submission going backwards");
        assert!(t.submit(6));
        assert!(t.mark_done(6));
        assert!(!t.mark_done(6), "already done (tombstone)");
        assert!(!t.mark_done(99));
        assert_eq!(t.pending(), 1);
        assert!(t.mark_done(5));
        assert!(!t.mark_done(5), "already done (popped)");
        assert_eq!(t.committable(), Some(7));
    }

    #[test]
    fn a_stuck_offset_holds_the_prefix_and_memory_stays_bounded() {
        let mut t = CommitTracker::new();
        t.submit(0);
        for o in 1..100_000 {
            t.submit(o);
            assert!(t.mark_done(o));
            assert!(t.entries.len() <= 2 * MIN_TOMBSTONES + 2, "len {}", t.entries.len());
        }
        assert_eq!(t.committable(), Some(0));
        assert_eq!(t.pending(), 1);
        assert!(t.mark_done(0));
        assert_eq!(t.committable(), Some(100_000));
    }

    #[test]
    fn compaction_keeps_lookups_correct() {
        let mut t = CommitTracker::new();
        // Every third offset stays pending; the others finish, forcing compactions.
        for o in 0..3_000 {
            t.submit(o);
        }
        for o in (0..3_000).filter(|o| o % 3 != 0) {
            assert!(t.mark_done(o));
        }
        assert_eq!(t.pending(), 1_000);
        assert_eq!(t.committable(), Some(0));
        for o in (0..1_000).rev().map(|i| i * 3) {
            assert!(t.mark_done(o), "{o}");
        }
        assert_eq!(t.committable(), Some(3_000));
        assert_eq!(t.pending(), 0);
    }

    #[test]
    fn reset_forgets_everything() {
        let mut t = CommitTracker::new();
        t.submit(1);
        t.submit(2);
        t.mark_done(2);
        assert_eq!(t.reset(), 1);
        assert_eq!(t.committable(), None);
        assert_eq!(t.last_submitted(), None);
        assert!(t.submit(0), "a reset tracker accepts any offset");
        assert_eq!(t.committable(), Some(0));
    }
}
