//! `grpc.health.v1`: what the service can reach, checked every two seconds.
//!
//! Service names and what SERVING means:
//! * `orders.v1.OrderService`: PostgreSQL answers (reads and writes can be served; without Redis reads
//!   come from the database, without Kafka changes queue in the outbox).
//! * `postgres`, `redis`, `kafka`: that dependency answers.
//! * `""` (the whole server): all three answer.

use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use tokio_util::sync::CancellationToken;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::cache::OrderCache;
use crate::proto::orders::v1::order_service_server::SERVICE_NAME;
use crate::storage::{Storage, outbox};
use crate::telemetry::ErrorChain;
use crate::telemetry::metrics;

const CHECK_EVERY: Duration = Duration::from_secs(2);

pub struct HealthMonitor {
    pub reporter: HealthReporter,
    pub storage: Storage,
    pub cache: OrderCache,
    pub kafka_brokers: String,
}

impl HealthMonitor {
    pub async fn run(self, shutdown: CancellationToken) {
        let kafka: Option<std::sync::Arc<BaseConsumer>> = ClientConfig::new()
            .set("bootstrap.servers", &self.kafka_brokers)
            .set("log_level", "3")
            .create()
            .map(std::sync::Arc::new)
            .map_err(
                |error| tracing::warn!(error = %ErrorChain(&error), "health: cannot create a Kafka client"),
            )
            .ok();
        loop {
            let postgres = self.storage.ping().await.is_ok();
            let redis = self.cache.ping().await.is_ok();
            let kafka_up = match &kafka {
                Some(client) => {
                    let client = client.clone();
                    tokio::task::spawn_blocking(move || {
                        client.fetch_metadata(None, Duration::from_secs(1)).is_ok()
                    })
                    .await
                    .unwrap_or(false)
                }
                None => false,
            };
            if postgres && let Ok(backlog) = outbox::backlog(self.storage.pool()).await {
                metrics::outbox_backlog(backlog);
            }
            self.set(SERVICE_NAME, postgres).await;
            self.set("postgres", postgres).await;
            self.set("redis", redis).await;
            self.set("kafka", kafka_up).await;
            self.set("", postgres && redis && kafka_up).await;
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(CHECK_EVERY) => {}
            }
        }
        self.set("", false).await;
        self.set(SERVICE_NAME, false).await;
    }

    async fn set(&self, service: &str, up: bool) {
        let status = if up {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        self.reporter.set_service_status(service, status).await;
    }
}
