//! The `local` backend: PostgreSQL, Redis and Kafka as child processes of this one, in a private
//! temporary directory, on free loopback ports. Nothing is shared with other runs or with the machine's
//! own services, so tests can kill, pause and wipe them at will.

mod kafka;
mod postgres;
mod redis;
mod workdir;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use self::workdir::WorkDir;
use super::error::{Result, StackError};
use super::process::{Launch, ManagedProcess};
use super::readiness::{self, READY_TIMEOUT};
use super::{Endpoints, REDIS_CLUSTER_MASTERS, RedisMode, Service, ports, redis_cluster, tools};

type Shared = Arc<Mutex<ManagedProcess>>;

pub struct LocalStack {
    // Fields drop in order: the processes stop before their directory is deleted.
    postgres: Shared,
    /// One Redis, or every node of the cluster.
    redis: Vec<Shared>,
    redis_mode: RedisMode,
    kafka: Vec<Shared>,
    workdir: WorkDir,
}

impl LocalStack {
    pub async fn start(kafka_nodes: usize, redis_mode: RedisMode) -> Result<(Self, Endpoints)> {
        let workdir = WorkDir::create()?;
        let pg_port = ports::reserve_one()?;
        let kafka_ports: Vec<kafka::NodePorts> = ports::reserve(2 * kafka_nodes.max(1))?
            .chunks(2)
            .map(|pair| kafka::NodePorts {
                broker: pair[0],
                controller: pair[1],
            })
            .collect();

        // initdb and Kafka's storage format each take a second or so of process start-up: overlap them.
        let dir = workdir.path().to_path_buf();
        let pg_prepare = tokio::task::spawn_blocking({
            let dir = dir.clone();
            move || postgres::prepare(&dir, pg_port)
        });
        let kafka_prepare = tokio::task::spawn_blocking({
            let (dir, ports) = (dir.clone(), kafka_ports.clone());
            move || kafka::prepare(&dir, &ports)
        });
        let redis_launches = match redis_mode {
            RedisMode::Single => vec![redis::prepare(&dir, ports::reserve_one()?)?],
            RedisMode::Cluster => ports::reserve(REDIS_CLUSTER_MASTERS * 4)?
                .chunks(2)
                .enumerate()
                .map(|(index, ports)| {
                    let ports = redis::ClusterPorts {
                        client: ports[0],
                        bus: ports[1],
                    };
                    redis::prepare_cluster_node(&dir, index, ports)
                })
                .collect::<Result<_>>()?,
        };
        let pg_launch = join_blocking(pg_prepare).await??;
        let kafka_launches = join_blocking(kafka_prepare).await??;

        let endpoints = Endpoints {
            database_url: pg_launch.url,
            redis_url: redis_launches
                .iter()
                .map(|launch| launch.url.as_str())
                .collect::<Vec<_>>()
                .join(","),
            kafka_brokers: kafka_ports
                .iter()
                .map(|p| format!("127.0.0.1:{}", p.broker))
                .collect::<Vec<_>>()
                .join(","),
        };
        let stack = Self {
            postgres: spawn(pg_launch.launch)?,
            redis: redis_launches
                .into_iter()
                .map(|launch| spawn(launch.launch))
                .collect::<Result<_>>()?,
            redis_mode,
            kafka: kafka_launches.into_iter().map(spawn).collect::<Result<_>>()?,
            workdir,
        };
        let (pg, redis, kafka) = tokio::join!(
            stack.wait_ready(Service::Postgres, &endpoints),
            stack.redis_ready(&endpoints),
            stack.wait_ready(Service::Kafka(0), &endpoints),
        );
        pg?;
        redis?;
        kafka?;
        let mut stack = stack;
        stack.workdir.mark_started();
        Ok((stack, endpoints))
    }

    /// Every Redis node answers; a cluster is formed and healthy.
    async fn redis_ready(&self, endpoints: &Endpoints) -> Result<()> {
        if self.redis_mode == RedisMode::Single {
            return self.wait_ready(Service::Redis, endpoints).await;
        }
        for node in 0..self.redis.len() {
            self.wait_ready(Service::RedisNode(node), endpoints).await?;
        }
        let addresses: Vec<String> = redis_urls(endpoints)
            .map(|url| {
                url.trim_start_matches("redis://")
                    .trim_end_matches('/')
                    .to_string()
            })
            .collect();
        redis_cluster::create(&tools::redis_cli()?, &addresses).await?;
        let first = redis_urls(endpoints).next().unwrap_or_default();
        redis_cluster::wait_healthy(first, REDIS_CLUSTER_MASTERS)
            .await
            .map(drop)
    }

    fn process(&self, service: Service) -> Result<&Shared> {
        match (service, self.redis_mode) {
            (Service::Postgres, _) => Ok(&self.postgres),
            (Service::Redis, RedisMode::Single) => Ok(&self.redis[0]),
            (Service::Redis, RedisMode::Cluster) => Err(StackError::Setup(
                "the stack runs a Redis Cluster: name one of its nodes".into(),
            )),
            (Service::RedisNode(_), RedisMode::Single) => Err(StackError::Setup(
                "the stack runs a single Redis, not a cluster".into(),
            )),
            (Service::RedisNode(node), RedisMode::Cluster) => self.redis.get(node).ok_or_else(|| {
                StackError::Setup(format!(
                    "no Redis node {node}: the cluster has {}",
                    self.redis.len()
                ))
            }),
            (Service::Kafka(node), _) => self.kafka.get(node).ok_or_else(|| {
                StackError::Setup(format!(
                    "no Kafka node {node}: the stack has {}",
                    self.kafka.len()
                ))
            }),
        }
    }

    /// Waits until `service` answers a real request; if its process exits meanwhile, says so at once.
    pub async fn wait_ready(&self, service: Service, endpoints: &Endpoints) -> Result<()> {
        let process = self.process(service)?.clone();
        let check = || {
            let process = process.clone();
            async move {
                let exited = !process.lock().map_err(|e| e.to_string())?.is_running();
                if exited {
                    return Err("the process exited".to_string());
                }
                match service {
                    Service::Postgres => readiness::postgres_answers(&endpoints.database_url).await,
                    Service::Redis => readiness::redis_answers(&endpoints.redis_url).await,
                    Service::RedisNode(node) => {
                        let url = redis_urls(endpoints).nth(node).unwrap_or_default();
                        readiness::redis_answers(url).await
                    }
                    Service::Kafka(_) => {
                        let brokers = &endpoints.kafka_brokers;
                        readiness::kafka_metadata_ready(brokers, self.kafka.len(), &[]).await?;
                        readiness::kafka_accepts_idempotent_writes(brokers, self.kafka.len()).await
                    }
                }
            }
        };
        readiness::retry_until(READY_TIMEOUT, check)
            .await
            .map_err(|reason| {
                let process = process.lock();
                let (log, log_tail) = match &process {
                    Ok(p) => (p.log_path().to_path_buf(), p.log_tail(30)),
                    Err(_) => (self.workdir.path().to_path_buf(), String::new()),
                };
                StackError::NotReady {
                    service: service.to_string(),
                    seconds: READY_TIMEOUT.as_secs(),
                    reason,
                    log,
                    log_tail,
                }
            })
    }

    pub async fn stop(&self, service: Service) -> Result<()> {
        let process = self.process(service)?.clone();
        join_blocking(tokio::task::spawn_blocking(move || {
            if let Ok(mut p) = process.lock() {
                p.stop(Duration::from_secs(30));
            }
        }))
        .await
    }

    pub fn kill(&self, service: Service) -> Result<()> {
        self.with_process(service, ManagedProcess::kill)
    }

    pub fn pause(&self, service: Service) -> Result<()> {
        self.with_process(service, |p| {
            p.pause();
        })
    }

    pub fn resume(&self, service: Service) -> Result<()> {
        self.with_process(service, |p| {
            p.resume();
        })
    }

    /// Starts the process again, same ports, same data (Redis: empty, as it keeps nothing on disk).
    pub fn start_process(&self, service: Service) -> Result<()> {
        let process = self.process(service)?;
        let mut process = process
            .lock()
            .map_err(|_| StackError::Setup("process lock poisoned".into()))?;
        Ok(process.start()?)
    }

    /// The last `lines` of each Redis node's log, for an error that needs the cluster's own account.
    pub fn redis_log_tails(&self, lines: usize) -> String {
        self.redis
            .iter()
            .enumerate()
            .filter_map(|(node, p)| {
                let p = p.lock().ok()?;
                Some(format!("--- redis node {node} ---\n{}", p.log_tail(lines)))
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    pub fn pids(&self) -> Vec<u32> {
        std::iter::once(&self.postgres)
            .chain(self.redis.iter())
            .chain(self.kafka.iter())
            .filter_map(|p| p.lock().ok().and_then(|p| p.pid()))
            .collect()
    }

    pub fn directory(&self) -> &std::path::Path {
        self.workdir.path()
    }

    fn with_process(&self, service: Service, action: impl FnOnce(&mut ManagedProcess)) -> Result<()> {
        let process = self.process(service)?;
        let mut process = process
            .lock()
            .map_err(|_| StackError::Setup("process lock poisoned".into()))?;
        action(&mut process);
        Ok(())
    }
}

fn redis_urls(endpoints: &Endpoints) -> impl Iterator<Item = &str> {
    endpoints.redis_url.split(',')
}

fn spawn(launch: Launch) -> Result<Shared> {
    Ok(Arc::new(Mutex::new(ManagedProcess::spawn(launch)?)))
}

async fn join_blocking<T>(task: tokio::task::JoinHandle<T>) -> Result<T> {
    task.await
        .map_err(|e| StackError::Setup(format!("a set-up task failed: {e}")))
}
