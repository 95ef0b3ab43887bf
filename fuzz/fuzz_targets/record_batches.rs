//! Record batches as a reader decodes them, with every codec and read_committed: no panic,
//! offsets strictly increasing and at or above the position, memory bounded by the limits
//! whatever a batch declares.
//!
//! Input: [mode][position][...]. Mode bit 0: read_committed; bit 1: *built*: the rest is a
//! records section wrapped into a batch whose CRC is right (so that record parsing and the
//! codecs are reached): [codec][attributes][count][producer id][section...], compressed with
//! the codec as a producer would; otherwise the rest is a partition's records field as
//! received (aborted transactions from its first bytes).

#![no_main]

use bus_fuzz::{Counting, peak};
use bus_kafka::fuzzing::decode_records;
use bytes::{BufMut, BytesMut};
use kafka_protocol::compression::{Compressor, Gzip, Lz4, Snappy, Zstd};
use libfuzzer_sys::fuzz_target;

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const MAX_DECOMPRESSED: usize = 1 << 20;

fn compress(codec: i16, plain: &[u8]) -> Option<Vec<u8>> {
    let mut out = BytesMut::new();
    let write = |b: &mut BytesMut| {
        b.extend_from_slice(plain);
        Ok(())
    };
    let done = match codec {
        1 => <Gzip as Compressor<BytesMut>>::compress(&mut out, write),
        2 => <Snappy as Compressor<BytesMut>>::compress(&mut out, write),
        3 => <Lz4 as Compressor<BytesMut>>::compress(&mut out, write),
        4 => <Zstd as Compressor<BytesMut>>::compress(&mut out, write),
        _ => return Some(plain.to_vec()),
    };
    done.ok().map(|()| out.to_vec())
}

/// A batch of magic 2 at offset 100 around `section`, its CRC right.
fn build(rest: &[u8]) -> Option<Vec<u8>> {
    let [codec, attributes, count, producer, section @ ..] = rest else { return None };
    let codec = i16::from(*codec % 6); // 5: an unknown codec
    let section = compress(codec, section)?;
    let mut out = BytesMut::new();
    out.put_i64(100);
    out.put_i32(0);
    out.put_i32(-1);
    out.put_i8(2);
    out.put_u32(0);
    out.put_i16(codec | (i16::from(*attributes) & 0x30));
    out.put_i32(i32::from(*count % 16) - 1);
    out.put_i64(0);
    out.put_i64(0);
    out.put_i64(i64::from(*producer % 4) - 1);
    out.put_i16(0);
    out.put_i32(0);
    out.put_i32(i32::from(*count));
    out.put_slice(&section);
    let length = i32::try_from(out.len() - 12).ok()?;
    out[8..12].copy_from_slice(&length.to_be_bytes());
    let crc = crc32c::crc32c(&out[21..]);
    out[17..21].copy_from_slice(&crc.to_be_bytes());
    Some(out.to_vec())
}

fuzz_target!(|data: &[u8]| {
    let [mode, position, rest @ ..] = data else { return };
    let read_committed = mode & 1 == 1;
    let from = i64::from(*position % 8) + 99;
    let (records, aborted) = if mode & 2 == 2 {
        let Some(batch) = build(rest) else { return };
        (batch, vec![(i64::from(mode >> 4), 100)])
    } else {
        let aborted = rest.iter().take(2).map(|b| (i64::from(b % 4), i64::from(*b))).collect();
        (rest.to_vec(), aborted)
    };
    let (allocated, decoded) =
        peak(|| decode_records(&records, from, read_committed, &aborted, MAX_DECOMPRESSED));
    assert!(decoded.offsets.iter().all(|&o| o >= from), "{decoded:?}");
    assert!(decoded.offsets.windows(2).all(|w| w[0] < w[1]), "{decoded:?}");
    if let Some(next) = decoded.next {
        assert!(next >= from && decoded.offsets.last().is_none_or(|&l| next > l), "{decoded:?}");
    }
    // The decompressed batch (with its buffer's growth), the messages of one decode, and the
    // input's own copies.
    let bound = 2 * MAX_DECOMPRESSED + 16 * (1 << 20) + 64 * records.len();
    assert!(allocated <= bound, "{allocated} bytes allocated for {} bytes", records.len());
});
