//! Decompressing a record batch's records within a bound: the four codecs of Kafka's record
//! batches (gzip, snappy in Kafka's framing or raw, LZ4 frames, zstd), each read through a
//! reader that stops one byte past the bound, so that a batch of a few KiB declaring or
//! inflating to GiBs costs at most the bound.
//!
//! Owns: [`inflate`] and [`InflateError`].
//!
//! Invariants:
//! - What is allocated is at most `limit` bytes (plus the codec's own working memory: at most a
//!   zstd window of `max(8 MiB, limit)`, an LZ4 block of 4 MiB), whatever the input declares:
//!   a declared size (snappy's, a zstd frame's content size) is checked before anything is
//!   reserved for it, and output is read until it passes `limit`, never further.
//! - Nothing panics on any input; corrupt input is an [`InflateError::Corrupt`].

use std::io::Read;

/// Kafka's snappy framing (xerial's `SnappyOutputStream`): this magic, a version and a
/// compatible-version field (16 bytes in all), then blocks of `[u32 length][raw snappy]`.
const SNAPPY_MAGIC: &[u8; 8] = b"\x82SNAPPY\x00";
/// The bytes of the snappy framing's header.
const SNAPPY_HEADER_BYTES: usize = 16;
/// The smallest zstd window a frame may ask for (zstd's levels up to 19 stay within it).
const ZSTD_MIN_WINDOW_LOG: u32 = 23;
/// The largest zstd window (zstd's default limit for decompression).
const ZSTD_MAX_WINDOW_LOG: u32 = 27;

/// Why a batch could not be decompressed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum InflateError {
    /// It inflates (or declares that it inflates) to more than the limit.
    OverLimit {
        /// The limit, in bytes.
        limit: usize,
    },
    /// The codec is not one of Kafka's.
    UnknownCodec(i16),
    /// The compressed data is corrupt.
    Corrupt(String),
}

impl std::fmt::Display for InflateError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            InflateError::OverLimit { limit } => write!(
                f,
                "decompresses to more than consumer.max_decompressed_batch_bytes ({limit} bytes)"
            ),
            InflateError::UnknownCodec(codec) => write!(f, "unknown compression codec {codec}"),
            InflateError::Corrupt(reason) => write!(f, "cannot decompress: {reason}"),
        }
    }
}

/// The records of a batch compressed with `codec` (1 gzip, 2 snappy, 3 lz4, 4 zstd),
/// decompressed, at most `limit` bytes.
///
/// # Errors
///
/// [`InflateError`]: over the limit, an unknown codec, corrupt data.
pub(crate) fn inflate(
    codec: i16,
    compressed: &[u8],
    limit: usize,
) -> Result<Vec<u8>, InflateError> {
    // Compressed records usually inflate a few times: start there, grow with what comes.
    let guess = compressed.len().saturating_mul(4).min(limit);
    match codec {
        1 => bounded(flate2::read::MultiGzDecoder::new(compressed), limit, guess),
        2 => snappy(compressed, limit),
        3 => {
            let decoder = lz4::Decoder::new(compressed).map_err(corrupt)?;
            bounded(decoder, limit, guess)
        }
        4 => zstd(compressed, limit, guess),
        other => Err(InflateError::UnknownCodec(other)),
    }
}

fn corrupt(error: impl std::fmt::Display) -> InflateError {
    InflateError::Corrupt(error.to_string())
}

/// Reads `reader` to its end into a buffer first sized `guess`, failing once it passes `limit`.
fn bounded(reader: impl Read, limit: usize, guess: usize) -> Result<Vec<u8>, InflateError> {
    let mut out = Vec::with_capacity(guess);
    let cap = u64::try_from(limit).unwrap_or(u64::MAX).saturating_add(1);
    reader.take(cap).read_to_end(&mut out).map_err(corrupt)?;
    if out.len() > limit {
        return Err(InflateError::OverLimit { limit });
    }
    Ok(out)
}

/// zstd: a frame declaring a larger content than `limit` is refused before decoding; the
/// window is bounded too.
fn zstd(compressed: &[u8], limit: usize, guess: usize) -> Result<Vec<u8>, InflateError> {
    let declared = zstd::zstd_safe::get_frame_content_size(compressed).ok().flatten();
    if declared.is_some_and(|d| usize::try_from(d).map_or(true, |d| d > limit)) {
        return Err(InflateError::OverLimit { limit });
    }
    let guess = declared.and_then(|d| usize::try_from(d).ok()).unwrap_or(guess);
    let mut decoder = zstd::stream::read::Decoder::with_buffer(compressed).map_err(corrupt)?;
    let window = usize::BITS - limit.saturating_sub(1).leading_zeros();
    decoder
        .window_log_max(window.clamp(ZSTD_MIN_WINDOW_LOG, ZSTD_MAX_WINDOW_LOG))
        .map_err(corrupt)?;
    bounded(decoder, limit, guess.min(limit))
}

/// Snappy in Kafka's framing, or raw (as the Java client reads it: raw when the magic is
/// absent). Each block's declared length is checked against what is left of `limit` before
/// anything is reserved for it.
fn snappy(compressed: &[u8], limit: usize) -> Result<Vec<u8>, InflateError> {
    let mut decoder = snap::raw::Decoder::new();
    if !compressed.starts_with(SNAPPY_MAGIC) {
        let length = snap::raw::decompress_len(compressed).map_err(corrupt)?;
        if length > limit {
            return Err(InflateError::OverLimit { limit });
        }
        return decoder.decompress_vec(compressed).map_err(corrupt);
    }
    let mut rest = compressed
        .get(SNAPPY_HEADER_BYTES..)
        .ok_or_else(|| InflateError::Corrupt("the snappy framing's header is cut short".into()))?;
    let mut out: Vec<u8> = Vec::new();
    while !rest.is_empty() {
        let (length, after) = rest
            .split_first_chunk::<4>()
            .ok_or_else(|| InflateError::Corrupt("a snappy block's length is cut short".into()))?;
        let length = usize::try_from(u32::from_be_bytes(*length)).unwrap_or(usize::MAX);
        let block = after.get(..length).ok_or_else(|| {
            InflateError::Corrupt(format!("a snappy block of {length} bytes is cut short"))
        })?;
        rest = after.get(length..).unwrap_or_default();
        let inflated = snap::raw::decompress_len(block).map_err(corrupt)?;
        let start = out.len();
        let end = start
            .checked_add(inflated)
            .filter(|&end| end <= limit)
            .ok_or(InflateError::OverLimit { limit })?;
        out.resize(end, 0);
        let target = out.get_mut(start..end).unwrap_or_default();
        decoder.decompress(block, target).map_err(corrupt)?;
    }
    Ok(out)
}

#[cfg(test)]
pub(crate) mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use bytes::BytesMut;
    use kafka_protocol::compression::{Compressor, Gzip, Lz4, Snappy, Zstd};

    use super::*;

    /// `plain` compressed as Kafka's producers do (kafka-protocol's compressors).
    pub(crate) fn compress(codec: i16, plain: &[u8]) -> Vec<u8> {
        let mut out = BytesMut::new();
        let write = |b: &mut BytesMut| {
            b.extend_from_slice(plain);
            Ok(())
        };
        match codec {
            1 => <Gzip as Compressor<BytesMut>>::compress(&mut out, write),
            2 => <Snappy as Compressor<BytesMut>>::compress(&mut out, write),
            3 => <Lz4 as Compressor<BytesMut>>::compress(&mut out, write),
            4 => <Zstd as Compressor<BytesMut>>::compress(&mut out, write),
            _ => unreachable!(),
        }
        .unwrap();
        out.to_vec()
    }

    #[test]
    fn every_codec_round_trips_within_the_limit() {
        let plain: Vec<u8> = (0..100_000u32).flat_map(|i| (i % 251).to_le_bytes()).collect();
        for codec in 1..=4 {
            let packed = compress(codec, &plain);
            assert_eq!(inflate(codec, &packed, plain.len()).unwrap(), plain, "codec {codec}");
            assert_eq!(
                inflate(codec, &packed, plain.len() - 1),
                Err(InflateError::OverLimit { limit: plain.len() - 1 }),
                "codec {codec}"
            );
        }
    }

    #[test]
    fn raw_snappy_is_read_too() {
        let plain = b"raw snappy, as some producers write it".repeat(50);
        let raw = snap::raw::Encoder::new().compress_vec(&plain).unwrap();
        assert_eq!(inflate(2, &raw, 1 << 20).unwrap(), plain);
    }

    #[test]
    fn a_declared_length_over_the_limit_is_refused_before_allocating() {
        // Raw snappy declaring 4 GiB - 1 in five bytes.
        let bomb = [0xff, 0xff, 0xff, 0xff, 0x0f, 0x00];
        assert_eq!(inflate(2, &bomb, 1 << 20), Err(InflateError::OverLimit { limit: 1 << 20 }));
        // The same as a block of Kafka's framing.
        let mut framed = b"\x82SNAPPY\x00\x00\x00\x00\x01\x00\x00\x00\x01".to_vec();
        framed.extend_from_slice(&6u32.to_be_bytes());
        framed.extend_from_slice(&bomb);
        assert_eq!(inflate(2, &framed, 1 << 20), Err(InflateError::OverLimit { limit: 1 << 20 }));
        // A zstd frame header declaring 1 GiB of content (magic, descriptor: single segment,
        // 8-byte content size), then one RLE block of 16 zeros.
        let mut frame = vec![0x28, 0xb5, 0x2f, 0xfd, 0xe0];
        frame.extend_from_slice(&(1u64 << 30).to_le_bytes());
        frame.extend_from_slice(&[0x83, 0x00, 0x00, 0x00]);
        assert_eq!(inflate(4, &frame, 1 << 20), Err(InflateError::OverLimit { limit: 1 << 20 }));
    }

    #[test]
    fn corrupt_input_is_an_error_for_every_codec() {
        for codec in 1..=4 {
            let mut packed = compress(codec, &b"some records".repeat(100));
            let mid = packed.len() / 2;
            packed[mid] ^= 0x55;
            packed.truncate(packed.len() - 3);
            assert!(inflate(codec, &packed, 1 << 20).is_err(), "codec {codec}");
            for end in 0..packed.len().min(64) {
                let _ = inflate(codec, &packed[..end], 1 << 20);
            }
        }
        assert_eq!(inflate(5, b"x", 10), Err(InflateError::UnknownCodec(5)));
    }
}
