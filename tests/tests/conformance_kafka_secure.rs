//! The backend conformance suite (written once in `bus_core::conformance`), run on Kafka over
//! SASL_SSL (SCRAM-SHA-512, the CA of the secured test broker): every behaviour the plaintext
//! run checks, with every connection of the bus encrypted and authenticated.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use bus_core::EventBus;
use bus_core::backend::BoxFuture;
use bus_core::conformance::Harness;
use bus_kafka::security::SaslMechanism;

/// Buses connected to the secured test broker; topics created with a unique name each.
struct SecureKafka;

impl Harness for SecureKafka {
    fn bus(&self) -> BoxFuture<'_, EventBus> {
        Box::pin(async {
            let mut config = bus_tests::secure_config(SaslMechanism::ScramSha512);
            // The pattern check waits for a topic created after subscribing: the member sees it
            // at its next metadata refresh, so refresh as often as the plaintext run does.
            config.metadata.max_age = std::time::Duration::from_millis(500);
            bus_kafka::connect(config).await.expect("connected over SASL_SSL")
        })
    }

    fn topic<'a>(
        &'a self,
        _bus: &'a EventBus,
        hint: &'a str,
        partitions: i32,
    ) -> BoxFuture<'a, String> {
        Box::pin(async move {
            let name = bus_tests::unique(&format!("conformance-secure-{hint}"));
            let config = bus_tests::secure_config(SaslMechanism::ScramSha512);
            let admin = bus_kafka::admin::connect(config).await.expect("admin");
            admin.ensure_topic(&name, partitions).await.expect("topic created");
            name
        })
    }
}

bus_core::conformance_suite!(SecureKafka);
