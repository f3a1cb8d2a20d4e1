//! The cache updater: reads `order-events` in a consumer group through [`ChannelConsumer`] and brings
//! each cached order up to the event's version: a compare-and-set of the entry if it is cached, the
//! revocation of a reader's pending lease if one is filling it, nothing if it is not cached (see the
//! [protocol](crate::cache)).
//!
//! A batch at a time (the seed's `Buffer(1000, 10 ms)`), written to Redis in pipelined chunks of
//! [`WRITE_CHUNK`] orders; only once Redis confirmed a chunk are its messages handled, so a crash or a
//! rebalance before that makes them come again, never go missing.
//!
//! While Redis is down the updater retries the same chunk with back-off. It does not block the consumer
//! meanwhile: `ChannelConsumer` keeps polling Kafka on its own thread, pausing partitions when its buffer
//! fills, so the group keeps this member instead of kicking it out after `max.poll.interval.ms`.
//!
//! A message that carries no order the cache could use (undecodable, or an `OrderEvent` without a valid
//! order: see [`OrderChanges`]) is set aside in the dead-letter topic with its original bytes and
//! headers, beside the loop, so its partition keeps flowing (see [`DeadLetters`]).

use std::future::Future;
use std::time::{Duration, SystemTime};

use rdkafka::ClientConfig;
use rdkafka::message::Headers;
use rdkafka::producer::FutureProducer;
use tokio_stream::{Stream, StreamExt};
use tokio_util::sync::CancellationToken;

use super::dead_letters::DeadLetters;
use super::order_change::OrderChanges;
use crate::backoff::Backoff;
use crate::cache::{CacheError, OrderCache, WriteOutcome};
use crate::config::Assignment;
use crate::kafka::{ChannelConsumer, ConsumerError, Item, KafkaMessage};
use crate::proto::orders::v1 as pb;
use crate::telemetry::ErrorChain;
use crate::telemetry::metrics;
use crate::telemetry::trace_context::{TRACEPARENT, TraceId, trace_id_of};

/// How long the updater waits to fill a batch (the seed's 10 ms).
const BATCH_WINDOW: Duration = Duration::from_millis(10);

/// Orders per Redis pipeline. Redis's response timeout (500 ms) applies to a whole pipeline, and a
/// pipeline that times out is retried whole: a batch of thousands written in one piece could time out
/// under load on every try. A chunk of 100 runs in about a millisecond in Redis even so, and the round
/// trip it adds per 100 events is tens of microseconds on a local network.
pub const WRITE_CHUNK: usize = 100;

pub type EventConsumer = ChannelConsumer<i64, pb::Order>;
type Event = KafkaMessage<i64, pb::Order>;

#[derive(Debug, thiserror::Error)]
pub enum UpdaterError {
    #[error(transparent)]
    Consumer(#[from] ConsumerError),
    #[error("the event stream ended")]
    StreamEnded,
}

/// What the updater needs from a cache: [`OrderCache::update_many`]. A seam, so that the consistency
/// harness can run the updater with a deliberately broken write and show that its checker notices.
pub trait UpdateCache: Send + Sync + 'static {
    fn update_many(
        &self,
        orders: &[pb::Order],
    ) -> impl Future<Output = Result<Vec<WriteOutcome>, CacheError>> + Send;
}

impl UpdateCache for OrderCache {
    async fn update_many(&self, orders: &[pb::Order]) -> Result<Vec<WriteOutcome>, CacheError> {
        OrderCache::update_many(self, orders).await
    }
}

pub struct CacheUpdater<W = OrderCache> {
    cache: W,
    dead_letters: DeadLetters,
    batch_size: usize,
}

impl<W: UpdateCache> CacheUpdater<W> {
    pub fn new(cache: W, dead_letters: FutureProducer, dead_letter_topic: String, batch_size: usize) -> Self {
        Self {
            cache,
            dead_letters: DeadLetters::new(dead_letters, dead_letter_topic),
            batch_size,
        }
    }

    /// The consumer this updater reads with: group `group`, offsets stored by `handle()` and committed
    /// by librdkafka, a new group starting from the oldest event.
    pub fn consumer(
        brokers: &str,
        group: &str,
        topic: &str,
        assignment: Assignment,
        batch_size: usize,
    ) -> Result<EventConsumer, ConsumerError> {
        ChannelConsumer::builder(consumer_config(brokers, group, assignment), topic)
            .consume_size(batch_size)
            .value_deserializer(OrderChanges)
            .build()
    }

    /// Applies events until `shutdown` or a fatal consumer error. `events` is an [`EventConsumer`]
    /// (the harness may wrap it); dropping it at the end closes the consumer: handled offsets are
    /// committed and the group rebalances at once.
    pub async fn run(
        mut self,
        events: impl Stream<Item = Item<i64, pb::Order>>,
        shutdown: CancellationToken,
    ) -> Result<(), UpdaterError> {
        let mut batches = std::pin::pin!(events.chunks_timeout(self.batch_size, BATCH_WINDOW));
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                // Back-pressure: while the dead-letter topic owes too many acknowledgements, no new batch.
                batch = batches.next(), if !self.dead_letters.is_full() => {
                    self.apply(batch.ok_or(UpdaterError::StreamEnded)?, &shutdown).await?;
                }
                () = self.dead_letters.settle_next() => {}
            }
        }
        tracing::info!(
            unsent_dead_letters = self.dead_letters.pending(),
            "cache updater stopped"
        );
        Ok(())
    }

    /// One batch: its poison to the dead-letter topic, its orders to Redis a chunk at a time; each event
    /// is handled once its chunk is written.
    #[tracing::instrument(name = "apply batch", skip_all, fields(messages = batch.len()))]
    async fn apply(
        &mut self,
        batch: Vec<Item<i64, pb::Order>>,
        shutdown: &CancellationToken,
    ) -> Result<(), UpdaterError> {
        let events = self.set_aside_poison(batch)?;
        for chunk in events.chunks(WRITE_CHUNK) {
            let orders: Vec<pb::Order> = chunk.iter().map(|event| event.value().clone()).collect();
            let Some(outcomes) = write(&self.cache, &orders, shutdown).await else {
                // Not handled: the next owner of these partitions gets them again.
                return Ok(());
            };
            record(&orders, &outcomes);
            for (event, outcome) in chunk.iter().zip(&outcomes) {
                tracing::debug!(
                    order_id = event.value().order_id,
                    version = event.value().version,
                    outcome = outcome.as_str(),
                    trace_id = trace_id(event).map(tracing::field::display),
                    "applied"
                );
                event.handle();
            }
        }
        Ok(())
    }

    /// The usable events of `batch`, in order; its poison messages go to the dead-letter topic.
    fn set_aside_poison(&mut self, batch: Vec<Item<i64, pb::Order>>) -> Result<Vec<Event>, UpdaterError> {
        let mut events = Vec::with_capacity(batch.len());
        for item in batch {
            match item {
                Ok(event) => events.push(event),
                Err(ConsumerError::Undecodable(poison)) => self.dead_letters.submit(poison),
                Err(fatal) => return Err(fatal.into()),
            }
        }
        Ok(events)
    }
}

/// The librdkafka settings of the updater's consumer (see [`CacheUpdater::consumer`]).
fn consumer_config(brokers: &str, group: &str, assignment: Assignment) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .set("enable.auto.commit", "true")
        .set("enable.auto.offset.store", "false")
        .set("auto.commit.interval.ms", "1000")
        .set("auto.offset.reset", "earliest")
        // For the lag metric (orders_updater_consumer_lag).
        .set("statistics.interval.ms", "5000")
        .set("log_level", "4");
    if assignment == Assignment::Consumer {
        // KIP-848: the broker assigns; the client-side strategy and timeouts are not allowed.
        config.set("group.protocol", "consumer");
    } else {
        config
            .set("partition.assignment.strategy", assignment.name())
            .set("session.timeout.ms", "10000")
            .set("heartbeat.interval.ms", "1000");
    }
    config
}

/// The trace id of the request that made the change, from the message's `traceparent` header.
fn trace_id(event: &Event) -> Option<TraceId> {
    let header = event.headers()?.iter().find(|header| header.key == TRACEPARENT)?;
    trace_id_of(header.value?)
}

/// Writes `orders` (one chunk) to `cache`, retrying with back-off until Redis answers; `None` if
/// shutdown came first. (A function of the cache alone: the updater, which holds the dead letters'
/// futures, is not `Sync`, so its `run` future must not hold a `&self` across this wait.)
async fn write(
    cache: &impl UpdateCache,
    orders: &[pb::Order],
    shutdown: &CancellationToken,
) -> Option<Vec<WriteOutcome>> {
    let mut backoff = Backoff::default();
    loop {
        match cache.update_many(orders).await {
            Ok(outcomes) => return Some(outcomes),
            Err(error) => {
                metrics::updater_redis_retry();
                tracing::warn!(error = %ErrorChain(&error), events = orders.len(), "redis write failed; retrying the chunk");
                tokio::select! {
                    _ = shutdown.cancelled() => return None,
                    _ = tokio::time::sleep(backoff.next_delay()) => {}
                }
            }
        }
    }
}

/// Counts what the writes did, and how old each event was when applied.
fn record(orders: &[pb::Order], outcomes: &[WriteOutcome]) {
    for outcome in outcomes {
        metrics::updater_events(outcome.as_str(), 1);
    }
    let now = SystemTime::now();
    for order in orders {
        if let Some(updated) = order.updated_at.and_then(|t| SystemTime::try_from(t).ok())
            && let Ok(age) = now.duration_since(updated)
        {
            metrics::updater_event_age(age);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_consumer_protocol_is_chosen_only_when_asked_for_and_strategies_otherwise() {
        let broker_side = consumer_config("b:9092", "g", Assignment::Consumer);
        assert_eq!(broker_side.get("group.protocol"), Some("consumer"));
        assert_eq!(broker_side.get("partition.assignment.strategy"), None);
        for assignment in [
            Assignment::CooperativeSticky,
            Assignment::Range,
            Assignment::Roundrobin,
        ] {
            let classic = consumer_config("b:9092", "g", assignment);
            assert_eq!(classic.get("group.protocol"), None, "{assignment:?}");
            assert_eq!(
                classic.get("partition.assignment.strategy"),
                Some(assignment.name())
            );
        }
    }
}
