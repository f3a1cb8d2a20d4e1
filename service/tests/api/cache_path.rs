//! The way to the cache and back: update, outbox, Kafka, updater, Redis, cache-first read.
//!
//! "Reached the cache" is always read in Redis itself (`wait_until_cached`), never through `GetOrder`:
//! a read that misses fills the cache on its own and would pass with the pipeline off. And only the
//! updater writes over an entry that is already cached, so each test caches the order first and then
//! watches the change arrive; the tests that run without the relay or the updater show that it then
//! does not.

use std::time::Duration;

use harness::app::{ALL, Environment, shared_stack, spawn_app};
use harness::consistency::probe::partition_of;
use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use service::cache::{CacheError, Cached, OrderCache, WriteOutcome};
use service::config::Component;
use service::domain::OrderStatus;
use service::events::cache_updater::{CacheUpdater, UpdateCache, UpdaterError, WRITE_CHUNK};
use service::proto::orders::v1 as pb;
use tokio_util::sync::CancellationToken;

const DEADLINE: Duration = Duration::from_secs(20);

#[tokio::test]
async fn an_update_reaches_the_cache_and_reads_come_from_it() {
    let app = spawn_app().await;
    let order = app.create_order().await;
    app.cache_order(order.order_id).await;
    let paid = app.set_status(order.order_id, OrderStatus::Paid).await;
    let cached = app
        .wait_until_cached(order.order_id, paid.version, DEADLINE)
        .await
        .expect("the update reaches Redis");
    assert_eq!(
        cached, paid,
        "the cached copy equals the database's, field by field"
    );
    let read = app.get_order(order.order_id).await;
    assert_eq!(read.source, pb::Source::Cache as i32);
    assert_eq!(read.order, Some(paid));
    app.stop().await.expect("a clean stop");
}

/// The check above can fail: without the relay, or without the updater, the cached entry stays at
/// version 1 however long one waits.
#[tokio::test]
async fn without_the_relay_or_the_updater_a_cached_entry_stays_behind() {
    for (components, missing) in [
        ([Component::Api, Component::Updater], "relay"),
        ([Component::Api, Component::Relay], "updater"),
    ] {
        let env = Environment::fresh(shared_stack().await).await;
        let app = env.spawn(&components).await.expect("the service starts");
        let order = app.create_order().await;
        app.cache_order(order.order_id).await;
        let paid = app.set_status(order.order_id, OrderStatus::Paid).await;
        let cached = app
            .wait_until_cached(order.order_id, paid.version, Duration::from_secs(3))
            .await;
        assert!(
            cached.is_err(),
            "without the {missing}, Redis got version 2: {cached:?}"
        );
        app.stop().await.expect("a clean stop");
    }
}

#[tokio::test]
async fn a_miss_is_read_from_the_database_and_filled() {
    // No updater: only the read path can fill the cache.
    let env = Environment::fresh(shared_stack().await).await;
    let app = env.spawn(&[Component::Api]).await.expect("the API starts");
    let order = app.create_order().await;
    assert_eq!(
        env.cache.entry(order.order_id).await.expect("redis"),
        Cached::Miss
    );
    let first = app.get_order(order.order_id).await;
    assert_eq!(first.source, pb::Source::Database as i32);
    assert_eq!(
        env.cache.entry(order.order_id).await.expect("redis"),
        Cached::Hit(order.clone()),
        "the miss was filled"
    );
    let second = app.get_order(order.order_id).await;
    assert_eq!(second.source, pb::Source::Cache as i32);
    assert_eq!(second.order, first.order);
    app.stop().await.expect("a clean stop");
}

/// The updater leaves an order that is not cached alone: creating and changing orders puts nothing
/// in Redis until someone reads them (see the cache module's protocol for why).
#[tokio::test]
async fn the_updater_does_not_cache_orders_nobody_read() {
    let app = spawn_app().await;
    let order = app.create_order().await;
    let paid = app.set_status(order.order_id, OrderStatus::Paid).await;
    // A second order on the same partition, cached and changed after the first: once its change
    // arrives, the first one's events (earlier in the partition) were applied, if they were to be.
    let witness = loop {
        let candidate = app.create_order().await;
        if partition_of(candidate.order_id, 3) == partition_of(order.order_id, 3) {
            break candidate;
        }
    };
    app.cache_order(witness.order_id).await;
    let witness_paid = app.set_status(witness.order_id, OrderStatus::Paid).await;
    app.wait_until_cached(witness.order_id, witness_paid.version, DEADLINE)
        .await
        .expect("the witness reaches Redis");
    assert_eq!(app.env.wait_for_empty_outbox(DEADLINE).await, 0);
    assert_eq!(
        app.env.cache.entry(order.order_id).await.expect("redis"),
        Cached::Miss,
        "never read, never cached"
    );
    let read = app.get_order(order.order_id).await;
    assert_eq!(
        (read.source, read.order),
        (pb::Source::Database as i32, Some(paid))
    );
    app.stop().await.expect("a clean stop");
}

#[tokio::test]
async fn a_corrupt_cached_value_is_a_miss_and_is_replaced() {
    let app = spawn_app().await;
    let order = app.create_order().await;
    app.cache_order(order.order_id).await;
    let mut redis = redis::Client::open(app.env.settings.redis_url.as_str())
        .expect("redis url")
        .get_multiplexed_async_connection()
        .await
        .expect("redis");
    for garbage in [&b"not an order"[..], b"1:\xff\xff\xff", b"99:"] {
        let _: () = redis::cmd("SET")
            .arg(service::cache::key(order.order_id))
            .arg(garbage)
            .query_async(&mut redis)
            .await
            .expect("SET");
        let read = app.get_order(order.order_id).await;
        assert_eq!(read.source, pb::Source::Database as i32);
        assert_eq!(read.order.as_ref(), Some(&order));
        assert_eq!(
            app.env.cache.entry(order.order_id).await.expect("redis"),
            Cached::Hit(order.clone()),
            "{garbage:?} replaced"
        );
    }
    app.stop().await.expect("a clean stop");
}

/// Messages the updater cannot use go to the dead-letter topic as they came (bytes and headers), and
/// their partitions keep flowing.
#[tokio::test]
async fn poison_messages_are_dead_lettered_as_they_came_without_stalling_their_partition() {
    let env = Environment::fresh(shared_stack().await).await;
    let producer = producer(&env);
    let not_protobuf = &b"\xff\xfe not protobuf"[..];
    let without_order = prost::Message::encode_to_vec(&pb::OrderEvent {
        event_id: "e-1".into(),
        order: None,
        occurred_at: None,
    });
    // One poison message in every partition, ahead of any real event, and one more in partition 0
    // that is protobuf but carries no order, with a header of its own.
    for partition in 0..3 {
        produce(&producer, &env, partition, not_protobuf, None).await;
    }
    produce(
        &producer,
        &env,
        0,
        &without_order,
        Some((
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )),
    )
    .await;
    let app = env.spawn(&ALL).await.expect("the service starts");
    let mut orders = Vec::new();
    for _ in 0..6 {
        let order = app.create_order().await;
        app.cache_order(order.order_id).await;
        orders.push(app.set_status(order.order_id, OrderStatus::Paid).await);
    }
    for order in &orders {
        app.wait_until_cached(order.order_id, 2, DEADLINE)
            .await
            .expect("events behind a poison message are applied");
    }

    let mut dead_letters = read_dead_letters(&env, 4).await;
    dead_letters.sort();
    let header = |key: &str, value: &str| (key.to_string(), value.to_string());
    let expected = |partition: &str, payload: &[u8], original: Option<(String, String)>, error: &str| {
        let mut headers: Vec<_> = original.into_iter().collect();
        headers.extend([
            header("source_topic", &env.settings.orders_topic),
            header("source_partition", partition),
            header("error", error),
        ]);
        (partition.to_string(), payload.to_vec(), headers)
    };
    let decode_error = <pb::OrderEvent as prost::Message>::decode(not_protobuf).expect_err("not protobuf");
    let garbage = &format!("value invalid protobuf message: {decode_error}");
    let mut wanted = vec![
        expected("0", not_protobuf, None, garbage),
        expected(
            "0",
            &without_order,
            Some(header(
                "traceparent",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            )),
            "value an OrderEvent without an order",
        ),
        expected("1", not_protobuf, None, garbage),
        expected("2", not_protobuf, None, garbage),
    ];
    wanted.sort();
    assert_eq!(
        dead_letters, wanted,
        "the original bytes and headers, and where each came from"
    );
    app.stop().await.expect("a clean stop");
}

/// While the dead-letter topic refuses a poison message, the events behind it and in the other
/// partitions are still applied; only its own partition's committed offset waits for it.
#[tokio::test]
async fn a_dead_letter_topic_that_refuses_holds_back_only_its_partitions_commits() {
    let env = Environment::fresh(shared_stack().await).await;
    let producer = producer(&env);
    // Bigger than the updater's dead-letter producer takes (below): refused at every attempt.
    let poison = vec![0xff; 20_000];
    let poison_offset = produce(&producer, &env, 0, &poison, None).await;
    let app = env
        .spawn(&[Component::Api, Component::Relay])
        .await
        .expect("the service starts");
    let refusing: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &env.settings.kafka_brokers)
        .set("message.max.bytes", "10000")
        .create()
        .expect("producer");
    let settings = &env.settings;
    let cache = OrderCache::connect_lazy(&settings.redis_url, settings.cache_ttl()).expect("cache");
    let updater = run_updater(
        &env,
        CacheUpdater::new(cache, refusing, settings.dead_letter_topic(), 100),
    );

    let mut changed = Vec::new();
    let mut partitions = [false; 3];
    while partitions.contains(&false) {
        let order = app.create_order().await;
        app.cache_order(order.order_id).await;
        changed.push(app.set_status(order.order_id, OrderStatus::Paid).await);
        partitions[partition_of(order.order_id, 3) as usize] = true;
    }
    for order in &changed {
        app.wait_until_cached(order.order_id, order.version, DEADLINE)
            .await
            .expect("every partition's events are applied, partition 0's behind the poison too");
    }
    let committed = wait_for_commits(&env, |committed| committed[1] > 0 && committed[2] > 0).await;
    assert!(
        committed[0] <= poison_offset,
        "partition 0 is committed only up to its unsent poison message (at {poison_offset}): {committed:?}"
    );
    assert!(
        read_dead_letters_within(&env, Duration::from_secs(2))
            .await
            .is_empty(),
        "the refused message is not in the dead-letter topic"
    );
    updater.stop().await;
    app.stop().await.expect("a clean stop");
}

/// An updater of the test's own (a cache or a dead-letter producer the service would not use), running
/// with the environment's group on its topic.
struct RunningUpdater {
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), UpdaterError>>,
}

impl RunningUpdater {
    async fn stop(self) {
        self.shutdown.cancel();
        self.task
            .await
            .expect("no panic")
            .expect("the updater stops cleanly");
    }
}

fn run_updater<W: UpdateCache>(env: &Environment, updater: CacheUpdater<W>) -> RunningUpdater {
    let settings = &env.settings;
    let consumer = CacheUpdater::<OrderCache>::consumer(
        &settings.kafka_brokers,
        &settings.updater_group,
        &settings.orders_topic,
        settings.updater_assignment,
        settings.updater_batch as usize,
    )
    .expect("consumer");
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(updater.run(consumer, shutdown.clone()));
    RunningUpdater { shutdown, task }
}

fn producer(env: &Environment) -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", &env.settings.kafka_brokers)
        .create()
        .expect("producer")
}

/// Produces `payload` to `partition` of the orders topic (key: order 1) and returns its offset.
async fn produce(
    producer: &FutureProducer,
    env: &Environment,
    partition: i32,
    payload: &[u8],
    header: Option<(&str, &str)>,
) -> i64 {
    let mut headers = OwnedHeaders::new();
    if let Some((key, value)) = header {
        headers = headers.insert(Header {
            key,
            value: Some(value),
        });
    }
    producer
        .send(
            FutureRecord::to(&env.settings.orders_topic)
                .partition(partition)
                .key(&b"\x00\x00\x00\x00\x00\x00\x00\x01"[..])
                .payload(payload)
                .headers(headers),
            Duration::from_secs(10),
        )
        .await
        .expect("produce poison")
        .offset
}

/// A dead letter: its source partition, payload, and headers (except `source_offset`), in order.
type DeadLetter = (String, Vec<u8>, Vec<(String, String)>);

/// The first `count` messages of the environment's dead-letter topic.
async fn read_dead_letters(env: &Environment, count: usize) -> Vec<DeadLetter> {
    let read = read_dead_letters_within(env, DEADLINE).await;
    assert!(
        read.len() >= count,
        "{count} dead letters within {DEADLINE:?}: {read:?}"
    );
    read
}

/// What the dead-letter topic holds after `wait` without a new message.
async fn read_dead_letters_within(env: &Environment, wait: Duration) -> Vec<DeadLetter> {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &env.settings.kafka_brokers)
        .set(
            "group.id",
            format!(
                "{}-dlq-reader-{}",
                env.settings.updater_group,
                uuid::Uuid::now_v7()
            ),
        )
        .set("auto.offset.reset", "earliest")
        .create()
        .expect("consumer");
    consumer
        .subscribe(&[&env.settings.dead_letter_topic()])
        .expect("subscribe");
    let mut read = Vec::new();
    while let Ok(message) = tokio::time::timeout(wait, consumer.recv()).await {
        let message = message.expect("no consumer error");
        let headers: Vec<(String, String)> = message
            .headers()
            .map(|headers| {
                headers
                    .iter()
                    .filter(|h| h.key != "source_offset")
                    .map(|h| {
                        (
                            h.key.to_string(),
                            String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        let partition = headers
            .iter()
            .find(|(key, _)| key == "source_partition")
            .map(|(_, value)| value.clone())
            .unwrap_or_default();
        read.push((partition, message.payload().unwrap_or_default().to_vec(), headers));
    }
    read
}

/// Polls the updater group's committed offsets of partitions 0, 1, 2 (0: none) until `done` holds.
async fn wait_for_commits(env: &Environment, done: impl Fn(&[i64; 3]) -> bool) -> [i64; 3] {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &env.settings.kafka_brokers)
        .set("group.id", &env.settings.updater_group)
        .create()
        .expect("consumer");
    let mut wanted = TopicPartitionList::new();
    for partition in 0..3 {
        wanted.add_partition(&env.settings.orders_topic, partition);
    }
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let committed = consumer
            .committed_offsets(wanted.clone(), Duration::from_secs(5))
            .expect("committed offsets");
        let mut offsets = [0; 3];
        for element in committed.elements() {
            if let Offset::Offset(offset) = element.offset() {
                offsets[element.partition() as usize] = offset;
            }
        }
        if done(&offsets) || tokio::time::Instant::now() > deadline {
            return offsets;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The updater's Redis pipelines are chunks of at most `WRITE_CHUNK` orders, however large the batch:
/// the response timeout covers one pipeline, and a pipeline that times out is tried again whole.
#[tokio::test]
async fn the_updater_writes_a_large_batch_to_redis_in_chunks() {
    let env = Environment::fresh(shared_stack().await).await;
    let app = env
        .spawn(&[Component::Api, Component::Relay])
        .await
        .expect("the service starts");
    // A backlog first, so that the updater's consumer hands it over in batches of up to 1,000. A fetch
    // can bring one partition's backlog alone (a CI run's first batch was 78 events): 450 orders over
    // the 3 partitions put about 150 in each, more than a chunk wherever a batch ends.
    const ORDERS: usize = 450;
    let mut created = std::collections::HashSet::new();
    for _ in 0..ORDERS {
        created.insert(app.create_order().await.order_id);
    }
    assert_eq!(
        env.wait_for_empty_outbox(DEADLINE).await,
        0,
        "the backlog is in Kafka"
    );
    let settings = &env.settings;
    let cache = Recording {
        inner: OrderCache::connect_lazy(&settings.redis_url, settings.cache_ttl()).expect("cache"),
        writes: Default::default(),
    };
    let writes = cache.writes.clone();
    let updater = run_updater(
        &env,
        CacheUpdater::new(cache, producer(&env), settings.dead_letter_topic(), 1000),
    );
    // Every order, not the last one created: the events are spread over the topic's partitions, and
    // one partition's last event can be written while another's backlog is still on its way.
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let written: std::collections::HashSet<i64> =
            writes.lock().unwrap().iter().flatten().copied().collect();
        if created.is_subset(&written) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the updater wrote {} of the {ORDERS} orders",
            created.intersection(&written).count()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    updater.stop().await;

    let writes = writes.lock().unwrap().clone();
    let sizes: Vec<usize> = writes.iter().map(Vec::len).collect();
    assert!(
        sizes.iter().any(|&size| size >= WRITE_CHUNK),
        "a batch at least a chunk large (else this test shows nothing): {sizes:?}"
    );
    // With each batch written in one pipeline, this fails with [450] (or one size per batch).
    assert!(
        sizes.iter().all(|&size| size <= WRITE_CHUNK),
        "no pipeline larger than a chunk: {sizes:?}"
    );
    app.stop().await.expect("a clean stop");
}

/// The real cache, remembering the order ids of each `update_many`.
struct Recording {
    inner: OrderCache,
    writes: std::sync::Arc<std::sync::Mutex<Vec<Vec<i64>>>>,
}

impl UpdateCache for Recording {
    async fn update_many(&self, orders: &[pb::Order]) -> Result<Vec<WriteOutcome>, CacheError> {
        self.writes
            .lock()
            .unwrap()
            .push(orders.iter().map(|order| order.order_id).collect());
        self.inner.update_many(orders).await
    }
}
