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
    let created = app.create_orders_at_once(1..=CALLS as i64).await;
    let ids: Vec<i64> = created.iter().map(|order| order.order_id).collect();
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
    let orders = app.create_orders_at_once(1..=(CALLS / 2) as i64).await;
    let ids: Vec<i64> = orders.iter().map(|order| order.order_id).collect();

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

/// The client whose writes this test's database refuses, by a trigger of the test's own.
const REFUSED_CLIENT: i64 = 666;

/// Installs a trigger that fails every `operation` (`INSERT` or `UPDATE`) of an order of
/// [`REFUSED_CLIENT`], counting each attempt in a sequence (which a rollback does not undo).
async fn refuse_client_writes(pool: &sqlx::PgPool, operation: &str) {
    for statement in [
        "CREATE SEQUENCE refused_attempts".to_string(),
        format!(
            "CREATE FUNCTION refuse_client() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN
                 IF NEW.client_id = {REFUSED_CLIENT} THEN
                     PERFORM nextval('refused_attempts');
                     RAISE EXCEPTION 'refused by the test';
                 END IF;
                 RETURN NEW;
             END $$"
        ),
        format!(
            "CREATE TRIGGER refuse_client BEFORE {operation} ON orders FOR EACH ROW EXECUTE FUNCTION refuse_client()"
        ),
    ] {
        sqlx::query(sqlx::AssertSqlSafe(statement))
            .execute(pool)
            .await
            .expect("install the refusing trigger");
    }
}

/// Calls enough to make batches, one in eight from [`REFUSED_CLIENT`].
fn clients_one_in_eight_refused() -> Vec<i64> {
    (0..CALLS as i64)
        .map(|n| if n % 8 == 3 { REFUSED_CLIENT } else { 1 + n })
        .collect()
}

/// The answers of the calls that succeeded, after checking that every other call was the refused
/// client's, answered INTERNAL, and that all the others succeeded.
fn only_the_refused_fail<T>(calls: impl IntoIterator<Item = (i64, Result<T, tonic::Status>)>) -> Vec<T> {
    let mut succeeded = Vec::new();
    let mut refused = 0;
    for (client, answer) in calls {
        match answer {
            Ok(answer) => succeeded.push(answer),
            Err(status) => {
                assert_eq!(
                    (client, status.code()),
                    (REFUSED_CLIENT, Code::Internal),
                    "only the refused client's calls fail: {status:?}"
                );
                refused += 1;
            }
        }
    }
    assert_eq!(succeeded.len() + refused, CALLS, "every call answered");
    assert_eq!(
        refused as i64,
        refused_calls(&clients_one_in_eight_refused()),
        "every other call succeeds"
    );
    succeeded
}

fn refused_calls(clients: &[i64]) -> i64 {
    clients.iter().filter(|&&client| client == REFUSED_CLIENT).count() as i64
}

/// A refused write alone in its batch is tried once; one in a batch with others is tried with the
/// batch, then alone: more attempts than refused writes means batches failed and were split, which is
/// what the test is about.
async fn assert_refused_batches_were_split(pool: &sqlx::PgPool, refused: i64) {
    let attempts: i64 =
        sqlx::query_scalar("SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM refused_attempts")
            .fetch_one(pool)
            .await
            .expect("read the attempts");
    assert!(
        attempts > refused,
        "{attempts} attempts for {refused} refused writes: none shared a batch, nothing was shown"
    );
}

#[tokio::test]
async fn a_create_the_database_refuses_fails_alone_and_its_batch_is_written() {
    let env = Environment::fresh(shared_stack().await).await;
    let app = env.spawn(&[Component::Api]).await.expect("the API starts");
    let pool = env.storage.pool();
    refuse_client_writes(pool, "INSERT").await;

    let clients = clients_one_in_eight_refused();
    let answers = join_all(clients.iter().map(|&client| app.api.create(client))).await;
    let refused = refused_calls(&clients);
    let created: Vec<i64> = only_the_refused_fail(clients.iter().copied().zip(answers))
        .iter()
        .map(|order| order.order_id)
        .collect();
    assert_refused_batches_were_split(pool, refused).await;
    let whole: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM orders o WHERE o.id = ANY($1)
           AND (SELECT count(*) FROM order_versions v WHERE v.order_id = o.id) = 1
           AND (SELECT count(*) FROM outbox e WHERE e.aggregate_id = o.id) = 1",
    )
    .bind(&created)
    .fetch_one(pool)
    .await
    .expect("count whole orders");
    assert_eq!(
        whole,
        created.len() as i64,
        "each created order stored with its version and event"
    );
    app.stop().await.expect("a clean stop");
}

#[tokio::test]
async fn a_status_change_the_database_refuses_fails_alone_and_its_batch_is_written() {
    let env = Environment::fresh(shared_stack().await).await;
    let app = env.spawn(&[Component::Api]).await.expect("the API starts");
    let clients = clients_one_in_eight_refused();
    let orders = app.create_orders_at_once(clients.iter().copied()).await;
    let pool = env.storage.pool();
    refuse_client_writes(pool, "UPDATE").await;

    let answers = join_all(
        orders
            .iter()
            .map(|order| app.api.set_status(order.order_id, OrderStatus::Paid, None)),
    )
    .await;
    let refused = refused_calls(&clients);
    let changed = only_the_refused_fail(orders.iter().map(|order| order.client_id).zip(answers));
    assert!(
        changed.iter().all(|order| order.version == 2),
        "each change made version 2"
    );
    let paid: Vec<i64> = changed.iter().map(|order| order.order_id).collect();
    assert_refused_batches_were_split(pool, refused).await;
    let versions: i64 =
        sqlx::query_scalar("SELECT count(*) FROM order_versions WHERE order_id = ANY($1) AND version = 2")
            .bind(&paid)
            .fetch_one(pool)
            .await
            .expect("count versions");
    assert_eq!(versions, paid.len() as i64, "each change stored with its version");
    app.stop().await.expect("a clean stop");
}
