//! The state a supervised child hands from one incarnation to the next (see
//! [`Scope::supervise`](crate::Scope::supervise)).
//!
//! Owns: [`Handover`] (the slot the child's factory holds, one per supervised child) and
//! [`Held`] (an incarnation's hold on the state; empty when there was none to take).
//!
//! Invariants:
//! - At most one incarnation holds the state at a time: [`Handover::take`] empties the slot.
//! - An incarnation that panics puts the state back (its [`Held`] is dropped while the thread
//!   unwinds), for the next incarnation to take over; one that ends in any other way (it
//!   returned, or it was aborted) drops the state with it, so the next finds the slot empty.
//! - A running incarnation holds the slot only weakly: when supervision ends (the factory, and
//!   with it the last [`Handover`], dropped), the state is dropped too, whatever holds it.

use std::sync::{Arc, Weak};

use parking_lot::Mutex;

/// The state of a supervised child, handed from one incarnation to the next after a panic.
/// Cheap to clone: the factory keeps one and gives each incarnation a clone to
/// [`take`](Handover::take).
///
/// ```
/// use bus_supervisor::{ChildSpec, Handover, Scope};
///
/// # async fn example(scope: Scope) -> Result<(), bus_supervisor::SpawnError> {
/// let counter = Handover::new(0_u64);
/// scope.supervise("counter", ChildSpec::transient(), move |_scope: Scope| {
///     let handover = counter.clone();
///     async move {
///         let mut held = handover.take();
///         let Some(count) = held.get_mut() else { return Err("nothing to take over") };
///         *count += 1; // a panic from here on hands the count to the next incarnation
///         Ok(())
///     }
/// })?;
/// # Ok(())
/// # }
/// ```
pub struct Handover<T> {
    slot: Arc<Mutex<Slot<T>>>,
}

struct Slot<T> {
    state: Option<T>,
    /// Incarnations that took the state so far.
    taken: u32,
}

impl<T> Clone for Handover<T> {
    fn clone(&self) -> Self {
        Handover { slot: Arc::clone(&self.slot) }
    }
}

impl<T> std::fmt::Debug for Handover<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let slot = self.slot.lock();
        f.debug_struct("Handover")
            .field("held", &slot.state.is_none())
            .field("taken", &slot.taken)
            .finish()
    }
}

impl<T> Handover<T> {
    /// A handover holding the first incarnation's `state`.
    pub fn new(state: T) -> Self {
        Handover { slot: Arc::new(Mutex::new(Slot { state: Some(state), taken: 0 })) }
    }

    /// Takes the state for an incarnation, keeping only a weak hold on the slot (this clone is
    /// consumed). The [`Held`] is empty when there was none to take: an earlier incarnation
    /// holds it, or ended without panicking (and so dropped it).
    pub fn take(self) -> Held<T> {
        let mut slot = self.slot.lock();
        let state = slot.state.take();
        let restarted = slot.taken > 0;
        if state.is_some() {
            slot.taken = slot.taken.saturating_add(1);
        }
        drop(slot);
        Held { state, slot: Arc::downgrade(&self.slot), restarted }
    }
}

/// An incarnation's hold on the state of a [`Handover`]. Dropped while the thread panics, it
/// puts the state back for the next incarnation; dropped otherwise, it drops the state.
pub struct Held<T> {
    state: Option<T>,
    slot: Weak<Mutex<Slot<T>>>,
    restarted: bool,
}

impl<T> Held<T> {
    /// The state; `None` when there was none to take.
    pub fn get_mut(&mut self) -> Option<&mut T> {
        self.state.as_mut()
    }

    /// Whether an earlier incarnation held this state (this one is a restart after a panic).
    pub fn restarted(&self) -> bool {
        self.restarted
    }
}

impl<T: std::fmt::Debug> std::fmt::Debug for Held<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Held")
            .field("state", &self.state)
            .field("restarted", &self.restarted)
            .finish()
    }
}

impl<T> Drop for Held<T> {
    fn drop(&mut self) {
        if std::thread::panicking()
            && let Some(slot) = self.slot.upgrade()
            && let Some(state) = self.state.take()
        {
            slot.lock().state = Some(state);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]

    use super::*;

    #[test]
    fn the_first_take_gets_the_state_and_is_not_a_restart() {
        let handover = Handover::new(String::from("state"));
        let mut held = handover.clone().take();
        assert_eq!(held.get_mut().unwrap(), "state");
        assert!(!held.restarted());
    }

    #[test]
    fn only_one_incarnation_holds_the_state() {
        let handover = Handover::new(1);
        let _held = handover.clone().take();
        assert!(handover.take().get_mut().is_none());
    }

    #[test]
    fn a_panicking_incarnation_hands_the_state_to_the_next() {
        let handover = Handover::new(vec![1]);
        let incarnation = handover.clone();
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let mut held = incarnation.take();
            held.get_mut().unwrap().push(2);
            panic!("incarnation failed");
        }));
        assert!(panicked.is_err());
        let mut next = handover.take();
        assert!(next.restarted());
        assert_eq!(next.get_mut().unwrap(), &vec![1, 2]);
    }

    #[test]
    fn an_incarnation_that_ends_without_panicking_drops_the_state() {
        let handover = Handover::new(Arc::new(()));
        let witness = {
            let mut held = handover.clone().take();
            Arc::downgrade(held.get_mut().unwrap())
        };
        assert!(witness.upgrade().is_none(), "the state was dropped with its holder");
        assert!(handover.take().get_mut().is_none());
    }

    #[test]
    fn a_running_incarnation_does_not_keep_the_slot_alive() {
        let handover = Handover::new(Arc::new(()));
        let mut held = handover.take();
        let witness = Arc::downgrade(held.get_mut().unwrap());
        // The last handover is gone (supervision over): a panic now drops the state.
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
            let _held = held;
            panic!("incarnation failed");
        }));
        assert!(panicked.is_err());
        assert!(witness.upgrade().is_none());
    }
}
