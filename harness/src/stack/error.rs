//! What can go wrong while bringing the stack up or driving it, each with enough context to act on.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum StackError {
    #[error("{what} is not installed: {hint}")]
    Missing { what: String, hint: String },

    #[error(
        "{service} did not become ready within {seconds} s: {reason}\n--- last lines of {log} ---\n{log_tail}"
    )]
    NotReady {
        service: String,
        seconds: u64,
        reason: String,
        log: PathBuf,
        log_tail: String,
    },

    #[error("STACK={0:?} is not one of local, docker, external")]
    UnknownBackend(String),

    #[error("the external backend needs {0} in the environment")]
    MissingEndpoint(&'static str),

    #[error("{operation} is not supported by the {backend} backend")]
    Unsupported {
        operation: String,
        backend: &'static str,
    },

    #[error("{0}")]
    Setup(String),

    #[error(transparent)]
    Io(#[from] std::io::Error),

    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),

    #[error("postgres: {0}")]
    Postgres(#[from] sqlx::Error),

    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),

    #[error("docker: {0}")]
    Docker(String),
}

pub type Result<T, E = StackError> = std::result::Result<T, E>;
