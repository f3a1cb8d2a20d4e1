//! grpcurl, as people use it: list and call the service through server reflection.

use tokio::process::Command;

use harness::app::spawn_app;

/// Runs grpcurl without blocking the test's runtime, which also runs the server.
async fn grpcurl(args: &[&str]) -> String {
    let gopath_bin = Command::new("go")
        .args(["env", "GOPATH"])
        .output()
        .await
        .map(|o| format!("{}/bin", String::from_utf8_lossy(&o.stdout).trim()))
        .unwrap_or_default();
    let path = format!("{}:{gopath_bin}", std::env::var("PATH").unwrap_or_default());
    let output = Command::new("grpcurl")
        .args(args)
        .env("PATH", path)
        .output()
        .await
        .unwrap_or_else(|e| panic!("grpcurl not found ({e}): run `bash ci/setup.sh`, which installs it"));
    assert!(
        output.status.success(),
        "grpcurl {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[tokio::test]
async fn grpcurl_lists_describes_and_calls_through_reflection() {
    let app = spawn_app().await;
    let address = app.address.to_string();

    let services = grpcurl(&["-plaintext", &address, "list"]).await;
    for service in ["orders.v1.OrderService", "grpc.health.v1.Health"] {
        assert!(services.contains(service), "{service} listed in {services}");
    }
    let description = grpcurl(&["-plaintext", &address, "describe", "orders.v1.OrderService"]).await;
    assert!(description.contains("rpc UpdateOrderStatus"), "{description}");

    let created = grpcurl(&[
        "-plaintext",
        "-d",
        r#"{"client_id": 5, "items": [{"sku_id": 1, "quantity": 2, "price": {"currency_code": "EUR", "units": 4, "nanos": 250000000}}]}"#,
        &address,
        "orders.v1.OrderService/CreateOrder",
    ]).await;
    let created: serde_json::Value = serde_json::from_str(&created).expect("grpcurl prints JSON");
    assert_eq!(created["order"]["amount"]["units"], "8");
    assert_eq!(created["order"]["amount"]["nanos"], 500000000);
    assert_eq!(created["order"]["status"], "ORDER_STATUS_CREATED");

    let health = grpcurl(&["-plaintext", &address, "grpc.health.v1.Health/Check"]).await;
    let health: serde_json::Value = serde_json::from_str(&health).expect("grpcurl prints JSON");
    assert_eq!(health["status"], "SERVING", "{health}");
    app.stop().await.expect("a clean stop");
}
