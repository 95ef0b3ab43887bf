//! The data plane's read side: reading an assigned partition with ListOffsets and Fetch on the
//! `kafka-protocol` crate, over a connection of its own (the crate's `connection`) to the
//! partition's leader (the crate's `leader` lookup, shared with the producer).
//!
//! Owns: [`KafkaReader`] and the submodules:
//! - `reader` — the [`bus_core::backend::PartitionReader`] of one partition (its position, its
//!   connection to the leader, the reset when out of range, unreadable batches reported);
//! - `batch` — the record batches of a Fetch response decoded into messages (zero-copy,
//!   bounded whatever the batch says, read_committed);
//! - `inflate` — the four codecs, decompressing within a bound;
//! - `memory` — the reader's memory budget (responses and decompressed batches its messages
//!   still reference) and the reuse of response buffers.
//!
//! Invariants: a reader starts no task: the caller's future (a fetch loop of the consumer
//! runtime) drives every request. Readers are opened by the group member's `open` (the
//! crate's `group`), which names the group their errors are reported for; nothing here knows
//! about group membership or committed offsets.

mod batch;
mod inflate;
mod memory;
mod reader;

pub(crate) use reader::KafkaReader;

/// The decoding of a partition's records as a reader runs it, for the fuzz targets.
#[cfg(feature = "fuzzing")]
pub(crate) mod fuzzing {
    use std::sync::Arc;

    use bytes::Bytes;

    use super::batch::{self, AbortedTransactions, Settings};
    use super::memory::Budget;

    /// [`batch::decode`] on `records`, with a budget larger than any decode holds: the offsets
    /// decoded, the position after them, and the first offset of an unreadable batch with why.
    pub(crate) async fn decode(
        records: Bytes,
        topic: Arc<str>,
        from: i64,
        read_committed: bool,
        aborted: Vec<(i64, i64)>,
        max_decompressed: usize,
    ) -> (Vec<i64>, Option<i64>, Option<(i64, String)>) {
        let settings = Settings {
            topic,
            partition: 0,
            from,
            fetch_limit: 1 << 20,
            max_decompressed,
            read_committed,
        };
        let budget = Budget::new(u32::MAX as usize);
        let aborted = AbortedTransactions::new(aborted);
        let decoded = batch::decode(&records, &settings, aborted, &budget).await;
        (
            decoded.messages.iter().map(|m| m.offset).collect(),
            decoded.next,
            decoded.unreadable.map(|u| (u.first_offset, u.reason)),
        )
    }
}
