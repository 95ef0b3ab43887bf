//! [`Pipeline`]: a [`Connection`] carrying several requests at once, their responses read in
//! order, cancel-safely (the producer's Produce requests). Its invariants are on the type.

use std::collections::VecDeque;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

use super::Connection;
use super::api::Api;
use super::error::RequestError;
use super::frame::{FIRST_READ_BYTES, response_size};

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
        let deadline = Instant::now() + timeout;
        if self.pending.is_empty() {
            self.connection.reauthenticate_if_due(timeout).await?;
        }
        // What the re-authentication left of the timeout.
        let timeout = deadline.saturating_duration_since(Instant::now());
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
