//! How the crate opens a connection to a broker.
//!
//! Owns: `Connector`, built once per bus (and per `Admin`) from the configuration, and the one
//! way any part of the crate (the producer's loops, the readers, a member's coordinator links,
//! the cluster client) opens a [`Connection`]: to a named broker, or to the first bootstrap
//! broker that answers. It holds the bus's [`Security`] (TLS configuration, SASL credentials)
//! and the brokers whose last opening was refused by TLS or SASL.
//!
//! Invariants:
//! - Every connection is opened with the configured client id, secured as `security` says, and
//!   bounded by `request_timeout` (connecting and the handshakes that follow it).
//! - Whatever a connection needs that is costly to build (and may fail) is built here once, in
//!   `Connector::new`, never per connection: the TLS configuration and trust store, the SASL
//!   credentials (the password read from its environment variable).
//! - A broker that refused a connection's TLS handshake or SASL authentication (a
//!   configuration that does not fit it: it fails the same way again) is not tried again
//!   before a backoff (100 ms doubling to 10 s, [`SECURITY_BACKOFF`]): within it, `open`
//!   returns that refusal at once. So however many parts of the bus want a connection, a
//!   refusing broker sees at most one attempt per backoff, and nothing storms it. One attempt
//!   is let through when the backoff ends; a success forgets the refusal.
//! - While a refusal is remembered, [`Connector::trouble`] names it (the bus's health).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bus_core::errors::ConfigError;
use bus_supervisor::Backoff;
use parking_lot::Mutex;
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::config::kafka::KafkaConfig;
use crate::connection::{Authenticate, Connection, RequestError};
use crate::security::Security;
use crate::transport::Transport;

/// The delays before another attempt at a broker that refused TLS or SASL.
pub(crate) const SECURITY_BACKOFF: Backoff =
    Backoff { initial: Duration::from_millis(100), max: Duration::from_secs(10), multiplier: 2.0 };

/// A broker's last refusal.
#[derive(Debug)]
struct Refusal {
    error: RequestError,
    /// Refusals in a row.
    count: u32,
    /// No attempt before this.
    retry_at: Instant,
}

/// Opens connections to the cluster's brokers, as the configuration says.
#[derive(Debug)]
pub(crate) struct Connector {
    config: Arc<KafkaConfig>,
    security: Security,
    refusals: Mutex<HashMap<String, Refusal>>,
}

impl Connector {
    /// A connector for `config` (already validated): builds the TLS configuration and resolves
    /// the SASL credentials.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the `security` field that cannot be used (an unreadable PEM
    /// file, an unset password variable).
    pub(crate) fn new(config: Arc<KafkaConfig>) -> Result<Connector, ConfigError> {
        let security = Security::new(&config.security)?;
        Ok(Connector { config, security, refusals: Mutex::new(HashMap::new()) })
    }

    /// The bootstrap brokers, `host:port`.
    pub(crate) fn bootstrap(&self) -> &[String] {
        &self.config.bootstrap
    }

    /// The bound of each request (and of opening a connection).
    pub(crate) fn timeout(&self) -> Duration {
        self.config.request_timeout
    }

    /// A connection to `broker` (`host:port`), its versions negotiated, authenticated.
    ///
    /// # Errors
    ///
    /// As for [`open_secured`]; the broker's last TLS or SASL refusal, at once, while its
    /// backoff lasts.
    pub(crate) async fn open(&self, broker: &str) -> Result<Connection, RequestError> {
        self.admit(broker)?;
        let opened = open_secured(
            broker,
            &self.security,
            &self.config.client_id,
            self.config.request_timeout,
        )
        .await;
        match &opened {
            Ok(_) => {
                let mut refusals = self.refusals.lock();
                if !refusals.is_empty() && refusals.remove(broker).is_some() {
                    tracing::info!(%broker, "connected again after refusals");
                }
            }
            Err(error) if error.is_security() => self.refused(broker, error),
            Err(_) => {}
        }
        opened
    }

    /// The remembered refusal of `broker` while its backoff lasts; when it has ended, lets
    /// this attempt through and holds others back for the next backoff.
    fn admit(&self, broker: &str) -> Result<(), RequestError> {
        let mut refusals = self.refusals.lock();
        let Some(refusal) = refusals.get_mut(broker) else { return Ok(()) };
        let now = Instant::now();
        if now < refusal.retry_at {
            return Err(refusal.error.clone());
        }
        refusal.retry_at = now + SECURITY_BACKOFF.delay(refusal.count);
        Ok(())
    }

    fn refused(&self, broker: &str, error: &RequestError) {
        let mut refusals = self.refusals.lock();
        let now = Instant::now();
        let refusal = refusals.entry(broker.to_owned()).or_insert_with(|| Refusal {
            error: error.clone(),
            count: 0,
            retry_at: now,
        });
        refusal.error = error.clone();
        refusal.count = refusal.count.saturating_add(1);
        let delay = SECURITY_BACKOFF.delay(refusal.count.saturating_sub(1));
        refusal.retry_at = now + delay;
        tracing::warn!(
            %broker, %error, attempts = refusal.count, retry_in = ?delay,
            "the broker refused the connection's security"
        );
    }

    /// The latest remembered refusal, for the bus's health: `None` when every broker tried
    /// last accepted the connection's security.
    pub(crate) fn trouble(&self) -> Option<String> {
        let refusals = self.refusals.lock();
        let (count, latest) = (refusals.len(), refusals.values().max_by_key(|r| r.retry_at)?);
        let others = match count - 1 {
            0 => String::new(),
            n => format!(" (and {n} more broker(s))"),
        };
        Some(format!("{} ({} attempt(s) in a row){others}", latest.error, latest.count))
    }
}

/// Opens a connection to `broker` (`host:port`): TCP, the TLS handshake when `security`
/// has TLS, ApiVersions, then SASL when `security` has it, all within `timeout`.
///
/// # Errors
///
/// [`RequestError::Connect`] when the TCP connection fails or times out (or the broker
/// closes it during the TLS handshake); [`RequestError::Tls`] when the handshake is
/// refused; [`RequestError::Auth`] when authentication is; the errors of
/// [`Connection::send`] for the ApiVersions and SASL exchanges.
async fn open_secured(
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
            return Err(RequestError::Connect { broker: broker.to_owned(), reason: e.to_string() });
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
        Some(tls) => match tokio::time::timeout_at(deadline, tls.connect(broker, stream)).await {
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
    let mut connection = Connection::new(broker, client_id, stream);
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
        connection
            .authenticate(Arc::clone(authenticator) as Arc<dyn Authenticate>, deadline)
            .await?;
    }
    Ok(connection)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn refusals_back_off_from_100_ms_to_10_s() {
        let delays: Vec<Duration> = (0..10).map(|n| SECURITY_BACKOFF.delay(n)).collect();
        assert_eq!(delays[0], Duration::from_millis(100));
        assert_eq!(delays[1], Duration::from_millis(200));
        assert_eq!(delays[9], Duration::from_secs(10));
    }

    #[tokio::test(start_paused = true)]
    async fn a_refusing_broker_is_tried_once_per_backoff_and_named_by_trouble() {
        let connector = Connector::new(Arc::new(KafkaConfig::new("127.0.0.1:1"))).unwrap();
        let refusal = RequestError::Auth {
            broker: "b:1".into(),
            mechanism: "SCRAM-SHA-256",
            reason: "SASL_AUTHENTICATION_FAILED".into(),
        };
        assert!(connector.trouble().is_none());
        connector.admit("b:1").unwrap();
        connector.refused("b:1", &refusal);
        // Within the backoff: the refusal at once.
        assert_eq!(connector.admit("b:1").unwrap_err(), refusal);
        assert!(connector.trouble().unwrap().contains("SCRAM-SHA-256"));
        // Other brokers are not held back.
        connector.admit("c:1").unwrap();
        tokio::time::advance(Duration::from_millis(100)).await;
        // One attempt through, the next held back.
        connector.admit("b:1").unwrap();
        assert!(connector.admit("b:1").is_err());
        connector.refused("b:1", &refusal);
        tokio::time::advance(Duration::from_millis(150)).await;
        assert!(connector.admit("b:1").is_err(), "the second backoff is 200 ms");
        tokio::time::advance(Duration::from_millis(50)).await;
        connector.admit("b:1").unwrap();
    }
}
