//! What a consistency run does: a sequence of steps, each a burst of client operations or a fault with
//! the operations that run during it. Steps are self-contained (every fault heals within its own
//! step), so proptest can shrink a failing run by dropping steps and the rest still makes sense.
//!
//! Every step prints as one readable line, which is what a shrunk failure shows.

use std::fmt;

use proptest::prelude::*;

use crate::stack::RedisMode;

pub use service::config::Assignment;

/// One step of a scenario.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Create `count` orders.
    Create { count: u8 },
    /// `count` status changes by `clients` concurrent clients on random orders: mostly legal, some
    /// illegal, some with `expected_version`; reads mixed in, half with `min_version`.
    Traffic { count: u16, clients: u8, seed: u64 },
    /// `clients` clients race to change one order, all with the same `expected_version`.
    Race { clients: u8, seed: u64 },
    /// One `GetOrders` of every order known so far: a miss fills its entry, so that every order is
    /// cached before what follows.
    ReadAll,
    /// A fault, with traffic while it lasts.
    Fault { fault: Fault, traffic: u16, seed: u64 },
}

/// The faults of the environment. Each heals before its step ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// A cache-updater instance joins the group (a rebalance), up to 3.
    AddUpdater,
    /// An updater instance leaves gracefully (a rebalance), down to 1.
    RemoveUpdater,
    /// An updater instance is killed with SIGKILL and a new one starts (rebalance after the session
    /// timeout; unhandled messages are redelivered).
    KillUpdater,
    /// The API+relay instance is killed with SIGKILL and restarted.
    KillApi,
    /// Kafka is stopped during traffic, then started; with `kill_api`, the API+relay instance is also
    /// killed while Kafka is down: between the commit and the publish.
    KafkaDown { kill_api: bool },
    /// A Kafka node killed with SIGKILL, then restarted (data kept): an outage with one node, the loss of
    /// one broker in a three-node cluster.
    KafkaKill,
    /// Redis restarted: its data is wiped.
    RedisRestart,
    /// `FLUSHALL` every 50 to 300 ms while the traffic lasts: every key vanishes at once, again and again.
    RedisFlush,
    /// A small `maxmemory` with `allkeys-lru` during the traffic: Redis evicts keys as it goes.
    RedisEvict,
    /// Redis frozen (SIGSTOP) during traffic; then, with `restart_updater`, an updater is replaced while
    /// its batch is still waiting for Redis; then Redis resumes.
    RedisPause { restart_updater: bool },
    /// Redis refuses every script call (an ACL denies `EVAL` and `EVALSHA`: the updater's writes and
    /// the reads' fills) while orders it caches change, and each updater that received changes it
    /// could not write is replaced; then the scripts are allowed again. Unlike a pause, a refused write
    /// never lands later (a frozen Redis runs what waited in its socket buffers when it resumes), so an
    /// updater that acknowledged what it could not write loses those changes every time.
    RedisRefusesWrites,
    /// PostgreSQL restarted during traffic.
    PostgresRestart,
    /// Redis Cluster: a master killed with SIGKILL during traffic; its replica takes over its slots
    /// (writes it had not yet copied are lost); then the node starts again and rejoins as a replica.
    RedisMasterKill,
    /// Redis Cluster: a master frozen (SIGSTOP) during traffic until its replica takes over, then
    /// resumed: it finds itself replaced and rejoins as a replica.
    RedisMasterPause,
}

/// A fault's kind, without its parameters: what reports count, and what `--faults` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FaultKind {
    AddUpdater,
    RemoveUpdater,
    KillUpdater,
    KillApi,
    KafkaDown,
    KafkaKill,
    RedisRestart,
    RedisFlush,
    RedisEvict,
    RedisPause,
    RedisRefusesWrites,
    PostgresRestart,
    RedisMasterKill,
    RedisMasterPause,
}

impl FaultKind {
    /// Whether cache entries may vanish while the fault lasts: wiped, flushed, evicted, or not yet
    /// copied to a replica that took over.
    pub fn may_lose_entries(self) -> bool {
        matches!(
            self,
            Self::RedisRestart
                | Self::RedisFlush
                | Self::RedisEvict
                | Self::RedisMasterKill
                | Self::RedisMasterPause
        )
    }

    pub const ALL: [Self; 14] = [
        Self::AddUpdater,
        Self::RemoveUpdater,
        Self::KillUpdater,
        Self::KillApi,
        Self::KafkaDown,
        Self::KafkaKill,
        Self::RedisRestart,
        Self::RedisFlush,
        Self::RedisEvict,
        Self::RedisPause,
        Self::RedisRefusesWrites,
        Self::PostgresRestart,
        Self::RedisMasterKill,
        Self::RedisMasterPause,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::AddUpdater => "add-updater",
            Self::RemoveUpdater => "remove-updater",
            Self::KillUpdater => "kill-updater",
            Self::KillApi => "kill-api",
            Self::KafkaDown => "kafka-down",
            Self::KafkaKill => "kafka-kill",
            Self::RedisRestart => "redis-restart",
            Self::RedisFlush => "redis-flush",
            Self::RedisEvict => "redis-evict",
            Self::RedisPause => "redis-pause",
            Self::RedisRefusesWrites => "redis-refuses-writes",
            Self::PostgresRestart => "postgres-restart",
            Self::RedisMasterKill => "redis-master-kill",
            Self::RedisMasterPause => "redis-master-pause",
        }
    }
}

impl FaultKind {
    /// Whether the fault can be injected where the cache runs on `redis`: the faults of one Redis
    /// process (restart, eviction, pause) need that one Redis, a master's failover needs a cluster;
    /// `FLUSHALL` goes to every master of a cluster.
    pub fn runs_on(self, redis: RedisMode) -> bool {
        match self {
            Self::RedisRestart | Self::RedisEvict | Self::RedisPause | Self::RedisRefusesWrites => {
                redis == RedisMode::Single
            }
            Self::RedisMasterKill | Self::RedisMasterPause => redis == RedisMode::Cluster,
            _ => true,
        }
    }
}

impl fmt::Display for FaultKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl Fault {
    pub fn kind(self) -> FaultKind {
        match self {
            Self::AddUpdater => FaultKind::AddUpdater,
            Self::RemoveUpdater => FaultKind::RemoveUpdater,
            Self::KillUpdater => FaultKind::KillUpdater,
            Self::KillApi => FaultKind::KillApi,
            Self::KafkaDown { .. } => FaultKind::KafkaDown,
            Self::KafkaKill => FaultKind::KafkaKill,
            Self::RedisRestart => FaultKind::RedisRestart,
            Self::RedisFlush => FaultKind::RedisFlush,
            Self::RedisEvict => FaultKind::RedisEvict,
            Self::RedisPause { .. } => FaultKind::RedisPause,
            Self::RedisRefusesWrites => FaultKind::RedisRefusesWrites,
            Self::PostgresRestart => FaultKind::PostgresRestart,
            Self::RedisMasterKill => FaultKind::RedisMasterKill,
            Self::RedisMasterPause => FaultKind::RedisMasterPause,
        }
    }

    /// Whether the fault can be injected where the cache runs on `redis` ([`FaultKind::runs_on`]).
    pub fn runs_on(self, redis: RedisMode) -> bool {
        self.kind().runs_on(redis)
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Create { count } => write!(f, "create {count} orders"),
            Self::Traffic { count, clients, seed } => {
                write!(
                    f,
                    "{count} status changes and reads by {clients} clients (seed {seed})"
                )
            }
            Self::Race { clients, seed } => {
                write!(
                    f,
                    "{clients} clients race on one order with one expected_version (seed {seed})"
                )
            }
            Self::ReadAll => write!(f, "read every order once"),
            Self::Fault { fault, traffic, seed } => {
                let what = match fault {
                    Fault::AddUpdater => "add a cache-updater instance".to_string(),
                    Fault::RemoveUpdater => "remove a cache-updater instance".to_string(),
                    Fault::KillUpdater => "kill -9 a cache-updater instance and start another".to_string(),
                    Fault::KillApi => "kill -9 the API+relay instance and restart it".to_string(),
                    Fault::KafkaDown { kill_api: false } => "stop Kafka, then start it".to_string(),
                    Fault::KafkaDown { kill_api: true } => {
                        "stop Kafka, kill -9 the API+relay instance (committed, not published), restart both"
                            .to_string()
                    }
                    Fault::KafkaKill => "kill -9 a Kafka node, then restart it".to_string(),
                    Fault::RedisRestart => "restart Redis (data wiped)".to_string(),
                    Fault::RedisFlush => "FLUSHALL Redis every few hundred ms".to_string(),
                    Fault::RedisEvict => "make Redis evict keys (small maxmemory, allkeys-lru)".to_string(),
                    Fault::RedisPause {
                        restart_updater: false,
                    } => "pause Redis (SIGSTOP), then resume".to_string(),
                    Fault::RedisPause {
                        restart_updater: true,
                    } => "pause Redis, replace a cache-updater instance mid-batch, resume Redis".to_string(),
                    Fault::RedisRefusesWrites => {
                        "Redis refuses scripts, each cache-updater instance holding a batch replaced, scripts allowed again"
                            .to_string()
                    }
                    Fault::PostgresRestart => "restart PostgreSQL".to_string(),
                    Fault::RedisMasterKill => {
                        "kill -9 a Redis Cluster master, wait for its replica to take over, start it again"
                            .to_string()
                    }
                    Fault::RedisMasterPause => {
                        "pause a Redis Cluster master until its replica takes over, then resume it"
                            .to_string()
                    }
                };
                write!(f, "{what}, with {traffic} status changes meanwhile (seed {seed})")
            }
        }
    }
}

/// A whole run: the group's assignment strategy and the steps.
#[derive(Debug, Clone)]
pub struct Scenario {
    pub assignment: Assignment,
    pub steps: Vec<Step>,
}

impl fmt::Display for Scenario {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "scenario ({} assignment):", self.assignment.name())?;
        for (index, step) in self.steps.iter().enumerate() {
            writeln!(f, "  {:>2}. {step}", index + 1)?;
        }
        Ok(())
    }
}

/// The faults of a Redis Cluster run: those of [`fault_strategy`] that need no single Redis, and a
/// master killed. (A master paused until replaced is left to the soak command: see
/// docs/CONSISTENCY.md.)
pub fn cluster_fault_strategy() -> impl Strategy<Value = Fault> {
    prop_oneof![
        1 => Just(Fault::AddUpdater),
        1 => Just(Fault::KillUpdater),
        1 => Just(Fault::KillApi),
        1 => any::<bool>().prop_map(|kill_api| Fault::KafkaDown { kill_api }),
        1 => Just(Fault::RedisFlush),
        2 => Just(Fault::RedisMasterKill),
    ]
}

pub fn fault_strategy() -> impl Strategy<Value = Fault> {
    prop_oneof![
        Just(Fault::AddUpdater),
        Just(Fault::RemoveUpdater),
        Just(Fault::KillUpdater),
        Just(Fault::KillApi),
        any::<bool>().prop_map(|kill_api| Fault::KafkaDown { kill_api }),
        Just(Fault::KafkaKill),
        Just(Fault::RedisRestart),
        Just(Fault::RedisFlush),
        Just(Fault::RedisEvict),
        any::<bool>().prop_map(|restart_updater| Fault::RedisPause { restart_updater }),
        Just(Fault::RedisRefusesWrites),
        Just(Fault::PostgresRestart),
    ]
}

pub fn step_strategy(faults: BoxedStrategy<Fault>) -> impl Strategy<Value = Step> {
    prop_oneof![
        2 => (1u8..=5).prop_map(|count| Step::Create { count }),
        4 => (20u16..=120, 1u8..=4, any::<u64>()).prop_map(|(count, clients, seed)| Step::Traffic { count, clients, seed }),
        1 => (2u8..=4, any::<u64>()).prop_map(|(clients, seed)| Step::Race { clients, seed }),
        3 => (faults, 10u16..=60, any::<u64>()).prop_map(|(fault, traffic, seed)| Step::Fault { fault, traffic, seed }),
    ]
}

/// Scenarios of `steps` steps, always starting with some orders, drawing faults from `faults`.
pub fn scenario_strategy(
    steps: std::ops::RangeInclusive<usize>,
    faults: BoxedStrategy<Fault>,
) -> impl Strategy<Value = Scenario> {
    let assignment = prop_oneof![Just(Assignment::Range), Just(Assignment::CooperativeSticky)];
    (
        assignment,
        3u8..=8,
        proptest::collection::vec(step_strategy(faults), steps),
    )
        .prop_map(|(assignment, first_orders, rest)| {
            let mut steps = vec![Step::Create { count: first_orders }];
            steps.extend(rest);
            Scenario { assignment, steps }
        })
}
