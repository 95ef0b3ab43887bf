//! One member of a Kafka consumer group (classic protocol, `consumer` protocol type; the eager
//! or the cooperative rebalance protocol, dynamic or static): the handle the consumer runtime
//! holds, and what it shares with the two tasks that keep it in its group.
//!
//! Owns: [`start`], [`KafkaMember`] (the [`GroupMember`] the consumer runtime holds), the
//! membership state they share (`Inner`: [`Phase`], [`Rejoin`], [`State`] in a `watch`
//! channel), [`RETRY_BACKOFF`], and the submodules:
//! - `membership` — the membership task (`coordinator`: join, sync, revoke, rejoin, leave);
//! - `heartbeat` — the heartbeat task (`heartbeat`), on a connection of its own;
//! - `offsets` — OffsetCommit and OffsetFetch for the handle, on a third connection.
//!
//! Both tasks are supervised children in the join request's scope (`coordinator`, `heartbeat`):
//! restarted after a panic (a restarted membership task rejoins, holding what a rejoin holds;
//! a restarted heartbeat task starts afresh from the shared state); past their restart
//! intensity the failure escalates to the subscription.
//!
//! Invariants:
//! - The membership state (phase, member id, generation, a pending rejoin) lives in one `watch`
//!   channel written by the membership task; the heartbeat task and offset commits only *request*
//!   a rejoin, and only for the generation they saw (a late answer about an old generation is
//!   ignored: [`Inner::request_rejoin`]).
//! - Events go through a channel read by `next_event`; receiving is cancel-safe.
//! - The member's tasks end when it leaves, when it is dropped, when the scope is cancelled, or
//!   on a fatal error (the handle's `Drop` and `leave` cancel the member's token; the
//!   membership task cancels it on a fatal error, which ends the heartbeats).
//! - A fenced member (another instance holds its group instance id) ends with a
//!   [`GroupError::fenced`] error, so that the runtime does not join again.
//! - Commits are sent in the generation the member holds its partitions in: the current one,
//!   or while a cooperative member joins again (keeping its partitions) the one it held them
//!   in (`State::held`).

mod heartbeat;
mod membership;
mod offsets;

use std::sync::Arc;
use std::time::Duration;

use bus_core::backend::{
    BoxFuture, GroupError, GroupMember, JoinRequest, MemberEvent, PartitionReader,
};
use bus_core::{StartAt, TopicPartition, Topics, subscription::OffsetReset};
use bus_supervisor::{Backoff, CancellationToken, ChildSpec};
use kafka_protocol::protocol::StrBytes;
use tokio::sync::{mpsc, watch};

use super::coordinator::{Failure, Link, Locator};
use crate::client::KafkaClient;
use crate::config::kafka::KafkaConfig;
use crate::fetch::KafkaReader;
use heartbeat::Heartbeat;
use membership::Membership;
use offsets::Offsets;

/// The delays between retries of a failed membership step or offset request: 100 ms, doubling,
/// at most 2 s (the heartbeat task's shortest retry delay is its `initial`).
const RETRY_BACKOFF: Backoff =
    Backoff { initial: Duration::from_millis(100), max: Duration::from_secs(2), multiplier: 2.0 };

/// How the member's tasks are supervised: restarted after a panic (they end normally when
/// the member leaves or is dropped), at most 3 restarts in 30 s, 100 ms doubling to 2 s
/// between them; a fourth escalates and fails the subscription (its isolated scope).
fn child_spec() -> ChildSpec {
    ChildSpec::transient()
        .intensity(3, Duration::from_secs(30))
        .backoff(Duration::from_millis(100), Duration::from_secs(2), 2.0)
        .shutdown_timeout(Duration::from_secs(1))
}

/// Where the member is in its membership cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Joining or syncing: no generation to heartbeat or commit in.
    Joining,
    /// Holding an assignment.
    Stable,
    /// Waiting for the runtime to release partitions (all of them before an eager rejoin; or
    /// those a cooperative assignment took away, before the follow-up rejoin).
    Revoking,
    /// The membership task has ended.
    Stopped,
}

impl Phase {
    /// Whether the member holds a generation: heartbeats and commits are sent in it.
    fn in_generation(self) -> bool {
        matches!(self, Phase::Stable | Phase::Revoking)
    }
}

/// Why the member must rejoin, most severe last.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Rejoin {
    /// The group is rebalancing: rejoin with the same member id.
    Rebalance,
    /// The member is not known in its generation: rejoin with a new member id.
    Reset,
    /// The member cannot continue.
    Fatal(String),
    /// Another member took this member's group instance id: stop, never join again.
    Fenced(String),
}

impl Rejoin {
    fn rank(&self) -> u8 {
        match self {
            Rejoin::Rebalance => 0,
            Rejoin::Reset => 1,
            Rejoin::Fatal(_) => 2,
            Rejoin::Fenced(_) => 3,
        }
    }
}

/// The membership state shared through the `watch` channel.
#[derive(Debug, Clone)]
struct State {
    phase: Phase,
    member_id: String,
    generation: i32,
    rejoin: Option<Rejoin>,
    /// Why the member stopped, when it stopped on a fatal error.
    fatal: Option<String>,
    /// Whether that error was a fencing (see [`Rejoin::Fenced`]).
    fenced: bool,
    /// The generation and member id the member holds its partitions in: set with each
    /// assignment, kept while a cooperative member joins again, cleared when it gives them all
    /// up. Commits are sent in it.
    held: Option<(i32, String)>,
}

/// What a member's parts share.
#[derive(Debug)]
struct Inner {
    group: String,
    /// What the member subscribes to (the topics it reads now are the membership task's).
    subscription: Topics,
    /// The static group instance id, if any.
    instance_id: Option<String>,
    /// Whether the member follows the cooperative rebalance protocol (see
    /// `ConsumerConfig::assignors`).
    cooperative: bool,
    client: Arc<KafkaClient>,
    config: Arc<KafkaConfig>,
    rebalance_timeout: Duration,
    /// Where the member's readers go when their position is out of range.
    auto_offset_reset: OffsetReset,
    state: watch::Sender<State>,
}

impl Inner {
    /// Requests a rejoin for the generation `(generation, member_id)` if it is still current.
    fn request_rejoin(&self, generation: i32, member_id: &str, rejoin: Rejoin) {
        self.state.send_if_modified(|s| {
            let current =
                s.generation == generation && s.member_id == member_id && s.phase.in_generation();
            let stronger = s.rejoin.as_ref().is_none_or(|r| rejoin.rank() > r.rank());
            if current && stronger {
                s.rejoin = Some(rejoin);
                true
            } else {
                false
            }
        });
    }

    fn error(&self, failure: &Failure) -> GroupError {
        match failure {
            Failure::Fatal(reason) => GroupError::fatal(&self.group, reason.clone()),
            Failure::Fenced(reason) => GroupError::fenced(&self.group, reason.clone()),
            other => GroupError::retriable(&self.group, other.reason().to_owned()),
        }
    }

    /// The group instance id for a request of version `version` of an API that carries it from
    /// `since` on.
    fn instance_id_for(&self, version: i16, since: i16) -> Option<StrBytes> {
        self.instance_id
            .as_ref()
            .filter(|_| version >= since)
            .map(|id| StrBytes::from_string(id.clone()))
    }
}

/// Starts a member of `request.group` reading `topics` (the subscription's topics now: its
/// names, or its pattern's matches): its membership and heartbeat tasks in `request.scope`.
pub(crate) fn start(
    client: Arc<KafkaClient>,
    request: JoinRequest,
    topics: Vec<String>,
) -> Result<KafkaMember, bus_supervisor::SpawnError> {
    let JoinRequest {
        group,
        topics: subscription,
        group_instance_id,
        scope,
        rebalance_timeout,
        auto_offset_reset,
    } = request;
    let config = Arc::clone(client.config());
    let locator = Arc::new(Locator::new(group.clone(), Arc::clone(client.connector())));
    let (state, _) = watch::channel(State {
        phase: Phase::Joining,
        member_id: String::new(),
        generation: -1,
        rejoin: None,
        fatal: None,
        fenced: false,
        held: None,
    });
    let inner = Arc::new(Inner {
        group,
        subscription,
        instance_id: group_instance_id,
        cooperative: config.consumer.is_cooperative(),
        client,
        config,
        rebalance_timeout,
        auto_offset_reset,
        state,
    });
    let token = scope.token().child_token();
    let (events_tx, events_rx) = mpsc::unbounded_channel();
    let (left_tx, left_rx) = watch::channel(None);
    let membership =
        Membership::new(Arc::clone(&inner), Link::new(Arc::clone(&locator)), events_tx, topics);
    let handover = membership::handover(membership, left_tx);
    let member_token = token.clone();
    scope
        .supervise("coordinator", child_spec(), move |incarnation| {
            membership::run(incarnation, handover.clone(), member_token.clone())
        })?
        .detach();
    let (heartbeat_inner, heartbeat_locator) = (Arc::clone(&inner), Arc::clone(&locator));
    let heartbeat_token = token.clone();
    let heartbeats = scope.supervise("heartbeat", child_spec(), move |incarnation| {
        let link = Link::new(Arc::clone(&heartbeat_locator));
        Heartbeat::new(Arc::clone(&heartbeat_inner), link).run(incarnation, heartbeat_token.clone())
    });
    match heartbeats {
        Ok(monitor) => monitor.detach(),
        Err(error) => {
            token.cancel();
            return Err(error);
        }
    }
    Ok(KafkaMember {
        offsets: Offsets::new(Arc::clone(&inner), Link::new(locator)),
        inner,
        events: tokio::sync::Mutex::new(events_rx),
        token,
        left: left_rx,
    })
}

/// A member of a Kafka consumer group (see the module documentation). Dropping it leaves the
/// group (best effort) and ends its tasks.
#[derive(Debug)]
pub(crate) struct KafkaMember {
    inner: Arc<Inner>,
    events: tokio::sync::Mutex<mpsc::UnboundedReceiver<MemberEvent>>,
    /// OffsetCommit and OffsetFetch, on their own connection.
    offsets: Offsets,
    token: CancellationToken,
    left: watch::Receiver<Option<Result<(), GroupError>>>,
}

impl Drop for KafkaMember {
    fn drop(&mut self) {
        self.token.cancel();
    }
}

impl GroupMember for KafkaMember {
    fn member_id(&self) -> String {
        self.inner.state.borrow().member_id.clone()
    }

    fn next_event(&self) -> BoxFuture<'_, Result<MemberEvent, GroupError>> {
        Box::pin(async move {
            let mut events = self.events.lock().await;
            match events.recv().await {
                Some(event) => Ok(event),
                None => {
                    let state = self.inner.state.borrow();
                    let reason = state.fatal.clone().unwrap_or_else(|| {
                        format!("member `{}` has left the group", state.member_id)
                    });
                    if state.fenced {
                        Err(GroupError::fenced(&self.inner.group, reason))
                    } else {
                        Err(GroupError::fatal(&self.inner.group, reason))
                    }
                }
            }
        })
    }

    fn committed<'a>(
        &'a self,
        partitions: &'a [TopicPartition],
    ) -> BoxFuture<'a, Result<Vec<Option<i64>>, GroupError>> {
        Box::pin(self.offsets.committed(partitions))
    }

    fn commit<'a>(
        &'a self,
        offsets: &'a [(TopicPartition, i64)],
    ) -> BoxFuture<'a, Result<(), GroupError>> {
        Box::pin(self.offsets.commit(offsets))
    }

    fn open<'a>(
        &'a self,
        partition: &'a TopicPartition,
        start: StartAt,
    ) -> BoxFuture<'a, Result<Box<dyn PartitionReader>, GroupError>> {
        Box::pin(async move {
            let mut reader = KafkaReader::new(
                Arc::clone(&self.inner.client),
                self.inner.group.clone(),
                partition.clone(),
                start,
                self.inner.auto_offset_reset,
            );
            // Earliest, latest or a timestamp is resolved now, so that the position is that of
            // the open (a seek to the end misses nothing published after it returns).
            reader.resolve().await?;
            Ok(Box::new(reader) as Box<dyn PartitionReader>)
        })
    }

    fn leave(&self) -> BoxFuture<'_, Result<(), GroupError>> {
        Box::pin(async move {
            self.token.cancel();
            let mut left = self.left.clone();
            let result = match left.wait_for(Option::is_some).await {
                Ok(result) => result.clone(),
                // The membership task ended without a word: it was aborted.
                Err(_) => None,
            };
            result.unwrap_or_else(|| {
                Err(GroupError::retriable(
                    &self.inner.group,
                    "the membership task was stopped before it could leave the group",
                ))
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_back_off_from_100_ms_doubling_to_at_most_2_s() {
        let delays: Vec<Duration> = (0..8).map(|n| RETRY_BACKOFF.delay(n)).collect();
        let millis = [100, 200, 400, 800, 1600, 2000, 2000, 2000];
        assert_eq!(delays, millis.map(Duration::from_millis));
    }
}
