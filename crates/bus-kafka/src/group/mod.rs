//! The group plane: Kafka consumer-group membership (the classic protocol, protocol type
//! `consumer`, eager rebalance) and committed offsets, on the `kafka-protocol` crate over our own
//! connections (the crate's `connection`, shared with the producer and the readers). Reading
//! the assigned partitions is the data plane's (the crate's `fetch`); a member opens its readers
//! there.
//!
//! Owns: [`join`] (the backend's entry point) and the submodules:
//! - `coordinator` — FindCoordinator, the coordinator links, the classification of errors;
//! - `codec` — the subscription and assignment formats of the `consumer` protocol;
//! - `assignor` — `range` and `roundrobin`, as the Java client computes them;
//! - `member` — the [`GroupMember`]: its handle and shared state, its `coordinator`
//!   (membership) and `heartbeat` tasks, its offset commits and fetches.
//!
//! Invariants: every task of a member runs in its join request's scope; a member's topics exist
//! (created when missing and auto-creation is on) before it joins.

mod assignor;
pub(crate) mod codec;
mod coordinator;
mod member;

use std::sync::Arc;

use bus_core::backend::{GroupMember, JoinRequest};
use bus_core::{ConfigError, SubscribeError};

use crate::client::KafkaClient;
use crate::error::KafkaError;

/// Joins a consumer group: checks the request, ensures the topics exist, and starts the
/// member's tasks. Returns at once; the first assignment arrives as an event once the group has
/// formed (the broker may hold the first JoinGroup for its initial rebalance delay).
pub(crate) async fn join(
    client: Arc<KafkaClient>,
    request: JoinRequest,
) -> Result<Box<dyn GroupMember>, SubscribeError> {
    let group = request.group.clone();
    if group.trim().is_empty() {
        return Err(SubscribeError::InvalidOptions(ConfigError::new(
            "group",
            "a consumer group name is required",
        )));
    }
    if request.topics.is_empty() {
        return Err(SubscribeError::InvalidOptions(ConfigError::new(
            "topics",
            format!("group `{group}`: at least one topic is required"),
        )));
    }
    if request.rebalance_timeout.is_zero() {
        return Err(SubscribeError::InvalidOptions(ConfigError::new(
            "rebalance_timeout",
            format!("group `{group}`: must be greater than zero"),
        )));
    }
    for topic in &request.topics {
        client.partition_count(topic).await.map_err(|error| match error {
            KafkaError::UnknownTopic { topic } => SubscribeError::UnknownTopic { topic },
            other => SubscribeError::Group {
                backend: "kafka",
                group: group.clone(),
                reason: format!("cannot ensure topic `{topic}`: {other}"),
            },
        })?;
    }
    let member = member::start(client, request)?;
    Ok(Box::new(member))
}
