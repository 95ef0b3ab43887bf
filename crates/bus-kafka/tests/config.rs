//! The Kafka backend's configuration: defaults, reading it from a file's worth of JSON
//! (durations in humantime, omitted fields defaulted, unknown fields refused by name), and
//! validation errors that name the field they are about. `connect` refuses a bad configuration
//! before it opens any connection.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use bus_core::Partitioner;
use bus_kafka::{
    KafkaConfig, KafkaError, config::Compression, config::FETCH_RESPONSE_SLACK,
    config::IsolationLevel, config::MAX_FETCH_BYTES, config::MAX_PARTITION_BUFFER_BYTES,
};

fn config() -> KafkaConfig {
    KafkaConfig::new("127.0.0.1:9092")
}

/// The field `validate` names for `config`, or None when it passes.
fn rejected_field(config: &KafkaConfig) -> Option<&'static str> {
    config.validate().err().map(|e| e.field)
}

#[test]
fn the_defaults_are_valid_once_a_broker_is_named() {
    assert_eq!(rejected_field(&config()), None);
    assert_eq!(rejected_field(&KafkaConfig::default()), Some("bootstrap"));
    let several = KafkaConfig::new(" a:1, b:2 ,,");
    assert_eq!(several.bootstrap, vec!["a:1".to_owned(), "b:2".to_owned()]);
    assert_eq!(rejected_field(&several), None);
    // Idempotent by default, with Kafka's five requests in flight per partition.
    assert!(config().producer.idempotence);
    assert_eq!(config().producer.max_in_flight, 5);
}

#[test]
fn every_rule_names_its_field() {
    type Breaks = fn(&mut KafkaConfig);
    let cases: &[(&str, Breaks)] = &[
        ("bootstrap", |c| c.bootstrap = vec!["no-port".into()]),
        ("bootstrap", |c| c.bootstrap = vec![":9092".into()]),
        ("bootstrap", |c| c.bootstrap = vec!["host:99999".into()]),
        ("client_id", |c| c.client_id = "  ".into()),
        ("request_timeout", |c| c.request_timeout = Duration::ZERO),
        ("topics.partitions", |c| c.topics.partitions = 0),
        ("topics.replication_factor", |c| c.topics.replication_factor = 0),
        ("producer.max_batch_bytes", |c| c.producer.max_batch_bytes = 0),
        ("producer.buffer_bytes", |c| c.producer.buffer_bytes = c.producer.max_batch_bytes - 1),
        ("producer.delivery_timeout", |c| c.producer.delivery_timeout = Duration::ZERO),
        ("producer.linger", |c| c.producer.linger = c.producer.delivery_timeout * 2),
        ("producer.retry_backoff", |c| c.producer.retry_backoff = Duration::ZERO),
        ("producer.max_in_flight", |c| c.producer.max_in_flight = 0),
        ("producer.max_in_flight", |c| c.producer.max_in_flight = 6),
        ("producer.max_in_flight", |c| {
            c.producer.idempotence = false;
            c.producer.max_in_flight = 6;
        }),
        ("consumer.session_timeout", |c| c.consumer.session_timeout = Duration::from_millis(999)),
        ("consumer.heartbeat_interval", |c| c.consumer.heartbeat_interval = Duration::ZERO),
        ("consumer.heartbeat_interval", |c| {
            c.consumer.heartbeat_interval = c.consumer.session_timeout / 2;
        }),
        ("consumer.fetch_max_bytes", |c| c.consumer.fetch_max_bytes = 0),
        ("consumer.fetch_max_bytes", |c| c.consumer.fetch_max_bytes = MAX_FETCH_BYTES + 1),
        ("consumer.max_decompressed_batch_bytes", |c| c.consumer.max_decompressed_batch_bytes = 0),
        ("consumer.partition_buffer_bytes", |c| {
            c.consumer.partition_buffer_bytes = c.consumer.max_decompressed_batch_bytes;
        }),
        ("consumer.partition_buffer_bytes", |c| {
            // Raising the fetch size without the buffer: a response and its largest batch
            // would not fit.
            c.consumer.fetch_max_bytes = 64 * 1024 * 1024;
        }),
        ("consumer.partition_buffer_bytes", |c| {
            c.consumer.partition_buffer_bytes = MAX_PARTITION_BUFFER_BYTES + 1;
        }),
        ("consumer.assignors", |c| c.consumer.assignors.clear()),
        ("consumer.assignors", |c| c.consumer.assignors = vec!["fancy".into()]),
        ("consumer.assignors", |c| c.consumer.assignors = vec!["range".into(), "range".into()]),
        ("metadata.max_age", |c| c.metadata.max_age = Duration::from_millis(99)),
    ];
    for (field, breaks) in cases {
        let mut broken = config();
        breaks(&mut broken);
        let error = broken.validate().expect_err(field);
        assert_eq!(error.field, *field, "{error:?}");
        assert!(!error.reason.is_empty(), "{field}: no reason given");
    }
    // The edges that are allowed.
    let mut edges = config();
    edges.consumer.fetch_max_bytes = MAX_FETCH_BYTES;
    edges.consumer.partition_buffer_bytes =
        MAX_FETCH_BYTES + FETCH_RESPONSE_SLACK + edges.consumer.max_decompressed_batch_bytes;
    edges.consumer.heartbeat_interval = edges.consumer.session_timeout / 3;
    edges.producer.linger = edges.producer.delivery_timeout;
    edges.producer.buffer_bytes = edges.producer.max_batch_bytes;
    assert_eq!(rejected_field(&edges), None);
    for max_in_flight in [1, 5] {
        for idempotence in [true, false] {
            let mut edge = config();
            edge.producer.max_in_flight = max_in_flight;
            edge.producer.idempotence = idempotence;
            assert_eq!(rejected_field(&edge), None, "{max_in_flight} {idempotence}");
        }
    }
}

#[test]
fn json_with_humantime_durations_and_omitted_fields_reads_as_the_defaults_plus_what_it_says() {
    let read: KafkaConfig = serde_json::from_str(
        r#"{
            "bootstrap": ["kafka-1:9092", "kafka-2:9092"],
            "partitioner": "fnv1a",
            "request_timeout": "45s",
            "producer": { "linger": "20ms", "compression": "zstd", "idempotence": false,
                          "max_in_flight": 3 },
            "consumer": {
                "session_timeout": "30s",
                "assignors": ["roundrobin"],
                "isolation_level": "read_uncommitted",
                "max_decompressed_batch_bytes": 8388608
            }
        }"#,
    )
    .unwrap();
    let mut expected = KafkaConfig::new("kafka-1:9092,kafka-2:9092");
    expected.partitioner = Partitioner::Fnv1a;
    expected.request_timeout = Duration::from_secs(45);
    expected.producer.linger = Duration::from_millis(20);
    expected.producer.compression = Compression::Zstd;
    expected.producer.idempotence = false;
    expected.producer.max_in_flight = 3;
    expected.consumer.session_timeout = Duration::from_secs(30);
    expected.consumer.assignors = vec!["roundrobin".into()];
    expected.consumer.isolation_level = IsolationLevel::ReadUncommitted;
    expected.consumer.max_decompressed_batch_bytes = 8 * 1024 * 1024;
    assert_eq!(read, expected);
    assert_eq!(KafkaConfig::default().consumer.isolation_level, IsolationLevel::ReadCommitted);
    assert_eq!(rejected_field(&read), None);
    // Written out and read back: the same.
    let written = serde_json::to_string(&read).unwrap();
    assert_eq!(serde_json::from_str::<KafkaConfig>(&written).unwrap(), read);
}

#[test]
fn unknown_fields_and_bad_values_are_refused_by_name() {
    let typo = serde_json::from_str::<KafkaConfig>(r#"{"producer": {"lingr": "5ms"}}"#)
        .expect_err("a misspelt field");
    assert!(typo.to_string().contains("lingr"), "{typo}");
    let codec = serde_json::from_str::<KafkaConfig>(r#"{"producer": {"compression": "brotli"}}"#)
        .expect_err("an unknown codec");
    assert!(codec.to_string().contains("brotli"), "{codec}");
    let duration = serde_json::from_str::<KafkaConfig>(r#"{"request_timeout": "soon"}"#)
        .expect_err("not a duration");
    assert!(duration.to_string().contains("soon") || duration.to_string().contains("duration"));
}

#[tokio::test]
async fn connect_refuses_a_bad_configuration_before_any_connection() {
    let mut bad = config();
    bad.consumer.assignors = vec!["fancy".into()];
    // Nothing listens on the port: a connection attempt would fail differently (or hang).
    bad.bootstrap = vec!["127.0.0.1:9".into()];
    match bus_kafka::connect(bad).await {
        Err(KafkaError::Config(error)) => assert_eq!(error.field, "consumer.assignors"),
        Err(other) => panic!("expected a configuration error, got {other}"),
        Ok(_) => panic!("a bad configuration was accepted"),
    }
}
