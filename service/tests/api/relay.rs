//! The outbox relay: at rest, and what it publishes.

use std::time::Duration;

use harness::app::{Environment, shared_stack};
use harness::topic;
use service::config::Component;
use service::domain::OrderStatus;
use service::proto::orders::v1 as pb;

/// An idle relay waits for a commit's notification (or its 500 ms poll) between rounds; it does not
/// spin. Counted in PostgreSQL: every round is a transaction of the environment's database, so over
/// three idle seconds there are a handful, where a relay that did not wait runs thousands.
#[tokio::test]
async fn an_idle_relay_waits_between_rounds_instead_of_spinning() {
    let env = Environment::fresh(shared_stack().await).await;
    let app = env
        .spawn(&[Component::Api, Component::Relay])
        .await
        .expect("the service starts");
    // Start-up's own transactions (the environment's set-up, the pool's first connections) are
    // reported over the first seconds: about 45, then 4 a second (measured).
    tokio::time::sleep(Duration::from_secs(3)).await;
    let before = transactions(&env).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    app.create_order().await;
    assert_eq!(
        env.wait_for_empty_outbox(Duration::from_secs(20)).await,
        0,
        "the relay is running: it published the order's event"
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let during = transactions(&env).await - before;
    assert!(
        during <= 50,
        "{during} transactions in about 3 s of an idle relay"
    );
    app.stop().await.expect("a clean stop");
}

/// A commit wakes the relay through `LISTEN`/`NOTIFY`: with its fallback poll set to an hour, an event
/// is still published at once. (Without the listener it would wait for the poll.)
#[tokio::test]
async fn a_commit_wakes_the_relay_without_waiting_for_its_poll() {
    let mut env = Environment::fresh(shared_stack().await).await;
    env.settings.outbox_poll_ms = 3_600_000;
    let app = env
        .spawn(&[Component::Api, Component::Relay])
        .await
        .expect("the service starts");
    // The relay's first round, at start, finds nothing; then it waits.
    tokio::time::sleep(Duration::from_secs(2)).await;
    app.create_order().await;
    assert_eq!(
        env.wait_for_empty_outbox(Duration::from_secs(20)).await,
        0,
        "the commit's notification woke the relay"
    );
    app.stop().await.expect("a clean stop");
}

/// Transactions committed or rolled back in the environment's database, as PostgreSQL counts them
/// (each backend reports its counts at the latest a second after its last report).
async fn transactions(env: &Environment) -> i64 {
    sqlx::query_scalar(
        "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = current_database()",
    )
    .fetch_one(env.storage.pool())
    .await
    .expect("pg_stat_database")
}

/// The backlog gauge reads PostgreSQL's statistics, not the table: it follows the outbox up while no
/// relay runs, and back to 0 once one drained it (the statistics trail by about a second).
#[tokio::test]
async fn the_backlog_estimate_follows_the_outbox_up_and_down() {
    let env = Environment::fresh(shared_stack().await).await;
    let api = env.spawn(&[Component::Api]).await.expect("the API starts");
    for _ in 0..20 {
        api.create_order().await;
    }
    assert_eq!(env.outbox_backlog().await, 20, "the premise: 20 events wait");
    assert_eq!(wait_for_estimate(&env, |rows| rows >= 20).await, 20);

    let relay = env
        .spawn(&[Component::Api, Component::Relay])
        .await
        .expect("an instance with the relay starts");
    assert_eq!(env.wait_for_empty_outbox(Duration::from_secs(20)).await, 0);
    assert_eq!(wait_for_estimate(&env, |rows| rows == 0).await, 0);
    relay.stop().await.expect("a clean stop");
    api.stop().await.expect("a clean stop");
}

/// The estimate once `done` holds of it, or the last one after 15 s.
async fn wait_for_estimate(env: &Environment, done: impl Fn(i64) -> bool) -> i64 {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let rows = service::storage::outbox::estimated_backlog(env.storage.pool())
            .await
            .expect("the statistics answer");
        if done(rows) || tokio::time::Instant::now() > deadline {
            return rows;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A status change's event is encoded by the relay when it publishes it, from the version its outbox row
/// names (`storage::outbox`). Published only once every order reached its last version, each event must
/// still be the order as the change it announces left it: what the RPC answered then.
#[tokio::test]
async fn each_event_is_the_order_as_the_change_it_announces_left_it() {
    let env = Environment::fresh(shared_stack().await).await;
    let api = env.spawn(&[Component::Api]).await.expect("the API starts");
    let created = api.create_orders_at_once(1..=6).await;
    let mut answered = created.clone();
    for status in [OrderStatus::Paid, OrderStatus::Cancelled] {
        // At once: the changes share batches (group commit).
        let changes = created.iter().map(|order| api.set_status(order.order_id, status));
        answered.extend(futures::future::join_all(changes).await);
    }
    api.stop().await.expect("a clean stop");
    assert_eq!(
        env.outbox_backlog().await,
        18,
        "the premise: every event waits for a relay"
    );

    let relay = env
        .spawn(&[Component::Api, Component::Relay])
        .await
        .expect("an instance with the relay starts");
    assert_eq!(env.wait_for_empty_outbox(Duration::from_secs(20)).await, 0);
    relay.stop().await.expect("a clean stop");
    let settings = &env.settings;
    let events = topic::read_events(
        &settings.kafka_brokers,
        &settings.orders_topic,
        Duration::from_secs(20),
    )
    .await
    .expect("the topic read to its end");
    let mut published = Vec::new();
    for pb::OrderEvent {
        order, occurred_at, ..
    } in events.into_iter().map(|published| published.event)
    {
        let order = order.expect("every event carries its order");
        assert_eq!(occurred_at, order.updated_at, "the event's time is its version's");
        published.push(order);
    }
    let version = |order: &pb::Order| (order.order_id, order.version);
    published.sort_by_key(version);
    answered.sort_by_key(version);
    assert_eq!(published, answered);
}
