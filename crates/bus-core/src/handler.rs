//! Handler traits: what a subscription calls for each message.
//!
//! Owns: [`Handler`] (raw messages), [`EnvelopeHandler`] (decoded envelopes), their blanket
//! implementations for closures, and the runtime's view of either (`Invoke`, with decoding
//! failures as poison). The consumer runtime erases a handler's type once per subscription
//! (`consumer::process`); nothing here knows about the runtime.
//!
//! Closures work as handlers: `|message: Message| async move { …; Ok(()) }`. A closure's
//! returned future must own what it uses (clone shared state into it), since it may run while
//! the closure handles the next message.

use std::future::Future;

use crate::envelope::Envelope;
use crate::error::HandlerError;
use crate::record::Message;

/// Handles raw messages.
pub trait Handler: Send + Sync + 'static {
    /// Handles one message. `Ok` commits it (once every earlier message of its partition is
    /// done); an error is retried with backoff, then dead-lettered.
    fn handle(&self, message: Message) -> impl Future<Output = Result<(), HandlerError>> + Send;
}

impl<F, Fut> Handler for F
where
    F: Fn(Message) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), HandlerError>> + Send,
{
    fn handle(&self, message: Message) -> impl Future<Output = Result<(), HandlerError>> + Send {
        self(message)
    }
}

/// Handles decoded, validated envelopes. A message that does not decode into a valid envelope
/// never reaches the handler: it goes to the dead-letter topic at once.
pub trait EnvelopeHandler: Send + Sync + 'static {
    /// Handles one envelope (see [`Handler::handle`]).
    fn handle(&self, envelope: Envelope) -> impl Future<Output = Result<(), HandlerError>> + Send;
}

impl<F, Fut> EnvelopeHandler for F
where
    F: Fn(Envelope) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), HandlerError>> + Send,
{
    fn handle(&self, envelope: Envelope) -> impl Future<Output = Result<(), HandlerError>> + Send {
        self(envelope)
    }
}

/// Why a message was not handled.
pub(crate) enum Failure {
    /// The handler failed (retryable or not).
    Handler(HandlerError),
    /// The message cannot be decoded: a poison message, dead-lettered without retries.
    Poison(String),
}

/// A handler as the consumer runtime calls it: raw or envelope, with decoding failures as
/// [`Failure::Poison`].
pub(crate) trait Invoke: Send + Sync + 'static {
    /// Handles one message (one attempt).
    fn invoke(&self, message: Message) -> impl Future<Output = Result<(), Failure>> + Send;
}

/// A raw-message handler.
pub(crate) struct Raw<H>(pub(crate) H);

impl<H: Handler> Invoke for Raw<H> {
    fn invoke(&self, message: Message) -> impl Future<Output = Result<(), Failure>> + Send {
        let handled = self.0.handle(message);
        async move { handled.await.map_err(Failure::Handler) }
    }
}

/// An envelope handler: decodes first.
pub(crate) struct Envelopes<H>(pub(crate) H);

impl<H: EnvelopeHandler> Invoke for Envelopes<H> {
    async fn invoke(&self, message: Message) -> Result<(), Failure> {
        if message.is_tombstone() {
            // A deletion marker of a compacted topic, not an event: skipped (done, committed),
            // as the Go SDK's consumer marks it consumed without calling its handler.
            tracing::debug!(
                topic = %message.topic, partition = message.partition, offset = message.offset,
                "tombstone skipped by an envelope subscription"
            );
            return Ok(());
        }
        let envelope = Envelope::from_message(&message)
            .map_err(|e| Failure::Poison(format!("not a valid envelope: {e}")))?;
        self.0.handle(envelope).await.map_err(Failure::Handler)
    }
}
