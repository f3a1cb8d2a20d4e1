//! Overload: past its limit of calls in progress the server refuses, it does not queue without end.

use std::time::Duration;

use harness::app::{ALL, Environment, shared_stack};
use harness::client::sample_order;
use service::domain::OrderStatus;
use tonic::Code;

/// With every slot taken by calls that wait (on locks this test holds), the next call is refused with
/// RESOURCE_EXHAUSTED; the admitted calls finish once the locks go, and the server serves again.
///
/// The two waiting calls are of two kinds, a status change (waiting on the order's row lock) and a create
/// (waiting on an uncommitted order with its idempotency key), so that each waits in a session of its
/// own: two calls of one kind may share a transaction (`storage::group_commit`).
#[tokio::test]
async fn beyond_its_limit_of_calls_in_progress_the_server_refuses_with_resource_exhausted() {
    let mut env = Environment::fresh(shared_stack().await).await;
    env.settings.max_concurrent_requests = 2;
    let app = env.spawn(&ALL).await.expect("the service starts");
    let order = app.create_order().await;
    let mut create = sample_order(77);
    create.idempotency_key = "held-by-the-test".into();

    let mut locks = env.storage.pool().begin().await.expect("a transaction");
    sqlx::query("SELECT id FROM orders WHERE id = $1 FOR UPDATE")
        .bind(order.order_id)
        .execute(&mut *locks)
        .await
        .expect("lock the order");
    sqlx::query(
        "INSERT INTO orders (client_id, status, currency_code, amount, idempotency_key)
         VALUES ($1, 'CREATED', 'EUR', 0, $2)",
    )
    .bind(create.client_id)
    .bind(&create.idempotency_key)
    .execute(&mut *locks)
    .await
    .expect("hold the idempotency key");
    let held_change = tokio::spawn({
        let (api, id) = (app.api.clone(), order.order_id);
        async move { api.set_status(id, OrderStatus::Paid, None).await }
    });
    let held_create = tokio::spawn({
        let (api, request) = (app.api.clone(), create.clone());
        async move { api.create_order(request).await }
    });
    wait_for_lock_waiters(&env, 2).await;

    let refused = app
        .api
        .get_order(order.order_id, 0)
        .await
        .expect_err("no room for a third call");
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(
        refused.message().contains("limit of 2 calls in progress"),
        "{refused:?}"
    );

    locks.rollback().await.expect("release the locks");
    let paid = held_change
        .await
        .expect("no panic")
        .expect("the admitted change completes");
    assert_eq!(paid.version, 2);
    let created = held_create
        .await
        .expect("no panic")
        .expect("the admitted create completes");
    assert_eq!((created.client_id, created.version), (77, 1));
    let read = app.api.get_order(order.order_id, 0).await.expect("served again");
    assert_eq!(read.order.map(|order| order.version), Some(2));
    app.stop().await.expect("a clean stop");
}

/// Polls PostgreSQL until `count` sessions of this environment's database wait for a lock.
async fn wait_for_lock_waiters(env: &Environment, count: i64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'",
        )
        .fetch_one(env.storage.pool())
        .await
        .expect("pg_stat_activity");
        if waiting >= count {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{count} calls waiting on the locks, got {waiting}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
