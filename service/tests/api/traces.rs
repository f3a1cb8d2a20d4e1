//! One write followed by its trace id: from the RPC, through the outbox and the Kafka message's headers,
//! to the cache updater's Redis write.

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use harness::app::spawn_app;
use harness::topic;
use service::proto::orders::v1 as pb;
use service::telemetry::trace_context::{TRACEPARENT, TraceParent};

const DEADLINE: Duration = Duration::from_secs(20);

/// The client's trace (the W3C specification's example).
const CLIENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

#[tokio::test]
async fn a_writes_trace_id_follows_it_from_the_rpc_to_the_updaters_redis_write() {
    let logs = captured_logs();
    let app = spawn_app().await;
    let order = app.create_order().await;
    app.cache_order(order.order_id).await;
    let trace_id = TraceParent::parse(CLIENT).expect("valid").trace_id().to_string();

    let mut request = tonic::Request::new(pb::UpdateOrderStatusRequest {
        order_id: order.order_id,
        status: pb::OrderStatus::Paid as i32,
        expected_version: None,
    });
    request
        .metadata_mut()
        .insert(TRACEPARENT, CLIENT.parse().expect("ascii"));
    let response = app.grpc().update_order_status(request).await.expect("updated");
    let answered = response
        .metadata()
        .get(TRACEPARENT)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| TraceParent::parse(value).ok())
        .expect("the answer's traceparent");
    assert_eq!(answered.trace_id().to_string(), trace_id, "the client's trace");
    assert_ne!(
        answered.to_string(),
        CLIENT,
        "continued in a span of the service's own"
    );

    app.wait_until_cached(order.order_id, 2, DEADLINE)
        .await
        .expect("the updater applied the change");
    let header = event_traceparent(&app.env.settings, order.order_id, 2).await;
    assert_eq!(
        header,
        answered.to_string(),
        "the Kafka message carries the RPC's traceparent"
    );

    for (part, message) in [
        ("API", "status updated"),
        ("relay", "published"),
        ("updater", "applied"),
    ] {
        let line = wait_for_line(&logs, &trace_id, message).await;
        assert!(
            line.is_some(),
            "the {part}'s {message:?} line with trace id {trace_id} in:\n{}",
            String::from_utf8_lossy(&logs.lock().unwrap())
        );
    }
    app.stop().await.expect("a clean stop");
}

/// Every log line of this test binary at `service=debug`, from the first call on.
fn captured_logs() -> Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let logs = Arc::new(Mutex::new(Vec::new()));
        let sink = logs.clone();
        tracing_subscriber::fmt()
            .with_env_filter("service=debug")
            .with_ansi(false)
            .with_writer(move || Capture(sink.clone()))
            .try_init()
            .expect("the only subscriber of this test binary");
        logs
    })
    .clone()
}

struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The first captured line with both `trace_id` and `message`, waiting a little for it (the updater
/// logs right after its write, a moment after Redis has it).
async fn wait_for_line(logs: &Mutex<Vec<u8>>, trace_id: &str, message: &str) -> Option<String> {
    for _ in 0..50 {
        let text = String::from_utf8_lossy(&logs.lock().unwrap()).into_owned();
        if let Some(line) = text
            .lines()
            .find(|line| line.contains(trace_id) && line.contains(message))
        {
            return Some(line.to_string());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None
}

/// The `traceparent` header of the event announcing `version` of the order (in the topic already: the
/// updater applied it).
async fn event_traceparent(settings: &service::config::Settings, order_id: i64, version: i64) -> String {
    let events = topic::read_events(&settings.kafka_brokers, &settings.orders_topic, DEADLINE)
        .await
        .expect("the topic read to its end");
    let announcing = events
        .iter()
        .find(|published| {
            published
                .event
                .order
                .as_ref()
                .is_some_and(|order| order.order_id == order_id && order.version == version)
        })
        .expect("the event in the topic");
    announcing.header(TRACEPARENT).expect("a traceparent header")
}
