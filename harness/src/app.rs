//! The service on a real stack, in this process, in one call: what the service's tests, the load test
//! and the benchmarks start from (zero2prod's `spawn_app`).
//!
//! An [`Environment`] is what one instance needs of a stack: a database of its own, a topic and its
//! dead-letter topic, a consumer group. An [`App`] is the service running in it as tasks of this
//! process, with a client of its API; the environment gives the ground truth beside it: what Redis
//! holds ([`CacheInspector`]) and what the outbox holds (the service's own query). Tests share one
//! stack per test binary ([`shared_stack`]) and isolate themselves by environment; the order ids of
//! each environment come from a range of their own, since the Redis key space is shared.
//!
//! The RPC helpers of [`App`] panic with the call that failed: they are for tests.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use service::config::{Component, Settings};
use service::domain::OrderStatus;
use service::proto::orders::v1 as pb;
use service::proto::orders::v1::order_service_client::OrderServiceClient;
use service::startup::{Application, StartupError};
use service::storage::{Storage, StorageError, outbox};
use service::telemetry::ErrorChain;
use tokio::sync::OnceCell;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

use crate::client::OrdersClient;
use crate::inspect::CacheInspector;
use crate::stack::{Endpoints, RedisMode, Stack, StackError, StackOptions};

/// Every part of the service.
pub const ALL: [Component; 3] = [Component::Api, Component::Relay, Component::Updater];

/// How long a graceful stop may take (the consumer commits and leaves the group, the relay flushes).
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    Stack(#[from] StackError),
    #[error("the service did not start")]
    Startup(#[from] StartupError),
    #[error("storage")]
    Storage(#[from] StorageError),
    #[error("redis")]
    Redis(#[from] redis::RedisError),
    #[error("redis")]
    Cache(#[from] service::cache::CacheError),
    #[error("the service runs without its gRPC API")]
    NoApi,
    #[error("cannot connect to the service at {0}")]
    Connect(SocketAddr, #[source] tonic::transport::Error),
    #[error("the service stopped with an error")]
    Stopped(#[source] StartupError),
    #[error("the service did not stop within {0:?}")]
    StopTimeout(Duration),
    #[error("the service's task panicked")]
    Panicked,
}

/// Names the endpoints file of the stack a test run shares (`stack up`'s output): set by `ci/test.sh`.
pub const SHARED_STACK_VAR: &str = "HARNESS_SHARED_STACK";

/// The stack the tests of this run share, never stopped by them: the one `ci/test.sh` started for
/// every test process of the run ([`SHARED_STACK_VAR`]), else one of this process's own, whose
/// servers die with it (parent-death signal). Tests on it isolate themselves by [`Environment`] and
/// must not stop, kill or wipe its servers: those take [`own_stack`].
pub async fn shared_stack() -> &'static Stack {
    static STACK: OnceCell<Stack> = OnceCell::const_new();
    STACK
        .get_or_init(|| async {
            let Some(file) = std::env::var_os(SHARED_STACK_VAR) else {
                return Stack::start(StackOptions::local(RedisMode::Single))
                    .await
                    .unwrap_or_else(|e| panic!("the test stack did not start: {}", ErrorChain(&e)));
            };
            let attached = match std::fs::read_to_string(&file) {
                Ok(text) => match Endpoints::from_exports(&text) {
                    Ok(endpoints) => Stack::attach(endpoints, StackOptions::local(RedisMode::Single)).await,
                    Err(error) => Err(error),
                },
                Err(error) => Err(StackError::Io(error)),
            };
            attached.unwrap_or_else(|e| {
                panic!(
                    "the shared stack named by {SHARED_STACK_VAR}={}: {}",
                    file.to_string_lossy(),
                    ErrorChain(&e)
                )
            })
        })
        .await
}

/// The cargo-nextest test group of tests that start servers of their own (`.config/nextest.toml`): they
/// run one at a time.
pub const OWN_STACK_GROUP: &str = "own-stack";

/// Panics unless this test runs in the [`OWN_STACK_GROUP`] (when run by cargo-nextest, which names the
/// group in `NEXTEST_TEST_GROUP`): a test that starts a stack of its own and is missing from the
/// group would run beside another one, and two on two cores starve each other's servers.
pub fn require_own_stack_group() {
    if let Ok(group) = std::env::var("NEXTEST_TEST_GROUP") {
        assert_eq!(
            group, OWN_STACK_GROUP,
            "this test starts servers of its own: add it to the {OWN_STACK_GROUP} group's filter in .config/nextest.toml"
        );
    }
}

/// A local stack of its own, for a test that stops, kills or wipes its servers.
pub async fn own_stack() -> Stack {
    own_stack_with(RedisMode::Single).await
}

/// A local stack of its own with one Redis or a Redis Cluster.
pub async fn own_stack_with(redis: RedisMode) -> Stack {
    require_own_stack_group();
    Stack::start(StackOptions::local(redis))
        .await
        .unwrap_or_else(|e| panic!("the test stack did not start: {}", ErrorChain(&e)))
}

/// The whole service, in a fresh environment on the shared stack.
pub async fn spawn_app() -> App {
    let env = Environment::fresh(shared_stack().await).await;
    env.spawn(&ALL)
        .await
        .unwrap_or_else(|e| panic!("spawning the app: {}", ErrorChain(&e)))
}

/// Orders one environment may create before its ids run into the next one's.
const ORDER_IDS_PER_ENVIRONMENT: i64 = 1_000_000;

/// What one instance of the service needs of a stack.
#[derive(Clone)]
pub struct Environment {
    /// The service's settings for it: gRPC on a free loopback port, no metrics endpoint.
    pub settings: Settings,
    pub storage: Storage,
    pub cache: CacheInspector,
}

impl Environment {
    /// Database `name`, topic `<name>-order-events` (3 partitions, as the service creates it), its
    /// dead-letter topic, group `<name>-cache-updater`; migrations applied.
    pub async fn new(stack: &Stack, name: &str) -> Result<Self, AppError> {
        let database_url = stack.create_database(name).await?;
        let mut settings = Settings::for_endpoints(&database_url, stack.redis_url(), stack.kafka_brokers());
        settings.grpc_addr = SocketAddr::from(([127, 0, 0, 1], 0));
        settings.orders_topic = format!("{name}-order-events");
        settings.updater_group = format!("{name}-cache-updater");
        stack
            .create_topic(
                &settings.orders_topic,
                service::events::topics::DEFAULT_PARTITIONS,
            )
            .await?;
        stack.create_topic(&settings.dead_letter_topic(), 1).await?;
        let storage = Storage::connect_lazy(&database_url, 2)?;
        storage.migrate().await?;
        let cache = CacheInspector::connect(stack.redis_url()).await?;
        Ok(Self {
            settings,
            storage,
            cache,
        })
    }

    /// A new environment named after a number unique on the stack (whichever process asks), whose
    /// order ids start in a range of their own: the Redis key space is shared. Panics if the stack
    /// refuses it (for tests).
    pub async fn fresh(stack: &Stack) -> Self {
        let n = stack
            .unique_number()
            .await
            .unwrap_or_else(|e| panic!("a number for a test environment: {}", ErrorChain(&e)));
        let env = Self::new(stack, &format!("t{n}"))
            .await
            .unwrap_or_else(|e| panic!("a test environment: {}", ErrorChain(&e)));
        let first_id = n * ORDER_IDS_PER_ENVIRONMENT + 1;
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "ALTER SEQUENCE orders_id_seq RESTART WITH {first_id}"
        )))
        .execute(env.storage.pool())
        .await
        .expect("offset the order ids");
        env
    }

    /// Runs `components` of the service here, in this process.
    pub async fn spawn(&self, components: &[Component]) -> Result<App, AppError> {
        let application = Application::build(self.settings.clone(), components.to_vec()).await?;
        let address = application.grpc_addr().ok_or(AppError::NoApi)?;
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(application.run(shutdown.clone()));
        let api = OrdersClient::connect(address, Duration::from_secs(20))
            .await
            .map_err(|e| AppError::Connect(address, e))?;
        Ok(App {
            env: self.clone(),
            address,
            api,
            shutdown,
            task,
        })
    }

    /// Events committed and not yet published.
    pub async fn outbox_backlog(&self) -> i64 {
        outbox::backlog(self.storage.pool())
            .await
            .expect("count the outbox")
    }

    /// Polls until the relay deleted every outbox row; returns the rows left at the deadline. (A change
    /// can reach the cache a moment before the relay, having its acknowledgement, deletes its row.)
    pub async fn wait_for_empty_outbox(&self, within: Duration) -> i64 {
        let deadline = Instant::now() + within;
        loop {
            let backlog = self.outbox_backlog().await;
            if backlog == 0 || Instant::now() > deadline {
                return backlog;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// The service running in this process.
pub struct App {
    pub env: Environment,
    pub address: SocketAddr,
    pub api: OrdersClient,
    shutdown: CancellationToken,
    task: JoinHandle<Result<(), StartupError>>,
}

impl App {
    /// `http://127.0.0.1:<port>`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.address)
    }

    /// The generated client, for requests the helpers below do not make (malformed ones, metadata).
    pub fn grpc(&self) -> OrderServiceClient<Channel> {
        self.api.grpc()
    }

    /// A new order of client 42 (two items), as the API answered it.
    pub async fn create_order(&self) -> pb::Order {
        self.api
            .create(42)
            .await
            .unwrap_or_else(|e| panic!("CreateOrder: {e}"))
    }

    /// One order for each of `clients`, all requested at once, as the API answered them, in order.
    pub async fn create_orders_at_once(&self, clients: impl IntoIterator<Item = i64>) -> Vec<pb::Order> {
        let calls = clients.into_iter().map(|client| async move {
            self.api
                .create(client)
                .await
                .unwrap_or_else(|e| panic!("CreateOrder for client {client}: {e}"))
        });
        futures::future::join_all(calls).await
    }

    pub async fn set_status(&self, order_id: i64, status: OrderStatus) -> pb::Order {
        self.api
            .set_status(order_id, status, None)
            .await
            .unwrap_or_else(|e| panic!("UpdateOrderStatus({order_id}, {status}): {e}"))
    }

    /// GetOrder without `min_version`.
    pub async fn get_order(&self, order_id: i64) -> pb::GetOrderResponse {
        self.api
            .get_order(order_id, 0)
            .await
            .unwrap_or_else(|e| panic!("GetOrder({order_id}): {e}"))
    }

    /// Reads the order once so that its entry is cached (a miss fills it), and checks in Redis that
    /// it is: from then on only the updater can bring it to a newer version.
    pub async fn cache_order(&self, order_id: i64) -> pb::Order {
        let order = self
            .get_order(order_id)
            .await
            .order
            .expect("GetOrder answers an order");
        self.wait_until_cached(order_id, order.version, Duration::from_secs(5))
            .await
            .unwrap_or_else(|e| panic!("a read leaves its order cached: {e}"))
    }

    /// Polls Redis itself (never `GetOrder`, whose miss would fill the cache) until it holds `version`
    /// of the order or a newer one.
    pub async fn wait_until_cached(
        &self,
        order_id: i64,
        version: i64,
        within: Duration,
    ) -> Result<pb::Order, String> {
        self.env.cache.wait_for_version(order_id, version, within).await
    }

    /// Events of the app's topic its updater group has not committed (Kafka's own account).
    pub async fn updater_lag(&self) -> i64 {
        let settings = self.env.settings.clone();
        tokio::task::spawn_blocking(move || {
            crate::lag::group_lag(
                &settings.kafka_brokers,
                &settings.updater_group,
                &settings.orders_topic,
            )
        })
        .await
        .expect("the lag query runs")
        .unwrap_or_else(|e| panic!("the updater group's lag: {e:#}"))
    }

    /// Waits until the updater group committed every event of the app's topic: each was handled
    /// (written, or found to need no write) and acknowledged. Panics at the deadline with the lag.
    pub async fn wait_until_handled(&self, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let lag = self.updater_lag().await;
            if lag == 0 {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{lag} events not handled by the updater within {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Graceful shutdown, as on SIGTERM, and the service's own verdict on how it went.
    pub async fn stop(self) -> Result<(), AppError> {
        self.shutdown.cancel();
        match tokio::time::timeout(STOP_TIMEOUT, self.task).await {
            Ok(Ok(Ok(()))) => Ok(()),
            Ok(Ok(Err(error))) => Err(AppError::Stopped(error)),
            Ok(Err(_)) => Err(AppError::Panicked),
            Err(_) => Err(AppError::StopTimeout(STOP_TIMEOUT)),
        }
    }
}
