//! Handler traits: what a subscription calls for each message.
//!
//! Owns: [`Handler`] (raw messages), [`EnvelopeHandler`] (decoded envelopes), their blanket
//! implementations for closures, and the type-erased form the consumer runtime stores.
//!
//! Closures work as handlers: `|message: Message| async move { …; Ok(()) }`. A closure's
//! returned future must own what it uses (clone shared state into it), since it may run while
//! the closure handles the next message.

use std::future::Future;
use std::sync::Arc;

use crate::backend::BoxFuture;
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

/// A handler with its type erased: what the consumer runtime stores.
pub(crate) type ErasedHandler =
    Arc<dyn Fn(Message) -> BoxFuture<'static, Result<(), Failure>> + Send + Sync>;

/// Erases a raw-message handler.
pub(crate) fn erase<H: Handler>(handler: H) -> ErasedHandler {
    let handler = Arc::new(handler);
    Arc::new(move |message| {
        let handler = Arc::clone(&handler);
        Box::pin(async move { handler.handle(message).await.map_err(Failure::Handler) })
    })
}

/// Erases an envelope handler: decoding failures become [`Failure::Poison`].
pub(crate) fn erase_envelope<H: EnvelopeHandler>(handler: H) -> ErasedHandler {
    let handler = Arc::new(handler);
    Arc::new(move |message: Message| {
        let handler = Arc::clone(&handler);
        Box::pin(async move {
            let envelope = Envelope::from_message(&message)
                .map_err(|e| Failure::Poison(format!("not a valid envelope: {e}")))?;
            handler.handle(envelope).await.map_err(Failure::Handler)
        })
    })
}
