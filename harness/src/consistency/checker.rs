//! The checker: the invariants of NOTES.md, verified against a run's history and final state.
//!
//! 1. Quiescence: the outbox drained and the updater group caught up.
//! 2. Convergence: every cached order equals its database row, every field, or is absent.
//! 3. No lost events: every committed version of every order is in the topic.
//! 4. Monotonic cache: the cached version of an order never decreases (between two samples where it
//!    was present: a wipe or an expiry legitimately resets it).
//! 5. Read-your-writes: a read with `min_version = v` never returns an older version.
//! 6. Valid history: each order's versions are 1..n, start at CREATED, and every step is a legal
//!    transition; every answer and every read matches the database's history at its version.
//! 7. Illegal requests refused: each FAILED_PRECONDITION names a transition that is indeed illegal,
//!    from a status the order really had; at most one of several clients racing with the same
//!    `expected_version` wins.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use serde::Serialize;
use service::cache::Cached;
use service::domain::OrderStatus;

use super::history::{Op, Outcome};
use super::runner::RunOutcome;
use super::staleness::{self, Staleness};

#[derive(Debug, Clone, Serialize)]
pub struct Violation {
    pub invariant: &'static str,
    pub detail: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{}] {}", self.invariant, self.detail)
    }
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Stats {
    pub operations: usize,
    pub writes: usize,
    pub reads: usize,
    pub refused: usize,
    pub unknown: usize,
    pub orders: usize,
    pub committed_versions: usize,
    pub faults: BTreeMap<&'static str, usize>,
    /// Why calls had no answer, by the first words of the error.
    pub unknown_reasons: BTreeMap<String, usize>,
    pub rebalances: usize,
    pub duration_s: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub violations: Vec<Violation>,
    pub stats: Stats,
    pub staleness: Staleness,
}

impl Report {
    pub fn is_consistent(&self) -> bool {
        self.violations.is_empty()
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
    let mut violations = Vec::new();
    let mut flag = |invariant: &'static str, detail: String| violations.push(Violation { invariant, detail });
    let state = &outcome.state;
    let recorded = &outcome.recorded;

    if let Err(reason) = &state.quiescent {
        flag("quiescence", reason.clone());
    }

    for order in &state.orders {
        match state.cache.get(&order.order_id) {
            None | Some(Cached::Miss) => {}
            Some(Cached::Hit(cached)) if cached == order => {}
            Some(Cached::Hit(cached)) => flag(
                "convergence",
                format!(
                    "order {}: cache has version {} ({}), database has version {} ({})",
                    order.order_id,
                    cached.version,
                    status_name(cached.status),
                    order.version,
                    status_name(order.status)
                ),
            ),
            Some(Cached::Corrupt(_)) => flag(
                "convergence",
                format!("order {}: corrupt cache entry", order.order_id),
            ),
        }
    }

    let mut missing: Vec<&(i64, i64)> = state
        .versions
        .keys()
        .filter(|key| !state.published.contains(key))
        .collect();
    missing.sort();
    for (order, version) in missing {
        flag(
            "no lost events",
            format!("order {order} version {version} was committed but never published"),
        );
    }

    for (order, series) in &recorded.cache {
        for pair in series.windows(2) {
            if let (Some(before), Some(after)) = (pair[0].version, pair[1].version)
                && after < before
            {
                flag(
                    "monotonic cache",
                    format!(
                        "order {order}: the cache went from version {before} back to {after} at {:.3} s",
                        pair[1].at.as_secs_f64()
                    ),
                );
            }
        }
    }

    // Histories: versions 1..n, CREATED first, legal steps.
    let mut histories: BTreeMap<i64, Vec<(i64, &str)>> = BTreeMap::new();
    for ((order, version), status) in &state.versions {
        histories
            .entry(*order)
            .or_default()
            .push((*version, status.as_str()));
    }
    for (order, history) in &mut histories {
        history.sort();
        for (expected, (version, _)) in (1..).zip(history.iter()) {
            if *version != expected {
                flag(
                    "valid history",
                    format!("order {order}: versions skip from {} to {version}", expected - 1),
                );
                break;
            }
        }
        if history.first().is_some_and(|(_, status)| *status != "CREATED") {
            flag(
                "valid history",
                format!("order {order}: version 1 is not CREATED"),
            );
        }
        for pair in history.windows(2) {
            let legal = match (
                OrderStatus::parse_name(pair[0].1),
                OrderStatus::parse_name(pair[1].1),
            ) {
                (Ok(from), Ok(to)) => from.can_become(to),
                _ => false,
            };
            if !legal {
                flag(
                    "valid history",
                    format!(
                        "order {order}: version {} went {} -> {}",
                        pair[1].0, pair[0].1, pair[1].1
                    ),
                );
            }
        }
    }

    let mut race_winners: HashMap<(i64, i64), usize> = HashMap::new();
    for record in &recorded.ops {
        match (&record.op, &record.outcome) {
            (_, Outcome::Written(order)) => {
                let committed = state.versions.get(&(order.order_id, order.version));
                if committed.map(String::as_str) != Some(status_name(order.status)) {
                    flag(
                        "valid history",
                        format!(
                            "order {} answered version {} as {}, the database has {:?}",
                            order.order_id,
                            order.version,
                            status_name(order.status),
                            committed
                        ),
                    );
                }
                if let Op::Update {
                    expected_version: Some(expected),
                    ..
                } = &record.op
                    && order.version == expected + 1
                {
                    *race_winners.entry((order.order_id, *expected)).or_default() += 1;
                }
            }
            (Op::Get { min_version, .. }, Outcome::Read(orders)) => {
                for (order, _) in orders {
                    if order.version < *min_version {
                        flag(
                            "read-your-writes",
                            format!(
                                "order {}: a read with min_version {min_version} returned version {}",
                                order.order_id, order.version
                            ),
                        );
                    }
                }
            }
            (Op::Update { order_id, to, .. }, Outcome::Refused { code, message })
                if *code == tonic::Code::FailedPrecondition =>
            {
                check_refusal(*order_id, *to, message, histories.get(order_id), &mut flag);
            }
            _ => {}
        }
        if let Outcome::Read(orders) = &record.outcome {
            for (order, _) in orders {
                let committed = state.versions.get(&(order.order_id, order.version));
                if committed.map(String::as_str) != Some(status_name(order.status)) {
                    flag(
                        "valid history",
                        format!(
                            "a read returned order {} version {} as {}, the database has {:?}",
                            order.order_id,
                            order.version,
                            status_name(order.status),
                            committed
                        ),
                    );
                }
            }
        }
    }
    for ((order, expected), winners) in race_winners {
        if winners > 1 {
            flag(
                "illegal requests refused",
                format!("order {order}: {winners} updates with expected_version {expected} all succeeded"),
            );
        }
    }

    let mut stats = Stats {
        operations: recorded.ops.len(),
        orders: state.orders.len(),
        committed_versions: state.versions.len(),
        rebalances: recorded.rebalances,
        duration_s: recorded.duration.as_secs_f64(),
        ..Stats::default()
    };
    for record in &recorded.ops {
        match (&record.op, &record.outcome) {
            (_, Outcome::Written(_)) => stats.writes += 1,
            (_, Outcome::Read(_)) => stats.reads += 1,
            (_, Outcome::Refused { .. }) => stats.refused += 1,
            (_, Outcome::Unknown(reason)) => {
                stats.unknown += 1;
                let short: String = reason.chars().take(60).collect();
                *stats.unknown_reasons.entry(short).or_default() += 1;
            }
        }
    }
    for window in &recorded.faults {
        *stats.faults.entry(window.kind).or_default() += 1;
    }
    Report {
        violations,
        stats,
        staleness: staleness::measure(recorded),
    }
}

/// A FAILED_PRECONDITION must name the requested status, a status the order really had, and a
/// transition the state machine forbids.
fn check_refusal(
    order_id: i64,
    to: i32,
    message: &str,
    history: Option<&Vec<(i64, &str)>>,
    flag: &mut impl FnMut(&'static str, String),
) {
    let named = message
        .strip_prefix("an order cannot go from ")
        .and_then(|rest| rest.split_once(" to "));
    let Some((from, named_to)) = named else {
        flag(
            "illegal requests refused",
            format!("order {order_id}: unexpected refusal {message:?}"),
        );
        return;
    };
    let requested = status_name(to);
    let had_from = history.is_some_and(|h| h.iter().any(|(_, status)| *status == from));
    let illegal = match (OrderStatus::parse_name(from), OrderStatus::parse_name(named_to)) {
        (Ok(from), Ok(to)) => from != to && !from.can_become(to),
        _ => false,
    };
    if named_to != requested || !had_from || !illegal {
        flag(
            "illegal requests refused",
            format!("order {order_id}: refused {message:?} for a request to {requested}"),
        );
    }
}

fn status_name(status: i32) -> &'static str {
    OrderStatus::from_proto(status).map_or("UNSPECIFIED", OrderStatus::as_str)
}
