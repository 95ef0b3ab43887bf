//! What the dispatch does with one message: its [`dispatch_key`] decides which messages it is
//! ordered with, a [`Process`] (a [`ProcessFn`], or a type of its own) runs it on a worker, and
//! [`Processed`] says whether its offset may be committed.
//!
//! Owns: [`Processed`], [`ProcessFn`], [`Process`] and [`dispatch_key`]. No state: the
//! dispatch's state machine and workers (`state.rs`, `worker.rs`) call these.

use std::future::Future;
use std::sync::Arc;

use crate::envelope::headers::AGGREGATE_ID as HEADER_AGGREGATE_ID;
use crate::future::BoxFuture;
use crate::record::Message;

/// What processing did with a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Processed {
    /// Handled (or dead-lettered): the offset may be committed.
    Done,
    /// Not handled and not dead-lettered: the offset stays pending forever, so the partition's
    /// commit position stops before it and the message is redelivered after a restart. The
    /// message no longer counts as in flight and its key moves on.
    Retain,
}

/// The processing function: called once per message on a worker; its future is dropped if the
/// message is abandoned by [`KeyedDispatch::drain`](super::KeyedDispatch::drain).
pub type ProcessFn = Arc<dyn Fn(Message) -> BoxFuture<'static, Processed> + Send + Sync>;

/// What a dispatch runs for each message, on a worker: a [`ProcessFn`] (one boxed future per
/// message), or a type of its own started with
/// [`KeyedDispatch::start_with`](super::KeyedDispatch::start_with), whose futures the workers
/// poll in place. The future is dropped if the message is abandoned by
/// [`KeyedDispatch::drain`](super::KeyedDispatch::drain); a panic while creating or polling it
/// is caught (the message stays uncommitted).
pub trait Process: Send + Sync + 'static {
    /// Processes one message.
    fn process(&self, message: Message) -> impl Future<Output = Processed> + Send;
}

impl Process for ProcessFn {
    fn process(&self, message: Message) -> impl Future<Output = Processed> + Send {
        self(message)
    }
}

/// The dispatch key of a message: its record key, else its `X-Aggregate-ID` header (any case);
/// `None` when it has neither (the message is independent).
pub fn dispatch_key(message: &Message) -> Option<&[u8]> {
    match &message.key {
        Some(key) => Some(key),
        None => message.headers.get(HEADER_AGGREGATE_ID).map(|v| &v[..]),
    }
}
