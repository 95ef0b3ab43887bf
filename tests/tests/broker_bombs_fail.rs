//! Through the real broker, the `fail` policy: record batches that inflate thousands of times,
//! written by a plain producer (see `bus_tests::bombs`), leave a consumer with the default
//! configuration under 256 MiB of peak RSS. The batches within
//! `consumer.max_decompressed_batch_bytes` are delivered; the partition stops at the first one
//! over it, named in the health with its offset and the limit. librdkafka's consumer reads the
//! same topic afterwards, for comparison (printed; recorded in docs/RELIABILITY.md).
//!
//! Its own test binary (one test), so that the peak is this consumer's alone. Shown to fail
//! without the bound (by hand): with kafka-protocol's zstd decompressor and no memory budget,
//! the peak passes the limit.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::Duration;

use bus_kafka::{SubscribeOptions, health::Health};
use bus_tests::bombs::*;
use bus_tests::{config, peak_rss, reset_peak_rss, unique, wait_for};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inflating_batches_under_the_fail_policy_stop_the_partition_in_health_under_256_mib() {
    let (topic, offsets) = topic().await;
    assert!(reset_peak_rss());
    let bus = bus_kafka::connect(config()).await.unwrap();
    let seen: Seen = Arc::default();
    let subscription =
        bus.subscribe(&topic, SubscribeOptions::new(unique("fail")), collect(&seen)).await.unwrap();
    wait_for("the partition named failed", PATIENCE, || {
        !subscription.failed_partitions().is_empty()
    })
    .await;
    let peak = peak_rss();
    let failure = subscription.failed_partitions().remove(0);
    assert_eq!(failure.offset, Some(offsets["bomb-0"]), "{}", failure.reason);
    assert!(failure.reason.contains("consumer.max_decompressed_batch_bytes"), "{}", failure.reason);
    let Health::Degraded { reason } = bus.health() else { panic!("{:?}", bus.health()) };
    assert!(
        reason.contains(&format!("`{topic}-0` stopped at offset {}", offsets["bomb-0"])),
        "{reason}"
    );
    // Everything before the first bomb, nothing after it.
    wait_for("the records before it", PATIENCE, || seen.lock().unwrap().len() == FITS + 1).await;
    let names: Vec<String> = seen.lock().unwrap().iter().map(|(n, _)| n.clone()).collect();
    let mut expected: Vec<String> = (0..FITS).map(|i| format!("fits-{i}")).collect();
    expected.push("good-0".into());
    // Each record has its own key: the bus promises order per key, not across keys.
    let mut names = names;
    names.sort();
    expected.sort();
    assert_eq!(names, expected);
    // Whole: every `fits-*` record (in whatever order they came among the keys).
    let fits = seen.lock().unwrap().iter().filter(|(n, _)| n.starts_with("fits-")).count();
    assert_eq!(fits, FITS);
    assert!(
        seen.lock()
            .unwrap()
            .iter()
            .filter(|(n, _)| n.starts_with("fits-"))
            .all(|(_, len)| { *len == FIT_BYTES })
    );
    eprintln!("bus (fail policy): peak RSS {} MiB", peak >> 20);
    assert!(peak < LIMIT, "peak RSS {} MiB", peak >> 20);
    drop(subscription);
    bus.shutdown(Duration::from_secs(10)).await.unwrap();

    let (rdkafka, delivered, errors) = librdkafka_peak(&topic);
    eprintln!(
        "librdkafka on the same topic: peak RSS {} MiB, {delivered} delivered, errors {errors:?}",
        rdkafka >> 20
    );
}
