//! The end of a run: waiting until everything settled (quiescence), then reading the final state of
//! the database, the topic and the cache, each from the source itself.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use service::cache::Cached;
use service::domain::OrderId;
use service::proto::orders::v1 as pb;
use service::storage::{Storage, outbox};

use super::cluster::Cluster;
use super::runner::RunError;
use crate::inspect::CacheInspector;
use crate::topic;

const QUIESCENCE_TIMEOUT: Duration = Duration::from_secs(120);

/// What the world looks like once the run is over and everything settled.
#[derive(Debug, Clone)]
pub struct FinalState {
    /// Every order as PostgreSQL has it.
    pub orders: Vec<pb::Order>,
    /// Every committed version: `(order_id, version) -> status`.
    pub versions: HashMap<(i64, i64), String>,
    /// Every `(order_id, version)` found in the topic, with its partition.
    pub published: HashMap<(i64, i64), i32>,
    /// The cache's entry of every order (`None`: absent), decoded as the service decodes it.
    pub cache: HashMap<i64, Cached>,
    /// Whether the outbox drained and the group caught up before the deadline.
    pub quiescent: Result<(), String>,
    /// Partitions moved by rebalances, as the updaters counted them.
    pub rebalances: usize,
}

/// Waits until the outbox is empty and the updater group committed up to the end of every partition.
pub async fn quiesce(cluster: &Cluster) -> Result<(), String> {
    let pool = sqlx::PgPool::connect_lazy(&cluster.database_url).map_err(|e| e.to_string())?;
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &cluster.brokers)
        .set("group.id", &cluster.group)
        .set("log_level", "3")
        .create()
        .map_err(|e| e.to_string())?;
    let consumer = Arc::new(consumer);
    let deadline = Instant::now() + QUIESCENCE_TIMEOUT;
    let mut settled_once = false;
    loop {
        let backlog = outbox::backlog(&pool).await;
        let lag = group_lag(consumer.clone(), cluster.topic.clone()).await;
        let state = format!("outbox {backlog:?}, group lag {lag:?}");
        if matches!(backlog, Ok(0)) && matches!(lag, Ok(0)) {
            // Once more after an auto-commit interval, so that nothing was in flight.
            if settled_once {
                return Ok(());
            }
            settled_once = true;
        } else {
            settled_once = false;
        }
        if Instant::now() > deadline {
            return Err(format!("not quiescent after {QUIESCENCE_TIMEOUT:?}: {state}"));
        }
        tokio::time::sleep(Duration::from_millis(1200)).await;
    }
}

/// Messages of `topic` not yet committed by the group.
async fn group_lag(consumer: Arc<BaseConsumer>, topic: String) -> Result<i64, String> {
    tokio::task::spawn_blocking(move || {
        let metadata = consumer
            .fetch_metadata(Some(&topic), Duration::from_secs(5))
            .map_err(|e| e.to_string())?;
        let partitions: Vec<i32> = metadata
            .topics()
            .iter()
            .flat_map(|t| t.partitions().iter().map(|p| p.id()))
            .collect();
        let mut list = TopicPartitionList::new();
        for partition in &partitions {
            list.add_partition(&topic, *partition);
        }
        let committed = consumer
            .committed_offsets(list, Duration::from_secs(5))
            .map_err(|e| e.to_string())?;
        let mut lag = 0;
        for partition in partitions {
            let (_, high) = consumer
                .fetch_watermarks(&topic, partition, Duration::from_secs(5))
                .map_err(|e| e.to_string())?;
            let done = match committed.find_partition(&topic, partition).map(|p| p.offset()) {
                Some(Offset::Offset(offset)) => offset,
                _ => 0,
            };
            lag += (high - done).max(0);
        }
        Ok(lag)
    })
    .await
    .map_err(|e| e.to_string())?
}

pub async fn final_state(cluster: &Cluster, quiescent: Result<(), String>) -> Result<FinalState, RunError> {
    let storage = Storage::connect_lazy(&cluster.database_url, 2)?;
    let ids: Vec<i64> = sqlx::query_scalar("SELECT id FROM orders ORDER BY id")
        .fetch_all(storage.pool())
        .await?;
    let order_ids: Vec<OrderId> = ids.iter().filter_map(|id| OrderId::parse(*id).ok()).collect();
    let mut orders: Vec<pb::Order> = storage
        .get_orders(&order_ids)
        .await?
        .iter()
        .map(pb::Order::from)
        .collect();
    orders.sort_by_key(|order| order.order_id);

    let rows: Vec<(i64, i64, String)> =
        sqlx::query_as("SELECT order_id, version, status FROM order_versions")
            .fetch_all(storage.pool())
            .await?;
    let versions = rows
        .into_iter()
        .map(|(order, version, status)| ((order, version), status))
        .collect();

    let published = read_topic(&cluster.brokers, &cluster.topic).await?;

    let inspector = CacheInspector::connect(&cluster.redis_url).await?;
    let mut cache = HashMap::new();
    for chunk in ids.chunks(1000) {
        cache.extend(chunk.iter().copied().zip(inspector.entries(chunk).await?));
    }
    Ok(FinalState {
        orders,
        versions,
        published,
        cache,
        quiescent,
        rebalances: cluster.rebalances().await,
    })
}

/// Every `(order_id, version)` in the topic with its partition, read from the beginning to the current
/// end.
async fn read_topic(brokers: &str, topic: &str) -> Result<HashMap<(i64, i64), i32>, RunError> {
    let events = topic::read_events(brokers, topic, Duration::from_secs(120)).await?;
    Ok(events
        .into_iter()
        .filter_map(|published| {
            let order = published.event.order?;
            Some(((order.order_id, order.version), published.partition))
        })
        .collect())
}
