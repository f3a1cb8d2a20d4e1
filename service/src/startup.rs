//! Wiring: builds the parts the configuration asks for and runs them until shutdown.
//!
//! `Application::build` does everything that can fail fast (migrations, binding the gRPC port, creating
//! clients), so a test or `main` learns of a bad setting before anything runs; `run` then drives the
//! parts until the shutdown token is cancelled and waits for each to stop cleanly.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::cache::{OrderCache, WriteMode};
use crate::config::{Component, Settings};
use crate::events::cache_updater::CacheUpdater;
use crate::events::outbox_relay::OutboxRelay;
use crate::events::topics;
pub use crate::faults::TestFaults;
use crate::faults::{AfterCommitPublisher, PublishMode};
use crate::grpc::{self, AuthToken, OrdersApi, health::HealthMonitor};
use crate::reads::OrderReader;
use crate::storage::{self, Storage, StorageError};

/// How long start-up waits for the database to accept the migrations.
const DATABASE_WAIT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("database: {0}")]
    Storage(#[from] StorageError),
    #[error("redis: {0}")]
    Cache(#[from] crate::cache::CacheError),
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("kafka consumer: {0}")]
    Consumer(#[from] crate::kafka::ConsumerError),
    #[error("cannot bind the gRPC address {address}: {source}")]
    Bind {
        address: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Serve(#[from] grpc::ServeError),
    #[error(transparent)]
    Updater(#[from] crate::events::cache_updater::UpdaterError),
}

pub struct Application {
    settings: Settings,
    components: Vec<Component>,
    storage: Storage,
    cache: OrderCache,
    listener: Option<TcpListener>,
    faults: TestFaults,
}

impl Application {
    pub async fn build(settings: Settings, components: Vec<Component>) -> Result<Self, StartupError> {
        Self::build_with_faults(settings, components, TestFaults::default()).await
    }

    pub async fn build_with_faults(
        settings: Settings,
        components: Vec<Component>,
        faults: TestFaults,
    ) -> Result<Self, StartupError> {
        let storage = Storage::connect_lazy(&settings.database_url, settings.database_pool_size)?;
        migrate_when_ready(&storage).await?;
        let cache = OrderCache::connect_lazy(
            &settings.redis_url,
            settings.cache_ttl(),
            WriteMode::CompareAndSet,
        )?;
        let listener = if components.contains(&Component::Api) {
            let address = settings.grpc_addr;
            Some(
                TcpListener::bind(address)
                    .await
                    .map_err(|source| StartupError::Bind { address, source })?,
            )
        } else {
            None
        };
        Ok(Self {
            settings,
            components,
            storage,
            cache,
            listener,
            faults,
        })
    }

    /// The address the gRPC server listens on (the real port when configured with port 0).
    pub fn grpc_addr(&self) -> Option<SocketAddr> {
        self.listener.as_ref().and_then(|l| l.local_addr().ok())
    }

    pub fn storage(&self) -> &Storage {
        &self.storage
    }

    /// Runs every configured part until `shutdown`; if one part fails, the others are stopped too and
    /// the first error is returned.
    pub async fn run(mut self, shutdown: CancellationToken) -> Result<(), StartupError> {
        let mut parts: JoinSet<Result<&'static str, StartupError>> = JoinSet::new();
        let settings = &self.settings;

        // Best effort, in the background: a Kafka that is down must not keep the API from starting.
        let (brokers, topics) = (
            settings.kafka_brokers.clone(),
            [settings.orders_topic.clone(), settings.dead_letter_topic()],
        );
        tokio::spawn(async move {
            let names: Vec<&str> = topics.iter().map(String::as_str).collect();
            if let Err(error) = topics::ensure(&brokers, &names).await {
                tracing::warn!(%error, "could not check the topics; the producer and consumer will retry");
            }
        });

        if let Some(listener) = self.listener.take() {
            let auth = settings.auth_token.clone().and_then(AuthToken::new);
            let fill = self.cache_with(self.faults.fill_write)?;
            let reader = OrderReader::new(self.storage.clone(), self.cache.clone())
                .with_fill(fill, self.faults.fill_delay);
            let mut api = OrdersApi::new(self.storage.clone(), reader, auth);
            if self.faults.publish == PublishMode::AfterCommit {
                api = api.publishing_after_commit(AfterCommitPublisher {
                    producer: topics::producer(&settings.kafka_brokers)?,
                    topic: settings.orders_topic.clone(),
                });
            }
            let (reporter, health) = grpc::health();
            let monitor = HealthMonitor {
                reporter,
                storage: self.storage.clone(),
                cache: self.cache.clone(),
                kafka_brokers: settings.kafka_brokers.clone(),
            };
            let token = shutdown.clone();
            parts.spawn(async move {
                monitor.run(token).await;
                Ok("health")
            });
            let token = shutdown.clone();
            tracing::info!(address = ?listener.local_addr().ok(), "gRPC API listening");
            parts.spawn(async move {
                grpc::serve(listener, api, health, token).await?;
                Ok("api")
            });
        }
        if self.components.contains(&Component::Relay) && self.faults.publish == PublishMode::Outbox {
            let relay = OutboxRelay::new(
                self.storage.clone(),
                topics::producer(&settings.kafka_brokers)?,
                settings.orders_topic.clone(),
            );
            let token = shutdown.clone();
            parts.spawn(async move {
                relay.run(token).await;
                Ok("relay")
            });
        }
        if self.components.contains(&Component::Updater) {
            let batch = settings.updater_batch as usize;
            let consumer = CacheUpdater::consumer(
                &settings.kafka_brokers,
                &settings.updater_group,
                &settings.orders_topic,
                &settings.updater_assignment,
                batch,
                self.faults.offset_policy,
            )?;
            let updater = CacheUpdater::new(
                self.cache_with(self.faults.updater_write)?,
                topics::producer(&settings.kafka_brokers)?,
                settings.dead_letter_topic(),
                batch,
            );
            let token = shutdown.clone();
            parts.spawn(async move {
                updater.run(consumer, token).await?;
                Ok("updater")
            });
        }

        let mut first_error = None;
        while let Some(joined) = parts.join_next().await {
            match joined {
                Ok(Ok(part)) => tracing::debug!(part, "stopped"),
                Ok(Err(error)) => {
                    tracing::error!(%error, "a part of the service failed; stopping the rest");
                    shutdown.cancel();
                    first_error.get_or_insert(error);
                }
                Err(join_error) => {
                    tracing::error!(%join_error, "a part of the service panicked; stopping the rest");
                    shutdown.cancel();
                }
            }
        }
        match first_error {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }
}

impl Application {
    /// The cache, or a copy of it writing in `mode` (a fault).
    fn cache_with(&self, mode: WriteMode) -> Result<OrderCache, StartupError> {
        Ok(match mode {
            WriteMode::CompareAndSet => self.cache.clone(),
            WriteMode::Unchecked => {
                OrderCache::connect_lazy(&self.settings.redis_url, self.settings.cache_ttl(), mode)?
            }
        })
    }
}

/// Applies the migrations, retrying while the database is still starting.
async fn migrate_when_ready(storage: &Storage) -> Result<(), StorageError> {
    let deadline = Instant::now() + DATABASE_WAIT;
    loop {
        match storage.migrate().await {
            Ok(()) => return Ok(()),
            Err(StorageError::Migration(sqlx::migrate::MigrateError::Execute(ref error)))
                if Instant::now() < deadline && storage::is_unavailable(error) =>
            {
                tracing::info!("waiting for the database");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(error) => return Err(error),
        }
    }
}
