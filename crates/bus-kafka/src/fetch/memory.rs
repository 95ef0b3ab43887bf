//! The memory a partition reader may hold: its Fetch responses and decompressed batches, for as
//! long as a message decoded from them is alive (`consumer.partition_buffer_bytes`).
//!
//! Owns: [`Budget`] (a semaphore of bytes and the reader's spare response buffers) and the
//! owners behind the `Bytes` the reader hands out ([`Budget::hold_frame`],
//! [`Budget::hold_inflated`]).
//!
//! Invariants:
//! - Every response and decompressed batch a reader keeps is backed by an owner holding the
//!   bytes it reserved from the budget; the last message (or slice) dropped drops the owner,
//!   which gives the bytes back (and a response's buffer to the spare list). So what a
//!   reader's messages reference is never more than the budget, and waiting for room is
//!   woken by the handlers finishing, not by polling.
//! - At most `SPARE_FRAMES` response buffers wait for reuse (their memory is not counted in
//!   the budget: they are the reason a reader does not touch fresh pages for every fetch).

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
    spare: Arc<Mutex<Vec<BytesMut>>>,
}

/// Bytes reserved from a [`Budget`], given back when dropped.
#[derive(Debug)]
pub(crate) struct Reserved(OwnedSemaphorePermit);

impl Reserved {
    /// Bytes reserved.
    #[cfg(test)]
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
        Budget {
            permits: Arc::new(Semaphore::new(bytes.min(Semaphore::MAX_PERMITS))),
            spare: Arc::new(Mutex::new(Vec::with_capacity(SPARE_FRAMES))),
        }
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

    /// A spare response buffer (empty, with the capacity of a past response), or a new one.
    pub(crate) fn spare_buffer(&self) -> BytesMut {
        self.spare.lock().pop().unwrap_or_default()
    }

    /// `buffer` (a response) as shared bytes holding `reserved` until the last slice of it is
    /// dropped; the buffer then goes back to the spare list.
    pub(crate) fn hold_frame(&self, buffer: BytesMut, mut reserved: Reserved) -> Bytes {
        reserved.shrink_to(buffer.len());
        Bytes::from_owner(Frame { buffer, _reserved: reserved, spare: Arc::clone(&self.spare) })
    }

    /// A decompressed batch as shared bytes holding `reserved` until the last slice of it is
    /// dropped.
    pub(crate) fn hold_inflated(inflated: Vec<u8>, reserved: Reserved) -> Bytes {
        Bytes::from_owner(Inflated { bytes: inflated, _reserved: reserved })
    }
}

/// The owner of a response's bytes.
struct Frame {
    buffer: BytesMut,
    _reserved: Reserved,
    spare: Arc<Mutex<Vec<BytesMut>>>,
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
        let mut spare = self.spare.lock();
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
        let reserved = budget.reserve(600).await.unwrap();
        let mut buffer = BytesMut::with_capacity(500);
        buffer.extend_from_slice(&[1u8; 400]);
        let frame = budget.hold_frame(buffer, reserved);
        assert_eq!(budget.available(), 600, "the reservation shrinks to the frame");
        let slice = frame.slice(10..20);
        drop(frame);
        assert_eq!(budget.available(), 600, "a slice keeps the frame");
        assert!(budget.try_reserve(601).is_none());
        drop(slice);
        assert_eq!(budget.available(), 1000);
        let spare = budget.spare_buffer();
        assert!(spare.is_empty() && spare.capacity() >= 400, "the buffer is reused");

        let reserved = budget.try_reserve(300).unwrap();
        let inflated = Budget::hold_inflated(vec![2u8; 300], reserved);
        assert_eq!(budget.available(), 700);
        drop(inflated);
        assert_eq!(budget.available(), 1000);
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
