//! Through the real broker, the `skip` policy: the same batches (see `bus_tests::bombs`) leave a
//! consumer with the default configuration under 256 MiB of peak RSS; every record within
//! `consumer.max_decompressed_batch_bytes` is delivered and each batch over it goes whole to
//! the dead-letter topic, its headers naming its offsets and the limit.
//!
//! Its own test binary (one test), so that the peak is this consumer's alone.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bus_kafka::{Message, SubscribeOptions, headers::dead_letter, subscription::UnreadableBatches};
use bus_tests::bombs::*;
use bus_tests::{config, peak_rss, reset_peak_rss, unique, wait_for};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inflating_batches_under_the_skip_policy_go_to_the_dead_letter_topic_under_256_mib() {
    let (topic, offsets) = topic().await;
    assert!(reset_peak_rss());
    let bus = bus_kafka::connect(config()).await.unwrap();
    let seen: Seen = Arc::default();
    let options =
        SubscribeOptions::new(unique("skip")).with_unreadable_batches(UnreadableBatches::Skip);
    let subscription = bus.subscribe(&topic, options, collect(&seen)).await.unwrap();
    wait_for("every record that fits", PATIENCE, || seen.lock().unwrap().len() == FITS + BOMBS + 1)
        .await;
    let peak = peak_rss();
    let names: Vec<String> = seen.lock().unwrap().iter().map(|(n, _)| n.clone()).collect();
    let mut expected: Vec<String> = (0..FITS).map(|i| format!("fits-{i}")).collect();
    expected.extend((0..=BOMBS).map(|i| format!("good-{i}")));
    // Each record has its own key: the bus promises order per key, not across keys.
    let mut names = names;
    names.sort();
    expected.sort();
    assert_eq!(names, expected);
    assert_eq!(bus.metrics().batches_dead_lettered, BOMBS as u64);
    assert!(subscription.failed_partitions().is_empty());
    // The dead-letter topic holds each bomb whole, named by its offsets and the limit.
    let dead: Arc<Mutex<Vec<Message>>> = Arc::default();
    let sink = Arc::clone(&dead);
    let _dlq = bus
        .subscribe(
            &format!("{topic}.dlq"),
            SubscribeOptions::new(unique("dlq")),
            move |m: Message| {
                sink.lock().unwrap().push(m);
                async { Ok(()) }
            },
        )
        .await
        .unwrap();
    wait_for("the dead letters", PATIENCE, || dead.lock().unwrap().len() == BOMBS).await;
    let peak = peak.max(peak_rss());
    let mut firsts = Vec::new();
    for m in dead.lock().unwrap().iter() {
        let h = |name| m.headers.get_str(name).unwrap().to_owned();
        assert_eq!(h(dead_letter::REASON), "unreadable-batch");
        assert_eq!(h(dead_letter::FIRST_OFFSET), h(dead_letter::LAST_OFFSET));
        assert!(h(dead_letter::ERROR).contains("consumer.max_decompressed_batch_bytes"));
        assert!(
            m.payload().len() < 64 * 1024,
            "the raw batch as received: {} bytes",
            m.payload().len()
        );
        firsts.push(h(dead_letter::FIRST_OFFSET).parse::<i64>().unwrap());
    }
    firsts.sort_unstable();
    let bombs: Vec<i64> = (0..BOMBS).map(|i| offsets[&format!("bomb-{i}")]).collect();
    assert_eq!(firsts, bombs, "one dead letter per bomb, by its offsets");
    eprintln!("bus (skip policy): peak RSS {} MiB", peak >> 20);
    assert!(peak < LIMIT, "peak RSS {} MiB", peak >> 20);
    drop(subscription);
    bus.shutdown(Duration::from_secs(10)).await.unwrap();
}
