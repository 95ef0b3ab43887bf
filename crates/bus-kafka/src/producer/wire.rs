//! The mapping from bus-core records to rskafka's records, and of the configured compression.
//!
//! Owns: [`records`] and [`compression`].
//!
//! Limitation (rskafka 0.6): a record's headers are a `BTreeMap<String, Vec<u8>>` there, so on
//! the wire headers come out sorted by name, and a name repeated in one record keeps only its
//! last value. bus-core's `Headers` allow repeated names in any order; the envelope's `X-*`
//! headers are unique, so envelopes are unaffected. Values are copied once per produce attempt
//! (rskafka takes owned `Vec<u8>`s).

use chrono::Utc;
use rskafka::client::partition::Compression as WireCompression;
use rskafka::record::Record as WireRecord;

use super::Entry;
use crate::config::Compression;

/// rskafka's records for a batch, in order. A record without a timestamp gets the time now
/// (the partition loop stamps records with their publish time before the first attempt, so
/// retries send the same timestamp).
pub(super) fn records(batch: &[Entry]) -> Vec<WireRecord> {
    let now = Utc::now();
    batch
        .iter()
        .map(|entry| {
            let record = &entry.record;
            WireRecord {
                key: record.key.as_ref().map(|k| k.to_vec()),
                value: Some(record.value.to_vec()),
                headers: record
                    .headers
                    .iter()
                    .map(|h| (h.name.clone(), h.value.to_vec()))
                    .collect(),
                timestamp: record.timestamp.unwrap_or(now),
            }
        })
        .collect()
}

/// The bytes a record takes in an uncompressed record batch, estimated from above: key, value,
/// header names and values, plus the varints around them (record length, attributes,
/// timestamp and offset deltas, lengths: at most 5 bytes each, 26 in all for the record and 10
/// per header). Batches are cut by this, so that a request stays within `max_batch_bytes` plus
/// the batch header (61 bytes) on the wire.
pub(super) fn estimate(entry: &Entry) -> usize {
    let record = &entry.record;
    record.key.as_ref().map_or(0, |k| k.len())
        + record.value.len()
        + record.headers.iter().map(|h| h.name.len() + h.value.len() + 10).sum::<usize>()
        + 26
}

/// rskafka's compression for the configured one.
pub(super) fn compression(compression: Compression) -> WireCompression {
    match compression {
        Compression::None => WireCompression::NoCompression,
        Compression::Gzip => WireCompression::Gzip,
        Compression::Snappy => WireCompression::Snappy,
        Compression::Lz4 => WireCompression::Lz4,
        Compression::Zstd => WireCompression::Zstd,
    }
}
