//! Key partitioners shared by every backend, compatible with the peer clients on the same topics.
//!
//! Owns: [`Partitioner`] (which hash maps a record key to a partition), [`UnkeyedSpreader`] (how
//! records without a key are spread), [`PartitionError`], and the raw 32-bit hashes they are
//! built on (`murmur2`, `fnv1a_32`, `crc32`; public as [`Partitioner::hash`]).
//!
//! Invariants:
//! - For the same key bytes and partition count, each variant returns exactly the partition its
//!   peer client returns: [`Partitioner::Murmur2`] the Java client's default partitioner (and
//!   kafka-python's, and librdkafka's `murmur2`), [`Partitioner::Fnv1a`] sarama's default
//!   `NewHashPartitioner` (the Go SDK's; also librdkafka's `fnv1a`), [`Partitioner::Crc32`]
//!   librdkafka's `consistent`. `tests/data/partition_table.json`, produced by those peers,
//!   checks this.
//! - A result is always in `0..partitions`. A partition count of zero or less is an error, never a
//!   panic or a division by zero.
//! - A key that is present but empty is hashed like any other key (as the Java client and
//!   librdkafka do); only an absent key (`None`) goes to the [`UnkeyedSpreader`].

use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

/// Why no partition could be chosen.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PartitionError {
    /// The topic has no partitions (or the count given is negative).
    #[error("cannot choose a partition among {partitions} partitions: the count must be > 0")]
    NoPartitions {
        /// The partition count that was given.
        partitions: i32,
    },
    /// A partitioner name that is not one of `murmur2`, `fnv1a`, `crc32`.
    #[error("unknown partitioner `{name}`: expected one of murmur2, fnv1a, crc32")]
    UnknownPartitioner {
        /// The name that was given.
        name: String,
    },
}

/// How a record key chooses its partition. Serialised as `"murmur2"`, `"fnv1a"` or `"crc32"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Partitioner {
    /// The Java client's default: `(murmur2(key) & 0x7fffffff) % partitions`, with Kafka's
    /// `Utils.murmur2` (MurmurHash2, seed `0x9747b28c`). Also kafka-python's default and
    /// librdkafka's `murmur2` partitioner. This project's default.
    #[default]
    Murmur2,
    /// sarama's default hash partitioner (`NewHashPartitioner`, used by the Go SDK):
    /// `int32(fnv1a_32(key)) % partitions`, negated when negative (a truncating `%`). librdkafka's
    /// `fnv1a` partitioner gives the same results.
    Fnv1a,
    /// librdkafka's `consistent` partitioner: `crc32(key) % partitions`, unsigned.
    Crc32,
}

impl Partitioner {
    /// Every partitioner, in declaration order.
    pub const ALL: [Partitioner; 3] =
        [Partitioner::Murmur2, Partitioner::Fnv1a, Partitioner::Crc32];

    /// The partition in `0..partitions` for `key`.
    ///
    /// Errors with [`PartitionError::NoPartitions`] when `partitions <= 0`.
    pub fn partition(&self, key: &[u8], partitions: i32) -> Result<i32, PartitionError> {
        let n = partition_count(partitions)?;
        let p = match self {
            // Java: Utils.toPositive(Utils.murmur2(keyBytes)) % numPartitions.
            Partitioner::Murmur2 => (murmur2(key) & 0x7fff_ffff) % n,
            // sarama: partition = int32(h) % numPartitions; if partition < 0 { -partition }.
            // Rust's `%` truncates toward zero like Go's; `n > 0`, so the remainder's magnitude
            // is below `n` and negating it cannot overflow, even for `h == i32::MIN`.
            Partitioner::Fnv1a => {
                // `int32(h)`: reinterpret the bits as two's complement.
                let h = fnv1a_32(key) as i32;
                // `n <= i32::MAX` was checked, so this cast is lossless.
                let n = n as i32;
                return Ok((h % n).abs());
            }
            // librdkafka: rd_crc32(key, keylen) % partition_cnt (uint32 % int32 is unsigned in C).
            Partitioner::Crc32 => crc32(key) % n,
        };
        // `p < n <= i32::MAX`, so the cast is lossless.
        Ok(p as i32)
    }

    /// The key's raw 32-bit hash as this partitioner's peer computes it, before the partition
    /// is taken from it: Kafka's `Utils.murmur2`, FNV-1a (32 bit), or CRC-32 (IEEE).
    pub fn hash(&self, key: &[u8]) -> u32 {
        match self {
            Partitioner::Murmur2 => murmur2(key),
            Partitioner::Fnv1a => fnv1a_32(key),
            Partitioner::Crc32 => crc32(key),
        }
    }

    /// The partition for a record's optional key: a present key (even an empty one) is hashed
    /// with [`Partitioner::partition`]; an absent key takes the next partition from `unkeyed`.
    pub fn partition_for(
        &self,
        key: Option<&[u8]>,
        partitions: i32,
        unkeyed: &UnkeyedSpreader,
    ) -> Result<i32, PartitionError> {
        match key {
            Some(key) => self.partition(key, partitions),
            None => unkeyed.next_partition(partitions),
        }
    }

    /// The partitioner's configuration name: `"murmur2"`, `"fnv1a"` or `"crc32"`.
    pub fn name(&self) -> &'static str {
        match self {
            Partitioner::Murmur2 => "murmur2",
            Partitioner::Fnv1a => "fnv1a",
            Partitioner::Crc32 => "crc32",
        }
    }
}

impl fmt::Display for Partitioner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Partitioner {
    type Err = PartitionError;

    /// Parses a configuration name exactly as it serialises: `murmur2`, `fnv1a` or `crc32`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Partitioner::ALL
            .into_iter()
            .find(|p| p.name() == s)
            .ok_or_else(|| PartitionError::UnknownPartitioner { name: s.to_owned() })
    }
}

/// Spreads records that have no key evenly over the partitions: plain round robin, one
/// partition per call, shared safely between threads.
///
/// Each call to [`UnkeyedSpreader::next_partition`] takes the next value of a 64-bit counter
/// modulo the current partition count, so over any `n` consecutive calls with `n` partitions
/// every partition is chosen once (the counter does not wrap in practice). A backend that
/// batches per partition may instead call it once per batch and keep the result for the whole
/// batch ("sticky" spreading, as the Java client does since 2.4): the spreader itself is agnostic.
/// Unkeyed records carry no ordering promise, so either way is correct.
#[derive(Debug, Default)]
pub struct UnkeyedSpreader {
    next: AtomicU64,
}

impl UnkeyedSpreader {
    /// A spreader that starts at partition 0.
    pub const fn new() -> Self {
        UnkeyedSpreader { next: AtomicU64::new(0) }
    }

    /// A spreader whose first choice is `start % partitions` (e.g. a random start, so that many
    /// producers do not all begin on partition 0).
    pub const fn starting_at(start: u64) -> Self {
        UnkeyedSpreader { next: AtomicU64::new(start) }
    }

    /// The next partition in `0..partitions`.
    ///
    /// Errors with [`PartitionError::NoPartitions`] when `partitions <= 0`; the counter does not
    /// advance then.
    pub fn next_partition(&self, partitions: i32) -> Result<i32, PartitionError> {
        let n = u64::from(partition_count(partitions)?);
        let ticket = self.next.fetch_add(1, Ordering::Relaxed);
        // `ticket % n < n <= i32::MAX`, so the cast is lossless.
        Ok((ticket % n) as i32)
    }
}

/// The partition count as an unsigned divisor, or an error when it is not positive.
fn partition_count(partitions: i32) -> Result<u32, PartitionError> {
    u32::try_from(partitions)
        .ok()
        .filter(|&n| n > 0)
        .ok_or(PartitionError::NoPartitions { partitions })
}

/// Kafka's `Utils.murmur2`: 32-bit MurmurHash2 with seed `0x9747b28c`, reading the key in
/// little-endian 4-byte blocks. Returns the Java `int` result's bits as `u32`.
///
/// A local transcription rather than a dependency: the one crate offering it (`murmur2` 0.1.0)
/// has had a single release; the algorithm is 20 lines and `tests/data/partition_table.json`
/// (from kafka-python and librdkafka) pins it.
pub(crate) fn murmur2(key: &[u8]) -> u32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;

    // Java takes `data.length` as an int; keys longer than 4 GiB do not exist on Kafka (records
    // are bounded far below that), and the truncation matches Java's for any length it accepts.
    let mut h = SEED ^ (key.len() as u32);

    let mut blocks = key.chunks_exact(4);
    for block in &mut blocks {
        let mut k = u32::from_le_bytes([block[0], block[1], block[2], block[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }

    // The tail, as Java's fall-through switch on `length % 4`.
    let tail = blocks.remainder();
    if tail.len() >= 3 {
        h ^= u32::from(tail[2]) << 16;
    }
    if tail.len() >= 2 {
        h ^= u32::from(tail[1]) << 8;
    }
    if let Some(&first) = tail.first() {
        h ^= u32::from(first);
        h = h.wrapping_mul(M);
    }

    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h
}

/// 32-bit FNV-1a, as Go's `hash/fnv.New32a` (offset basis `0x811c9dc5`, prime `0x01000193`).
///
/// A local function: the `fnv` crate provides only the 64-bit variant, and FNV-1a is four lines.
pub(crate) fn fnv1a_32(key: &[u8]) -> u32 {
    const OFFSET_BASIS: u32 = 0x811c_9dc5;
    const PRIME: u32 = 0x0100_0193;
    key.iter().fold(OFFSET_BASIS, |h, &b| (h ^ u32::from(b)).wrapping_mul(PRIME))
}

/// CRC-32 (IEEE 802.3, as zlib's `crc32` and librdkafka's `rd_crc32`), via `crc32fast`.
pub(crate) fn crc32(key: &[u8]) -> u32 {
    crc32fast::hash(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a_int32_min_does_not_overflow() {
        // 0x025796df4d hashes to exactly 0x80000000 (i32::MIN); -(MIN % n) stays in range.
        let key = [0x02, 0x57, 0x96, 0xdf, 0x4d];
        assert_eq!(fnv1a_32(&key), 0x8000_0000);
        assert_eq!(Partitioner::Fnv1a.partition(&key, 3), Ok(2));
        assert_eq!(Partitioner::Fnv1a.partition(&key, 64), Ok(0));
        assert_eq!(Partitioner::Fnv1a.partition(&key, i32::MAX), Ok(1));
    }

    #[test]
    fn partition_count_must_be_positive() {
        assert_eq!(partition_count(1), Ok(1));
        assert_eq!(partition_count(0), Err(PartitionError::NoPartitions { partitions: 0 }));
        assert_eq!(partition_count(-5), Err(PartitionError::NoPartitions { partitions: -5 }));
    }
}
