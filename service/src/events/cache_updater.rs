//! The cache updater: reads `order-events` in a consumer group through [`ChannelConsumer`] and brings
//! each cached order up to the event's version: a compare-and-set of the entry if it is cached, the
//! revocation of a reader's pending lease if one is filling it, nothing if it is not cached (see the
//! [protocol](crate::cache)).
//!
//! A batch at a time (the seed's `Buffer(1000, 10 ms)`): all of a batch's writes go to Redis in one
//! pipelined round trip, and only once Redis confirmed them are the messages handled, so a crash or a
//! rebalance before that makes them come again, never go missing.
//!
//! While Redis is down the updater retries the same batch with back-off. It does not block the consumer
//! meanwhile: `ChannelConsumer` keeps polling Kafka on its own thread, pausing partitions when its buffer
//! fills, so the group keeps this member instead of kicking it out after `max.poll.interval.ms`.
//!
//! A message that is not an `OrderEvent` (undecodable, or without an order) goes to the dead-letter topic
//! with headers that say where it came from and why, is counted, and is then handled like any other, so
//! its partition keeps flowing.

use std::future::Future;
use std::time::{Duration, SystemTime};

use rdkafka::ClientConfig;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use tokio_stream::{Stream, StreamExt};
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::cache::{CacheError, OrderCache, WriteOutcome};
use crate::kafka::{ChannelConsumer, ConsumerError, Item, Protobuf};
use crate::proto::orders::v1 as pb;
use crate::telemetry::metrics;

/// How long the updater waits to fill a batch (the seed's 10 ms).
const BATCH_WINDOW: Duration = Duration::from_millis(10);

pub type EventConsumer = ChannelConsumer<i64, pb::OrderEvent>;

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
    dead_letters: FutureProducer,
    dead_letter_topic: String,
    batch_size: usize,
}

/// What the updater must know of a message it could not use.
struct Poison<'a> {
    topic: &'a str,
    partition: i32,
    offset: i64,
    key: Option<&'a [u8]>,
    value: Option<&'a [u8]>,
    reason: String,
}

impl<W: UpdateCache> CacheUpdater<W> {
    pub fn new(cache: W, dead_letters: FutureProducer, dead_letter_topic: String, batch_size: usize) -> Self {
        Self {
            cache,
            dead_letters,
            dead_letter_topic,
            batch_size,
        }
    }

    /// The consumer this updater reads with: group `group`, offsets stored by `handle()` and committed
    /// by librdkafka, a new group starting from the oldest event. `assignment` is a
    /// `partition.assignment.strategy`, or `consumer` for Kafka 4's broker-side protocol.
    pub fn consumer(
        brokers: &str,
        group: &str,
        topic: &str,
        assignment: &str,
        batch_size: usize,
    ) -> Result<EventConsumer, ConsumerError> {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", brokers)
            .set("group.id", group)
            .set("enable.auto.commit", "true")
            .set("enable.auto.offset.store", "false")
            .set("auto.commit.interval.ms", "1000")
            .set("auto.offset.reset", "earliest")
            .set("log_level", "4");
        if assignment == "consumer" {
            config.set("group.protocol", "consumer");
        } else {
            config
                .set("partition.assignment.strategy", assignment)
                .set("session.timeout.ms", "10000")
                .set("heartbeat.interval.ms", "1000");
        }
        ChannelConsumer::builder(config, topic)
            .consume_size(batch_size)
            .value_deserializer(Protobuf::<pb::OrderEvent>::new())
            .build()
    }

    /// Applies events until `shutdown` or a fatal consumer error. `events` is an [`EventConsumer`]
    /// (the harness may wrap it); dropping it at the end closes the consumer: handled offsets are
    /// committed and the group rebalances at once.
    pub async fn run(
        self,
        events: impl Stream<Item = Item<i64, pb::OrderEvent>>,
        shutdown: CancellationToken,
    ) -> Result<(), UpdaterError> {
        let mut batches = std::pin::pin!(events.chunks_timeout(self.batch_size, BATCH_WINDOW));
        loop {
            let batch = tokio::select! {
                _ = shutdown.cancelled() => break,
                batch = batches.next() => batch.ok_or(UpdaterError::StreamEnded)?,
            };
            self.apply(batch, &shutdown).await?;
        }
        tracing::info!("cache updater stopped");
        Ok(())
    }

    /// One batch: unusable messages to the dead-letter topic, the orders of the others to Redis; each
    /// message is handled once its part is done.
    #[tracing::instrument(name = "apply batch", skip_all, fields(messages = batch.len()))]
    async fn apply(
        &self,
        batch: Vec<Item<i64, pb::OrderEvent>>,
        shutdown: &CancellationToken,
    ) -> Result<(), UpdaterError> {
        let mut orders = Vec::with_capacity(batch.len());
        let mut messages = Vec::with_capacity(batch.len());
        for item in batch {
            match item {
                Ok(message) => match message
                    .value()
                    .order
                    .as_ref()
                    .filter(|o| o.order_id > 0 && o.version > 0)
                {
                    Some(order) => {
                        orders.push(order.clone());
                        messages.push(message);
                    }
                    None => {
                        let value = prost::Message::encode_to_vec(message.value());
                        let key = message.key().to_be_bytes();
                        let poison = Poison {
                            topic: message.topic(),
                            partition: message.partition(),
                            offset: message.offset(),
                            key: Some(&key),
                            value: Some(&value),
                            reason: "an OrderEvent without a valid order".into(),
                        };
                        if !self.dead_letter(&poison, shutdown).await {
                            return Ok(());
                        }
                        message.handle();
                    }
                },
                Err(ConsumerError::Undecodable(undecodable)) => {
                    let poison = Poison {
                        topic: undecodable.topic(),
                        partition: undecodable.partition(),
                        offset: undecodable.offset(),
                        key: undecodable.raw_key(),
                        value: undecodable.raw_value(),
                        reason: undecodable.to_string(),
                    };
                    if !self.dead_letter(&poison, shutdown).await {
                        return Ok(());
                    }
                    undecodable.handle();
                }
                Err(fatal) => return Err(fatal.into()),
            }
        }
        if orders.is_empty() {
            return Ok(());
        }
        let Some(outcomes) = self.write(&orders, shutdown).await else {
            // Not handled: the next owner of these partitions gets them again.
            return Ok(());
        };
        record(&orders, &outcomes);
        for message in messages {
            message.handle();
        }
        Ok(())
    }

    /// Writes `orders` to Redis, retrying with back-off until Redis answers; `None` if shutdown came
    /// first.
    async fn write(&self, orders: &[pb::Order], shutdown: &CancellationToken) -> Option<Vec<WriteOutcome>> {
        let mut backoff = Backoff::default();
        loop {
            match self.cache.update_many(orders).await {
                Ok(outcomes) => return Some(outcomes),
                Err(error) => {
                    metrics::updater_redis_retry();
                    tracing::warn!(%error, events = orders.len(), "redis write failed; retrying the batch");
                    tokio::select! {
                        _ = shutdown.cancelled() => return None,
                        _ = tokio::time::sleep(backoff.next_delay()) => {}
                    }
                }
            }
        }
    }

    /// Publishes a poison message to the dead-letter topic, retrying until the broker acknowledges it.
    /// Returns false if shutdown came first (the message stays unhandled, to come again).
    async fn dead_letter(&self, poison: &Poison<'_>, shutdown: &CancellationToken) -> bool {
        tracing::warn!(
            topic = poison.topic,
            partition = poison.partition,
            offset = poison.offset,
            reason = %poison.reason,
            "dead-lettering an unusable event"
        );
        let partition = poison.partition.to_string();
        let offset = poison.offset.to_string();
        let mut backoff = Backoff::default();
        loop {
            let headers = OwnedHeaders::new()
                .insert(Header {
                    key: "source_topic",
                    value: Some(poison.topic),
                })
                .insert(Header {
                    key: "source_partition",
                    value: Some(&partition),
                })
                .insert(Header {
                    key: "source_offset",
                    value: Some(&offset),
                })
                .insert(Header {
                    key: "error",
                    value: Some(&poison.reason),
                });
            let mut record = FutureRecord::<[u8], [u8]>::to(&self.dead_letter_topic).headers(headers);
            if let Some(key) = poison.key {
                record = record.key(key);
            }
            if let Some(value) = poison.value {
                record = record.payload(value);
            }
            match self.dead_letters.send(record, Duration::from_secs(10)).await {
                Ok(_) => {
                    metrics::updater_events("dead_lettered", 1);
                    return true;
                }
                Err((error, _)) => {
                    tracing::warn!(%error, "dead-letter publish failed; retrying");
                    tokio::select! {
                        _ = shutdown.cancelled() => return false,
                        _ = tokio::time::sleep(backoff.next_delay()) => {}
                    }
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
