//! Our own Kafka connection, shared by both planes: framing, correlation ids, request and
//! response headers, ApiVersions negotiation, SASL re-authentication, and per-request
//! timeouts, on the `kafka-protocol` crate's message types. The producer's partition loops
//! (Metadata, Produce), the partition readers of `fetch` (Metadata, ListOffsets, Fetch), the
//! group plane's coordinator links (the group APIs) and the cluster client (Metadata,
//! CreateTopics) all use it; the `connector` opens it (TCP, TLS, ApiVersions, SASL).
//!
//! Owns: [`Connection`] (one stream to one broker, plain or TLS ([`Transport`]), one request at
//! a time), and one file per part: `api` (the [`Api`] trait, every request type this crate
//! sends with the versions it implements, its response's shape and bound), `error`
//! ([`RequestError`], naming the broker and the API, and [`code_name`]), `frame` (a response
//! frame's size bound and decoding), `session` (the SASL session: [`Authenticate`], implemented
//! by `security`, and re-authentication), `pipeline` ([`Pipeline`], a connection carrying
//! several requests at once, answered in order, read cancel-safely: the producer's Produce
//! requests). Nothing here knows TLS or SASL beyond [`Transport`] and [`Authenticate`].
//!
//! Invariants:
//! - One request is in flight at a time; its response is matched by correlation id. (A
//!   [`Pipeline`] has several, answered in order; its own invariants are on the type.)
//! - A request that fails in any way (I/O, timeout, undecodable or mismatched response) or whose
//!   future is dropped before the response is read leaves the connection *poisoned*: the stream
//!   is closed and never read or written again (a half-written request or half-read response
//!   would desynchronise the framing). Callers open a new connection.
//! - Every exchange is bounded by the caller's timeout; opening (TCP, the TLS handshake,
//!   ApiVersions, SASL) is bounded as a whole by the connector's `request_timeout`. Nothing
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

pub(crate) mod api;
mod error;
pub(crate) mod frame;
mod pipeline;
mod session;

use std::collections::HashMap;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, ApiVersionsResponse, RequestHeader, ResponseHeader,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub(crate) use api::Api;
pub(crate) use error::{RequestError, code_name};
pub(crate) use frame::{decode_frame, response_size};
pub(crate) use pipeline::Pipeline;
pub(crate) use session::{Authenticate, Authentication};

use crate::schema;
use crate::transport::Transport;
use frame::FIRST_READ_BYTES;
use session::Session;

/// The ApiVersions version tried first (the broker answers in v0 when it does not support it).
const API_VERSIONS_VERSION: i16 = 3;

/// UNSUPPORTED_VERSION.
const UNSUPPORTED_VERSION: i16 = 35;

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

impl Connection {
    /// A connection to `broker` on `stream` (connected, and secured when TLS is configured),
    /// before ApiVersions: [`Connection::negotiate`] comes next (the connector opens it).
    pub(crate) fn new(broker: &str, client_id: &str, stream: Transport) -> Connection {
        Connection {
            broker: broker.to_owned(),
            client_id: StrBytes::from_string(client_id.to_owned()),
            stream: Some(stream),
            session: None,
            in_flight: false,
            correlation: 0,
            versions: HashMap::new(),
        }
    }

    /// The broker's address.
    pub(crate) fn broker(&self) -> &str {
        &self.broker
    }

    /// Whether the connection can still be used (not poisoned or closed).
    pub(crate) fn is_usable(&self) -> bool {
        self.stream.is_some() && !self.in_flight
    }

    /// The versions the broker offers, by API key (from its ApiVersions answer).
    pub(crate) fn versions(&self) -> &HashMap<i16, (i16, i16)> {
        &self.versions
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

    /// Sends `request` in `version` and waits up to `timeout` for its response; a
    /// re-authentication due first (KIP-368) is part of that time, not added to it.
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
        let deadline = tokio::time::Instant::now() + timeout;
        self.reauthenticate_if_due(timeout).await?;
        self.request(request, version, left(deadline)).await
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
        let deadline = tokio::time::Instant::now() + timeout;
        self.reauthenticate_if_due(timeout).await?;
        let frame = self.frame(request, version)?;
        let correlation = self.correlation;
        let limit = request.response_limit();
        let body = self.round_trip(R::NAME, version, frame, left(deadline), limit, buffer).await?;
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
    /// in the version asked (a whole frame was read: the stream is still in step), all of it
    /// within `timeout` (each round gets what is left). On any error the connection is dropped
    /// by the connector, never handed out.
    pub(crate) async fn negotiate(&mut self, timeout: Duration) -> Result<(), RequestError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut request = ApiVersionsRequest::default();
        request.client_software_name = StrBytes::from_static_str("bus-kafka");
        request.client_software_version = StrBytes::from_static_str(env!("CARGO_PKG_VERSION"));
        let mut version = API_VERSIONS_VERSION;
        for _ in 0..3 {
            let frame = self.frame(&request, version)?;
            let correlation = self.correlation;
            let limit = request.response_limit();
            let mut body = self
                .round_trip("ApiVersions", version, frame, left(deadline), limit, BytesMut::new())
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

/// What is left of the time until `deadline` (zero once past).
pub(crate) fn left(deadline: tokio::time::Instant) -> Duration {
    deadline.saturating_duration_since(tokio::time::Instant::now())
}
