//! The idempotent producer's identity: the producer id and epoch that the cluster gives it
//! (InitProducerId, without a transactional id), which stamp every batch it writes.
//!
//! Owns: [`Identity`] and [`Identities`] (the producer's current identity, shared by all its
//! partition loops: taken from the cluster on first use, replaced when a loop finds it unusable).
//!
//! Invariants:
//! - One InitProducerId at a time per producer (the lock is held across it); a loop waiting for
//!   it is bounded by its own deadline, and each connection and request by `request_timeout`.
//! - An identity is replaced only when a loop reports it unusable and it is still the current
//!   one: loops that report the same identity after it was replaced take the replacement (no
//!   second request), so one fault costs one InitProducerId however many partitions see it.
//! - A replacement bumps the epoch where the broker can (KIP-360: InitProducerId v3 or later,
//!   naming the current id and epoch), unless the epoch is exhausted; otherwise, or when the
//!   broker refuses the bump, it asks for a new producer id. Either way the loops number their
//!   batches from 0 again under the new identity.
//! - InitProducerId goes to the bootstrap brokers in their configured order (any broker answers
//!   it for a producer without a transactional id; the Java client asks the least loaded one).

use kafka_protocol::ResponseError;
use kafka_protocol::messages::{InitProducerIdRequest, ProducerId};

use super::produce::Failure;
use crate::connection::{Connection, code_name};
use crate::connector::Connector;

/// The first InitProducerId version that can bump an epoch (KIP-360).
const BUMP_VERSION: i16 = 3;

/// The transaction timeout sent (the Java client's default; a broker ignores it for a producer
/// without a transactional id).
const TRANSACTION_TIMEOUT_MS: i32 = 60_000;

/// A producer id and epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Identity {
    /// The producer id.
    pub(super) id: i64,
    /// The epoch.
    pub(super) epoch: i16,
}

impl Identity {
    /// Whether the epoch can still be bumped: Kafka keeps `i16::MAX` to fence a retired id.
    fn can_bump(self) -> bool {
        self.epoch < i16::MAX - 1
    }
}

/// The producer's current identity (see the module documentation).
#[derive(Debug, Default)]
pub(super) struct Identities {
    current: tokio::sync::Mutex<Option<Identity>>,
}

impl Identities {
    /// The current identity: taken from the cluster on first use, or replaced when it is
    /// still `unusable` (a loop's report that the broker no longer accepts it).
    ///
    /// # Errors
    ///
    /// The [`Failure`] of the InitProducerId that was needed: retriable when no bootstrap
    /// broker answered or the answer says to retry, fatal when the cluster cannot give an
    /// idempotent producer an id (no InitProducerId in a version we speak, not authorised).
    pub(super) async fn get(
        &self,
        connector: &Connector,
        unusable: Option<Identity>,
    ) -> Result<Identity, Failure> {
        let mut current = self.current.lock().await;
        let claim = match (*current, unusable) {
            (Some(identity), None) => return Ok(identity),
            (Some(identity), Some(bad)) if identity != bad => return Ok(identity),
            (Some(identity), Some(_)) => Some(identity),
            (None, _) => None,
        };
        let identity = init(connector, claim).await?;
        tracing::info!(
            producer_id = identity.id, epoch = identity.epoch, replaced = ?claim,
            "idempotent producer identity"
        );
        *current = Some(identity);
        Ok(identity)
    }
}

/// InitProducerId at the first bootstrap broker that answers: bumping `claim`'s epoch where
/// the broker can, a new producer id otherwise.
async fn init(connector: &Connector, claim: Option<Identity>) -> Result<Identity, Failure> {
    let mut last = Failure::Retriable("InitProducerId: no bootstrap broker configured".into());
    for address in connector.bootstrap() {
        let mut connection = match connector.open(address).await {
            Ok(connection) => connection,
            Err(error) => {
                last = Failure::of_request(&error);
                continue;
            }
        };
        let version = connection.version::<InitProducerIdRequest>().map_err(|e| {
            Failure::Fatal(format!(
                "{e}: the broker cannot give an idempotent producer its id; set \
                 producer.idempotence = false to produce without it"
            ))
        })?;
        let bump = claim.filter(|c| version >= BUMP_VERSION && c.can_bump());
        match ask(&mut connection, connector, version, bump).await {
            Ok(identity) => return Ok(identity),
            // The broker would not bump: a new producer id instead, on the same connection.
            Err(Failure::Fatal(_) | Failure::Sequence(_)) if bump.is_some() => {
                match ask(&mut connection, connector, version, None).await {
                    Ok(identity) => return Ok(identity),
                    Err(failure) => last = failure,
                }
            }
            Err(failure) => last = failure,
        }
        if !matches!(last, Failure::Retriable(_)) {
            return Err(last);
        }
    }
    Err(last)
}

/// One InitProducerId on `connection`, bumping `bump`'s epoch when given.
async fn ask(
    connection: &mut Connection,
    connector: &Connector,
    version: i16,
    bump: Option<Identity>,
) -> Result<Identity, Failure> {
    let mut request = InitProducerIdRequest::default();
    request.transactional_id = None;
    request.transaction_timeout_ms = TRANSACTION_TIMEOUT_MS;
    let (id, epoch) = bump.map_or((-1, -1), |b| (b.id, b.epoch));
    request.producer_id = ProducerId(id);
    request.producer_epoch = epoch;
    let response = connection
        .send(&request, version, connector.timeout())
        .await
        .map_err(|e| Failure::of_request(&e))?;
    let context = || format!("broker {}: InitProducerId v{version}", connection.broker());
    if response.error_code != 0 {
        let retriable =
            ResponseError::try_from_code(response.error_code).is_some_and(|e| e.is_retriable());
        let reason = format!("{}: {}", context(), code_name(response.error_code));
        return Err(if retriable { Failure::Retriable(reason) } else { Failure::Fatal(reason) });
    }
    if response.producer_id.0 < 0 || response.producer_epoch < 0 {
        return Err(Failure::Retriable(format!(
            "{}: answered producer id {} epoch {}",
            context(),
            response.producer_id.0,
            response.producer_epoch
        )));
    }
    Ok(Identity { id: response.producer_id.0, epoch: response.producer_epoch })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_epoch_bumps_until_kafka_keeps_the_rest_for_fencing() {
        assert!(Identity { id: 7, epoch: 0 }.can_bump());
        assert!(Identity { id: 7, epoch: i16::MAX - 2 }.can_bump());
        assert!(!Identity { id: 7, epoch: i16::MAX - 1 }.can_bump());
        assert!(!Identity { id: 7, epoch: i16::MAX }.can_bump());
    }
}
