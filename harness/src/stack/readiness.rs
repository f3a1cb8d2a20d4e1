//! "Started" means "answers": each check is a real round trip, retried until a deadline.
//!
//! * PostgreSQL: a connection and `SELECT 1`.
//! * Redis: `PING`.
//! * Kafka: a metadata request that lists every expected broker, and each requested topic with its full
//!   partition count and a leader for every partition (a topic that exists without leaders still refuses
//!   produce requests). Then an idempotent write acknowledged, as the service's relay makes them: a
//!   broker answers metadata before it can hand out producer ids, and a producer that starts then logs
//!   "Coordinator load in progress" warnings until it can.

use std::future::Future;
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaErrorCode;
use sqlx::Connection;

use super::error::{Result, StackError};

pub const READY_TIMEOUT: Duration = Duration::from_secs(90);

/// Retries `attempt` every 100 ms until it succeeds or `timeout` passes; the error names the last failure.
pub async fn retry_until<F, Fut, T>(timeout: Duration, mut attempt: F) -> std::result::Result<T, String>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = std::result::Result<T, String>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        match attempt().await {
            Ok(value) => return Ok(value),
            Err(reason) if Instant::now() >= deadline => return Err(reason),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

pub async fn postgres_answers(url: &str) -> std::result::Result<(), String> {
    let mut connection = sqlx::PgConnection::connect(url)
        .await
        .map_err(|e| e.to_string())?;
    let one: i32 = sqlx::query_scalar("SELECT 1")
        .fetch_one(&mut connection)
        .await
        .map_err(|e| e.to_string())?;
    let _ = connection.close().await;
    if one == 1 {
        Ok(())
    } else {
        Err(format!("SELECT 1 returned {one}"))
    }
}

pub async fn redis_answers(url: &str) -> std::result::Result<(), String> {
    let client = redis::Client::open(url).map_err(|e| e.to_string())?;
    let mut connection = client
        .get_multiplexed_async_connection()
        .await
        .map_err(|e| e.to_string())?;
    let pong: String = redis::cmd("PING")
        .query_async(&mut connection)
        .await
        .map_err(|e| e.to_string())?;
    if pong == "PONG" {
        Ok(())
    } else {
        Err(format!("PING answered {pong:?}"))
    }
}

pub fn admin_client(brokers: &str) -> Result<AdminClient<DefaultClientContext>> {
    Ok(ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("log_level", "3")
        .create()?)
}

/// Creates `topic` with `partitions` (no error if it exists) and waits until every partition has a leader.
pub async fn ensure_topic(
    brokers: &str,
    expected_brokers: usize,
    topic: &str,
    partitions: i32,
) -> Result<()> {
    let admin = admin_client(brokers)?;
    let replication = expected_brokers.clamp(1, 3) as i32;
    let new_topic = NewTopic::new(topic, partitions, TopicReplication::Fixed(replication));
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let created = retry_until(READY_TIMEOUT, || async {
        let results = admin
            .create_topics([&new_topic], &options)
            .await
            .map_err(|e| e.to_string())?;
        match results.into_iter().next() {
            Some(Ok(_)) | Some(Err((_, RDKafkaErrorCode::TopicAlreadyExists))) | None => Ok(()),
            Some(Err((_, code))) => Err(format!("creating topic {topic}: {code}")),
        }
    })
    .await;
    created.map_err(|reason| StackError::Setup(format!("cannot create topic {topic}: {reason}")))?;
    kafka_metadata_ready(brokers, expected_brokers, &[(topic, partitions)])
        .await
        .map_err(|reason| StackError::Setup(format!("topic {topic} did not become ready: {reason}")))
}

/// The topic of the idempotent-write check (one partition).
const READY_TOPIC: &str = "stack.ready";

/// Whether an idempotent producer gets a producer id and its write acknowledged (one attempt).
pub async fn kafka_accepts_idempotent_writes(
    brokers: &str,
    expected_brokers: usize,
) -> std::result::Result<(), String> {
    let admin = admin_client(brokers).map_err(|e| e.to_string())?;
    let replication = expected_brokers.clamp(1, 3) as i32;
    let topic = NewTopic::new(READY_TOPIC, 1, TopicReplication::Fixed(replication));
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(5)));
    let created = admin
        .create_topics([&topic], &options)
        .await
        .map_err(|e| e.to_string())?;
    match created.into_iter().next() {
        Some(Ok(_)) | Some(Err((_, RDKafkaErrorCode::TopicAlreadyExists))) | None => {}
        Some(Err((_, code))) => return Err(format!("creating topic {READY_TOPIC}: {code}")),
    }
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true")
        .set("message.timeout.ms", "3000")
        // This check expects the warnings it waits out.
        .set("log_level", "3")
        .create()
        .map_err(|e| e.to_string())?;
    producer
        .send(
            FutureRecord::<(), [u8]>::to(READY_TOPIC).payload(&b"ready"[..]),
            Duration::from_secs(3),
        )
        .await
        .map(drop)
        .map_err(|(error, _)| format!("an idempotent write to {READY_TOPIC}: {error}"))
}

/// Waits until metadata shows `expected_brokers` brokers and every `(topic, partitions)` fully led.
pub async fn kafka_metadata_ready(
    brokers: &str,
    expected_brokers: usize,
    topics: &[(&str, i32)],
) -> std::result::Result<(), String> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("log_level", "3")
        .create()
        .map_err(|e| e.to_string())?;
    let consumer = std::sync::Arc::new(consumer);
    let topics: Vec<(String, i32)> = topics.iter().map(|(t, p)| (t.to_string(), *p)).collect();
    retry_until(READY_TIMEOUT, || {
        let consumer = consumer.clone();
        let topics = topics.clone();
        async move {
            tokio::task::spawn_blocking(move || {
                let metadata = consumer
                    .fetch_metadata(None, Duration::from_secs(2))
                    .map_err(|e| e.to_string())?;
                if metadata.brokers().len() < expected_brokers {
                    return Err(format!(
                        "{} of {expected_brokers} brokers registered",
                        metadata.brokers().len()
                    ));
                }
                for (topic, partitions) in &topics {
                    let Some(found) = metadata.topics().iter().find(|t| t.name() == topic) else {
                        return Err(format!("topic {topic} not in metadata"));
                    };
                    let led = found.partitions().iter().filter(|p| p.leader() >= 0).count();
                    if led < *partitions as usize {
                        return Err(format!(
                            "topic {topic}: {led} of {partitions} partitions have a leader"
                        ));
                    }
                }
                Ok(())
            })
            .await
            .map_err(|e| e.to_string())?
        }
    })
    .await
}

/// A fresh database on the server at `admin_url`; returns the URL that points at it.
pub async fn create_database(admin_url: &str, name: &str) -> Result<String> {
    if !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') || name.is_empty() {
        return Err(StackError::Setup(format!(
            "database name {name:?} must be [A-Za-z0-9_]+"
        )));
    }
    let mut connection = sqlx::PgConnection::connect(admin_url).await?;
    // The name was checked to be [A-Za-z0-9_]+ above, so it cannot break out of the quotes.
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
        .execute(&mut connection)
        .await?;
    let _ = connection.close().await;
    let base = admin_url.rsplit_once('/').map_or(admin_url, |(base, _)| base);
    Ok(format!("{base}/{name}"))
}
