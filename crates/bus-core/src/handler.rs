//! Handler traits: what a subscription calls for each message.
//!
//! Owns: [`Handler`] (raw messages), [`EnvelopeHandler`] (decoded envelopes), their blanket
//! implementations for closures, the runtime's view of either (`Invoke`) and the type-erased
//! form the bus passes to the consumer runtime (`ErasedHandler`).
//!
//! Invariant: the handler's type is erased once per subscription, not per message: the erased
//! form starts the subscription's keyed dispatch with a processor generic over the handler, so
//! a handler's future is polled in place on a dispatch worker, never boxed.
//!
//! Closures work as handlers: `|message: Message| async move { …; Ok(()) }`. A closure's
//! returned future must own what it uses (clone shared state into it), since it may run while
//! the closure handles the next message.

use std::future::Future;
use std::sync::Arc;

use bus_supervisor::{Scope, SpawnError};

use crate::consumer::{Processor, Runtime};
use crate::dispatch::{DispatchConfig, KeyedDispatch};
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
pub(crate) struct Raw<H>(H);

impl<H: Handler> Invoke for Raw<H> {
    fn invoke(&self, message: Message) -> impl Future<Output = Result<(), Failure>> + Send {
        let handled = self.0.handle(message);
        async move { handled.await.map_err(Failure::Handler) }
    }
}

/// An envelope handler: decodes first.
pub(crate) struct Envelopes<H>(H);

impl<H: EnvelopeHandler> Invoke for Envelopes<H> {
    async fn invoke(&self, message: Message) -> Result<(), Failure> {
        let envelope = Envelope::from_message(&message)
            .map_err(|e| Failure::Poison(format!("not a valid envelope: {e}")))?;
        self.0.handle(envelope).await.map_err(Failure::Handler)
    }
}

/// How a subscription's dispatch is started: the handler's type erased once.
type StartDispatch = Box<
    dyn FnOnce(&Scope, DispatchConfig, Arc<Runtime>) -> Result<KeyedDispatch, SpawnError> + Send,
>;

/// A handler with its type erased: what the bus hands to the consumer runtime, which starts the
/// subscription's keyed dispatch with it.
pub(crate) struct ErasedHandler(StartDispatch);

impl ErasedHandler {
    fn new<I: Invoke>(invoke: I) -> Self {
        ErasedHandler(Box::new(move |scope, config, runtime| {
            KeyedDispatch::start_with(scope, config, Processor::new(runtime, invoke))
        }))
    }

    /// Starts the dispatch workers in `scope`, processing with `runtime` and this handler.
    pub(crate) fn start(
        self,
        scope: &Scope,
        config: DispatchConfig,
        runtime: Arc<Runtime>,
    ) -> Result<KeyedDispatch, SpawnError> {
        (self.0)(scope, config, runtime)
    }
}

/// Erases a raw-message handler.
pub(crate) fn erase<H: Handler>(handler: H) -> ErasedHandler {
    ErasedHandler::new(Raw(handler))
}

/// Erases an envelope handler: decoding failures become [`Failure::Poison`].
pub(crate) fn erase_envelope<H: EnvelopeHandler>(handler: H) -> ErasedHandler {
    ErasedHandler::new(Envelopes(handler))
}
