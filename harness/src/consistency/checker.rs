//! The checker: the invariants of NOTES.md, one function each, verified against a run's history and
//! final state; and the floors that say whether the run did enough real work for its verdict to mean
//! anything.
//!
//! A run that falls short of its floors is neither consistent nor a catch: [`Report::shortfalls`] is
//! an error for whoever asked for the run.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use serde::Serialize;
use service::cache::Cached;
use service::domain::OrderStatus;
use service::proto::orders::v1 as pb;

use super::history::{Op, Outcome, Recorded};
use super::runner::RunOutcome;
use super::scenario::FaultKind;
use super::settle::FinalState;
use super::staleness::{self, Staleness};

/// The invariants, each checked by one function below.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Invariant {
    /// The outbox drained and the updater group caught up.
    Quiescence,
    /// After quiescence, every cached order equals its database row, every field, or is absent.
    Convergence,
    /// Every committed version of every order is in the topic.
    NoLostEvents,
    /// Once the cache held version `v` of an order, it never holds an older one, even after the key
    /// was absent for a while.
    MonotonicCache,
    /// A read with `min_version = v` never returns an older version.
    ReadYourWrites,
    /// Each order's versions are 1..n, start at CREATED, and go by legal transitions; every answer and
    /// every read matches the database's history at its version.
    ValidHistory,
    /// Each FAILED_PRECONDITION names a transition that is indeed illegal, from a status the order
    /// really had; of several clients racing with one `expected_version`, at most one wins.
    IllegalRequestsRefused,
    /// The service never answers INTERNAL: a bug, not a fault of its environment.
    NoInternalErrors,
}

impl Invariant {
    pub fn name(self) -> &'static str {
        match self {
            Self::Quiescence => "quiescence",
            Self::Convergence => "convergence",
            Self::NoLostEvents => "no lost events",
            Self::MonotonicCache => "monotonic cache",
            Self::ReadYourWrites => "read-your-writes",
            Self::ValidHistory => "valid history",
            Self::IllegalRequestsRefused => "illegal requests refused",
            Self::NoInternalErrors => "no internal errors",
        }
    }
}

impl fmt::Display for Invariant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Violation {
    pub invariant: Invariant,
    pub detail: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{}] {}", self.invariant, self.detail)
    }
}

fn violation(invariant: Invariant, detail: String) -> Violation {
    Violation { invariant, detail }
}

/// What a run did, for floors and reports.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Stats {
    pub operations: usize,
    pub writes: usize,
    pub reads: usize,
    /// Orders answered from the cache (`source: CACHE`).
    pub cache_reads: usize,
    pub refused: usize,
    pub unknown: usize,
    pub orders: usize,
    pub committed_versions: usize,
    pub faults: BTreeMap<FaultKind, usize>,
    /// Why calls had no answer, by the first words of the error.
    pub unknown_reasons: BTreeMap<String, usize>,
    /// Partitions moved by rebalances, as the updaters counted them.
    pub rebalances: usize,
    /// Keys Redis evicted under `maxmemory`.
    pub evicted_keys: u64,
    pub duration_s: f64,
}

/// The least a run must have done: set from what it was asked to do (see
/// [`runner`](super::runner)), compared with what it did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Floors {
    pub writes: usize,
    pub cache_reads: usize,
    pub staleness_samples: usize,
    pub rebalances: usize,
    pub evicted_keys: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub violations: Vec<Violation>,
    /// Floors the run fell short of: its verdict means nothing.
    pub shortfalls: Vec<String>,
    pub stats: Stats,
    pub staleness: Staleness,
}

impl Report {
    pub fn is_consistent(&self) -> bool {
        self.violations.is_empty()
    }

    /// The invariants that were violated.
    pub fn violated(&self) -> Vec<Invariant> {
        let mut invariants: Vec<Invariant> = self.violations.iter().map(|v| v.invariant).collect();
        invariants.sort();
        invariants.dedup();
        invariants
    }

    /// The first violations, one per line (a run can have thousands of the same kind).
    pub fn summary(&self, at_most: usize) -> String {
        let mut lines: Vec<String> = self
            .violations
            .iter()
            .take(at_most)
            .map(|v| v.to_string())
            .collect();
        if self.violations.len() > at_most {
            lines.push(format!("... and {} more", self.violations.len() - at_most));
        }
        lines.join("\n")
    }
}

pub fn check(outcome: &RunOutcome) -> Report {
    let (state, recorded) = (&outcome.state, &outcome.recorded);
    let histories = histories(state);
    let violations = [
        quiescence(state),
        convergence(state),
        no_lost_events(state),
        monotonic_cache(recorded),
        read_your_writes(recorded),
        valid_history(state, recorded, &histories),
        illegal_requests_refused(recorded, &histories),
        no_internal_errors(recorded),
    ]
    .into_iter()
    .flatten()
    .collect();
    let stats = stats(outcome);
    let staleness = staleness::measure(recorded);
    // The staleness floor depends on which writes found a cached entry, which only the history tells.
    let floors = Floors {
        staleness_samples: staleness::sample_floor(&staleness),
        ..outcome.floors.clone()
    };
    Report {
        violations,
        shortfalls: shortfalls(&floors, &stats, &staleness),
        stats,
        staleness,
    }
}

fn quiescence(state: &FinalState) -> Vec<Violation> {
    match &state.quiescent {
        Ok(()) => Vec::new(),
        Err(reason) => vec![violation(Invariant::Quiescence, reason.clone())],
    }
}

fn convergence(state: &FinalState) -> Vec<Violation> {
    let mut found = Vec::new();
    for order in &state.orders {
        match state.cache.get(&order.order_id) {
            None | Some(Cached::Miss) => {}
            Some(Cached::Hit(cached)) if cached == order => {}
            Some(Cached::Hit(cached)) => found.push(violation(
                Invariant::Convergence,
                format!(
                    "order {}: cache has version {} ({}), database has version {} ({})",
                    order.order_id,
                    cached.version,
                    status_name(cached.status),
                    order.version,
                    status_name(order.status)
                ),
            )),
            Some(Cached::Corrupt(_)) => found.push(violation(
                Invariant::Convergence,
                format!("order {}: corrupt cache entry", order.order_id),
            )),
        }
    }
    found
}

fn no_lost_events(state: &FinalState) -> Vec<Violation> {
    let mut missing: Vec<&(i64, i64)> = state
        .versions
        .keys()
        .filter(|key| !state.published.contains_key(key))
        .collect();
    missing.sort();
    missing
        .into_iter()
        .map(|(order, version)| {
            violation(
                Invariant::NoLostEvents,
                format!("order {order} version {version} was committed but never published"),
            )
        })
        .collect()
}

/// Across absence: the highest version an order's key ever held is a floor for every later entry.
fn monotonic_cache(recorded: &Recorded) -> Vec<Violation> {
    let mut found = Vec::new();
    for (order, series) in &recorded.cache {
        let mut highest: Option<i64> = None;
        for change in series {
            let Some(version) = change.version else { continue };
            if let Some(before) = highest
                && version < before
            {
                found.push(violation(
                    Invariant::MonotonicCache,
                    format!(
                        "order {order}: the cache held version {before}, then version {version} at {:.3} s ({})",
                        change.at.as_secs_f64(),
                        faults_at(recorded, change.at)
                    ),
                ));
            }
            highest = highest.max(Some(version));
        }
    }
    found
}

/// The faults in progress at `at`, for a violation's message: which one to suspect first.
fn faults_at(recorded: &Recorded, at: std::time::Duration) -> String {
    let during: Vec<String> = recorded
        .faults
        .iter()
        .filter(|window| (window.start..=window.end).contains(&at))
        .map(|window| {
            format!(
                "during {} from {:.3} s to {:.3} s",
                window.kind,
                window.start.as_secs_f64(),
                window.end.as_secs_f64()
            )
        })
        .collect();
    if during.is_empty() {
        "no fault in progress".to_string()
    } else {
        during.join(", ")
    }
}

fn read_your_writes(recorded: &Recorded) -> Vec<Violation> {
    let mut found = Vec::new();
    for record in &recorded.ops {
        if let (Op::Get { min_version, .. }, Outcome::Read(orders)) = (&record.op, &record.outcome) {
            for (order, _) in orders.iter().filter(|(order, _)| order.version < *min_version) {
                found.push(violation(
                    Invariant::ReadYourWrites,
                    format!(
                        "order {}: a read with min_version {min_version} returned version {}",
                        order.order_id, order.version
                    ),
                ));
            }
        }
    }
    found
}

/// Each order's committed versions, `(version, status)` in version order.
type Histories<'a> = BTreeMap<i64, Vec<(i64, &'a str)>>;

fn histories(state: &FinalState) -> Histories<'_> {
    let mut histories: Histories<'_> = BTreeMap::new();
    for ((order, version), status) in &state.versions {
        histories
            .entry(*order)
            .or_default()
            .push((*version, status.as_str()));
    }
    for history in histories.values_mut() {
        history.sort();
    }
    histories
}

fn valid_history(state: &FinalState, recorded: &Recorded, histories: &Histories<'_>) -> Vec<Violation> {
    let mut found = Vec::new();
    let mut flag = |detail: String| found.push(violation(Invariant::ValidHistory, detail));
    for (order, history) in histories {
        if let Some((expected, (version, _))) = (1..)
            .zip(history.iter())
            .find(|(expected, (version, _))| version != expected)
        {
            flag(format!(
                "order {order}: versions skip from {} to {version}",
                expected - 1
            ));
        }
        if history.first().is_some_and(|(_, status)| *status != "CREATED") {
            flag(format!("order {order}: version 1 is not CREATED"));
        }
        for pair in history.windows(2) {
            let legal = matches!(
                (OrderStatus::parse_name(pair[0].1), OrderStatus::parse_name(pair[1].1)),
                (Ok(from), Ok(to)) if from.can_become(to)
            );
            if !legal {
                flag(format!(
                    "order {order}: version {} went {} -> {}",
                    pair[1].0, pair[0].1, pair[1].1
                ));
            }
        }
    }
    // Every order the service handed out, written or read, is one the database committed.
    let matches_database = |order: &pb::Order| {
        state
            .versions
            .get(&(order.order_id, order.version))
            .map(String::as_str)
            == Some(status_name(order.status))
    };
    for record in &recorded.ops {
        let answered: Vec<&pb::Order> = match &record.outcome {
            Outcome::Written(order) => vec![order],
            Outcome::Read(orders) => orders.iter().map(|(order, _)| order).collect(),
            _ => continue,
        };
        for order in answered.into_iter().filter(|order| !matches_database(order)) {
            flag(format!(
                "order {} was answered as version {} {}; the database has {:?}",
                order.order_id,
                order.version,
                status_name(order.status),
                state.versions.get(&(order.order_id, order.version))
            ));
        }
    }
    found
}

fn illegal_requests_refused(recorded: &Recorded, histories: &Histories<'_>) -> Vec<Violation> {
    let mut found = Vec::new();
    let mut race_winners: HashMap<(i64, i64), usize> = HashMap::new();
    for record in &recorded.ops {
        match (&record.op, &record.outcome) {
            (
                Op::Update {
                    expected_version: Some(expected),
                    ..
                },
                Outcome::Written(order),
            ) if order.version == expected + 1 => {
                *race_winners.entry((order.order_id, *expected)).or_default() += 1;
            }
            (Op::Update { order_id, to, .. }, Outcome::Refused { code, message })
                if *code == tonic::Code::FailedPrecondition =>
            {
                if let Some(problem) = refusal_problem(*to, message, histories.get(order_id)) {
                    found.push(violation(
                        Invariant::IllegalRequestsRefused,
                        format!("order {order_id}: {problem}"),
                    ));
                }
            }
            _ => {}
        }
    }
    for ((order, expected), winners) in race_winners {
        if winners > 1 {
            found.push(violation(
                Invariant::IllegalRequestsRefused,
                format!("order {order}: {winners} updates with expected_version {expected} all succeeded"),
            ));
        }
    }
    found
}

/// What is wrong with a FAILED_PRECONDITION, if anything: it must name the requested status, a status
/// the order really had, and a transition the state machine forbids.
fn refusal_problem(to: i32, message: &str, history: Option<&Vec<(i64, &str)>>) -> Option<String> {
    let Some((from, named_to)) = message
        .strip_prefix("an order cannot go from ")
        .and_then(|rest| rest.split_once(" to "))
    else {
        return Some(format!("unexpected refusal {message:?}"));
    };
    let requested = status_name(to);
    let had_from = history.is_some_and(|h| h.iter().any(|(_, status)| *status == from));
    let illegal = matches!(
        (OrderStatus::parse_name(from), OrderStatus::parse_name(named_to)),
        (Ok(from), Ok(to)) if from != to && !from.can_become(to)
    );
    (named_to != requested || !had_from || !illegal)
        .then(|| format!("refused {message:?} for a request to {requested}"))
}

fn no_internal_errors(recorded: &Recorded) -> Vec<Violation> {
    recorded
        .ops
        .iter()
        .filter_map(|record| match &record.outcome {
            Outcome::Refused { code, message } if *code == tonic::Code::Internal => Some(violation(
                Invariant::NoInternalErrors,
                format!("{:?} answered INTERNAL: {message}", record.op),
            )),
            _ => None,
        })
        .collect()
}

fn stats(outcome: &RunOutcome) -> Stats {
    let (state, recorded) = (&outcome.state, &outcome.recorded);
    let mut stats = Stats {
        operations: recorded.ops.len(),
        orders: state.orders.len(),
        committed_versions: state.versions.len(),
        rebalances: state.rebalances,
        evicted_keys: recorded.evicted_keys,
        duration_s: recorded.duration.as_secs_f64(),
        ..Stats::default()
    };
    for record in &recorded.ops {
        match &record.outcome {
            Outcome::Written(_) => stats.writes += 1,
            Outcome::Read(orders) => {
                stats.reads += 1;
                stats.cache_reads += orders
                    .iter()
                    .filter(|(_, source)| *source == pb::Source::Cache as i32)
                    .count();
            }
            Outcome::Refused { .. } => stats.refused += 1,
            Outcome::Unknown(reason) => {
                stats.unknown += 1;
                let short: String = reason.chars().take(60).collect();
                *stats.unknown_reasons.entry(short).or_default() += 1;
            }
        }
    }
    for window in &recorded.faults {
        *stats.faults.entry(window.kind).or_default() += 1;
    }
    stats
}

fn shortfalls(floors: &Floors, stats: &Stats, staleness: &Staleness) -> Vec<String> {
    let mut short = Vec::new();
    let mut below = |what: &str, got: u64, floor: u64| {
        if got < floor {
            short.push(format!("{what}: {got}, below the floor of {floor}"));
        }
    };
    below("writes answered", stats.writes as u64, floors.writes as u64);
    below(
        "orders read from the cache",
        stats.cache_reads as u64,
        floors.cache_reads as u64,
    );
    below(
        "staleness samples (writes over an older cached entry)",
        staleness.all.samples as u64,
        floors.staleness_samples as u64,
    );
    below(
        "rebalances counted by the updaters",
        stats.rebalances as u64,
        floors.rebalances as u64,
    );
    below("keys evicted by Redis", stats.evicted_keys, floors.evicted_keys);
    short
}

fn status_name(status: i32) -> &'static str {
    OrderStatus::from_proto(status).map_or("UNSPECIFIED", OrderStatus::as_str)
}
