//! The in-flight window: the link to the leader, handed the sealed batches in order up to the
//! window, their answers awaited in order, and what a failure does (what is in flight given up,
//! a backoff, everything sent again from the oldest; a batch too large split in two).

use super::*;
use tokio::sync::oneshot;

impl Batcher {
    /// Gets what sending needs: the partition's identity (idempotent) and the link to its
    /// leader, bounded by what is left of the oldest record's delivery timeout (at most
    /// `request_timeout`). False when they could not be had (the failure is handled) or a
    /// fail-back came first.
    pub(super) async fn prepare(&mut self) -> bool {
        let need_session = self.idempotent && self.session.is_none();
        let need_link = !self.link.as_ref().is_some_and(Link::is_open);
        if !need_session && !need_link {
            return true;
        }
        if need_link {
            self.drop_link();
        }
        let delivery_timeout = self.shared.config.producer.delivery_timeout;
        let Some(oldest) = self.sealed.front() else { return false };
        let budget = oldest
            .deadline(delivery_timeout)
            .saturating_duration_since(Instant::now())
            .min(self.shared.config.request_timeout);
        let shared = Arc::clone(&self.shared);
        let (unusable, topic, partition) = (self.unusable, &self.wire_topic, self.state.partition);
        let after = self.failed_at;
        let get = async {
            let identity = if need_session {
                Some(shared.identities.get(shared.client.connector(), unusable).await?)
            } else {
                None
            };
            let link = if need_link {
                let leader = shared.client.leaders().leader(topic, partition, after).await;
                let leader = leader.map_err(|e| Failure::of_leader(&e))?;
                Some(shared.links.get(&shared, &leader).map_err(Failure::Retriable)?)
            } else {
                None
            };
            Ok::<_, Failure>((identity, link))
        };
        let got = tokio::select! {
            biased;
            () = self.state.fail_back.notified() => return false,
            got = tokio::time::timeout(budget, get) => got,
        };
        match got {
            Ok(Ok((identity, link))) => {
                if let Some(identity) = identity {
                    self.start_session(identity);
                }
                if link.is_some() {
                    self.link = link;
                }
                true
            }
            Ok(Err(failure)) => {
                if let Some(oldest) = self.sealed.front_mut() {
                    oldest.attempts += 1;
                }
                self.on_failure(failure);
                false
            }
            Err(_) => {
                if let Some(oldest) = self.sealed.front_mut() {
                    oldest.attempts += 1;
                }
                let reason = self.unanswered(budget);
                self.on_failure(Failure::Retriable(reason));
                false
            }
        }
    }

    /// Gives up the link and what is in flight on it (sent again later; the link does not send
    /// what it has not sent yet, and its answers to the rest are dropped). The next leader
    /// lookup reads metadata younger than now.
    pub(super) fn drop_link(&mut self) {
        if self.link.take().is_some() {
            self.failed_at = Some(Instant::now());
        }
        self.answers.clear();
        self.sent = 0;
    }

    /// Hands the next sealed batch not in flight to the link.
    pub(super) fn send_next(&mut self) {
        let index = self.sent;
        let Some(sealed) = self.sealed.get(index) else { return };
        let batch = match &sealed.batch {
            Ok(batch) => batch.clone(),
            Err(failure) => {
                // Only the oldest gets here: nothing is in flight before it.
                let failure = failure.clone();
                self.on_failure(failure);
                return;
            }
        };
        let Some(link) = self.link.as_ref() else { return };
        let Ok(answer) = link.submit(&self.wire_topic, self.state.partition, batch) else {
            let reason = format!("the link to broker {} has ended", link.broker());
            self.on_failure(Failure::Retriable(reason));
            return;
        };
        let request_timeout = self.shared.config.request_timeout;
        let delivery_timeout = self.shared.config.producer.delivery_timeout;
        let sealed = &mut self.sealed[index];
        sealed.attempts += 1;
        let sent = Instant::now();
        sealed.sent_at = sent;
        // The link answers within request_timeout of its write; the write may wait behind the
        // requests in flight on the broker's connection.
        sealed.due = (sent + request_timeout * 2).min(sealed.deadline(delivery_timeout));
        self.answers.push_back(answer);
        self.sent += 1;
    }

    /// The answer to the oldest batch in flight (or its absence by its due time).
    pub(super) fn on_answer(
        &mut self,
        answer: Result<Result<Answer, oneshot::error::RecvError>, tokio::time::error::Elapsed>,
    ) {
        self.answers.pop_front();
        let count = self.sealed.front().map_or(0, |s| s.entries.len());
        let outcome = match answer {
            Ok(Ok(Ok(part))) => {
                produce::answer(&part, &self.wire_topic, self.state.partition, count)
            }
            Ok(Ok(Err(RequestError::Timeout { timeout, .. }))) => {
                Err(Failure::Retriable(self.unanswered(timeout)))
            }
            Ok(Ok(Err(error))) => Err(Failure::of_request(&error)),
            Ok(Err(_)) => Err(Failure::Retriable("the link to the leader ended".into())),
            Err(_) => {
                let waited = self.sealed.front().map_or(Duration::ZERO, |s| s.due - s.sent_at);
                Err(Failure::Retriable(self.unanswered(waited)))
            }
        };
        match outcome {
            Ok(stored) => {
                self.sent = self.sent.saturating_sub(1);
                self.acknowledge(stored);
            }
            Err(failure) => self.on_failure(failure),
        }
    }

    /// Why an attempt got no answer within `after`.
    pub(super) fn unanswered(&self, after: Duration) -> String {
        let mut reason = format!(
            "no acknowledgement within {after:?} (request_timeout, or what was left of \
             producer.delivery_timeout): the broker is unreachable or not answering"
        );
        if let Some(earlier) = self.last_error.as_deref().filter(|e| !e.starts_with("no ack")) {
            reason.push_str(&format!("; earlier: {earlier}"));
        }
        reason
    }

    /// A failure of the oldest sealed batch (or of getting a link or identity for it):
    /// what is in flight is given up; the batch is split, rejected, or sent again (with the ones
    /// after it) after a backoff, under a new identity when the broker's record of the producer
    /// disagrees with ours.
    pub(super) fn on_failure(&mut self, failure: Failure) {
        self.drop_link();
        let count = self.sealed.front().map_or(0, |s| s.entries.len());
        match failure {
            Failure::TooLarge(_) if count > 1 => self.split_oldest(),
            Failure::TooLarge(reason) | Failure::Fatal(reason) => self.reject_oldest(&reason),
            Failure::Sequence(reason) if !self.idempotent => self.reject_oldest(&reason),
            Failure::Sequence(reason) => {
                let (stamp, attempts) =
                    self.sealed.front().map_or((Stamp::NONE, 0), |s| (s.stamp, s.attempts));
                tracing::warn!(
                    topic = %self.state.topic, partition = self.state.partition, %reason,
                    producer_id = stamp.producer_id, epoch = stamp.epoch,
                    base_sequence = stamp.base_sequence, records = count, attempts,
                    "the broker's record of this producer disagrees with ours: the batches not \
                     acknowledged are sent again under a new producer epoch"
                );
                self.abandon_session();
                self.retry_later(reason);
            }
            Failure::Retriable(reason) => self.retry_later(reason),
        }
    }

    /// Schedules the next attempt after the backoff; the batches that would reach their
    /// delivery timeout before it fail now, in order.
    pub(super) fn retry_later(&mut self, reason: String) {
        self.note_retriable(reason);
        let wake = Instant::now() + self.backoff.delay(self.retries);
        self.retries = self.retries.saturating_add(1);
        let delivery_timeout = self.shared.config.producer.delivery_timeout;
        self.expire_sealed(wake, delivery_timeout);
        self.retry_at = (!self.sealed.is_empty()).then_some(wake);
    }

    /// Splits the oldest sealed batch (too large for the broker, so not stored) in two that
    /// keep its sequence range, the first half first.
    pub(super) fn split_oldest(&mut self) {
        let Some(oldest) = self.sealed.pop_front() else { return };
        let Sealed { mut entries, stamp, attempts, sent_at, due, .. } = oldest;
        let tail = entries.split_off(entries.len() / 2);
        let tail_stamp = match stamp.base_sequence {
            -1 => stamp,
            base => Stamp { base_sequence: advance(base, entries.len()), ..stamp },
        };
        for (entries, stamp) in [(tail, tail_stamp), (entries, stamp)] {
            let bytes = entries.iter().map(encode::estimate).sum();
            let batch = self.encode(&entries, bytes, stamp);
            self.sealed.push_front(Sealed { entries, batch, stamp, attempts, sent_at, due });
        }
    }

    pub(super) fn note_retriable(&mut self, reason: String) {
        tracing::debug!(
            topic = %self.state.topic, partition = self.state.partition, %reason,
            "produce failed; retrying"
        );
        self.shared.health.retrying(&self.state.topic, self.state.partition, &reason);
        self.state.metrics.retries.increment(1);
        self.last_error = Some(reason);
    }

    /// Resolves the oldest sealed batch: stored from an offset on, or (a duplicate of an
    /// earlier attempt) at offsets the broker did not say: `-1`.
    pub(super) fn acknowledge(&mut self, stored: Stored) {
        let Some(sealed) = self.sealed.pop_front() else { return };
        if let Some(session) = self.session.as_mut() {
            session.established = true;
        }
        self.shared.health.succeeded(&self.state.topic, self.state.partition);
        self.last_error = None;
        self.retries = 0;
        let partition = self.state.partition;
        let acked = sealed.entries.len() as u64;
        let metrics = &self.state.metrics;
        metrics.batch_records.record(acked as f64);
        if let Some(oldest) = sealed.entries.first() {
            metrics.latency.record(oldest.accepted.elapsed().as_secs_f64());
        }
        let shared = Arc::clone(&self.shared);
        let mut release = Release::new(&shared.buffer);
        match stored {
            // The batch's records are stored at consecutive offsets from the base offset.
            Stored::At(base_offset) => {
                for (offset, entry) in (base_offset..).zip(sealed.entries) {
                    entry.resolve(&mut release, |topic| Ok(Delivery { topic, partition, offset }));
                }
            }
            Stored::Duplicate => {
                for entry in sealed.entries {
                    entry.resolve(&mut release, |topic| {
                        Ok(Delivery { topic, partition, offset: -1 })
                    });
                }
            }
        }
        drop(release);
        self.shared.resolved(&self.state, acked, 0);
    }

    /// The index (channel order) of the oldest entry this loop holds.
    pub(super) fn oldest_index(&self) -> u64 {
        let sealed: usize = self.sealed.iter().map(|s| s.entries.len()).sum();
        let held = (sealed + self.batch.len() + self.carry.len()) as u64;
        self.received - held
    }
}
