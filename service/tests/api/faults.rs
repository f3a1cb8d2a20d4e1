//! Faults: the service killed between commit and publish, Kafka down, Redis down.
//!
//! Each test caches its order first and then reads Redis itself for the change: only the relay and
//! the updater can bring a cached entry to a newer version (`cache_path.rs` shows it stays behind
//! without them).

use std::time::Duration;

use harness::Service;
use harness::app::{ALL, App, Environment, own_stack, shared_stack};
use harness::client::OrdersClient;
use service::cache::Cached;
use service::cache::breaker::{FAILURES_TO_OPEN, OPEN_FOR};
use service::config::Component;
use service::domain::OrderStatus;
use service::proto::orders::v1 as pb;

use crate::helpers::{ServiceProcess, free_address};

const DEADLINE: Duration = Duration::from_secs(30);

/// `kill -9` after the commit and before anything was published: the next relay publishes it.
#[tokio::test]
async fn a_service_killed_after_commit_loses_nothing() {
    let env = Environment::fresh(shared_stack().await).await;
    // A process with the API only: it commits changes (and their outbox rows) but publishes nothing.
    let address = free_address();
    let process = ServiceProcess::start(&env, "api", address);
    let client = OrdersClient::connect(address, DEADLINE)
        .await
        .expect("the API answers");
    let order = client.create(42).await.expect("CreateOrder");
    client.get_order(order.order_id, 0).await.expect("GetOrder"); // cached at version 1
    let paid = client
        .set_status(order.order_id, OrderStatus::Paid, None)
        .await
        .expect("UpdateOrderStatus");
    process.kill();
    assert_eq!(
        env.outbox_backlog().await,
        2,
        "both events are committed, none published"
    );
    assert_eq!(
        env.cache.entry(order.order_id).await.expect("redis"),
        Cached::Hit(order.clone())
    );

    let _restarted = ServiceProcess::start(&env, "relay,updater", free_address());
    let cached = env
        .cache
        .wait_for_version(order.order_id, paid.version, DEADLINE)
        .await
        .expect("the committed change reaches the cache after the restart");
    assert_eq!(cached, paid);
    assert_eq!(env.wait_for_empty_outbox(DEADLINE).await, 0);
}

#[tokio::test]
async fn updates_while_kafka_is_down_reach_the_cache_when_it_returns() {
    let stack = own_stack().await;
    let env = Environment::fresh(&stack).await;
    let app = env.spawn(&ALL).await.expect("the service starts");
    let order = app.create_order().await;
    app.cache_order(order.order_id).await;

    stack.stop(Service::Kafka(0)).await.expect("stop kafka");
    let paid = app.set_status(order.order_id, OrderStatus::Paid).await;
    let boxing = app.set_status(order.order_id, OrderStatus::Boxing).await;
    assert_eq!(
        boxing.version,
        paid.version + 1,
        "writes succeed while Kafka is down"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    // At least the two new events; version 1's row may be back too, if Kafka stopped before the relay
    // had its acknowledgement (the round rolls back and publishes it again later).
    assert!(env.outbox_backlog().await >= 2, "a backlog builds up");
    assert_eq!(
        env.cache.entry(order.order_id).await.expect("redis"),
        Cached::Hit(order.clone()),
        "nothing reached the cache meanwhile"
    );

    stack.start_service(Service::Kafka(0)).await.expect("start kafka");
    let cached = app
        .wait_until_cached(order.order_id, boxing.version, Duration::from_secs(60))
        .await
        .expect("the backlog drains into the cache");
    assert_eq!(cached, boxing);
    assert_eq!(env.wait_for_empty_outbox(DEADLINE).await, 0);
    app.stop().await.expect("a clean stop");
}

/// Redis down: reads and writes go on from the database. Redis back, empty: nothing older than the
/// database comes back into it, a read fills it, and the next change flows through the updater.
#[tokio::test]
async fn reads_succeed_while_redis_is_down_and_the_cache_works_again_after() {
    let stack = own_stack().await;
    let env = Environment::fresh(&stack).await;
    let app = env.spawn(&ALL).await.expect("the service starts");
    let order = app.create_order().await;
    app.cache_order(order.order_id).await;

    stack.stop(Service::Redis).await.expect("stop redis");
    let paid = app.set_status(order.order_id, OrderStatus::Paid).await;
    for _ in 0..3 {
        let read = app.get_order(order.order_id).await;
        assert_eq!(read.source, pb::Source::Database as i32);
        assert_eq!(read.order.as_ref(), Some(&paid));
    }
    let batch = app
        .api
        .get_orders(vec![order.order_id])
        .await
        .expect("batch reads succeed without Redis");
    assert_eq!(batch.orders, vec![paid.clone()]);

    stack.start_service(Service::Redis).await.expect("start redis");
    assert_eq!(app.env.wait_for_empty_outbox(DEADLINE).await, 0);
    // Its event committed by the group: the updater's retried write ran (its backoff can wait up
    // to 5 s), and found the key absent.
    app.wait_until_handled(DEADLINE).await;
    assert_eq!(
        env.cache.entry(order.order_id).await.expect("redis"),
        Cached::Miss,
        "the updater's retried write does not recreate the entry"
    );
    // Reads skip Redis for up to a second after it failed them (the circuit breaker), then use it.
    let cached = read_until_cached(&app, order.order_id).await;
    assert_eq!(cached, paid, "a read fills it from the database");
    let boxing = app.set_status(order.order_id, OrderStatus::Boxing).await;
    app.wait_until_cached(order.order_id, boxing.version, DEADLINE)
        .await
        .expect("the updater works again");
    app.stop().await.expect("a clean stop");
}

/// Redis that does not answer (paused, as in a long GC or a hung host): a few reads pay its timeout,
/// then reads stop asking it (counted in Redis itself: the `MGET`s that reached it), and once it
/// answers again they use the cache again on their own.
#[tokio::test]
async fn while_redis_does_not_answer_reads_stop_asking_it_and_use_it_again_when_it_does() {
    let stack = own_stack().await;
    let env = Environment::fresh(&stack).await;
    let app = env.spawn(&[Component::Api]).await.expect("the API starts");
    let order = app.create_order().await;
    app.cache_order(order.order_id).await;
    let mut redis = redis::Client::open(env.settings.redis_url.as_str())
        .expect("redis url")
        .get_multiplexed_async_connection()
        .await
        .expect("redis");
    let _: () = redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query_async(&mut redis)
        .await
        .expect("RESETSTAT");

    stack.pause(Service::Redis).await.expect("pause redis");
    let paused = std::time::Instant::now();
    let reads = 20;
    for _ in 0..reads {
        let read = app.get_order(order.order_id).await;
        assert_eq!(read.source, pb::Source::Database as i32, "Redis does not answer");
    }
    let probes_allowed = paused.elapsed().as_secs_f64() / OPEN_FOR.as_secs_f64();
    stack.resume(Service::Redis).await.expect("resume redis");

    // Redis executes what reached it while it was paused as soon as it runs again.
    let asked = calls(&mut redis, "mget").await;
    let leases = calls(&mut redis, "evalsha").await + calls(&mut redis, "eval").await;
    assert_eq!(
        leases, 0,
        "a read whose lookup Redis did not answer asks it for no lease"
    );
    assert!(
        asked >= 1,
        "the first read asked Redis (else this test shows nothing): {asked}"
    );
    // Without the breaker, every one of the 20 reads asks.
    assert!(
        f64::from(asked) <= f64::from(FAILURES_TO_OPEN) + probes_allowed.ceil(),
        "{asked} of {reads} reads asked a Redis that did not answer ({probes_allowed:.1} probe periods)"
    );

    let deadline = std::time::Instant::now() + DEADLINE;
    loop {
        let read = app.get_order(order.order_id).await;
        if read.source == pb::Source::Cache as i32 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "reads use the cache again");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    app.stop().await.expect("a clean stop");
}

/// Reads the order until a read has filled its cache entry (checked in Redis), and returns the entry.
async fn read_until_cached(app: &App, order_id: i64) -> pb::Order {
    let deadline = std::time::Instant::now() + DEADLINE;
    loop {
        let order = app.get_order(order_id).await.order.expect("an order");
        if let Ok(cached) = app
            .wait_until_cached(order_id, order.version, Duration::from_millis(200))
            .await
        {
            return cached;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "a read fills the cache again"
        );
    }
}

/// How often Redis executed `command` since its statistics were reset (`MGET`: the readers' lookups;
/// `EVALSHA`: their leases and fills, nothing else sends them to an API-only service's Redis).
async fn calls(redis: &mut redis::aio::MultiplexedConnection, command: &str) -> u32 {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(redis)
        .await
        .expect("INFO");
    let prefix = format!("cmdstat_{command}:calls=");
    info.lines()
        .find_map(|line| line.strip_prefix(prefix.as_str()))
        .and_then(|rest| rest.split(',').next())
        .map_or(0, |calls| calls.parse().expect("a count"))
}

#[tokio::test]
async fn without_an_updater_the_outbox_keeps_events_for_later() {
    let env = Environment::fresh(shared_stack().await).await;
    let api = env.spawn(&[Component::Api]).await.expect("the API starts");
    let order = api.create_order().await;
    api.cache_order(order.order_id).await;
    let paid = api.set_status(order.order_id, OrderStatus::Paid).await;
    assert_eq!(env.outbox_backlog().await, 2);
    api.stop().await.expect("a clean stop");

    let workers = env.spawn(&ALL).await.expect("the service starts");
    let cached = workers
        .wait_until_cached(order.order_id, 2, DEADLINE)
        .await
        .expect("cached");
    assert_eq!(cached, paid);
    workers.stop().await.expect("a clean stop");
}
