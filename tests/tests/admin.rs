//! Administration on the test cluster beyond the conformance checks (which run on both
//! backends): what the cluster description says (three Apache Kafka brokers, each offering the
//! APIs of transactions and of the KIP-848 group protocol), partitions added to a topic, and
//! errors carrying the broker's codes.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use bus_kafka::admin::NewTopic;

#[tokio::test]
async fn the_cluster_is_described_with_each_brokers_versions_beside_ours() {
    let admin = bus_kafka::admin::connect(bus_tests::config()).await.unwrap();
    let cluster = admin.describe_cluster().await.unwrap();
    assert_eq!(cluster.backend, "kafka");
    assert_eq!(cluster.brokers.len(), 3, "{cluster:?}");
    for broker in &cluster.brokers {
        assert!(broker.error.is_none(), "{broker:?}");
        let api = |name: &str| broker.apis.iter().find(|a| a.name == name).expect(name);
        // Apache Kafka 4.4 offers more than we speak: we negotiate our highest.
        assert_eq!(api("Fetch").negotiated, Some(12));
        assert_eq!(api("Metadata").negotiated, Some(9));
        assert!(api("Fetch").required && api("JoinGroup").required);
        // Offered, not needed by a bus: transactions and the KIP-848 group protocol.
        for offered in ["EndTxn", "ConsumerGroupHeartbeat", "CreatePartitions"] {
            let offered = api(offered);
            assert!(offered.broker.is_some() && !offered.required, "{offered:?}");
        }
        assert!(broker.apis.iter().filter(|a| a.required).all(|a| a.negotiated.is_some()));
    }
}

#[tokio::test]
async fn partitions_added_to_a_topic_are_there_and_fewer_are_refused() {
    let admin = bus_kafka::admin::connect(bus_tests::config()).await.unwrap();
    let topic = bus_tests::unique("admin-grow");
    admin.ensure_topic(&topic, 1).await.unwrap();
    admin.add_partitions(&topic, 3).await.unwrap();
    // The controller answered; every broker learns the new count from the metadata log soon
    // after.
    bus_tests::settle_topic(&topic, 3).await;
    let error = admin.add_partitions(&topic, 2).await.expect_err("a topic cannot shrink");
    assert_eq!(error.code(), Some(37), "INVALID_PARTITIONS: {error}");
    assert!(error.to_string().contains(&topic), "names the topic: {error}");
    assert_eq!(admin.partitions(&topic).await.unwrap(), Some(3), "nothing changed");
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
