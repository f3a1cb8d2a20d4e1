//! The way to the cache and back: update, outbox, Kafka, updater, Redis, cache-first read.

use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use service::cache::{OrderCache, Write, WriteMode};
use service::domain::OrderId;
use service::proto::orders::v1 as pb;
use service::startup::TestFaults;

use crate::helpers::{
    TestApp, TestEnv, cached_raw, create_order, get_order, set_status, shared_stack, wait_for_cache,
};

const DEADLINE: Duration = Duration::from_secs(20);

#[tokio::test]
async fn an_update_reaches_the_cache_and_reads_come_from_it() {
    let env = TestEnv::new(shared_stack().await).await;
    let mut app = TestApp::spawn(&env).await;
    let order = create_order(&mut app.client).await;
    let paid = set_status(&mut app.client, order.order_id, pb::OrderStatus::Paid).await;
    let cached = wait_for_cache(&mut app.client, order.order_id, paid.version, DEADLINE)
        .await
        .expect("the update reaches the cache");
    assert_eq!(
        cached, paid,
        "the cached copy equals the database's, field by field"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_miss_is_read_from_the_database_and_filled() {
    let env = TestEnv::new(shared_stack().await).await;
    // No updater: only the read path can fill the cache.
    let mut app = TestApp::spawn_with(&env, &[service::config::Component::Api], TestFaults::default()).await;
    let order = create_order(&mut app.client).await;
    let get = pb::GetOrderRequest {
        order_id: order.order_id,
        min_version: 0,
    };
    let first = app.client.get_order(get).await.expect("GetOrder").into_inner();
    assert_eq!(first.source, pb::Source::Database as i32);
    let second = app.client.get_order(get).await.expect("GetOrder").into_inner();
    assert_eq!(second.source, pb::Source::Cache as i32, "the miss was filled");
    assert_eq!(second.order, first.order);
    app.stop().await;
}

/// The read-through race of the naive design: a reader fetched version 1 from the database, an update
/// commits version 2 and the updater caches it, then the reader's late fill arrives. The
/// compare-and-set refuses it; a blind write (the broken variant) would leave the cache stale.
#[tokio::test]
async fn a_late_fill_with_an_older_version_cannot_overwrite_a_newer_one() {
    let env = TestEnv::new(shared_stack().await).await;
    let mut app = TestApp::spawn(&env).await;
    let order = create_order(&mut app.client).await; // the slow reader's snapshot: version 1
    let paid = set_status(&mut app.client, order.order_id, pb::OrderStatus::Paid).await;
    wait_for_cache(&mut app.client, order.order_id, 2, DEADLINE)
        .await
        .expect("version 2 cached");

    let checked = OrderCache::connect_lazy(
        &env.settings.redis_url,
        Duration::from_secs(60),
        WriteMode::CompareAndSet,
    )
    .expect("cache");
    assert_eq!(checked.put_if_newer(&order).await.expect("redis"), Write::Stale);
    let cached = wait_for_cache(&mut app.client, order.order_id, 2, Duration::from_secs(1)).await;
    assert_eq!(cached.expect("still version 2"), paid);

    // The same late fill without the version check: the cache goes back to version 1.
    let blind = OrderCache::connect_lazy(
        &env.settings.redis_url,
        Duration::from_secs(60),
        WriteMode::Unchecked,
    )
    .expect("cache");
    assert_eq!(blind.put_if_newer(&order).await.expect("redis"), Write::Written);
    let id = OrderId::parse(order.order_id).expect("id");
    let reverted = checked.get_many(&[id]).await.expect("redis");
    assert_eq!(
        reverted,
        vec![service::cache::Cached::Hit(order)],
        "the broken write is caught"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_corrupt_cached_value_is_a_miss_and_is_replaced() {
    let env = TestEnv::new(shared_stack().await).await;
    let mut app = TestApp::spawn(&env).await;
    let order = create_order(&mut app.client).await;
    wait_for_cache(&mut app.client, order.order_id, 1, DEADLINE)
        .await
        .expect("cached");
    for garbage in [&b"not an order"[..], b"1:\xff\xff\xff", b"99:"] {
        let mut redis = env
            .redis()
            .get_multiplexed_async_connection()
            .await
            .expect("redis");
        let _: () = redis::cmd("SET")
            .arg(format!("order:{}", order.order_id))
            .arg(garbage)
            .query_async(&mut redis)
            .await
            .expect("SET");
        let read = get_order(&mut app.client, order.order_id, "a corrupt entry is not an error").await;
        assert_eq!(read.source, pb::Source::Database as i32);
        assert_eq!(read.order.as_ref(), Some(&order));
        let raw = cached_raw(&env, order.order_id).await.expect("refilled");
        assert_eq!(
            service::cache::decode(Some(raw)),
            service::cache::Cached::Hit(order.clone())
        );
    }
    app.stop().await;
}

/// Undecodable messages go to the dead-letter topic and their partitions keep flowing.
#[tokio::test]
async fn poison_messages_are_dead_lettered_without_stalling_their_partition() {
    let env = TestEnv::new(shared_stack().await).await;
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
    let mut app = TestApp::spawn(&env).await;
    let mut orders = Vec::new();
    for _ in 0..6 {
        let order = create_order(&mut app.client).await;
        orders.push(set_status(&mut app.client, order.order_id, pb::OrderStatus::Paid).await);
    }
    for order in &orders {
        wait_for_cache(&mut app.client, order.order_id, 2, DEADLINE)
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
        sources.push(message.partition());
    }
    assert_eq!(sources.len(), 3);
    app.stop().await;
}
