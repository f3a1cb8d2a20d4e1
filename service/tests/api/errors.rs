//! Bad input: the right status, a message that names the problem, and nothing changed.

use service::proto::orders::v1 as pb;
use tonic::Code;

use harness::app::{Environment, shared_stack, spawn_app};
use harness::client::{item, sample_order};

fn assert_status<T: std::fmt::Debug>(result: Result<T, tonic::Status>, code: Code, mentions: &str) {
    let status = result.expect_err("the request must fail");
    assert_eq!(status.code(), code, "{status:?}");
    assert!(
        status.message().contains(mentions),
        "{:?} should mention {mentions:?}",
        status.message()
    );
}

#[tokio::test]
async fn invalid_create_requests_name_the_field() {
    let app = spawn_app().await;
    let with = |change: &dyn Fn(&mut pb::CreateOrderRequest)| {
        let mut request = sample_order(1);
        change(&mut request);
        request
    };
    let cases: Vec<(pb::CreateOrderRequest, &str)> = vec![
        (with(&|r| r.client_id = 0), "client_id"),
        (with(&|r| r.items.clear()), "items"),
        (with(&|r| r.items[1].quantity = 0), "items[1].quantity"),
        (with(&|r| r.items[0].quantity = -3), "items[0].quantity"),
        (with(&|r| r.items[0].sku_id = 0), "items[0].sku_id"),
        (with(&|r| r.items[0].price = None), "items[0].price"),
        (
            with(&|r| r.items[1] = item(200, 1, -1, 0)),
            "items[1].price must not be negative",
        ),
        (with(&|r| r.items[0] = item(100, 1, 1, 1_000_000_000)), "nanos"),
        (with(&|r| r.items[0] = item(100, 1, 1, -5)), "same sign"),
        (
            with(&|r| r.items[0].price.as_mut().expect("price").currency_code = "euro".into()),
            "currency_code",
        ),
        (
            with(&|r| r.items[1].price.as_mut().expect("price").currency_code = "USD".into()),
            "differs",
        ),
        (with(&|r| r.idempotency_key = "k".repeat(200)), "idempotency_key"),
    ];
    for (request, mentions) in cases {
        assert_status(
            app.grpc().create_order(request).await,
            Code::InvalidArgument,
            mentions,
        );
    }
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM orders")
        .fetch_one(app.env.storage.pool())
        .await
        .expect("count");
    assert_eq!(count, 0, "no invalid request created anything");
    app.stop().await.expect("a clean stop");
}

#[tokio::test]
async fn invalid_reads_are_refused_and_unknown_orders_are_not_found() {
    let app = spawn_app().await;
    let get = |order_id, min_version| pb::GetOrderRequest {
        order_id,
        min_version,
    };
    assert_status(
        app.grpc().get_order(get(0, 0)).await,
        Code::InvalidArgument,
        "order_id",
    );
    assert_status(
        app.grpc().get_order(get(-7, 0)).await,
        Code::InvalidArgument,
        "order_id",
    );
    assert_status(
        app.grpc().get_order(get(1, -1)).await,
        Code::InvalidArgument,
        "min_version",
    );
    assert_status(
        app.grpc().get_order(get(999_999, 0)).await,
        Code::NotFound,
        "999999",
    );

    let ids = |order_ids| pb::GetOrdersRequest { order_ids };
    assert_status(
        app.grpc().get_orders(ids(vec![1, 0])).await,
        Code::InvalidArgument,
        "order_ids[1]",
    );
    assert_status(
        app.grpc().get_orders(ids((1..=1001).collect())).await,
        Code::InvalidArgument,
        "at most 1000",
    );
    let empty = app
        .grpc()
        .get_orders(ids(vec![]))
        .await
        .expect("an empty batch is fine");
    assert!(empty.into_inner().orders.is_empty());
    app.stop().await.expect("a clean stop");
}

#[tokio::test]
async fn invalid_updates_are_refused_with_the_right_code() {
    let app = spawn_app().await;
    let order = app.create_order().await;
    let update = |order_id, status: i32, expected_version| pb::UpdateOrderStatusRequest {
        order_id,
        status,
        expected_version,
    };
    let paid = pb::OrderStatus::Paid as i32;
    let id = order.order_id;
    assert_status(
        app.grpc().update_order_status(update(0, paid, None)).await,
        Code::InvalidArgument,
        "order_id",
    );
    assert_status(
        app.grpc().update_order_status(update(id, 0, None)).await,
        Code::InvalidArgument,
        "UNSPECIFIED",
    );
    assert_status(
        app.grpc().update_order_status(update(id, 42, None)).await,
        Code::InvalidArgument,
        "42",
    );
    assert_status(
        app.grpc().update_order_status(update(id, paid, Some(0))).await,
        Code::InvalidArgument,
        "expected_version",
    );
    assert_status(
        app.grpc()
            .update_order_status(update(id + 1000, paid, None))
            .await,
        Code::NotFound,
        "does not exist",
    );
    assert_status(
        app.grpc()
            .update_order_status(update(id, pb::OrderStatus::Completed as i32, None))
            .await,
        Code::FailedPrecondition,
        "from CREATED to COMPLETED",
    );
    assert_status(
        app.grpc().update_order_status(update(id, paid, Some(5))).await,
        Code::Aborted,
        "version 1, not the expected version 5",
    );
    let current = app
        .grpc()
        .get_order(pb::GetOrderRequest {
            order_id: id,
            min_version: 1,
        })
        .await
        .expect("GetOrder")
        .into_inner()
        .order
        .expect("order");
    assert_eq!(
        (current.status, current.version),
        (pb::OrderStatus::Created as i32, 1)
    );
    app.stop().await.expect("a clean stop");
}

#[tokio::test]
async fn with_a_token_writes_need_the_bearer_and_reads_do_not() {
    let mut env = Environment::fresh(shared_stack().await).await;
    env.settings.auth_token = Some("s3cret-token".into());
    let app = env.spawn(&harness::app::ALL).await.expect("the service starts");
    assert_status(
        app.grpc().create_order(sample_order(1)).await,
        Code::Unauthenticated,
        "authorization",
    );
    let mut wrong = tonic::Request::new(sample_order(1));
    wrong
        .metadata_mut()
        .insert("authorization", "Bearer nope".parse().expect("ascii"));
    assert_status(
        app.grpc().create_order(wrong).await,
        Code::Unauthenticated,
        "invalid",
    );

    let mut right = tonic::Request::new(sample_order(1));
    right
        .metadata_mut()
        .insert("authorization", "Bearer s3cret-token".parse().expect("ascii"));
    let order = app
        .grpc()
        .create_order(right)
        .await
        .expect("authorized")
        .into_inner()
        .order
        .expect("order");

    let update = pb::UpdateOrderStatusRequest {
        order_id: order.order_id,
        status: pb::OrderStatus::Paid.into(),
        expected_version: None,
    };
    assert_status(
        app.grpc().update_order_status(update).await,
        Code::Unauthenticated,
        "authorization",
    );
    let read = app
        .grpc()
        .get_order(pb::GetOrderRequest {
            order_id: order.order_id,
            min_version: 0,
        })
        .await;
    assert!(read.is_ok(), "reads need no token");
    app.stop().await.expect("a clean stop");
}

#[tokio::test]
async fn a_request_over_the_size_limit_is_refused() {
    let app = spawn_app().await;
    let mut request = sample_order(1);
    request.idempotency_key = "x".repeat(2 * 1024 * 1024);
    let status = app.grpc().create_order(request).await.expect_err("too large");
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
    app.stop().await.expect("a clean stop");
}
