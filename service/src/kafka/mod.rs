//! Kafka plumbing of the service: [`ChannelConsumer`], a batch consumer read as an async stream.
//!
//! librdkafka reads fast in batches, but its consumer is a blocking poll loop, and what a Rust service
//! wants is a `Stream` it can `.await`, batch with `chunks_timeout`, and process concurrently, with
//! offsets committed only for messages it finished. `ChannelConsumer` is that: a thread reads librdkafka's
//! per-partition queues in batches and fills a bounded buffer; the stream hands out the messages; each message's `handle()`
//! says "done", and the consumer commits the longest finished prefix of each partition. (Its API follows
//! the C# course exercise the project began with.) The cache updater reads the `order-events` topic
//! through it.
//!
//! # Example
//!
//! Batches of up to 1,000 messages, or whatever arrived within 10 ms:
//!
//! ```no_run
//! use std::time::Duration;
//!
//! use rdkafka::ClientConfig;
//! use service::kafka::{ChannelConsumer, ConsumerError};
//! use tokio_stream::StreamExt;
//!
//! # async fn run() -> Result<(), ConsumerError> {
//! let mut config = ClientConfig::new();
//! config
//!     .set("bootstrap.servers", "127.0.0.1:9092")
//!     .set("group.id", "cache-updater")
//!     .set("enable.auto.commit", "true")
//!     .set("enable.auto.offset.store", "false");
//!
//! let consumer = ChannelConsumer::<i64, String>::new(config, "topic_name", 1000, None, None)?;
//!
//! // `chunks_timeout` holds a timer, so the adapter must be pinned before `next()`.
//! let mut batches = std::pin::pin!(consumer.chunks_timeout(1000, Duration::from_millis(10)));
//! while let Some(batch) = batches.next().await {
//!     for message in batch {
//!         let message = message?;
//!         // Do work with message.key(), message.value(), ...
//!         message.handle();
//!     }
//! }
//! # Ok(())
//! # }
//! ```
//!
//! A message whose key or value does not deserialize arrives as [`ConsumerError::Undecodable`] in its
//! place; the stream goes on. It carries the raw bytes and must be handled like a message, typically
//! after dead-lettering it:
//!
//! ```no_run
//! # use service::kafka::{ConsumerError, KafkaMessage};
//! # fn process(_: &KafkaMessage<i64, String>) {}
//! # fn dead_letter(_: Option<&[u8]>) {}
//! # fn on_item(item: Result<KafkaMessage<i64, String>, ConsumerError>) -> Result<(), ConsumerError> {
//! match item {
//!     Ok(message) => {
//!         process(&message);
//!         message.handle();
//!     }
//!     Err(ConsumerError::Undecodable(poison)) => {
//!         dead_letter(poison.raw_value());
//!         poison.handle(); // lets the partition's committed offset move past it
//!     }
//!     Err(fatal) => return Err(fatal),
//! }
//! # Ok(())
//! # }
//! ```
//!
//! # Guarantees
//!
//! * **At least once.** A message's offset is committed only after the message, and every message
//!   delivered before it from its partition, was handled. Whatever was not handled is delivered again
//!   after a restart or a rebalance, to this consumer or to another member of the group.
//! * **Order.** Within one partition, messages come in offset order. Across partitions there is no order,
//!   but there is fairness: each partition has its own queue in librdkafka, read in turn, each up to an
//!   equal part of a batch, and the buffer here hands its messages out from the partitions in turn. So a
//!   backlog on one partition does not hold back another's messages (test
//!   `three_backlogs_and_a_slow_reader_keep_every_partition_served`: between two deliveries of a
//!   partition, at most a buffer's worth of the others). A partition's order restarts only when it is
//!   reassigned: [`KafkaMessage::assignment_epoch`] tells the assignments apart.
//! * **Out-of-order handling is safe.** Per partition the consumer stores offset + 1 of the last message
//!   of the longest *handled prefix* of what it delivered. "Prefix" follows delivery, not offset
//!   arithmetic, so gaps in offsets (compaction, transaction markers) never stall it. With
//!   `enable.auto.commit=true` librdkafka commits what is stored; [`ChannelConsumer::commit`] commits it
//!   at once.
//! * **Rebalances** (eager strategies, `cooperative-sticky`, and `group.protocol=consumer`): before
//!   partitions are revoked, what was handled in them is committed; their messages not yet handed out are
//!   dropped (the next owner reads them); `handle()` on a message of a partition no longer owned does
//!   nothing. Newly assigned partitions start at their committed offsets. A *lost* assignment (this
//!   member was timed out) commits nothing, since the partitions may already be someone else's.
//! * **Back-pressure without leaving the group.** The buffer holds at most `consume_size` messages (and
//!   the stream up to 32 more it took at once). When the reader is slow, the consumer stops reading
//!   from librdkafka's queues (where what was fetched waits, bounded by librdkafka's
//!   `queued.max.messages.kbytes` a partition: 8 MiB unless configured) instead of blocking, and keeps
//!   polling for events, so heartbeats and rebalances are served and `max.poll.interval.ms` is never
//!   exceeded because of a slow reader. A reader that takes messages and does not handle them is held
//!   back the same way: everything outstanding (buffered, held, or handled behind a message that is
//!   not) stays under three times `consume_size`, and a partition whose messages the reader hoards
//!   stops first (`read_policy`).
//! * **Errors.** Deserialization failures are items, as above. Transient broker errors are logged
//!   (`tracing`) and retried by librdkafka. A fatal error is the stream's last item,
//!   [`ConsumerError::Fatal`].
//! * **Close.** [`ChannelConsumer::close`], or dropping the consumer, commits what was handled and leaves
//!   the group at once, so that the others take over its partitions without waiting for a session
//!   timeout. Messages handled after that are not committed (they come again to the next owner). Both
//!   return within the close timeout ([`DEFAULT_CLOSE_TIMEOUT`], 10 s, or the builder's), even with Kafka
//!   gone; `close()` then says [`ConsumerError::CloseTimedOut`].
//!
//! * **Cancellation.** `next()` on the stream is cancel-safe: a message is taken out of the buffer only
//!   in the poll that returns it, so a `next()` dropped in a `select!` loses nothing. Dropping a message
//!   without `handle()` is not: its partition's committed offset stops before it until a rebalance or a
//!   restart delivers it again.
//!
//! What is *not* guaranteed: exactly once. A crash, or a `handle()` that comes after its partition was
//! revoked, makes the message come again. Consumers must be idempotent (the cache updater is: it writes
//! by version compare-and-set).
//!
//! # Layout
//!
//! * `channel_consumer`: the public type, its builder, and how the two threads split the work;
//! * `poll_loop`: the poll thread, batching and back-pressure;
//! * `fetch_queues`: each partition's librdkafka queue, read in batches;
//! * `read_policy`: how much a turn reads, and from which partitions;
//! * `doorbell`: where the poll thread waits, and what wakes it;
//! * `progress`: what the consumer reports about itself, and the warning for a stuck message;
//! * `context`: the rebalance callbacks;
//! * `offsets`: the contiguous-prefix rule and assignment epochs;
//! * `delivery_buffer`: per-partition queues served round-robin;
//! * `acknowledgement`: the bit `handle()` sets, and what `commit()` and `close()` send;
//! * `message`, `deserializer`, `error`: the types users see.

mod acknowledgement;
mod channel_consumer;
mod context;
mod delivery_buffer;
mod deserializer;
mod doorbell;
mod error;
mod fetch_queues;
mod message;
mod offsets;
mod poll_loop;
mod progress;
mod read_policy;

pub use channel_consumer::{ChannelConsumer, ChannelConsumerBuilder, ConsumerControl, DEFAULT_CLOSE_TIMEOUT};
pub use deserializer::{
    BigEndianI32, BigEndianI64, Deserializer, Ignore, Protobuf, RawBytes, SHARED_CHUNK, SharedBytes, Utf8,
    default_deserializer,
};
pub use error::{ConsumerError, DeserializeError, MessagePart};
pub use message::{KafkaMessage, MessageReceipt, UndecodableMessage};
pub use offsets::Epoch;
pub use poll_loop::Item;
pub use progress::{ConsumerProgress, DEFAULT_STUCK_AFTER, OldestUnhandled};
