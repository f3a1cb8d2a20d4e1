//! The container health check: `orders-service health-check`, the binary itself, as the Dockerfile's
//! `HEALTHCHECK` runs it.

use tokio::process::Command;

use harness::app::spawn_app;

/// The exit code of `orders-service health-check` against `address`, and what it printed. Its
/// environment has METRICS_ADDR at `metrics`, an address already taken, as in a container where the
/// health check runs beside the service that serves its metrics there.
async fn health_check(address: &str, metrics: &str) -> (Option<i32>, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_orders-service"))
        .arg("health-check")
        .env("GRPC_ADDR", address)
        .env("METRICS_ADDR", metrics)
        .env("RUST_LOG", "warn")
        .output()
        .await
        .expect("orders-service runs");
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.code(), printed)
}

#[tokio::test]
async fn the_health_check_passes_while_the_service_serves_and_fails_once_it_stopped() {
    let app = spawn_app().await;
    let address = app.address.to_string();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("a port");
    let metrics = taken.local_addr().expect("its address").to_string();
    // The health monitor registers the service at its first check, right after start-up.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    let (code, printed) = loop {
        let (code, printed) = health_check(&address, &metrics).await;
        if code == Some(0) || tokio::time::Instant::now() > deadline {
            break (code, printed);
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    assert_eq!(code, Some(0), "serving: {printed}");
    assert!(printed.contains("Serving"), "{printed}");

    app.stop().await.expect("a clean stop");
    let (code, printed) = health_check(&address, &metrics).await;
    assert_eq!(code, Some(1), "stopped: {printed}");
    assert!(printed.contains("connecting to"), "names what failed: {printed}");
}
