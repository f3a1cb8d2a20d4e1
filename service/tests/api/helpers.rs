//! Test helpers: the real service, in-process or as its binary, against a real stack.
//!
//! Most tests share one stack per test binary and isolate themselves: each gets its own database, its
//! own topics and consumer group, and order ids from its own range (so their Redis keys `order:{id}`
//! never collide). Tests that stop or kill a server start a stack of their own.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use harness::{Backend, Stack, StackOptions};
use service::config::{Component, Settings};
use service::proto::orders::v1 as pb;
use service::proto::orders::v1::order_service_client::OrderServiceClient;
use service::startup::{Application, TestFaults};
use tokio::sync::OnceCell;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

pub const ALL: [Component; 3] = [Component::Api, Component::Relay, Component::Updater];

/// The stack shared by the tests of this binary (never stopped by them). Its processes die with the
/// test binary (parent-death signal); its directory is removed by the next run.
pub async fn shared_stack() -> &'static Stack {
    static STACK: OnceCell<Stack> = OnceCell::const_new();
    STACK.get_or_init(|| async { start_stack().await }).await
}

/// A stack for one test that injects faults into it.
pub async fn own_stack() -> Stack {
    start_stack().await
}

async fn start_stack() -> Stack {
    let options = StackOptions {
        backend: Some(Backend::Local),
        kafka_nodes: 1,
        topics: vec![],
    };
    Stack::start(options)
        .await
        .unwrap_or_else(|e| panic!("the test stack did not start: {e}"))
}

/// The database, topics and group of one test.
#[derive(Clone)]
pub struct TestEnv {
    pub settings: Settings,
}

static NEXT_ENV: AtomicI64 = AtomicI64::new(1);

impl TestEnv {
    pub async fn new(stack: &Stack) -> Self {
        let n = NEXT_ENV.fetch_add(1, Ordering::Relaxed);
        let name = format!("t{}_{}", std::process::id(), n);
        let database_url = stack
            .create_database(&name)
            .await
            .expect("create the test database");
        let mut settings = Settings::for_endpoints(&database_url, stack.redis_url(), stack.kafka_brokers());
        settings.grpc_addr = "127.0.0.1:0".parse().expect("a socket address");
        settings.orders_topic = format!("orders-{name}");
        settings.updater_group = format!("updater-{name}");
        stack
            .create_topic(&settings.orders_topic, 3)
            .await
            .expect("create the test topic");
        stack
            .create_topic(&settings.dead_letter_topic(), 1)
            .await
            .expect("create the dead-letter topic");
        let env = Self { settings };
        env.migrate_and_offset_ids(n).await;
        env
    }

    /// Each test's orders get ids from a range of their own: the Redis key space is shared.
    async fn migrate_and_offset_ids(&self, n: i64) {
        let storage = service::storage::Storage::connect_lazy(&self.settings.database_url, 1).expect("pool");
        storage.migrate().await.expect("migrations");
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "ALTER SEQUENCE orders_id_seq RESTART WITH {}",
            (std::process::id() as i64 % 1000) * 1_000_000_000 + n * 1_000_000 + 1
        )))
        .execute(storage.pool())
        .await
        .expect("offset the order ids");
    }

    pub fn pool(&self) -> sqlx::PgPool {
        sqlx::PgPool::connect_lazy(&self.settings.database_url).expect("pool")
    }

    pub fn redis(&self) -> redis::Client {
        redis::Client::open(self.settings.redis_url.as_str()).expect("redis url")
    }
}

/// The service running in this process.
pub struct TestApp {
    pub address: SocketAddr,
    pub client: OrderServiceClient<Channel>,
    shutdown: CancellationToken,
    task: JoinHandle<Result<(), service::startup::StartupError>>,
}

impl TestApp {
    pub async fn spawn(env: &TestEnv) -> Self {
        Self::spawn_with(env, &ALL, TestFaults::default()).await
    }

    pub async fn spawn_with(env: &TestEnv, components: &[Component], faults: TestFaults) -> Self {
        let application = Application::build_with_faults(env.settings.clone(), components.to_vec(), faults)
            .await
            .expect("the service builds");
        let address = application.grpc_addr().expect("the API runs");
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(application.run(shutdown.clone()));
        let client = connect(address).await;
        Self {
            address,
            client,
            shutdown,
            task,
        }
    }

    /// Graceful shutdown, as on SIGTERM; panics if the service reports an error.
    pub async fn stop(self) {
        self.shutdown.cancel();
        match tokio::time::timeout(Duration::from_secs(30), self.task).await {
            Ok(Ok(Ok(()))) => {}
            other => panic!("the service did not stop cleanly: {other:?}"),
        }
    }
}

pub async fn connect(address: SocketAddr) -> OrderServiceClient<Channel> {
    let endpoint = format!("http://{address}");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match OrderServiceClient::connect(endpoint.clone()).await {
            Ok(client) => return client,
            Err(error) if Instant::now() > deadline => panic!("cannot connect to {endpoint}: {error}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// The `orders-service` binary, for tests that kill it with SIGKILL.
pub struct ServiceProcess {
    child: Child,
}

impl ServiceProcess {
    pub fn start(env: &TestEnv, components: &str, grpc_addr: SocketAddr) -> Self {
        let settings = &env.settings;
        let child = Command::new(env!("CARGO_BIN_EXE_orders-service"))
            .args(["run", "--components", components])
            .env("DATABASE_URL", &settings.database_url)
            .env("REDIS_URL", &settings.redis_url)
            .env("KAFKA_BROKERS", &settings.kafka_brokers)
            .env("ORDERS_TOPIC", &settings.orders_topic)
            .env("UPDATER_GROUP", &settings.updater_group)
            .env("GRPC_ADDR", grpc_addr.to_string())
            .env_remove("AUTH_TOKEN")
            .env_remove("METRICS_ADDR")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start orders-service");
        Self { child }
    }

    /// SIGKILL: no shutdown, no flush, no commit.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ServiceProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A free loopback address.
pub fn free_address() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("address")
}

pub fn item(sku_id: i64, quantity: i32, units: i64, nanos: i32) -> pb::OrderItem {
    pb::OrderItem {
        sku_id,
        quantity,
        price: Some(service::proto::google::r#type::Money {
            currency_code: "EUR".into(),
            units,
            nanos,
        }),
    }
}

pub fn create_request(client_id: i64) -> pb::CreateOrderRequest {
    pb::CreateOrderRequest {
        client_id,
        items: vec![item(100, 2, 3, 500_000_000), item(200, 1, 10, 0)],
        idempotency_key: String::new(),
    }
}

pub async fn create_order(client: &mut OrderServiceClient<Channel>) -> pb::Order {
    client
        .create_order(create_request(42))
        .await
        .expect("CreateOrder")
        .into_inner()
        .order
        .expect("an order")
}

pub async fn set_status(
    client: &mut OrderServiceClient<Channel>,
    order_id: i64,
    status: pb::OrderStatus,
) -> pb::Order {
    client
        .update_order_status(pb::UpdateOrderStatusRequest {
            order_id,
            status: status.into(),
            expected_version: None,
        })
        .await
        .unwrap_or_else(|e| panic!("UpdateOrderStatus({order_id}, {status:?}): {e}"))
        .into_inner()
        .order
        .expect("an order")
}

/// GetOrder with no `min_version`; panics with `context` if the call fails.
pub async fn get_order(
    client: &mut OrderServiceClient<Channel>,
    order_id: i64,
    context: &str,
) -> pb::GetOrderResponse {
    client
        .get_order(pb::GetOrderRequest {
            order_id,
            min_version: 0,
        })
        .await
        .unwrap_or_else(|status| panic!("{context}: {status}"))
        .into_inner()
}

/// Polls GetOrder until the cache answers `version` or newer, or `within` passes.
pub async fn wait_for_cache(
    client: &mut OrderServiceClient<Channel>,
    order_id: i64,
    version: i64,
    within: Duration,
) -> Result<pb::Order, String> {
    let deadline = Instant::now() + within;
    let mut last = String::from("no answer");
    while Instant::now() < deadline {
        match client
            .get_order(pb::GetOrderRequest {
                order_id,
                min_version: 0,
            })
            .await
        {
            Ok(response) => {
                let response = response.into_inner();
                let order = response.order.ok_or("GetOrder answered no order")?;
                if response.source == pb::Source::Cache as i32 && order.version >= version {
                    return Ok(order);
                }
                last = format!("version {} from {:?}", order.version, response.source);
            }
            Err(status) => last = status.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(format!(
        "order {order_id} version {version} not cached within {within:?}; last: {last}"
    ))
}

/// The raw cached value of an order.
pub async fn cached_raw(env: &TestEnv, order_id: i64) -> Option<Vec<u8>> {
    let mut redis = env
        .redis()
        .get_multiplexed_async_connection()
        .await
        .expect("redis");
    redis::cmd("GET")
        .arg(format!("order:{order_id}"))
        .query_async(&mut redis)
        .await
        .expect("GET")
}

pub async fn outbox_backlog(env: &TestEnv) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM outbox")
        .fetch_one(&env.pool())
        .await
        .expect("count the outbox")
}

/// Polls until the relay deleted every outbox row; returns the rows left at the deadline.
/// (A change can reach the cache a moment before the relay, having its acknowledgement, deletes it.)
pub async fn wait_for_empty_outbox(env: &TestEnv, within: Duration) -> i64 {
    let deadline = Instant::now() + within;
    loop {
        let backlog = outbox_backlog(env).await;
        if backlog == 0 || Instant::now() > deadline {
            return backlog;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
