//! The idempotent session: the producer identity a partition's batches carry and the next
//! sequence number; taking a new identity (and numbering the sealed batches from 0 again) when
//! the sequence is broken.

use super::*;

impl Batcher {
    /// The stamp of the next batch of `count` records: the session's next sequence numbers, or
    /// none (not idempotent, or no session yet: stamped when it starts).
    pub(super) fn next_stamp(&mut self, count: usize) -> Stamp {
        match self.session.as_mut() {
            Some(session) => {
                let stamp = Stamp {
                    producer_id: session.identity.id,
                    epoch: session.identity.epoch,
                    base_sequence: session.next_sequence,
                };
                session.next_sequence = advance(session.next_sequence, count);
                stamp
            }
            None => Stamp::NONE,
        }
    }

    /// Starts a session under `identity`: the sealed batches (none in flight) are numbered
    /// from 0, in order.
    pub(super) fn start_session(&mut self, identity: Identity) {
        self.unusable = None;
        let mut session = Session { identity, next_sequence: 0, established: false };
        for sealed in &mut self.sealed {
            let stamp = Stamp {
                producer_id: identity.id,
                epoch: identity.epoch,
                base_sequence: session.next_sequence,
            };
            session.next_sequence = advance(session.next_sequence, sealed.entries.len());
            sealed.stamp = stamp;
            if let Ok(batch) = &sealed.batch {
                sealed.batch = Ok(encode::restamp(batch, stamp));
            }
        }
        self.session = Some(session);
    }

    /// Gives up the partition's identity: it is replaced (the epoch bumped, or a new producer
    /// id) before the next send. Nothing may be in flight (the link is given up first).
    pub(super) fn abandon_session(&mut self) {
        if let Some(session) = self.session.take() {
            self.unusable = Some(session.identity);
        }
    }
}
