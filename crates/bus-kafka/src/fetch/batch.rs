//! Decoding the record batches of a Fetch response straight into the bus's [`Message`]s.
//!
//! Owns: [`decode`] (every record batch of one partition's `records` field, from a position)
//! and [`Decoded`] (the messages and the position after them).
//!
//! Invariants:
//! - Zero-copy: keys, values and header values are `Bytes` slices of the response (or of the
//!   decompressed records of a compressed batch); a message costs no allocation of its own
//!   beyond its header names (there are none on most records). Every message of a partition
//!   shares its topic's `Arc<str>`.
//! - Only record batches of magic 2 are read (Fetch v4 and later return nothing else from a
//!   log written in that format); each batch's CRC-32C is checked before anything in it is
//!   used. A batch cut short at the end of the response (the broker fills up to the byte limit)
//!   is left for the next fetch.
//! - Records below `from` are skipped (a batch is returned whole even when the position is in
//!   its middle); control batches (transaction markers) yield nothing. The position after a
//!   batch is its last offset + 1 (its last offset delta), so compacted gaps and trailing
//!   control batches are stepped over rather than fetched again.
//! - Header order and repeated names are kept as written.
//! - Nothing here panics on what the broker sent: a malformed batch is an error naming the
//!   offset.

use std::sync::Arc;

use bus_core::{Header, Headers, Message};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use kafka_protocol::compression::{Decompressor, Gzip, Lz4, Snappy, Zstd};

/// The bytes of a record batch's header (base offset through record count).
const BATCH_HEADER_BYTES: usize = 61;
/// Where the batch's magic byte is.
const MAGIC_AT: usize = 16;
/// Where the CRC-covered part of a batch starts (its attributes).
const CRC_FROM: usize = 21;

/// The messages decoded from a partition's records and the position after them.
#[derive(Debug, Default)]
pub(crate) struct Decoded {
    /// The messages at or above the position asked for, in offset order.
    pub(crate) messages: Vec<Message>,
    /// The offset after the last complete batch read (`None` when there was none).
    pub(crate) next: Option<i64>,
}

/// Decodes every complete record batch in `records` into messages of `topic`/`partition`,
/// skipping records below `from`.
///
/// # Errors
///
/// A description of the first malformed batch (bad CRC, unknown magic or codec, a record
/// running past its batch), naming its base offset.
pub(crate) fn decode(
    records: &Bytes,
    topic: &Arc<str>,
    partition: i32,
    from: i64,
) -> Result<Decoded, String> {
    let mut decoded = Decoded { messages: Vec::with_capacity(count_records(records)), next: None };
    let mut at = 0;
    while records.len() - at >= 12 {
        let base_offset = i64::from_be_bytes(array(records, at)?);
        let length = i32::from_be_bytes(array(records, at + 8)?);
        let total = usize::try_from(length)
            .ok()
            .map(|l| l + 12)
            .filter(|&t| t >= BATCH_HEADER_BYTES)
            .ok_or_else(|| format!("record batch at offset {base_offset}: length {length}"))?;
        let end = at + total;
        let Some(batch) = records.get(at..end) else {
            // Cut short at the end of the response: the next fetch starts with it.
            break;
        };
        let batch = Batch::parse(batch, base_offset)?;
        if !batch.control {
            let body = batch.decompress(records.slice(at + BATCH_HEADER_BYTES..end))?;
            batch.records(&body, topic, partition, from, &mut decoded.messages)?;
        }
        decoded.next = Some(batch.last_offset.saturating_add(1));
        at = end;
    }
    Ok(decoded)
}

/// The records in the complete batches of `records` (from their headers, unchecked), to size
/// the output once.
fn count_records(records: &[u8]) -> usize {
    let mut count = 0_usize;
    let mut at = 0;
    while let (Ok(length), Ok(n)) = (array::<4>(records, at + 8), array::<4>(records, at + 57)) {
        let Some(end) = usize::try_from(i32::from_be_bytes(length))
            .ok()
            .and_then(|l| (at + 12).checked_add(l))
            .filter(|&end| end <= records.len() && end >= at + BATCH_HEADER_BYTES)
        else {
            break;
        };
        count = count.saturating_add(usize::try_from(i32::from_be_bytes(n)).unwrap_or(0));
        at = end;
    }
    count.min(records.len() / 8)
}

/// The fixed part of one record batch.
struct Batch {
    base_offset: i64,
    last_offset: i64,
    base_timestamp: i64,
    codec: i16,
    control: bool,
    count: usize,
}

impl Batch {
    /// Reads and checks a complete batch's header (`batch` holds the whole batch).
    fn parse(batch: &[u8], base_offset: i64) -> Result<Batch, String> {
        let fail = |what: &str| format!("record batch at offset {base_offset}: {what}");
        let magic = batch.get(MAGIC_AT).copied().ok_or_else(|| fail("truncated"))?;
        if magic != 2 {
            return Err(fail(&format!("magic {magic} is not supported (only 2)")));
        }
        let crc = u32::from_be_bytes(array(batch, 17).map_err(|e| fail(&e))?);
        let covered = batch.get(CRC_FROM..).ok_or_else(|| fail("truncated"))?;
        if crc32c::crc32c(covered) != crc {
            return Err(fail("CRC-32C mismatch (corrupt batch)"));
        }
        let attributes = i16::from_be_bytes(array(batch, 21).map_err(|e| fail(&e))?);
        let last_delta = i32::from_be_bytes(array(batch, 23).map_err(|e| fail(&e))?);
        let base_timestamp = i64::from_be_bytes(array(batch, 27).map_err(|e| fail(&e))?);
        let count = i32::from_be_bytes(array(batch, 57).map_err(|e| fail(&e))?);
        Ok(Batch {
            base_offset,
            last_offset: base_offset.saturating_add(i64::from(last_delta.max(0))),
            base_timestamp,
            codec: attributes & 0x7,
            control: attributes & 0x20 != 0,
            count: usize::try_from(count).map_err(|_| fail(&format!("record count {count}")))?,
        })
    }

    /// The batch's records section, decompressed when the batch is compressed.
    fn decompress(&self, mut body: Bytes) -> Result<Bytes, String> {
        let inflated = match self.codec {
            0 => return Ok(body),
            1 => <Gzip as Decompressor<Bytes>>::decompress(&mut body, |b| Ok(std::mem::take(b))),
            2 => <Snappy as Decompressor<Bytes>>::decompress(&mut body, |b| Ok(std::mem::take(b))),
            3 => <Lz4 as Decompressor<Bytes>>::decompress(&mut body, |b| Ok(std::mem::take(b))),
            4 => <Zstd as Decompressor<Bytes>>::decompress(&mut body, |b| Ok(std::mem::take(b))),
            other => {
                return Err(format!(
                    "record batch at offset {}: unknown compression codec {other}",
                    self.base_offset
                ));
            }
        };
        inflated.map_err(|e| {
            format!("record batch at offset {}: cannot decompress: {e}", self.base_offset)
        })
    }

    /// Decodes the batch's records (`body`, uncompressed) at or above `from` into `out`.
    fn records(
        &self,
        body: &Bytes,
        topic: &Arc<str>,
        partition: i32,
        from: i64,
        out: &mut Vec<Message>,
    ) -> Result<(), String> {
        let fail = |what: &str| format!("record batch at offset {}: {what}", self.base_offset);
        if self.last_offset < from {
            return Ok(());
        }
        out.reserve(self.count);
        let mut cursor = Cursor { buf: body, at: 0 };
        let mut stamp = Stamp::default();
        for _ in 0..self.count {
            let length = cursor.varint().ok_or_else(|| fail("truncated record length"))?;
            let end = usize::try_from(length)
                .ok()
                .and_then(|l| cursor.at.checked_add(l))
                .filter(|&end| end <= body.len())
                .ok_or_else(|| fail(&format!("record length {length} runs past the batch")))?;
            let mut record = Cursor { buf: body, at: cursor.at };
            cursor.at = end;
            let record = record.record(end).ok_or_else(|| fail("malformed record"))?;
            let offset = self.base_offset.saturating_add(record.offset_delta);
            if offset < from {
                continue;
            }
            out.push(Message {
                topic: Arc::clone(topic),
                partition,
                offset,
                key: record.key,
                value: record.value.unwrap_or_default(),
                headers: record.headers,
                timestamp: stamp.at(self.base_timestamp.saturating_add(record.timestamp_delta)),
            });
        }
        Ok(())
    }
}

/// A record's fields.
struct Fields {
    timestamp_delta: i64,
    offset_delta: i64,
    key: Option<Bytes>,
    value: Option<Bytes>,
    headers: Headers,
}

/// Reads varints and slices from a buffer.
struct Cursor<'a> {
    buf: &'a Bytes,
    at: usize,
}

impl Cursor<'_> {
    /// A zig-zag varint (up to 64 bits).
    fn varint(&mut self) -> Option<i64> {
        let mut value: u64 = 0;
        let mut shift = 0;
        loop {
            let byte = *self.buf.get(self.at)?;
            self.at += 1;
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                break;
            }
            shift += 7;
            if shift > 63 {
                return None;
            }
        }
        let decoded = (value >> 1) as i64 ^ -((value & 1) as i64);
        Some(decoded)
    }

    /// A length-prefixed byte string (`None` inside when the length is -1), not past `end`.
    fn bytes(&mut self, end: usize) -> Option<Option<Bytes>> {
        let length = self.varint()?;
        if length < 0 {
            return Some(None);
        }
        let stop = self.at.checked_add(usize::try_from(length).ok()?).filter(|&s| s <= end)?;
        let slice = self.buf.slice(self.at..stop);
        self.at = stop;
        Some(Some(slice))
    }

    /// One record's fields (the length already read); the record ends at `end`.
    fn record(&mut self, end: usize) -> Option<Fields> {
        self.at += 1; // attributes (unused in magic 2)
        let timestamp_delta = self.varint()?;
        let offset_delta = self.varint()?;
        let key = self.bytes(end)?;
        let value = self.bytes(end)?;
        let count = self.varint()?;
        let headers = if count <= 0 {
            Headers::new()
        } else {
            let mut list = Vec::with_capacity(usize::try_from(count).ok()?.min(64));
            for _ in 0..count {
                let name = self.bytes(end)?.unwrap_or_default();
                let value = self.bytes(end)?.unwrap_or_default();
                list.push(Header { name: String::from_utf8_lossy(&name).into_owned(), value });
            }
            Headers::from(list)
        };
        (self.at <= end).then_some(Fields { timestamp_delta, offset_delta, key, value, headers })
    }
}

/// Timestamps from milliseconds, remembering the last one (records of a batch mostly share
/// theirs). An out-of-range timestamp reads as the epoch rather than failing the batch.
#[derive(Default)]
struct Stamp {
    last: Option<(i64, DateTime<Utc>)>,
}

impl Stamp {
    fn at(&mut self, millis: i64) -> DateTime<Utc> {
        match self.last {
            Some((m, t)) if m == millis => t,
            _ => {
                let t = DateTime::from_timestamp_millis(millis).unwrap_or_default();
                self.last = Some((millis, t));
                t
            }
        }
    }
}

/// `N` bytes of `buf` at `at`.
fn array<const N: usize>(buf: &[u8], at: usize) -> Result<[u8; N], String> {
    buf.get(at..at + N)
        .and_then(|b| <[u8; N]>::try_from(b).ok())
        .ok_or_else(|| format!("truncated at byte {at}"))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use bytes::{BufMut, BytesMut};
    use kafka_protocol::compression::Compressor;

    use super::*;

    use crate::producer::encode::put_varint;

    /// A record to encode: key, value, headers, timestamp delta.
    type Spec<'a> = (Option<&'a [u8]>, Option<&'a [u8]>, Vec<(&'a str, &'a [u8])>, i64);

    fn put_bytes(buf: &mut BytesMut, bytes: Option<&[u8]>) {
        match bytes {
            Some(b) => {
                put_varint(buf, b.len() as i64);
                buf.put_slice(b);
            }
            None => put_varint(buf, -1),
        }
    }

    fn records_section(records: &[Spec<'_>]) -> BytesMut {
        let mut out = BytesMut::new();
        for (delta, (key, value, headers, ts)) in records.iter().enumerate() {
            let mut body = BytesMut::new();
            body.put_i8(0);
            put_varint(&mut body, *ts);
            put_varint(&mut body, delta as i64);
            put_bytes(&mut body, *key);
            put_bytes(&mut body, *value);
            put_varint(&mut body, headers.len() as i64);
            for (name, value) in headers {
                put_bytes(&mut body, Some(name.as_bytes()));
                put_bytes(&mut body, Some(value));
            }
            put_varint(&mut out, body.len() as i64);
            out.put_slice(&body);
        }
        out
    }

    /// A record batch of magic 2 as Kafka writes it.
    fn batch(base: i64, records: &[Spec<'_>], codec: i16, control: bool) -> BytesMut {
        let plain = records_section(records);
        let section = match codec {
            0 => plain,
            _ => {
                let mut out = BytesMut::new();
                let write = |b: &mut BytesMut| {
                    b.put_slice(&plain);
                    Ok(())
                };
                match codec {
                    1 => <Gzip as Compressor<BytesMut>>::compress(&mut out, write),
                    2 => <Snappy as Compressor<BytesMut>>::compress(&mut out, write),
                    3 => <Lz4 as Compressor<BytesMut>>::compress(&mut out, write),
                    _ => <Zstd as Compressor<BytesMut>>::compress(&mut out, write),
                }
                .unwrap();
                out
            }
        };
        let mut out = BytesMut::new();
        out.put_i64(base);
        out.put_i32(0);
        out.put_i32(-1);
        out.put_i8(2);
        out.put_u32(0);
        out.put_i16(codec | if control { 0x20 } else { 0 });
        out.put_i32(records.len() as i32 - 1);
        out.put_i64(1_600_000_000_000);
        out.put_i64(1_600_000_000_000);
        out.put_i64(-1);
        out.put_i16(-1);
        out.put_i32(-1);
        out.put_i32(records.len() as i32);
        out.put_slice(&section);
        let length = (out.len() - 12) as i32;
        out[8..12].copy_from_slice(&length.to_be_bytes());
        let crc = crc32c::crc32c(&out[CRC_FROM..]);
        out[17..21].copy_from_slice(&crc.to_be_bytes());
        out
    }

    fn sample() -> Vec<Spec<'static>> {
        vec![
            (Some(b"k1"), Some(b"first"), vec![("a", b"1"), ("b", b"2"), ("a", b"3")], 0),
            (None, Some(&[7u8; 300]), vec![], 250),
            (Some(b""), None, vec![], 0),
        ]
    }

    fn topic() -> Arc<str> {
        Arc::from("t")
    }

    #[test]
    fn every_codec_decodes_with_repeated_headers_kept_in_order() {
        for codec in 0..=4 {
            let bytes = batch(100, &sample(), codec, false).freeze();
            let decoded = decode(&bytes, &topic(), 3, 0).unwrap();
            assert_eq!(decoded.next, Some(103), "codec {codec}");
            let m = &decoded.messages;
            assert_eq!(m.len(), 3, "codec {codec}");
            assert_eq!((m[0].offset, m[1].offset, m[2].offset), (100, 101, 102));
            assert_eq!(&*m[0].topic, "t");
            assert_eq!(m[0].partition, 3);
            assert_eq!(m[0].key.as_deref(), Some(&b"k1"[..]));
            assert_eq!(&m[0].value[..], b"first");
            let headers: Vec<(&str, &[u8])> =
                m[0].headers.iter().map(|h| (h.name.as_str(), &h.value[..])).collect();
            assert_eq!(headers, vec![("a", &b"1"[..]), ("b", b"2"), ("a", b"3")]);
            assert_eq!(m[0].timestamp.timestamp_millis(), 1_600_000_000_000);
            assert_eq!(m[1].timestamp.timestamp_millis(), 1_600_000_000_250);
            assert_eq!(m[1].key, None);
            assert_eq!(&m[1].value[..], &[7u8; 300][..]);
            assert_eq!(m[2].key.as_deref(), Some(&b""[..]));
            assert!(m[2].value.is_empty(), "a null value reads as empty");
        }
    }

    #[test]
    fn records_below_the_position_are_skipped_and_a_cut_batch_is_left_for_later() {
        let mut bytes = batch(100, &sample(), 0, false);
        let second = batch(103, &sample(), 0, false);
        bytes.put_slice(&second);
        let whole = bytes.clone().freeze();
        let decoded = decode(&whole, &topic(), 0, 102).unwrap();
        let offsets: Vec<i64> = decoded.messages.iter().map(|m| m.offset).collect();
        assert_eq!(offsets, vec![102, 103, 104, 105]);
        assert_eq!(decoded.next, Some(106));
        // The second batch cut short: only the first is read.
        let cut = bytes.freeze().slice(..whole.len() - 10);
        let decoded = decode(&cut, &topic(), 0, 100).unwrap();
        assert_eq!(decoded.messages.len(), 3);
        assert_eq!(decoded.next, Some(103));
        // Nothing whole: nothing read, no position.
        let decoded = decode(&cut.slice(..40), &topic(), 0, 100).unwrap();
        assert!(decoded.messages.is_empty());
        assert_eq!(decoded.next, None);
    }

    #[test]
    fn control_batches_yield_nothing_but_move_the_position() {
        let mut bytes = batch(100, &sample(), 0, false);
        bytes.put_slice(&batch(103, &[(None, None, vec![], 0)], 0, true));
        let decoded = decode(&bytes.freeze(), &topic(), 0, 100).unwrap();
        assert_eq!(decoded.messages.len(), 3);
        assert_eq!(decoded.next, Some(104));
    }

    #[test]
    fn corrupt_batches_are_errors_not_panics() {
        let good = batch(100, &sample(), 0, false);
        let mut flipped = good.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 0xff;
        let error = decode(&flipped.freeze(), &topic(), 0, 0).unwrap_err();
        assert!(error.contains("CRC"), "{error}");
        let mut magic = good.clone();
        magic[MAGIC_AT] = 1;
        assert!(decode(&magic.freeze(), &topic(), 0, 0).unwrap_err().contains("magic"));
        let mut negative = good.clone();
        negative[8..12].copy_from_slice(&(-5i32).to_be_bytes());
        assert!(decode(&negative.freeze(), &topic(), 0, 0).is_err());
        // A record length running past the batch (CRC fixed up so that the record is read).
        let mut long = good;
        long[BATCH_HEADER_BYTES] = 0xfe;
        long[BATCH_HEADER_BYTES + 1] = 0x7f;
        let crc = crc32c::crc32c(&long[CRC_FROM..]);
        long[17..21].copy_from_slice(&crc.to_be_bytes());
        assert!(decode(&long.freeze(), &topic(), 0, 0).is_err());
        // Every truncation of a valid response: no panic.
        let whole = batch(0, &sample(), 0, false).freeze();
        for end in 0..whole.len() {
            let _ = decode(&whole.slice(..end), &topic(), 0, 0);
        }
    }
}
