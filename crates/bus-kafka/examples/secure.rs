//! A service on a secured cluster (SASL_SSL): the configuration as a file with Kafka's names,
//! the password from an environment variable, one envelope published and consumed back.
//!
//! ```sh
//! cargo xtask broker start --tls --sasl        # the secured test broker: target/broker-secure.env
//! set -a; . target/broker-secure.env; set +a
//! cargo run -p bus-kafka --example secure
//! ```
//!
//! It reads `KAFKA_SECURE_BOOTSTRAP`, `KAFKA_SECURE_CA` (the CA's PEM), `KAFKA_SECURE_USER` and
//! `KAFKA_SECURE_PASSWORD` (named in the configuration, never written in it), and optionally
//! `KAFKA_SECURE_MECHANISM` (default `SCRAM-SHA-512`) and `SECURE_TOPIC`. For a managed cluster
//! (Confluent Cloud, MSK, Aiven, ...) leave the CA out to trust the system's roots. The program
//! exits with status 1 when the record does not come back (`cargo xtask test` runs it against
//! the secured test broker).

use std::process::ExitCode;
use std::time::Duration;

use bus_kafka::{Envelope, HandlerError, KafkaConfig, SubscribeOptions};
use tokio::sync::mpsc;

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("secure: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let var = |name: &str| std::env::var(name).map_err(|_| format!("set {name}"));
    let bootstrap = var("KAFKA_SECURE_BOOTSTRAP")?;
    let mechanism = var("KAFKA_SECURE_MECHANISM").unwrap_or_else(|_| "SCRAM-SHA-512".into());
    let topic = var("SECURE_TOPIC").unwrap_or_else(|_| "secure-example".into());
    // The configuration a service would keep in a file: librdkafka's `security.protocol`,
    // `ssl.ca.location`, `sasl.mechanism`, `sasl.username` and (here from the environment)
    // `sasl.password`.
    let mut security = serde_json::json!({
        "protocol": "sasl_ssl",
        "sasl": {
            "mechanism": mechanism,
            "username": var("KAFKA_SECURE_USER")?,
            "password_env": "KAFKA_SECURE_PASSWORD",
        },
    });
    if let Ok(ca) = var("KAFKA_SECURE_CA") {
        security["tls"] = serde_json::json!({ "ca_location": ca });
    }
    let config: KafkaConfig = serde_json::from_value(serde_json::json!({
        "bootstrap": bootstrap.split(',').collect::<Vec<_>>(),
        "request_timeout": "10s",
        "security": security,
    }))?;
    // Debug shows the configuration without the password (here it is only named anyway).
    println!("security: {:?}", config.security);
    let bus = bus_kafka::connect(config).await?;
    println!("connected to {bootstrap} over SASL_SSL ({mechanism}); health: {:?}", bus.health());

    let (seen_tx, mut seen) = mpsc::unbounded_channel::<String>();
    let _subscription = bus
        .subscribe_envelopes(&topic, SubscribeOptions::new("secure-example"), move |e: Envelope| {
            let seen = seen_tx.clone();
            async move {
                let _ = seen.send(e.aggregate_id.clone());
                Ok::<(), HandlerError>(())
            }
        })
        .await?;
    let id = format!("account-{}", std::process::id());
    let opened = Envelope::new(&id, "AccountOpened", 1, serde_json::json!({"tier": "gold"}))?;
    let stored = bus.publish_envelope(&topic, &opened).await?;
    println!("published {id} at {}-{}@{}", stored.topic, stored.partition, stored.offset);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        match tokio::time::timeout_at(deadline, seen.recv()).await {
            Ok(Some(got)) if got == id => break,
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => return Err(format!("{id} was not consumed within 30 s").into()),
        }
    }
    println!("consumed {id} back");
    println!("{}", bus.shutdown(Duration::from_secs(10)).await?);
    Ok(())
}
