//! The record of a run: every client operation with its start, end and outcome; every fault's window;
//! and what the cache held over time, per order, as the sampler saw it.
//!
//! Times are offsets from the start of the run. The cache series keeps only changes (a new version, or
//! the key appearing or disappearing), which is all the monotonicity and staleness checks need and keeps a
//! long soak's memory small.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use service::proto::orders::v1 as pb;

use super::scenario::FaultKind;

#[derive(Debug, Clone)]
pub enum Op {
    Create,
    Update {
        order_id: i64,
        to: i32,
        expected_version: Option<i64>,
    },
    Get {
        order_id: i64,
        min_version: i64,
    },
    GetMany {
        order_ids: Vec<i64>,
    },
}

#[derive(Debug, Clone)]
pub enum Outcome {
    /// Create or update succeeded: the order as the service returned it.
    Written(pb::Order),
    /// Reads: the orders returned, each with its source.
    Read(Vec<(pb::Order, i32)>),
    /// The service answered with an error status.
    Refused { code: tonic::Code, message: String },
    /// No answer (transport error, timeout, UNAVAILABLE): the operation may or may not have happened.
    Unknown(String),
}

#[derive(Debug, Clone)]
pub struct OpRecord {
    pub client: usize,
    pub op: Op,
    pub start: Duration,
    pub end: Duration,
    pub outcome: Outcome,
}

/// From the injection of a fault until the system worked again (a fresh write reached the cache
/// through every partition).
#[derive(Debug, Clone)]
pub struct FaultWindow {
    pub kind: FaultKind,
    pub start: Duration,
    pub end: Duration,
}

/// One change of an order's cache entry: from `at` on, the cache held `version` (`None`: nothing).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheChange {
    pub at: Duration,
    pub version: Option<i64>,
}

#[derive(Debug, Default)]
struct Data {
    ops: Vec<OpRecord>,
    faults: Vec<FaultWindow>,
    cache: HashMap<i64, Vec<CacheChange>>,
    evicted_keys: u64,
}

/// Shared by the clients, the fault injector and the sampler of one run.
#[derive(Debug)]
pub struct History {
    started: Instant,
    data: Mutex<Data>,
}

impl History {
    pub fn new() -> Self {
        Self {
            started: Instant::now(),
            data: Mutex::new(Data::default()),
        }
    }

    pub fn now(&self) -> Duration {
        self.started.elapsed()
    }

    fn with<T>(&self, action: impl FnOnce(&mut Data) -> T) -> T {
        let mut data = self.data.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        action(&mut data)
    }

    pub fn record_op(&self, record: OpRecord) {
        self.with(|data| data.ops.push(record));
    }

    pub fn record_fault(&self, window: FaultWindow) {
        self.with(|data| data.faults.push(window));
    }

    /// Keys Redis evicted during a fault.
    pub fn record_evictions(&self, keys: u64) {
        self.with(|data| data.evicted_keys += keys);
    }

    /// Records what the cache holds for `order_id` now, if it changed since the last sample.
    pub fn record_cache(&self, order_id: i64, version: Option<i64>, at: Duration) {
        self.with(|data| {
            let series = data.cache.entry(order_id).or_default();
            if series.last().map(|change| change.version) != Some(version) {
                series.push(CacheChange { at, version });
            }
        });
    }

    /// Whether the last sample of the order's cache entry held nothing older than `version`.
    pub fn cache_settled(&self, order_id: i64, version: i64) -> bool {
        self.with(|data| {
            data.cache
                .get(&order_id)
                .and_then(|series| series.last())
                .is_none_or(|change| change.version.is_none_or(|held| held >= version))
        })
    }

    /// Everything recorded so far.
    pub fn snapshot(&self) -> Recorded {
        self.with(|data| Recorded {
            ops: data.ops.clone(),
            faults: data.faults.clone(),
            cache: data.cache.clone(),
            evicted_keys: data.evicted_keys,
            duration: self.now(),
        })
    }
}

impl Default for History {
    fn default() -> Self {
        Self::new()
    }
}

/// A finished history, for the checker.
#[derive(Debug, Clone, Default)]
pub struct Recorded {
    pub ops: Vec<OpRecord>,
    pub faults: Vec<FaultWindow>,
    pub cache: HashMap<i64, Vec<CacheChange>>,
    pub evicted_keys: u64,
    pub duration: Duration,
}
