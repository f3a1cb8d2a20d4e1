//! `grpc.health.v1`: what the service can reach, checked every two seconds.
//!
//! Service names and what SERVING means:
//! * `orders.v1.OrderService`: PostgreSQL answers (reads and writes can be served; without Redis reads
//!   come from the database, without Kafka changes queue in the outbox).
//! * `postgres`, `redis`, `kafka`: that dependency answers.
//! * `""` (the whole server): all three answer.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use anyhow::Context;

use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use tokio_util::sync::CancellationToken;
use tonic_health::ServingStatus;
use tonic_health::pb::HealthCheckRequest;
pub use tonic_health::pb::health_check_response::ServingStatus as WireStatus;
use tonic_health::pb::health_client::HealthClient;
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
            if postgres && let Ok(backlog) = outbox::estimated_backlog(self.storage.pool()).await {
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

/// How long [`probe`] waits for the answer.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// Asks the server at `address` for the status of `service` (`grpc.health.v1.Health/Check`), as a
/// container health check does. An unspecified address (`0.0.0.0`, `::`) is asked on loopback. A name
/// not registered (yet: the monitor registers each at its first check) is `ServiceUnknown`.
pub async fn probe(address: SocketAddr, service: &str) -> anyhow::Result<WireStatus> {
    let mut address = address;
    if address.ip().is_unspecified() {
        address.set_ip(if address.is_ipv4() {
            Ipv4Addr::LOCALHOST.into()
        } else {
            Ipv6Addr::LOCALHOST.into()
        });
    }
    let ask = async {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{address}"))?
            .connect()
            .await
            .with_context(|| format!("connecting to {address}"))?;
        let request = HealthCheckRequest {
            service: service.to_string(),
        };
        match HealthClient::new(channel).check(request).await {
            Ok(answer) => anyhow::Ok(answer.into_inner().status()),
            Err(status) if status.code() == tonic::Code::NotFound => Ok(WireStatus::ServiceUnknown),
            Err(status) => Err(status).context("grpc.health.v1.Health/Check"),
        }
    };
    tokio::time::timeout(PROBE_TIMEOUT, ask)
        .await
        .with_context(|| format!("no answer from {address} within {PROBE_TIMEOUT:?}"))?
}
