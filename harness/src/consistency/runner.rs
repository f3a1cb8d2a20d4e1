//! Runs a scenario: starts the instances, drives the steps and faults, samples the cache, waits for
//! quiescence and collects the final state of the database, the topic and the cache.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use redis::aio::ConnectionManager;
use service::domain::OrderId;
use service::proto::orders::v1 as pb;
use service::storage::Storage;
use tokio_util::sync::CancellationToken;

use super::cluster::{Cluster, ClusterConfig};
use super::history::{FaultWindow, History, Recorded};
use super::scenario::{Fault, Step};
use super::workload::Workload;
use crate::stack::{Service, Stack, StackError};

/// How often the sampler reads every known order from the cache.
pub const SAMPLE_EVERY: Duration = Duration::from_millis(10);
const QUIESCENCE_TIMEOUT: Duration = Duration::from_secs(120);
/// The longest a fault's own traffic runs (so the longest a fault lasts, healing aside).
const FAULT_TRAFFIC_LIMIT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Stack(#[from] StackError),
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("storage: {0}")]
    Storage(#[from] service::storage::StorageError),
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
}

/// What the world looks like once the run is over and everything settled.
#[derive(Debug, Clone)]
pub struct FinalState {
    /// Every order as PostgreSQL has it.
    pub orders: Vec<pb::Order>,
    /// Every committed version: `(order_id, version) -> status`.
    pub versions: HashMap<(i64, i64), String>,
    /// Every `(order_id, version)` found in the topic.
    pub published: HashSet<(i64, i64)>,
    /// The cache's entry of every order (`None`: absent), raw-decoded.
    pub cache: HashMap<i64, service::cache::Cached>,
    /// Whether the outbox drained and the group caught up before the deadline.
    pub quiescent: Result<(), String>,
}

/// Everything a check needs.
#[derive(Debug, Clone)]
pub struct RunOutcome {
    pub recorded: Recorded,
    pub state: FinalState,
}

/// Runs `steps` on `stack` and collects the outcome. `on_step` is told when each step begins. The steps
/// may be generated as they are taken (the soak command stops generating at its deadline).
pub async fn run(
    stack: &Stack,
    config: ClusterConfig,
    steps: impl IntoIterator<Item = Step>,
    run_name: &str,
    mut on_step: impl FnMut(usize, &Step),
) -> Result<RunOutcome, RunError> {
    let pace = config.pace;
    let mut cluster = Cluster::start(stack, config, run_name).await?;
    let history = Arc::new(History::new());
    let workload = Workload::new(cluster.client(), history.clone(), pace);
    // Measure from a working system: the API answers and the updater group has its partitions.
    probe(&cluster).await;

    let sampling = CancellationToken::new();
    let sampler = tokio::spawn(sample_cache(
        cluster.redis_url.clone(),
        workload.clone(),
        history.clone(),
        sampling.clone(),
    ));

    for (index, step) in steps.into_iter().enumerate() {
        on_step(index, &step);
        match &step {
            Step::Create { count } => workload.create(*count).await,
            Step::Traffic { count, clients, seed } => workload.traffic(*count, *clients, *seed).await,
            Step::Race { clients, seed } => workload.race(*clients, *seed).await,
            Step::Fault { fault, traffic, seed } => {
                let start = history.now();
                inject(stack, &mut cluster, &workload, *fault, *traffic, *seed).await?;
                // The fault lasts until the system works again: a fresh write reaches the cache.
                probe(&cluster).await;
                history.record_fault(FaultWindow {
                    kind: fault.kind(),
                    start,
                    end: history.now(),
                });
            }
        }
    }

    let quiescent = quiesce(&cluster).await;
    // A last look at the cache after everything settled, then stop sampling.
    tokio::time::sleep(SAMPLE_EVERY * 5).await;
    sampling.cancel();
    let _ = sampler.await;
    let state = final_state(&cluster, quiescent).await?;
    let mut recorded = history.snapshot();
    recorded.rebalances = count_rebalances(cluster.log_dir());
    cluster.stop().await;
    Ok(RunOutcome { recorded, state })
}

/// Waits (up to 60 s) until a fresh write goes all the way to the cache. The probe order is not part
/// of the history (so not part of the staleness figures); the final checks cover it like any other.
async fn probe(cluster: &Cluster) {
    let mut client = cluster.client();
    let deadline = Instant::now() + Duration::from_secs(60);
    let request = pb::CreateOrderRequest {
        client_id: 1,
        items: vec![pb::OrderItem {
            sku_id: 1,
            quantity: 1,
            price: Some(service::proto::google::r#type::Money {
                currency_code: "EUR".into(),
                units: 1,
                nanos: 0,
            }),
        }],
        idempotency_key: String::new(),
    };
    let order_id = loop {
        if let Ok(response) = client.create_order(request.clone()).await
            && let Some(order) = response.into_inner().order
        {
            break order.order_id;
        }
        if Instant::now() > deadline {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let Ok(redis) = redis::Client::open(cluster.redis_url.as_str()) else {
        return;
    };
    while Instant::now() < deadline {
        if let Ok(mut connection) = redis.get_multiplexed_async_connection().await
            && let Ok(Some(_)) = redis::cmd("GET")
                .arg(format!("order:{order_id}"))
                .query_async::<Option<Vec<u8>>>(&mut connection)
                .await
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Injects one fault with `traffic` operations while it lasts, and heals it.
async fn inject(
    stack: &Stack,
    cluster: &mut Cluster,
    workload: &Workload,
    fault: Fault,
    traffic: u16,
    seed: u64,
) -> Result<(), RunError> {
    match fault {
        Fault::AddUpdater => {
            if cluster.updaters() < 3 {
                cluster.add_updater()?;
            }
            workload
                .traffic_within(traffic, 2, seed, FAULT_TRAFFIC_LIMIT)
                .await;
        }
        Fault::RemoveUpdater => {
            if cluster.updaters() > 1 {
                cluster.remove_updater().await;
            }
            workload
                .traffic_within(traffic, 2, seed, FAULT_TRAFFIC_LIMIT)
                .await;
        }
        Fault::KillUpdater => {
            cluster.kill_updater();
            cluster.add_updater()?;
            workload
                .traffic_within(traffic, 2, seed, FAULT_TRAFFIC_LIMIT)
                .await;
        }
        Fault::KillApi => {
            let load = workload.traffic_within(traffic, 2, seed, FAULT_TRAFFIC_LIMIT);
            let kill = async {
                tokio::time::sleep(Duration::from_millis(50 + seed % 150)).await;
                cluster.restart_api()
            };
            let (_, restarted) = tokio::join!(load, kill);
            restarted?;
        }
        Fault::KafkaDown { kill_api } => {
            stack.stop(Service::Kafka(0)).await?;
            workload
                .traffic_within(traffic, 2, seed, FAULT_TRAFFIC_LIMIT)
                .await;
            if kill_api {
                // Committed, not yet published: the outbox holds the events (or, in the broken
                // variant, librdkafka's queue in the process that dies).
                cluster.kill_api();
                cluster.restart_api()?;
            }
            stack.start_service(Service::Kafka(0)).await?;
        }
        Fault::KafkaKill => {
            // One node of the cluster: an outage with one node, the loss of a broker with three.
            let node = Service::Kafka(seed as usize % stack.kafka_nodes());
            stack.kill(node).await?;
            workload
                .traffic_within(traffic, 2, seed, FAULT_TRAFFIC_LIMIT)
                .await;
            stack.start_service(node).await?;
        }
        Fault::RedisRestart => {
            stack.restart(Service::Redis).await?;
            workload
                .traffic_within(traffic, 2, seed, FAULT_TRAFFIC_LIMIT)
                .await;
        }
        Fault::RedisPause { restart_updater } => {
            stack.pause(Service::Redis).await?;
            workload
                .traffic_within(traffic, 2, seed, FAULT_TRAFFIC_LIMIT)
                .await;
            // Let the updaters receive the events and start retrying them against the frozen Redis.
            tokio::time::sleep(Duration::from_millis(1500)).await;
            if restart_updater {
                cluster.remove_updater().await;
                cluster.add_updater()?;
            }
            stack.resume(Service::Redis).await?;
        }
        Fault::PostgresRestart => {
            let load = workload.traffic_within(traffic, 2, seed, FAULT_TRAFFIC_LIMIT);
            let restart = async {
                tokio::time::sleep(Duration::from_millis(100)).await;
                stack.restart(Service::Postgres).await
            };
            let (_, restarted) = tokio::join!(load, restart);
            restarted?;
        }
    }
    Ok(())
}

/// Reads every known order's cache entry every [`SAMPLE_EVERY`], like a client would (Meta's Polaris
/// does the same against TAO), recording each change.
async fn sample_cache(redis_url: String, workload: Workload, history: Arc<History>, stop: CancellationToken) {
    let Ok(client) = redis::Client::open(redis_url) else {
        return;
    };
    let config = redis::aio::ConnectionManagerConfig::new()
        .set_response_timeout(Some(Duration::from_millis(200)))
        .set_connection_timeout(Some(Duration::from_millis(200)))
        .set_number_of_retries(0);
    let Ok(mut redis) = ConnectionManager::new_lazy_with_config(client, config) else {
        return;
    };
    while !stop.is_cancelled() {
        let ids = workload.known_ids();
        if !ids.is_empty() {
            let keys: Vec<String> = ids.iter().map(|id| format!("order:{id}")).collect();
            let at = history.now();
            // A frozen or restarting Redis gives no sample: the series keeps its last value.
            if let Ok(values) = redis::cmd("MGET")
                .arg(&keys)
                .query_async::<Vec<Option<Vec<u8>>>>(&mut redis)
                .await
            {
                for (id, value) in ids.iter().zip(values) {
                    history.record_cache(*id, value.as_deref().and_then(cached_version), at);
                }
            }
        }
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(SAMPLE_EVERY) => {}
        }
    }
}

/// The version prefix of a cache entry (`{version}:{protobuf}`).
fn cached_version(value: &[u8]) -> Option<i64> {
    let colon = value.iter().position(|&b| b == b':')?;
    std::str::from_utf8(&value[..colon]).ok()?.parse().ok()
}

/// Waits until the outbox is empty and the updater group committed up to the end of every partition.
async fn quiesce(cluster: &Cluster) -> Result<(), String> {
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
        let backlog: Result<i64, _> = sqlx::query_scalar("SELECT count(*) FROM outbox")
            .fetch_one(&pool)
            .await;
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

async fn final_state(cluster: &Cluster, quiescent: Result<(), String>) -> Result<FinalState, RunError> {
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

    let client = redis::Client::open(cluster.redis_url.as_str())?;
    let mut redis = client.get_multiplexed_async_connection().await?;
    let mut cache = HashMap::new();
    for chunk in ids.chunks(500) {
        let keys: Vec<String> = chunk.iter().map(|id| format!("order:{id}")).collect();
        let values: Vec<Option<Vec<u8>>> = redis::cmd("MGET").arg(&keys).query_async(&mut redis).await?;
        for (id, value) in chunk.iter().zip(values) {
            cache.insert(*id, service::cache::decode(value));
        }
    }
    Ok(FinalState {
        orders,
        versions,
        published,
        cache,
        quiescent,
    })
}

/// Every `(order_id, version)` in the topic, read from the beginning to the current end.
async fn read_topic(brokers: &str, topic: &str) -> Result<HashSet<(i64, i64)>, RunError> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("{topic}-audit"))
        .set("enable.auto.commit", "false")
        .set("log_level", "3")
        .create()?;
    let topic = topic.to_string();
    let published = tokio::task::spawn_blocking(move || -> Result<HashSet<(i64, i64)>, RunError> {
        let metadata = consumer.fetch_metadata(Some(&topic), Duration::from_secs(10))?;
        let mut ends = HashMap::new();
        let mut list = TopicPartitionList::new();
        for partition in metadata.topics().iter().flat_map(|t| t.partitions()) {
            let (_, high) = consumer.fetch_watermarks(&topic, partition.id(), Duration::from_secs(10))?;
            if high > 0 {
                ends.insert(partition.id(), high);
                list.add_partition_offset(&topic, partition.id(), Offset::Beginning)?;
            }
        }
        consumer.assign(&list)?;
        let mut published = HashSet::new();
        let mut positions: HashMap<i32, i64> = HashMap::new();
        let deadline = Instant::now() + Duration::from_secs(120);
        while ends
            .iter()
            .any(|(p, end)| positions.get(p).copied().unwrap_or(0) < *end)
            && Instant::now() < deadline
        {
            let Some(message) = consumer.poll(Duration::from_millis(500)) else {
                continue;
            };
            let Ok(message) = message else { continue };
            positions.insert(message.partition(), message.offset() + 1);
            if let Some(event) = message
                .payload()
                .and_then(|payload| <pb::OrderEvent as prost::Message>::decode(payload).ok())
                && let Some(order) = event.order
            {
                published.insert((order.order_id, order.version));
            }
        }
        Ok(published)
    })
    .await
    .map_err(|e| RunError::Stack(StackError::Setup(e.to_string())))??;
    Ok(published)
}

/// Rebalances the updater instances went through, from their logs.
fn count_rebalances(log_dir: &std::path::Path) -> usize {
    std::fs::read_dir(log_dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|entry| entry.file_name().to_string_lossy().starts_with("updater"))
        .filter_map(|entry| std::fs::read_to_string(entry.path()).ok())
        .map(|log| log.matches("partitions assigned").count())
        .sum()
}
