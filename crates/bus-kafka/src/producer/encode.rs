//! Kafka record batches (magic 2), encoded straight from the bus's records.
//!
//! Owns: [`record_batch`] (one batch of a partition's records, optionally compressed),
//! [`Stamp`] (the idempotent producer's fields of a batch) and [`restamp`] (an encoded batch
//! given other ones), and [`estimate`] (the bytes a record takes in an uncompressed batch, from
//! above).
//!
//! Invariants:
//! - The batch is what the Java client and librdkafka write: base offset 0, partition leader
//!   epoch -1, CreateTime timestamps, offset deltas 0..n, a CRC-32C over everything after the
//!   CRC field; the producer id, epoch and base sequence of its [`Stamp`] (-1, -1, -1 when not
//!   idempotent: [`Stamp::NONE`]).
//! - Restamping changes those three fields and the CRC only: the records (compressed or not)
//!   are copied as they are, never encoded again.
//! - Headers are written as given: in order, repeated names kept (Kafka allows both).
//! - Keys, values and headers are copied once, from their `Bytes` into the batch buffer; no
//!   per-record allocation. Compression (gzip, snappy in Kafka's xerial framing, lz4 frames,
//!   zstd) uses kafka-protocol's codecs, the same the partition readers (`fetch`) decode with.

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::compression::{Compressor, Gzip, Lz4, Snappy, Zstd};

use super::Entry;
use crate::config::Compression;

/// The bytes of a record batch's header (base offset through record count).
pub(super) const BATCH_HEADER_BYTES: usize = 61;

/// Where the CRC-32C is, and where what it covers starts (the attributes).
const CRC_AT: usize = 17;
const CRC_FROM: usize = 21;
/// Where the producer id is (then the epoch, i16, and the base sequence, i32).
const PRODUCER_ID_AT: usize = 43;

/// The idempotent producer's fields of a record batch: who wrote it, in which epoch, and the
/// sequence number of its first record (the others follow it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Stamp {
    /// The producer id (InitProducerId).
    pub(super) producer_id: i64,
    /// The producer's epoch.
    pub(super) epoch: i16,
    /// The sequence number of the batch's first record on its partition.
    pub(super) base_sequence: i32,
}

impl Stamp {
    /// A batch of a producer that is not idempotent.
    pub(super) const NONE: Stamp = Stamp { producer_id: -1, epoch: -1, base_sequence: -1 };
}

/// The bytes a record takes in an uncompressed record batch, estimated from above: key, value,
/// header names and values, plus the varints around them (record length, attributes,
/// timestamp and offset deltas, lengths: at most 26 bytes for the record and 10 per header).
/// Batches are cut by this, so that a request stays within `producer.max_batch_bytes` plus the
/// batch header.
pub(super) fn estimate(entry: &Entry) -> usize {
    let record = &entry.record;
    record.key.as_ref().map_or(0, Bytes::len)
        + record.value.as_ref().map_or(0, Bytes::len)
        + record.headers.iter().map(|h| h.name.len() + h.value.len() + 10).sum::<usize>()
        + 26
}

/// Encodes `batch` (in order, at least one record, each with its timestamp set) as one record
/// batch stamped with `stamp`, compressed as configured.
///
/// # Errors
///
/// A description when the batch cannot be encoded (a field beyond Kafka's limits, a codec
/// failing).
pub(super) fn record_batch(
    batch: &[Entry],
    compression: Compression,
    size_hint: usize,
    stamp: Stamp,
) -> Result<Bytes, String> {
    let count = i32::try_from(batch.len()).map_err(|_| "too many records in one batch")?;
    let timestamp = |e: &Entry| e.record.timestamp.map_or(0, |t| t.timestamp_millis());
    let first_timestamp = batch.first().map_or(0, timestamp);
    let max_timestamp = batch.iter().map(timestamp).max().unwrap_or(first_timestamp);
    let mut out = BytesMut::with_capacity(BATCH_HEADER_BYTES + size_hint);
    out.put_i64(0); // base offset
    let length_at = out.len();
    out.put_i32(0); // batch length, patched below
    let length_from = out.len();
    out.put_i32(-1); // partition leader epoch
    out.put_i8(2); // magic
    let crc_at = out.len();
    out.put_u32(0); // CRC, patched below
    let crc_from = out.len();
    let codec: i16 = match compression {
        Compression::None => 0,
        Compression::Gzip => 1,
        Compression::Snappy => 2,
        Compression::Lz4 => 3,
        Compression::Zstd => 4,
    };
    out.put_i16(codec); // attributes: the codec, CreateTime, not transactional, not control
    out.put_i32(count - 1); // last offset delta
    out.put_i64(first_timestamp);
    out.put_i64(max_timestamp);
    out.put_i64(stamp.producer_id);
    out.put_i16(stamp.epoch);
    out.put_i32(stamp.base_sequence);
    out.put_i32(count);
    let records = |buf: &mut BytesMut| {
        write_records(buf, batch, first_timestamp)?;
        Ok(())
    };
    let compressed = match compression {
        Compression::None => {
            write_records(&mut out, batch, first_timestamp).map_err(|e| e.to_string())?;
            Ok(())
        }
        Compression::Gzip => <Gzip as Compressor<BytesMut>>::compress(&mut out, records),
        Compression::Snappy => <Snappy as Compressor<BytesMut>>::compress(&mut out, records),
        Compression::Lz4 => <Lz4 as Compressor<BytesMut>>::compress(&mut out, records),
        Compression::Zstd => <Zstd as Compressor<BytesMut>>::compress(&mut out, records),
    };
    compressed.map_err(|e| format!("cannot compress the batch ({compression:?}): {e}"))?;
    let length = i32::try_from(out.len() - length_from).map_err(|_| "the batch is too large")?;
    out[length_at..length_at + 4].copy_from_slice(&length.to_be_bytes());
    let crc = crc32c::crc32c(&out[crc_from..]);
    out[crc_at..crc_at + 4].copy_from_slice(&crc.to_be_bytes());
    Ok(out.freeze())
}

/// `batch` (encoded by [`record_batch`]) stamped with `stamp` instead: a copy with the producer
/// id, epoch and base sequence replaced and the CRC computed again.
pub(super) fn restamp(batch: &Bytes, stamp: Stamp) -> Bytes {
    if batch.len() < BATCH_HEADER_BYTES {
        // Not a batch of ours (never happens): left as it is, the broker will say so.
        return batch.clone();
    }
    let mut out = BytesMut::from(&batch[..]);
    let mut at = PRODUCER_ID_AT;
    for field in [
        &stamp.producer_id.to_be_bytes()[..],
        &stamp.epoch.to_be_bytes()[..],
        &stamp.base_sequence.to_be_bytes()[..],
    ] {
        out[at..at + field.len()].copy_from_slice(field);
        at += field.len();
    }
    let crc = crc32c::crc32c(&out[CRC_FROM..]);
    out[CRC_AT..CRC_AT + 4].copy_from_slice(&crc.to_be_bytes());
    out.freeze()
}

fn write_records(
    buf: &mut BytesMut,
    batch: &[Entry],
    first_timestamp: i64,
) -> Result<(), std::num::TryFromIntError> {
    for (offset_delta, entry) in batch.iter().enumerate() {
        let record = &entry.record;
        let timestamp_delta =
            record.timestamp.map_or(0, |t| t.timestamp_millis()).saturating_sub(first_timestamp);
        let offset_delta = i64::try_from(offset_delta)?;
        let key_len = match &record.key {
            Some(key) => i64::try_from(key.len())?,
            None => -1,
        };
        // A tombstone (null value) is written as length -1, as a missing key is.
        let value_len = match &record.value {
            Some(value) => i64::try_from(value.len())?,
            None => -1,
        };
        let header_count = i64::try_from(record.headers.len())?;
        let mut body = 1 // attributes
            + varint_len(timestamp_delta)
            + varint_len(offset_delta)
            + varint_len(key_len)
            + record.key.as_ref().map_or(0, Bytes::len)
            + varint_len(value_len)
            + record.value.as_ref().map_or(0, Bytes::len)
            + varint_len(header_count);
        for header in &record.headers {
            let (name, value) = (header.name.len(), header.value.len());
            body +=
                varint_len(i64::try_from(name)?) + name + varint_len(i64::try_from(value)?) + value;
        }
        buf.reserve(body + 5);
        put_varint(buf, i64::try_from(body)?);
        buf.put_i8(0); // attributes
        put_varint(buf, timestamp_delta);
        put_varint(buf, offset_delta);
        put_varint(buf, key_len);
        if let Some(key) = &record.key {
            buf.put_slice(key);
        }
        put_varint(buf, value_len);
        if let Some(value) = &record.value {
            buf.put_slice(value);
        }
        put_varint(buf, header_count);
        for header in &record.headers {
            put_varint(buf, i64::try_from(header.name.len())?);
            buf.put_slice(header.name.as_bytes());
            put_varint(buf, i64::try_from(header.value.len())?);
            buf.put_slice(&header.value);
        }
    }
    Ok(())
}

/// Kafka's zig-zag varint (varlong for 64 bits; a varint is the same for values in i32 range).
pub(crate) fn put_varint(buf: &mut BytesMut, value: i64) {
    let mut z = ((value << 1) ^ (value >> 63)) as u64;
    while z >= 0x80 {
        buf.put_u8((z as u8) | 0x80);
        z >>= 7;
    }
    buf.put_u8(z as u8);
}

fn varint_len(value: i64) -> usize {
    let z = ((value << 1) ^ (value >> 63)) as u64;
    (64 - (z | 1).leading_zeros() as usize).div_ceil(7)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bus_core::Record;
    use kafka_protocol::records::RecordBatchDecoder;

    fn entry(record: Record) -> Entry {
        Entry { record, size: 0, accepted: tokio::time::Instant::now(), delivery: None }
    }

    #[test]
    fn varints_match_kafka() {
        let mut buf = BytesMut::new();
        for (value, bytes) in [
            (0i64, &[0u8][..]),
            (-1, &[1]),
            (1, &[2]),
            (63, &[126]),
            (64, &[128, 1]),
            (-65, &[129, 1]),
        ] {
            buf.clear();
            put_varint(&mut buf, value);
            assert_eq!(&buf[..], bytes, "{value}");
            assert_eq!(varint_len(value), bytes.len(), "{value}");
        }
        assert_eq!(varint_len(i64::MAX), 10);
        assert_eq!(varint_len(i64::from(i32::MIN)), 5);
    }

    #[test]
    fn batches_decode_with_kafka_protocol_for_every_codec() {
        let at = chrono::DateTime::from_timestamp_millis(1_600_000_000_000).unwrap_or_default();
        let later = chrono::DateTime::from_timestamp_millis(1_600_000_000_250).unwrap_or_default();
        let batch = vec![
            entry(
                Record::new("t", "first")
                    .with_key("k1")
                    .with_header("a", "1")
                    .with_header("b", "2")
                    .with_header("a", "3")
                    .with_timestamp(at),
            ),
            entry(Record::new("t", vec![7u8; 300]).with_timestamp(later)),
            entry(Record::new("t", "").with_key("").with_timestamp(at)),
            entry(Record::tombstone("t", "gone").with_timestamp(at)),
        ];
        for compression in [
            Compression::None,
            Compression::Gzip,
            Compression::Snappy,
            Compression::Lz4,
            Compression::Zstd,
        ] {
            let mut bytes = record_batch(&batch, compression, 0, Stamp::NONE).unwrap_or_default();
            let set = RecordBatchDecoder::decode(&mut bytes);
            let set = match set {
                Ok(set) => set,
                Err(e) => panic!("{compression:?}: {e}"),
            };
            let records = set.records;
            assert_eq!(records.len(), 4, "{compression:?}");
            assert_eq!(records[0].key.as_deref(), Some(&b"k1"[..]));
            assert_eq!(records[0].value.as_deref(), Some(&b"first"[..]));
            assert_eq!(records[0].timestamp, 1_600_000_000_000);
            assert_eq!(records[1].timestamp, 1_600_000_000_250);
            assert_eq!(records[1].offset, 1);
            assert_eq!(records[1].key, None);
            assert_eq!(records[1].value.as_deref(), Some(&[7u8; 300][..]));
            assert_eq!(records[2].key.as_deref(), Some(&b""[..]));
            assert_eq!(records[2].value.as_deref(), Some(&b""[..]), "empty, not null");
            assert_eq!(records[3].value, None, "a tombstone is written with length -1");
            // kafka-protocol's decoder keeps one value per header name (an IndexMap); the
            // repeats are on the wire (checked against librdkafka in the broker tests).
            assert_eq!(records[0].headers.len(), 2);
        }
    }

    #[test]
    fn a_stamp_and_a_restamp_carry_the_producer_and_sequence_numbers_with_a_valid_crc() {
        let at = chrono::DateTime::from_timestamp_millis(1_600_000_000_000).unwrap_or_default();
        let batch: Vec<Entry> = (0..3)
            .map(|i| entry(Record::new("t", format!("v{i}")).with_key("k").with_timestamp(at)))
            .collect();
        let first = Stamp { producer_id: 7, epoch: 2, base_sequence: 40 };
        let again = Stamp { producer_id: 9, epoch: 0, base_sequence: 0 };
        for compression in [Compression::None, Compression::Zstd] {
            let stamped = record_batch(&batch, compression, 0, first).unwrap_or_default();
            let restamped = restamp(&stamped, again);
            assert_eq!(stamped.len(), restamped.len());
            for (bytes, stamp) in [(stamped, first), (restamped, again)] {
                let mut bytes = bytes;
                // The decoder checks the CRC-32C.
                let set = match RecordBatchDecoder::decode(&mut bytes) {
                    Ok(set) => set,
                    Err(e) => panic!("{compression:?} {stamp:?}: {e}"),
                };
                let sequences: Vec<i32> = set.records.iter().map(|r| r.sequence).collect();
                let base = stamp.base_sequence;
                assert_eq!(sequences, vec![base, base + 1, base + 2], "{compression:?}");
                for record in &set.records {
                    let producer = (record.producer_id, record.producer_epoch);
                    assert_eq!(producer, (stamp.producer_id, stamp.epoch));
                }
            }
        }
    }
}
