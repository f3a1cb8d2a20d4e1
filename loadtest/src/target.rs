//! What the load goes to: a service that is already running (`--host`), or one this process starts on
//! the local stack (PostgreSQL, Redis and Kafka as child processes, the service in-process).
//!
//! Starting it in-process keeps a run to one command and lets the run sample the service's memory
//! from `/proc/self` (see [`crate::memory`]); the price is that the load generator and the service
//! share the machine's cores, which the reports say.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use harness::{Backend, Stack, StackOptions};
use service::config::{Component, Settings};
use service::proto::orders::v1::order_service_client::OrderServiceClient;
use service::startup::{Application, StartupError};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, Endpoint};

/// Where `--host` points when it is not given: the address `ci/run.sh` serves on.
pub const DEFAULT_ENDPOINT: &str = "http://127.0.0.1:50051";

/// How long a graceful stop of the in-process service may take (its consumer commits and leaves the
/// group, the relay flushes its producer).
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a first connection to the target may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    #[error("the local stack did not start: {0}")]
    Stack(#[from] harness::StackError),
    #[error("the service did not start: {0}")]
    Startup(#[from] StartupError),
    #[error("the service was built without its gRPC API")]
    NoApi,
    #[error("{endpoint:?} is not a gRPC endpoint: {reason}")]
    Endpoint { endpoint: String, reason: String },
    #[error("cannot connect to {endpoint}: {source}")]
    Connect {
        endpoint: String,
        source: tonic::transport::Error,
    },
    #[error("the service stopped with an error: {0}")]
    Stopped(StartupError),
    #[error("the service did not stop within {0:?}")]
    StopTimeout(Duration),
    #[error("the service task panicked")]
    Panicked,
}

/// The local stack with a database and topics for one run or one benchmark.
pub struct LocalStack {
    stack: Stack,
    settings: Settings,
}

impl LocalStack {
    /// Starts PostgreSQL, Redis and one Kafka node, and prepares database `name`, topic
    /// `<name>-order-events` (3 partitions, as the service creates it) and its dead-letter topic.
    pub async fn start(name: &str) -> Result<Self, TargetError> {
        let options = StackOptions {
            backend: Some(Backend::Local),
            kafka_nodes: 1,
            topics: vec![],
        };
        let stack = Stack::start(options).await?;
        let database_url = stack.create_database(name).await?;
        let mut settings = Settings::for_endpoints(&database_url, stack.redis_url(), stack.kafka_brokers());
        settings.grpc_addr = SocketAddr::from(([127, 0, 0, 1], 0));
        settings.orders_topic = format!("{name}-order-events");
        settings.updater_group = format!("{name}-cache-updater");
        stack
            .create_topic(
                &settings.orders_topic,
                service::events::topics::DEFAULT_PARTITIONS,
            )
            .await?;
        stack.create_topic(&settings.dead_letter_topic(), 1).await?;
        Ok(Self { stack, settings })
    }

    /// The service's settings for this stack: gRPC on a free loopback port, no metrics endpoint.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    pub fn stack(&self) -> &Stack {
        &self.stack
    }
}

/// The service running as tasks of this process.
pub struct RunningService {
    address: SocketAddr,
    shutdown: CancellationToken,
    task: JoinHandle<Result<(), StartupError>>,
}

impl RunningService {
    /// Builds the service (migrations, the bound gRPC port) and runs `components` until [`stop`].
    ///
    /// [`stop`]: Self::stop
    pub async fn start(settings: Settings, components: &[Component]) -> Result<Self, TargetError> {
        let application = Application::build(settings, components.to_vec()).await?;
        let address = application.grpc_addr().ok_or(TargetError::NoApi)?;
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(application.run(shutdown.clone()));
        Ok(Self {
            address,
            shutdown,
            task,
        })
    }

    /// `http://127.0.0.1:<port>`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.address)
    }

    /// Graceful stop, as on SIGTERM, and the service's own verdict on how it went.
    pub async fn stop(self) -> Result<(), TargetError> {
        self.shutdown.cancel();
        match tokio::time::timeout(STOP_TIMEOUT, self.task).await {
            Ok(Ok(Ok(()))) => Ok(()),
            Ok(Ok(Err(error))) => Err(TargetError::Stopped(error)),
            Ok(Err(_)) => Err(TargetError::Panicked),
            Err(_) => Err(TargetError::StopTimeout(STOP_TIMEOUT)),
        }
    }
}

/// A client of `endpoint` on a connection of its own (each goose user has one, as real clients do).
pub async fn connect(endpoint: &str) -> Result<OrderServiceClient<Channel>, TargetError> {
    let channel = parse_endpoint(endpoint)?
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        .connect()
        .await
        .map_err(|source| TargetError::Connect {
            endpoint: endpoint.to_owned(),
            source,
        })?;
    Ok(OrderServiceClient::new(channel))
}

fn parse_endpoint(endpoint: &str) -> Result<Endpoint, TargetError> {
    Endpoint::from_shared(endpoint.trim_end_matches('/').to_owned()).map_err(|error| TargetError::Endpoint {
        endpoint: endpoint.to_owned(),
        reason: error.to_string(),
    })
}

/// Whether `endpoint` (`http://host:port`) names this machine: `localhost`, 127.0.0.0/8 or `::1`.
pub fn is_loopback(endpoint: &str) -> Result<bool, TargetError> {
    let uri: tonic::codegen::http::Uri = endpoint.parse().map_err(
        |error: tonic::codegen::http::uri::InvalidUri| TargetError::Endpoint {
            endpoint: endpoint.to_owned(),
            reason: error.to_string(),
        },
    )?;
    let host = uri.host().ok_or_else(|| TargetError::Endpoint {
        endpoint: endpoint.to_owned(),
        reason: "no host".into(),
    })?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    Ok(host.eq_ignore_ascii_case("localhost") || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_this_machine_counts_as_loopback() {
        for local in [
            "http://127.0.0.1:50051",
            "http://127.1.2.3:1",
            "http://localhost:50051/",
            "http://LOCALHOST",
            "http://[::1]:50051",
        ] {
            assert!(matches!(is_loopback(local), Ok(true)), "{local}");
        }
        for remote in [
            "http://10.0.0.1:50051",
            "http://192.168.1.2",
            "http://example.com:50051",
            "http://[2001:db8::1]:1",
        ] {
            assert!(matches!(is_loopback(remote), Ok(false)), "{remote}");
        }
        assert!(is_loopback("not a url at all").is_err());
    }
}
