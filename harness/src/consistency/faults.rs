//! Injecting the faults of the environment, each with the traffic that runs while it lasts, and
//! healing them: what a [`Step::Fault`](super::scenario::Step::Fault) does.

use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::cluster::Cluster;
use super::runner::RunError;
use super::scenario::Fault;
use super::workload::Workload;
use crate::inspect::CacheInspector;
use crate::stack::{RedisFailure, Service, Stack};
use service::cache::{Cached, RedisConnection, RedisTarget};

/// The longest a fault's own traffic runs (so the longest a fault lasts, healing aside).
const FAULT_TRAFFIC_LIMIT: Duration = Duration::from_secs(10);
/// At most this many orders change while Redis refuses writes and the updaters holding them are replaced.
const HELD_CHANGES_MAX: usize = 20;
/// How long the relay may take to publish the changes made during a fault, and the updaters to be
/// refused them: far longer than either takes on an idle machine (tens of milliseconds).
const HOLD_WITHIN: Duration = Duration::from_secs(30);

/// What a fault did that the checker's floors need to know.
#[derive(Debug, Default)]
pub struct Injected {
    /// Keys Redis evicted while the fault lasted.
    pub evicted_keys: u64,
}

/// Injects one fault with `traffic` operations while it lasts, and heals it.
pub async fn inject(
    stack: &Stack,
    cluster: &mut Cluster,
    workload: &Workload,
    fault: Fault,
    traffic: u16,
    seed: u64,
) -> Result<Injected, RunError> {
    let load = || workload.traffic_within(traffic, 2, seed, FAULT_TRAFFIC_LIMIT);
    let mut injected = Injected::default();
    if !fault.runs_on(stack.redis_mode()) {
        return Err(RunError::Unexpected(format!(
            "fault {} cannot run where Redis is {:?}",
            fault.kind(),
            stack.redis_mode()
        )));
    }
    match fault {
        Fault::AddUpdater => {
            if cluster.updaters() < 3 {
                cluster.add_updater()?;
            }
            load().await;
        }
        Fault::RemoveUpdater => {
            if cluster.updaters() > 1 {
                cluster.remove_updater().await;
            }
            load().await;
        }
        Fault::KillUpdater => {
            cluster.kill_updater().await;
            cluster.add_updater()?;
            load().await;
        }
        Fault::KillApi => {
            let kill = async {
                tokio::time::sleep(Duration::from_millis(50 + seed % 150)).await;
                cluster.restart_api()
            };
            let (_, restarted) = tokio::join!(load(), kill);
            restarted?;
        }
        Fault::KafkaDown { kill_api } => {
            stack.stop(Service::Kafka(0)).await?;
            load().await;
            if kill_api {
                // Committed, not yet published: the outbox holds the events (or, in the broken
                // variant, the producer's queue in the process that dies).
                cluster.kill_api();
                cluster.restart_api()?;
            }
            stack.start_service(Service::Kafka(0)).await?;
        }
        Fault::KafkaKill => {
            // One node of the cluster: an outage with one node, the loss of a broker with three.
            let node = Service::Kafka(seed as usize % stack.kafka_nodes());
            stack.kill(node).await?;
            load().await;
            stack.start_service(node).await?;
        }
        Fault::RedisRestart => {
            stack.restart(Service::Redis).await?;
            load().await;
        }
        Fault::RedisFlush => {
            // On a cluster, `FLUSHALL` goes to every master.
            let redis = RedisConnection::connect_lazy(&RedisTarget::parse(stack.redis_url())?)?;
            // Every 50 to 300 ms while the traffic lasts.
            let flushes = async {
                let mut rng = StdRng::seed_from_u64(seed);
                let mut redis = redis.clone();
                loop {
                    tokio::time::sleep(Duration::from_millis(rng.random_range(50..300))).await;
                    if let Err(error) = redis::cmd("FLUSHALL").query_async::<()>(&mut redis).await {
                        return error;
                    }
                }
            };
            tokio::select! {
                _ = load() => {}
                error = flushes => return Err(RunError::Redis(error)),
            }
        }
        Fault::RedisEvict => {
            let mut redis = redis_connection(stack).await?;
            let before = info_field(&mut redis, "stats", "evicted_keys").await?;
            squeeze(&mut redis).await?;
            load().await;
            let _: () = redis::cmd("CONFIG")
                .arg("SET")
                .arg("maxmemory")
                .arg(0)
                .query_async(&mut redis)
                .await?;
            injected.evicted_keys = info_field(&mut redis, "stats", "evicted_keys")
                .await?
                .saturating_sub(before);
        }
        Fault::RedisPause { restart_updater } => {
            let end_before = end_offsets(cluster).await?;
            let versions_before = committed_versions(cluster).await?;
            stack.pause(Service::Redis).await?;
            load().await;
            // Frozen until every change committed meanwhile is in the topic, for the updaters to
            // receive and try to write against a Redis that does not answer.
            let published = wait_published(cluster, end_before, versions_before).await;
            if published.is_ok() && restart_updater {
                cluster.remove_updater().await;
                cluster.add_updater()?;
            }
            stack.resume(Service::Redis).await?;
            published?;
        }
        Fault::RedisRefusesWrites => {
            let replaced = refuse_writes_and_replace_holders(stack, cluster, workload, traffic).await;
            allow_scripts(stack, true).await?;
            replaced?;
        }
        Fault::RedisMasterKill | Fault::RedisMasterPause => {
            let masters = stack.redis_masters().await?;
            let node = masters[seed as usize % masters.len()];
            let how = match fault {
                Fault::RedisMasterKill => RedisFailure::Kill,
                _ => RedisFailure::Pause,
            };
            let fail_over = async {
                tokio::time::sleep(Duration::from_millis(100 + seed % 200)).await;
                stack.fail_over_redis(node, how).await
            };
            let (_, failed_over) = tokio::join!(load(), fail_over);
            failed_over?;
            match how {
                RedisFailure::Kill => stack.start_service(Service::RedisNode(node)).await?,
                RedisFailure::Pause => stack.resume(Service::RedisNode(node)).await?,
            }
            stack.wait_redis_cluster_healthy().await?;
        }
        Fault::PostgresRestart => {
            let restart = async {
                tokio::time::sleep(Duration::from_millis(100)).await;
                stack.restart(Service::Postgres).await
            };
            let (_, restarted) = tokio::join!(load(), restart);
            restarted?;
        }
    }
    Ok(injected)
}

/// Redis refusing scripts while each updater holding changes it could not write is replaced (SIGTERM:
/// it commits what it acknowledged, and a new one reads on from there); leaves the scripts refused.
///
/// Set up so that an updater that acknowledges what it receives before writing it (offsets stored on
/// receipt) loses an update in every run, not by luck: nothing older is in flight when the refusal
/// starts (the pipeline is quiescent); each order changed has an entry and changes once (so no later
/// event can repair its entry); a refused write is gone (unlike one sent to a frozen Redis, which runs
/// when it resumes); and the updaters are replaced only once every change is in the topic and an
/// updater was refused some of them (its Redis retries grew, on its `/metrics`). A correct updater
/// acknowledged none of them, and its successor reads them all again.
async fn refuse_writes_and_replace_holders(
    stack: &Stack,
    cluster: &mut Cluster,
    workload: &Workload,
    traffic: u16,
) -> Result<(), RunError> {
    let wanted = usize::from(traffic).clamp(1, HELD_CHANGES_MAX);
    workload.ensure_open(wanted).await;
    super::settle::quiesce(cluster)
        .await
        .map_err(RunError::Unexpected)?;
    // A miss fills: every order the clients know has an entry.
    workload.read_all().await;
    let targets = cached(cluster, workload.open_orders(wanted)).await?;
    if targets.is_empty() {
        return Err(RunError::Unexpected(
            "no order in progress was cached before Redis refused writes".into(),
        ));
    }
    let end_before = end_offsets(cluster).await?;
    let versions_before = committed_versions(cluster).await?;
    let retries_before = cluster.redis_retries().await;
    allow_scripts(stack, false).await?;
    if workload.advance_each(&targets).await == 0 {
        return Err(RunError::Unexpected(
            "no change was committed while Redis refused writes".into(),
        ));
    }
    wait_published(cluster, end_before, versions_before).await?;
    let deadline = tokio::time::Instant::now() + HOLD_WITHIN;
    let holders = loop {
        let retries = cluster.redis_retries().await;
        let holders: Vec<usize> = (0..retries.len().min(retries_before.len()))
            .filter(|&i| retries[i] > retries_before[i])
            .collect();
        if !holders.is_empty() {
            break holders;
        }
        if tokio::time::Instant::now() > deadline {
            return Err(RunError::Unexpected(format!(
                "no updater was refused a write of the changes made meanwhile, within {HOLD_WITHIN:?}"
            )));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // Newest first: a replacement joins at the end, so the indices still to replace stay valid.
    for index in holders.into_iter().rev() {
        cluster.replace_updater(index).await?;
    }
    Ok(())
}

/// Lets every client of the single Redis run scripts again (`+@all`, what the default user starts
/// with), or refuses them (`EVAL`, `EVALSHA` and their read-only forms answer `NOPERM`).
async fn allow_scripts(stack: &Stack, allow: bool) -> Result<(), RunError> {
    let mut redis = redis_connection(stack).await?;
    let mut command = redis::cmd("ACL");
    command.arg("SETUSER").arg("default");
    if allow {
        command.arg("+@all");
    } else {
        command
            .arg("-eval")
            .arg("-evalsha")
            .arg("-eval_ro")
            .arg("-evalsha_ro");
    }
    command.query_async::<()>(&mut redis).await?;
    Ok(())
}

/// Those of `orders` whose entry Redis holds (read in Redis itself).
async fn cached(cluster: &Cluster, orders: Vec<i64>) -> Result<Vec<i64>, RunError> {
    let entries = CacheInspector::connect(&cluster.redis_url)
        .await?
        .entries(&orders)
        .await?;
    Ok(orders
        .into_iter()
        .zip(entries)
        .filter_map(|(id, entry)| matches!(entry, Cached::Hit(_)).then_some(id))
        .collect())
}

/// Waits until the topic holds as many new messages as versions were committed since the counts
/// given (each version is one event; a duplicate from a relay retry only ends the wait sooner).
async fn wait_published(cluster: &Cluster, end_before: i64, versions_before: i64) -> Result<(), RunError> {
    let deadline = tokio::time::Instant::now() + HOLD_WITHIN;
    loop {
        let committed = committed_versions(cluster).await? - versions_before;
        let published = end_offsets(cluster).await? - end_before;
        if published >= committed {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            return Err(RunError::Unexpected(format!(
                "{published} of {committed} changes committed during the fault reached the topic within {HOLD_WITHIN:?}"
            )));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Versions committed so far, every order's (the database's own account: `order_versions`).
async fn committed_versions(cluster: &Cluster) -> Result<i64, RunError> {
    let pool = sqlx::PgPool::connect_lazy(&cluster.database_url)?;
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM order_versions")
        .fetch_one(&pool)
        .await?;
    pool.close().await;
    Ok(count)
}

/// Messages the topic ever held, summed over its partitions.
async fn end_offsets(cluster: &Cluster) -> Result<i64, RunError> {
    let (brokers, topic) = (cluster.brokers.clone(), cluster.topic.clone());
    tokio::task::spawn_blocking(move || crate::lag::end_offsets(&brokers, &topic))
        .await
        .map_err(|e| RunError::Unexpected(format!("the end-offsets query: {e}")))?
        .map_err(|e| RunError::Unexpected(format!("the topic's end offsets: {e:#}")))
}

async fn redis_connection(stack: &Stack) -> Result<redis::aio::MultiplexedConnection, RunError> {
    let client = redis::Client::open(stack.redis_url())?;
    Ok(client.get_multiplexed_async_connection().await?)
}

/// Sets `maxmemory` to what Redis uses now less half of its data set, with `allkeys-lru`: Redis
/// evicts half of the keys at once, then a key for every new one. The headroom over what Redis needs
/// besides the data set keeps writes from being refused with OOM while keys are left to evict.
async fn squeeze(redis: &mut redis::aio::MultiplexedConnection) -> Result<(), RunError> {
    let used = info_field(redis, "memory", "used_memory").await?;
    let dataset = info_field(redis, "memory", "used_memory_dataset").await?;
    let limit = used.saturating_sub(dataset / 2).max(1);
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory-policy")
        .arg("allkeys-lru")
        .arg("maxmemory")
        .arg(limit)
        .query_async(redis)
        .await?;
    Ok(())
}

/// A number from `INFO section`.
async fn info_field(
    redis: &mut redis::aio::MultiplexedConnection,
    section: &str,
    field: &str,
) -> Result<u64, RunError> {
    let info: String = redis::cmd("INFO").arg(section).query_async(redis).await?;
    info.lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|value| value.trim().parse().ok())
        .ok_or_else(|| RunError::Unexpected(format!("Redis's INFO {section} has no number {field}")))
}
