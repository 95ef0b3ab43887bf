//! The producer's metrics through the `metrics` facade, per partition.
//!
//! Owns: [`PartitionMetrics`], the handles of one partition's loop, registered once when the
//! loop is created (labels `topic`, `partition`), so that the loop's hot path touches only
//! pre-registered handles (no label strings, no registry lookup, no lock). Without a recorder
//! installed every handle is a no-op. Names and meanings: docs/OPERATIONS.md.

use metrics::{Counter, Histogram, counter, histogram};

/// One partition's producer metrics.
pub(crate) struct PartitionMetrics {
    /// `bus_publish_records_total{outcome="acked"}`: records the broker acknowledged.
    pub(crate) acked: Counter,
    /// `bus_publish_records_total{outcome="failed"}`: records failed back (rejected, timed
    /// out, failed at shutdown).
    pub(crate) failed: Counter,
    /// `bus_publish_batch_records`: records per acknowledged batch.
    pub(crate) batch_records: Histogram,
    /// `bus_publish_latency_seconds`: from acceptance of a batch's oldest record to its
    /// acknowledgement.
    pub(crate) latency: Histogram,
    /// `bus_publish_retries_total`: produce attempts that failed and are retried.
    pub(crate) retries: Counter,
}

impl PartitionMetrics {
    /// Registers the handles of `topic`'s `partition`.
    pub(crate) fn new(topic: &str, partition: i32) -> Self {
        let labels = [("topic", topic.to_owned()), ("partition", partition.to_string())];
        let with = |outcome: &'static str| {
            let mut labels = labels.to_vec();
            labels.push(("outcome", outcome.to_owned()));
            labels
        };
        PartitionMetrics {
            acked: counter!("bus_publish_records_total", &with("acked")),
            failed: counter!("bus_publish_records_total", &with("failed")),
            batch_records: histogram!("bus_publish_batch_records", &labels),
            latency: histogram!("bus_publish_latency_seconds", &labels),
            retries: counter!("bus_publish_retries_total", &labels),
        }
    }
}
