//! How the crate opens a connection to a broker.
//!
//! Owns: `Connector`, built once per bus (and per `Admin`) from the configuration, and the one
//! way any part of the crate (the producer's loops, the readers, a member's coordinator links,
//! the cluster client) opens a [`Connection`]: to a named broker, or to the first bootstrap
//! broker that answers.
//!
//! Invariants:
//! - Every connection is opened with the configured client id and bounded by
//!   `request_timeout` (connecting and the handshakes that follow it).
//! - Whatever a connection needs that is costly to build (and may fail) is built here once, in
//!   `Connector::new`, never per connection.

use std::sync::Arc;
use std::time::Duration;

use crate::config::KafkaConfig;
use crate::connection::{Connection, RequestError};

/// Opens connections to the cluster's brokers, as the configuration says.
#[derive(Debug)]
pub(crate) struct Connector {
    config: Arc<KafkaConfig>,
}

impl Connector {
    /// A connector for `config` (already validated).
    pub(crate) fn new(config: Arc<KafkaConfig>) -> Connector {
        Connector { config }
    }

    /// The bootstrap brokers, `host:port`.
    pub(crate) fn bootstrap(&self) -> &[String] {
        &self.config.bootstrap
    }

    /// The bound of each request (and of opening a connection).
    pub(crate) fn timeout(&self) -> Duration {
        self.config.request_timeout
    }

    /// A connection to `broker` (`host:port`), its versions negotiated.
    ///
    /// # Errors
    ///
    /// As for [`Connection::open`].
    pub(crate) async fn open(&self, broker: &str) -> Result<Connection, RequestError> {
        Connection::open(broker, &self.config.client_id, self.config.request_timeout).await
    }
}
