//! [`KafkaBackend`]: the bus-core `Backend` over the producer (data plane) and the group plane.
//!
//! Owns: admission (closed flag) and the delegation of each `Backend` operation. Every task of
//! the backend lives under its scope (`bus/kafka/…`).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bus_core::backend::{Backend, BoxFuture, FlushReport, GroupMember, JoinRequest};
use bus_core::{
    DeliveryFuture, Record, errors::PublishError, errors::SubscribeError, health::Health,
};
use bus_supervisor::Scope;

use crate::client::KafkaClient;
use crate::producer::{Producer, TrySend};

/// The Kafka backend of the event bus.
pub(crate) struct KafkaBackend {
    client: Arc<KafkaClient>,
    producer: Producer,
    #[allow(dead_code)]
    scope: Scope,
    closed: AtomicBool,
}

impl std::fmt::Debug for KafkaBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaBackend").field("client", &self.client).finish()
    }
}

impl KafkaBackend {
    pub(crate) fn new(scope: Scope, client: Arc<KafkaClient>, producer: Producer) -> Self {
        KafkaBackend { client, producer, scope, closed: AtomicBool::new(false) }
    }
}

impl Backend for KafkaBackend {
    fn name(&self) -> &'static str {
        "kafka"
    }

    fn send(&self, record: Record) -> BoxFuture<'_, Result<DeliveryFuture, PublishError>> {
        if self.closed.load(Ordering::Acquire) {
            return Box::pin(std::future::ready(Err(PublishError::Closed)));
        }
        // The hot path (topic known, room in the buffer) is decided without an async state
        // machine; only a send that must wait gets one.
        match self.producer.try_send(record) {
            TrySend::Done(outcome) => Box::pin(std::future::ready(outcome)),
            TrySend::Wait(record) => Box::pin(self.producer.send(record)),
        }
    }

    fn join(
        &self,
        request: JoinRequest,
    ) -> BoxFuture<'_, Result<Box<dyn GroupMember>, SubscribeError>> {
        Box::pin(async move {
            if self.closed.load(Ordering::Acquire) {
                return Err(SubscribeError::Closed);
            }
            crate::group::join(Arc::clone(&self.client), request).await
        })
    }

    fn flush(&self, deadline: tokio::time::Instant) -> BoxFuture<'_, FlushReport> {
        Box::pin(self.producer.flush(deadline))
    }

    fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.producer.close();
    }

    fn delivery_totals(&self) -> Option<FlushReport> {
        Some(self.producer.totals())
    }

    fn producer_partitions(&self) -> Vec<bus_core::health::ProducerPartitionStatus> {
        self.producer.partitions()
    }

    fn insecure_settings(&self) -> Vec<String> {
        self.client.config().security.insecure_settings()
    }

    fn health(&self) -> Health {
        if self.closed.load(Ordering::Acquire) {
            return Health::Closed;
        }
        if let Some(escalation) = self.producer.failure() {
            return Health::Unhealthy { reason: format!("the producer failed: {escalation}") };
        }
        match self.producer.health() {
            Health::Ready => match self.client.connector().trouble() {
                // A broker refusing TLS or SASL: whatever part of the bus met it.
                Some(reason) => Health::Degraded { reason },
                None => Health::Ready,
            },
            other => other,
        }
    }

    fn admin(&self) -> Arc<dyn bus_core::backend::AdminBackend> {
        Arc::new(crate::admin::KafkaAdmin { client: Arc::clone(&self.client) })
    }
}
