//! The `docker` backend: the same three services as containers, through testcontainers-modules.
//!
//! Used where a Docker engine answers (a developer's laptop). Containers are removed when the
//! `DockerStack` drops (testcontainers' own `Drop`). Only one Kafka node is offered here; the failover
//! tests that want three nodes run on the local backend.

use std::time::Duration;

use testcontainers_modules::kafka::apache::{KAFKA_PORT, Kafka};
use testcontainers_modules::postgres::Postgres;
use testcontainers_modules::redis::{REDIS_PORT, Redis};
use testcontainers_modules::testcontainers::runners::AsyncRunner;
use testcontainers_modules::testcontainers::{ContainerAsync, TestcontainersError};

use super::error::{Result, StackError};
use super::readiness::{self, READY_TIMEOUT};
use super::{Endpoints, Service};

pub struct DockerStack {
    postgres: ContainerAsync<Postgres>,
    redis: ContainerAsync<Redis>,
    kafka: ContainerAsync<Kafka>,
}

/// True when a Docker engine accepts connections on `DOCKER_HOST` or the default socket.
pub fn engine_answers() -> bool {
    let socket = std::env::var("DOCKER_HOST")
        .ok()
        .and_then(|host| host.strip_prefix("unix://").map(str::to_string))
        .unwrap_or_else(|| "/var/run/docker.sock".to_string());
    std::os::unix::net::UnixStream::connect(socket).is_ok()
}

fn docker_error(e: TestcontainersError) -> StackError {
    StackError::Docker(e.to_string())
}

impl DockerStack {
    pub async fn start(kafka_nodes: usize) -> Result<(Self, Endpoints)> {
        if kafka_nodes > 1 {
            return Err(StackError::Unsupported {
                operation: format!("a {kafka_nodes}-node Kafka cluster"),
                backend: "docker",
            });
        }
        let (postgres, redis, kafka) = tokio::join!(
            Postgres::default().start(),
            Redis::default().start(),
            Kafka::default().start()
        );
        let (postgres, redis, kafka) = (
            postgres.map_err(docker_error)?,
            redis.map_err(docker_error)?,
            kafka.map_err(docker_error)?,
        );
        let host = postgres.get_host().await.map_err(docker_error)?;
        let endpoints = Endpoints {
            database_url: format!(
                "postgres://postgres:postgres@{host}:{}/postgres",
                postgres.get_host_port_ipv4(5432).await.map_err(docker_error)?
            ),
            redis_url: format!(
                "redis://{host}:{}/",
                redis.get_host_port_ipv4(REDIS_PORT).await.map_err(docker_error)?
            ),
            kafka_brokers: format!(
                "{host}:{}",
                kafka.get_host_port_ipv4(KAFKA_PORT).await.map_err(docker_error)?
            ),
        };
        let ready = |service: &str, result: std::result::Result<(), String>| {
            result.map_err(|reason| StackError::NotReady {
                service: service.to_string(),
                seconds: READY_TIMEOUT.as_secs(),
                reason,
                log: "docker logs".into(),
                log_tail: String::new(),
            })
        };
        ready(
            "postgres",
            readiness::retry_until(READY_TIMEOUT, || {
                readiness::postgres_answers(&endpoints.database_url)
            })
            .await,
        )?;
        ready(
            "redis",
            readiness::retry_until(Duration::from_secs(30), || {
                readiness::redis_answers(&endpoints.redis_url)
            })
            .await,
        )?;
        ready(
            "kafka",
            readiness::kafka_metadata_ready(&endpoints.kafka_brokers, 1, &[]).await,
        )?;
        Ok((
            Self {
                postgres,
                redis,
                kafka,
            },
            endpoints,
        ))
    }

    pub async fn pause(&self, service: Service) -> Result<()> {
        match service {
            Service::Postgres => self.postgres.pause().await,
            Service::Redis => self.redis.pause().await,
            Service::RedisNode(_) => return Err(cluster_unsupported()),
            Service::Kafka(_) => self.kafka.pause().await,
        }
        .map_err(docker_error)
    }

    pub async fn resume(&self, service: Service) -> Result<()> {
        match service {
            Service::Postgres => self.postgres.unpause().await,
            Service::Redis => self.redis.unpause().await,
            Service::RedisNode(_) => return Err(cluster_unsupported()),
            Service::Kafka(_) => self.kafka.unpause().await,
        }
        .map_err(docker_error)
    }
}

fn cluster_unsupported() -> StackError {
    StackError::Unsupported {
        operation: "a Redis Cluster".into(),
        backend: "docker",
    }
}
