//! The group plane: consumer-group membership on the `kafka-protocol` crate (placeholder: to be
//! built; see issue 5).

use std::sync::Arc;

use bus_core::SubscribeError;
use bus_core::backend::{GroupMember, JoinRequest};

use crate::client::KafkaClient;

/// Joins a consumer group.
pub(crate) async fn join(
    _client: Arc<KafkaClient>,
    request: JoinRequest,
) -> Result<Box<dyn GroupMember>, SubscribeError> {
    Err(SubscribeError::Group {
        backend: "kafka",
        group: request.group,
        reason: "consumer groups are not built yet".into(),
    })
}
