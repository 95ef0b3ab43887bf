//! The memory a partition reader may hold: its part of Fetch responses and decompressed
//! batches, for as long as a message decoded from them is alive
//! (`consumer.partition_buffer_bytes`).
//!
//! Owns: [`Budget`] (a semaphore of bytes), [`Charges`] (the reservations a response shared by
//! several readers holds, one per reader that asked in it) and [`Spares`] (response buffers
//! kept for reuse), and the owners behind the `Bytes` handed out ([`Spares::hold`],
//! [`Budget::hold_inflated`]).
//!
//! Invariants:
//! - Every response and decompressed batch a reader's messages reference is backed by an owner
//!   holding bytes reserved from budgets; the last message (or slice) dropped drops the owner,
//!   which gives the bytes back (and a response's buffer to its spare list). So what readers'
//!   messages reference is never more than their budgets, and waiting for room is woken by the
//!   handlers finishing, not by polling.
//! - A response shared by several readers (one Fetch for every partition a broker leads, see
//!   the `broker` module) is charged once, byte for byte, never whole to each: every reader in
//!   it reserved `partition_max_bytes` plus `FETCH_RESPONSE_SLACK` before asking, and the
//!   request's `max_bytes` is at most the sum of what they asked, so the reservations cover the
//!   response's bound. Once it is split ([`Charges::settle`]) each reader is charged its own
//!   part (its records' bytes, at most what it reserved), and the rest of the response
//!   (headers, aborted-transaction lists, the parts of readers that stopped waiting) goes to
//!   the readers in request order, each up to what it reserved. The charges are held until
//!   the last slice of the response is dropped: a reader whose messages are all handled stays
//!   charged for its part while another reader's messages keep the response alive (the bytes
//!   are alive; the budgets say so).
//! - At most `SPARE_FRAMES` response buffers wait for reuse per spare list (their memory is not
//!   counted in the budget: they are the reason a fetch does not touch fresh pages every time).

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use parking_lot::Mutex;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Response buffers kept for reuse.
const SPARE_FRAMES: usize = 3;

/// A reader's memory budget.
#[derive(Debug, Clone)]
pub(crate) struct Budget {
    permits: Arc<Semaphore>,
}

/// Bytes reserved from a [`Budget`], given back when dropped.
#[derive(Debug)]
pub(crate) struct Reserved(OwnedSemaphorePermit);

impl Reserved {
    /// Bytes reserved.
    pub(crate) fn bytes(&self) -> usize {
        self.0.num_permits()
    }

    /// Keeps `bytes` of the reservation (at most what it has) and gives the rest back.
    pub(crate) fn shrink_to(&mut self, bytes: usize) {
        let extra = self.0.num_permits().saturating_sub(bytes);
        if extra > 0 {
            drop(self.0.split(extra));
        }
    }
}

impl Budget {
    /// A budget of `bytes` (at most `u32::MAX`, as the configuration checks).
    pub(crate) fn new(bytes: usize) -> Self {
        Budget { permits: Arc::new(Semaphore::new(bytes.min(Semaphore::MAX_PERMITS))) }
    }

    /// Bytes free now.
    #[cfg(test)]
    pub(crate) fn available(&self) -> usize {
        self.permits.available_permits()
    }

    /// Reserves `bytes`, waiting for room (`None` only if the budget were closed, which it
    /// never is). Cancel-safe.
    pub(crate) async fn reserve(&self, bytes: usize) -> Option<Reserved> {
        let n = u32::try_from(bytes).unwrap_or(u32::MAX);
        Arc::clone(&self.permits).acquire_many_owned(n).await.ok().map(Reserved)
    }

    /// Reserves `bytes` if there is room now.
    pub(crate) fn try_reserve(&self, bytes: usize) -> Option<Reserved> {
        let n = u32::try_from(bytes).ok()?;
        Arc::clone(&self.permits).try_acquire_many_owned(n).ok().map(Reserved)
    }

    /// A decompressed batch as shared bytes holding `reserved` until the last slice of it is
    /// dropped.
    pub(crate) fn hold_inflated(inflated: Vec<u8>, reserved: Reserved) -> Bytes {
        Bytes::from_owner(Inflated { bytes: inflated, _reserved: reserved })
    }
}

/// The reservations one response holds: one per reader that asked in it, in request order.
#[derive(Debug, Clone)]
pub(crate) struct Charges(Arc<Mutex<Vec<Reserved>>>);

impl Charges {
    /// The charges of a response asked for with `reserved` (what each reader reserved).
    pub(crate) fn new(reserved: Vec<Reserved>) -> Self {
        Charges(Arc::new(Mutex::new(reserved)))
    }

    /// Charges a response of `total` bytes once the reader of each reservation is known to be
    /// referenced for `parts[i]` bytes (its records; 0 when it got none): each keeps its part
    /// (at most what it reserved), and the rest of `total` is kept by the reservations in
    /// order, each up to what it reserved; what is left over is given back. Returns the bytes
    /// of `total` no reservation could cover (0 when the reservations cover the response's
    /// bound, as the module's invariant says they do).
    pub(crate) fn settle(&self, total: usize, parts: &[usize]) -> usize {
        let mut charges = self.0.lock();
        let mut keep: Vec<usize> = charges
            .iter()
            .enumerate()
            .map(|(i, r)| parts.get(i).copied().unwrap_or(0).min(r.bytes()))
            .collect();
        let mut rest = total.saturating_sub(keep.iter().fold(0usize, |a, b| a.saturating_add(*b)));
        for (keep, reserved) in keep.iter_mut().zip(charges.iter()) {
            let room = reserved.bytes().saturating_sub(*keep);
            let more = room.min(rest);
            *keep = keep.saturating_add(more);
            rest = rest.saturating_sub(more);
        }
        for (reserved, keep) in charges.iter_mut().zip(keep) {
            reserved.shrink_to(keep);
        }
        rest
    }
}

/// Response buffers kept for reuse by their owner (a broker's fetch session, or a reader with
/// a connection of its own).
#[derive(Debug, Clone, Default)]
pub(crate) struct Spares(Arc<Mutex<Vec<BytesMut>>>);

impl Spares {
    /// A spare response buffer (empty, with the capacity of a past response), or a new one.
    pub(crate) fn take(&self) -> BytesMut {
        self.0.lock().pop().unwrap_or_default()
    }

    /// `buffer` (a response) as shared bytes holding `charges` until the last slice of it is
    /// dropped; the buffer then goes back to this spare list.
    pub(crate) fn hold(&self, buffer: BytesMut, charges: Charges) -> Bytes {
        Bytes::from_owner(Frame { buffer, _charges: charges, spare: self.clone() })
    }
}

/// The owner of a response's bytes.
struct Frame {
    buffer: BytesMut,
    _charges: Charges,
    spare: Spares,
}

impl AsRef<[u8]> for Frame {
    fn as_ref(&self) -> &[u8] {
        &self.buffer
    }
}

impl Drop for Frame {
    fn drop(&mut self) {
        let mut buffer = std::mem::take(&mut self.buffer);
        buffer.clear();
        let mut spare = self.spare.0.lock();
        if spare.len() < SPARE_FRAMES {
            spare.push(buffer);
        }
    }
}

/// The owner of a decompressed batch's bytes.
struct Inflated {
    bytes: Vec<u8>,
    _reserved: Reserved,
}

impl AsRef<[u8]> for Inflated {
    fn as_ref(&self) -> &[u8] {
        &self.bytes
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    #[tokio::test]
    async fn bytes_come_back_when_the_last_slice_is_dropped() {
        let budget = Budget::new(1000);
        let spares = Spares::default();
        let reserved = budget.reserve(600).await.unwrap();
        let mut buffer = BytesMut::with_capacity(500);
        buffer.extend_from_slice(&[1u8; 400]);
        let charges = Charges::new(vec![reserved]);
        let frame = spares.hold(buffer, charges.clone());
        assert_eq!(charges.settle(400, &[300]), 0);
        drop(charges);
        assert_eq!(budget.available(), 600, "the reservation shrinks to the frame");
        let slice = frame.slice(10..20);
        drop(frame);
        assert_eq!(budget.available(), 600, "a slice keeps the frame");
        assert!(budget.try_reserve(601).is_none());
        drop(slice);
        assert_eq!(budget.available(), 1000);
        let spare = spares.take();
        assert!(spare.is_empty() && spare.capacity() >= 400, "the buffer is reused");

        let reserved = budget.try_reserve(300).unwrap();
        let inflated = Budget::hold_inflated(vec![2u8; 300], reserved);
        assert_eq!(budget.available(), 700);
        drop(inflated);
        assert_eq!(budget.available(), 1000);
    }

    #[tokio::test]
    async fn a_shared_response_is_charged_once_by_part() {
        let (a, b, c) = (Budget::new(1000), Budget::new(1000), Budget::new(1000));
        let reserved = vec![
            a.reserve(500).await.unwrap(),
            b.reserve(500).await.unwrap(),
            c.reserve(500).await.unwrap(),
        ];
        let charges = Charges::new(reserved);
        let frame = Spares::default().hold(BytesMut::from(&[0u8; 700][..]), charges.clone());
        // a's part is 100 bytes, b's 450, c got nothing: 150 bytes of headers go to a first.
        assert_eq!(charges.settle(700, &[100, 450, 0]), 0);
        drop(charges);
        assert_eq!((a.available(), b.available(), c.available()), (750, 550, 1000));
        let kept = frame.slice(0..10);
        drop(frame);
        assert_eq!(a.available(), 750, "a slice of the response keeps every charge");
        drop(kept);
        assert_eq!((a.available(), b.available(), c.available()), (1000, 1000, 1000));
    }

    #[tokio::test]
    async fn a_response_larger_than_its_reservations_is_reported() {
        let a = Budget::new(1000);
        let charges = Charges::new(vec![a.reserve(100).await.unwrap()]);
        assert_eq!(charges.settle(150, &[400]), 50);
        assert_eq!(a.available(), 900);
    }

    #[tokio::test(start_paused = true)]
    async fn reserving_waits_for_room() {
        let budget = Budget::new(100);
        let held = budget.reserve(80).await.unwrap();
        let mut waiting = std::pin::pin!(budget.reserve(50));
        assert!(futures_poll(&mut waiting).is_none(), "no room yet");
        drop(held);
        assert_eq!(waiting.await.unwrap().bytes(), 50);
    }

    fn futures_poll<F: std::future::Future + Unpin>(f: &mut F) -> Option<F::Output> {
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        match std::pin::Pin::new(f).poll(&mut cx) {
            std::task::Poll::Ready(v) => Some(v),
            std::task::Poll::Pending => None,
        }
    }
}
