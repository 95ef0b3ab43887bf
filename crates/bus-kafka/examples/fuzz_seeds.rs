//! Seeds for the fuzz targets from real traffic: runs the bus against a broker (every codec,
//! a consumer group, commits, leaving) with every response its connections read captured, then
//! writes what the fuzz targets take as input under `<out>/<target>/real-*`: response frames
//! (`responses`), the records fields of Fetch responses (`record_batches`), the members'
//! subscriptions and the assignments the group exchanged (`consumer_protocol`), and envelopes
//! (`envelope`).
//!
//! ```sh
//! KAFKA_BOOTSTRAP=127.0.0.1:9092 \
//!     cargo run -p bus-kafka --features fuzzing --example fuzz_seeds -- fuzz/corpus
//! ```
//! (`cargo xtask fuzz --seeds` does this against the test broker.) A seed is named by a hash of
//! its content, so running it again adds only what is new; seeds over 64 KiB are left out.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bus_kafka::{Envelope, KafkaConfig, Message, Record, SubscribeOptions, config::Compression};
use bytes::Bytes;
use kafka_protocol::messages::{FetchResponse, JoinGroupResponse, SyncGroupResponse};
use kafka_protocol::protocol::{Decodable, HeaderVersion};

/// The largest seed kept.
const MAX_SEED: usize = 64 * 1024;
/// Records per codec.
const RECORDS: usize = 12;
/// Response frames kept per kind and version (of a run).
const PER_KIND: usize = 4;
/// Envelopes kept (of a run).
const ENVELOPES: usize = 10;

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("fuzz_seeds: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), String> {
    let out = PathBuf::from(std::env::args().nth(1).ok_or("usage: fuzz_seeds <corpus dir>")?);
    let bootstrap =
        std::env::var("KAFKA_BOOTSTRAP").map_err(|_| "set KAFKA_BOOTSTRAP to a broker")?;
    let capture = out.join(".capture");
    let _ = std::fs::remove_dir_all(&capture);
    bus_kafka::fuzzing::capture_responses(&capture)?;
    let mut envelopes = Vec::new();
    for (name, codec) in [
        ("none", Compression::None),
        ("gzip", Compression::Gzip),
        ("snappy", Compression::Snappy),
        ("lz4", Compression::Lz4),
        ("zstd", Compression::Zstd),
    ] {
        traffic(&bootstrap, name, codec, &mut envelopes).await?;
    }
    let written = seeds(&capture, &out, &envelopes)?;
    let _ = std::fs::remove_dir_all(&capture);
    for (target, n) in written {
        eprintln!("{target}: {n} new seed(s)");
    }
    Ok(())
}

/// Publishes and consumes in a group of its own on a topic of its own, compressed with `codec`.
async fn traffic(
    bootstrap: &str,
    name: &str,
    codec: Compression,
    envelopes: &mut Vec<Vec<u8>>,
) -> Result<(), String> {
    let mut config = KafkaConfig::new(bootstrap);
    config.producer.compression = codec;
    config.consumer.heartbeat_interval = Duration::from_millis(300);
    let bus = bus_kafka::connect(config).await.map_err(|e| e.to_string())?;
    let topic = format!("fuzz-seeds-{name}-{}", std::process::id());
    for i in 0..RECORDS {
        let envelope = Envelope::new(
            format!("order-{i}"),
            "OrderPlaced",
            1,
            serde_json::json!({ "total": i, "lines": [{"sku": "a", "qty": 2}] }),
        )
        .map_err(|e| e.to_string())?
        .with_trace_id(format!("trace-{i}"));
        envelopes.push(envelope.to_json().map_err(|e| e.to_string())?);
        let record = if i % 3 == 0 {
            Record::new(&topic, format!("plain {i}")).with_key(format!("k{}", i % 4))
        } else {
            envelope.to_record(&topic).map_err(|e| e.to_string())?
        };
        bus.publish(record).await.map_err(|e| e.to_string())?;
    }
    let seen = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&seen);
    let options = SubscribeOptions::new(format!("fuzz-seeds-{name}"))
        .with_commit_interval(Duration::from_millis(200));
    let subscription = bus
        .subscribe(&topic, options, move |_m: Message| {
            count.fetch_add(1, Ordering::Relaxed);
            async { Ok(()) }
        })
        .await
        .map_err(|e| e.to_string())?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while seen.load(Ordering::Relaxed) < RECORDS {
        if tokio::time::Instant::now() > deadline {
            return Err(format!(
                "{topic}: only {} of {RECORDS} records consumed",
                seen.load(Ordering::Relaxed)
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A few heartbeats and commits.
    tokio::time::sleep(Duration::from_secs(1)).await;
    subscription.unsubscribe(Duration::from_secs(10)).await.map_err(|e| e.to_string())?;
    bus.shutdown(Duration::from_secs(10)).await.map_err(|e| e.to_string())?;
    Ok(())
}

/// Writes the seeds derived from the captured responses; returns how many are new per target.
fn seeds(
    capture: &Path,
    out: &Path,
    envelopes: &[Vec<u8>],
) -> Result<BTreeMap<&'static str, usize>, String> {
    let mut written = BTreeMap::new();
    let mut write = |target: &'static str, bytes: &[u8]| -> Result<(), String> {
        if bytes.len() > MAX_SEED {
            return Ok(());
        }
        let dir = out.join(target);
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let path = dir.join(format!("real-{:016x}", fnv1a(bytes)));
        if !path.exists() {
            std::fs::write(&path, bytes).map_err(|e| e.to_string())?;
            *written.entry(target).or_insert(0) += 1;
        }
        Ok(())
    };
    let mut files: Vec<PathBuf> = std::fs::read_dir(capture)
        .map_err(|e| e.to_string())?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    files.sort();
    let mut per_kind: BTreeMap<(String, i16), usize> = BTreeMap::new();
    for file in files {
        let input = std::fs::read(&file).map_err(|e| e.to_string())?;
        let name = file.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        let Some((api, version)) = name.split_once("-v") else { continue };
        let Ok(version) = version.split('-').next().unwrap_or_default().parse::<i16>() else {
            continue;
        };
        let kept = per_kind.entry((api.to_owned(), version)).or_insert(0);
        if *kept < PER_KIND {
            *kept += 1;
            write("responses", &input)?;
        }
        // [kind][version offset][size][correlation][header rest + body]
        let Some(frame) = input.get(10..) else { continue };
        match api {
            "Fetch" => {
                if let Some(response) = body::<FetchResponse>(frame, version) {
                    for topic in response.responses {
                        for partition in topic.partitions {
                            let Some(records) = partition.records.filter(|r| !r.is_empty()) else {
                                continue;
                            };
                            for mode in [0u8, 1] {
                                let mut seed = vec![mode, 0];
                                seed.extend_from_slice(&records);
                                write("record_batches", &seed)?;
                            }
                        }
                    }
                }
            }
            "JoinGroup" => {
                if let Some(response) = body::<JoinGroupResponse>(frame, version) {
                    for member in response.members {
                        write("consumer_protocol", &member.metadata)?;
                    }
                }
            }
            "SyncGroup" => {
                if let Some(response) = body::<SyncGroupResponse>(frame, version) {
                    write("consumer_protocol", &response.assignment)?;
                }
            }
            _ => {}
        }
    }
    for envelope in envelopes.iter().step_by(envelopes.len().div_ceil(ENVELOPES).max(1)) {
        write("envelope", envelope)?;
    }
    Ok(written)
}

/// A response body after its header (the header's length depends on the version).
fn body<R: Decodable + HeaderVersion>(frame: &[u8], version: i16) -> Option<R> {
    let mut bytes = Bytes::copy_from_slice(frame);
    if R::header_version(version) >= 1 {
        // The header's tagged fields: a count (no captured response carries any).
        let _ = bytes.split_to(1);
    }
    R::decode(&mut bytes, version).ok()
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}
