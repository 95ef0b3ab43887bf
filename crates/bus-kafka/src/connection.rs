//! Our own Kafka connection, shared by both planes: TCP (or TLS) framing, correlation ids,
//! request and response headers, ApiVersions negotiation, SASL authentication and
//! re-authentication, and per-request timeouts, on the `kafka-protocol` crate's message types.
//! The producer's partition loops (Metadata, Produce), the partition readers of `fetch`
//! (Metadata, ListOffsets, Fetch), the group plane's coordinator links (the group APIs) and
//! the cluster client (Metadata, CreateTopics) all use it.
//!
//! Owns: [`Connection`] (one stream to one broker, plain or TLS ([`Transport`]), one request at
//! a time; opened as the bus's [`Security`] says), [`Pipeline`] (a connection turned into one
//! that carries several requests at once, their responses read in order and cancel-safely: the
//! producer's Produce requests), the [`Api`] trait
//! (every request type this crate sends, and the versions it implements for each),
//! [`RequestError`] (a failed request, naming the broker and the API; each plane classifies it
//! its own way) and [`code_name`] (a Kafka error code's name, for messages).
//!
//! Invariants:
//! - One request is in flight at a time; its response is matched by correlation id. (A
//!   [`Pipeline`] has several, answered in order; its own invariants are on the type.)
//! - A request that fails in any way (I/O, timeout, undecodable or mismatched response) or whose
//!   future is dropped before the response is read leaves the connection *poisoned*: the stream
//!   is closed and never read or written again (a half-written request or half-read response
//!   would desynchronise the framing). Callers open a new connection.
//! - Every exchange is bounded by the caller's timeout; opening (TCP, the TLS handshake,
//!   ApiVersions, SASL) is bounded as a whole by the one given to [`Connection::open`]. Nothing
//!   here waits without a bound.
//! - With SASL, a connection is handed out only once authenticated; when the broker set a
//!   session lifetime (KIP-368), the connection re-authenticates before the next request sent
//!   after 85-95% of it (so never while a request is in flight); a failed re-authentication
//!   poisons it.
//! - Each frame written is flushed before its response is read (TLS buffers what is written).
//! - The version used for an API is the highest that both we and the broker support, as learnt
//!   from the broker's ApiVersions answer when the connection was opened; an API with no common
//!   version fails with [`RequestError::Unsupported`] before anything is sent. ApiVersions itself
//!   is tried in v3 first; a broker that does not support it answers in v0 (listing the versions
//!   it does support), and the request is repeated in a version it offers.
//! - A request is encoded into one buffer sized up front (fields of type `Bytes`, such as a
//!   Produce request's record batch, are passed in by reference count, not copied before
//!   encoding). A response is read into one buffer (not zeroed first); decoded fields of type
//!   `Bytes` (a Fetch response's records) are slices of it, not copies.
//! - Whatever a broker sends, reading a response costs memory in proportion to what it did
//!   send, within a bound per request kind ([`Api::response_limit`]: a few KiB to a few MiB; a
//!   Fetch response, what it asked for plus room for one oversized batch): a size prefix over
//!   the bound fails the request before anything is reserved, and the buffer grows with the
//!   bytes as they arrive, not with the prefix. A response body is checked against its shape
//!   (the crate's `schema`: no array count larger than the bytes left) before `kafka-protocol`
//!   decodes it.
//! - No task is spawned here: the caller's future drives every read and write.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, ApiVersionsResponse, CreateTopicsRequest, CreateTopicsResponse,
    FetchRequest, FetchResponse, FindCoordinatorRequest, FindCoordinatorResponse, HeartbeatRequest,
    HeartbeatResponse, InitProducerIdRequest, InitProducerIdResponse, JoinGroupRequest,
    JoinGroupResponse, LeaveGroupRequest, LeaveGroupResponse, ListOffsetsRequest,
    ListOffsetsResponse, MetadataRequest, MetadataResponse, OffsetCommitRequest,
    OffsetCommitResponse, OffsetFetchRequest, OffsetFetchResponse, ProduceRequest, ProduceResponse,
    RequestHeader, ResponseHeader, SaslAuthenticateRequest, SaslAuthenticateResponse,
    SaslHandshakeRequest, SaslHandshakeResponse, SyncGroupRequest, SyncGroupResponse,
};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, StrBytes};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::security::{Authenticator, Security, reauthenticate_at};
use crate::transport::Transport;

use crate::config::FETCH_RESPONSE_SLACK;
use crate::schema;

/// What a response buffer reserves before its bytes arrive (it grows with them after).
const FIRST_READ_BYTES: usize = 64 * 1024;

const KIB: usize = 1024;
const MIB: usize = 1024 * 1024;

/// The ApiVersions version tried first (the broker answers in v0 when it does not support it).
const API_VERSIONS_VERSION: i16 = 3;

/// UNSUPPORTED_VERSION.
const UNSUPPORTED_VERSION: i16 = 35;

/// A request type this crate sends and the versions we implement for it.
pub(crate) trait Api: Encodable + HeaderVersion {
    /// The API key.
    const KEY: ApiKey;
    /// The API's name, for errors and logs.
    const NAME: &'static str;
    /// The lowest version we implement.
    const MIN: i16;
    /// The highest version we implement.
    const MAX: i16;
    /// The response type.
    type Response: Decodable + HeaderVersion;
    /// The response's shape, checked before it is decoded.
    const SHAPE: &'static schema::Message;
    /// The largest response body accepted for this kind of request.
    const MAX_RESPONSE_BYTES: usize;

    /// The largest response body accepted for this request (the kind's bound unless the
    /// request itself says how much it asks for).
    fn response_limit(&self) -> usize {
        Self::MAX_RESPONSE_BYTES
    }
}

macro_rules! api {
    (
        $request:ty, $response:ty, $key:ident, $name:literal, $min:literal, $max:literal,
        $shape:expr, $limit:expr $(, fn $limit_fn:ident($self:ident) $body:block)?
    ) => {
        impl Api for $request {
            const KEY: ApiKey = ApiKey::$key;
            const NAME: &'static str = $name;
            const MIN: i16 = $min;
            const MAX: i16 = $max;
            type Response = $response;
            const SHAPE: &'static schema::Message = $shape;
            const MAX_RESPONSE_BYTES: usize = $limit;
            $(fn $limit_fn(&$self) -> usize $body)?
        }
    };
}

// The bounds on responses: generous for what the broker can have to say (a group of a thousand
// members, a topic of ten thousand partitions), small against what memory a hostile one could
// make us reserve (the schema check bounds what decoding makes of them to a few times their
// size).
api!(
    ApiVersionsRequest,
    ApiVersionsResponse,
    ApiVersions,
    "ApiVersions",
    0,
    4,
    schema::API_VERSIONS,
    64 * KIB
);
// The group plane's coordinator links.
api!(
    FindCoordinatorRequest,
    FindCoordinatorResponse,
    FindCoordinator,
    "FindCoordinator",
    0,
    6,
    schema::FIND_COORDINATOR,
    64 * KIB
);
api!(JoinGroupRequest, JoinGroupResponse, JoinGroup, "JoinGroup", 0, 9, schema::JOIN_GROUP, MIB);
api!(SyncGroupRequest, SyncGroupResponse, SyncGroup, "SyncGroup", 0, 5, schema::SYNC_GROUP, MIB);
api!(
    HeartbeatRequest,
    HeartbeatResponse,
    Heartbeat,
    "Heartbeat",
    0,
    4,
    schema::HEARTBEAT,
    64 * KIB
);
api!(
    LeaveGroupRequest,
    LeaveGroupResponse,
    LeaveGroup,
    "LeaveGroup",
    0,
    5,
    schema::LEAVE_GROUP,
    64 * KIB
);
api!(
    OffsetCommitRequest,
    OffsetCommitResponse,
    OffsetCommit,
    "OffsetCommit",
    2,
    9,
    schema::OFFSET_COMMIT,
    MIB
);
api!(
    OffsetFetchRequest,
    OffsetFetchResponse,
    OffsetFetch,
    "OffsetFetch",
    1,
    9,
    schema::OFFSET_FETCH,
    4 * MIB
);
// Leader lookup (producer and readers), start offsets and records (the readers: topics by
// name; v12 is the last Fetch version that names them, v13+ name topics by id).
api!(MetadataRequest, MetadataResponse, Metadata, "Metadata", 1, 9, schema::METADATA, 4 * MIB);
api!(
    ListOffsetsRequest,
    ListOffsetsResponse,
    ListOffsets,
    "ListOffsets",
    1,
    7,
    schema::LIST_OFFSETS,
    MIB
);
api!(
    FetchRequest,
    FetchResponse,
    Fetch,
    "Fetch",
    4,
    12,
    schema::FETCH,
    crate::config::MAX_FETCH_BYTES + FETCH_RESPONSE_SLACK,
    fn response_limit(self) {
        usize::try_from(self.max_bytes).unwrap_or(0).saturating_add(FETCH_RESPONSE_SLACK)
    }
);
// Topic creation at the controller (the cluster client).
api!(
    CreateTopicsRequest,
    CreateTopicsResponse,
    CreateTopics,
    "CreateTopics",
    1,
    7,
    schema::CREATE_TOPICS,
    MIB
);
// The producer (v3 is the first with record batches v2; v13 the first naming topics by id).
api!(ProduceRequest, ProduceResponse, Produce, "Produce", 3, 9, schema::PRODUCE, MIB);
// SASL (v0 of SaslHandshake means unframed SASL tokens, which we do not speak; SaslAuthenticate
// v1 is the first with the session lifetime).
api!(
    SaslHandshakeRequest,
    SaslHandshakeResponse,
    SaslHandshake,
    "SaslHandshake",
    1,
    1,
    schema::SASL_HANDSHAKE,
    64 * KIB
);
api!(
    SaslAuthenticateRequest,
    SaslAuthenticateResponse,
    SaslAuthenticate,
    "SaslAuthenticate",
    0,
    2,
    schema::SASL_AUTHENTICATE,
    MIB
);
// The idempotent producer's id and epoch (v3 is the first that can bump an epoch: KIP-360).
api!(
    InitProducerIdRequest,
    InitProducerIdResponse,
    InitProducerId,
    "InitProducerId",
    0,
    5,
    schema::INIT_PRODUCER_ID,
    64 * KIB
);

/// A request to a broker that failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum RequestError {
    /// The TCP connection could not be opened (or was closed during the TLS handshake).
    #[error("cannot connect to broker {broker}: {reason}")]
    Connect {
        /// The broker's address.
        broker: String,
        /// Why.
        reason: String,
    },
    /// The TLS handshake was refused: the broker's certificate is not trusted or does not name
    /// it, or the broker does not speak TLS. The same configuration fails again.
    #[error("TLS handshake with broker {broker} failed: {reason}")]
    Tls {
        /// The broker's address.
        broker: String,
        /// Why.
        reason: String,
    },
    /// SASL authentication failed: the broker refused the credentials or the mechanism, or the
    /// exchange broke the mechanism's rules. The same credentials fail again.
    #[error("broker {broker}: SASL authentication with {mechanism} failed: {reason}")]
    Auth {
        /// The broker's address.
        broker: String,
        /// The mechanism (`SCRAM-SHA-512`, ...).
        mechanism: &'static str,
        /// Why.
        reason: String,
    },
    /// Reading or writing the stream failed, the connection was closed, or the response's size
    /// prefix is invalid.
    #[error("broker {broker}: {api} failed: {reason}")]
    Io {
        /// The broker's address.
        broker: String,
        /// The API.
        api: &'static str,
        /// Why.
        reason: String,
    },
    /// No response within the request's timeout.
    #[error("broker {broker}: {api} v{version} got no response within {timeout:?}")]
    Timeout {
        /// The broker's address.
        broker: String,
        /// The API.
        api: &'static str,
        /// The version sent.
        version: i16,
        /// The timeout.
        timeout: Duration,
    },
    /// The response could not be decoded, or does not answer the request (correlation id).
    #[error("broker {broker}: {api} v{version}: {reason}")]
    Protocol {
        /// The broker's address.
        broker: String,
        /// The API.
        api: &'static str,
        /// The version.
        version: i16,
        /// Why.
        reason: String,
    },
    /// The request could not be encoded in the version chosen (nothing was sent).
    #[error("broker {broker}: {api} v{version}: cannot encode the request: {reason}")]
    Encode {
        /// The broker's address.
        broker: String,
        /// The API.
        api: &'static str,
        /// The version.
        version: i16,
        /// Why.
        reason: String,
    },
    /// The request is larger than a frame can carry (nothing was sent).
    #[error("broker {broker}: {api} v{version}: the request ({size} bytes) is too large")]
    TooLarge {
        /// The broker's address.
        broker: String,
        /// The API.
        api: &'static str,
        /// The version.
        version: i16,
        /// The request's encoded size.
        size: usize,
    },
    /// The broker supports no version of the API that we implement.
    #[error(
        "broker {broker} does not support {api} in a version we implement (ours: v{ours_min}-v{ours_max}, its: {theirs})"
    )]
    Unsupported {
        /// The broker's address.
        broker: String,
        /// The API.
        api: &'static str,
        /// The lowest version we implement.
        ours_min: i16,
        /// The highest version we implement.
        ours_max: i16,
        /// The broker's range, or "none".
        theirs: String,
    },
}

impl RequestError {
    /// Whether the error is a TLS or SASL refusal: the configuration does not fit the broker,
    /// and trying again at once would fail the same way.
    pub(crate) fn is_security(&self) -> bool {
        matches!(self, RequestError::Tls { .. } | RequestError::Auth { .. })
    }
}

/// A Kafka error code's name, for messages: `NAME (error N)`.
pub(crate) fn code_name(code: i16) -> String {
    ResponseError::try_from_code(code)
        .map_or_else(|| format!("error code {code}"), |e| format!("{e} (error {code})"))
}

/// A connection to one broker. See the module documentation for its invariants.
#[derive(Debug)]
pub(crate) struct Connection {
    broker: String,
    client_id: StrBytes,
    stream: Option<Transport>,
    /// The SASL session, when the connection authenticated.
    session: Option<Session>,
    /// A request was started and not finished: the stream is unusable.
    in_flight: bool,
    correlation: i32,
    /// The broker's supported versions, by API key.
    versions: HashMap<i16, (i16, i16)>,
}

/// A connection's SASL session: how to authenticate again, and when.
#[derive(Debug)]
struct Session {
    authenticator: Arc<Authenticator>,
    /// When to re-authenticate (none: the broker set no session lifetime).
    reauthenticate_at: Option<Instant>,
}

impl Connection {
    /// Opens a connection to `broker` (`host:port`): TCP, the TLS handshake when `security`
    /// has TLS, ApiVersions, then SASL when `security` has it, all within `timeout`.
    ///
    /// # Errors
    ///
    /// [`RequestError::Connect`] when the TCP connection fails or times out (or the broker
    /// closes it during the TLS handshake); [`RequestError::Tls`] when the handshake is
    /// refused; [`RequestError::Auth`] when authentication is; the errors of
    /// [`Connection::send`] for the ApiVersions and SASL exchanges.
    pub(crate) async fn open(
        broker: &str,
        security: &Security,
        client_id: &str,
        timeout: Duration,
    ) -> Result<Connection, RequestError> {
        let deadline = Instant::now() + timeout;
        let connect = tokio::time::timeout_at(deadline, TcpStream::connect(broker)).await;
        let stream = match connect {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => {
                return Err(RequestError::Connect {
                    broker: broker.to_owned(),
                    reason: e.to_string(),
                });
            }
            Err(_) => {
                return Err(RequestError::Connect {
                    broker: broker.to_owned(),
                    reason: format!("no connection within {timeout:?}"),
                });
            }
        };
        let _ = stream.set_nodelay(true);
        let stream = match &security.tls {
            None => Transport::Plain(stream),
            Some(tls) => match tokio::time::timeout_at(deadline, tls.connect(broker, stream)).await
            {
                Ok(Ok(stream)) => Transport::Tls(Box::new(stream)),
                Ok(Err(error)) => return Err(error),
                Err(_) => {
                    return Err(RequestError::Connect {
                        broker: broker.to_owned(),
                        reason: format!(
                            "no TLS handshake within {timeout:?} (if the broker's listener is \
                             not TLS, set security.protocol to plaintext or sasl_plaintext)"
                        ),
                    });
                }
            },
        };
        let tls = stream.is_tls();
        let mut connection = Connection {
            broker: broker.to_owned(),
            client_id: StrBytes::from_string(client_id.to_owned()),
            stream: Some(stream),
            session: None,
            in_flight: false,
            correlation: 0,
            versions: HashMap::new(),
        };
        let remaining = deadline.saturating_duration_since(Instant::now());
        // A plaintext request to a TLS listener is answered with TLS bytes (read as a size over
        // the bound, or an invalid one) or a closed connection.
        let hint = |reason: String| {
            format!(
                "{reason} (if the broker's listener is TLS, set security.protocol to ssl or \
                 sasl_ssl)"
            )
        };
        connection.negotiate(remaining).await.map_err(|error| match error {
            RequestError::Io { broker, api, reason } if !tls => {
                RequestError::Io { broker, api, reason: hint(reason) }
            }
            RequestError::Protocol { broker, api, version, reason } if !tls => {
                RequestError::Protocol { broker, api, version, reason: hint(reason) }
            }
            other => other,
        })?;
        if let Some(authenticator) = &security.sasl {
            connection.authenticate(Arc::clone(authenticator), deadline).await?;
        }
        Ok(connection)
    }

    /// Authenticates with `authenticator` within `deadline` and records the session.
    async fn authenticate(
        &mut self,
        authenticator: Arc<Authenticator>,
        deadline: Instant,
    ) -> Result<(), RequestError> {
        let start = Instant::now();
        let lifetime = authenticator.authenticate(self, deadline).await?;
        let reauthenticate_at = lifetime.map(|lifetime| reauthenticate_at(start, lifetime));
        tracing::debug!(
            broker = %self.broker, mechanism = %authenticator.mechanism(), ?lifetime,
            "authenticated"
        );
        self.session = Some(Session { authenticator, reauthenticate_at });
        Ok(())
    }

    /// Re-authenticates (KIP-368) when the session's re-authentication time has come, within
    /// `timeout`.
    async fn reauthenticate_if_due(&mut self, timeout: Duration) -> Result<(), RequestError> {
        let due = self
            .session
            .as_ref()
            .filter(|s| s.reauthenticate_at.is_some_and(|at| Instant::now() >= at))
            .map(|s| Arc::clone(&s.authenticator));
        if let Some(authenticator) = due {
            tracing::debug!(broker = %self.broker, "re-authenticating (session lifetime)");
            self.authenticate(authenticator, Instant::now() + timeout).await?;
        }
        Ok(())
    }

    /// The broker's address.
    pub(crate) fn broker(&self) -> &str {
        &self.broker
    }

    /// Whether the connection can still be used (not poisoned or closed).
    pub(crate) fn is_usable(&self) -> bool {
        self.stream.is_some() && !self.in_flight
    }

    /// The version `R` is sent in: the highest both sides support.
    ///
    /// # Errors
    ///
    /// [`RequestError::Unsupported`] when there is none.
    pub(crate) fn version<R: Api>(&self) -> Result<i16, RequestError> {
        let theirs = self.versions.get(&(R::KEY as i16)).copied();
        let unsupported = |theirs: String| RequestError::Unsupported {
            broker: self.broker.clone(),
            api: R::NAME,
            ours_min: R::MIN,
            ours_max: R::MAX,
            theirs,
        };
        let Some((min, max)) = theirs else {
            return Err(unsupported("none".into()));
        };
        let version = R::MAX.min(max);
        if version < R::MIN.max(min) {
            return Err(unsupported(format!("v{min}-v{max}")));
        }
        Ok(version)
    }

    /// Sends `request` in `version` and waits up to `timeout` for its response.
    ///
    /// # Errors
    ///
    /// [`RequestError::Io`], [`RequestError::Timeout`] or [`RequestError::Protocol`] (also a
    /// response over its bound or not of its shape), each of which poisons the connection;
    /// [`RequestError::Encode`] or [`RequestError::TooLarge`] when the request cannot be
    /// framed (nothing is sent).
    pub(crate) async fn send<R: Api>(
        &mut self,
        request: &R,
        version: i16,
        timeout: Duration,
    ) -> Result<R::Response, RequestError> {
        self.reauthenticate_if_due(timeout).await?;
        self.request(request, version, timeout).await
    }

    /// [`Connection::send`] without the re-authentication check: for the handshakes.
    ///
    /// # Errors
    ///
    /// As for [`Connection::send`].
    pub(crate) async fn request<R: Api>(
        &mut self,
        request: &R,
        version: i16,
        timeout: Duration,
    ) -> Result<R::Response, RequestError> {
        let frame = self.frame(request, version)?;
        let correlation = self.correlation;
        let limit = request.response_limit();
        let body =
            self.round_trip(R::NAME, version, frame, timeout, limit, BytesMut::new()).await?;
        self.decode::<R>(body.freeze(), version, correlation)
    }

    /// [`Connection::send`], reading the response into `buffer` (cleared first; grown when
    /// too small), then making it shared with `hold` before decoding: the response's `Bytes`
    /// fields are slices of what `hold` returns, which is also returned. A caller can so tie
    /// the response's memory to an owner of its own (`Bytes::from_owner`), to learn when
    /// nothing decoded from it is referenced any more and to take the memory back.
    ///
    /// # Errors
    ///
    /// As for [`Connection::send`].
    pub(crate) async fn send_into<R: Api>(
        &mut self,
        request: &R,
        version: i16,
        timeout: Duration,
        buffer: BytesMut,
        hold: impl FnOnce(BytesMut) -> Bytes,
    ) -> Result<(R::Response, Bytes), RequestError> {
        self.reauthenticate_if_due(timeout).await?;
        let frame = self.frame(request, version)?;
        let correlation = self.correlation;
        let limit = request.response_limit();
        let body = self.round_trip(R::NAME, version, frame, timeout, limit, buffer).await?;
        let body = hold(body);
        let response = self.decode::<R>(body.clone(), version, correlation)?;
        Ok((response, body))
    }

    /// Closes the stream for good.
    fn poison(&mut self) {
        self.stream = None;
    }

    /// Closes the connection for good (a failed handshake: the stream is out of step with the
    /// broker's idea of it).
    pub(crate) fn close(&mut self) {
        self.poison();
    }

    /// Encodes `request` with its header and size prefix, under a new correlation id, into one
    /// buffer of the size they need.
    fn frame<R: Api>(&mut self, request: &R, version: i16) -> Result<Bytes, RequestError> {
        self.correlation = self.correlation.wrapping_add(1);
        let mut header = RequestHeader::default();
        header.request_api_key = R::KEY as i16;
        header.request_api_version = version;
        header.correlation_id = self.correlation;
        header.client_id = Some(self.client_id.clone());
        let header_version = R::header_version(version);
        let encode = |reason: String| RequestError::Encode {
            broker: self.broker.clone(),
            api: R::NAME,
            version,
            reason,
        };
        let size = header
            .compute_size(header_version)
            .and_then(|h| request.compute_size(version).map(|r| h + r))
            .map_err(|e| encode(e.to_string()))?;
        let mut buf = BytesMut::with_capacity(4 + size);
        buf.put_i32(0);
        header
            .encode(&mut buf, header_version)
            .and_then(|()| request.encode(&mut buf, version))
            .map_err(|e| encode(e.to_string()))?;
        // The prefix says what was written (the size computed above only sized the buffer).
        let written = buf.len() - 4;
        let prefix = i32::try_from(written).map_err(|_| RequestError::TooLarge {
            broker: self.broker.clone(),
            api: R::NAME,
            version,
            size: written,
        })?;
        buf[0..4].copy_from_slice(&prefix.to_be_bytes());
        Ok(buf.freeze())
    }

    /// Writes `frame` and reads its response (at most `limit` bytes) into `buffer` within
    /// `timeout`; poisons the connection on any failure.
    async fn round_trip(
        &mut self,
        api: &'static str,
        version: i16,
        frame: Bytes,
        timeout: Duration,
        limit: usize,
        buffer: BytesMut,
    ) -> Result<BytesMut, RequestError> {
        match tokio::time::timeout(timeout, self.exchange(api, version, frame, limit, buffer)).await
        {
            Ok(Ok(body)) => Ok(body),
            Ok(Err(error)) => {
                self.poison();
                Err(error)
            }
            Err(_) => {
                self.poison();
                Err(RequestError::Timeout { broker: self.broker.clone(), api, version, timeout })
            }
        }
    }

    /// Writes one frame and reads one response frame of at most `limit` bytes into `body`
    /// (cleared first), growing it as the bytes arrive. Marks the connection in flight for
    /// the duration, so a dropped future leaves it poisoned.
    async fn exchange(
        &mut self,
        api: &'static str,
        version: i16,
        frame: Bytes,
        limit: usize,
        mut body: BytesMut,
    ) -> Result<BytesMut, RequestError> {
        let io = |reason: String| RequestError::Io { broker: self.broker.clone(), api, reason };
        if self.in_flight {
            self.stream = None;
        }
        let Some(stream) = self.stream.as_mut() else {
            return Err(io("the connection is closed (an earlier request on it failed)".into()));
        };
        self.in_flight = true;
        stream.write_all(&frame).await.map_err(|e| io(format!("write: {e}")))?;
        // A TLS stream holds what is written until flushed.
        stream.flush().await.map_err(|e| io(format!("write: {e}")))?;
        let prefix = stream.read_i32().await.map_err(|e| io(format!("read: {e}")))?;
        let size = response_size(prefix, limit, api).map_err(|reason| RequestError::Protocol {
            broker: self.broker.clone(),
            api,
            version,
            reason,
        })?;
        body.clear();
        // Memory follows the bytes that arrive, not the prefix: reserve a first read (or what
        // the reused buffer has), then grow by what has arrived (doubling).
        if body.capacity() < size.min(FIRST_READ_BYTES) {
            body.reserve(size.min(FIRST_READ_BYTES));
        }
        // Read exactly `size` bytes: never into the next response (there is none in flight,
        // but the limit keeps the framing exact).
        while body.len() < size {
            let want = size - body.len();
            if body.capacity() == body.len() {
                body.reserve(want.min(body.len().max(FIRST_READ_BYTES)));
            }
            let read = stream
                .read_buf(&mut (&mut body).limit(want))
                .await
                .map_err(|e| io(format!("read: {e}")))?;
            if read == 0 {
                return Err(io("read: the broker closed the connection".into()));
            }
        }
        self.in_flight = false;
        #[cfg(feature = "fuzzing")]
        crate::fuzzing::capture(api, version, &body);
        Ok(body)
    }

    /// Decodes a response frame (see [`decode_frame`]). Poisons the connection when it cannot.
    fn decode<R: Api>(
        &mut self,
        body: Bytes,
        version: i16,
        correlation: i32,
    ) -> Result<R::Response, RequestError> {
        decode_frame::<R>(body, version, correlation).map_err(|reason| {
            self.poison();
            RequestError::Protocol { broker: self.broker.clone(), api: R::NAME, version, reason }
        })
    }

    /// Learns the broker's versions: ApiVersions in v3, repeated in the version the broker
    /// offers when it answers UNSUPPORTED_VERSION, or in v0 when its answer cannot be decoded
    /// in the version asked (a whole frame was read: the stream is still in step). On any
    /// error the connection is dropped by [`Connection::open`], never handed out.
    async fn negotiate(&mut self, timeout: Duration) -> Result<(), RequestError> {
        let mut request = ApiVersionsRequest::default();
        request.client_software_name = StrBytes::from_static_str("bus-kafka");
        request.client_software_version = StrBytes::from_static_str(env!("CARGO_PKG_VERSION"));
        let mut version = API_VERSIONS_VERSION;
        for _ in 0..3 {
            let frame = self.frame(&request, version)?;
            let correlation = self.correlation;
            let limit = request.response_limit();
            let mut body = self
                .round_trip("ApiVersions", version, frame, timeout, limit, BytesMut::new())
                .await?
                .freeze();
            let protocol = |reason: String| RequestError::Protocol {
                broker: self.broker.clone(),
                api: "ApiVersions",
                version,
                reason,
            };
            // ApiVersions responses always carry a v0 header (so that any client can read one).
            let header = ResponseHeader::decode(&mut body, 0)
                .map_err(|e| protocol(format!("cannot decode the response header: {e}")))?;
            if header.correlation_id != correlation {
                return Err(protocol(format!(
                    "correlation id {} does not match the request's {correlation}",
                    header.correlation_id
                )));
            }
            let error_code = body.get(0..2).map_or(0, |b| i16::from_be_bytes([b[0], b[1]]));
            // An unsupported version is answered in v0, listing the versions it does support.
            let decode_version = if error_code == UNSUPPORTED_VERSION { 0 } else { version };
            let decoded = schema::check(schema::API_VERSIONS, decode_version, &body)
                .map_err(|e| protocol(format!("malformed response: {e}")))
                .and_then(|()| {
                    ApiVersionsResponse::decode(&mut body, decode_version)
                        .map_err(|e| protocol(format!("cannot decode the response: {e}")))
                });
            let response = match decoded {
                Ok(response) => response,
                Err(_) if version > 0 => {
                    version = 0;
                    continue;
                }
                Err(e) => return Err(e),
            };
            if response.error_code == UNSUPPORTED_VERSION {
                let offered = response
                    .api_keys
                    .iter()
                    .find(|k| k.api_key == ApiKey::ApiVersions as i16)
                    .map_or(0, |k| k.max_version);
                version = offered.min(API_VERSIONS_VERSION);
                continue;
            }
            if response.error_code != 0 {
                return Err(protocol(code_name(response.error_code)));
            }
            self.versions = response
                .api_keys
                .iter()
                .map(|k| (k.api_key, (k.min_version, k.max_version)))
                .collect();
            return Ok(());
        }
        Err(RequestError::Protocol {
            broker: self.broker.clone(),
            api: "ApiVersions",
            version,
            reason: "the broker rejected every ApiVersions version offered".into(),
        })
    }
}

/// A request written on a [`Pipeline`] and not yet answered.
#[derive(Debug, Clone, Copy)]
struct Pending {
    correlation: i32,
    key: i16,
    api: &'static str,
    version: i16,
    sent: Instant,
    /// The bound on its response (its kind's, see [`Api::response_limit`]).
    limit: usize,
}

/// A [`Connection`] carrying several requests at once (pipelining, as the Java client and
/// librdkafka send Produce requests): requests are written one after another without waiting,
/// and their responses read in the order they were sent (Kafka answers a connection's requests
/// in order), each matched to its request by correlation id.
///
/// Invariants (those of [`Connection`], adapted):
/// - A request is written whole or the pipeline is poisoned: a failed write, a write past its
///   timeout, or a write whose future is dropped leaves the stream closed for good.
/// - Reading is cancel-safe: [`Pipeline::receive`] keeps what it has read of a response in the
///   pipeline, so dropping its future (a `select!` choosing another branch) loses nothing and
///   the next call carries on. Every read is bounded by the caller's deadline; at the deadline,
///   or on any I/O or protocol failure, the pipeline is poisoned.
/// - A response is at most its request's bound ([`Api::response_limit`]) and passes the
///   schema check before it is decoded, as on a [`Connection`]; a larger size prefix poisons
///   the pipeline.
/// - Nothing is read beyond the response being read (the next one stays in the socket).
#[derive(Debug)]
pub(crate) struct Pipeline {
    connection: Connection,
    /// Requests written and not yet answered, oldest first.
    pending: VecDeque<Pending>,
    /// What has been read of the next response (its size prefix first).
    received: BytesMut,
}

impl Connection {
    /// This connection as a [`Pipeline`].
    pub(crate) fn into_pipeline(self) -> Pipeline {
        Pipeline { connection: self, pending: VecDeque::new(), received: BytesMut::new() }
    }
}

impl Pipeline {
    /// The version `R` is sent in (see [`Connection::version`]).
    ///
    /// # Errors
    ///
    /// [`RequestError::Unsupported`] when there is none.
    pub(crate) fn version<R: Api>(&self) -> Result<i16, RequestError> {
        self.connection.version::<R>()
    }

    /// Whether requests can still be written (not poisoned or closed).
    pub(crate) fn is_usable(&self) -> bool {
        self.connection.is_usable()
    }

    /// Writes `request` in `version`, within `timeout`, without waiting for its response (read
    /// it with [`Pipeline::receive`], after the responses of the requests written before it).
    ///
    /// # Errors
    ///
    /// [`RequestError::Io`] or [`RequestError::Timeout`], which poison the pipeline;
    /// [`RequestError::Encode`] or [`RequestError::TooLarge`] when the request cannot be
    /// framed (nothing is written).
    pub(crate) async fn send<R: Api>(
        &mut self,
        request: &R,
        version: i16,
        timeout: Duration,
    ) -> Result<(), RequestError> {
        // Re-authentication (KIP-368) needs the connection to itself: it is done when nothing is
        // in flight. A pipeline kept busy past the broker's session lifetime is closed by the
        // broker instead, and its batches are sent again on a new connection (in order, unchanged:
        // the idempotent producer stores them once).
        if self.pending.is_empty() {
            self.connection.reauthenticate_if_due(timeout).await?;
        }
        let frame = self.connection.frame(request, version)?;
        let correlation = self.connection.correlation;
        let connection = &mut self.connection;
        let broker = connection.broker.clone();
        let io = |reason: String| RequestError::Io { broker: broker.clone(), api: R::NAME, reason };
        // A write left unfinished (its future dropped) leaves `in_flight` set: never reused.
        if connection.in_flight {
            connection.poison();
        }
        let Some(stream) = connection.stream.as_mut() else {
            return Err(io("the connection is closed (an earlier request on it failed)".into()));
        };
        connection.in_flight = true;
        // Flushed as well: a TLS stream holds what is written until flushed.
        let write = async {
            stream.write_all(&frame).await?;
            stream.flush().await
        };
        let written = tokio::time::timeout(timeout, write).await;
        match written {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                connection.poison();
                return Err(io(format!("write: {e}")));
            }
            Err(_) => {
                connection.poison();
                return Err(RequestError::Timeout { broker, api: R::NAME, version, timeout });
            }
        }
        connection.in_flight = false;
        self.pending.push_back(Pending {
            correlation,
            key: R::KEY as i16,
            api: R::NAME,
            version,
            sent: Instant::now(),
            limit: request.response_limit(),
        });
        Ok(())
    }

    /// Reads the response to the oldest request written and not yet answered, which must be an
    /// `R`, waiting until `deadline` at most. Cancel-safe (see the type's documentation).
    ///
    /// # Errors
    ///
    /// [`RequestError::Io`] (including when no request is in flight, or the oldest is not an
    /// `R`), [`RequestError::Timeout`] at the deadline, [`RequestError::Protocol`] for an
    /// answer that cannot be decoded or does not match; each but the first two kinds of `Io`
    /// poisons the pipeline.
    pub(crate) async fn receive<R: Api>(
        &mut self,
        deadline: Instant,
    ) -> Result<R::Response, RequestError> {
        let broker = self.connection.broker.clone();
        let Some(pending) = self.pending.front().copied() else {
            return Err(RequestError::Io {
                broker,
                api: R::NAME,
                reason: "no request is waiting for a response".into(),
            });
        };
        if pending.key != R::KEY as i16 {
            return Err(RequestError::Io {
                broker,
                api: R::NAME,
                reason: format!("the next response answers {}, not {}", pending.api, R::NAME),
            });
        }
        let read = self.read_frame(pending);
        let body = match tokio::time::timeout_at(deadline, read).await {
            Ok(Ok(body)) => body,
            Ok(Err(error)) => {
                self.connection.poison();
                return Err(error);
            }
            Err(_) => {
                self.connection.poison();
                return Err(RequestError::Timeout {
                    broker,
                    api: pending.api,
                    version: pending.version,
                    timeout: deadline.saturating_duration_since(pending.sent),
                });
            }
        };
        self.pending.pop_front();
        self.connection.decode::<R>(body, pending.version, pending.correlation)
    }

    /// Reads one whole response frame (without its size prefix), keeping what it has read in
    /// `received` across cancellations.
    async fn read_frame(&mut self, pending: Pending) -> Result<Bytes, RequestError> {
        let api = pending.api;
        let io = |reason: String| RequestError::Io {
            broker: self.connection.broker.clone(),
            api,
            reason,
        };
        loop {
            let want = if self.received.len() < 4 {
                4 - self.received.len()
            } else {
                let size = i32::from_be_bytes([
                    self.received[0],
                    self.received[1],
                    self.received[2],
                    self.received[3],
                ]);
                let size = response_size(size, pending.limit, api).map_err(|reason| {
                    RequestError::Protocol {
                        broker: self.connection.broker.clone(),
                        api,
                        version: pending.version,
                        reason,
                    }
                })?;
                let have = self.received.len() - 4;
                if have == size {
                    let mut frame = std::mem::take(&mut self.received);
                    let body = frame.split_off(4);
                    #[cfg(feature = "fuzzing")]
                    crate::fuzzing::capture(api, pending.version, &body);
                    return Ok(body.freeze());
                }
                size - have
            };
            let Some(stream) = self.connection.stream.as_mut() else {
                return Err(
                    io("the connection is closed (an earlier request on it failed)".into()),
                );
            };
            // Memory follows the bytes that arrive, not the prefix (as on a `Connection`).
            self.received.reserve(want.min(FIRST_READ_BYTES));
            // Exactly what this response still lacks: never into the next one.
            let read = stream
                .read_buf(&mut (&mut self.received).limit(want))
                .await
                .map_err(|e| io(format!("read: {e}")))?;
            if read == 0 {
                return Err(io("read: the broker closed the connection".into()));
            }
        }
    }
}

/// The size a response's prefix announces, checked: at least a header's 4 bytes, at most
/// `limit` (the bound for `api`'s responses).
///
/// # Errors
///
/// Why the prefix is refused.
pub(crate) fn response_size(prefix: i32, limit: usize, api: &str) -> Result<usize, String> {
    let size = usize::try_from(prefix)
        .ok()
        .filter(|s| *s >= 4)
        .ok_or_else(|| format!("invalid response size {prefix}"))?;
    if size > limit {
        return Err(format!(
            "the response announces {size} bytes, over the bound of {limit} for {api} responses"
        ));
    }
    Ok(size)
}

/// Decodes a response frame (what follows its size prefix): the header (checking the
/// correlation id), then the body in `version`, once its shape is checked.
///
/// # Errors
///
/// Why it cannot be decoded.
pub(crate) fn decode_frame<R: Api>(
    mut body: Bytes,
    version: i16,
    correlation: i32,
) -> Result<R::Response, String> {
    let header = ResponseHeader::decode(&mut body, R::Response::header_version(version))
        .map_err(|e| format!("cannot decode the response header: {e}"))?;
    if header.correlation_id != correlation {
        return Err(format!(
            "correlation id {} does not match the request's {correlation}",
            header.correlation_id
        ));
    }
    schema::check(R::SHAPE, version, &body).map_err(|e| format!("malformed response: {e}"))?;
    R::Response::decode(&mut body, version).map_err(|e| format!("cannot decode the response: {e}"))
}
