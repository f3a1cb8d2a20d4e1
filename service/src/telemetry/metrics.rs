//! The service's Prometheus metrics, named in one place.
//!
//! Recording goes through the `metrics` facade, so it costs next to nothing when no exporter is installed
//! (tests, tools); `install` serves them over HTTP at `METRICS_ADDR` (`GET /metrics`).

use std::net::SocketAddr;
use std::time::Duration;

use metrics::{counter, gauge, histogram};
use metrics_exporter_prometheus::PrometheusBuilder;

use crate::cache::WriteOutcome;

/// Serves `/metrics` on `address` from a background task.
pub fn install(address: SocketAddr) -> anyhow::Result<()> {
    PrometheusBuilder::new()
        .with_http_listener(address)
        .set_buckets(&[
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
        ])?
        .install()?;
    Ok(())
}

/// A call refused because the server was at its limit of calls in progress.
pub fn grpc_shed() {
    counter!("orders_grpc_calls_shed_total").increment(1);
}

/// How a read was answered, per order: `hit`, `miss`, `stale` (older than `min_version`), `corrupt`,
/// `unavailable` (Redis did not answer), or `skipped` (Redis not asked: the circuit breaker is open).
pub fn cache_read(result: &'static str, count: usize) {
    counter!("orders_cache_reads_total", "result" => result).increment(count as u64);
}

/// Whether reads skip Redis, which stopped answering (1), or use it (0).
pub fn cache_breaker_open(open: bool) {
    gauge!("orders_cache_breaker_open").set(if open { 1.0 } else { 0.0 });
}

/// What became of a read's fill of a miss (see [`WriteOutcome`]).
pub fn cache_fill(outcome: WriteOutcome) {
    counter!("orders_cache_fills_total", "result" => outcome.as_str()).increment(1);
}

/// The kinds of write the storage batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StorageWrite {
    Create,
    StatusChange,
}

impl StorageWrite {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Create => "create",
            Self::StatusChange => "status_change",
        }
    }
}

/// A batch of `writes` written in one statement: writes over batches is the mean batch.
pub fn storage_batch(kind: StorageWrite, writes: usize) {
    counter!("orders_storage_batches_total", "kind" => kind.as_str()).increment(1);
    counter!("orders_storage_batched_writes_total", "kind" => kind.as_str()).increment(writes as u64);
}

pub fn outbox_published(events: usize, publish_latency: Duration) {
    counter!("orders_outbox_published_total").increment(events as u64);
    histogram!("orders_outbox_publish_seconds").record(publish_latency.as_secs_f64());
}

pub fn outbox_backlog(rows: i64) {
    gauge!("orders_outbox_backlog").set(rows as f64);
}

/// What the cache updater did with events: a [`WriteOutcome`] (`written`, `stale`, `absent`,
/// `invalidated`), or `dead_lettered`.
pub fn updater_events(result: &'static str, count: usize) {
    counter!("orders_updater_events_total", "result" => result).increment(count as u64);
}

/// Time from an event's commit to its application in Redis.
pub fn updater_event_age(age: Duration) {
    histogram!("orders_updater_event_age_seconds").record(age.as_secs_f64());
}

/// Poison messages the dead-letter topic refused too often, waiting for a retry once a minute (each
/// holds back its partition's committed offset).
pub fn updater_dead_letters_parked(messages: usize) {
    gauge!("orders_updater_dead_letters_parked").set(messages as f64);
}

pub fn updater_redis_retry() {
    counter!("orders_updater_redis_retries_total").increment(1);
}

/// Messages of `partition` not yet consumed by the updater, as librdkafka last counted them.
pub fn consumer_lag(partition: i32, lag: i64) {
    gauge!("orders_updater_consumer_lag", "partition" => partition.to_string()).set(lag as f64);
}

/// A partition given to the updater's consumer by a rebalance (its first assignment included): summed
/// over a group's members, every assignment of a partition after its first is the partition moving.
pub fn partition_assigned(partition: i32) {
    counter!("orders_updater_partitions_assigned_total", "partition" => partition.to_string()).increment(1);
}

/// A partition taken from the updater's consumer by a rebalance.
pub fn partition_revoked(partition: i32) {
    counter!("orders_updater_partitions_revoked_total", "partition" => partition.to_string()).increment(1);
}

/// A `ChannelConsumer`'s report (every second): messages delivered and not handled, partitions held
/// back by back-pressure, and how long the oldest unhandled message has waited.
pub fn consumer_progress(
    topic: &str,
    unhandled: usize,
    held_back_partitions: usize,
    oldest_unhandled: Duration,
) {
    let topic = topic.to_string();
    gauge!("orders_consumer_unhandled_messages", "topic" => topic.clone()).set(unhandled as f64);
    gauge!("orders_consumer_held_back_partitions", "topic" => topic.clone()).set(held_back_partitions as f64);
    gauge!("orders_consumer_oldest_unhandled_seconds", "topic" => topic).set(oldest_unhandled.as_secs_f64());
}
