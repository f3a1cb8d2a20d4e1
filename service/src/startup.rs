//! Wiring: builds the parts the configuration asks for and supervises them until shutdown.
//!
//! `Application::build` does everything that can fail fast (migrations, binding the gRPC port, creating
//! clients), so a test or `main` learns of a bad setting before anything runs. `run` then spawns one
//! task per part, the API (with its health monitor), the outbox relay and the cache updater, under a
//! [`Supervisor`] that stops them all when one fails and waits for each to stop cleanly.
//!
//! The parts are built by public methods ([`Application::spawn_api`], [`Application::relay`],
//! [`Application::updater`], [`Application::consumer`]), so that another composition, the consistency
//! harness's nodes with one part deliberately broken, is assembled from the same pieces without
//! start-up knowing of it.

use std::future::Future;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::cache::OrderCache;
use crate::config::{Component, Settings};
use crate::events::cache_updater::{CacheUpdater, EventConsumer, UpdateCache};
use crate::events::outbox_relay::OutboxRelay;
use crate::events::topics;
use crate::grpc::{self, Admission, AuthToken, OrdersApi, health::HealthMonitor};
use crate::reads::{OrderReader, ReadThrough};
use crate::storage::{self, Storage, StorageError};
use crate::telemetry::ErrorChain;

/// How long start-up waits for the database to accept the migrations.
const DATABASE_WAIT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("database")]
    Storage(#[from] StorageError),
    #[error("redis")]
    Cache(#[from] crate::cache::CacheError),
    #[error("kafka")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("kafka consumer")]
    Consumer(#[from] crate::kafka::ConsumerError),
    #[error("cannot bind the gRPC address {address}")]
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
}

impl Application {
    pub async fn build(settings: Settings, components: Vec<Component>) -> Result<Self, StartupError> {
        let storage = Storage::connect_lazy(&settings.database_url, settings.database_pool_size)?;
        migrate_when_ready(&storage).await?;
        let cache = OrderCache::connect_lazy(&settings.redis_url, settings.cache_ttl())?;
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
        })
    }

    /// The address the gRPC server listens on (the real port when configured with port 0).
    pub fn grpc_addr(&self) -> Option<SocketAddr> {
        self.listener.as_ref().and_then(|l| l.local_addr().ok())
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    pub fn storage(&self) -> &Storage {
        &self.storage
    }

    pub fn cache(&self) -> &OrderCache {
        &self.cache
    }

    /// Whether the configuration asks for `component`.
    pub fn runs(&self, component: Component) -> bool {
        self.components.contains(&component)
    }

    /// Runs every configured part until `shutdown`; if one part fails, the others are stopped too and
    /// the first error is returned.
    pub async fn run(mut self, shutdown: CancellationToken) -> Result<(), StartupError> {
        let mut parts = self.supervisor(shutdown);
        let reader = OrderReader::new(self.storage.clone(), self.cache.clone());
        self.spawn_api(&mut parts, reader);
        if self.runs(Component::Relay) {
            let relay = self.relay()?;
            let token = parts.token();
            parts.spawn(Component::Relay, async move {
                relay.run(token).await;
                Ok(())
            });
        }
        if self.runs(Component::Updater) {
            let updater = self.updater(self.cache.clone())?;
            let consumer = self.consumer()?;
            let token = parts.token();
            parts.spawn(Component::Updater, async move {
                Ok(updater.run(consumer, token).await?)
            });
        }
        parts.wait().await
    }

    /// A supervisor for this application's parts; it also makes sure, in the background, that the
    /// topics exist (a Kafka that is down must not keep the API from starting).
    pub fn supervisor(&self, shutdown: CancellationToken) -> Supervisor {
        let brokers = self.settings.kafka_brokers.clone();
        let names = [
            self.settings.orders_topic.clone(),
            self.settings.dead_letter_topic(),
        ];
        tokio::spawn(async move {
            let names: Vec<&str> = names.iter().map(String::as_str).collect();
            if let Err(error) = topics::ensure(&brokers, &names).await {
                tracing::warn!(error = %ErrorChain(&error), "could not check the topics; the producer and consumer will retry");
            }
        });
        Supervisor::new(shutdown)
    }

    /// Spawns the gRPC API reading through `reader`, and its health monitor, if the configuration asks
    /// for the API (once: the listener goes with it).
    pub fn spawn_api<C: ReadThrough>(&mut self, parts: &mut Supervisor, reader: OrderReader<C>) {
        let Some(listener) = self.listener.take() else {
            return;
        };
        let auth = self.settings.auth_token.clone().and_then(AuthToken::new);
        let admission = Admission::new(self.settings.max_concurrent_requests as usize);
        let api = OrdersApi::new(self.storage.clone(), reader, auth, admission);
        let (reporter, health) = grpc::health();
        let monitor = HealthMonitor {
            reporter,
            storage: self.storage.clone(),
            cache: self.cache.clone(),
            kafka_brokers: self.settings.kafka_brokers.clone(),
        };
        let token = parts.token();
        parts.spawn(Component::Api, async move {
            monitor.run(token).await;
            Ok(())
        });
        let token = parts.token();
        tracing::info!(address = ?listener.local_addr().ok(), "gRPC API listening");
        parts.spawn(Component::Api, async move {
            Ok(grpc::serve(listener, api, health, token).await?)
        });
    }

    /// The outbox relay.
    pub fn relay(&self) -> Result<OutboxRelay, StartupError> {
        Ok(OutboxRelay::new(
            self.storage.clone(),
            topics::producer(&self.settings.kafka_brokers)?,
            self.settings.orders_topic.clone(),
        )
        .poll_interval(Duration::from_millis(self.settings.outbox_poll_ms)))
    }

    /// The cache updater, writing through `cache`.
    pub fn updater<W: UpdateCache>(&self, cache: W) -> Result<CacheUpdater<W>, StartupError> {
        Ok(CacheUpdater::new(
            cache,
            topics::producer(&self.settings.kafka_brokers)?,
            self.settings.dead_letter_topic(),
            self.settings.updater_batch as usize,
        ))
    }

    /// The updater's consumer: it joins the group when first polled.
    pub fn consumer(&self) -> Result<EventConsumer, StartupError> {
        let settings = &self.settings;
        Ok(CacheUpdater::<OrderCache>::consumer(
            &settings.kafka_brokers,
            &settings.updater_group,
            &settings.orders_topic,
            settings.updater_assignment,
            settings.updater_batch as usize,
        )?)
    }
}

/// Runs the parts of a service as tasks: when one fails or panics, it cancels the shutdown token so
/// the others stop too, then waits for all of them.
pub struct Supervisor {
    parts: JoinSet<(Component, Result<(), StartupError>)>,
    shutdown: CancellationToken,
}

impl Supervisor {
    pub fn new(shutdown: CancellationToken) -> Self {
        Self {
            parts: JoinSet::new(),
            shutdown,
        }
    }

    /// The token every part watches.
    pub fn token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    pub fn spawn(
        &mut self,
        component: Component,
        part: impl Future<Output = Result<(), StartupError>> + Send + 'static,
    ) {
        self.parts.spawn(async move { (component, part.await) });
    }

    /// Waits until every part stopped; the first error, if any.
    pub async fn wait(mut self) -> Result<(), StartupError> {
        let mut first_error = None;
        while let Some(joined) = self.parts.join_next().await {
            match joined {
                Ok((component, Ok(()))) => tracing::debug!(?component, "stopped"),
                Ok((component, Err(error))) => {
                    tracing::error!(?component, error = %ErrorChain(&error), "a part of the service failed; stopping the rest");
                    self.shutdown.cancel();
                    first_error.get_or_insert(error);
                }
                Err(join_error) => {
                    tracing::error!(%join_error, "a part of the service panicked; stopping the rest");
                    self.shutdown.cancel();
                }
            }
        }
        match first_error {
            Some(error) => Err(error),
            None => Ok(()),
        }
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
