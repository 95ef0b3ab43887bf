//! Batching: the batch being formed (records taken from the channel, the carry that did not fit),
//! when it is ready (full, or its linger over, or the broker behind), the loop's wait, and
//! sealing it into an encoded, stamped batch.

use super::*;

impl Batcher {
    pub(super) fn push(&mut self, entry: Entry) {
        if self.batch.is_empty() {
            // A new batch: its linger starts with its first record.
            self.lingered = false;
        }
        self.batch_bytes += encode::estimate(&entry);
        self.batch.push(entry);
    }

    pub(super) fn take_queued(&self, size: usize) {
        self.state.queued_bytes.fetch_sub(size, Ordering::AcqRel);
    }

    /// When the batch's linger ends.
    pub(super) fn linger_end(&self, linger: Duration) -> Instant {
        self.batch.first().map_or_else(Instant::now, |e| e.accepted + linger)
    }

    /// Whether the batch is full (or more is queued than fits in it), or nothing more will
    /// come.
    pub(super) fn batch_full(&self, max_bytes: usize) -> bool {
        self.closed
            || !self.carry.is_empty()
            || self.batch_bytes >= max_bytes
            || self.batch_bytes + self.state.queued_bytes.load(Ordering::Acquire) >= max_bytes
    }

    /// Whether the batch is to be sent now: it is full, or its linger is over (or was waited
    /// out).
    pub(super) fn batch_ready(&self, linger: Duration, max_bytes: usize) -> bool {
        !self.batch.is_empty()
            && (self.lingered
                || self.batch_full(max_bytes)
                || Instant::now() >= self.linger_end(linger))
    }

    /// Whether the oldest request in flight has waited longer than the linger for its answer.
    pub(super) fn broker_behind(&self, linger: Duration) -> bool {
        self.sent > 0 && self.sealed.front().is_some_and(|s| s.sent_at + linger <= Instant::now())
    }

    /// Waits for the next thing to do: an answer from the broker, a record (when there is room
    /// for a batch and none is being formed), the batch's linger (when it may be sent once it
    /// is over) or a full batch, a fail-back.
    pub(super) async fn wait(&mut self, may_send: bool, room: bool, linger: Duration) {
        let want_record = room && !self.closed && self.batch.is_empty();
        let lingering = may_send && !self.batch.is_empty();
        let filling = room && !self.batch.is_empty();
        // Aimed a tick early: the timer ends a sleep about a tick after its deadline.
        let end = self.linger_end(linger);
        let wake = end.checked_sub(TIMER_TICK).unwrap_or(end);
        let in_flight = self.sent > 0 && !self.answers.is_empty();
        let due = self.sealed.front().map_or_else(Instant::now, |s| s.due);
        let Batcher { answers, rx, state, .. } = self;
        let answer = async {
            match answers.front_mut() {
                Some(answer) => tokio::time::timeout_at(due, answer).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            () = state.fail_back.notified() => {}
            answer = answer, if in_flight => self.on_answer(answer),
            entry = rx.recv(), if want_record => match entry {
                Some(entry) => {
                    self.received += 1;
                    self.take_queued(entry.size);
                    self.push(entry);
                }
                None => self.closed = true,
            },
            () = state.batch_full.notified(), if filling => {}
            () = tokio::time::sleep_until(wake), if lingering => self.lingered = true,
        }
    }

    /// Takes queued entries into the batch up to `max_bytes` (a lone record larger than that is
    /// sent alone): the carried ones first, then the channel's, received in chunks straight
    /// into the batch (each entry moved once); what does not fit is carried to the next batch.
    pub(super) async fn fill(&mut self, max_bytes: usize) {
        while let Some(entry) = self.carry.pop_front() {
            if !self.batch.is_empty() && self.batch_bytes + encode::estimate(&entry) > max_bytes {
                self.carry.push_front(entry);
                return;
            }
            self.push(entry);
        }
        loop {
            let start = self.batch.len();
            // What the channel holds now, without waiting (0: empty or closed).
            let got = std::future::poll_fn(|cx| {
                Poll::Ready(match self.rx.poll_recv_many(cx, &mut self.batch, RECV_CHUNK) {
                    Poll::Ready(n) => n,
                    Poll::Pending => 0,
                })
            })
            .await;
            if got == 0 {
                return;
            }
            self.received += got as u64;
            let mut queued = 0;
            let mut overflow = None;
            for (i, entry) in self.batch.iter().enumerate().skip(start) {
                queued += entry.size;
                if overflow.is_none() {
                    let estimate = encode::estimate(entry);
                    if i > 0 && self.batch_bytes + estimate > max_bytes {
                        overflow = Some(i);
                    } else {
                        self.batch_bytes += estimate;
                    }
                }
            }
            self.take_queued(queued);
            if let Some(i) = overflow {
                // In order, ahead of anything carried (nothing is: the carry was emptied).
                self.carry.extend(self.batch.drain(i..));
                return;
            }
        }
    }

    /// Encodes `entries` as one batch stamped with `stamp`.
    pub(super) fn encode(
        &self,
        entries: &[Entry],
        bytes: usize,
        stamp: Stamp,
    ) -> Result<Bytes, Failure> {
        encode::record_batch(entries, self.shared.config.producer.compression, bytes, stamp)
            .map_err(|reason| {
                Failure::Fatal(format!(
                    "topic `{}` partition {}: {reason}",
                    self.state.topic, self.state.partition
                ))
            })
    }

    /// Seals the batch being formed: its records get their publish time (once: resends send
    /// the same), its sequence numbers, and their encoding.
    pub(super) fn seal(&mut self) {
        let mut entries = std::mem::take(&mut self.batch);
        let bytes = std::mem::replace(&mut self.batch_bytes, 0);
        self.lingered = false;
        let publish_time = chrono::Utc::now();
        for entry in &mut entries {
            entry.record.timestamp.get_or_insert(publish_time);
        }
        let stamp = self.next_stamp(entries.len());
        let batch = self.encode(&entries, bytes, stamp);
        let now = Instant::now();
        let sealed = Sealed { entries, batch, stamp, attempts: 0, sent_at: now, due: now };
        self.sealed.push_back(sealed);
    }
}
