//! The bus's metrics through the `metrics` facade, served as Prometheus text by
//! metrics-exporter-prometheus (as `crates/bus-kafka/examples/metrics.rs` does) and scraped over
//! HTTP on loopback: publish and consume metrics appear with their topic, partition and group
//! labels.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::time::Duration;

use bus_kafka::{Message, Record, SubscribeOptions};
use metrics_exporter_prometheus::PrometheusBuilder;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

/// The bound on anything the test waits for.
const DEADLINE: Duration = Duration::from_secs(60);

/// `GET /metrics` over a plain HTTP/1.1 connection: the response body.
async fn scrape(addr: SocketAddr) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let request = format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    tokio::time::timeout(DEADLINE, stream.read_to_string(&mut response)).await.unwrap().unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    response.split_once("\r\n\r\n").map(|(_, body)| body.to_owned()).unwrap_or_default()
}

/// The value of the sample whose line starts with `name{` and contains every label in `labels`.
fn sample(text: &str, name: &str, labels: &[&str]) -> Option<f64> {
    text.lines()
        .filter(|line| line.starts_with(&format!("{name}{{")))
        .filter(|line| labels.iter().all(|label| line.contains(label)))
        .find_map(|line| line.rsplit(' ').next().and_then(|v| v.parse().ok()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bus_metrics_are_scraped_as_prometheus_text_with_their_labels() {
    let port = bus_tests::free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    PrometheusBuilder::new().with_http_listener(addr).install().unwrap();

    let topic = bus_tests::unique("metrics");
    let group = bus_tests::unique("metrics-group");
    let config = bus_tests::config();
    bus_kafka::admin::connect(config.clone()).await.unwrap().ensure_topic(&topic, 2).await.unwrap();
    let bus = bus_kafka::connect(config).await.unwrap();
    let (seen_tx, mut seen) = mpsc::unbounded_channel::<i64>();
    let subscription = bus
        .subscribe(&topic, SubscribeOptions::new(&group), move |message: Message| {
            let seen = seen_tx.clone();
            async move {
                let _ = seen.send(message.offset);
                Ok(())
            }
        })
        .await
        .unwrap();
    const RECORDS: usize = 20;
    for i in 0..RECORDS {
        let record = Record::new(topic.as_str(), format!("{i}")).with_partition(0);
        bus.publish(record).await.unwrap();
    }
    for _ in 0..RECORDS {
        tokio::time::timeout(DEADLINE, seen.recv()).await.unwrap().unwrap();
    }

    // The handlers have returned (and counted) once the bus's own count says so.
    bus_tests::wait_for("the handlers to return", DEADLINE, || {
        bus.metrics().handled >= RECORDS as u64
    })
    .await;
    let topic_label = format!("topic=\"{topic}\"");
    let text = scrape(addr).await;
    let acked = sample(
        &text,
        "bus_publish_records_total",
        &[&topic_label, "partition=\"0\"", "outcome=\"acked\""],
    );
    assert_eq!(acked, Some(RECORDS as f64), "{text}");
    assert!(text.contains("bus_publish_latency_seconds"), "{text}");
    assert!(text.contains("bus_publish_batch_records"), "{text}");
    let group_label = format!("group=\"{group}\"");
    let handled = sample(
        &text,
        "bus_consumer_messages_total",
        &[&group_label, &topic_label, "outcome=\"handled\""],
    );
    assert_eq!(handled, Some(RECORDS as f64), "{text}");
    assert!(text.contains("bus_consumer_handler_seconds"), "{text}");
    // The lag of partition 0 as its last fetch saw it: everything handled, nothing behind.
    let lag = sample(&text, "bus_consumer_position_lag", &[&group_label, "partition=\"0\""]);
    assert_eq!(lag, Some(0.0), "{text}");

    subscription.unsubscribe(Duration::from_secs(10)).await.unwrap();
    bus.shutdown(Duration::from_secs(10)).await.unwrap();
}
