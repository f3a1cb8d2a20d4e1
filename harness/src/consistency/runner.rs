//! Runs a scenario: starts the instances, drives the steps and faults ([`faults`](super::faults)) while
//! the [`sampler`](super::sampler) watches the cache, waits for quiescence and collects the final
//! state ([`settle`](super::settle)); sets the floors the run must reach from the steps it took.
//!
//! The [`probe`](super::probe) gates the measurements: a run starts only once a write gets through
//! every partition, and a fault ends only when one does again. A probe that never gets through is an
//! error of the run, never a verdict on the service.

use std::sync::Arc;
use std::time::Duration;

use service::cache::Cached;
use tokio_util::sync::CancellationToken;

use super::checker::Floors;
use super::cluster::{Cluster, ClusterConfig};
use super::faults::inject;
use super::history::{FaultWindow, History, Recorded};
use super::probe::{Probe, ProbeError, partition_of};
use super::sampler::{SAMPLE_EVERY, sample_cache};
use super::scenario::{Fault, Step};
use super::settle::{self, FinalState};
use super::workload::Workload;
use crate::inspect::CacheInspector;
use crate::stack::{Stack, StackError};

/// How long the probe may take to get a write through every partition: a restarted Kafka node takes
/// up to ~30 s to lead its partitions again, a killed updater's partitions wait for the session
/// timeout (10 s).
const PROBE_WITHIN: Duration = Duration::from_secs(90);

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Stack(#[from] StackError),
    #[error("database")]
    Database(#[from] sqlx::Error),
    #[error("storage")]
    Storage(#[from] service::storage::StorageError),
    #[error("kafka")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("reading the topic")]
    Topic(#[from] crate::topic::TopicError),
    #[error("redis")]
    Redis(#[from] redis::RedisError),
    #[error("redis")]
    Cache(#[from] service::cache::CacheError),
    #[error(transparent)]
    Probe(#[from] ProbeError),
    #[error("{0}")]
    Unexpected(String),
}

/// Everything a check needs.
#[derive(Debug, Clone)]
pub struct RunOutcome {
    pub recorded: Recorded,
    pub state: FinalState,
    /// What the run must have done, given the steps it took.
    pub floors: Floors,
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
    let (pace, mix, partitions) = (config.pace, config.mix, config.partitions);
    let mut cluster = Cluster::start(stack, config, run_name).await?;
    let history = Arc::new(History::new());
    let workload = Workload::new(cluster.client(), history.clone(), pace, mix);
    let inspector = CacheInspector::connect(&cluster.redis_url).await?;
    let mut probe = Probe::new(cluster.client(), inspector.clone(), partitions);
    // Measure from a working system.
    probe.through_every_partition(PROBE_WITHIN).await?;

    let sampling = CancellationToken::new();
    let sampler = tokio::spawn(sample_cache(
        inspector,
        workload.clone(),
        history.clone(),
        sampling.clone(),
    ));
    let mut taken = Vec::new();
    let mut membership_steps = 0;
    for (index, step) in steps.into_iter().enumerate() {
        on_step(index, &step);
        match &step {
            Step::Create { count } => workload.create(*count).await,
            Step::Traffic { count, clients, seed } => workload.traffic(*count, *clients, *seed).await,
            Step::Race { clients, seed } => workload.race(*clients, *seed).await,
            Step::ReadAll => workload.read_all().await,
            Step::Fault { fault, traffic, seed } => {
                let start = history.now();
                let members_before = cluster.membership_changes();
                let injected = inject(stack, &mut cluster, &workload, *fault, *traffic, *seed).await?;
                membership_steps += usize::from(cluster.membership_changes() > members_before);
                history.record_evictions(injected.evicted_keys);
                probe.through_every_partition(PROBE_WITHIN).await?;
                history.record_fault(FaultWindow {
                    kind: fault.kind(),
                    start,
                    end: history.now(),
                });
            }
        }
        taken.push(step);
    }

    let quiescent = settle::quiesce(&cluster).await;
    tokio::time::sleep(SAMPLE_EVERY * 5).await;
    sampling.cancel();
    let _ = sampler.await;
    let state = settle::final_state(&cluster, quiescent).await?;
    // A last look at every order's entry, watched or not, once everything settled.
    let end = history.now();
    for (order_id, entry) in &state.cache {
        let version = match entry {
            Cached::Hit(order) => Some(order.version),
            Cached::Miss | Cached::Corrupt(_) => None,
        };
        history.record_cache(*order_id, version, end);
    }
    check_partitions(&state, partitions)?;
    let floors = floors(&taken, membership_steps);
    cluster.stop().await;
    Ok(RunOutcome {
        recorded: history.snapshot(),
        state,
        floors,
    })
}

/// The probe picks an order per partition by the partitioner's hash; every event in the topic must be
/// where that hash says, or the probe proved less than it claims.
fn check_partitions(state: &FinalState, partitions: i32) -> Result<(), RunError> {
    match state
        .published
        .iter()
        .find(|((order, _), partition)| partition_of(*order, partitions) != **partition)
    {
        None => Ok(()),
        Some(((order, version), partition)) => Err(RunError::Unexpected(format!(
            "order {order} version {version} is in partition {partition}, not {} as the probe assumes",
            partition_of(*order, partitions)
        ))),
    }
}

/// The least the run must have done. Operations: about 60 % of the traffic are status changes, 35 %
/// reads, half of them to the three newest orders; so a tenth of the requested operations as answered
/// writes, and a hundredth each as reads served by the cache and as writes over a cached entry, hold
/// with room to spare for a working system, and fail for one where nothing gets through.
/// The staleness-sample floor is not set here: it depends on which writes found a cached entry, which
/// the checker reads from the history (`staleness::sample_floor`).
/// Each step that changed the group's membership must have moved at least one partition.
fn floors(steps: &[Step], membership_steps: usize) -> Floors {
    let traffic = |step: &Step| match step {
        Step::Traffic { count, .. } => *count as usize,
        Step::Fault { traffic, .. } => *traffic as usize,
        Step::Create { .. } | Step::Race { .. } | Step::ReadAll => 0,
    };
    let requested: usize = steps.iter().map(traffic).sum();
    let evictions = steps
        .iter()
        .filter(|step| {
            matches!(
                step,
                Step::Fault {
                    fault: Fault::RedisEvict,
                    ..
                }
            )
        })
        .count();
    Floors {
        writes: requested / 10,
        cache_reads: requested / 100,
        staleness_samples: 0,
        rebalances: membership_steps,
        evicted_keys: evictions as u64,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn traffic(count: u16) -> Step {
        Step::Traffic {
            count,
            clients: 3,
            seed: 0,
        }
    }

    fn fault(fault: Fault, traffic: u16) -> Step {
        Step::Fault {
            fault,
            traffic,
            seed: 0,
        }
    }

    #[test]
    fn writes_count_every_request_and_the_staleness_floor_is_left_to_the_checker() {
        let steps = [
            traffic(200),
            fault(Fault::RedisFlush, 200),
            fault(Fault::RedisRestart, 100),
            fault(Fault::RedisEvict, 100),
            fault(Fault::KillUpdater, 100),
            traffic(100),
        ];
        let floors = floors(&steps, 0);
        assert_eq!(floors.writes, 80, "every request counts towards the writes");
        assert_eq!(
            floors.staleness_samples, 0,
            "set from the history (staleness::sample_floor)"
        );
    }
}
