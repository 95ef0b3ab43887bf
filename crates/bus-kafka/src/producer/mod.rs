//! The producer: one batching loop per partition in the supervisor tree (placeholder: to be
//! built; see issue 4). Every accepted record resolves its delivery future.

use std::sync::Arc;

use bus_core::backend::{FlushReport, Health};
use bus_core::{DeliveryFuture, PublishError, Record};
use bus_supervisor::Scope;

use crate::client::KafkaClient;
use crate::error::KafkaError;

/// Publishes records through per-partition batching loops.
pub(crate) struct Producer {
    #[allow(dead_code)]
    scope: Scope,
    #[allow(dead_code)]
    client: Arc<KafkaClient>,
}

impl Producer {
    /// Starts the producer; its loops live under `scope`.
    pub(crate) fn start(scope: Scope, client: Arc<KafkaClient>) -> Result<Producer, KafkaError> {
        Ok(Producer { scope, client })
    }

    /// Accepts a record, waiting for room in the buffer.
    pub(crate) async fn send(&self, record: Record) -> Result<DeliveryFuture, PublishError> {
        Err(PublishError::Backend {
            backend: "kafka",
            reason: format!("the producer is not built yet (record for `{}`)", record.topic),
        })
    }

    /// Waits until everything accepted is acknowledged or the deadline passes; fails back the
    /// rest.
    pub(crate) async fn flush(&self, _deadline: tokio::time::Instant) -> FlushReport {
        FlushReport::default()
    }

    /// Freezes admission.
    pub(crate) fn close(&self) {}

    /// The producer's health.
    pub(crate) fn health(&self) -> Health {
        Health::Ready
    }
}
