//! Administration on the test broker beyond the conformance checks (which run on both backends):
//! what the cluster description says, how a broker without CreatePartitions is reported, and
//! errors carrying the broker's codes.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use bus_kafka::{admin::AdminError, admin::NewTopic};

#[tokio::test]
async fn the_cluster_is_described_with_each_brokers_versions_beside_ours() {
    let admin = bus_kafka::admin::connect(bus_tests::config()).await.unwrap();
    let cluster = admin.describe_cluster().await.unwrap();
    assert_eq!(cluster.backend, "kafka");
    assert!(!cluster.brokers.is_empty());
    let broker = &cluster.brokers[0];
    assert!(broker.error.is_none(), "{broker:?}");
    let api = |name: &str| broker.apis.iter().find(|a| a.name == name).expect(name);
    // Versions the test broker offers (FACTS.md) against ours (connection's api! list).
    assert_eq!(api("Fetch").negotiated, Some(12));
    assert_eq!(api("Metadata").negotiated, Some(9));
    assert!(api("Fetch").required && api("JoinGroup").required);
    // Not offered at all: no version to speak, not needed by a bus.
    let grow = api("CreatePartitions");
    assert_eq!((grow.broker, grow.negotiated, grow.required), (None, None, false));
    assert!(broker.apis.iter().filter(|a| a.required).all(|a| a.negotiated.is_some()));
}

#[tokio::test]
async fn a_broker_without_create_partitions_is_named_in_the_refusal() {
    let admin = bus_kafka::admin::connect(bus_tests::config()).await.unwrap();
    let topic = bus_tests::unique("admin-grow");
    admin.ensure_topic(&topic, 1).await.unwrap();
    let error = admin.add_partitions(&topic, 2).await.expect_err("nisshi 0.8.1 cannot");
    let AdminError::Unsupported { operation, reason } = &error else {
        panic!("expected Unsupported, got {error}");
    };
    assert_eq!(*operation, "add partitions");
    assert!(reason.contains(&bus_tests::bootstrap()), "names the broker: {reason}");
    assert!(reason.contains("CreatePartitions") && reason.contains("none"), "{reason}");
    assert_eq!(admin.partitions(&topic).await.unwrap(), Some(1), "nothing changed");
}

#[tokio::test]
async fn refusals_carry_the_brokers_error_code_and_name_the_topic() {
    let admin = bus_kafka::admin::connect(bus_tests::config()).await.unwrap();
    let invalid = admin.create_topic(&NewTopic::new("no spaces allowed", 1)).await.unwrap_err();
    assert_eq!(invalid.code(), Some(17), "INVALID_TOPIC_EXCEPTION: {invalid}");
    assert!(invalid.to_string().contains("`no spaces allowed`"), "{invalid}");
    assert!(invalid.to_string().contains("INVALID_TOPIC_EXCEPTION"), "{invalid}");
    let missing = bus_tests::unique("admin-missing");
    let unknown = admin.describe_topic(&missing).await.unwrap_err();
    assert_eq!(unknown.code(), Some(3), "{unknown}");
    assert!(unknown.to_string().contains(&missing), "{unknown}");
    let described = admin.describe_group(&bus_tests::unique("admin-no-group")).await;
    match described {
        Err(error) => assert_eq!(error.code(), Some(69), "GROUP_ID_NOT_FOUND: {error}"),
        Ok(group) => assert!(group.members.is_empty() && group.offsets.is_empty()),
    }
}
