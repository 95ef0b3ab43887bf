//! Finding a group's coordinator and talking to it.
//!
//! Owns: [`Locator`] (the group's coordinator address, found with FindCoordinator through the
//! bootstrap brokers and shared by the member's links), [`Link`] (one connection to the current
//! coordinator, reopened when the coordinator moves or the connection fails) and [`Failure`]
//! (how a failed group request is handled, following the Java client's rules).
//!
//! Invariants:
//! - A link only sends to the address the locator holds; after [`Link::coordinator_moved`] the
//!   next request finds the coordinator again (FindCoordinator) and opens a new connection.
//! - A link never reuses a connection on which a request failed or was cancelled (see
//!   [`Connection`], the crate's connection shared with the producer).

use std::sync::Arc;
use std::time::Duration;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::{
    FindCoordinatorRequest, HeartbeatRequest, JoinGroupRequest, LeaveGroupRequest,
    OffsetCommitRequest, OffsetFetchRequest, SyncGroupRequest,
};
use kafka_protocol::protocol::StrBytes;
use parking_lot::Mutex;

use crate::connection::{Api, Connection, RequestError};
use crate::connector::Connector;

/// COORDINATOR_LOAD_IN_PROGRESS.
pub(crate) const COORDINATOR_LOAD_IN_PROGRESS: i16 = 14;
/// COORDINATOR_NOT_AVAILABLE.
pub(crate) const COORDINATOR_NOT_AVAILABLE: i16 = 15;
/// NOT_COORDINATOR.
pub(crate) const NOT_COORDINATOR: i16 = 16;
/// ILLEGAL_GENERATION.
pub(crate) const ILLEGAL_GENERATION: i16 = 22;
/// UNKNOWN_MEMBER_ID.
pub(crate) const UNKNOWN_MEMBER_ID: i16 = 25;
/// REBALANCE_IN_PROGRESS.
pub(crate) const REBALANCE_IN_PROGRESS: i16 = 27;
/// MEMBER_ID_REQUIRED (KIP-394).
pub(crate) const MEMBER_ID_REQUIRED: i16 = 79;
/// FENCED_INSTANCE_ID.
pub(crate) const FENCED_INSTANCE_ID: i16 = 82;

/// How a failed group request is handled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Failure {
    /// Transient: back off and try the same step again.
    Retry(String),
    /// The coordinator moved or is unreachable: find it again, then retry.
    Coordinator(String),
    /// The group is rebalancing: (re)join.
    Rebalance(String),
    /// The member is no longer known in its generation: forget member id and generation, join
    /// anew.
    Reset(String),
    /// Retrying cannot help (not authorised, invalid configuration, inconsistent protocols).
    Fatal(String),
    /// Another member holds this member's group instance id now (FENCED_INSTANCE_ID): the
    /// member stops, and must not join again (it would fence the other in turn).
    Fenced(String),
}

impl Failure {
    /// The reason, whatever the kind.
    pub(crate) fn reason(&self) -> &str {
        match self {
            Failure::Retry(r)
            | Failure::Coordinator(r)
            | Failure::Rebalance(r)
            | Failure::Reset(r)
            | Failure::Fatal(r)
            | Failure::Fenced(r) => r,
        }
    }

    /// Classifies a Kafka error code answered by the coordinator to `api` (`context` says what
    /// was asked, for the message).
    pub(crate) fn from_code(code: i16, context: &str) -> Failure {
        let name = ResponseError::try_from_code(code)
            .map_or_else(|| "NONE".to_owned(), |e| format!("{e} ({code})"));
        let reason = format!("{context}: {name}");
        match code {
            COORDINATOR_LOAD_IN_PROGRESS => Failure::Retry(reason),
            COORDINATOR_NOT_AVAILABLE | NOT_COORDINATOR => Failure::Coordinator(reason),
            REBALANCE_IN_PROGRESS => Failure::Rebalance(reason),
            UNKNOWN_MEMBER_ID | ILLEGAL_GENERATION => Failure::Reset(reason),
            FENCED_INSTANCE_ID => Failure::Fenced(reason),
            // INCONSISTENT_GROUP_PROTOCOL, INVALID_GROUP_ID, INVALID_SESSION_TIMEOUT,
            // GROUP_AUTHORIZATION_FAILED, UNSUPPORTED_VERSION, GROUP_MAX_SIZE_REACHED,
            // INVALID_COMMIT_OFFSET_SIZE, OFFSET_METADATA_TOO_LARGE, TOPIC_AUTHORIZATION_FAILED.
            23 | 24 | 26 | 30 | 35 | 81 | 28 | 12 | 29 => Failure::Fatal(reason),
            _ => Failure::Retry(reason),
        }
    }

    /// Classifies a transport failure: the connection is gone, so is our idea of the
    /// coordinator (as the Java client marks the coordinator unknown on a disconnect). A request
    /// we cannot send at all (no common version, not encodable, too large to frame) would fail
    /// the same way again: fatal.
    pub(crate) fn from_request(error: &RequestError) -> Failure {
        match error {
            RequestError::Unsupported { .. }
            | RequestError::Encode { .. }
            | RequestError::TooLarge { .. } => Failure::Fatal(error.to_string()),
            _ => Failure::Coordinator(error.to_string()),
        }
    }
}

/// Where a group's coordinator is.
#[derive(Debug)]
pub(crate) struct Locator {
    group: String,
    connector: Arc<Connector>,
    current: Mutex<Option<String>>,
    /// Rotates the bootstrap broker asked first.
    next: Mutex<usize>,
}

impl Locator {
    /// A locator for `group`, asking the bootstrap brokers through `connector`.
    pub(crate) fn new(group: String, connector: Arc<Connector>) -> Self {
        Locator { group, connector, current: Mutex::new(None), next: Mutex::new(0) }
    }

    /// The group.
    pub(crate) fn group(&self) -> &str {
        &self.group
    }

    /// The request timeout.
    pub(crate) fn timeout(&self) -> Duration {
        self.connector.timeout()
    }

    /// Forgets the coordinator if it is still `address`.
    pub(crate) fn forget(&self, address: &str) {
        let mut current = self.current.lock();
        if current.as_deref() == Some(address) {
            *current = None;
        }
    }

    /// The coordinator's address, asking a bootstrap broker when unknown.
    pub(crate) async fn coordinator(&self) -> Result<String, Failure> {
        if let Some(address) = self.current.lock().clone() {
            return Ok(address);
        }
        let address = self.find().await?;
        *self.current.lock() = Some(address.clone());
        Ok(address)
    }

    /// FindCoordinator through each bootstrap broker in turn until one answers.
    async fn find(&self) -> Result<String, Failure> {
        let start = {
            let mut next = self.next.lock();
            let start = *next;
            *next = next.wrapping_add(1);
            start
        };
        let mut last = Failure::Coordinator(format!(
            "group `{}`: no bootstrap broker to ask for the coordinator",
            self.group
        ));
        let bootstrap = self.connector.bootstrap();
        for i in 0..bootstrap.len() {
            let Some(broker) = bootstrap.get((start + i) % bootstrap.len()) else {
                continue;
            };
            match self.find_at(broker).await {
                Ok(address) => return Ok(address),
                Err(failure @ Failure::Fatal(_)) => return Err(failure),
                Err(failure) => last = failure,
            }
        }
        Err(last)
    }

    async fn find_at(&self, broker: &str) -> Result<String, Failure> {
        let mut connection =
            self.connector.open(broker).await.map_err(|e| Failure::Coordinator(e.to_string()))?;
        let version = connection
            .version::<FindCoordinatorRequest>()
            .map_err(|e| Failure::Fatal(e.to_string()))?;
        let mut request = FindCoordinatorRequest::default();
        let key = StrBytes::from_string(self.group.clone());
        if version >= 4 {
            request.coordinator_keys = vec![key];
        } else {
            request.key = key;
        }
        request.key_type = 0; // a consumer group
        let response = connection
            .send(&request, version, self.timeout())
            .await
            .map_err(|e| Failure::Coordinator(e.to_string()))?;
        let context =
            format!("broker {broker}: FindCoordinator v{version} for group `{}`", self.group);
        let (error, host, port) = if version >= 4 {
            let Some(found) = response.coordinators.first() else {
                return Err(Failure::Coordinator(format!(
                    "{context}: no coordinator in the answer"
                )));
            };
            (found.error_code, found.host.as_str().to_owned(), found.port)
        } else {
            (response.error_code, response.host.as_str().to_owned(), response.port)
        };
        if error != 0 {
            return Err(match Failure::from_code(error, &context) {
                Failure::Fatal(reason) => Failure::Fatal(reason),
                other => Failure::Coordinator(other.reason().to_owned()),
            });
        }
        if host.is_empty() || port <= 0 {
            return Err(Failure::Coordinator(format!(
                "{context}: invalid coordinator address `{host}:{port}`"
            )));
        }
        let address = crate::client::address(&host, port);
        tracing::debug!(group = %self.group, coordinator = %address, version, "coordinator found");
        Ok(address)
    }
}

/// One connection to the group's coordinator.
#[derive(Debug)]
pub(crate) struct Link {
    locator: Arc<Locator>,
    connection: Option<Connection>,
}

impl Link {
    /// A link (connected on first use).
    pub(crate) fn new(locator: Arc<Locator>) -> Self {
        Link { locator, connection: None }
    }

    /// The coordinator moved (or its connection failed): forget both.
    pub(crate) fn coordinator_moved(&mut self) {
        if let Some(connection) = self.connection.take() {
            self.locator.forget(connection.broker());
        }
    }

    /// A usable connection to the current coordinator.
    async fn connection(&mut self) -> Result<&mut Connection, Failure> {
        let address = self.locator.coordinator().await?;
        let reuse =
            self.connection.as_ref().is_some_and(|c| c.is_usable() && c.broker() == address);
        if !reuse {
            self.connection = None;
            let opened = self.locator.connector.open(&address).await;
            match opened {
                Ok(connection) => {
                    tracing::debug!(
                        group = %self.locator.group(), coordinator = %address,
                        versions = ?negotiated(&connection), "connected to the coordinator"
                    );
                    self.connection = Some(connection);
                }
                Err(error) => {
                    self.locator.forget(&address);
                    return Err(Failure::from_request(&error));
                }
            }
        }
        self.connection.as_mut().ok_or_else(|| {
            Failure::Coordinator(format!(
                "group `{}`: no coordinator connection",
                self.locator.group()
            ))
        })
    }

    /// The version of `R` negotiated with the current coordinator (connecting first).
    pub(crate) async fn version<R: Api>(&mut self) -> Result<i16, Failure> {
        let connection = self.connection().await?;
        connection.version::<R>().map_err(|e| Failure::from_request(&e))
    }

    /// Sends the request `build` makes for the negotiated version and returns the response and
    /// the version used. A transport failure forgets the coordinator.
    pub(crate) async fn request<R: Api>(
        &mut self,
        build: impl FnOnce(i16) -> R,
        timeout: Duration,
    ) -> Result<(R::Response, i16), Failure> {
        let connection = self.connection().await?;
        let version = connection.version::<R>().map_err(|e| Failure::from_request(&e))?;
        let request = build(version);
        match connection.send(&request, version, timeout).await {
            Ok(response) => Ok((response, version)),
            Err(error) => {
                let failure = Failure::from_request(&error);
                if matches!(failure, Failure::Coordinator(_)) {
                    self.coordinator_moved();
                }
                Err(failure)
            }
        }
    }
}

/// The versions negotiated on `connection` for the group plane's APIs (for logs and reports).
fn negotiated(connection: &Connection) -> [(&'static str, Option<i16>); 7] {
    [
        ("FindCoordinator", connection.version::<FindCoordinatorRequest>().ok()),
        ("JoinGroup", connection.version::<JoinGroupRequest>().ok()),
        ("SyncGroup", connection.version::<SyncGroupRequest>().ok()),
        ("Heartbeat", connection.version::<HeartbeatRequest>().ok()),
        ("LeaveGroup", connection.version::<LeaveGroupRequest>().ok()),
        ("OffsetCommit", connection.version::<OffsetCommitRequest>().ok()),
        ("OffsetFetch", connection.version::<OffsetFetchRequest>().ok()),
    ]
}
