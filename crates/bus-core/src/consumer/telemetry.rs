//! A subscription's metrics through the `metrics` facade.
//!
//! Owns: [`SubscriptionMetrics`] (labels `group`, `topic`: the subscription's label) and
//! [`PartitionLag`] (labels `group`, `topic`, `partition`), registered once when the
//! subscription starts and when a partition's fetch loop is created, so that nothing on the
//! per-message path builds a label or looks a metric up (no lock, no allocation). Without a
//! recorder installed every handle is a no-op. Names and meanings: docs/OPERATIONS.md.
//!
//! The bus-wide totals of [`MetricsSnapshot`](crate::health::MetricsSnapshot) stay the one model of
//! what happened; these handles carry the same events with labels to an exporter.

use metrics::{Counter, Gauge, Histogram, counter, gauge, histogram};

use crate::record::TopicPartition;

/// One subscription's counters and histograms.
pub(crate) struct SubscriptionMetrics {
    /// `bus_consumer_messages_total{outcome="handled"}`.
    pub(crate) handled: Counter,
    /// `bus_consumer_messages_total{outcome="dead_lettered"}`.
    pub(crate) dead_lettered: Counter,
    /// `bus_consumer_handler_failures_total`: failed handler attempts (each retry counts).
    pub(crate) handler_failures: Counter,
    /// `bus_consumer_retries_total`.
    pub(crate) retries: Counter,
    /// `bus_consumer_handler_seconds`: one handler attempt.
    pub(crate) handler_latency: Histogram,
    /// `bus_consumer_fetch_batch_records`: messages per fetched batch.
    pub(crate) batch_records: Histogram,
    /// `bus_consumer_rebalances_total`: revocations handled.
    pub(crate) rebalances: Counter,
    /// `bus_consumer_commits_total{outcome="ok"}`.
    pub(crate) commits: Counter,
    /// `bus_consumer_commits_total{outcome="failed"}`.
    pub(crate) commit_failures: Counter,
    /// `bus_consumer_backlog`: the sum of the partitions' lags.
    pub(crate) backlog: Gauge,
    /// `bus_consumer_failed`: 1 once the subscription failed for good.
    pub(crate) failed: Gauge,
}

impl SubscriptionMetrics {
    /// Registers the handles of the subscription `topic` in `group`.
    pub(crate) fn new(group: &str, topic: &str) -> Self {
        let labels = [("group", group.to_owned()), ("topic", topic.to_owned())];
        let with = |outcome: &'static str| {
            let mut labels = labels.to_vec();
            labels.push(("outcome", outcome.to_owned()));
            labels
        };
        SubscriptionMetrics {
            handled: counter!("bus_consumer_messages_total", &with("handled")),
            dead_lettered: counter!("bus_consumer_messages_total", &with("dead_lettered")),
            handler_failures: counter!("bus_consumer_handler_failures_total", &labels),
            retries: counter!("bus_consumer_retries_total", &labels),
            handler_latency: histogram!("bus_consumer_handler_seconds", &labels),
            batch_records: histogram!("bus_consumer_fetch_batch_records", &labels),
            rebalances: counter!("bus_consumer_rebalances_total", &labels),
            commits: counter!("bus_consumer_commits_total", &with("ok")),
            commit_failures: counter!("bus_consumer_commits_total", &with("failed")),
            backlog: gauge!("bus_consumer_backlog", &labels),
            failed: gauge!("bus_consumer_failed", &labels),
        }
    }
}

/// One assigned partition's lag gauges.
pub(crate) struct PartitionLag {
    /// `bus_consumer_lag`: high watermark minus the committed offset.
    lag: Gauge,
    /// `bus_consumer_position_lag`: high watermark minus the position.
    position_lag: Gauge,
}

impl PartitionLag {
    /// Registers the gauges of `partition` read by `group`.
    pub(crate) fn new(group: &str, partition: &TopicPartition) -> Self {
        let labels = [
            ("group", group.to_owned()),
            ("topic", partition.topic.to_string()),
            ("partition", partition.partition.to_string()),
        ];
        PartitionLag {
            lag: gauge!("bus_consumer_lag", &labels),
            position_lag: gauge!("bus_consumer_position_lag", &labels),
        }
    }

    /// Sets the gauges (those known).
    pub(crate) fn set(&self, lag: Option<i64>, position_lag: Option<i64>) {
        if let Some(lag) = lag {
            self.lag.set(lag as f64);
        }
        if let Some(position_lag) = position_lag {
            self.position_lag.set(position_lag as f64);
        }
    }

    /// Zeroes the gauges (the partition was released).
    pub(crate) fn clear(&self) {
        self.lag.set(0.0);
        self.position_lag.set(0.0);
    }
}
