//! Every network wait has a deadline: a broker that accepts connections and never answers makes
//! `connect` and `subscribe` fail within `request_timeout` (and its retries), naming the broker.
//!
//! Shown to fail without the protection: with the per-request timeout taken out of
//! `Connection`'s exchange and the cluster client's bound on a call's retries set to an hour,
//! both calls hang and the outer deadline below fails the test (checked by hand).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::TcpListener;
use std::time::Duration;

use bus_kafka::{KafkaConfig, KafkaError, SubscribeOptions};
use bus_tests::scripted::{Script, ScriptedBroker};

const REQUEST_TIMEOUT: Duration = Duration::from_millis(500);

/// How long the calls may take in all: the request timeout, for an attempt and the retries
/// that fit in it (see `client`), and a margin for a loaded machine. A hang is what fails.
const OUTER: Duration = Duration::from_secs(10);

fn config(bootstrap: &str) -> KafkaConfig {
    let mut config = KafkaConfig::new(bootstrap);
    config.request_timeout = REQUEST_TIMEOUT;
    config
}

#[tokio::test]
async fn connect_to_a_listener_that_never_answers_fails_naming_the_broker() {
    // Accepts (the kernel completes the handshake) and never reads or answers.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let broker = listener.local_addr().unwrap().to_string();
    let outcome = tokio::time::timeout(OUTER, bus_kafka::connect(config(&broker)))
        .await
        .expect("connect must fail within its request timeout, not hang");
    let error = outcome.expect_err("no broker answered");
    assert!(matches!(error, KafkaError::Connect { .. }), "{error}");
    let text = error.to_string();
    assert!(text.contains(&broker), "the error names the broker: {text}");
    drop(listener);
}

#[tokio::test]
async fn subscribe_against_a_broker_that_stops_answering_fails_naming_the_broker() {
    let peer = ScriptedBroker::start(Script::new("silent", 1).silent_after_handshake());
    let bus =
        bus_kafka::connect(config(&peer.bootstrap())).await.expect("the handshake is answered");
    let subscribed = tokio::time::timeout(
        OUTER,
        bus.subscribe("silent", SubscribeOptions::new("g"), |_m| async { Ok(()) }),
    )
    .await
    .expect("subscribe must fail within its request timeout, not hang");
    let error = subscribed.expect_err("nothing answered after the handshake");
    let text = error.to_string();
    assert!(text.contains(&peer.bootstrap()), "the error names the broker: {text}");
    let report = bus.shutdown(Duration::from_secs(5)).await.expect("clean shutdown");
    assert_eq!(bus.live_tasks(), 0, "{report}");
}
