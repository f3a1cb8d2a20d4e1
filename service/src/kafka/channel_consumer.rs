//! [`ChannelConsumer`]: a Kafka consumer read as an async [`Stream`] of messages, each acknowledged
//! with `handle()`.
//!
//! Two halves, one thread apart:
//!
//! * the **poll thread** (a dedicated `std::thread`, see `poll_loop`) owns librdkafka's `BaseConsumer`,
//!   polls it in batches, runs the rebalance callbacks, and keeps the per-partition offset bookkeeping;
//! * the **stream** (this type) takes messages out of the delivery buffer that the poll thread fills;
//!   `handle()` sets a bit the poll thread reads, and commands go back over a channel.
//!
//! Why a thread and not a task: librdkafka's poll blocks, and the rebalance callback must be allowed to
//! block too (it commits synchronously before partitions go). On a thread of its own that never stalls
//! the async runtime, and the poll loop keeps turning whatever the reader does. Why `BaseConsumer` and
//! not rdkafka's `StreamConsumer`: it reads in batches without one wake-up per message, and its
//! rebalance callbacks run on a thread we control.

use std::cell::Cell;
use std::pin::Pin;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use futures::Stream;
use rdkafka::ClientConfig;
use rdkafka::config::FromClientConfigAndContext;
use rdkafka::consumer::Consumer;
use tokio::sync::oneshot;
use tracing::warn;

use super::acknowledgement::Request;
use super::context::{ChannelContext, PollState, PolledConsumer};
use super::delivery_buffer::{DeliveryBuffer, TAKE_AT_ONCE, Taken};
use super::deserializer::{Deserializer, default_deserializer};
use super::doorbell::Doorbell;
use super::error::{ConsumerError, MessagePart};
use super::offsets::OffsetTracker;
use super::poll_loop::{ClearQueues, Item, PollLoop};
use super::progress::{ConsumerProgress, DEFAULT_STUCK_AFTER, ProgressReporter};

/// `fetch.wait.max.ms` unless the configuration sets it (see `build`).
const FETCH_WAIT_MAX_MS: &str = "100";
/// `fetch.queue.backoff.ms` unless the configuration sets it (see `build`).
const FETCH_QUEUE_BACKOFF_MS: &str = "10";
/// `queued.max.messages.kbytes` unless the configuration sets it (see `build`): 8 MiB a partition.
const QUEUED_MAX_MESSAGES_KBYTES: &str = "8192";
/// How long `close()` and drop wait for the consumer to close, unless the builder sets it.
pub const DEFAULT_CLOSE_TIMEOUT: Duration = Duration::from_secs(10);

/// A batch Kafka consumer of one topic, read as a [`Stream`] of
/// `Result<KafkaMessage<K, V>, ConsumerError>`. See the [module documentation](super) for the
/// guarantees.
#[must_use = "a consumer does nothing unless its stream is read; dropping it leaves the group"]
pub struct ChannelConsumer<K, V> {
    buffer: Arc<DeliveryBuffer<Item<K, V>>>,
    /// What the stream took from the buffer and has not handed out yet (`delivery_buffer`).
    taken: Taken<Item<K, V>>,
    control: ConsumerControl,
    poll_thread: Option<JoinHandle<()>>,
}

impl<K: Send + 'static, V: Send + 'static> ChannelConsumer<K, V> {
    /// Subscribes to `topic` with `config` and starts polling.
    ///
    /// * `config` needs `bootstrap.servers` and `group.id`; `enable.auto.offset.store` is always set to
    ///   `false` (offsets are stored by `handle()`); `enable.auto.commit` is yours to choose: with `true`
    ///   librdkafka commits the stored offsets every `auto.commit.interval.ms`, with `false` they are
    ///   committed by [`commit`](Self::commit), on revocation and on close. Three of librdkafka's
    ///   defaults change unless `config` sets them: `fetch.wait.max.ms` 100 ms instead of 500 ms, so
    ///   that a partition whose prefetch ran low is fetched again without a long wait,
    ///   `fetch.queue.backoff.ms` 10 ms instead of 1000 ms, so that a full prefetch queue does not stop
    ///   fetching for a second after it drained, and `queued.max.messages.kbytes` 8 MiB instead of
    ///   64 MiB, since each partition has a prefetch queue of its own (see `build`).
    /// * `consume_size` is the most messages read from librdkafka in one go, and the size of the
    ///   internal buffer (see the module documentation); the reader gets no more than three times
    ///   `consume_size` without handling them.
    /// * `None` for a deserializer picks the default one for the type, or fails with
    ///   [`ConsumerError::NoDefaultDeserializer`] if there is none.
    pub fn new(
        config: ClientConfig,
        topic: &str,
        consume_size: usize,
        key_deserializer: Option<Box<dyn Deserializer<K>>>,
        value_deserializer: Option<Box<dyn Deserializer<V>>>,
    ) -> Result<Self, ConsumerError> {
        let mut builder = Self::builder(config, topic).consume_size(consume_size);
        builder.key_deserializer = key_deserializer;
        builder.value_deserializer = value_deserializer;
        builder.build()
    }

    /// The same as [`new`](Self::new), one setting at a time.
    pub fn builder(config: ClientConfig, topic: &str) -> ChannelConsumerBuilder<K, V> {
        ChannelConsumerBuilder {
            config,
            topic: topic.to_owned(),
            consume_size: 1000,
            close_timeout: DEFAULT_CLOSE_TIMEOUT,
            stuck_after: DEFAULT_STUCK_AFTER,
            key_deserializer: None,
            value_deserializer: None,
        }
    }

    /// Commits the offsets handled so far (every `handle()` that returned before this call), waiting for
    /// the broker's answer. Not needed with `enable.auto.commit=true`, but it shortens what a crash
    /// would re-deliver.
    pub async fn commit(&self) -> Result<(), ConsumerError> {
        self.control.commit().await
    }

    /// Commits what was handled, leaves the group and ends the stream, waiting until all of that is
    /// done, or for the close timeout ([`DEFAULT_CLOSE_TIMEOUT`] unless the builder set one):
    /// [`ConsumerError::CloseTimedOut`] then, and the poll thread finishes on its own. Dropping the
    /// consumer does the same (see `Drop`).
    pub async fn close(mut self) -> Result<(), ConsumerError> {
        let result = self.control.close().await;
        match result {
            // Not answered in time: the thread is still at it (a commit or a LeaveGroup to a broker that
            // does not answer). Joining would wait as long; it is left to end by itself.
            Err(ConsumerError::CloseTimedOut(_)) => drop(self.poll_thread.take()),
            // Answered, or gone: it has finished its work, so joining it is immediate.
            _ => self.join_poll_thread(),
        }
        result
    }

    /// See [`ConsumerControl::progress`].
    pub fn progress(&self) -> ConsumerProgress {
        self.control.progress()
    }

    /// A handle to commit or close the consumer after it was moved into a stream adapter (such as
    /// `chunks_timeout`).
    pub fn control(&self) -> ConsumerControl {
        self.control.clone()
    }

    fn join_poll_thread(&mut self) {
        if let Some(thread) = self.poll_thread.take()
            && thread.join().is_err()
        {
            warn!("the consumer's poll thread panicked");
        }
    }
}

impl<K, V> Stream for ChannelConsumer<K, V> {
    type Item = Item<K, V>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        this.buffer.poll_take(cx, &mut this.taken)
    }
}

// Nothing in the consumer is pinned: the stream moves its items by value.
impl<K, V> Unpin for ChannelConsumer<K, V> {}

impl<K, V> Drop for ChannelConsumer<K, V> {
    /// Closes the consumer: commits what was handled and leaves the group, like [`close`](Self::close),
    /// and waits for it, as rdkafka's own consumers do on drop, but for the close timeout at most.
    ///
    /// Waiting blocks the dropping thread for a commit and a LeaveGroup round trip. On a worker of
    /// Tokio's multi-threaded runtime it waits in `block_in_place`, so the worker's other tasks move to
    /// another thread; a current-thread runtime has no other thread, and is blocked for that time. It
    /// cannot deadlock: the poll thread needs nothing from the async runtime. To wait without blocking,
    /// call `close().await` instead.
    fn drop(&mut self) {
        let Some(thread) = self.poll_thread.take() else {
            return;
        };
        let (reply, _answer) = oneshot::channel();
        self.control.send(Request::Close(reply));
        let deadline = Instant::now() + self.control.close_timeout;
        let wait = || {
            // `JoinHandle` has no timed join: poll for the thread's end.
            while !thread.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            if !thread.is_finished() {
                warn!(timeout = ?self.control.close_timeout, "the consumer did not close in time; left to finish on its own");
            } else if thread.join().is_err() {
                warn!("the consumer's poll thread panicked");
            }
        };
        let multi_threaded = tokio::runtime::Handle::try_current()
            .is_ok_and(|handle| handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
        if multi_threaded {
            tokio::task::block_in_place(wait);
        } else {
            wait();
        }
    }
}

/// Commits or closes a [`ChannelConsumer`] from anywhere; cheap to clone.
#[derive(Debug, Clone)]
pub struct ConsumerControl {
    requests: mpsc::Sender<Request>,
    close_timeout: Duration,
    progress: Arc<Mutex<ConsumerProgress>>,
}

impl ConsumerControl {
    fn send(&self, request: Request) {
        // Fails only when the poll thread is gone; the reply channel then reports `Closed`.
        let _ = self.requests.send(request);
    }

    /// What the consumer has in flight, held back, and unhandled longest, as of its last report (at most
    /// a second old; see the `progress` module).
    pub fn progress(&self) -> ConsumerProgress {
        self.progress
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// See [`ChannelConsumer::commit`].
    pub async fn commit(&self) -> Result<(), ConsumerError> {
        let (reply, answer) = oneshot::channel();
        self.send(Request::Commit(reply));
        answer.await.unwrap_or(Err(ConsumerError::Closed))
    }

    /// Commits what was handled, leaves the group and ends the stream; returns once that is done, or
    /// with [`ConsumerError::CloseTimedOut`] after the close timeout.
    pub async fn close(&self) -> Result<(), ConsumerError> {
        let (reply, answer) = oneshot::channel();
        self.send(Request::Close(reply));
        match tokio::time::timeout(self.close_timeout, answer).await {
            Ok(answer) => answer.unwrap_or(Err(ConsumerError::Closed)),
            Err(_) => Err(ConsumerError::CloseTimedOut(self.close_timeout)),
        }
    }
}

/// Builds a [`ChannelConsumer`]; from [`ChannelConsumer::builder`].
pub struct ChannelConsumerBuilder<K, V> {
    config: ClientConfig,
    topic: String,
    consume_size: usize,
    close_timeout: Duration,
    stuck_after: Duration,
    key_deserializer: Option<Box<dyn Deserializer<K>>>,
    value_deserializer: Option<Box<dyn Deserializer<V>>>,
}

impl<K: Send + 'static, V: Send + 'static> ChannelConsumerBuilder<K, V> {
    /// How long `close()` and drop wait for the final commit and the LeaveGroup;
    /// [`DEFAULT_CLOSE_TIMEOUT`] unless set.
    pub fn close_timeout(mut self, timeout: Duration) -> Self {
        self.close_timeout = timeout;
        self
    }

    /// How long a delivered message may stay unhandled before the consumer warns about it and its
    /// progress marks it stuck; [`DEFAULT_STUCK_AFTER`] (60 s) unless set.
    pub fn stuck_after(mut self, after: Duration) -> Self {
        self.stuck_after = after;
        self
    }

    /// See [`ChannelConsumer::new`]; 1000 unless set.
    pub fn consume_size(mut self, consume_size: usize) -> Self {
        self.consume_size = consume_size;
        self
    }

    pub fn key_deserializer(mut self, deserializer: impl Deserializer<K> + 'static) -> Self {
        self.key_deserializer = Some(Box::new(deserializer));
        self
    }

    pub fn value_deserializer(mut self, deserializer: impl Deserializer<V> + 'static) -> Self {
        self.value_deserializer = Some(Box::new(deserializer));
        self
    }

    pub fn build(self) -> Result<ChannelConsumer<K, V>, ConsumerError> {
        let key_deserializer = deserializer_or_default(self.key_deserializer, MessagePart::Key)?;
        let value_deserializer = deserializer_or_default(self.value_deserializer, MessagePart::Value)?;
        if self.consume_size == 0 {
            return Err(ConsumerError::InvalidConfig(
                "consume_size must be at least 1".into(),
            ));
        }
        let mut config = self.config;
        if config.get("group.id").is_none() {
            return Err(ConsumerError::InvalidConfig("group.id is required".into()));
        }
        if config
            .get("enable.auto.offset.store")
            .is_some_and(|v| v != "false")
        {
            warn!("enable.auto.offset.store overridden to false: offsets are stored by handle()");
        }
        config.set("enable.auto.offset.store", "false");
        // A partition whose prefetch ran low is fetched again only after the fetch in flight returns, and
        // the broker holds that one up to fetch.wait.max.ms when the other partitions are idle.
        // librdkafka's 500 ms then starves a reader that just caught up; 100 ms keeps it fed, for at
        // most 10 fetch requests a second per idle broker.
        set_default(&mut config, "fetch.wait.max.ms", FETCH_WAIT_MAX_MS);
        // When its prefetch queue passes queued.min.messages, librdkafka stops fetching for
        // fetch.queue.backoff.ms and does not look again before that time is up, even if the queue
        // drained long before. With librdkafka's 1000 ms, a consumer that reads a backlog a little slower
        // than the broker serves it drains its 100,000 prefetched messages, then idles for the rest of
        // the second: the benchmark measured ~180,000 messages/s, against over a million with 10 ms.
        set_default(&mut config, "fetch.queue.backoff.ms", FETCH_QUEUE_BACKOFF_MS);
        // librdkafka bounds what it prefetches by the length of the queue fetched messages land in. With
        // one queue for all partitions that was one bound for the consumer (100,000 messages or 64 MiB);
        // with a queue per partition (`fetch_queues`) it is a bound per partition. 8 MiB a partition is
        // still eight of the broker's fetches of a partition (`max.partition.fetch.bytes`, 1 MiB), and
        // keeps large messages from taking 64 MiB a partition. Small ones are bounded by the count,
        // which stays librdkafka's: 20,000 a partition made drains of one partition 26% slower
        // (0.79 against 1.07 times the BaseConsumer loop), and a slow reader on twelve partitions of
        // 100-byte messages lets librdkafka prefetch over 400 MiB (docs/BENCHMARKS.md, buffer bound).
        set_default(
            &mut config,
            "queued.max.messages.kbytes",
            QUEUED_MAX_MESSAGES_KBYTES,
        );

        let topic: Arc<str> = Arc::from(self.topic.as_str());
        // The poll thread's one place to wait: librdkafka's queues and the reader ring it.
        let doorbell = Arc::new(Doorbell::default());
        let buffer = Arc::new(DeliveryBuffer::new(doorbell.clone(), TAKE_AT_ONCE));
        let (requests, requests_received) = mpsc::channel();
        let progress = Arc::new(Mutex::new(ConsumerProgress::default()));
        let state = PollState::new(OffsetTracker::default(), requests_received, topic.clone());
        let context = ChannelContext::new(topic.clone(), state, buffer.clone(), doorbell.clone());
        let consumer =
            PolledConsumer::from_config_and_context(&config, context).map_err(ConsumerError::Client)?;
        consumer.subscribe(&[&topic]).map_err(ConsumerError::Client)?;
        // From here on the queues hold handles into the consumer: `PollLoop` clears them before it
        // drops the consumer.
        consumer
            .context()
            .queues()
            .watch_events(consumer.client().native_ptr());

        let poll_loop = PollLoop {
            _queues_first: ClearQueues(consumer.context().clone()),
            consumer,
            topic: topic.clone(),
            consume_size: self.consume_size,
            key_deserializer,
            value_deserializer,
            progress: Mutex::new(ProgressReporter::new(
                topic.clone(),
                self.stuck_after,
                progress.clone(),
            )),
            doorbell,
            rotation: Cell::new(0),
        };
        let thread_buffer = buffer.clone();
        let poll_thread = std::thread::Builder::new()
            .name(format!("kafka-{topic}"))
            .spawn(move || {
                let run = std::panic::AssertUnwindSafe(|| poll_loop.run());
                if std::panic::catch_unwind(run).is_err() {
                    thread_buffer.finish(Some(Err(ConsumerError::PollThreadPanicked)));
                }
            })
            .map_err(ConsumerError::Thread)?;
        Ok(ChannelConsumer {
            buffer,
            taken: Taken::default(),
            control: ConsumerControl {
                requests,
                close_timeout: self.close_timeout,
                progress,
            },
            poll_thread: Some(poll_thread),
        })
    }
}

/// Sets `key` unless the user's configuration already does.
fn set_default(config: &mut ClientConfig, key: &str, value: &str) {
    if config.get(key).is_none() {
        config.set(key, value);
    }
}

fn deserializer_or_default<T: 'static>(
    given: Option<Box<dyn Deserializer<T>>>,
    part: MessagePart,
) -> Result<Box<dyn Deserializer<T>>, ConsumerError> {
    match given {
        Some(deserializer) => Ok(deserializer),
        None => default_deserializer::<T>().ok_or(ConsumerError::NoDefaultDeserializer {
            part,
            type_name: std::any::type_name::<T>(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> ClientConfig {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", "127.0.0.1:1")
            .set("group.id", "unit");
        config
    }

    #[derive(Debug)]
    struct NoDefault;

    #[test]
    fn a_type_without_a_default_deserializer_is_refused_at_construction() {
        let built = ChannelConsumer::<NoDefault, String>::new(config(), "t", 10, None, None);
        assert!(matches!(
            built,
            Err(ConsumerError::NoDefaultDeserializer { part: MessagePart::Key, type_name })
                if type_name.ends_with("NoDefault")
        ));
        let built = ChannelConsumer::<i64, NoDefault>::new(config(), "t", 10, None, None);
        assert!(matches!(
            built,
            Err(ConsumerError::NoDefaultDeserializer {
                part: MessagePart::Value,
                ..
            })
        ));
        let explicit = |_: Option<&[u8]>| Ok(NoDefault);
        let built = ChannelConsumer::<i64, NoDefault>::new(config(), "t", 10, None, Some(Box::new(explicit)));
        assert!(built.is_ok(), "an explicit deserializer makes any type readable");
    }

    #[test]
    fn settings_it_cannot_work_with_are_refused() {
        let built = ChannelConsumer::<i64, String>::new(config(), "t", 0, None, None);
        assert!(matches!(built, Err(ConsumerError::InvalidConfig(_))));
        let mut no_group = ClientConfig::new();
        no_group.set("bootstrap.servers", "127.0.0.1:1");
        let built = ChannelConsumer::<i64, String>::new(no_group, "t", 10, None, None);
        assert!(matches!(built, Err(ConsumerError::InvalidConfig(_))));
    }
}
