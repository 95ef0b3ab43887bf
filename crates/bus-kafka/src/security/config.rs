//! The `security` section of the configuration, with Kafka's own names, and its validation.
//!
//! Owns: [`SecurityConfig`] (`security.protocol`, `security.tls`, `security.sasl`),
//! [`SecurityProtocol`], [`TlsConfig`], [`SaslConfig`] and [`SaslMechanism`].
//!
//! Names follow librdkafka's one to one: `security.protocol` is `security.protocol`; an
//! `ssl.*` setting is `security.tls.*` and a `sasl.*` setting `security.sasl.*`, the dots after
//! the prefix becoming underscores (`ssl.ca.location` is `security.tls.ca_location`).
//!
//! Invariants: [`SecurityConfig::validate`] checks every combination without touching the file
//! system or the environment (the files and the password's variable are read when the bus
//! connects, by the crate's `Connector`); each error names the field.

use std::path::PathBuf;

use bus_core::errors::ConfigError;
use serde::{Deserialize, Serialize};

use super::oauth::TokenProvider;
use super::secret::Secret;

/// `security.protocol`: how connections to the brokers are secured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum SecurityProtocol {
    /// Plain TCP, no authentication (`plaintext`, also read as `PLAINTEXT`).
    #[default]
    #[serde(rename = "plaintext", alias = "PLAINTEXT")]
    Plaintext,
    /// TLS, no SASL (`ssl`, also `SSL`).
    #[serde(rename = "ssl", alias = "SSL")]
    Ssl,
    /// SASL over plain TCP (`sasl_plaintext`, also `SASL_PLAINTEXT`).
    #[serde(rename = "sasl_plaintext", alias = "SASL_PLAINTEXT")]
    SaslPlaintext,
    /// SASL over TLS (`sasl_ssl`, also `SASL_SSL`).
    #[serde(rename = "sasl_ssl", alias = "SASL_SSL")]
    SaslSsl,
}

impl SecurityProtocol {
    /// Whether connections use TLS.
    pub fn uses_tls(self) -> bool {
        matches!(self, SecurityProtocol::Ssl | SecurityProtocol::SaslSsl)
    }

    /// Whether connections authenticate with SASL.
    pub fn uses_sasl(self) -> bool {
        matches!(self, SecurityProtocol::SaslPlaintext | SecurityProtocol::SaslSsl)
    }

    /// The name as written in the configuration.
    pub fn name(self) -> &'static str {
        match self {
            SecurityProtocol::Plaintext => "plaintext",
            SecurityProtocol::Ssl => "ssl",
            SecurityProtocol::SaslPlaintext => "sasl_plaintext",
            SecurityProtocol::SaslSsl => "sasl_ssl",
        }
    }
}

/// `security.tls`: TLS settings (librdkafka's `ssl.*`), used when `security.protocol` is `ssl`
/// or `sasl_ssl`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// A PEM file of the certificate authorities to trust (`ssl.ca.location`). When unset, the
    /// system's trust store is used.
    pub ca_location: Option<PathBuf>,
    /// The client's certificate chain, PEM, for brokers that ask for one (mutual TLS;
    /// `ssl.certificate.location`). Needs `key_location`.
    pub certificate_location: Option<PathBuf>,
    /// The client's private key, PEM (PKCS#8, PKCS#1 or SEC1, unencrypted;
    /// `ssl.key.location`). Needs `certificate_location`.
    pub key_location: Option<PathBuf>,
    /// The name the brokers' certificates are checked against, instead of each broker's host
    /// (for brokers reached through an address their certificates do not name).
    pub server_name: Option<String>,
    /// Accept any certificate, unchecked (librdkafka's
    /// `enable.ssl.certificate.verification=false`). For test clusters only: anyone on the path
    /// can read and change the traffic. Logged as a warning when the bus connects.
    pub danger_accept_invalid_certs: bool,
}

/// `security.sasl.mechanism`, with Kafka's names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SaslMechanism {
    /// `PLAIN`: username and password sent as they are (use it over TLS only).
    #[serde(rename = "PLAIN")]
    Plain,
    /// `SCRAM-SHA-256` (RFC 5802, RFC 7677).
    #[serde(rename = "SCRAM-SHA-256")]
    ScramSha256,
    /// `SCRAM-SHA-512`.
    #[serde(rename = "SCRAM-SHA-512")]
    ScramSha512,
    /// `OAUTHBEARER` (RFC 7628): a token from [`SaslConfig::token_provider`].
    #[serde(rename = "OAUTHBEARER")]
    OAuthBearer,
}

impl SaslMechanism {
    /// Kafka's name of the mechanism.
    pub fn name(self) -> &'static str {
        match self {
            SaslMechanism::Plain => "PLAIN",
            SaslMechanism::ScramSha256 => "SCRAM-SHA-256",
            SaslMechanism::ScramSha512 => "SCRAM-SHA-512",
            SaslMechanism::OAuthBearer => "OAUTHBEARER",
        }
    }
}

impl std::fmt::Display for SaslMechanism {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// `security.sasl`: SASL settings (librdkafka's `sasl.*`), used when `security.protocol` is
/// `sasl_plaintext` or `sasl_ssl`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SaslConfig {
    /// The mechanism (`sasl.mechanism`): `PLAIN`, `SCRAM-SHA-256`, `SCRAM-SHA-512` or
    /// `OAUTHBEARER`. Required with a SASL protocol.
    pub mechanism: Option<SaslMechanism>,
    /// The username (`sasl.username`), for PLAIN and SCRAM.
    pub username: Option<String>,
    /// The password (`sasl.password`), for PLAIN and SCRAM; or give `password_env`.
    pub password: Option<Secret>,
    /// The name of an environment variable holding the password, read when the bus connects
    /// (instead of `password`).
    pub password_env: Option<String>,
    /// Where OAUTHBEARER tokens come from (not serialized: set it in code).
    #[serde(skip)]
    pub token_provider: Option<TokenProvider>,
}

/// `security`: how connections are secured (every connection the bus opens: producer,
/// readers, group coordinator and heartbeats, metadata and topic creation).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SecurityConfig {
    /// `security.protocol`.
    pub protocol: SecurityProtocol,
    /// TLS settings (`ssl.*`).
    pub tls: TlsConfig,
    /// SASL settings (`sasl.*`).
    pub sasl: SaslConfig,
}

impl SecurityConfig {
    /// SASL over TLS with a username and password (`PLAIN` or `SCRAM-*`), trusting the
    /// system's roots.
    pub fn sasl_ssl(
        mechanism: SaslMechanism,
        username: impl Into<String>,
        password: impl Into<Secret>,
    ) -> Self {
        SecurityConfig {
            protocol: SecurityProtocol::SaslSsl,
            tls: TlsConfig::default(),
            sasl: SaslConfig {
                mechanism: Some(mechanism),
                username: Some(username.into()),
                password: Some(password.into()),
                ..SaslConfig::default()
            },
        }
    }

    /// The settings in force that weaken security, each named with what it costs: accepting
    /// any broker certificate (which also makes `security.tls.ca_location` moot), and PLAIN or
    /// OAUTHBEARER credentials sent in the clear over `sasl_plaintext`. Empty when none. Shown
    /// in the bus's `health_report()` and by `busctl check`.
    pub fn insecure_settings(&self) -> Vec<String> {
        let mut insecure = Vec::new();
        if self.protocol.uses_tls() && self.tls.danger_accept_invalid_certs {
            let mut text = "security.tls.danger_accept_invalid_certs is on: the brokers' \
                            certificates are not checked, so anyone on the path can read and \
                            change the traffic"
                .to_owned();
            if self.tls.ca_location.is_some() {
                text.push_str(" (security.tls.ca_location is ignored)");
            }
            insecure.push(text);
        }
        if self.protocol.uses_sasl() && !self.protocol.uses_tls() {
            match self.sasl.mechanism {
                Some(SaslMechanism::Plain) => insecure.push(
                    "security.protocol is sasl_plaintext with PLAIN: the password crosses the \
                     network in the clear (use sasl_ssl)"
                        .to_owned(),
                ),
                Some(SaslMechanism::OAuthBearer) => insecure.push(
                    "security.protocol is sasl_plaintext with OAUTHBEARER: the token crosses \
                     the network in the clear (use sasl_ssl)"
                        .to_owned(),
                ),
                _ => {}
            }
        }
        insecure
    }

    /// Checks every field and combination (see the module documentation).
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the first field that is wrong.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let protocol = self.protocol.name();
        let tls = &self.tls;
        if self.protocol.uses_tls() {
            if tls.key_location.is_some() && tls.certificate_location.is_none() {
                return Err(ConfigError::new(
                    "security.tls.key_location",
                    "a client key needs its certificate: set security.tls.certificate_location",
                ));
            }
            if tls.certificate_location.is_some() && tls.key_location.is_none() {
                return Err(ConfigError::new(
                    "security.tls.certificate_location",
                    "a client certificate needs its key: set security.tls.key_location",
                ));
            }
            if let Some(name) = &tls.server_name
                && rustls_pki_types::ServerName::try_from(name.as_str()).is_err()
            {
                return Err(ConfigError::new(
                    "security.tls.server_name",
                    format!("`{name}` is neither a DNS name nor an IP address"),
                ));
            }
        } else if *tls != TlsConfig::default() {
            return Err(ConfigError::new(
                "security.tls",
                format!(
                    "TLS settings are given but security.protocol is {protocol}: use ssl or \
                     sasl_ssl"
                ),
            ));
        }
        let sasl = &self.sasl;
        if !self.protocol.uses_sasl() {
            return if *sasl == SaslConfig::default() {
                Ok(())
            } else {
                Err(ConfigError::new(
                    "security.sasl",
                    format!(
                        "SASL settings are given but security.protocol is {protocol}: use \
                         sasl_plaintext or sasl_ssl"
                    ),
                ))
            };
        }
        let Some(mechanism) = sasl.mechanism else {
            return Err(ConfigError::new(
                "security.sasl.mechanism",
                format!(
                    "required with security.protocol {protocol}: PLAIN, SCRAM-SHA-256, \
                     SCRAM-SHA-512 or OAUTHBEARER"
                ),
            ));
        };
        if mechanism == SaslMechanism::OAuthBearer {
            if sasl.token_provider.is_none() {
                return Err(ConfigError::new(
                    "security.sasl.token_provider",
                    "OAUTHBEARER needs a token provider (set it in code)",
                ));
            }
            let unused = [
                ("security.sasl.username", sasl.username.is_some()),
                ("security.sasl.password", sasl.password.is_some()),
                ("security.sasl.password_env", sasl.password_env.is_some()),
            ];
            if let Some((field, _)) = unused.iter().find(|(_, set)| *set) {
                return Err(ConfigError::new(
                    field,
                    "not used by OAUTHBEARER (its token comes from the token provider)",
                ));
            }
            return Ok(());
        }
        if sasl.token_provider.is_some() {
            return Err(ConfigError::new(
                "security.sasl.token_provider",
                format!("only used by OAUTHBEARER, not {mechanism}"),
            ));
        }
        if sasl.username.as_deref().is_none_or(|u| u.is_empty()) {
            return Err(ConfigError::new(
                "security.sasl.username",
                format!("{mechanism} needs a username"),
            ));
        }
        match (&sasl.password, &sasl.password_env) {
            (None, None) => Err(ConfigError::new(
                "security.sasl.password",
                format!("{mechanism} needs a password (or security.sasl.password_env)"),
            )),
            (Some(_), Some(_)) => Err(ConfigError::new(
                "security.sasl.password_env",
                "give the password or the variable that holds it, not both",
            )),
            (None, Some(variable)) if variable.trim().is_empty() => Err(ConfigError::new(
                "security.sasl.password_env",
                "must name an environment variable",
            )),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn field(config: &SecurityConfig) -> &'static str {
        config.validate().unwrap_err().field
    }

    #[test]
    fn kafka_names_read_in_either_case() {
        let json = r#"{"protocol": "SASL_SSL", "tls": {"ca_location": "/ca.pem"},
            "sasl": {"mechanism": "SCRAM-SHA-512", "username": "u", "password_env": "PW"}}"#;
        let config: SecurityConfig = serde_json::from_str(json).unwrap();
        assert_eq!(config.protocol, SecurityProtocol::SaslSsl);
        assert_eq!(config.sasl.mechanism, Some(SaslMechanism::ScramSha512));
        config.validate().unwrap();
        let lower: SecurityConfig = serde_json::from_str(r#"{"protocol": "ssl"}"#).unwrap();
        assert_eq!(lower.protocol, SecurityProtocol::Ssl);
        assert!(serde_json::from_str::<SecurityConfig>(r#"{"protocol": "tls"}"#).is_err());
    }

    #[test]
    fn settings_that_weaken_security_are_named() {
        let safe = SecurityConfig::sasl_ssl(SaslMechanism::Plain, "u", "p");
        assert!(safe.insecure_settings().is_empty());
        let mut accepting = safe.clone();
        accepting.tls.danger_accept_invalid_certs = true;
        accepting.tls.ca_location = Some("/ca.pem".into());
        let named = accepting.insecure_settings();
        assert!(named.len() == 1 && named[0].contains("ca_location is ignored"), "{named:?}");
        for (mechanism, what) in
            [(SaslMechanism::Plain, "password"), (SaslMechanism::OAuthBearer, "token")]
        {
            let mut clear = safe.clone();
            clear.protocol = SecurityProtocol::SaslPlaintext;
            clear.sasl.mechanism = Some(mechanism);
            let named = clear.insecure_settings();
            assert!(named.len() == 1 && named[0].contains(what), "{named:?}");
        }
        // SCRAM never sends the password, even in the clear.
        let mut scram = safe;
        scram.protocol = SecurityProtocol::SaslPlaintext;
        scram.sasl.mechanism = Some(SaslMechanism::ScramSha512);
        assert!(scram.insecure_settings().is_empty());
    }

    #[test]
    fn bad_combinations_name_the_field() {
        let mut config = SecurityConfig::sasl_ssl(SaslMechanism::ScramSha256, "u", "p");
        config.validate().unwrap();
        config.sasl.password = None;
        assert_eq!(field(&config), "security.sasl.password");
        config.sasl.password_env = Some("PW".into());
        config.validate().unwrap();
        config.sasl.password = Some("p".into());
        assert_eq!(field(&config), "security.sasl.password_env");
        config.sasl.password = None;
        config.sasl.username = None;
        assert_eq!(field(&config), "security.sasl.username");
        config.sasl.mechanism = None;
        assert_eq!(field(&config), "security.sasl.mechanism");

        let mut tls = SecurityConfig { protocol: SecurityProtocol::Ssl, ..Default::default() };
        tls.tls.key_location = Some("/key.pem".into());
        assert_eq!(field(&tls), "security.tls.key_location");
        tls.tls.key_location = None;
        tls.tls.certificate_location = Some("/cert.pem".into());
        assert_eq!(field(&tls), "security.tls.certificate_location");
        tls.tls.certificate_location = None;
        tls.tls.server_name = Some("not a name!".into());
        assert_eq!(field(&tls), "security.tls.server_name");

        let mut plain = SecurityConfig::default();
        plain.validate().unwrap();
        plain.tls.ca_location = Some("/ca.pem".into());
        assert_eq!(field(&plain), "security.tls");
        plain.tls = TlsConfig::default();
        plain.sasl.mechanism = Some(SaslMechanism::Plain);
        assert_eq!(field(&plain), "security.sasl");

        let mut oauth = SecurityConfig {
            protocol: SecurityProtocol::SaslSsl,
            sasl: SaslConfig { mechanism: Some(SaslMechanism::OAuthBearer), ..Default::default() },
            ..Default::default()
        };
        assert_eq!(field(&oauth), "security.sasl.token_provider");
        oauth.sasl.token_provider = Some(TokenProvider::new(|| async {
            Err::<super::super::oauth::OAuthBearerToken, _>("unused".into())
        }));
        oauth.validate().unwrap();
        oauth.sasl.password = Some("p".into());
        assert_eq!(field(&oauth), "security.sasl.password");
    }

    #[test]
    fn debug_and_json_of_the_section_show_no_password() {
        let config = SecurityConfig::sasl_ssl(SaslMechanism::Plain, "alice", "s3cr3t-pw");
        assert!(!format!("{config:?}").contains("s3cr3t-pw"));
        assert!(!serde_json::to_string(&config).unwrap().contains("s3cr3t-pw"));
    }
}
