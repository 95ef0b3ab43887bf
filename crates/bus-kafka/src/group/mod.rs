//! The group plane: Kafka consumer-group membership (the classic protocol, protocol type
//! `consumer`; the eager and the cooperative (KIP-429) rebalance protocols; dynamic and static
//! (KIP-345) members) and committed offsets, on the `kafka-protocol` crate over our own
//! connections (the crate's `connection`, shared with the producer and the readers). Reading
//! the assigned partitions is the data plane's (the crate's `fetch`); a member opens its readers
//! there.
//!
//! Owns: [`join`] (the backend's entry point) and the submodules:
//! - `coordinator` — FindCoordinator, the coordinator links, the classification of errors;
//! - `codec` — the subscription and assignment formats of the `consumer` protocol, and the
//!   sticky assignors' user data;
//! - `assignor` — `range` and `roundrobin` as the Java client computes them, `sticky` and
//!   `cooperative-sticky`;
//! - `member` — the [`GroupMember`]: its handle and shared state, its `coordinator`
//!   (membership) and `heartbeat` tasks, its offset commits and fetches.
//!
//! Invariants: every task of a member runs in its join request's scope; a member's named topics
//! exist (created when missing and auto-creation is on) before it joins; a pattern member joins
//! with the topics that match when it subscribes (none is created for it) and follows new
//! matches every `metadata.max_age`.

mod assignor;
pub(crate) mod codec;
pub(crate) mod coordinator;
mod member;

use std::sync::Arc;

use bus_core::backend::{GroupMember, JoinRequest};
use bus_core::{errors::ConfigError, errors::SubscribeError};

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
    if let Err(error) = request.topics.validate() {
        return Err(SubscribeError::InvalidOptions(ConfigError::new(
            "topics",
            format!("group `{group}`: {}", error.reason),
        )));
    }
    if request.rebalance_timeout.is_zero() {
        return Err(SubscribeError::InvalidOptions(ConfigError::new(
            "rebalance_timeout",
            format!("group `{group}`: must be greater than zero"),
        )));
    }
    if request.group_instance_id.as_deref().is_some_and(|id| id.trim().is_empty()) {
        return Err(SubscribeError::InvalidOptions(ConfigError::new(
            "group_instance_id",
            format!("group `{group}`: must not be empty when set"),
        )));
    }
    let topics = match request.topics.as_names() {
        Some(names) => {
            for topic in names {
                client.partition_count(topic).await.map_err(|error| match error {
                    KafkaError::UnknownTopic { topic } => SubscribeError::UnknownTopic { topic },
                    other => SubscribeError::Group {
                        backend: "kafka",
                        group: group.clone(),
                        reason: format!("cannot ensure topic `{topic}`: {other}"),
                    },
                })?;
            }
            names.to_vec()
        }
        None => {
            let all = client.topics(None).await.map_err(|error| SubscribeError::Group {
                backend: "kafka",
                group: group.clone(),
                reason: format!("cannot list the topics to match `{}`: {error}", request.topics),
            })?;
            let visible = all.iter().filter(|(_, info)| !info.internal).map(|(n, _)| n.as_str());
            request.topics.select(visible)
        }
    };
    let member = member::start(client, request, topics)?;
    Ok(Box::new(member))
}
