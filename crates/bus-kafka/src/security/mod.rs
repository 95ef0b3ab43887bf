//! Security on every connection the bus opens: TLS, SASL, and the configuration of both.
//!
//! Owns: the `security` configuration section (`config`), [`Secret`] (`secret`), the rustls
//! client side (`tls`), SASL authentication and re-authentication (`sasl`), SCRAM (`scram`),
//! OAUTHBEARER's tokens (`oauth`), and `Security`: what one bus's connector holds, built once
//! from the configuration.
//!
//! Invariants: everything here that reads a file or the environment, or builds TLS state, runs
//! once per bus in `Security::new` (when the bus connects), never per connection; secrets are
//! [`Secret`]s from the configuration to the wire and appear in no log, error or `Debug`.

mod config;
mod oauth;
mod sasl;
mod scram;
mod secret;
mod tls;

use std::sync::Arc;

use bus_core::errors::ConfigError;

pub use config::{SaslConfig, SaslMechanism, SecurityConfig, SecurityProtocol, TlsConfig};
pub use oauth::{OAuthBearerToken, TokenError, TokenFuture, TokenProvider};
pub(crate) use sasl::Authenticator;
pub use secret::Secret;
pub(crate) use tls::Tls;

/// How one bus secures its connections: TLS (when the protocol uses it) and SASL (when the
/// protocol uses it).
#[derive(Debug, Clone, Default)]
pub(crate) struct Security {
    /// TLS for each connection.
    pub(crate) tls: Option<Tls>,
    /// SASL authentication after each connection's ApiVersions.
    pub(crate) sasl: Option<Arc<Authenticator>>,
}

impl Security {
    /// Builds what `config` (validated) asks for: reads the PEM files, the trust store, the
    /// password's environment variable.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the field that cannot be used.
    pub(crate) fn new(config: &SecurityConfig) -> Result<Security, ConfigError> {
        config.validate()?;
        let tls = if config.protocol.uses_tls() { Some(Tls::new(&config.tls)?) } else { None };
        let sasl = if config.protocol.uses_sasl() {
            Some(Arc::new(Authenticator::new(&config.sasl)?))
        } else {
            None
        };
        Ok(Security { tls, sasl })
    }
}
