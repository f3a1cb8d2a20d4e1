//! What the load goes to: a service that is already running (`--host`), or one this process starts on
//! the local stack (PostgreSQL, Redis and Kafka as child processes, the service in-process).
//!
//! Starting it in-process keeps a run to one command and lets the run sample the service's memory
//! from `/proc/self` (see [`crate::memory`]); the price is that the load generator and the service
//! share the machine's cores, which the reports say.

use std::net::IpAddr;
use std::time::Duration;

use harness::app::{App, AppError, Environment};
use harness::{Backend, RedisMode, Stack, StackOptions};
use service::config::{Component, Settings};
use service::proto::orders::v1::order_service_client::OrderServiceClient;
use tonic::transport::{Channel, Endpoint};

/// Where `--host` points when it is not given: the address `ci/run.sh` serves on.
pub const DEFAULT_ENDPOINT: &str = "http://127.0.0.1:50051";

/// How long a first connection to the target may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    #[error("the local stack did not start")]
    Stack(#[from] harness::StackError),
    #[error(transparent)]
    App(#[from] AppError),
    #[error("{endpoint:?} is not a gRPC endpoint: {reason}")]
    Endpoint { endpoint: String, reason: String },
    #[error("cannot connect to {endpoint}")]
    Connect {
        endpoint: String,
        source: tonic::transport::Error,
    },
}

/// The local stack with a database and topics for one run or one benchmark (the workspace's test
/// support: [`harness::app`]).
pub struct LocalStack {
    stack: Stack,
    env: Environment,
}

impl LocalStack {
    /// Starts PostgreSQL, Redis (one, or a cluster) and one Kafka node, and prepares database `name`,
    /// topic `<name>-order-events` (3 partitions, as the service creates it) and its dead-letter topic.
    pub async fn start(name: &str, redis: RedisMode) -> Result<Self, TargetError> {
        let options = StackOptions {
            backend: Some(Backend::Local),
            kafka_nodes: 1,
            topics: vec![],
            redis,
        };
        let stack = Stack::start(options).await?;
        let env = Environment::new(&stack, name).await?;
        Ok(Self { stack, env })
    }

    /// The service's settings for this stack: gRPC on a free loopback port, no metrics endpoint.
    pub fn settings(&self) -> &Settings {
        &self.env.settings
    }

    pub fn stack(&self) -> &Stack {
        &self.stack
    }

    /// Runs `components` of the service in this process, with `settings` (from [`settings`], changed).
    ///
    /// [`settings`]: Self::settings
    pub async fn spawn(&self, settings: Settings, components: &[Component]) -> Result<App, TargetError> {
        let env = Environment {
            settings,
            ..self.env.clone()
        };
        Ok(env.spawn(components).await?)
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
