//! Writes that arrive together are written together (`storage::group_commit`), and each keeps what it
//! would have had alone: its rows, its version, its event.
//!
//! The ground truth is PostgreSQL's own: `xmin`, the id of the transaction that wrote a row. Orders
//! written by one statement share it; an order and its items, version and event must share theirs.

use futures::future::join_all;
use service::config::Component;
use service::domain::OrderStatus;
use tonic::Code;

use harness::app::{Environment, shared_stack};

/// Enough calls at once that they cannot all find a flush free (4 run at once with the default pool).
const CALLS: usize = 96;

#[tokio::test]
async fn concurrent_creates_share_transactions_and_each_order_keeps_its_rows_and_event() {
    // The API alone: no relay deletes the events this test counts.
    let env = Environment::fresh(shared_stack().await).await;
    let app = env.spawn(&[Component::Api]).await.expect("the API starts");
    let created = join_all((0..CALLS).map(|n| app.api.create(1 + n as i64))).await;
    let ids: Vec<i64> = created
        .into_iter()
        .map(|order| order.expect("CreateOrder").order_id)
        .collect();
    let pool = env.storage.pool();

    let whole: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM orders o WHERE o.id = ANY($1)
           AND (SELECT count(*) FROM order_items i WHERE i.order_id = o.id AND i.xmin = o.xmin) = 2
           AND (SELECT count(*) FROM order_versions v WHERE v.order_id = o.id AND v.xmin = o.xmin) = 1
           AND (SELECT count(*) FROM outbox e WHERE e.aggregate_id = o.id AND e.xmin = o.xmin) = 1",
    )
    .bind(&ids)
    .fetch_one(pool)
    .await
    .expect("count whole orders");
    assert_eq!(
        whole, CALLS as i64,
        "every order with its 2 items, its version and its event, in its transaction"
    );
    let events: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox")
        .fetch_one(pool)
        .await
        .expect("count events");
    assert_eq!(events, CALLS as i64, "one event per order, no more");

    let transactions =
        distinct_transactions(pool, "SELECT xmin::text FROM orders WHERE id = ANY($1)", &ids).await;
    assert!(
        transactions < CALLS as i64,
        "{CALLS} creates at once took {transactions} transactions: none was shared"
    );
    app.stop().await.expect("a clean stop");
}

#[tokio::test]
async fn concurrent_status_changes_share_transactions_and_each_change_is_one_version() {
    let env = Environment::fresh(shared_stack().await).await;
    let app = env.spawn(&[Component::Api]).await.expect("the API starts");
    let orders = join_all((0..CALLS / 2).map(|n| app.api.create(1 + n as i64))).await;
    let ids: Vec<i64> = orders
        .into_iter()
        .map(|order| order.expect("CreateOrder").order_id)
        .collect();

    // Two changes of each order at once, so batches hold the same order twice: PAID (legal only from
    // CREATED) and CANCELLED (legal from both). Whichever goes first, the other may be refused.
    let changes = ids
        .iter()
        .flat_map(|&id| [(id, OrderStatus::Paid), (id, OrderStatus::Cancelled)]);
    let answers = join_all(changes.map(|(id, status)| {
        let api = app.api.clone();
        async move { (id, api.set_status(id, status, None).await) }
    }))
    .await;
    let mut applied = 0;
    for (id, answer) in &answers {
        match answer {
            Ok(_) => applied += 1,
            Err(status) => assert_eq!(
                status.code(),
                Code::FailedPrecondition,
                "order {id}: only PAID after CANCELLED is refused: {status:?}"
            ),
        }
    }
    assert!(
        applied >= ids.len(),
        "every order changed at least once: {applied} changes"
    );

    let pool = env.storage.pool();
    // Versions 1..=n for each order, one event each, the order's row at version n.
    let (versions, events, top): (i64, i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM order_versions WHERE order_id = ANY($1)),
                (SELECT count(*) FROM outbox WHERE aggregate_id = ANY($1)),
                (SELECT coalesce(sum(version), 0) FROM orders WHERE id = ANY($1))::bigint",
    )
    .bind(&ids)
    .fetch_one(pool)
    .await
    .expect("count versions");
    let expected = (ids.len() + applied) as i64;
    assert_eq!(
        (versions, events, top),
        (expected, expected, expected),
        "one version and one event per change"
    );
    let gaps: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM orders o WHERE o.id = ANY($1)
           AND (SELECT max(version) FROM order_versions v WHERE v.order_id = o.id) <> o.version",
    )
    .bind(&ids)
    .fetch_one(pool)
    .await
    .expect("compare versions");
    assert_eq!(gaps, 0, "each order's row is at its last version");

    let transactions = distinct_transactions(
        pool,
        "SELECT xmin::text FROM order_versions WHERE order_id = ANY($1) AND version > 1",
        &ids,
    )
    .await;
    assert!(
        transactions < applied as i64,
        "{applied} status changes at once took {transactions} transactions: none was shared"
    );
    app.stop().await.expect("a clean stop");
}

/// How many distinct transactions wrote the rows `query` lists (by `xmin`) for `ids`.
async fn distinct_transactions(pool: &sqlx::PgPool, query: &str, ids: &[i64]) -> i64 {
    let transactions: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(query))
        .bind(ids)
        .fetch_all(pool)
        .await
        .expect("the rows' transactions");
    transactions
        .iter()
        .collect::<std::collections::HashSet<_>>()
        .len() as i64
}
