//! Injecting the faults of the environment, each with the traffic that runs while it lasts, and
//! healing them: what a [`Step::Fault`](super::scenario::Step::Fault) does.

use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::cluster::Cluster;
use super::runner::RunError;
use super::scenario::Fault;
use super::workload::Workload;
use crate::stack::{RedisFailure, Service, Stack};
use service::cache::{RedisConnection, RedisTarget};

/// The longest a fault's own traffic runs (so the longest a fault lasts, healing aside).
const FAULT_TRAFFIC_LIMIT: Duration = Duration::from_secs(10);

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
            stack.pause(Service::Redis).await?;
            load().await;
            // Let the updaters receive the events and start retrying them against the frozen Redis.
            tokio::time::sleep(Duration::from_millis(1500)).await;
            if restart_updater {
                cluster.remove_updater().await;
                cluster.add_updater()?;
            }
            stack.resume(Service::Redis).await?;
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
