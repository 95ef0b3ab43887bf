//! What leaves without an acknowledgement: batches past their delivery timeout, a batch the
//! broker rejects, a fail-back requested by a flush past its deadline, and everything at the
//! loop's end; each entry's future resolved with its error, in acceptance order.

use super::*;

impl Batcher {
    /// Fails, in order, the sealed batches whose oldest record reaches its delivery timeout by
    /// `at` (nothing may be in flight).
    pub(super) fn expire_sealed(&mut self, at: Instant, delivery_timeout: Duration) {
        let mut expired = false;
        while self.sealed.front().is_some_and(|s| s.deadline(delivery_timeout) <= at) {
            let Some(sealed) = self.sealed.pop_front() else { break };
            let last_error = self.last_error.clone().unwrap_or_default();
            if !expired {
                self.shared.health.failed(&self.state.topic, self.state.partition, &last_error);
                tracing::warn!(
                    topic = %self.state.topic, partition = self.state.partition,
                    attempts = sealed.attempts, last_error = %last_error,
                    records = sealed.entries.len(),
                    "produce failed past the delivery timeout; failing the batch back"
                );
            }
            expired = true;
            let (attempts, now) = (sealed.attempts, Instant::now());
            self.fail_timed_out(sealed.entries, attempts, &last_error, now);
        }
        if expired {
            self.abandon_session();
        }
    }

    /// Fails, in order, the records at the front of the batch being formed that are past their
    /// delivery timeout (they waited behind a failing batch). Only when nothing older is held.
    pub(super) fn expire_batch(&mut self, delivery_timeout: Duration) {
        let now = Instant::now();
        let expired =
            self.batch.iter().take_while(|e| e.accepted + delivery_timeout <= now).count();
        if expired == 0 {
            return;
        }
        let last_error = self
            .last_error
            .clone()
            .unwrap_or_else(|| "the record waited in the partition's queue too long".into());
        let entries: Vec<Entry> = self.batch.drain(..expired).collect();
        for entry in &entries {
            self.batch_bytes -= encode::estimate(entry);
        }
        self.fail_timed_out(entries, 0, &last_error, now);
    }

    /// Fails `entries`, in order, with [`PublishError::DeliveryTimeout`].
    pub(super) fn fail_timed_out(
        &mut self,
        entries: Vec<Entry>,
        attempts: u32,
        last_error: &str,
        now: Instant,
    ) {
        let shared = Arc::clone(&self.shared);
        let mut release = Release::new(&shared.buffer);
        let partition = self.state.partition;
        let count = entries.len() as u64;
        for entry in entries {
            let elapsed = now.saturating_duration_since(entry.accepted);
            entry.resolve(&mut release, |topic| {
                Err(PublishError::DeliveryTimeout {
                    topic,
                    partition,
                    attempts,
                    elapsed,
                    last_error: last_error.to_owned(),
                })
            });
        }
        drop(release);
        self.shared.resolved(&self.state, 0, count);
    }

    /// Fails the oldest sealed batch: the broker rejected it, or it cannot be sent.
    pub(super) fn reject_oldest(&mut self, reason: &str) {
        let Some(sealed) = self.sealed.pop_front() else { return };
        tracing::warn!(
            topic = %self.state.topic, partition = self.state.partition, %reason,
            records = sealed.entries.len(), "the broker rejected a batch"
        );
        self.shared.health.failed(&self.state.topic, self.state.partition, reason);
        let failed = sealed.entries.len() as u64;
        let shared = Arc::clone(&self.shared);
        let mut release = Release::new(&shared.buffer);
        let partition = self.state.partition;
        for entry in sealed.entries {
            entry.resolve(&mut release, |topic| {
                Err(PublishError::Rejected { topic, partition, reason: reason.to_owned() })
            });
        }
        drop(release);
        self.shared.resolved(&self.state, 0, failed);
        // Its sequence numbers will never be stored: the ones after it would be out of order.
        self.abandon_session();
    }

    pub(super) fn fail_back_due(&self) -> bool {
        let through = self.state.fail_through.load(Ordering::Acquire);
        through > self.state.resolved.load(Ordering::Acquire)
    }

    /// Fails back, in order, every entry whose index is below `fail_through` (nothing when no
    /// fail-back is due: a stale wake-up). What is in flight is given up;
    /// what stays is batched afresh (under a new identity, when sealed batches were given up).
    pub(super) fn fail_back(&mut self) {
        if !self.fail_back_due() {
            return;
        }
        self.drop_link();
        self.retry_at = None;
        let through = self.state.fail_through.load(Ordering::Acquire);
        let mut index = self.oldest_index();
        let mut failed = 0;
        let shared = Arc::clone(&self.shared);
        let mut release = Release::new(&shared.buffer);
        if !self.sealed.is_empty() {
            self.abandon_session();
        }
        let sealed = self.sealed.drain(..).flat_map(|s| s.entries);
        let mut held: Vec<Entry> =
            sealed.chain(self.batch.drain(..)).chain(self.carry.drain(..)).collect();
        let keep = held.split_off(
            usize::try_from(through.saturating_sub(index)).unwrap_or(usize::MAX).min(held.len()),
        );
        for entry in held {
            entry.resolve(&mut release, |topic| {
                Err(PublishError::NotAcknowledgedAtShutdown { topic })
            });
            failed += 1;
            index += 1;
        }
        // What stays (accepted after the flush began) is batched afresh, in order.
        self.batch_bytes = 0;
        self.carry = keep.into();
        while index < through {
            let Ok(entry) = self.rx.try_recv() else { break };
            self.received += 1;
            self.take_queued(entry.size);
            entry.resolve(&mut release, |topic| {
                Err(PublishError::NotAcknowledgedAtShutdown { topic })
            });
            failed += 1;
            index += 1;
        }
        self.shared.resolved(&self.state, 0, failed);
    }

    /// At the end of the loop: fails back everything held and queued, and closes the channel.
    pub(super) fn fail_everything(&mut self) {
        self.rx.close();
        self.drop_link();
        let mut failed = 0;
        let shared = Arc::clone(&self.shared);
        let mut release = Release::new(&shared.buffer);
        let sealed = self.sealed.drain(..).flat_map(|s| s.entries);
        let held: Vec<Entry> =
            sealed.chain(self.batch.drain(..)).chain(self.carry.drain(..)).collect();
        for entry in held {
            entry.resolve(&mut release, |topic| {
                Err(PublishError::NotAcknowledgedAtShutdown { topic })
            });
            failed += 1;
        }
        while let Ok(entry) = self.rx.try_recv() {
            self.received += 1;
            self.take_queued(entry.size);
            entry.resolve(&mut release, |topic| {
                Err(PublishError::NotAcknowledgedAtShutdown { topic })
            });
            failed += 1;
        }
        self.batch_bytes = 0;
        if failed > 0 {
            self.shared.resolved(&self.state, 0, failed);
        }
    }
}
