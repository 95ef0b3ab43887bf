//! The configuration a command connects with: the library's `KafkaConfig` file format (JSON,
//! `--config`), then the environment, then flags, each overriding the one before.
//!
//! Owns: [`Connection`] (the global flags and their environment variables) and
//! [`Connection::config`].
//!
//! Invariant: secrets come only from the environment or a file: a SASL password is never a flag
//! (`--sasl-password-env` names the variable that holds it, and the configuration file may name
//! one with `security.sasl.password_env`); the configuration is validated here, so a bad one
//! fails before any connection with the field it names.

use std::path::PathBuf;
use std::time::Duration;

use bus_kafka::{KafkaConfig, security::SaslMechanism, security::SecurityProtocol};
use clap::Args;

use crate::{Exit, Failure};

/// Where and how to connect (global flags; each has an environment variable).
#[derive(Debug, Args)]
pub(crate) struct Connection {
    /// The configuration file (the library's `KafkaConfig` as JSON).
    #[arg(long, global = true, env = "BUSCTL_CONFIG")]
    config: Option<PathBuf>,
    /// The bootstrap brokers (`host:port,host:port`), over the file's.
    #[arg(long, global = true, env = "BUSCTL_BOOTSTRAP")]
    bootstrap: Option<String>,
    /// The bound on each request and connection attempt (`5s`, `500ms`), over the file's.
    #[arg(long, global = true, env = "BUSCTL_REQUEST_TIMEOUT", value_parser = humantime_duration)]
    request_timeout: Option<Duration>,
    /// `security.protocol`: plaintext, ssl, sasl_plaintext or sasl_ssl.
    #[arg(long, global = true, env = "BUSCTL_SECURITY_PROTOCOL")]
    security_protocol: Option<String>,
    /// The CA certificate (PEM) to trust, over the platform's roots.
    #[arg(long, global = true, env = "BUSCTL_SSL_CA_LOCATION")]
    ssl_ca_location: Option<PathBuf>,
    /// `sasl.mechanism`: PLAIN, SCRAM-SHA-256, SCRAM-SHA-512.
    #[arg(long, global = true, env = "BUSCTL_SASL_MECHANISM")]
    sasl_mechanism: Option<String>,
    /// `sasl.username`.
    #[arg(long, global = true, env = "BUSCTL_SASL_USERNAME")]
    sasl_username: Option<String>,
    /// The environment variable holding the SASL password (never the password itself).
    #[arg(long, global = true, env = "BUSCTL_SASL_PASSWORD_ENV")]
    sasl_password_env: Option<String>,
}

fn humantime_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text).map_err(|e| format!("`{text}`: {e} (like 5s or 500ms)"))
}

fn usage(field: &str, reason: impl std::fmt::Display) -> Failure {
    Failure::new(Exit::Usage, format!("invalid configuration: `{field}`: {reason}"))
}

impl Connection {
    /// The configuration: the file's (or the defaults), then the environment and the flags.
    pub(crate) fn config(&self) -> Result<KafkaConfig, Failure> {
        let mut config = match &self.config {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    Failure::new(Exit::Usage, format!("cannot read {}: {e}", path.display()))
                })?;
                serde_json::from_str::<KafkaConfig>(&text).map_err(|e| {
                    Failure::new(
                        Exit::Usage,
                        format!("invalid configuration in {}: {e}", path.display()),
                    )
                })?
            }
            None => KafkaConfig::default(),
        };
        if let Some(bootstrap) = &self.bootstrap {
            config.bootstrap = KafkaConfig::new(bootstrap).bootstrap;
        }
        if config.bootstrap.is_empty() {
            config.bootstrap = vec!["127.0.0.1:9092".to_owned()];
        }
        if let Some(timeout) = self.request_timeout {
            config.request_timeout = timeout;
        }
        if let Some(protocol) = &self.security_protocol {
            config.security.protocol = serde_json::from_value::<SecurityProtocol>(
                serde_json::Value::String(protocol.clone()),
            )
            .map_err(|e| usage("security.protocol", e))?;
        }
        if let Some(ca) = &self.ssl_ca_location {
            config.security.tls.ca_location = Some(ca.clone());
        }
        if let Some(mechanism) = &self.sasl_mechanism {
            config.security.sasl.mechanism = Some(
                serde_json::from_value::<SaslMechanism>(serde_json::Value::String(
                    mechanism.clone(),
                ))
                .map_err(|e| usage("security.sasl.mechanism", e))?,
            );
        }
        if let Some(username) = &self.sasl_username {
            config.security.sasl.username = Some(username.clone());
        }
        if let Some(variable) = &self.sasl_password_env {
            config.security.sasl.password_env = Some(variable.clone());
            config.security.sasl.password = None;
        }
        config
            .validate()
            .map_err(|e| Failure::new(Exit::Usage, format!("invalid configuration: {e}")))?;
        Ok(config)
    }
}
