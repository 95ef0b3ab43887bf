//! The data plane's read side: reading assigned partitions with ListOffsets and Fetch on the
//! `kafka-protocol` crate, one connection per broker (the crate's `connection`) shared by every
//! partition that broker leads (the crate's `leader` directory, shared with the producer).
//!
//! Owns: [`KafkaReader`], [`Route`], [`Fetchers`] and the submodules:
//! - `reader` — the [`bus_core::backend::PartitionReader`] of one partition (its position, its
//!   route to the leader, the reset when out of range, unreadable batches reported);
//! - `broker` — a fetch session per broker (a supervised task owning the connection; one
//!   Fetch carrying every partition whose reader waits, the answer split per partition);
//! - `batch` — the record batches of a Fetch response decoded into messages (zero-copy,
//!   bounded whatever the batch says, read_committed);
//! - `inflate` — the four codecs, decompressing within a bound;
//! - `memory` — the reader's memory budget (responses and decompressed batches its messages
//!   still reference) and the reuse of response buffers.
//!
//! Invariants: a reader starts no task and holds no connection of a bus: its requests go to
//! the session of its leader, a task of the bus's `bus/kafka/fetch` scope (the only tasks this
//! module starts, through [`Fetchers`]); a reader's own future waits for the answer, bounded.
//! Readers are opened by the group member's `open` (the crate's `group`), which names the
//! group their errors are reported for, and by the administration's reads (through the bus's
//! sessions, or on a connection of their own without a bus); nothing here knows about group
//! membership or committed offsets.

mod batch;
mod broker;
mod inflate;
mod memory;
mod reader;

pub(crate) use broker::Fetchers;
pub(crate) use reader::{KafkaReader, Route};

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
