//! The test cluster's secured listeners: their certificates, users and settings, and the
//! variables (`KAFKA_SECURE_*`, in `target/broker-secure.env`) through which tests, examples and
//! benchmarks reach them.
//!
//! Owns: a CA, a server certificate for `127.0.0.1` and `localhost` (a PEM keystore for the
//! brokers) and a client certificate (for the mTLS listener), made with rcgen in
//! `target/broker-secure/` at each cluster start; random passwords for one SCRAM-SHA-512 user,
//! one SCRAM-SHA-256 user (both created at storage format time) and one PLAIN user (in the
//! listener's JAAS settings); the `listener.name.secure.*` / `listener.name.mtls.*` settings;
//! and a TLS probe of a secured listener.
//!
//! OAUTHBEARER is validated by Kafka's unsecured JWS validator: any unsigned token with a
//! subject and an unexpired `exp` is accepted, which is what a client's token provider must
//! produce; the tests supply their own provider.
//!
//! Invariants: when `KAFKA_SECURE_BOOTSTRAP` is set, the environment describes the secured
//! listener to use and nothing here is made; passwords are random per start and written only to
//! the env file (mode of the target directory) and the brokers' configuration.

use std::collections::BTreeMap;
use std::io::Read;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use testbed::cluster::Layout;

use crate::Result;

/// The variable naming a secured listener to use instead of the test cluster's.
pub(crate) const BOOTSTRAP_VAR: &str = "KAFKA_SECURE_BOOTSTRAP";

/// The SCRAM-SHA-512, SCRAM-SHA-256 and PLAIN users.
const USER_512: &str = "bus-scram512";
const USER_256: &str = "bus-scram256";
const USER_PLAIN: &str = "busplain";

/// The secured listeners in use: their variables (`KAFKA_SECURE_*`).
pub(crate) struct Secured {
    /// Every variable, by name.
    pub(crate) vars: BTreeMap<String, String>,
}

impl Secured {
    /// Sets the variables on `command`.
    pub(crate) fn apply(&self, command: &mut Command) {
        for (name, value) in &self.vars {
            command.env(name, value);
        }
    }

    /// The SASL_SSL bootstrap list.
    pub(crate) fn bootstrap(&self) -> &str {
        self.vars.get(BOOTSTRAP_VAR).map_or("", String::as_str)
    }

    /// The secured listeners named by the environment, or those recorded by the last start.
    pub(crate) fn current() -> Option<Secured> {
        if std::env::var(BOOTSTRAP_VAR).is_ok_and(|v| !v.trim().is_empty()) {
            let vars =
                std::env::vars().filter(|(name, _)| name.starts_with("KAFKA_SECURE_")).collect();
            return Some(Secured { vars });
        }
        let text = std::fs::read_to_string(env_file()).ok()?;
        let vars: BTreeMap<String, String> = text
            .lines()
            .filter_map(|line| line.split_once('='))
            .filter(|(name, _)| name.starts_with("KAFKA_SECURE_"))
            .map(|(name, value)| (name.to_owned(), value.trim().to_owned()))
            .collect();
        vars.contains_key(BOOTSTRAP_VAR).then_some(Secured { vars })
    }
}

fn dir() -> PathBuf {
    crate::workspace_root().join("target").join("broker-secure")
}

/// `target/broker-secure.env`.
pub(crate) fn env_file() -> PathBuf {
    crate::workspace_root().join("target").join("broker-secure.env")
}

/// Credentials made for a new cluster: the settings its nodes need, and the variables to record
/// once its addresses are known.
pub(crate) struct Credentials {
    /// What the cluster adds to each node.
    pub(crate) layout: Layout,
    vars: BTreeMap<String, String>,
}

impl Credentials {
    /// Makes the certificates (in `target/broker-secure/`, emptied first) and passwords.
    pub(crate) fn make() -> Result<Credentials> {
        let dir = dir();
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let files = certificates(&dir)?;
        let (password_512, password_256, password_plain) = (password()?, password()?, password()?);
        let mut layout = Layout::default();
        let mut set = |key: &str, value: String| layout.security.push((key.to_owned(), value));
        set("ssl.keystore.type", "PEM".into());
        set("ssl.keystore.location", files.keystore.display().to_string());
        set("ssl.truststore.type", "PEM".into());
        set("ssl.truststore.location", files.ca.display().to_string());
        set("ssl.endpoint.identification.algorithm", String::new());
        set("listener.name.mtls.ssl.client.auth", "required".into());
        // KIP-368: SASL sessions last 60 s; a client must re-authenticate within that or the
        // broker closes its connection.
        set("connections.max.reauth.ms", "60000".into());
        set(
            "listener.name.secure.sasl.enabled.mechanisms",
            "PLAIN,SCRAM-SHA-256,SCRAM-SHA-512,OAUTHBEARER".into(),
        );
        set(
            "listener.name.secure.plain.sasl.jaas.config",
            format!(
                "org.apache.kafka.common.security.plain.PlainLoginModule required \
                 user_{USER_PLAIN}=\"{password_plain}\";"
            ),
        );
        for mechanism in ["scram-sha-256", "scram-sha-512"] {
            set(
                &format!("listener.name.secure.{mechanism}.sasl.jaas.config"),
                "org.apache.kafka.common.security.scram.ScramLoginModule required;".into(),
            );
        }
        set(
            "listener.name.secure.oauthbearer.sasl.jaas.config",
            "org.apache.kafka.common.security.oauthbearer.OAuthBearerLoginModule required \
             unsecuredLoginStringClaim_sub=\"broker\";"
                .into(),
        );
        set(
            "listener.name.secure.oauthbearer.sasl.server.callback.handler.class",
            "org.apache.kafka.common.security.oauthbearer.internals.unsecured.\
             OAuthBearerUnsecuredValidatorCallbackHandler"
                .into(),
        );
        layout.format_args = vec![
            "--add-scram".into(),
            format!("SCRAM-SHA-512=[name={USER_512},password={password_512}]"),
            "--add-scram".into(),
            format!("SCRAM-SHA-256=[name={USER_256},password={password_256}]"),
        ];
        let mut vars = BTreeMap::new();
        let mut var = |name: &str, value: String| vars.insert(name.to_owned(), value);
        var("KAFKA_SECURE_PROTOCOL", "sasl_ssl".into());
        var("KAFKA_SECURE_CA", files.ca.display().to_string());
        var("KAFKA_SECURE_USER", USER_512.into());
        var("KAFKA_SECURE_PASSWORD", password_512);
        var("KAFKA_SECURE_USER_256", USER_256.into());
        var("KAFKA_SECURE_PASSWORD_256", password_256);
        var("KAFKA_SECURE_PLAIN_USER", USER_PLAIN.into());
        var("KAFKA_SECURE_PLAIN_PASSWORD", password_plain);
        var("KAFKA_SECURE_MTLS_CERT", files.client.display().to_string());
        var("KAFKA_SECURE_MTLS_KEY", files.client_key.display().to_string());
        Ok(Credentials { layout, vars })
    }

    /// Records the variables with the cluster's secured addresses in `target/broker-secure.env`.
    pub(crate) fn record(mut self, sasl_ssl: &str, mtls: &str, tls: &str) -> Result<Secured> {
        self.vars.insert(BOOTSTRAP_VAR.to_owned(), sasl_ssl.to_owned());
        self.vars.insert("KAFKA_SECURE_MTLS_BOOTSTRAP".to_owned(), mtls.to_owned());
        self.vars.insert("KAFKA_SECURE_TLS_BOOTSTRAP".to_owned(), tls.to_owned());
        let mut text =
            String::from("# the test cluster's secured listeners; see xtask/src/secure.rs\n");
        for (name, value) in &self.vars {
            text.push_str(&format!("{name}={value}\n"));
        }
        std::fs::write(env_file(), text)
            .map_err(|e| format!("cannot write {}: {e}", env_file().display()))?;
        Ok(Secured { vars: self.vars })
    }
}

/// Removes the record of the secured listeners.
pub(crate) fn forget() {
    let _ = std::fs::remove_file(env_file());
}

/// Asks one address of the SASL_SSL listener for ApiVersions over TLS (trusting
/// `KAFKA_SECURE_CA`): allowed before authentication.
pub(crate) fn probe(secured: &Secured) -> Result<()> {
    let bootstrap = secured.bootstrap().split(',').next().unwrap_or_default().to_owned();
    let ca = secured.vars.get("KAFKA_SECURE_CA").ok_or("KAFKA_SECURE_CA is not set")?;
    let mut roots = rustls::RootCertStore::empty();
    use rustls_pki_types::pem::PemObject;
    for certificate in rustls_pki_types::CertificateDer::pem_file_iter(ca)
        .map_err(|e| format!("cannot read {ca}: {e}"))?
    {
        roots
            .add(certificate.map_err(|e| format!("{ca}: {e}"))?)
            .map_err(|e| format!("{ca}: {e}"))?;
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let host = bootstrap.rsplit_once(':').map_or(bootstrap.as_str(), |(h, _)| h);
    let name = rustls_pki_types::ServerName::try_from(host.to_owned())
        .map_err(|e| format!("{host}: {e}"))?;
    let connection = rustls::ClientConnection::new(Arc::new(config), name)
        .map_err(|e| format!("TLS to {bootstrap}: {e}"))?;
    let tcp = TcpStream::connect(&bootstrap).map_err(|e| format!("cannot connect: {e}"))?;
    tcp.set_read_timeout(Some(Duration::from_secs(5))).map_err(|e| e.to_string())?;
    let mut stream = rustls::StreamOwned::new(connection, tcp);
    testbed::api_versions(&mut stream, &bootstrap)
}

/// A random password: 16 bytes from the system's source, in hex.
fn password() -> Result<String> {
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(|e| format!("cannot read /dev/urandom: {e}"))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// The files [`certificates`] writes.
struct Files {
    ca: PathBuf,
    /// The brokers' key (PKCS#8) followed by their certificate: a PEM keystore.
    keystore: PathBuf,
    client: PathBuf,
    client_key: PathBuf,
}

/// Writes the CA (`ca.pem`), the brokers' keystore (`server-keystore.pem`) for `127.0.0.1` and
/// `localhost`, and a client certificate and key (`client.pem`, `client.key`) into `dir`.
fn certificates(dir: &Path) -> Result<Files> {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    };
    let fail = |e: rcgen::Error| format!("cannot make the test certificates: {e}");
    let ca_key = KeyPair::generate().map_err(fail)?;
    let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(fail)?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(DnType::CommonName, "bus test CA");
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_certificate = ca.self_signed(&ca_key).map_err(fail)?;
    let issuer = Issuer::new(ca, ca_key);
    let issue = |names: Vec<String>, common_name: &str| {
        let key = KeyPair::generate().map_err(fail)?;
        let mut params = CertificateParams::new(names).map_err(fail)?;
        params.distinguished_name.push(DnType::CommonName, common_name);
        let certificate = params.signed_by(&key, &issuer).map_err(fail)?;
        Ok::<_, String>((certificate.pem(), key.serialize_pem()))
    };
    let (server, server_key) =
        issue(vec!["127.0.0.1".to_owned(), "localhost".to_owned()], "localhost")?;
    let (client, client_key) = issue(vec!["bus-client".to_owned()], "bus-client")?;
    let write = |name: &str, text: String| {
        let path = dir.join(name);
        std::fs::write(&path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        Ok::<_, String>(path)
    };
    Ok(Files {
        ca: write("ca.pem", ca_certificate.pem())?,
        keystore: write("server-keystore.pem", format!("{server_key}{server}"))?,
        client: write("client.pem", client)?,
        client_key: write("client.key", client_key)?,
    })
}
