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
use rdkafka::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{FutureProducer, FutureRecord};
use service::cache::Cached;
use service::config::Component;
use service::domain::OrderStatus;
use service::proto::orders::v1 as pb;

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

/// Undecodable messages go to the dead-letter topic and their partitions keep flowing.
#[tokio::test]
async fn poison_messages_are_dead_lettered_without_stalling_their_partition() {
    let env = Environment::fresh(shared_stack().await).await;
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &env.settings.kafka_brokers)
        .create()
        .expect("producer");
    // One poison message in every partition, ahead of any real event.
    for partition in 0..3 {
        producer
            .send(
                FutureRecord::to(&env.settings.orders_topic)
                    .partition(partition)
                    .key(&b"\x00\x00\x00\x00\x00\x00\x00\x01"[..])
                    .payload(&b"\xff\xfe not protobuf"[..]),
                Duration::from_secs(10),
            )
            .await
            .expect("produce poison");
    }
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

    let dead_letters: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &env.settings.kafka_brokers)
        .set("group.id", format!("{}-dlq-reader", env.settings.updater_group))
        .set("auto.offset.reset", "earliest")
        .create()
        .expect("consumer");
    dead_letters
        .subscribe(&[&env.settings.dead_letter_topic()])
        .expect("subscribe");
    let mut sources = Vec::new();
    while sources.len() < 3 {
        let message = tokio::time::timeout(DEADLINE, dead_letters.recv())
            .await
            .expect("a dead letter within the deadline")
            .expect("no consumer error");
        assert_eq!(
            message.payload(),
            Some(&b"\xff\xfe not protobuf"[..]),
            "the original bytes"
        );
        let source = message
            .headers()
            .and_then(|headers| headers.iter().find(|h| h.key == "source_partition"))
            .and_then(|header| header.value)
            .map(|value| String::from_utf8_lossy(value).into_owned());
        sources.push(source.expect("a source_partition header"));
    }
    sources.sort();
    assert_eq!(sources, ["0", "1", "2"], "one from each partition");
    app.stop().await.expect("a clean stop");
}
