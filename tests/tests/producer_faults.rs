//! The producer when the broker goes away: a clear error within the delivery timeout, recovery
//! without rebuilding the bus once the broker is back, health following along; backpressure
//! (the buffer fills, publish waits, then `BufferFull`; closing wakes waiters with `Closed`;
//! many empty records fill it by what they hold, not by their payload);
//! and records in flight at shutdown failed back and counted. Each test runs its own broker
//! (a single-node Apache Kafka) that it stops and restarts; the shared cluster is never touched.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod producer_support;

use std::future::Future;
use std::task::Poll;
use std::time::Duration;

use bus_kafka::KafkaConfig;
use bus_kafka::health::Health;
use bus_kafka::{Record, errors::PublishError};
use producer_support::OwnBroker;
use tokio::time::Instant;

/// Generous slack over a timeout for "fails within" bounds on a shared, noisy machine.
const MARGIN: Duration = Duration::from_secs(10);

fn config(broker: &OwnBroker) -> KafkaConfig {
    let mut config = KafkaConfig::new(&broker.bootstrap());
    config.request_timeout = Duration::from_secs(2);
    config.topics.partitions = 3;
    config.producer.delivery_timeout = Duration::from_secs(4);
    config.producer.retry_backoff = Duration::from_millis(50);
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_down_fails_within_the_delivery_timeout_and_recovers_without_rebuilding() {
    let mut broker = OwnBroker::start();
    let config = config(&broker);
    let delivery_timeout = config.producer.delivery_timeout;
    let topic = bus_tests::unique("producer-down");
    bus_kafka::admin::connect(config.clone()).await.unwrap().ensure_topic(&topic, 3).await.unwrap();
    let bus = bus_kafka::connect(config).await.unwrap();
    let first = bus.publish(Record::new(topic.as_str(), "before").with_key("k")).await.unwrap();
    assert_eq!(bus.health(), Health::Ready);

    broker.stop();
    let started = Instant::now();
    let error = bus.publish(Record::new(topic.as_str(), "during").with_key("k")).await.unwrap_err();
    let took = started.elapsed();
    eprintln!("failed after {took:?}: {error}");
    assert!(took <= delivery_timeout + MARGIN, "failed after {took:?}");
    match &error {
        PublishError::DeliveryTimeout { topic: t, partition, attempts, last_error, .. } => {
            assert_eq!(t, &topic);
            assert_eq!(*partition, first.partition);
            assert!(*attempts >= 1);
            assert!(!last_error.is_empty());
        }
        other => panic!("expected DeliveryTimeout, got {other:?}"),
    }
    let text = error.to_string();
    assert!(text.contains(&topic) && text.contains("timed out"), "{text}");
    assert!(matches!(bus.health(), Health::Degraded { .. }), "{:?}", bus.health());

    // A topic never seen before fails within the delivery timeout as well.
    let started = Instant::now();
    let error = bus.publish(Record::new(bus_tests::unique("producer-new").as_str(), "x")).await;
    assert!(error.is_err(), "{error:?}");
    assert!(started.elapsed() <= delivery_timeout + MARGIN, "failed after {:?}", started.elapsed());

    broker.restart();
    let started = Instant::now();
    let after = bus.publish(Record::new(topic.as_str(), "after").with_key("k")).await.unwrap();
    eprintln!("recovered in {:?}", started.elapsed());
    assert_eq!(after.partition, first.partition);
    assert!(after.offset > first.offset);
    assert_eq!(bus.health(), Health::Ready);

    bus.shutdown(Duration::from_secs(10)).await.unwrap();
    assert_eq!(bus.live_tasks(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_buffer_makes_publish_wait_then_buffer_full_and_close_wakes_waiters() {
    let mut broker = OwnBroker::start();
    let mut config = config(&broker);
    config.producer.buffer_bytes = 6_000;
    config.producer.max_batch_bytes = 1_024;
    config.producer.publish_timeout = Duration::from_millis(1_500);
    config.producer.delivery_timeout = Duration::from_secs(60);
    let publish_timeout = config.producer.publish_timeout;
    let topic = bus_tests::unique("producer-backpressure");
    bus_kafka::admin::connect(config.clone()).await.unwrap().ensure_topic(&topic, 3).await.unwrap();
    let bus = bus_kafka::connect(config).await.unwrap();
    bus.publish(Record::new(topic.as_str(), "warm-up")).await.unwrap();
    broker.stop();

    // Four records of 1,000 bytes (each holding its bytes, topic name and a few hundred bytes of
    // bookkeeping) fit in the 6,000-byte buffer and stay pending.
    let mut pending = Vec::new();
    for i in 0..4 {
        let record = Record::new(topic.as_str(), vec![b'x'; 1_000]).with_key(format!("k{i}"));
        pending.push(bus.publish_nowait(record).await.unwrap());
    }
    // The fifth waits for room, then gives up.
    let started = Instant::now();
    match bus.publish_nowait(Record::new(topic.as_str(), vec![b'y'; 1_000])).await {
        Err(PublishError::BufferFull { needed, capacity, waited }) => {
            assert_eq!(capacity, 6_000);
            assert!((1_000..1_500).contains(&needed), "a record holds {needed} bytes");
            assert!(waited >= publish_timeout, "waited {waited:?}");
        }
        other => panic!("expected BufferFull, got {other:?}"),
    }
    assert!(started.elapsed() >= publish_timeout);

    // A publish waiting for room is failed with Closed as soon as the bus closes.
    let waiting = bus.publish_nowait(Record::new(topic.as_str(), vec![b'z'; 1_000]));
    tokio::pin!(waiting);
    let first_poll =
        std::future::poll_fn(|cx| Poll::Ready(waiting.as_mut().poll(cx).is_pending())).await;
    assert!(first_poll, "the publish waits for room");
    let started = Instant::now();
    let (waited, report) = tokio::join!(waiting, bus.shutdown(Duration::from_secs(2)));
    assert!(matches!(waited, Err(PublishError::Closed)), "{waited:?}");
    let report = report.unwrap();
    assert!(started.elapsed() < Duration::from_secs(2) + MARGIN);

    // The four pending records were failed back at the shutdown deadline, and counted.
    for future in pending {
        match future.await {
            Err(PublishError::NotAcknowledgedAtShutdown { topic: t }) => assert_eq!(t, topic),
            other => panic!("expected NotAcknowledgedAtShutdown, got {other:?}"),
        }
    }
    assert_eq!(report.failed, 4, "{report}");
    assert_eq!(bus.live_tasks(), 0);
}

/// The buffer bounds memory, not only payload bytes: with the broker stopped, empty records
/// fill a 1 MiB buffer after a few thousand (each holds its queue entry, delivery channel and
/// topic name, a few hundred bytes), not after a million (as when a record was charged its
/// payload, at least 1 byte: 5,000,000 empty records then held 1.77 GB).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_buffer_bounds_what_many_empty_records_hold() {
    let mut broker = OwnBroker::start();
    let mut config = config(&broker);
    config.producer.buffer_bytes = 1024 * 1024;
    config.producer.publish_timeout = Duration::from_millis(100);
    config.producer.delivery_timeout = Duration::from_secs(60);
    let topic = bus_tests::unique("producer-empty");
    bus_kafka::admin::connect(config.clone()).await.unwrap().ensure_topic(&topic, 3).await.unwrap();
    let bus = bus_kafka::connect(config).await.unwrap();
    bus.publish(Record::new(topic.as_str(), "warm-up")).await.unwrap();
    broker.stop();

    let mut pending = Vec::new();
    let full = loop {
        match bus.publish_nowait(Record::new(topic.as_str(), "")).await {
            Ok(delivery) => pending.push(delivery),
            Err(full @ PublishError::BufferFull { .. }) => break full,
            Err(other) => panic!("expected BufferFull, got {other:?}"),
        }
        assert!(pending.len() <= 2_000_000, "the buffer never filled");
    };
    println!("{} empty records filled 1 MiB; then: {full}", pending.len());
    assert!(
        (1_000..8_192).contains(&pending.len()),
        "{} empty records accepted by a 1 MiB buffer (at least 128 bytes each expected)",
        pending.len()
    );
    let report = bus.shutdown(Duration::from_secs(5)).await.unwrap();
    assert_eq!(report.failed, pending.len(), "every pending record failed back: {report}");
    assert_eq!(bus.live_tasks(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_in_flight_at_shutdown_are_acknowledged_or_failed_back() {
    let broker = OwnBroker::start();
    for deadline in [Duration::from_secs(20), Duration::ZERO] {
        let config = config(&broker);
        let topic = bus_tests::unique("producer-shutdown");
        let bus = bus_kafka::connect(config).await.unwrap();
        bus.publish(Record::new(topic.as_str(), "creates the topic")).await.unwrap();
        let mut pending = Vec::new();
        for i in 0..5_000u32 {
            let record = Record::new(topic.as_str(), vec![0u8; 200]).with_key(i.to_string());
            pending.push(bus.publish_nowait(record).await.unwrap());
        }
        let report = bus.shutdown(deadline).await.unwrap();
        assert_eq!(bus.live_tasks(), 0, "{}", bus.snapshot());
        let (mut acked, mut failed) = (0, 0);
        for future in pending {
            match future.await {
                Ok(_) => acked += 1,
                Err(PublishError::NotAcknowledgedAtShutdown { .. }) => failed += 1,
                Err(other) => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(acked + failed, 5_000);
        assert_eq!(report.failed, failed, "{report}");
        assert!(report.flushed <= acked, "{report}");
        if deadline > Duration::ZERO {
            assert_eq!(failed, 0, "a generous deadline lets everything be acknowledged: {report}");
        }
        eprintln!("deadline {deadline:?}: {acked} acknowledged, {failed} failed back; {report}");
    }
}
