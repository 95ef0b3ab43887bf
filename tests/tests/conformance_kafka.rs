//! The backend conformance suite (written once in `bus_core::conformance`), run on Kafka against
//! the test broker.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use bus_core::EventBus;
use bus_core::backend::BoxFuture;
use bus_core::conformance::Harness;

/// Buses connected to the test broker; topics created with a unique name each.
struct Kafka;

impl Harness for Kafka {
    fn bus(&self) -> BoxFuture<'_, EventBus> {
        Box::pin(async {
            let mut config = bus_tests::config();
            // Pattern subscriptions look for new topics this often (the default is 5 minutes).
            config.metadata.max_age = std::time::Duration::from_millis(500);
            bus_kafka::connect(config).await.expect("connected")
        })
    }

    fn topic<'a>(
        &'a self,
        _bus: &'a EventBus,
        hint: &'a str,
        partitions: i32,
    ) -> BoxFuture<'a, String> {
        Box::pin(async move {
            let name = bus_tests::unique(&format!("conformance-{hint}"));
            let admin = bus_kafka::admin::connect(bus_tests::config()).await.expect("admin");
            admin.ensure_topic(&name, partitions).await.expect("topic created");
            name
        })
    }
}

bus_core::conformance_suite!(Kafka);
