//! One partition's fetch loop: reads its reader into the subscription's keyed dispatch until
//! cancelled, and decides what happens when the partition cannot be read.
//!
//! Owns: `FetchLoop` and `submit_in_chunks`.
//!
//! Invariants:
//! - A loop holds at most one fetched batch (bounded by the backend's configuration) while it
//!   waits for room in the dispatch; each message is moved once, from the batch into its
//!   dispatch slot; cancellation stops the loop at its next await.
//! - No partition is stuck without a word. A batch the reader cannot read follows the
//!   subscription's `unreadable_batches` policy: `fail` names the partition, offset and reason
//!   in the subscription's health (counted once in `partitions_failed`) and retries with
//!   backoff; `skip` stores the raw batch in the dead-letter topic (retried until stored; the
//!   health names it meanwhile), marks its offsets done for commits, and moves the reader past
//!   it. Fetches failing `REPORT_AFTER` times in a row are named in the health the same way
//!   until one succeeds.
//! - While its partition is paused (see `pause`) the loop fetches nothing: a fetch in progress
//!   is dropped (readers are cancel-safe) and the next one starts from the same position once
//!   resumed.
//! - A loop is a supervised child (`fetch`, in its partition's scope `fetch/<topic>-<p>`):
//!   restarted after a panic, it takes over the previous incarnation's reader and resumes at
//!   the next offset not handed to the dispatch (`resume`: what the dispatch holds is handled
//!   and committed as usual, what was fetched and not handed over is fetched again), so
//!   nothing is skipped and nothing is handed to the dispatch twice. Past its restart
//!   intensity the failure escalates to the subscription's isolated `fetch` scope, which the
//!   control task watches: the subscription fails visibly.
//! - The lag is refreshed once per fetched batch from what the reader saw (high watermark,
//!   position): no extra request, nothing per message.

use std::sync::Arc;
use std::time::Duration;

use bus_supervisor::{Backoff, ChildSpec, Scope};

use super::pause::PauseWatch;
use super::process::{NotStored, Runtime};
use crate::backend::{PartitionReader, ReadError, UnreadableBatch};
use crate::consumer::dead_letter_headers as h;
use crate::dispatch::KeyedDispatch;
use crate::health::PartitionFailure;
use crate::metrics::Metrics;
use crate::options::UnreadableBatches;
use crate::record::{Headers, Message, Record, TopicPartition};

/// The delays between retries of a failed fetch: 200 ms, doubling, at most 5 s.
const FETCH_RETRY: Backoff =
    Backoff { initial: Duration::from_millis(200), max: Duration::from_secs(5), multiplier: 2.0 };

/// Failed fetches in a row after which the partition is named in the health.
const REPORT_AFTER: u32 = 5;

/// The reason of a dead-lettered batch.
const UNREADABLE_BATCH: &str = "unreadable-batch";

/// How a fetch loop is supervised: restarted after a panic or an abort (it ends normally when
/// its scope is cancelled), at most 3 restarts in 30 s, 100 ms doubling to 2 s between them; a
/// fourth escalates (the subscription fails).
pub(super) fn child_spec() -> ChildSpec {
    ChildSpec::transient()
        .intensity(3, Duration::from_secs(30))
        .backoff(Duration::from_millis(100), Duration::from_secs(2), 2.0)
        .shutdown_timeout(Duration::from_secs(1))
}

/// What one incarnation of a fetch loop hands to the next.
pub(super) type Handover = bus_supervisor::Handover<FetchLoop>;

/// Runs one incarnation of a fetch loop in `scope` (its supervised scope) until the scope is
/// cancelled, taking over the previous incarnation's loop: a restarted one moves the reader
/// back to the next offset not handed to the dispatch.
pub(super) async fn run(scope: Scope, handover: Handover) -> Result<(), &'static str> {
    let mut held = handover.take();
    let restarted = held.restarted();
    let Some(fetch) = held.get_mut() else {
        return Err("no fetch loop state to take over");
    };
    fetch.token = scope.token();
    fetch.path = Arc::from(scope.path());
    if restarted {
        if let Some(offset) = fetch.resume {
            fetch.reader.seek(offset);
        }
        tracing::warn!(
            partition = %fetch.partition, resume = ?fetch.resume,
            "the fetch loop restarted after a panic; reading on from the next offset not handed \
             to the dispatch"
        );
    }
    fetch.run().await;
    Ok(())
}

impl Drop for FetchLoop {
    /// The loop is over for good (its partition released, or the subscription stopped): its
    /// gauges no longer say anything.
    fn drop(&mut self) {
        self.lag.clear();
    }
}

/// Reads one partition into the dispatch until cancelled, pausing while the dispatch is full.
pub(super) struct FetchLoop {
    reader: Box<dyn PartitionReader>,
    dispatch: KeyedDispatch,
    runtime: Arc<Runtime>,
    token: bus_supervisor::CancellationToken,
    partition: TopicPartition,
    /// Largest group of messages handed to the dispatch at once (its in-flight bound).
    chunk: usize,
    /// The partition's pause state (never paused when none).
    pause: Option<PauseWatch>,
    /// The next offset not handed to the dispatch, once known: where a restart resumes.
    resume: Option<i64>,
    /// Failed reads in a row (unreadable batches included).
    failures: u32,
    /// The incarnation's task path (fault points).
    path: Arc<str>,
    /// The partition's lag gauges.
    lag: super::telemetry::PartitionLag,
}

impl FetchLoop {
    pub(super) fn new(
        reader: Box<dyn PartitionReader>,
        dispatch: KeyedDispatch,
        runtime: Arc<Runtime>,
        token: bus_supervisor::CancellationToken,
        partition: TopicPartition,
        chunk: usize,
    ) -> Self {
        let resume = reader.position();
        let lag = super::telemetry::PartitionLag::new(&runtime.options.group, &partition);
        FetchLoop {
            reader,
            dispatch,
            runtime,
            token,
            partition,
            chunk,
            resume,
            failures: 0,
            path: Arc::from(""),
            lag,
            pause: None,
        }
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

    /// This loop, ready to be supervised: its first incarnation takes it over.
    pub(super) fn handover(self) -> Handover {
        Handover::new(self)
    }

    /// Notes what the reader saw after a fetch: the partition's lag and progress.
    fn note_progress(&self) {
        let high_watermark = self.reader.high_watermark();
        let position = self.reader.position();
        let (lag, position_lag, backlog) =
            self.runtime.health.fetched(&self.partition, high_watermark, position);
        self.lag.set(lag, position_lag);
        self.runtime.telemetry.backlog.set(backlog as f64);
    }

    pub(super) async fn run(&mut self) {
        loop {
            crate::fault::point(&self.path).await;
            if !self.wait_while_paused().await {
                return;
            }
            let failures = self.failures;
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
                // The backend's configuration bounds what one fetch brings.
                batch = self.reader.next_batch(usize::MAX) => batch,
            };
            let failure = match batch {
                Ok(batch) => {
                    if failures > 0 {
                        self.failures = 0;
                        self.runtime.health.partition_recovered(&self.partition);
                    }
                    self.note_progress();
                    if batch.is_empty() {
                        continue;
                    }
                    Metrics::add(&self.runtime.metrics.received, batch.len() as u64);
                    self.runtime.telemetry.batch_records.record(batch.len() as f64);
                    let (dispatch, token, chunk) = (&self.dispatch, &self.token, self.chunk);
                    if !submit_in_chunks(dispatch, token, chunk, batch, &mut self.resume).await {
                        return;
                    }
                    self.resume = self.reader.position().or(self.resume);
                    continue;
                }
                Err(ReadError::Unreadable(batch)) => {
                    match self.runtime.options.unreadable_batches {
                        UnreadableBatches::Skip => {
                            if !self.skip(batch).await {
                                return;
                            }
                            continue;
                        }
                        UnreadableBatches::Fail => {
                            let failure = PartitionFailure {
                                partition: self.partition.clone(),
                                offset: Some(batch.first_offset),
                                reason: batch.to_string(),
                            };
                            if failures == 0 {
                                tracing::error!(
                                    partition = %self.partition, offset = batch.first_offset,
                                    reason = %batch.reason,
                                    "a record batch cannot be read; the partition stops here \
                                     (policy `fail`; retrying with backoff)"
                                );
                            }
                            Some(failure)
                        }
                    }
                }
                Err(ReadError::Group(error)) => {
                    tracing::warn!(partition = %self.partition, %error, "fetch failed; retrying");
                    (failures + 1 >= REPORT_AFTER).then(|| PartitionFailure {
                        partition: self.partition.clone(),
                        offset: self.reader.position(),
                        reason: format!("{} fetches in a row failed: {error}", failures + 1),
                    })
                }
            };
            if let Some(failure) = failure {
                self.runtime.health.partition_failed(failure, &self.runtime.metrics);
            }
            let delay = FETCH_RETRY.delay(failures);
            self.failures = failures.saturating_add(1);
            tokio::select! {
                () = self.token.cancelled() => return,
                () = tokio::time::sleep(delay) => {}
            }
        }
    }

    /// The `skip` policy: stores `batch` whole in the dead-letter topic (retrying until it is
    /// stored), marks its offsets done and moves the reader past it. False when the loop must
    /// stop (cancelled, or the bus is shutting down: the batch stays uncommitted).
    async fn skip(&mut self, batch: UnreadableBatch) -> bool {
        let runtime = Arc::clone(&self.runtime);
        let mut headers = Headers::new();
        headers.set(h::REASON, UNREADABLE_BATCH.to_owned());
        headers.set(h::ERROR, batch.reason.clone());
        headers.set(h::SOURCE_TOPIC, batch.partition.topic.to_string());
        headers.set(h::SOURCE_PARTITION, batch.partition.partition.to_string());
        headers.set(h::SOURCE_OFFSET, batch.first_offset.to_string());
        headers.set(h::FIRST_OFFSET, batch.first_offset.to_string());
        headers.set(h::LAST_OFFSET, batch.last_offset.to_string());
        headers.set(h::GROUP, runtime.options.group.clone());
        let record = Record {
            topic: runtime.options.dead_letter_topic_for(&batch.partition.topic),
            key: None,
            value: Some(batch.raw.clone()),
            headers,
            timestamp: None,
            partition: None,
        };
        let what = "unreadable record batch";
        let storing = runtime.store_dead_letter(record, &self.partition, batch.first_offset, what);
        let stored = tokio::select! {
            biased;
            () = self.token.cancelled() => return false,
            stored = storing => stored,
        };
        match stored {
            Ok(delivery) => {
                Metrics::bump(&runtime.metrics.batches_dead_lettered);
                tracing::warn!(
                    partition = %self.partition, first_offset = batch.first_offset,
                    last_offset = batch.last_offset, dead_letter_topic = %delivery.topic,
                    dead_letter_offset = delivery.offset, reason = %batch.reason,
                    "a record batch that cannot be read was dead-lettered whole; skipping it"
                );
                self.dispatch.skip(&self.partition, batch.last_offset);
                let next = batch.last_offset.max(batch.first_offset).saturating_add(1);
                self.reader.seek(next);
                self.resume = Some(next);
                true
            }
            Err(NotStored::ShuttingDown) => false,
            Err(NotStored::Refused(reason)) => {
                runtime.fail_subscription(&self.partition, batch.first_offset, reason);
                false
            }
        }
    }
}

/// Hands `batch` to `dispatch` in chunks no larger than `chunk`, each waiting for room. Each
/// message is moved once, from the batch into its dispatch slot. `resume` follows: the offset
/// of the first message not handed over. False when the loop must stop.
async fn submit_in_chunks(
    dispatch: &KeyedDispatch,
    token: &bus_supervisor::CancellationToken,
    chunk: usize,
    batch: Vec<Message>,
    resume: &mut Option<i64>,
) -> bool {
    let mut rest = batch.into_iter();
    while let Some(next) = rest.as_slice().first() {
        *resume = Some(next.offset);
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use std::sync::Mutex;

    use bus_supervisor::Supervisor;

    use super::*;
    use crate::dispatch::{DispatchConfig, ProcessFn, Processed};
    use crate::future::BoxFuture;
    use crate::memory::{MemoryBackend, MemoryConfig};
    use crate::options::SubscribeOptions;

    /// A reader that records what it is asked for and returns one message, once.
    struct Recording {
        asked: Arc<Mutex<Vec<usize>>>,
    }

    impl PartitionReader for Recording {
        fn next_batch(
            &mut self,
            max_bytes: usize,
        ) -> BoxFuture<'_, Result<Vec<Message>, ReadError>> {
            let first = {
                let mut asked = self.asked.lock().unwrap();
                asked.push(max_bytes);
                asked.len() == 1
            };
            Box::pin(async move {
                if !first {
                    std::future::pending::<()>().await;
                }
                Ok(vec![Message {
                    topic: "t".into(),
                    partition: 0,
                    offset: 0,
                    key: None,
                    value: Some(bytes::Bytes::new()),
                    headers: Headers::new(),
                    timestamp: chrono::DateTime::default(),
                }])
            })
        }

        fn seek(&mut self, _offset: i64) {}

        fn position(&self) -> Option<i64> {
            None
        }
    }

    #[tokio::test]
    async fn the_loop_leaves_the_fetch_size_to_the_backend_configuration() {
        // Before, the loop asked for at most 1 MiB whatever `consumer.fetch_max_bytes` said.
        let supervisor = Supervisor::builder("test").build();
        let backend =
            MemoryBackend::new(supervisor.root().child("memory"), MemoryConfig::default()).unwrap();
        let runtime = Arc::new(Runtime::new(
            backend,
            Arc::new(Metrics::default()),
            "t",
            SubscribeOptions::new("g"),
        ));
        let process: ProcessFn = Arc::new(|_m: Message| Box::pin(async { Processed::Done }));
        let dispatch =
            KeyedDispatch::start(&supervisor.root().child("d"), DispatchConfig::default(), process)
                .unwrap();
        let asked: Arc<Mutex<Vec<usize>>> = Arc::default();
        let reader = Box::new(Recording { asked: Arc::clone(&asked) });
        let scope = supervisor.root().child("fetch");
        let fetch = FetchLoop::new(
            reader,
            dispatch.clone(),
            runtime,
            scope.token(),
            TopicPartition::new("t", 0),
            16,
        );
        let handover = fetch.handover();
        scope.spawn("fetch", run(scope.child("fetch"), handover)).unwrap().detach();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while asked.lock().unwrap().len() < 2 {
            assert!(tokio::time::Instant::now() < deadline, "the loop fetched twice");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(asked.lock().unwrap().iter().all(|&n| n == usize::MAX), "{asked:?}");
        supervisor.shutdown(Duration::from_secs(5)).await.unwrap();
    }
}
