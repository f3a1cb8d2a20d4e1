//! Configuration: flags, each with an environment variable and a default that works on a developer's
//! machine (the local stack's usual endpoints aside, which `ci/run.sh` exports).

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::events::outbox_relay::DEFAULT_POLL_INTERVAL;

#[derive(Debug, Parser)]
#[command(
    name = "orders-service",
    version,
    about = "Orders gRPC service with a Kafka-fed Redis cache"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,

    #[command(flatten)]
    pub settings: Settings,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the service (the default): the API, the outbox relay and the cache updater, or some of them.
    Run {
        /// Parts to run; repeat or separate with commas. Scale them apart by running several instances.
        #[arg(long, value_enum, value_delimiter = ',', default_values_t = [Component::Api, Component::Relay, Component::Updater])]
        components: Vec<Component>,
    },
    /// Apply the database migrations and exit.
    Migrate,
    /// Ask the service at GRPC_ADDR, through `grpc.health.v1`, whether it serves: exit status 0 if it
    /// does, 1 if not or if it does not answer within 3 s. For container health checks.
    HealthCheck {
        /// The health service name to ask about (`""`: the whole server, Redis and Kafka included).
        #[arg(long, default_value = "orders.v1.OrderService")]
        service: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Component {
    /// The gRPC API (with reflection and health).
    Api,
    /// The outbox relay: database -> Kafka.
    Relay,
    /// The cache updater: Kafka -> Redis.
    Updater,
}

/// How a consumer group assigns partitions to its members.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Assignment {
    /// Incremental (KIP-429): a rebalance moves only the partitions that change owner.
    CooperativeSticky,
    /// Eager: every rebalance revokes everything first.
    Range,
    /// Eager, round robin.
    Roundrobin,
    /// Kafka 4's broker-side protocol (KIP-848): the broker assigns, incrementally.
    Consumer,
}

impl Assignment {
    /// The flag's value: librdkafka's `partition.assignment.strategy`, or `consumer`.
    pub fn name(self) -> &'static str {
        match self {
            Self::CooperativeSticky => "cooperative-sticky",
            Self::Range => "range",
            Self::Roundrobin => "roundrobin",
            Self::Consumer => "consumer",
        }
    }
}

#[derive(Debug, Clone, Args)]
pub struct Settings {
    /// PostgreSQL URL.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/postgres"
    )]
    pub database_url: String,

    /// Redis URL.
    #[arg(long, env = "REDIS_URL", default_value = "redis://127.0.0.1:6379/")]
    pub redis_url: String,

    /// Kafka bootstrap servers, `host:port[,host:port...]`.
    #[arg(long, env = "KAFKA_BROKERS", default_value = "127.0.0.1:9092")]
    pub kafka_brokers: String,

    /// Address of the gRPC server.
    #[arg(long, env = "GRPC_ADDR", default_value = "127.0.0.1:50051")]
    pub grpc_addr: SocketAddr,

    /// Address of the Prometheus metrics endpoint (`/metrics`); unset: no endpoint.
    #[arg(long, env = "METRICS_ADDR")]
    pub metrics_addr: Option<SocketAddr>,

    /// Topic of order events.
    #[arg(long, env = "ORDERS_TOPIC", default_value = "order-events")]
    pub orders_topic: String,

    /// Topic for events the updater cannot decode; default: `<ORDERS_TOPIC>.dlq`.
    #[arg(long, env = "DEAD_LETTER_TOPIC")]
    pub dead_letter_topic: Option<String>,

    /// Consumer group of the cache updaters.
    #[arg(long, env = "UPDATER_GROUP", default_value = "orders-cache-updater")]
    pub updater_group: String,

    /// Partition assignment of the updater group.
    #[arg(long, env = "UPDATER_ASSIGNMENT", value_enum, default_value_t = Assignment::CooperativeSticky)]
    pub updater_assignment: Assignment,

    /// Most messages the updater reads from Kafka at once (ChannelConsumer's consume_size).
    #[arg(long, env = "UPDATER_BATCH", default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub updater_batch: u32,

    /// Time to live of cached orders, in seconds.
    #[arg(long, env = "CACHE_TTL_SECONDS", default_value_t = 3600, value_parser = clap::value_parser!(u64).range(1..))]
    pub cache_ttl_seconds: u64,

    /// When set, CreateOrder and UpdateOrderStatus require `authorization: Bearer <token>`.
    #[arg(long, env = "AUTH_TOKEN", hide_env_values = true)]
    pub auth_token: Option<String>,

    /// Most OrderService calls in progress at once; beyond it a call waits up to 50 ms for room, then
    /// is refused with RESOURCE_EXHAUSTED (health checks and reflection are not counted).
    #[arg(long, env = "MAX_CONCURRENT_REQUESTS", default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub max_concurrent_requests: u32,

    /// How often the outbox relay looks for events when no commit notified it, in milliseconds (a
    /// commit wakes it at once through `LISTEN`; the poll is the fallback).
    #[arg(long, env = "OUTBOX_POLL_MS", default_value_t = DEFAULT_POLL_INTERVAL.as_millis() as u64, value_parser = clap::value_parser!(u64).range(10..=3_600_000))]
    pub outbox_poll_ms: u64,

    /// Connections in the PostgreSQL pool. One in eight writes batches of creates, one in eight batches
    /// of status changes (`storage::group_commit`); the rest serve reads.
    #[arg(long, env = "DATABASE_POOL_SIZE", default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub database_pool_size: u32,
}

impl Settings {
    pub fn cache_ttl(&self) -> Duration {
        Duration::from_secs(self.cache_ttl_seconds)
    }

    pub fn dead_letter_topic(&self) -> String {
        self.dead_letter_topic
            .clone()
            .unwrap_or_else(|| format!("{}.dlq", self.orders_topic))
    }

    /// Settings for tests and tools: the given endpoints, everything else at its default.
    pub fn for_endpoints(database_url: &str, redis_url: &str, kafka_brokers: &str) -> Self {
        let mut cli = Cli::parse_from(["orders-service"]);
        cli.settings.database_url = database_url.to_string();
        cli.settings.redis_url = redis_url.to_string();
        cli.settings.kafka_brokers = kafka_brokers.to_string();
        cli.settings.auth_token = None;
        cli.settings.metrics_addr = None;
        cli.settings
    }
}
