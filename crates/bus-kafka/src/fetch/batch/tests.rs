#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use bytes::{BufMut, BytesMut};

use super::*;

use crate::fetch::inflate::tests::compress;
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

/// How a test batch is written.
#[derive(Clone, Copy)]
struct Kind {
    codec: i16,
    control: bool,
    transactional: bool,
    producer_id: i64,
}

const PLAIN: Kind = Kind { codec: 0, control: false, transactional: false, producer_id: -1 };

/// A record batch of magic 2 as Kafka writes it, around a records section.
fn batch_of(base: i64, count: i32, section: &[u8], kind: Kind) -> BytesMut {
    let section = match kind.codec {
        0 => section.to_vec(),
        codec => compress(codec, section),
    };
    let mut attributes = kind.codec;
    if kind.control {
        attributes |= CONTROL;
    }
    if kind.transactional {
        attributes |= TRANSACTIONAL;
    }
    let mut out = BytesMut::new();
    out.put_i64(base);
    out.put_i32(0);
    out.put_i32(-1);
    out.put_i8(2);
    out.put_u32(0);
    out.put_i16(attributes);
    out.put_i32(count - 1);
    out.put_i64(1_600_000_000_000);
    out.put_i64(1_600_000_000_000);
    out.put_i64(kind.producer_id);
    out.put_i16(0);
    out.put_i32(-1);
    out.put_i32(count);
    out.put_slice(&section);
    let length = (out.len() - 12) as i32;
    out[8..12].copy_from_slice(&length.to_be_bytes());
    fix_crc(&mut out);
    out
}

fn fix_crc(batch: &mut [u8]) {
    let crc = crc32c::crc32c(&batch[CRC_FROM..]);
    batch[17..21].copy_from_slice(&crc.to_be_bytes());
}

fn batch(base: i64, records: &[Spec<'_>], codec: i16, control: bool) -> BytesMut {
    let kind = Kind { codec, control, ..PLAIN };
    batch_of(base, records.len() as i32, &records_section(records), kind)
}

/// A control batch of one marker (ABORT or COMMIT) of `producer`.
fn marker(base: i64, producer: i64, abort: bool) -> BytesMut {
    let mut key = BytesMut::new();
    key.put_i16(0);
    key.put_i16(if abort { 0 } else { 1 });
    let value = [0u8, 0, 0, 0, 0, 0];
    let section = records_section(&[(Some(&key[..]), Some(&value[..]), vec![], 0)]);
    let kind = Kind { codec: 0, control: true, transactional: true, producer_id: producer };
    batch_of(base, 1, &section, kind)
}

/// A transactional batch of `producer` with `n` records.
fn transactional(base: i64, producer: i64, n: usize) -> BytesMut {
    let specs: Vec<Spec<'_>> = (0..n).map(|_| (None, Some(&b"v"[..]), vec![], 0)).collect();
    let kind = Kind { codec: 0, control: false, transactional: true, producer_id: producer };
    batch_of(base, n as i32, &records_section(&specs), kind)
}

fn sample() -> Vec<Spec<'static>> {
    vec![
        (Some(b"k1"), Some(b"first"), vec![("a", b"1"), ("b", b"2"), ("a", b"3")], 0),
        (None, Some(&[7u8; 300]), vec![], 250),
        (Some(b""), None, vec![], 0),
    ]
}

fn settings(from: i64) -> Settings {
    Settings {
        topic: Arc::from("t"),
        partition: 3,
        from,
        fetch_limit: 1 << 20,
        max_decompressed: 16 << 20,
        read_committed: true,
    }
}

fn budget() -> Budget {
    Budget::new(1 << 30)
}

async fn run(bytes: &Bytes, settings: &Settings) -> Decoded {
    decode(bytes, settings, AbortedTransactions::default(), &budget()).await
}

fn offsets(decoded: &Decoded) -> Vec<i64> {
    decoded.messages.iter().map(|m| m.offset).collect()
}

#[tokio::test]
async fn every_codec_decodes_with_repeated_headers_kept_in_order() {
    for codec in 0..=4 {
        let bytes = batch(100, &sample(), codec, false).freeze();
        let decoded = run(&bytes, &settings(0)).await;
        assert!(decoded.unreadable.is_none(), "codec {codec}");
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

#[tokio::test]
async fn records_below_the_position_are_skipped_and_a_cut_batch_is_left_for_later() {
    let mut bytes = batch(100, &sample(), 0, false);
    let second = batch(103, &sample(), 0, false);
    bytes.put_slice(&second);
    let whole = bytes.clone().freeze();
    let decoded = run(&whole, &settings(102)).await;
    assert_eq!(offsets(&decoded), vec![102, 103, 104, 105]);
    assert_eq!(decoded.next, Some(106));
    // The second batch cut short: only the first is read.
    let cut = bytes.freeze().slice(..whole.len() - 10);
    let decoded = run(&cut, &settings(100)).await;
    assert_eq!(decoded.messages.len(), 3);
    assert_eq!(decoded.next, Some(103));
    assert!(decoded.unreadable.is_none());
    // Nothing whole: nothing read, no position.
    let decoded = run(&cut.slice(..40), &settings(100)).await;
    assert!(decoded.messages.is_empty());
    assert_eq!(decoded.next, None);
    assert!(decoded.unreadable.is_none());
}

#[tokio::test]
async fn a_first_batch_larger_than_any_fetch_and_cut_short_is_unreadable() {
    let bytes = batch(100, &sample(), 0, false).freeze();
    let mut small = settings(100);
    small.fetch_limit = 100;
    let decoded = run(&bytes.slice(..90), &small).await;
    let unreadable = decoded.unreadable.expect("unreadable");
    assert_eq!(unreadable.first_offset, 100);
    assert!(unreadable.reason.contains("consumer.fetch_max_bytes"), "{}", unreadable.reason);
}

#[tokio::test]
async fn control_batches_yield_nothing_but_move_the_position() {
    let mut bytes = batch(100, &sample(), 0, false);
    bytes.put_slice(&batch(103, &[(None, None, vec![], 0)], 0, true));
    let decoded = run(&bytes.freeze(), &settings(100)).await;
    assert_eq!(decoded.messages.len(), 3);
    assert_eq!(decoded.next, Some(104));
}

#[tokio::test]
async fn corrupt_batches_are_unreadable_with_the_good_ones_before_them_decoded() {
    let good = batch(100, &sample(), 0, false);
    let mut flipped = batch(103, &sample(), 0, false);
    let last = flipped.len() - 1;
    flipped[last] ^= 0xff;
    let mut both = good.clone();
    both.put_slice(&flipped);
    let both = both.freeze();
    let decoded = run(&both, &settings(0)).await;
    assert_eq!(offsets(&decoded), vec![100, 101, 102], "the good batch is decoded");
    assert_eq!(decoded.next, Some(103));
    let unreadable = decoded.unreadable.expect("unreadable");
    assert!(unreadable.reason.contains("CRC"), "{}", unreadable.reason);
    assert_eq!(unreadable.first_offset, 103);
    assert_eq!(&unreadable.raw[..], &both[good.len()..], "the raw batch, as received");

    let mut magic = good.clone();
    magic[MAGIC_AT] = 1;
    let decoded = run(&magic.freeze(), &settings(0)).await;
    assert!(decoded.unreadable.unwrap().reason.contains("magic"));
    let mut negative = good.clone();
    negative[8..12].copy_from_slice(&(-5i32).to_be_bytes());
    assert!(run(&negative.freeze(), &settings(0)).await.unreadable.is_some());
    // A record length running past the batch (CRC fixed up so that the record is read).
    let mut long = good;
    long[BATCH_HEADER_BYTES] = 0xfe;
    long[BATCH_HEADER_BYTES + 1] = 0x7f;
    fix_crc(&mut long);
    let decoded = run(&long.freeze(), &settings(0)).await;
    assert!(decoded.messages.is_empty());
    assert!(decoded.unreadable.is_some());
    // Every truncation of a valid response: no panic.
    let whole = batch(0, &sample(), 0, false).freeze();
    for end in 0..whole.len() {
        let _ = run(&whole.slice(..end), &settings(0)).await;
    }
}

#[tokio::test]
async fn a_forged_record_count_with_a_valid_crc_reserves_nothing_for_it() {
    // i32::MAX records announced, three present, CRC valid: without the bound the output is
    // reserved for i32::MAX messages (hundreds of GB) and the process aborts.
    let mut forged = batch(100, &sample(), 0, false);
    forged[57..61].copy_from_slice(&i32::MAX.to_be_bytes());
    fix_crc(&mut forged);
    let decoded = run(&forged.freeze(), &settings(0)).await;
    let unreadable = decoded.unreadable.expect("the batch runs out of records");
    assert!(unreadable.reason.contains("truncated record length"), "{}", unreadable.reason);
    assert!(decoded.messages.capacity() < 1024, "{}", decoded.messages.capacity());
}

#[tokio::test]
async fn a_compression_bomb_stops_at_the_limit_and_names_it() {
    let zeros = vec![0u8; 20 << 20];
    let section = records_section(&[(None, Some(&zeros[..]), vec![], 0)]);
    for codec in 1..=4 {
        let bomb = batch_of(7, 1, &section, Kind { codec, ..PLAIN }).freeze();
        assert!(bomb.len() < 2 << 20, "codec {codec}: {} bytes", bomb.len());
        let decoded = run(&bomb, &settings(0)).await;
        let unreadable = decoded.unreadable.expect("over the limit");
        assert!(
            unreadable.reason.contains("consumer.max_decompressed_batch_bytes"),
            "codec {codec}: {}",
            unreadable.reason
        );
        assert_eq!((unreadable.first_offset, unreadable.last_offset), (7, 7));
    }
}

#[tokio::test]
async fn one_decode_stops_between_records_at_the_item_bound() {
    let value = [1u8; 4];
    let specs: Vec<Spec<'_>> =
        (0..MAX_DECODED_ITEMS + 10).map(|_| (None, Some(&value[..]), vec![], 0)).collect();
    let bytes = batch(0, &specs, 4, false).freeze();
    let decoded = run(&bytes, &settings(0)).await;
    assert_eq!(decoded.messages.len(), MAX_DECODED_ITEMS);
    assert_eq!(decoded.next, Some(MAX_DECODED_ITEMS as i64), "the next record");
    let rest = run(&bytes, &settings(MAX_DECODED_ITEMS as i64)).await;
    assert_eq!(rest.messages.len(), 10);
    assert_eq!(rest.next, Some(MAX_DECODED_ITEMS as i64 + 10));
}

#[tokio::test]
async fn a_record_with_too_many_headers_is_unreadable() {
    let headers: Vec<(&str, &[u8])> = (0..=MAX_RECORD_HEADERS).map(|_| ("h", &b""[..])).collect();
    let bytes = batch(5, &[(None, Some(b"v"), headers, 0)], 0, false).freeze();
    let unreadable = run(&bytes, &settings(0)).await.unreadable.expect("unreadable");
    assert!(unreadable.reason.contains("headers"), "{}", unreadable.reason);
}

#[tokio::test(start_paused = true)]
async fn a_compressed_batch_waits_for_room_or_ends_the_decode() {
    let first = batch(0, &sample(), 4, false);
    let mut both = first.clone();
    both.put_slice(&batch(3, &sample(), 4, false));
    let both = both.freeze();
    let inflated = records_section(&sample()).len();
    // Room for one inflated batch: the second waits for the next decode.
    let budget = Budget::new(inflated);
    let decoded = decode(&both, &settings(0), AbortedTransactions::default(), &budget).await;
    assert_eq!(offsets(&decoded), vec![0, 1, 2]);
    assert_eq!(decoded.next, Some(3));
    // Nothing decoded yet and no room: it waits until the first batch's messages are dropped.
    let later = settings(3);
    let mut waiting =
        std::pin::pin!(decode(&both, &later, AbortedTransactions::default(), &budget));
    let noop = std::task::Waker::noop();
    let mut cx = std::task::Context::from_waker(noop);
    assert!(waiting.as_mut().poll(&mut cx).is_pending(), "waits for room");
    drop(decoded);
    let decoded = waiting.await;
    assert_eq!(offsets(&decoded), vec![3, 4, 5]);
}

#[tokio::test]
async fn read_committed_skips_aborted_transactions_as_kafka_specifies() {
    // Producer 1 commits 0-1 (marker at 2), producer 2 aborts 3-4 (marker at 6), a plain batch
    // at 5, producer 2 again in a new transaction at 7 (committed at 8).
    let mut bytes = transactional(0, 1, 2);
    bytes.put_slice(&marker(2, 1, false));
    bytes.put_slice(&transactional(3, 2, 2));
    bytes.put_slice(&batch(5, &[(None, Some(b"plain"), vec![], 0)], 0, false));
    bytes.put_slice(&marker(6, 2, true));
    bytes.put_slice(&transactional(7, 2, 1));
    bytes.put_slice(&marker(8, 2, false));
    let bytes = bytes.freeze();
    let aborted = AbortedTransactions::new([(2, 3)]);
    let decoded = decode(&bytes, &settings(0), aborted, &budget()).await;
    assert_eq!(offsets(&decoded), vec![0, 1, 5, 7]);
    assert_eq!(decoded.next, Some(9));
    // read_uncommitted: every data record.
    let mut uncommitted = settings(0);
    uncommitted.read_committed = false;
    let decoded = decode(&bytes, &uncommitted, AbortedTransactions::new([(2, 3)]), &budget()).await;
    assert_eq!(offsets(&decoded), vec![0, 1, 3, 4, 5, 7]);
}

#[tokio::test]
async fn offsets_only_increase_whatever_the_batches_say() {
    // Found by the fuzzer: a record whose offset delta passes the batch's last offset delta
    // was delivered at an offset the position did not pass (redelivered on the next fetch).
    let one = records_section(&[(None, Some(b"a"), vec![], 0), (None, Some(b"b"), vec![], 0)]);
    let mut beyond = batch_of(100, 2, &one, PLAIN);
    beyond[23..27].copy_from_slice(&0i32.to_be_bytes()); // last delta 0, a record at delta 1
    fix_crc(&mut beyond);
    let decoded = run(&beyond.freeze(), &settings(0)).await;
    assert!(decoded.messages.is_empty());
    assert!(decoded.unreadable.unwrap().reason.contains("offset delta 1 out of order"));
    // Deltas repeating.
    let mut same = BytesMut::new();
    for _ in 0..2 {
        let mut body = BytesMut::new();
        body.put_i8(0);
        put_varint(&mut body, 0);
        put_varint(&mut body, 0); // delta 0 twice
        put_bytes(&mut body, None);
        put_bytes(&mut body, Some(b"v"));
        put_varint(&mut body, 0);
        put_varint(&mut same, body.len() as i64);
        same.put_slice(&body);
    }
    let repeated = batch_of(100, 2, &same, PLAIN);
    assert!(run(&repeated.freeze(), &settings(0)).await.unreadable.is_some());
    // A batch overlapping the one before it yields only what lies above it.
    let mut overlapping = batch(100, &sample(), 0, false);
    overlapping.put_slice(&batch(101, &sample(), 0, false));
    let decoded = run(&overlapping.freeze(), &settings(0)).await;
    assert_eq!(offsets(&decoded), vec![100, 101, 102, 103]);
    assert_eq!(decoded.next, Some(104));
}
