//! Every RPC doing its job.

use service::config::Component;
use service::domain::OrderStatus;
use service::proto::orders::v1 as pb;

use harness::app::{Environment, shared_stack, spawn_app};
use harness::client::sample_order;

#[tokio::test]
async fn create_order_computes_the_amount_and_starts_at_version_1() {
    let app = spawn_app().await;
    let order = app.create_order().await;
    assert!(order.order_id > 0);
    assert_eq!(order.client_id, 42);
    assert_eq!(order.status, pb::OrderStatus::Created as i32);
    assert_eq!(order.version, 1);
    assert_eq!(order.items.len(), 2);
    // 2 x 3.50 + 1 x 10.00
    let amount = order.amount.expect("amount");
    assert_eq!(
        (amount.currency_code.as_str(), amount.units, amount.nanos),
        ("EUR", 17, 0)
    );
    assert_eq!(order.created_at, order.updated_at);
    app.stop().await.expect("a clean stop");
}

/// Ids come from the sequence a block at a time (`storage::order_ids`): two instances creating at once
/// never hand out the same id, and more orders than one block take a second.
#[tokio::test]
async fn two_instances_creating_at_once_give_every_order_its_own_id() {
    let env = Environment::fresh(shared_stack().await).await;
    let first = env.spawn(&[Component::Api]).await.expect("instance 1");
    let second = env.spawn(&[Component::Api]).await.expect("instance 2");
    let per_instance = 3 * service::storage::ORDER_ID_BLOCK as usize / 2;
    let create_many = |app: &harness::app::App| {
        let api = app.api.clone();
        async move {
            let mut orders = Vec::new();
            for _ in 0..per_instance {
                orders.push(api.create(42).await.expect("CreateOrder"));
            }
            orders
        }
    };
    let (mut orders, more) = tokio::join!(create_many(&first), create_many(&second));
    orders.extend(more);
    let ids: std::collections::HashSet<i64> = orders.iter().map(|order| order.order_id).collect();
    assert_eq!(ids.len(), 2 * per_instance, "every order its own id");
    // The order answered is the order stored, its times included (the database keeps microseconds).
    let created = &orders[orders.len() - 1];
    let stored = first
        .api
        .get_order(created.order_id, 0)
        .await
        .expect("GetOrder")
        .order;
    assert_eq!(stored.as_ref(), Some(created));
    first.stop().await.expect("a clean stop");
    second.stop().await.expect("a clean stop");
}

#[tokio::test]
async fn a_retry_with_the_same_idempotency_key_returns_the_first_order() {
    let app = spawn_app().await;
    let mut request = sample_order(7);
    request.idempotency_key = "checkout-123".into();
    let first = app.api.create_order(request.clone()).await.expect("first");
    let retry = app.api.create_order(request).await.expect("the retry");
    assert_eq!(retry, first);
    assert_eq!(orders_of(&app, 7).await, 1);
    app.stop().await.expect("a clean stop");
}

/// A key is the client's own: another client using the same key gets an order of its own.
#[tokio::test]
async fn an_idempotency_key_is_scoped_to_its_client() {
    let app = spawn_app().await;
    let mut request = sample_order(7);
    request.idempotency_key = "checkout-123".into();
    let first = app.api.create_order(request.clone()).await.expect("client 7");
    request.client_id = 8;
    let other = app.api.create_order(request).await.expect("client 8");
    assert_ne!(
        other.order_id, first.order_id,
        "client 8 does not get client 7's order"
    );
    assert_eq!((other.client_id, first.client_id), (8, 7));
    app.stop().await.expect("a clean stop");
}

/// The same client reusing a key for another order is told so, by name, and nothing is created.
#[tokio::test]
async fn reusing_an_idempotency_key_for_a_different_order_is_refused() {
    let app = spawn_app().await;
    let mut request = sample_order(7);
    request.idempotency_key = "checkout-123".into();
    let first = app.api.create_order(request.clone()).await.expect("first");
    request.items[0].quantity += 1;
    let status = app
        .api
        .create_order(request)
        .await
        .expect_err("a different order");
    assert_eq!(status.code(), tonic::Code::AlreadyExists, "{status:?}");
    assert!(
        status.message().contains("\"checkout-123\"")
            && status.message().contains(&first.order_id.to_string()),
        "the message names the key and its order: {}",
        status.message()
    );
    assert_eq!(orders_of(&app, 7).await, 1);
    app.stop().await.expect("a clean stop");
}

async fn orders_of(app: &harness::app::App, client_id: i64) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM orders WHERE client_id = $1")
        .bind(client_id)
        .fetch_one(app.env.storage.pool())
        .await
        .expect("count")
}

#[tokio::test]
async fn update_moves_along_the_line_and_returns_the_new_version() {
    let app = spawn_app().await;
    let order = app.create_order().await;
    let paid = app.set_status(order.order_id, OrderStatus::Paid).await;
    assert_eq!((paid.status, paid.version), (pb::OrderStatus::Paid as i32, 2));
    let instant = |t: Option<prost_types::Timestamp>| t.map(|t| (t.seconds, t.nanos));
    assert!(instant(paid.updated_at) > instant(order.updated_at));
    let boxing = app
        .grpc()
        .update_order_status(pb::UpdateOrderStatusRequest {
            order_id: order.order_id,
            status: pb::OrderStatus::Boxing.into(),
            expected_version: Some(2),
        })
        .await
        .expect("update with the right expected_version")
        .into_inner()
        .order
        .expect("order");
    assert_eq!(boxing.version, 3);
    let cancelled = app.set_status(order.order_id, OrderStatus::Cancelled).await;
    assert_eq!(cancelled.version, 4);
    let history: Vec<(i64, String)> =
        sqlx::query_as("SELECT version, status FROM order_versions WHERE order_id = $1 ORDER BY version")
            .bind(order.order_id)
            .fetch_all(app.env.storage.pool())
            .await
            .expect("history");
    let expected = [(1, "CREATED"), (2, "PAID"), (3, "BOXING"), (4, "CANCELLED")];
    assert_eq!(history, expected.map(|(v, s)| (v, s.to_string())));
    app.stop().await.expect("a clean stop");
}

#[tokio::test]
async fn setting_the_current_status_again_changes_nothing() {
    // Only the API: every event stays in the outbox, so it can be counted.
    let env = Environment::fresh(shared_stack().await).await;
    let app = env.spawn(&[Component::Api]).await.expect("the API starts");
    let order = app.create_order().await;
    let paid = app.set_status(order.order_id, OrderStatus::Paid).await;
    let again = app.set_status(order.order_id, OrderStatus::Paid).await;
    assert_eq!(again, paid, "no new version, no new timestamp");
    assert_eq!(env.outbox_backlog().await, 2, "events of versions 1 and 2 only");
    app.stop().await.expect("a clean stop");
}

#[tokio::test]
async fn get_orders_answers_in_request_order_and_lists_the_missing() {
    let app = spawn_app().await;
    let a = app.create_order().await;
    let b = app.create_order().await;
    let missing = b.order_id + 1000;
    let response = app
        .grpc()
        .get_orders(pb::GetOrdersRequest {
            order_ids: vec![b.order_id, missing, a.order_id, b.order_id],
        })
        .await
        .expect("GetOrders")
        .into_inner();
    let ids: Vec<i64> = response.orders.iter().map(|o| o.order_id).collect();
    assert_eq!(ids, vec![b.order_id, a.order_id], "request order, each id once");
    assert_eq!(response.not_found_ids, vec![missing]);
    assert_eq!(response.orders[1], a);
    app.stop().await.expect("a clean stop");
}

#[tokio::test]
async fn a_read_with_min_version_never_returns_an_older_version() {
    // Only the API: the cache keeps version 1 while the database moves to version 2.
    let env = Environment::fresh(shared_stack().await).await;
    let api = env.spawn(&[Component::Api]).await.expect("the API starts");
    let order = api.create_order().await;
    api.cache_order(order.order_id).await;
    let paid = api.set_status(order.order_id, OrderStatus::Paid).await;

    let stale = api.get_order(order.order_id).await;
    assert_eq!(stale.source, pb::Source::Cache as i32);
    assert_eq!(stale.order.expect("order").version, 1, "the cache is behind");

    let fresh = api
        .api
        .get_order(order.order_id, paid.version)
        .await
        .expect("GetOrder");
    assert_eq!(
        fresh.source,
        pb::Source::Database as i32,
        "an older cached copy is bypassed"
    );
    assert_eq!(fresh.order.expect("order"), paid);
    api.stop().await.expect("a clean stop");
}
