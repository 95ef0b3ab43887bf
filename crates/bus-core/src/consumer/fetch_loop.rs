//! One partition's fetch loop: reads its reader into the subscription's keyed dispatch until
//! cancelled.
//!
//! Owns: `FetchLoop` and `submit_in_chunks`.
//!
//! Invariants: a loop holds at most one fetched batch (at most `FETCH_MAX_BYTES`, bounded by the
//! reader) while it waits for room in the dispatch; each message is moved once, from the batch
//! into its dispatch slot; cancellation stops the loop at its next await. While its partition
//! is paused (see `pause`) the loop fetches nothing: a fetch in progress is dropped (readers are
//! cancel-safe) and the next one starts from the same position once resumed.

use std::sync::Arc;

use crate::backend::PartitionReader;
use crate::dispatch::KeyedDispatch;
use crate::metrics::Metrics;
use crate::record::{Message, TopicPartition};

use super::control::RETRY;
use super::pause::PauseWatch;

/// Most bytes a fetch loop asks for at once.
const FETCH_MAX_BYTES: usize = 1024 * 1024;

/// Reads one partition into the dispatch until cancelled, pausing while the dispatch is full.
pub(super) struct FetchLoop {
    reader: Box<dyn PartitionReader>,
    dispatch: KeyedDispatch,
    metrics: Arc<Metrics>,
    token: bus_supervisor::CancellationToken,
    partition: TopicPartition,
    /// Largest group of messages handed to the dispatch at once (its in-flight bound).
    chunk: usize,
    /// The partition's pause state (never paused when none).
    pause: Option<PauseWatch>,
}

impl FetchLoop {
    pub(super) fn new(
        reader: Box<dyn PartitionReader>,
        dispatch: KeyedDispatch,
        metrics: Arc<Metrics>,
        token: bus_supervisor::CancellationToken,
        partition: TopicPartition,
        chunk: usize,
    ) -> Self {
        FetchLoop { reader, dispatch, metrics, token, partition, chunk, pause: None }
    }

    /// Makes the loop follow `pause`.
    pub(super) fn pausable(mut self, pause: PauseWatch) -> Self {
        self.pause = Some(pause);
        self
    }

    /// Waits while the partition is paused. False when cancelled meanwhile.
    async fn wait_while_paused(&mut self) -> bool {
        let Some(pause) = self.pause.as_mut() else { return true };
        if !pause.is_paused() {
            return true;
        }
        tracing::debug!(partition = %self.partition, "fetching paused");
        tokio::select! {
            biased;
            () = self.token.cancelled() => false,
            () = pause.resumed() => {
                tracing::debug!(partition = %self.partition, "fetching resumed");
                true
            }
        }
    }

    pub(super) async fn run(mut self) {
        loop {
            if !self.wait_while_paused().await {
                return;
            }
            let paused = async {
                match self.pause.as_mut() {
                    Some(pause) => pause.paused().await,
                    None => std::future::pending().await,
                }
            };
            let batch = tokio::select! {
                biased;
                () = self.token.cancelled() => return,
                // A fetch waiting for records is dropped (cancel-safe): nothing is lost.
                () = paused => continue,
                batch = self.reader.next_batch(FETCH_MAX_BYTES) => batch,
            };
            match batch {
                Ok(batch) if batch.is_empty() => {}
                Ok(batch) => {
                    Metrics::add(&self.metrics.received, batch.len() as u64);
                    if !submit_in_chunks(&self.dispatch, &self.token, self.chunk, batch).await {
                        return;
                    }
                }
                Err(error) => {
                    tracing::warn!(partition = %self.partition, %error, "fetch failed; retrying");
                    tokio::select! {
                        () = self.token.cancelled() => return,
                        () = tokio::time::sleep(RETRY.delay(0)) => {}
                    }
                }
            }
        }
    }
}

/// Hands `batch` to `dispatch` in chunks no larger than `chunk`, each waiting for room. Each
/// message is moved once, from the batch into its dispatch slot. False when the loop must
/// stop.
async fn submit_in_chunks(
    dispatch: &KeyedDispatch,
    token: &bus_supervisor::CancellationToken,
    chunk: usize,
    batch: Vec<Message>,
) -> bool {
    let mut rest = batch.into_iter();
    while rest.len() > 0 {
        let need = rest.len().min(chunk.max(1));
        tokio::select! {
            biased;
            () = token.cancelled() => return false,
            submitted = dispatch.submit_from(&mut rest, need) => {
                if submitted.is_err() {
                    return false;
                }
            }
        }
    }
    true
}
