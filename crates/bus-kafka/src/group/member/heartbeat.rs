//! A member's heartbeat task (`heartbeat`): keeps the member's session alive at the coordinator
//! and learns from the answers when the member must rejoin.
//!
//! Owns: [`Heartbeat`] (the task's coordinator link and its loop).
//!
//! Invariants:
//! - Heartbeats are sent while the member is `Stable` or `Revoking`, from their own task and
//!   their own connection, so neither a slow handler nor a long JoinGroup delays them.
//! - Heartbeats are sent every `consumer.heartbeat_interval` for the generation the member holds;
//!   a generation that changed while the task slept is not heartbeated in the old one.
//! - The task only *requests* rejoins, for the generation it heartbeated: "rebalancing" asks for
//!   a rejoin, "unknown member" for a rejoin with a new member id, "fenced instance" for the
//!   member to stop, and a session timeout's worth of unacknowledged heartbeats is treated as
//!   expulsion (a rejoin with a new member id).
//! - A static member's heartbeats carry its group instance id (Heartbeat v3 and later).
//! - A failed heartbeat is retried after a quarter of the interval (at least the member's
//!   shortest retry delay), after finding the coordinator again.

use std::sync::Arc;

use bus_supervisor::{CancellationToken, Scope};
use kafka_protocol::messages::HeartbeatRequest;
use kafka_protocol::protocol::StrBytes;

use super::{Inner, RETRY_BACKOFF, Rejoin};
use crate::group::coordinator::{Failure, Link};

/// The first Heartbeat version with `group_instance_id`.
const INSTANCE_ID_VERSION: i16 = 3;

/// The heartbeat task's state.
pub(super) struct Heartbeat {
    inner: Arc<Inner>,
    link: Link,
}

impl Heartbeat {
    /// The heartbeat task of the member sharing `inner`, on `link`.
    pub(super) fn new(inner: Arc<Inner>, link: Link) -> Self {
        Heartbeat { inner, link }
    }

    /// Heartbeats until `token` is cancelled or the membership state is gone. One incarnation
    /// of the supervised task (`scope`): a restarted one starts afresh from the shared
    /// membership state (it holds nothing of its own but its connection).
    pub(super) async fn run(
        mut self,
        scope: Scope,
        token: CancellationToken,
    ) -> Result<(), &'static str> {
        let path: Arc<str> = Arc::from(scope.path());
        tokio::select! {
            biased;
            () = token.cancelled() => {}
            () = self.beat(&path) => {}
        }
        Ok(())
    }

    async fn beat(&mut self, path: &str) {
        let consumer = &self.inner.config.consumer;
        let interval = consumer.heartbeat_interval;
        let session = consumer.session_timeout;
        let timeout = self.inner.config.request_timeout.min(session);
        let mut state = self.inner.state.subscribe();
        let mut delay = interval;
        // The generation heartbeated and when the coordinator last acknowledged it.
        let mut current: Option<(i32, String)> = None;
        let mut last_ok = tokio::time::Instant::now();
        loop {
            bus_core::fault::point(path).await;
            let (generation, member_id) = match state.wait_for(|s| s.phase.in_generation()).await {
                Ok(s) => (s.generation, s.member_id.clone()),
                Err(_) => return,
            };
            if current.as_ref().is_none_or(|(g, m)| *g != generation || *m != member_id) {
                current = Some((generation, member_id.clone()));
                last_ok = tokio::time::Instant::now();
            }
            tokio::time::sleep(delay).await;
            delay = interval;
            {
                let s = state.borrow();
                let same = s.generation == generation && s.member_id == member_id;
                if !same || !s.phase.in_generation() {
                    continue;
                }
            }
            let group = self.inner.group.clone();
            let inner = Arc::clone(&self.inner);
            let build = |version: i16| {
                let mut request = HeartbeatRequest::default();
                request.group_id = StrBytes::from_string(group.clone()).into();
                request.generation_id = generation;
                request.member_id = StrBytes::from_string(member_id.clone());
                request.group_instance_id = inner.instance_id_for(version, INSTANCE_ID_VERSION);
                request
            };
            let failure = match self.link.request(build, timeout).await {
                Ok((response, _)) if response.error_code == 0 => {
                    last_ok = tokio::time::Instant::now();
                    continue;
                }
                Ok((response, version)) => Failure::from_code(
                    response.error_code,
                    &format!(
                        "group `{group}`: Heartbeat v{version} in generation {generation} as member `{member_id}`"
                    ),
                ),
                Err(f) => f,
            };
            match failure {
                Failure::Rebalance(reason) => {
                    // The coordinator still counts the member (its session was refreshed).
                    last_ok = tokio::time::Instant::now();
                    tracing::debug!(group = %group, %reason, "the group is rebalancing");
                    self.inner.request_rejoin(generation, &member_id, Rejoin::Rebalance);
                }
                Failure::Reset(reason) => {
                    tracing::info!(group = %group, %reason, "the member is no longer in the group");
                    self.inner.request_rejoin(generation, &member_id, Rejoin::Reset);
                }
                Failure::Fatal(reason) => {
                    self.inner.request_rejoin(generation, &member_id, Rejoin::Fatal(reason));
                }
                Failure::Fenced(reason) => {
                    self.inner.request_rejoin(generation, &member_id, Rejoin::Fenced(reason));
                }
                Failure::Coordinator(reason) | Failure::Retry(reason) => {
                    tracing::info!(group = %group, %reason, "heartbeat failed; retrying");
                    self.link.coordinator_moved();
                    delay = RETRY_BACKOFF.initial.max(interval / 4);
                    if last_ok.elapsed() >= session {
                        // The coordinator has expelled us by now: stop working on partitions
                        // that are someone else's, and join again (as librdkafka does).
                        tracing::warn!(
                            group = %group, member = %member_id, generation,
                            "no heartbeat acknowledged within the session timeout ({session:?}); \
                             giving up the assignment and rejoining"
                        );
                        self.inner.request_rejoin(generation, &member_id, Rejoin::Reset);
                    }
                }
            }
        }
    }
}
