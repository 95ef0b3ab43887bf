//! SASL authentication of a connection (KIP-43): SaslHandshake v1, then SaslAuthenticate
//! carrying the mechanism's messages, and the session lifetime the broker answers with
//! (KIP-368), after which the connection re-authenticates.
//!
//! Owns: [`Authenticator`] (the mechanism and the credentials, resolved once per bus from
//! `security.sasl`: the password read from its environment variable, the OAUTHBEARER token
//! source) and [`Authenticator::authenticate`] (one authentication on one connection, also as
//! the connection's [`Authenticate`], which re-authenticates when the session is due).
//!
//! Invariants:
//! - Every failure of the mechanism or refusal by the broker is [`RequestError::Auth`], naming
//!   the broker and the mechanism, and poisons the connection; a transport failure during the
//!   exchange keeps its own kind (retriable). No message carries a password or token.
//! - Each request of the exchange is bounded by what is left until the caller's deadline.

use std::time::Duration;

use bus_core::errors::ConfigError;
use bytes::Bytes;
use kafka_protocol::messages::{SaslAuthenticateRequest, SaslHandshakeRequest};
use kafka_protocol::protocol::StrBytes;
use tokio::time::Instant;

use super::config::{SaslConfig, SaslMechanism};
use super::oauth::{self, TokenSource};
use super::scram::{Hash, Scram};
use super::secret::Secret;
use crate::connection::{Authenticate, Authentication, Connection, RequestError, code_name, left};

/// UNSUPPORTED_SASL_MECHANISM.
const UNSUPPORTED_SASL_MECHANISM: i16 = 33;
/// ILLEGAL_SASL_STATE.
const ILLEGAL_SASL_STATE: i16 = 34;

/// The credentials of a mechanism.
enum Credentials {
    Plain { username: String, password: Secret },
    Scram(Scram),
    OAuth(TokenSource),
}

/// How the bus's connections authenticate.
pub(crate) struct Authenticator {
    mechanism: SaslMechanism,
    credentials: Credentials,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator").field("mechanism", &self.mechanism).finish_non_exhaustive()
    }
}

impl Authenticator {
    /// Resolves `config` (validated): reads the password's environment variable when one is
    /// named.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the field: a missing mechanism, username or password, or a
    /// password variable that is not set.
    pub(crate) fn new(config: &SaslConfig) -> Result<Authenticator, ConfigError> {
        let mechanism = config
            .mechanism
            .ok_or_else(|| ConfigError::new("security.sasl.mechanism", "required"))?;
        let credentials = match mechanism {
            SaslMechanism::OAuthBearer => {
                let provider = config.token_provider.clone().ok_or_else(|| {
                    ConfigError::new("security.sasl.token_provider", "OAUTHBEARER needs one")
                })?;
                Credentials::OAuth(TokenSource::new(provider))
            }
            SaslMechanism::Plain | SaslMechanism::ScramSha256 | SaslMechanism::ScramSha512 => {
                let username =
                    config.username.clone().filter(|u| !u.is_empty()).ok_or_else(|| {
                        ConfigError::new("security.sasl.username", format!("{mechanism} needs one"))
                    })?;
                let password = password(config, mechanism)?;
                match mechanism {
                    SaslMechanism::ScramSha256 => {
                        Credentials::Scram(Scram::new(Hash::Sha256, username, password))
                    }
                    SaslMechanism::ScramSha512 => {
                        Credentials::Scram(Scram::new(Hash::Sha512, username, password))
                    }
                    _ => Credentials::Plain { username, password },
                }
            }
        };
        Ok(Authenticator { mechanism, credentials })
    }

    /// Authenticates `connection` (its versions negotiated), each request bounded by what is
    /// left until `deadline`. Returns the session lifetime the broker set, if any.
    ///
    /// # Errors
    ///
    /// [`RequestError::Auth`] when the broker refuses or the mechanism fails; the transport's
    /// errors otherwise. Either way the connection is poisoned.
    pub(crate) async fn authenticate(
        &self,
        connection: &mut Connection,
        deadline: Instant,
    ) -> Result<Option<Duration>, RequestError> {
        let result = self.exchange(connection, deadline).await;
        if result.is_err() {
            connection.close();
        }
        result
    }

    async fn exchange(
        &self,
        connection: &mut Connection,
        deadline: Instant,
    ) -> Result<Option<Duration>, RequestError> {
        let broker = connection.broker().to_owned();
        let mechanism = self.mechanism.name();
        let refused =
            |reason: String| RequestError::Auth { broker: broker.clone(), mechanism, reason };
        let handshake_version = connection
            .version::<SaslHandshakeRequest>()
            .map_err(|e| refused(format!("{e} (is this listener SASL?)")))?;
        let mut handshake = SaslHandshakeRequest::default();
        handshake.mechanism = StrBytes::from_static_str(mechanism);
        let answer = connection.request(&handshake, handshake_version, left(deadline)).await?;
        match answer.error_code {
            0 => {}
            UNSUPPORTED_SASL_MECHANISM => {
                let offered: Vec<&str> = answer.mechanisms.iter().map(|m| m.as_str()).collect();
                return Err(refused(format!(
                    "the broker does not offer {mechanism} (it offers: {})",
                    if offered.is_empty() { "none".to_owned() } else { offered.join(", ") }
                )));
            }
            ILLEGAL_SASL_STATE => {
                return Err(refused(format!(
                    "{}: the listener does not use SASL (set security.protocol to plaintext or \
                     ssl)",
                    code_name(answer.error_code)
                )));
            }
            code => return Err(refused(format!("SaslHandshake: {}", code_name(code)))),
        }
        let version =
            connection.version::<SaslAuthenticateRequest>().map_err(|e| refused(e.to_string()))?;
        let mut step = Step { connection, version, deadline, refused: &refused, lifetime: None };
        match &self.credentials {
            Credentials::Plain { username, password } => {
                let mut message = Vec::with_capacity(username.len() + password.expose().len() + 2);
                message.push(0);
                message.extend_from_slice(username.as_bytes());
                message.push(0);
                message.extend_from_slice(password.expose().as_bytes());
                step.send(message).await?;
            }
            Credentials::Scram(scram) => {
                let mut exchange = scram.start().map_err(&refused)?;
                let server_first = step.send(exchange.client_first()).await?;
                let client_final = exchange.client_final(&server_first).map_err(&refused)?;
                let server_final = step.send(client_final).await?;
                exchange.verify(&server_final).map_err(&refused)?;
            }
            Credentials::OAuth(source) => {
                let token = source.token(deadline).await.map_err(&refused)?;
                let challenge = step.send(oauth::initial_response(&token)).await?;
                if !challenge.is_empty() {
                    // RFC 7628 3.2.2: an error challenge; the client answers with a lone 0x01
                    // and the server fails the exchange.
                    let error = String::from_utf8_lossy(&challenge).into_owned();
                    let _ = step.send(vec![0x01]).await;
                    return Err(refused(format!("the broker refused the token: {error}")));
                }
            }
        }
        Ok(step.lifetime)
    }
}

/// The password: the configured one, or the named environment variable's value.
fn password(config: &SaslConfig, mechanism: SaslMechanism) -> Result<Secret, ConfigError> {
    if let Some(password) = &config.password {
        return Ok(password.clone());
    }
    let Some(variable) = &config.password_env else {
        return Err(ConfigError::new(
            "security.sasl.password",
            format!("{mechanism} needs a password (or security.sasl.password_env)"),
        ));
    };
    match std::env::var(variable) {
        Ok(value) if !value.is_empty() => Ok(Secret::new(value)),
        Ok(_) => Err(ConfigError::new(
            "security.sasl.password_env",
            format!("the environment variable `{variable}` is empty"),
        )),
        Err(_) => Err(ConfigError::new(
            "security.sasl.password_env",
            format!("the environment variable `{variable}` is not set (or not Unicode)"),
        )),
    }
}

impl Authenticate for Authenticator {
    fn mechanism_name(&self) -> String {
        self.mechanism.to_string()
    }

    fn authenticate<'a>(
        &'a self,
        connection: &'a mut Connection,
        deadline: Instant,
    ) -> Authentication<'a> {
        Box::pin(Authenticator::authenticate(self, connection, deadline))
    }
}

/// The SaslAuthenticate round trips of one exchange.
struct Step<'a, F> {
    connection: &'a mut Connection,
    version: i16,
    deadline: Instant,
    refused: &'a F,
    lifetime: Option<Duration>,
}

impl<F: Fn(String) -> RequestError> Step<'_, F> {
    /// Sends `message`, returns the broker's answer; a refusal is an error.
    async fn send(&mut self, message: Vec<u8>) -> Result<Bytes, RequestError> {
        let mut request = SaslAuthenticateRequest::default();
        request.auth_bytes = Bytes::from(message);
        let answer = self.connection.request(&request, self.version, left(self.deadline)).await?;
        if answer.error_code != 0 {
            let detail = answer
                .error_message
                .as_ref()
                .map(|m| format!(": {}", m.as_str()))
                .unwrap_or_default();
            return Err((self.refused)(format!("{}{detail}", code_name(answer.error_code))));
        }
        if answer.session_lifetime_ms > 0 {
            self.lifetime =
                u64::try_from(answer.session_lifetime_ms).ok().map(Duration::from_millis);
        }
        Ok(answer.auth_bytes)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_password_comes_from_the_named_variable() {
        let config = |variable: &str| SaslConfig {
            mechanism: Some(SaslMechanism::ScramSha256),
            username: Some("u".into()),
            password_env: Some(variable.into()),
            ..SaslConfig::default()
        };
        // PATH is set in any test environment; a random name is not.
        let path = std::env::var("PATH").unwrap();
        assert_eq!(password(&config("PATH"), SaslMechanism::ScramSha256).unwrap().expose(), path);
        let missing = password(&config("BUS_KAFKA_NO_SUCH_VARIABLE_9f3"), SaslMechanism::Plain);
        let error = missing.unwrap_err();
        assert_eq!(error.field, "security.sasl.password_env");
        assert!(error.reason.contains("BUS_KAFKA_NO_SUCH_VARIABLE_9f3"), "{error}");
        assert!(format!("{:?}", Authenticator::new(&config("PATH")).unwrap()).contains("Scram"));
    }
}
