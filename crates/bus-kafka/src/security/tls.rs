//! TLS for the bus's connections: the rustls client configuration built once from
//! `security.tls`, and the handshake of one connection.
//!
//! Owns: [`Tls`] (the configuration, built by [`Tls::new`]; [`Tls::connect`] wraps a TCP
//! stream) and the `danger_accept_invalid_certs` verifier.
//!
//! Invariants:
//! - Certificates are checked against `security.tls.ca_location` when given, else the
//!   system's trust store (rustls-native-certs), and against the broker's host (or
//!   `security.tls.server_name`); only `danger_accept_invalid_certs` turns the check off, and
//!   then a warning is logged each time a configuration is built.
//! - The crypto provider is ring's, passed explicitly (no process-wide default is installed or
//!   relied on).
//! - Files are read here, once per bus; an unreadable or empty PEM is a configuration error
//!   naming the field.
//! - A handshake failure is [`RequestError::Tls`] (certificate, protocol: the same
//!   configuration fails again) or [`RequestError::Connect`] (the broker closed or reset the
//!   connection: perhaps a restart), each naming the broker.

use std::path::Path;
use std::sync::Arc;

use bus_core::errors::ConfigError;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use super::config::TlsConfig;
use crate::connection::RequestError;

/// The TLS side of the bus's connections.
#[derive(Clone)]
pub(crate) struct Tls {
    connector: TlsConnector,
    server_name: Option<ServerName<'static>>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls").field("server_name", &self.server_name).finish_non_exhaustive()
    }
}

impl Tls {
    /// Builds the client configuration: the trusted roots, the client certificate if any.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the field whose file cannot be read or holds nothing usable.
    pub(crate) fn new(config: &TlsConfig) -> Result<Tls, ConfigError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .map_err(|e| ConfigError::new("security.tls", e.to_string()))?;
        let builder = if config.danger_accept_invalid_certs {
            tracing::warn!(
                "security.tls.danger_accept_invalid_certs is on: the brokers' certificates are \
                 NOT checked, anyone on the path can read and change the traffic; for test \
                 clusters only"
            );
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate(provider)))
        } else {
            builder.with_root_certificates(roots(config.ca_location.as_deref())?)
        };
        let client = match (&config.certificate_location, &config.key_location) {
            (Some(certificate), Some(key)) => {
                let chain = certificates(certificate, "security.tls.certificate_location")?;
                let key = PrivateKeyDer::from_pem_file(key).map_err(|e| {
                    ConfigError::new(
                        "security.tls.key_location",
                        format!("no usable private key in `{}`: {e}", key.display()),
                    )
                })?;
                builder.with_client_auth_cert(chain, key).map_err(|e| {
                    ConfigError::new(
                        "security.tls.key_location",
                        format!("the key does not fit the certificate: {e}"),
                    )
                })?
            }
            (None, None) => builder.with_no_client_auth(),
            (None, Some(_)) => {
                return Err(ConfigError::new(
                    "security.tls.key_location",
                    "a client key needs its certificate: set security.tls.certificate_location",
                ));
            }
            (Some(_), None) => {
                return Err(ConfigError::new(
                    "security.tls.certificate_location",
                    "a client certificate needs its key: set security.tls.key_location",
                ));
            }
        };
        let server_name = match &config.server_name {
            Some(name) => Some(ServerName::try_from(name.clone()).map_err(|_| {
                ConfigError::new(
                    "security.tls.server_name",
                    format!("`{name}` is neither a DNS name nor an IP address"),
                )
            })?),
            None => None,
        };
        Ok(Tls { connector: TlsConnector::from(Arc::new(client)), server_name })
    }

    /// The TLS handshake on `tcp`, a connection to `broker` (`host:port`). Unbounded: the
    /// caller bounds it.
    ///
    /// # Errors
    ///
    /// [`RequestError::Tls`] when the handshake is refused (certificate, name, protocol);
    /// [`RequestError::Connect`] when the broker closes or resets the connection.
    pub(crate) async fn connect(
        &self,
        broker: &str,
        tcp: TcpStream,
    ) -> Result<TlsStream<TcpStream>, RequestError> {
        let host = host_of(broker);
        let name = match &self.server_name {
            Some(name) => name.clone(),
            None => ServerName::try_from(host.to_owned()).map_err(|_| RequestError::Tls {
                broker: broker.to_owned(),
                reason: format!("`{host}` is not a name a certificate can be checked against"),
            })?,
        };
        self.connector.connect(name, tcp).await.map_err(|error| {
            let rustls_error =
                error.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>());
            match rustls_error {
                Some(tls) => RequestError::Tls {
                    broker: broker.to_owned(),
                    reason: format!("{tls}{}", hint(tls)),
                },
                None => RequestError::Connect {
                    broker: broker.to_owned(),
                    reason: format!(
                        "TLS handshake: {error} (if the broker's listener is not TLS, set \
                         security.protocol to plaintext or sasl_plaintext)"
                    ),
                },
            }
        })
    }
}

/// What to do about a handshake error, when that is clear.
fn hint(error: &rustls::Error) -> &'static str {
    match error {
        rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer) => {
            " (no trusted authority signed the broker's certificate: set security.tls.ca_location \
             to the CA that did)"
        }
        rustls::Error::InvalidCertificate(
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
        ) => {
            " (the broker's certificate does not name the address connected to: check the \
             address, or set security.tls.server_name to a name the certificate holds)"
        }
        rustls::Error::InvalidMessage(_) | rustls::Error::InappropriateMessage { .. } => {
            " (the broker does not answer in TLS: if its listener is plaintext, set \
             security.protocol to plaintext or sasl_plaintext)"
        }
        _ => "",
    }
}

/// The host part of `host:port` (without the brackets of an IPv6 address).
fn host_of(broker: &str) -> &str {
    let host = broker.rsplit_once(':').map_or(broker, |(host, _)| host);
    host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host)
}

/// The roots to trust: the CA bundle at `ca_location`, else the system's.
fn roots(ca_location: Option<&Path>) -> Result<RootCertStore, ConfigError> {
    let mut roots = RootCertStore::empty();
    if let Some(path) = ca_location {
        for (n, certificate) in
            certificates(path, "security.tls.ca_location")?.into_iter().enumerate()
        {
            roots.add(certificate).map_err(|e| {
                ConfigError::new(
                    "security.tls.ca_location",
                    format!("certificate {} in `{}` is not usable: {e}", n + 1, path.display()),
                )
            })?;
        }
        return Ok(roots);
    }
    let native = rustls_native_certs::load_native_certs();
    let (added, _ignored) = roots.add_parsable_certificates(native.certs);
    if added == 0 {
        let errors: Vec<String> = native.errors.iter().map(ToString::to_string).collect();
        return Err(ConfigError::new(
            "security.tls.ca_location",
            format!(
                "not set, and the system's trust store has no usable certificate{}",
                if errors.is_empty() { String::new() } else { format!(": {}", errors.join("; ")) }
            ),
        ));
    }
    Ok(roots)
}

/// The certificates of the PEM file at `path`, at least one.
fn certificates(
    path: &Path,
    field: &'static str,
) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    let unreadable =
        |e: &dyn std::fmt::Display| ConfigError::new(field, format!("`{}`: {e}", path.display()));
    let certificates = CertificateDer::pem_file_iter(path)
        .map_err(|e| unreadable(&e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| unreadable(&e))?;
    if certificates.is_empty() {
        return Err(unreadable(&"no PEM certificate in the file"));
    }
    Ok(certificates)
}

/// `danger_accept_invalid_certs`: any certificate is accepted (the handshake's signatures are
/// still checked, so the connection is at least with the holder of the certificate shown).
#[derive(Debug)]
struct AcceptAnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn hosts_of_addresses() {
        assert_eq!(host_of("broker-1.example.com:9093"), "broker-1.example.com");
        assert_eq!(host_of("127.0.0.1:9093"), "127.0.0.1");
        assert_eq!(host_of("[::1]:9093"), "::1");
    }

    #[test]
    fn unreadable_or_empty_pem_files_are_configuration_errors_naming_the_field() {
        let missing =
            TlsConfig { ca_location: Some("/nonexistent/ca.pem".into()), ..TlsConfig::default() };
        let error = Tls::new(&missing).unwrap_err();
        assert_eq!(error.field, "security.tls.ca_location");
        assert!(error.reason.contains("/nonexistent/ca.pem"), "{error}");

        let dir = std::env::temp_dir().join(format!("bus-kafka-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "not a pem file\n").unwrap();
        let config = TlsConfig { ca_location: Some(empty.clone()), ..TlsConfig::default() };
        let error = Tls::new(&config).unwrap_err();
        assert_eq!(error.field, "security.tls.ca_location");
        assert!(error.reason.contains("no PEM certificate"), "{error}");

        let config = TlsConfig {
            danger_accept_invalid_certs: true,
            certificate_location: Some(empty.clone()),
            key_location: Some(empty),
            ..TlsConfig::default()
        };
        assert_eq!(Tls::new(&config).unwrap_err().field, "security.tls.certificate_location");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
