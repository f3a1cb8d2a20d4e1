//! Faults: the service killed between commit and publish, Kafka down, Redis down.

use std::time::Duration;

use harness::Service;
use service::config::Component;
use service::proto::orders::v1 as pb;
use service::startup::TestFaults;

use crate::helpers::{
    ServiceProcess, TestApp, TestEnv, connect, create_order, free_address, get_order, outbox_backlog,
    own_stack, set_status, shared_stack, wait_for_cache, wait_for_empty_outbox,
};

const DEADLINE: Duration = Duration::from_secs(30);

/// `kill -9` after the commit and before anything was published: the next relay publishes it.
#[tokio::test]
async fn a_service_killed_after_commit_loses_nothing() {
    let env = TestEnv::new(shared_stack().await).await;
    // A process with the API only: it commits changes (and their outbox rows) but publishes nothing.
    let address = free_address();
    let process = ServiceProcess::start(&env, "api", address);
    let mut client = connect(address).await;
    let order = create_order(&mut client).await;
    let paid = set_status(&mut client, order.order_id, pb::OrderStatus::Paid).await;
    process.kill();
    assert_eq!(
        outbox_backlog(&env).await,
        2,
        "both events are committed, none published"
    );

    let address = free_address();
    let _restarted = ServiceProcess::start(&env, "api,relay,updater", address);
    let mut client = connect(address).await;
    let cached = wait_for_cache(&mut client, order.order_id, paid.version, DEADLINE)
        .await
        .expect("the committed change reaches the cache after the restart");
    assert_eq!(cached, paid);
    assert_eq!(wait_for_empty_outbox(&env, DEADLINE).await, 0);
}

#[tokio::test]
async fn updates_while_kafka_is_down_reach_the_cache_when_it_returns() {
    let stack = own_stack().await;
    let env = TestEnv::new(&stack).await;
    let mut app = TestApp::spawn(&env).await;
    let order = create_order(&mut app.client).await;
    wait_for_cache(&mut app.client, order.order_id, 1, DEADLINE)
        .await
        .expect("cached");

    stack.stop(Service::Kafka(0)).await.expect("stop kafka");
    let paid = set_status(&mut app.client, order.order_id, pb::OrderStatus::Paid).await;
    let boxing = set_status(&mut app.client, order.order_id, pb::OrderStatus::Boxing).await;
    assert_eq!(
        boxing.version,
        paid.version + 1,
        "writes succeed while Kafka is down"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    // At least the two new events; version 1's row may be back too, if Kafka stopped before the relay
    // had its acknowledgement (the round rolls back and publishes it again later).
    assert!(outbox_backlog(&env).await >= 2, "a backlog builds up");

    stack.start_service(Service::Kafka(0)).await.expect("start kafka");
    let cached = wait_for_cache(
        &mut app.client,
        order.order_id,
        boxing.version,
        Duration::from_secs(60),
    )
    .await
    .expect("the backlog drains into the cache");
    assert_eq!(cached, boxing);
    assert_eq!(wait_for_empty_outbox(&env, DEADLINE).await, 0);
    app.stop().await;
}

#[tokio::test]
async fn reads_succeed_while_redis_is_down_and_updates_arrive_after() {
    let stack = own_stack().await;
    let env = TestEnv::new(&stack).await;
    let mut app = TestApp::spawn(&env).await;
    let order = create_order(&mut app.client).await;
    wait_for_cache(&mut app.client, order.order_id, 1, DEADLINE)
        .await
        .expect("cached");

    stack.stop(Service::Redis).await.expect("stop redis");
    let paid = set_status(&mut app.client, order.order_id, pb::OrderStatus::Paid).await;
    for _ in 0..3 {
        let read = get_order(&mut app.client, order.order_id, "reads succeed without Redis").await;
        assert_eq!(read.source, pb::Source::Database as i32);
        assert_eq!(read.order.as_ref(), Some(&paid));
    }
    let batch = app
        .client
        .get_orders(pb::GetOrdersRequest {
            order_ids: vec![order.order_id],
        })
        .await
        .expect("batch reads succeed without Redis");
    assert_eq!(batch.into_inner().orders, vec![paid.clone()]);

    // Redis comes back empty; the updater was retrying version 2 all along and now writes it.
    stack.start_service(Service::Redis).await.expect("start redis");
    let cached = crate::helpers::cached_raw(&env, order.order_id);
    let deadline = std::time::Instant::now() + DEADLINE;
    let mut value = cached.await;
    while value.is_none() && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        value = crate::helpers::cached_raw(&env, order.order_id).await;
    }
    let value = value.expect("the updater's retried write arrives after Redis returns");
    assert_eq!(
        service::cache::decode(Some(value)),
        service::cache::Cached::Hit(paid)
    );
    app.stop().await;
}

#[tokio::test]
async fn without_an_updater_the_outbox_keeps_events_for_later() {
    let env = TestEnv::new(shared_stack().await).await;
    let mut api = TestApp::spawn_with(&env, &[Component::Api], TestFaults::default()).await;
    let order = create_order(&mut api.client).await;
    let paid = set_status(&mut api.client, order.order_id, pb::OrderStatus::Paid).await;
    assert_eq!(outbox_backlog(&env).await, 2);
    api.stop().await;

    let mut workers = TestApp::spawn_with(
        &env,
        &[Component::Api, Component::Relay, Component::Updater],
        TestFaults::default(),
    )
    .await;
    let cached = wait_for_cache(&mut workers.client, order.order_id, 2, DEADLINE)
        .await
        .expect("cached");
    assert_eq!(cached, paid);
    workers.stop().await;
}
