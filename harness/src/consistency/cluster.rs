//! The system under test: service instances as child processes on a [`Stack`], and the clients' view
//! of them.
//!
//! One API+relay instance (restarted on the same port after a kill, so clients reconnect to it) and one
//! to three cache-updater instances in one consumer group. Each run gets its own database, topic and
//! group; Redis is flushed, since order ids restart at 1 in every database.
//!
//! Rebalances are counted by the updaters themselves: each serves its metrics, and the cluster reads
//! how often each partition was assigned to it before it stops or kills one, and at the end. Summed
//! over the group, every assignment of a partition after its first is the partition moving: a
//! rebalance, whatever caused it; the start of the first updater alone counts none.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::scenario::Assignment;
use super::workload::Mix;
use crate::client::OrdersClient;
use crate::metrics::{samples, scrape};
use crate::node::Variant;
use crate::stack::process::{Launch, ManagedProcess};
use crate::stack::{Stack, StackError, ports};
use service::cache::{RedisConnection, RedisTarget};

/// What one run needs to know to start instances.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// The `orders-node` binary.
    pub node_binary: PathBuf,
    pub variant: Variant,
    pub assignment: Assignment,
    pub partitions: i32,
    /// Where instance logs go.
    pub log_dir: PathBuf,
    /// Most client operations per second, all clients together; `None`: as fast as they go.
    pub pace: Option<f64>,
    /// How the clients choose what to do.
    pub mix: Mix,
    /// Cache-updater instances at the start (at least 1).
    pub initial_updaters: usize,
}

pub struct Cluster {
    pub database_url: String,
    pub redis_url: String,
    pub brokers: String,
    pub topic: String,
    pub group: String,
    pub api_address: SocketAddr,
    config: ClusterConfig,
    api: ManagedProcess,
    updaters: Vec<Updater>,
    next_updater: usize,
    /// Assignments per partition counted by the updaters already stopped or killed.
    past_assignments: BTreeMap<i32, usize>,
    /// Changes of the group's membership after the start (updaters added, removed, killed).
    membership_changes: usize,
}

/// An updater instance and where it serves its metrics.
struct Updater {
    process: ManagedProcess,
    metrics: SocketAddr,
}

impl Cluster {
    pub async fn start(stack: &Stack, mut config: ClusterConfig, run: &str) -> Result<Self, StackError> {
        config.log_dir = config.log_dir.join(run);
        let database_url = stack.create_database(run).await?;
        let topic = format!("orders-{run}");
        stack.create_topic(&topic, config.partitions).await?;
        stack.create_topic(&format!("{topic}.dlq"), 1).await?;
        // On a cluster, `FLUSHALL` goes to every master.
        let target = RedisTarget::parse(stack.redis_url()).map_err(|e| StackError::Setup(e.to_string()))?;
        let mut connection =
            RedisConnection::connect_lazy(&target).map_err(|e| StackError::Setup(e.to_string()))?;
        let _: () = redis::cmd("FLUSHALL").query_async(&mut connection).await?;
        std::fs::create_dir_all(&config.log_dir)?;

        let api_address = ports::reserve_address()?;
        let mut cluster = Self {
            database_url,
            redis_url: stack.redis_url().to_string(),
            brokers: stack.kafka_brokers().to_string(),
            group: format!("updater-{run}"),
            topic,
            api_address,
            api: ManagedProcess::idle(),
            updaters: Vec::new(),
            next_updater: 0,
            past_assignments: BTreeMap::new(),
            membership_changes: 0,
            config,
        };
        cluster.api = cluster.spawn("api,relay", "api", None)?;
        for _ in 0..cluster.config.initial_updaters.max(1) {
            cluster.start_updater()?;
        }
        Ok(cluster)
    }

    fn spawn(
        &self,
        components: &str,
        name: &str,
        metrics: Option<SocketAddr>,
    ) -> Result<ManagedProcess, StackError> {
        let mut launch = Launch {
            name: "orders-node",
            program: self.config.node_binary.clone(),
            args: vec![
                "--components".into(),
                components.into(),
                "--variant".into(),
                self.config.variant.name(),
            ],
            envs: vec![
                ("DATABASE_URL".into(), self.database_url.clone()),
                ("REDIS_URL".into(), self.redis_url.clone()),
                ("KAFKA_BROKERS".into(), self.brokers.clone()),
                ("ORDERS_TOPIC".into(), self.topic.clone()),
                ("UPDATER_GROUP".into(), self.group.clone()),
                ("UPDATER_ASSIGNMENT".into(), self.config.assignment.name().into()),
                ("GRPC_ADDR".into(), self.api_address.to_string()),
                ("RUST_LOG".into(), "info,rdkafka=warn".into()),
            ],
            log: self.config.log_dir.join(format!("{name}.log")),
            server_log: None,
            run_as: None,
            stop_signal: libc::SIGTERM,
        };
        if let Some(metrics) = metrics {
            launch.envs.push(("METRICS_ADDR".into(), metrics.to_string()));
        }
        Ok(ManagedProcess::spawn(launch)?)
    }

    /// A client that reconnects by itself after the API instance restarts.
    pub fn client(&self) -> OrdersClient {
        OrdersClient::lazy(self.api_address)
    }

    pub fn updaters(&self) -> usize {
        self.updaters.len()
    }

    /// A new updater joins the group.
    pub fn add_updater(&mut self) -> Result<(), StackError> {
        self.start_updater()?;
        self.membership_changes += 1;
        Ok(())
    }

    fn start_updater(&mut self) -> Result<(), StackError> {
        self.next_updater += 1;
        let metrics = ports::reserve_address()?;
        let process = self.spawn(
            "updater",
            &format!("updater-{}", self.next_updater),
            Some(metrics),
        )?;
        self.updaters.push(Updater { process, metrics });
        Ok(())
    }

    /// SIGTERM to the oldest updater: it commits what it handled and leaves the group.
    pub async fn remove_updater(&mut self) {
        if !self.updaters.is_empty() {
            self.stop_updater(0).await;
        }
    }

    /// Updater `index` (oldest first) stopped as [`remove_updater`](Self::remove_updater) stops one,
    /// and a new one started.
    pub async fn replace_updater(&mut self, index: usize) -> Result<(), StackError> {
        if index < self.updaters.len() {
            self.stop_updater(index).await;
        }
        self.add_updater()
    }

    async fn stop_updater(&mut self, index: usize) {
        let mut updater = self.updaters.remove(index);
        add(&mut self.past_assignments, assignments(updater.metrics).await);
        self.membership_changes += 1;
        let _ = tokio::task::spawn_blocking(move || updater.process.stop(Duration::from_secs(30))).await;
    }

    /// Each updater's `orders_updater_redis_retries_total`, oldest first (0 from one that does not
    /// answer): it grows when the updater failed to write a chunk it holds.
    pub async fn redis_retries(&self) -> Vec<u64> {
        let mut retries = Vec::with_capacity(self.updaters.len());
        for updater in &self.updaters {
            let page = tokio::time::timeout(Duration::from_secs(2), scrape(updater.metrics)).await;
            retries.push(match page {
                Ok(Ok(page)) => samples(&page, "orders_updater_redis_retries_total")
                    .iter()
                    .map(|sample| sample.value as u64)
                    .sum(),
                _ => 0,
            });
        }
        retries
    }

    /// SIGKILL to the oldest updater: no commit, no leave; the group notices after the session timeout.
    pub async fn kill_updater(&mut self) {
        if self.updaters.is_empty() {
            return;
        }
        let mut updater = self.updaters.remove(0);
        add(&mut self.past_assignments, assignments(updater.metrics).await);
        self.membership_changes += 1;
        updater.process.kill();
    }

    /// Partitions moved by rebalances, as the updaters counted them: every assignment of a partition
    /// after its first.
    pub async fn rebalances(&self) -> usize {
        let mut total = self.past_assignments.clone();
        for updater in &self.updaters {
            add(&mut total, assignments(updater.metrics).await);
        }
        total.values().map(|n| n.saturating_sub(1)).sum()
    }

    /// Updaters added, removed or killed since the start: each must show as a rebalance.
    pub fn membership_changes(&self) -> usize {
        self.membership_changes
    }

    pub fn kill_api(&mut self) {
        self.api.kill();
    }

    pub fn restart_api(&mut self) -> Result<(), StackError> {
        self.api.kill();
        self.api = self.spawn("api,relay", "api", None)?;
        Ok(())
    }

    /// Stops every instance gracefully.
    pub async fn stop(mut self) {
        let mut processes: Vec<ManagedProcess> = self.updaters.drain(..).map(|u| u.process).collect();
        processes.push(std::mem::replace(&mut self.api, ManagedProcess::idle()));
        let _ = tokio::task::spawn_blocking(move || {
            for process in &mut processes {
                process.stop(Duration::from_secs(30));
            }
        })
        .await;
    }

    pub fn log_dir(&self) -> &Path {
        &self.config.log_dir
    }
}

/// How often each partition was assigned to an updater, from its `/metrics`
/// (`orders_updater_partitions_assigned_total{partition="…"}`); empty if it does not answer.
async fn assignments(metrics: SocketAddr) -> BTreeMap<i32, usize> {
    let Ok(Ok(page)) = tokio::time::timeout(Duration::from_secs(2), scrape(metrics)).await else {
        return BTreeMap::new();
    };
    samples(&page, "orders_updater_partitions_assigned_total")
        .into_iter()
        .filter_map(|sample| Some((sample.label("partition")?.parse().ok()?, sample.value as usize)))
        .collect()
}

fn add(total: &mut BTreeMap<i32, usize>, more: BTreeMap<i32, usize>) {
    for (partition, count) in more {
        *total.entry(partition).or_default() += count;
    }
}
