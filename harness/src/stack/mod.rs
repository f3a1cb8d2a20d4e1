//! `Stack`: PostgreSQL, Redis and Kafka for tests and tools, behind one API whatever runs them.
//!
//! Three backends hand out the same endpoints:
//!
//! * `local`: private child processes (see [`local`]); the default when no Docker engine answers.
//! * `docker`: containers through testcontainers-modules, where a Docker engine answers.
//! * `external`: servers someone else runs, named by `DATABASE_URL`, `REDIS_URL` and `KAFKA_BROKERS`.
//!
//! `STACK=local|docker|external` overrides the choice. A stack counts as started only when every service
//! answers a real request, and the requested topics exist with all their partitions led. Dropping the
//! `Stack` stops everything it started.
//!
//! The fault controls (stop, start, kill -9, pause) are what the consistency harness drives; the local
//! backend supports them all, the docker backend only pause and resume (a restarted container gets new
//! host ports), the external backend none.

mod docker;
pub mod error;
mod local;
mod numbering;
pub mod ports;
pub(crate) mod process;
mod readiness;
pub mod redis_cluster;
mod tools;

use std::fmt;
use std::sync::Mutex;

pub use error::{Result, StackError};
pub use readiness::{create_database, ensure_topic};
pub use tools::{java, kafka_libs, kafka_libs_dir, kafka_tools_dir, kafka_version, kcat};

/// Which implementation runs the services.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Local,
    Docker,
    External,
}

impl Backend {
    /// `STACK` if set, else `docker` when a Docker engine answers, else `local`.
    pub fn from_env() -> Result<Self> {
        match std::env::var("STACK").ok().as_deref().map(str::trim) {
            None | Some("") => Ok(if docker::engine_answers() {
                Self::Docker
            } else {
                Self::Local
            }),
            Some(name) => name.parse(),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Local => "local",
            Self::Docker => "docker",
            Self::External => "external",
        }
    }
}

impl std::str::FromStr for Backend {
    type Err = StackError;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "local" => Ok(Self::Local),
            "docker" => Ok(Self::Docker),
            "external" => Ok(Self::External),
            other => Err(StackError::UnknownBackend(other.to_string())),
        }
    }
}

/// One service of the stack, as the fault controls name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    Postgres,
    /// The Redis of a stack with a single Redis.
    Redis,
    /// A node of the Redis Cluster, counted from 0 (a stack started with [`RedisMode::Cluster`]).
    RedisNode(usize),
    /// A Kafka node, counted from 0.
    Kafka(usize),
}

impl fmt::Display for Service {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Postgres => write!(f, "postgres"),
            Self::Redis => write!(f, "redis"),
            Self::RedisNode(node) => write!(f, "redis node {node}"),
            Self::Kafka(node) => write!(f, "kafka node {node}"),
        }
    }
}

/// One Redis, or a Redis Cluster.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum RedisMode {
    #[default]
    Single,
    /// Three masters and three replicas; `redis_url` lists every node, comma-separated.
    Cluster,
}

/// Masters of the cluster [`RedisMode::Cluster`] starts; each has one replica.
pub const REDIS_CLUSTER_MASTERS: usize = 3;

/// How a cluster master is taken away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RedisFailure {
    /// `kill -9`: writes it acknowledged but had not yet sent to its replica are lost.
    Kill,
    /// SIGSTOP, for longer than the node timeout: the cluster fails it over while it lives on, and
    /// it rejoins as a replica once resumed.
    Pause,
}

/// Where clients connect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoints {
    /// `postgres://…` of a database the tests may use freely.
    pub database_url: String,
    /// `redis://…`.
    pub redis_url: String,
    /// `host:port[,host:port…]`, for `bootstrap.servers`.
    pub kafka_brokers: String,
}

impl Endpoints {
    /// One `export NAME=value` line each, as `stack up` prints them and a shell `eval`s them.
    pub fn exports(&self) -> String {
        format!(
            "export DATABASE_URL={}\nexport REDIS_URL={}\nexport KAFKA_BROKERS={}\n",
            self.database_url, self.redis_url, self.kafka_brokers
        )
    }

    /// The endpoints in `text` of [`exports`](Self::exports) lines (other lines are ignored).
    pub fn from_exports(text: &str) -> Result<Self> {
        let value = |name: &'static str| {
            text.lines()
                .filter_map(|line| line.strip_prefix("export "))
                .filter_map(|line| line.split_once('='))
                .find(|(key, _)| *key == name)
                .map(|(_, value)| value.trim().to_string())
                .ok_or(StackError::MissingEndpoint(name))
        };
        Ok(Self {
            database_url: value("DATABASE_URL")?,
            redis_url: value("REDIS_URL")?,
            kafka_brokers: value("KAFKA_BROKERS")?,
        })
    }
}

/// A topic the stack creates before it counts as started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicSpec {
    pub name: String,
    pub partitions: i32,
}

impl TopicSpec {
    pub fn new(name: impl Into<String>, partitions: i32) -> Self {
        Self {
            name: name.into(),
            partitions,
        }
    }
}

#[derive(Debug, Clone)]
pub struct StackOptions {
    /// `None`: [`Backend::from_env`].
    pub backend: Option<Backend>,
    /// Kafka nodes (combined broker + controller); 3 for failover tests.
    pub kafka_nodes: usize,
    pub topics: Vec<TopicSpec>,
    /// One Redis, or a cluster (local backend only).
    pub redis: RedisMode,
}

impl StackOptions {
    /// Private local processes, one Kafka node, no topics made in advance: a test's stack of its own.
    pub fn local(redis: RedisMode) -> Self {
        Self {
            backend: Some(Backend::Local),
            kafka_nodes: 1,
            topics: vec![],
            redis,
        }
    }
}

impl Default for StackOptions {
    fn default() -> Self {
        Self {
            backend: None,
            kafka_nodes: 1,
            topics: vec![TopicSpec::new("order-events", 3)],
            redis: RedisMode::Single,
        }
    }
}

enum Running {
    Local(local::LocalStack),
    Docker(Box<docker::DockerStack>),
    External,
}

pub struct Stack {
    backend: Backend,
    endpoints: Endpoints,
    kafka_nodes: usize,
    redis: RedisMode,
    topics: Mutex<Vec<TopicSpec>>,
    running: Running,
}

impl Stack {
    /// The default stack: one Kafka node and topic `order-events` with 3 partitions.
    pub async fn start_default() -> Result<Self> {
        Self::start(StackOptions::default()).await
    }

    pub async fn start(options: StackOptions) -> Result<Self> {
        let backend = match options.backend {
            Some(backend) => backend,
            None => Backend::from_env()?,
        };
        let kafka_nodes = options.kafka_nodes.max(1);
        let (running, endpoints) = match backend {
            Backend::Local => {
                let (stack, endpoints) = local::LocalStack::start(kafka_nodes, options.redis).await?;
                (Running::Local(stack), endpoints)
            }
            Backend::Docker if options.redis == RedisMode::Cluster => {
                return Err(StackError::Unsupported {
                    operation: "a Redis Cluster".into(),
                    backend: backend.name(),
                });
            }
            Backend::Docker => {
                let (stack, endpoints) = docker::DockerStack::start(kafka_nodes).await?;
                (Running::Docker(Box::new(stack)), endpoints)
            }
            Backend::External => return Self::attach(external_endpoints()?, options).await,
        };
        let stack = Self {
            backend,
            endpoints,
            kafka_nodes,
            redis: options.redis,
            topics: Mutex::new(Vec::new()),
            running,
        };
        stack.create_topics(&options.topics).await?;
        Ok(stack)
    }

    /// The `external` backend on `endpoints`: servers someone else runs (a shared stack of a test
    /// run, say), checked to answer; `options.backend` is ignored.
    pub async fn attach(endpoints: Endpoints, options: StackOptions) -> Result<Self> {
        readiness::postgres_answers(&endpoints.database_url)
            .await
            .map_err(|e| StackError::Setup(format!("DATABASE_URL does not answer: {e}")))?;
        let stack = Self {
            backend: Backend::External,
            endpoints,
            kafka_nodes: options.kafka_nodes.max(1),
            redis: options.redis,
            topics: Mutex::new(Vec::new()),
            running: Running::External,
        };
        for url in stack.redis_nodes() {
            readiness::redis_answers(url)
                .await
                .map_err(|e| StackError::Setup(format!("REDIS_URL does not answer: {e}")))?;
        }
        stack.create_topics(&options.topics).await?;
        Ok(stack)
    }

    async fn create_topics(&self, topics: &[TopicSpec]) -> Result<()> {
        for topic in topics {
            self.create_topic(&topic.name, topic.partitions).await?;
        }
        Ok(())
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    pub fn endpoints(&self) -> &Endpoints {
        &self.endpoints
    }

    pub fn database_url(&self) -> &str {
        &self.endpoints.database_url
    }

    pub fn redis_url(&self) -> &str {
        &self.endpoints.redis_url
    }

    /// The URL of each Redis node: one, or every node of the cluster.
    pub fn redis_nodes(&self) -> impl Iterator<Item = &str> {
        self.endpoints.redis_url.split(',').map(str::trim)
    }

    pub fn redis_mode(&self) -> RedisMode {
        self.redis
    }

    pub fn kafka_brokers(&self) -> &str {
        &self.endpoints.kafka_brokers
    }

    pub fn kafka_nodes(&self) -> usize {
        self.kafka_nodes
    }

    /// Creates `name` with `partitions` partitions (or finds it) and waits until every partition is led.
    pub async fn create_topic(&self, name: &str, partitions: i32) -> Result<()> {
        ensure_topic(self.kafka_brokers(), self.kafka_nodes, name, partitions).await?;
        if let Ok(mut topics) = self.topics.lock() {
            topics.push(TopicSpec::new(name, partitions));
        }
        Ok(())
    }

    /// A number no one else gets from this stack, in this process or any other (1, 2, 3, ...): for
    /// names and id ranges of tests that share the stack.
    pub async fn unique_number(&self) -> Result<i64> {
        numbering::next(self.database_url()).await
    }

    /// A new, empty database on the stack's PostgreSQL; returns its URL. Tests use one each.
    pub async fn create_database(&self, name: &str) -> Result<String> {
        create_database(self.database_url(), name).await
    }

    /// Graceful stop (SIGTERM, then SIGKILL after 30 s). Kafka and PostgreSQL keep their data.
    pub async fn stop(&self, service: Service) -> Result<()> {
        match &self.running {
            Running::Local(local) => local.stop(service).await,
            _ => Err(self.unsupported(format!("stopping {service}"))),
        }
    }

    /// `kill -9`.
    pub async fn kill(&self, service: Service) -> Result<()> {
        match &self.running {
            Running::Local(local) => local.kill(service),
            _ => Err(self.unsupported(format!("killing {service}"))),
        }
    }

    /// Starts a stopped or killed service on its old port and waits until it answers again (for Kafka:
    /// until every node is registered and every topic the stack created is fully led).
    pub async fn start_service(&self, service: Service) -> Result<()> {
        match &self.running {
            Running::Local(local) => {
                local.start_process(service)?;
                local.wait_ready(service, &self.endpoints).await?;
            }
            _ => return Err(self.unsupported(format!("starting {service}"))),
        }
        if let Service::Kafka(_) = service {
            self.wait_topics_led().await?;
        }
        Ok(())
    }

    /// Stop and start: for Redis, a restart with its data wiped.
    pub async fn restart(&self, service: Service) -> Result<()> {
        self.stop(service).await?;
        self.start_service(service).await
    }

    /// SIGSTOP: the service keeps its connections open but answers nothing until [`resume`](Self::resume).
    pub async fn pause(&self, service: Service) -> Result<()> {
        match &self.running {
            Running::Local(local) => local.pause(service),
            Running::Docker(docker) => docker.pause(service).await,
            Running::External => Err(self.unsupported(format!("pausing {service}"))),
        }
    }

    pub async fn resume(&self, service: Service) -> Result<()> {
        match &self.running {
            Running::Local(local) => local.resume(service),
            Running::Docker(docker) => docker.resume(service).await,
            Running::External => Err(self.unsupported(format!("resuming {service}"))),
        }
    }

    /// The cluster's nodes that serve slots now (their [`Service::RedisNode`] numbers), as a live node
    /// sees them once every slot is served.
    pub async fn redis_masters(&self) -> Result<Vec<usize>> {
        self.redis_nodes_that(|n| n.master && n.slots > 0 && !n.failing)
            .await
    }

    /// The node numbers of the cluster's replicas (in the numbering of [`redis_masters`](Self::redis_masters)).
    pub async fn redis_replicas(&self) -> Result<Vec<usize>> {
        self.redis_nodes_that(|n| !n.master && !n.failing).await
    }

    /// The numbers of the nodes `which` selects, as a live node sees them once every slot is served.
    async fn redis_nodes_that(&self, which: impl Fn(&redis_cluster::NodeView) -> bool) -> Result<Vec<usize>> {
        let witness = self.redis_nodes().next().unwrap_or_default().to_string();
        let witness = self.live_redis_node(&witness).await?;
        let nodes = redis_cluster::wait_serving(&witness).await?;
        Ok(nodes
            .iter()
            .filter(|n| which(n))
            .filter_map(|n| self.redis_node_number(&n.address))
            .collect())
    }

    /// Kills (`kill -9`) or pauses (SIGSTOP) a master of the cluster and waits until its replica has
    /// taken over its slots. A paused master stays paused: [`resume`](Self::resume) it, and it rejoins
    /// as a replica.
    pub async fn fail_over_redis(&self, node: usize, how: RedisFailure) -> Result<()> {
        let service = Service::RedisNode(node);
        match how {
            RedisFailure::Kill => self.kill(service).await?,
            RedisFailure::Pause => self.pause(service).await?,
        }
        let lost = self.redis_address(node)?;
        let witness = self
            .redis_nodes()
            .find(|url| !url.contains(&lost))
            .unwrap_or_default()
            .to_string();
        redis_cluster::wait_failed_over(&witness, &lost)
            .await
            .map_err(|error| match &self.running {
                Running::Local(local) => StackError::Setup(format!("{error}\n{}", local.redis_log_tails(15))),
                _ => error,
            })
    }

    /// Sets the cluster's node timeout on every node: how long a node may go unanswered before its
    /// peers fail it over (the stack starts with 2 s). For a test that pauses nodes on purpose and
    /// must not see them failed over meanwhile.
    pub async fn set_redis_node_timeout(&self, timeout: std::time::Duration) -> Result<()> {
        for url in self.redis_nodes() {
            redis_cluster::set_node_timeout(url, timeout).await?;
        }
        Ok(())
    }

    /// Moves `slots` slots (the lowest it serves), with their keys, from master node `from` to master
    /// node `to`, and waits until every slot is served.
    pub async fn reshard_redis(&self, from: usize, to: usize, slots: usize) -> Result<()> {
        let (from, to) = (self.redis_address(from)?, self.redis_address(to)?);
        let witness = format!("redis://{from}/");
        redis_cluster::reshard(&tools::redis_cli()?, &witness, &from, &to, slots).await?;
        redis_cluster::wait_serving(&witness).await.map(drop)
    }

    /// Waits until the cluster is whole again: every master with a replica, no node failing (after a
    /// failed master was started or resumed).
    pub async fn wait_redis_cluster_healthy(&self) -> Result<()> {
        let url = self.redis_nodes().next().unwrap_or_default().to_string();
        let url = self.live_redis_node(&url).await?;
        redis_cluster::wait_healthy(&url, REDIS_CLUSTER_MASTERS)
            .await
            .map(drop)
    }

    /// `host:port` of cluster node `node`.
    fn redis_address(&self, node: usize) -> Result<String> {
        let url = self
            .redis_nodes()
            .nth(node)
            .ok_or_else(|| StackError::Setup(format!("no Redis node {node}")))?;
        Ok(url
            .trim_start_matches("redis://")
            .trim_end_matches('/')
            .to_string())
    }

    fn redis_node_number(&self, address: &str) -> Option<usize> {
        (0..self.redis_nodes().count()).find(|&n| self.redis_address(n).is_ok_and(|a| a == address))
    }

    /// `preferred` if it answers, else the first node that does.
    async fn live_redis_node(&self, preferred: &str) -> Result<String> {
        let candidates = std::iter::once(preferred).chain(self.redis_nodes());
        for url in candidates {
            if redis_cluster::view(url).await.is_ok() {
                return Ok(url.to_string());
            }
        }
        Err(StackError::Setup("no Redis Cluster node answers".into()))
    }

    /// Process ids of the local servers (empty for the other backends).
    pub fn pids(&self) -> Vec<u32> {
        match &self.running {
            Running::Local(local) => local.pids(),
            _ => Vec::new(),
        }
    }

    /// The local backend's directory (data and logs of every server).
    pub fn directory(&self) -> Option<&std::path::Path> {
        match &self.running {
            Running::Local(local) => Some(local.directory()),
            _ => None,
        }
    }

    async fn wait_topics_led(&self) -> Result<()> {
        let topics = self.topics.lock().map(|t| t.clone()).unwrap_or_default();
        let wanted: Vec<(&str, i32)> = topics.iter().map(|t| (t.name.as_str(), t.partitions)).collect();
        readiness::kafka_metadata_ready(self.kafka_brokers(), self.kafka_nodes, &wanted)
            .await
            .map_err(|reason| StackError::Setup(format!("Kafka topics not led after restart: {reason}")))
    }

    fn unsupported(&self, operation: String) -> StackError {
        StackError::Unsupported {
            operation,
            backend: self.backend.name(),
        }
    }
}

fn external_endpoints() -> Result<Endpoints> {
    let var = |name: &'static str| std::env::var(name).map_err(|_| StackError::MissingEndpoint(name));
    Ok(Endpoints {
        database_url: var("DATABASE_URL")?,
        redis_url: var("REDIS_URL")?,
        kafka_brokers: var("KAFKA_BROKERS")?,
    })
}
