//! Delivery results: what a publish resolves to.
//!
//! Owns: [`Delivery`] (where a record was stored), [`DeliveryFuture`] (the pending result of a
//! record accepted by a backend) and [`DeliverySender`] (the backend's side of it).
//!
//! Invariant: every accepted record resolves. A backend that drops a [`DeliverySender`] without
//! sending makes the future resolve to an error, never hang and never report success.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use std::sync::Arc;

use tokio::sync::oneshot;

use crate::error::PublishError;
use crate::metrics::Metrics;

/// Where a record was stored: the broker's (or the in-memory log's) acknowledgement.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Delivery {
    /// The topic.
    pub topic: String,
    /// The partition.
    pub partition: i32,
    /// The offset of the record in the partition; `-1` when the broker acknowledged the record
    /// as a duplicate of one it had already stored (an idempotent producer's resend after a lost
    /// answer: stored once, at an offset the broker does not repeat).
    pub offset: i64,
}

/// The pending result of a record that a backend accepted (see
/// [`EventBus::publish_nowait`](crate::EventBus::publish_nowait)). Resolves once, to the
/// acknowledgement or to the error that stopped it; never hangs past the backend's delivery
/// timeout or the bus's shutdown.
#[must_use = "a DeliveryFuture is the only way to learn whether the record was stored"]
#[derive(Debug)]
pub struct DeliveryFuture {
    receiver: oneshot::Receiver<Result<Delivery, PublishError>>,
    backend: &'static str,
    metrics: Option<Arc<Metrics>>,
}

/// The backend's side of a [`DeliveryFuture`].
#[derive(Debug)]
pub struct DeliverySender {
    sender: oneshot::Sender<Result<Delivery, PublishError>>,
}

/// A connected pair: the backend keeps the sender and hands the future to the caller.
pub fn delivery_channel(backend: &'static str) -> (DeliverySender, DeliveryFuture) {
    let (sender, receiver) = oneshot::channel();
    (DeliverySender { sender }, DeliveryFuture { receiver, backend, metrics: None })
}

impl DeliverySender {
    /// Resolves the future. A caller that stopped waiting is not an error.
    pub fn send(self, result: Result<Delivery, PublishError>) {
        let _ = self.sender.send(result);
    }

    /// Whether the caller still waits for the result.
    pub fn is_wanted(&self) -> bool {
        !self.sender.is_closed()
    }
}

impl DeliveryFuture {
    /// A future already resolved to `result` (for backends that acknowledge synchronously).
    pub fn ready(backend: &'static str, result: Result<Delivery, PublishError>) -> Self {
        let (sender, future) = delivery_channel(backend);
        sender.send(result);
        future
    }
}

impl DeliveryFuture {
    /// Counts the outcome in the bus's metrics when it resolves.
    pub(crate) fn counted(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }
}

impl Future for DeliveryFuture {
    type Output = Result<Delivery, PublishError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let backend = self.backend;
        let result = match Pin::new(&mut self.receiver).poll(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(result) => result.unwrap_or_else(|_| {
                Err(PublishError::Backend {
                    backend,
                    reason: "the record's delivery result was dropped without a verdict".into(),
                })
            }),
        };
        if let Some(metrics) = self.metrics.take() {
            match &result {
                Ok(_) => Metrics::bump(&metrics.published),
                Err(_) => Metrics::bump(&metrics.publish_failed),
            }
        }
        Poll::Ready(result)
    }
}
