//! Record batches that inflate thousands of times, written through the real broker by a plain
//! producer (librdkafka, zstd, each record its own batch, one partition): what the
//! `broker_bombs_*` tests consume, and librdkafka's consumer on the same topic for comparison.
//!
//! The records: `FITS` records of `FIT_BYTES` zero bytes (within the default
//! `consumer.max_decompressed_batch_bytes`), then `BOMBS` times a small `good-<i>` followed by
//! a `bomb-<i>` of `BOMB_BYTES` zero bytes (over it), then a last `good-<BOMBS>`. 20 bombs of
//! 60 MB are the measurement: about 64 KB on the wire, 1.2 GB inflated.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bus_kafka::Message;

use crate::{bootstrap, config, run_peer, unique};

/// Records within the limit.
pub const FITS: usize = 10;
/// Their size.
pub const FIT_BYTES: usize = 8_000_000;
/// Records over the limit.
pub const BOMBS: usize = 20;
/// Their size.
pub const BOMB_BYTES: usize = 60_000_000;
/// The peak RSS a consumer with the default configuration stays under.
pub const LIMIT: u64 = 256 * 1024 * 1024;
/// How long a test waits for what it expects.
pub const PATIENCE: Duration = Duration::from_secs(120);

/// A topic of one partition with the records, and the offset of each by name.
///
/// # Panics
///
/// When the topic cannot be made or the producer fails.
pub async fn topic() -> (String, BTreeMap<String, i64>) {
    let topic = unique("bombs");
    bus_kafka::admin::connect(config()).await.unwrap().ensure_topic(&topic, 1).await.unwrap();
    let out = run_peer(
        "bomb_peer.py",
        &[
            "produce",
            "--bootstrap",
            &bootstrap(),
            "--topic",
            &topic,
            "--fits",
            &FITS.to_string(),
            "--fit-bytes",
            &FIT_BYTES.to_string(),
            "--bombs",
            &BOMBS.to_string(),
            "--bomb-bytes",
            &BOMB_BYTES.to_string(),
            "--codec",
            "zstd",
        ],
        "",
    );
    let offsets = out["offsets"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_i64().unwrap()))
        .collect();
    (topic, offsets)
}

/// What a handler saw: (record key, value length), in order.
pub type Seen = Arc<Mutex<Vec<(String, usize)>>>;

/// What a [`collect`] handler's call returns.
pub type Handled = std::future::Ready<Result<(), bus_kafka::HandlerError>>;

/// A handler recording what it sees in `seen`.
pub fn collect(seen: &Seen) -> impl Fn(Message) -> Handled + Send + Sync + 'static {
    let seen = Arc::clone(seen);
    move |m: Message| {
        let name = String::from_utf8_lossy(m.key.as_deref().unwrap_or_default()).into_owned();
        seen.lock().unwrap().push((name, m.payload().len()));
        std::future::ready(Ok(()))
    }
}

/// librdkafka's consumer on `topic` (defaults, its own group) until idle for 20 s: its peak
/// RSS in bytes, the records it delivered, its errors.
///
/// # Panics
///
/// When the peer fails.
pub fn librdkafka_peak(topic: &str) -> (u64, usize, Vec<String>) {
    let out = run_peer(
        "bomb_peer.py",
        &[
            "consume",
            "--bootstrap",
            &bootstrap(),
            "--topic",
            topic,
            "--group",
            &unique("rdkafka"),
            "--idle",
            "20",
        ],
        "",
    );
    let delivered = out["delivered"].as_array().unwrap().len();
    let errors = out["errors"].as_array().unwrap().iter().map(|e| e.to_string()).collect();
    (out["peak_rss_kib"].as_u64().unwrap() * 1024, delivered, errors)
}
