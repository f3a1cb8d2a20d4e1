//! The system under test: service instances as child processes on a [`Stack`], and the clients' view
//! of them.
//!
//! One API+relay instance (restarted on the same port after a kill, so clients reconnect to it) and one
//! to three cache-updater instances in one consumer group. Each run gets its own database, topic and
//! group; Redis is flushed, since order ids restart at 1 in every database.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use service::proto::orders::v1::order_service_client::OrderServiceClient;
use tonic::transport::{Channel, Endpoint};

use crate::stack::process::{Launch, ManagedProcess};
use crate::stack::{Stack, StackError};

use super::scenario::Assignment;

/// What one run needs to know to start instances.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// The `orders-node` binary.
    pub node_binary: PathBuf,
    /// `none`, or a broken variant of [`service::faults::TestFaults::variant`].
    pub fault: String,
    pub assignment: Assignment,
    pub partitions: i32,
    /// Where instance logs go.
    pub log_dir: PathBuf,
    /// Most client operations per second, all clients together; `None`: as fast as they go.
    pub pace: Option<f64>,
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
    updaters: Vec<ManagedProcess>,
    next_updater: usize,
}

impl Cluster {
    pub async fn start(stack: &Stack, mut config: ClusterConfig, run: &str) -> Result<Self, StackError> {
        config.log_dir = config.log_dir.join(run);
        let database_url = stack.create_database(run).await?;
        let topic = format!("orders-{run}");
        stack.create_topic(&topic, config.partitions).await?;
        stack.create_topic(&format!("{topic}.dlq"), 1).await?;
        let redis = redis::Client::open(stack.redis_url())?;
        let mut connection = redis.get_multiplexed_async_connection().await?;
        let _: () = redis::cmd("FLUSHALL").query_async(&mut connection).await?;
        std::fs::create_dir_all(&config.log_dir)?;

        let api_address = free_address()?;
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
            config,
        };
        cluster.api = cluster.spawn("api,relay", "api")?;
        for _ in 0..cluster.config.initial_updaters.max(1) {
            cluster.add_updater()?;
        }
        Ok(cluster)
    }

    fn spawn(&self, components: &str, name: &str) -> Result<ManagedProcess, StackError> {
        let launch = Launch {
            name: "orders-node",
            program: self.config.node_binary.clone(),
            args: vec![
                "--components".into(),
                components.into(),
                "--fault".into(),
                self.config.fault.clone(),
            ],
            envs: vec![
                ("DATABASE_URL".into(), self.database_url.clone()),
                ("REDIS_URL".into(), self.redis_url.clone()),
                ("KAFKA_BROKERS".into(), self.brokers.clone()),
                ("ORDERS_TOPIC".into(), self.topic.clone()),
                ("UPDATER_GROUP".into(), self.group.clone()),
                (
                    "UPDATER_ASSIGNMENT".into(),
                    self.config.assignment.config_value().into(),
                ),
                ("GRPC_ADDR".into(), self.api_address.to_string()),
                ("RUST_LOG".into(), "info,rdkafka=warn".into()),
            ],
            log: self.config.log_dir.join(format!("{name}.log")),
            run_as: None,
        };
        Ok(ManagedProcess::spawn(launch)?)
    }

    /// A client that reconnects by itself after the API instance restarts.
    pub fn client(&self) -> OrderServiceClient<Channel> {
        let channel = Endpoint::from_shared(format!("http://{}", self.api_address))
            .map(|endpoint| endpoint.connect_timeout(Duration::from_secs(1)).connect_lazy())
            .unwrap_or_else(|_| unreachable_endpoint());
        OrderServiceClient::new(channel)
    }

    pub fn updaters(&self) -> usize {
        self.updaters.len()
    }

    pub fn add_updater(&mut self) -> Result<(), StackError> {
        self.next_updater += 1;
        let updater = self.spawn("updater", &format!("updater-{}", self.next_updater))?;
        self.updaters.push(updater);
        Ok(())
    }

    /// SIGTERM to the oldest updater: it commits what it handled and leaves the group.
    pub async fn remove_updater(&mut self) {
        if self.updaters.is_empty() {
            return;
        }
        let mut updater = self.updaters.remove(0);
        let _ = tokio::task::spawn_blocking(move || updater.stop(Duration::from_secs(30))).await;
    }

    /// SIGKILL to the oldest updater: no commit, no leave; the group notices after the session timeout.
    pub fn kill_updater(&mut self) {
        if !self.updaters.is_empty() {
            self.updaters.remove(0).kill();
        }
    }

    pub fn kill_api(&mut self) {
        self.api.kill();
    }

    pub fn restart_api(&mut self) -> Result<(), StackError> {
        self.api.kill();
        self.api = self.spawn("api,relay", "api")?;
        Ok(())
    }

    /// Stops every instance gracefully.
    pub async fn stop(mut self) {
        let mut processes: Vec<ManagedProcess> = self.updaters.drain(..).collect();
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

fn free_address() -> Result<SocketAddr, StackError> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

/// A channel to a port nothing listens on; only reached if our own address failed to parse.
fn unreachable_endpoint() -> Channel {
    Endpoint::from_static("http://127.0.0.1:9").connect_lazy()
}
