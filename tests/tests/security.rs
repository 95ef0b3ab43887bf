//! TLS and SASL against the test cluster's secured listeners (SASL_SSL with SCRAM, PLAIN and
//! OAUTHBEARER; SSL with client certificates required), a private secured broker whose users
//! change, and the plaintext listener.
//!
//! - SASL_SSL with SCRAM-SHA-256 and SCRAM-SHA-512: publish and consume; confluent-kafka
//!   (librdkafka) reads what the bus wrote and writes what the bus reads, with the same
//!   credentials (proof the set-up is the standard one).
//! - A wrong password: `connect` fails at once with an authentication error naming mechanism
//!   and broker. Credentials revoked while the bus runs (the user deleted on a private broker,
//!   which then restarts): `publish` and `subscribe` fail with that error within `request_timeout`, the bus's
//!   health says why, and the brokers see few attempts (the connector's backoff), not a storm.
//! - Untrusted certificate, wrong server name: a TLS error naming the broker.
//! - Plaintext against the TLS listener and TLS against a plaintext listener: a clear error
//!   within the timeout.
//! - PLAIN: publish and consume, a wrong password refused naming the mechanism. OAUTHBEARER:
//!   the token provider's unsigned token accepted by Kafka's unsecured validator (publish and
//!   consume), a malformed or expired one refused. Mutual TLS: the listener that requires a
//!   client certificate accepts ours and refuses a client without one.
//! - KIP-368: the broker sets a 60 s session lifetime; a connection in use past it
//!   re-authenticates and keeps working.
//! - No secret in the captured tracing output (every level) or in the configuration's `Debug`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bus_kafka::{
    HandlerError, KafkaConfig, KafkaError, Message, Record, SubscribeOptions, health::Health,
    security::OAuthBearerToken, security::SaslMechanism, security::SecurityConfig,
    security::SecurityProtocol, security::TlsConfig, security::TokenProvider,
};
use bus_tests::{Certificates, OwnSecureBroker, capture_logs, secure_config, secured};
use tokio::sync::mpsc;
use tokio::time::Instant;

/// Publishes `count` records to `topic` and consumes them back in a group.
async fn round_trip(config: KafkaConfig, topic: &str, count: usize) {
    let bus = bus_kafka::connect(config).await.unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel::<String>();
    let _subscription = bus
        .subscribe(topic, SubscribeOptions::new(bus_tests::unique("secure")), move |m: Message| {
            let tx = tx.clone();
            async move {
                let _ = tx.send(String::from_utf8_lossy(m.payload()).into_owned());
                Ok::<(), HandlerError>(())
            }
        })
        .await
        .unwrap();
    for n in 0..count {
        let record = Record::new(topic, format!("value-{n}")).with_key(format!("key-{n}"));
        bus.publish(record).await.unwrap();
    }
    let mut seen = std::collections::HashSet::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while seen.len() < count {
        let value = tokio::time::timeout_at(deadline, rx.recv()).await.unwrap().unwrap();
        seen.insert(value);
    }
    assert_eq!(bus.health(), Health::Ready);
    bus.shutdown(Duration::from_secs(10)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sasl_ssl_with_scram_sha_256_and_sha_512_publishes_and_consumes() {
    for mechanism in [SaslMechanism::ScramSha256, SaslMechanism::ScramSha512] {
        let topic = bus_tests::unique(&format!("secure-{mechanism}"));
        round_trip(secure_config(mechanism), &topic, 20).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confluent_kafka_reads_and_writes_over_sasl_ssl_with_the_same_credentials() {
    let broker = secured();
    for mechanism in [SaslMechanism::ScramSha256, SaslMechanism::ScramSha512] {
        let env = broker.peer_env(mechanism);
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        // The bus writes, the peer reads.
        let topic = bus_tests::unique("secure-peer-read");
        let bus = bus_kafka::connect(secure_config(mechanism)).await.unwrap();
        for n in 0..30 {
            bus.publish(Record::new(topic.as_str(), format!("bus-{n}")).with_key(format!("k{n}")))
                .await
                .unwrap();
        }
        let read = bus_tests::run_peer_with_env(
            "kafka_peer.py",
            &["read", "--bootstrap", &broker.bootstrap, "--topic", &topic],
            "",
            &env,
        );
        let mut values: Vec<String> = read["records"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["value"].as_str().unwrap().to_owned())
            .collect();
        values.sort();
        let mut expected: Vec<String> = (0..30).map(|n| format!("bus-{n}")).collect();
        expected.sort();
        assert_eq!(values, expected, "{mechanism}: the peer read every record the bus wrote");

        // The peer writes (one probe record per key), the bus reads.
        let keys: Vec<String> = (0..10).map(|n| format!("peer-key-{n}")).collect();
        let topic = bus_tests::unique("secure-peer-write");
        bus_kafka::admin::connect(secure_config(mechanism))
            .await
            .unwrap()
            .ensure_topic(&topic, 3)
            .await
            .unwrap();
        let placed = bus_tests::run_peer_with_env(
            "kafka_peer.py",
            &[
                "partition",
                "--bootstrap",
                &broker.bootstrap,
                "--topic",
                &topic,
                "--partitioner",
                "murmur2_random",
            ],
            &keys.join("\n"),
            &env,
        );
        assert_eq!(placed["partitions"].as_object().unwrap().len(), keys.len());
        let (tx, mut rx) = mpsc::unbounded_channel::<String>();
        let _subscription = bus
            .subscribe(&topic, SubscribeOptions::new(bus_tests::unique("g")), move |m: Message| {
                let tx = tx.clone();
                async move {
                    let key = m.key.as_ref().map(|k| String::from_utf8_lossy(k).into_owned());
                    let _ = tx.send(key.unwrap_or_default());
                    Ok::<(), HandlerError>(())
                }
            })
            .await
            .unwrap();
        let mut seen = std::collections::HashSet::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        while seen.len() < keys.len() {
            seen.insert(tokio::time::timeout_at(deadline, rx.recv()).await.unwrap().unwrap());
        }
        bus.shutdown(Duration::from_secs(10)).await.unwrap();
    }
}

/// `connect`'s error, which must come within `bound`.
async fn connect_error(config: KafkaConfig, bound: Duration) -> String {
    match tokio::time::timeout(bound, bus_kafka::connect(config)).await {
        Ok(Ok(_)) => panic!("connected, but should not have"),
        Ok(Err(error)) => error.to_string(),
        Err(_) => panic!("connect did not return within {bound:?}"),
    }
}

#[tokio::test]
async fn a_wrong_password_fails_connect_at_once_naming_mechanism_and_broker() {
    let broker = secured();
    for mechanism in [SaslMechanism::ScramSha256, SaslMechanism::ScramSha512] {
        let mut config = secure_config(mechanism);
        config.security.sasl.password = Some("not-the-password".into());
        config.request_timeout = Duration::from_secs(10);
        let started = Instant::now();
        // An authentication refusal is not retried: the answer comes well before the timeout.
        let error = connect_error(config, Duration::from_secs(5)).await;
        assert!(
            error.contains(&format!("SASL authentication with {mechanism} failed"))
                && error.contains(&broker.bootstrap)
                // nisshi refuses in SCRAM's final message; Apache Kafka with an error code.
                && (error.contains("refused the credentials")
                    || error.contains("(error 58)")),
            "{error}"
        );
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}

// On the test's thread (a current-thread runtime) so that the captured logs see every task.
#[tokio::test(flavor = "current_thread")]
async fn credentials_revoked_while_running_fail_publish_and_subscribe_with_backoff_and_health() {
    let mut broker = OwnSecureBroker::start(&[("rotating", "first-password", "scram256")]);
    let mut config = broker.config(SaslMechanism::ScramSha256, "rotating", "first-password");
    config.request_timeout = Duration::from_secs(5);
    config.producer.delivery_timeout = Duration::from_secs(60);
    let timeout = config.request_timeout;
    let bus = bus_kafka::connect(config).await.unwrap();
    let topic = bus_tests::unique("revoked");
    bus.publish(Record::new(topic.as_str(), "before").with_key("k")).await.unwrap();

    // The broker restarts without the user: every connection of the bus is cut, and every new
    // one is refused.
    broker.change_users(&[], &[("rotating", "scram256")]);
    broker.restart();
    let logs = capture_logs();

    // Publishing to the same partition: its connection is gone, the new one refused: the
    // record fails with the authentication error within request_timeout (not the 60 s delivery
    // timeout), and so does every following one, at the pace the caller publishes.
    let started = Instant::now();
    let mut failures = 0;
    while started.elapsed() < Duration::from_secs(3) {
        let publish = bus.publish(Record::new(topic.as_str(), "after").with_key("k"));
        let error = tokio::time::timeout(timeout + Duration::from_secs(2), publish)
            .await
            .expect("publish answered within request_timeout")
            .expect_err("publish fails while the credentials are refused");
        let text = error.to_string();
        assert!(
            text.contains("SASL authentication with SCRAM-SHA-256 failed")
                && text.contains(&broker.bootstrap()),
            "{text}"
        );
        failures += 1;
    }
    // A subscription to a new topic fails the same way.
    let revoked_topic = bus_tests::unique("revoked-sub");
    let subscribe = bus.subscribe(
        &revoked_topic,
        SubscribeOptions::new("revoked-group"),
        |_m: Message| async { Ok::<(), HandlerError>(()) },
    );
    let error = tokio::time::timeout(timeout + Duration::from_secs(2), subscribe)
        .await
        .expect("subscribe answered within request_timeout")
        .expect_err("subscribe fails while the credentials are refused")
        .to_string();
    assert!(error.contains("SASL authentication with SCRAM-SHA-256 failed"), "{error}");
    // The health says why.
    match bus.health() {
        Health::Degraded { reason } => {
            assert!(reason.contains("SASL authentication with SCRAM-SHA-256"), "{reason}")
        }
        other => panic!("health should be degraded, is {other:?}"),
    }
    // Attempts at the broker: one per backoff (100 ms doubling), not one per publish.
    let attempts = logs.text().matches("the broker refused the connection's security").count();
    assert!(failures >= 20, "only {failures} publishes were tried");
    assert!(
        (1..=8).contains(&attempts),
        "{attempts} authentication attempts for {failures} failed publishes in 3 s"
    );
    drop(logs);
    bus.shutdown(Duration::from_secs(10)).await.unwrap();
}

#[tokio::test]
async fn an_untrusted_certificate_or_a_wrong_server_name_is_a_tls_error_naming_the_broker() {
    let broker = secured();
    let dir = std::env::temp_dir().join(bus_tests::unique("tls-other-ca"));
    let other = Certificates::new(&dir, "other");
    let mut untrusted = secure_config(SaslMechanism::ScramSha512);
    untrusted.security.tls.ca_location = Some(other.ca.clone());
    let error = connect_error(untrusted, Duration::from_secs(5)).await;
    assert!(
        broker.bootstrap.split(',').any(|address| {
            error.contains(&format!("TLS handshake with broker {address} failed"))
        }) && error.contains("UnknownIssuer"),
        "{error}"
    );
    let mut misnamed = secure_config(SaslMechanism::ScramSha512);
    misnamed.security.tls.server_name = Some("kafka.example.com".into());
    let error = connect_error(misnamed, Duration::from_secs(5)).await;
    assert!(
        broker.bootstrap.split(',').any(|address| {
            error.contains(&format!("TLS handshake with broker {address} failed"))
        }) && error.contains("not valid for name"),
        "{error}"
    );
    // danger_accept_invalid_certs accepts both (and logs a warning).
    let logs = capture_logs();
    let mut accepting = secure_config(SaslMechanism::ScramSha512);
    accepting.security.tls =
        TlsConfig { danger_accept_invalid_certs: true, ..TlsConfig::default() };
    accepting.security.tls.server_name = Some("kafka.example.com".into());
    let bus = bus_kafka::connect(accepting).await.unwrap();
    assert!(logs.text().contains("danger_accept_invalid_certs is on"));
    // ...and says so in the health report, not only in a log line.
    let insecure = bus.health_report().insecure;
    assert!(
        insecure.len() == 1 && insecure[0].contains("certificates are not checked"),
        "{insecure:?}"
    );
    bus.shutdown(Duration::from_secs(5)).await.unwrap();
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn plaintext_against_tls_and_tls_against_plaintext_fail_clearly_within_the_timeout() {
    let broker = secured();
    let timeout = Duration::from_secs(3);
    // Plaintext to the TLS listener: the broker answers with TLS bytes, read as an impossible
    // size (refused, nothing allocated) or a closed connection.
    let mut plain = KafkaConfig::new(&broker.bootstrap);
    plain.request_timeout = timeout;
    let error = connect_error(plain, timeout + Duration::from_secs(3)).await;
    assert!(
        error.contains(&broker.bootstrap)
            && error.contains("if the broker's listener is TLS, set security.protocol to ssl"),
        "{error}"
    );
    // TLS to the plaintext listener (the shared test broker).
    let mut tls = bus_tests::config();
    tls.request_timeout = timeout;
    tls.security = SecurityConfig { protocol: SecurityProtocol::Ssl, ..Default::default() };
    tls.security.tls.ca_location = Some(broker.ca.clone());
    let error = connect_error(tls, timeout + Duration::from_secs(3)).await;
    assert!(error.contains(&bus_tests::bootstrap()) && error.contains("TLS"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_publishes_and_consumes_and_a_wrong_password_is_refused_naming_plain() {
    round_trip(secure_config(SaslMechanism::Plain), &bus_tests::unique("sasl-plain"), 10).await;
    let mut wrong = secure_config(SaslMechanism::Plain);
    wrong.security.sasl.password = Some("not-the-password".into());
    let error = connect_error(wrong, Duration::from_secs(5)).await;
    assert!(error.contains("SASL authentication with PLAIN failed"), "{error}");
}

/// An unsigned JWS (`alg: none`) for `subject` that expires `expires_in` seconds from now (in
/// the past when negative): what Kafka's unsecured validator accepts while unexpired.
fn unsigned_token(subject: &str, expires_in: f64) -> String {
    use base64::Engine;
    let encode = |json: serde_json::Value| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json.to_string())
    };
    let now =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
    let header = encode(serde_json::json!({ "alg": "none" }));
    let claims = encode(serde_json::json!({
        "sub": subject,
        "iat": now,
        "exp": now + expires_in,
    }));
    format!("{header}.{claims}.")
}

fn oauth_config(provider: TokenProvider) -> KafkaConfig {
    let mut config = secure_config(SaslMechanism::ScramSha512);
    config.security.sasl = bus_kafka::security::SaslConfig {
        mechanism: Some(SaslMechanism::OAuthBearer),
        token_provider: Some(provider),
        ..Default::default()
    };
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oauthbearer_with_the_token_providers_token_publishes_and_consumes() {
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&calls);
    let provider = TokenProvider::new(move || {
        counter.fetch_add(1, Ordering::SeqCst);
        async { Ok(OAuthBearerToken::new(unsigned_token("bus-oauth", HOUR.as_secs_f64()), HOUR)) }
    });
    round_trip(oauth_config(provider), &bus_tests::unique("sasl-oauth"), 10).await;
    assert!(calls.load(Ordering::SeqCst) >= 1, "the provider gave the token");
    // A token the validator cannot parse is refused, and the error names the mechanism.
    let garbage = TokenProvider::new(|| async {
        Ok(OAuthBearerToken::new("header.payload.signature", Duration::from_secs(60)))
    });
    let error = connect_error(oauth_config(garbage), Duration::from_secs(5)).await;
    assert!(error.contains("SASL authentication with OAUTHBEARER failed"), "{error}");
    // An expired one too.
    let expired = TokenProvider::new(|| async {
        let token = unsigned_token("bus-oauth", -60.0);
        Ok(OAuthBearerToken::new(token, Duration::from_secs(60)))
    });
    let error = connect_error(oauth_config(expired), Duration::from_secs(5)).await;
    assert!(error.contains("OAUTHBEARER"), "{error}");
}

const HOUR: Duration = Duration::from_secs(3_600);

#[tokio::test]
async fn bad_security_settings_are_configuration_errors_naming_the_field() {
    let field = |config: KafkaConfig| async move {
        match bus_kafka::connect(config).await {
            Err(KafkaError::Config(error)) => error.field,
            other => panic!("expected a configuration error, got {:?}", other.map(|_| ())),
        }
    };
    let mut no_credentials = secure_config(SaslMechanism::ScramSha512);
    no_credentials.security.sasl.password = None;
    assert_eq!(field(no_credentials).await, "security.sasl.password");
    let mut key_only = secure_config(SaslMechanism::ScramSha512);
    key_only.security.tls.key_location = Some("/nonexistent/client.key".into());
    assert_eq!(field(key_only).await, "security.tls.key_location");
    let mut unreadable = secure_config(SaslMechanism::ScramSha512);
    unreadable.security.tls.ca_location = Some("/nonexistent/ca.pem".into());
    assert_eq!(field(unreadable).await, "security.tls.ca_location");
    let mut unset = secure_config(SaslMechanism::ScramSha512);
    unset.security.sasl.password = None;
    unset.security.sasl.password_env = Some("BUS_TESTS_NO_SUCH_PASSWORD_VARIABLE".into());
    assert_eq!(field(unset).await, "security.sasl.password_env");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_that_requires_a_client_certificate_accepts_ours_and_refuses_none() {
    let broker = secured();
    let config = |certificate: bool| {
        let mut config = KafkaConfig::new(&broker.mtls_bootstrap);
        config.request_timeout = Duration::from_secs(5);
        config.security.protocol = SecurityProtocol::Ssl;
        config.security.tls.ca_location = Some(broker.ca.clone());
        if certificate {
            config.security.tls.certificate_location = Some(broker.mtls_certificate.clone());
            config.security.tls.key_location = Some(broker.mtls_key.clone());
        }
        config
    };
    // With the certificate: a working session.
    round_trip(config(true), &bus_tests::unique("mtls"), 10).await;
    // Without: the broker ends the handshake, and the error names the broker and TLS.
    let error = connect_error(config(false), Duration::from_secs(10)).await;
    assert!(
        broker.mtls_bootstrap.split(',').any(|address| error.contains(address)),
        "names the broker: {error}"
    );
    assert!(error.to_lowercase().contains("certificate"), "{error}");
}

#[tokio::test(flavor = "current_thread")]
async fn no_secret_reaches_the_logs_or_the_configurations_debug() {
    let broker = secured();
    let logs = capture_logs();
    let config = secure_config(SaslMechanism::ScramSha512);
    assert!(!format!("{config:?}").contains(&broker.password));
    assert!(!serde_json::to_string(&config).unwrap().contains(&broker.password));
    // A working session (publish, consume), at every log level...
    round_trip(config, &bus_tests::unique("no-secret"), 5).await;
    // ...and a refused one.
    let mut wrong = secure_config(SaslMechanism::ScramSha256);
    let wrong_password = "wrong-password-7f3a";
    wrong.security.sasl.password = Some(wrong_password.into());
    let _ = bus_kafka::connect(wrong).await;
    let text = logs.text();
    assert!(text.contains("authenticated"), "the logs were captured: {text}");
    for secret in [&broker.password, &broker.password_256, wrong_password] {
        assert!(!text.contains(secret), "a password is in the logs");
    }
}

#[tokio::test(flavor = "current_thread")]
async fn connections_reauthenticate_before_the_brokers_session_lifetime_ends() {
    // The cluster sets a 60 s session lifetime (connections.max.reauth.ms) and enforces it: a
    // connection that did not re-authenticate in time is closed by the broker.
    let logs = capture_logs();
    let mut config = secure_config(SaslMechanism::ScramSha256);
    config.request_timeout = Duration::from_secs(10);
    let bus = bus_kafka::connect(config).await.unwrap();
    let topic = bus_tests::unique("reauth");
    let deadline = Instant::now() + Duration::from_secs(75);
    let mut published = 0;
    while !logs.text().contains("re-authenticating") {
        assert!(Instant::now() < deadline, "no re-authentication within 75 s");
        bus.publish(Record::new(topic.as_str(), "tick").with_key("k")).await.unwrap();
        published += 1;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    for _ in 0..5 {
        bus.publish(Record::new(topic.as_str(), "after").with_key("k")).await.unwrap();
    }
    let text = logs.text();
    assert!(text.contains("lifetime=Some(60s)"), "the broker's lifetime was read: {text}");
    assert!(published > 80, "the producer's connection was in use for the whole lifetime");
    assert_eq!(bus.health(), Health::Ready);
    bus.shutdown(Duration::from_secs(10)).await.unwrap();
}
