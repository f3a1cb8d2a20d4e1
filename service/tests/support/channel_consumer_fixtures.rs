//! The stage of the `ChannelConsumer` tests: a Kafka to talk to, consumer settings, a producer that
//! records what it wrote, a reader of committed offsets, and group members that read, record and handle.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use service::kafka::{ChannelConsumer, ConsumerError, KafkaMessage};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_stream::StreamExt;

use super::channel_consumer_checker::{History, MemberId};

pub type TestResult<T = ()> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// The stack shared by this binary's tests (the workspace's one test support), with logs on.
pub async fn shared_stack() -> &'static harness::Stack {
    init_tracing();
    harness::app::shared_stack().await
}

/// A new topic `<name>-<n>` with `partitions`, and the group `<name>-<n>-group` to read it, where `n` is
/// unique on the stack: the stack is shared by every test process of a run, and a stress run starts
/// the same test many times on it (a fixed name would find the last run's messages and offsets).
pub async fn fresh_topic(
    stack: &harness::Stack,
    name: &str,
    partitions: i32,
) -> TestResult<(String, String)> {
    let topic = format!("{name}-{}", stack.unique_number().await?);
    stack.create_topic(&topic, partitions).await?;
    let group = format!("{topic}-group");
    Ok((topic, group))
}

/// `RUST_LOG=service=debug,librdkafka=info` shows what the consumers do.
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_test_writer()
        .try_init();
}

/// The group protocol and assignment strategy of a consumer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Assignment {
    /// Classic protocol, eager `range`.
    EagerRange,
    /// Classic protocol, eager `roundrobin`.
    EagerRoundRobin,
    /// Classic protocol, incremental `cooperative-sticky`.
    CooperativeSticky,
    /// Kafka 4's `group.protocol=consumer` (KIP-848): the broker assigns, incrementally.
    ConsumerProtocol,
}

/// Consumer settings for tests: auto-commit every 200 ms, start from the beginning, and (for the classic
/// protocol) a short session so that rebalances are quick.
pub fn consumer_config(brokers: &str, group: &str, assignment: Assignment) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .set("enable.auto.commit", "true")
        .set("auto.commit.interval.ms", "200")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest");
    let strategy = match assignment {
        Assignment::EagerRange => Some("range"),
        Assignment::EagerRoundRobin => Some("roundrobin"),
        Assignment::CooperativeSticky => Some("cooperative-sticky"),
        Assignment::ConsumerProtocol => None,
    };
    match strategy {
        Some(strategy) => {
            // 6 s is the broker's group.min.session.timeout.ms.
            config
                .set("partition.assignment.strategy", strategy)
                .set("session.timeout.ms", "6000")
                .set("heartbeat.interval.ms", "500");
        }
        None => {
            // Session and heartbeat are the broker's business under this protocol.
            config.set("group.protocol", "consumer");
        }
    }
    config
}

pub fn producer(brokers: &str) -> TestResult<FutureProducer> {
    Ok(ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "5")
        .set("enable.idempotence", "true")
        .create()?)
}

/// Writes `count` messages round-robin over `partitions` (key: a sequence number from `first_key`,
/// value: its text), and records each written offset in `history`.
pub async fn produce(
    producer: &FutureProducer,
    topic: &str,
    partitions: i32,
    first_key: i64,
    count: usize,
    history: &History,
) -> TestResult {
    let keys = (first_key..first_key + count as i64).map(|key| ((key % partitions as i64) as i32, key));
    produce_keys(producer, topic, keys, history).await
}

/// Writes one message per `(partition, key)`, all at once, and records each written offset in `history`.
pub async fn produce_keys(
    producer: &FutureProducer,
    topic: &str,
    keys: impl Iterator<Item = (i32, i64)>,
    history: &History,
) -> TestResult {
    let sends = keys.map(|(partition, key)| {
        let value = format!("message {key}").into_bytes();
        produce_one(producer, topic, partition, key.to_be_bytes().to_vec(), value)
    });
    for written in futures::future::join_all(sends).await {
        let (partition, offset) = written?;
        history.produced(partition, offset);
    }
    Ok(())
}

/// Writes one message with exactly these bytes; returns where it landed.
pub async fn produce_one(
    producer: &FutureProducer,
    topic: &str,
    partition: i32,
    key: Vec<u8>,
    value: Vec<u8>,
) -> TestResult<(i32, i64)> {
    let record = FutureRecord::to(topic)
        .partition(partition)
        .key(&key)
        .payload(&value);
    let delivery = producer
        .send(record, Duration::from_secs(10))
        .await
        .map_err(|(error, _)| error)?;
    Ok((delivery.partition, delivery.offset))
}

/// The group's committed offset per partition (`None`: nothing committed).
pub async fn committed_offsets(
    brokers: &str,
    group: &str,
    topic: &str,
    partitions: i32,
) -> TestResult<BTreeMap<i32, Option<i64>>> {
    let (brokers, group, topic) = (brokers.to_owned(), group.to_owned(), topic.to_owned());
    tokio::task::spawn_blocking(move || -> TestResult<_> {
        // A consumer that names the group but never subscribes reads its offsets without joining it.
        let reader: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .set("group.id", &group)
            .create()?;
        let mut list = TopicPartitionList::new();
        list.add_partition_range(&topic, 0, partitions - 1);
        let committed = reader.committed_offsets(list, Duration::from_secs(10))?;
        Ok(committed
            .elements()
            .iter()
            .map(|element| match element.offset() {
                Offset::Offset(offset) => (element.partition(), Some(offset)),
                _ => (element.partition(), None),
            })
            .collect())
    })
    .await?
}

/// The offset after the last message of each partition.
pub async fn end_offsets(brokers: &str, topic: &str, partitions: i32) -> TestResult<BTreeMap<i32, i64>> {
    let (brokers, topic) = (brokers.to_owned(), topic.to_owned());
    tokio::task::spawn_blocking(move || -> TestResult<_> {
        let reader: BaseConsumer = ClientConfig::new().set("bootstrap.servers", &brokers).create()?;
        (0..partitions)
            .map(|partition| {
                let (_, high) = reader.fetch_watermarks(&topic, partition, Duration::from_secs(10))?;
                Ok((partition, high))
            })
            .collect()
    })
    .await?
}

/// Samples the group's committed offsets into `history` every 200 ms until the returned sender is
/// dropped or sent `true`.
pub fn sample_commits(
    brokers: &str,
    group: &str,
    topic: &str,
    partitions: i32,
    history: Arc<History>,
) -> (watch::Sender<bool>, JoinHandle<TestResult>) {
    let (stop, mut stopped) = watch::channel(false);
    let (brokers, group, topic) = (brokers.to_owned(), group.to_owned(), topic.to_owned());
    let task = tokio::spawn(async move {
        loop {
            record_commits(&brokers, &group, &topic, partitions, &history).await?;
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                _ = stopped.changed() => return Ok(()),
            }
        }
    });
    (stop, task)
}

/// Reads the committed offsets once and records them, stamped with the time the answer arrived.
pub async fn record_commits(
    brokers: &str,
    group: &str,
    topic: &str,
    partitions: i32,
    history: &History,
) -> TestResult {
    let committed = committed_offsets(brokers, group, topic, partitions).await?;
    let at = Instant::now();
    history.committed(
        at,
        committed.into_iter().filter_map(|(p, o)| Some((p, o?))).collect(),
    );
    Ok(())
}

/// Records a message's delivery in `history`.
pub fn record_delivery<K, V>(history: &History, member: MemberId, message: &KafkaMessage<K, V>) {
    history.delivered(
        member,
        message.partition(),
        message.offset(),
        message.assignment_epoch(),
    );
}

/// Records a message as handled, then handles it: the record comes first, so a commit that covers the
/// message is always later than the record (the checker relies on it).
pub fn record_and_handle<K, V>(history: &History, member: MemberId, message: &KafkaMessage<K, V>) {
    history.handled(
        member,
        message.partition(),
        message.offset(),
        message.assignment_epoch(),
    );
    message.handle();
}

/// How a member leaves the group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Leave {
    /// `close().await`.
    Close,
    /// Dropping the consumer.
    Drop,
}

/// A group member that reads in batches, records every delivery, and handles everything it reads
/// after `pace` per batch (a stand-in for work), until told to leave.
pub struct Member {
    pub id: MemberId,
    leave: watch::Sender<Option<Leave>>,
    task: JoinHandle<TestResult>,
}

impl Member {
    pub fn spawn(
        id: MemberId,
        consumer: ChannelConsumer<i64, String>,
        history: Arc<History>,
        pace: Duration,
    ) -> Self {
        let (leave, mut told_to_leave) = watch::channel(None);
        let task = tokio::spawn(async move {
            let control = consumer.control();
            let mut batches = Box::pin(consumer.chunks_timeout(100, Duration::from_millis(10)));
            let how = loop {
                let batch = tokio::select! {
                    _ = told_to_leave.changed() => break *told_to_leave.borrow(),
                    batch = batches.next() => batch,
                };
                let Some(batch) = batch else {
                    return Err(format!("member {id}: the stream ended before it was told to leave").into());
                };
                let messages = batch.into_iter().collect::<Result<Vec<_>, ConsumerError>>()?;
                for message in &messages {
                    record_delivery(&history, id, message);
                }
                tokio::time::sleep(pace).await;
                for message in &messages {
                    record_and_handle(&history, id, message);
                }
            };
            match how {
                Some(Leave::Close) | None => control.close().await?,
                Some(Leave::Drop) => drop(batches),
            }
            Ok(())
        });
        Self { id, leave, task }
    }

    /// Leaves the group and waits until it has.
    pub async fn leave(self, how: Leave) -> TestResult {
        let _ = self.leave.send(Some(how));
        self.task.await?
    }
}

/// Waits until `history` shows every produced message handled, or `timeout`.
pub async fn wait_until_all_handled(history: &History, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if history.unhandled() == 0 {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    history.unhandled() == 0
}
