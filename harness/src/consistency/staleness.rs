//! Staleness, measured as Meta measures TAO's cache: for every committed write of version `v`, the
//! time until the cache stopped serving anything older than `v`. Reported as percentiles and as the
//! fraction of writes consistent within 1 s and within 5 s, split by writes committed during a fault
//! and the others.
//!
//! "Stopped serving anything older" means: from that moment to the end of the run, the cache holds
//! `v`, a newer version, or nothing (a reader that finds nothing reads the database). A write whose
//! key held an older entry when it committed had to be carried there by the pipeline: those are the
//! *samples* that say how fast it is; the others (the key absent, or already newer) are consistent at
//! once, unless an older entry shows up later, which counts against them too.
//!
//! A write is "committed" when the client got its answer (an upper bound on the real commit time, so
//! staleness is never overstated by clock skew); the cache side comes from the sampler, so figures have
//! its resolution (`SAMPLE_EVERY`). A write whose order's cache entry is still older at the end of the
//! run counts as never consistent.

use std::time::Duration;

use serde::Serialize;

use super::history::{CacheChange, Outcome, Recorded};
use crate::stats::percentile;

/// One committed write and how long the cache took to reflect it.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct WriteStaleness {
    pub order_id: i64,
    pub version: i64,
    /// Seconds from the start of the run.
    pub committed_at: f64,
    /// `None`: the cache still held an older version at the end of the run.
    pub staleness: Option<f64>,
    /// The cache held an older entry when the write committed: the pipeline had to replace it.
    pub sample: bool,
    /// A fault was active between the commit and the moment the cache caught up.
    pub during_fault: bool,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Distribution {
    pub writes: usize,
    /// Writes whose key held an older entry at their commit (see the module documentation).
    pub samples: usize,
    /// Percentiles and maximum over the samples.
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    /// Fractions of all writes.
    pub within_1s: f64,
    pub within_5s: f64,
    pub never: usize,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Staleness {
    pub all: Distribution,
    pub no_fault: Distribution,
    pub during_fault: Distribution,
    pub writes: Vec<WriteStaleness>,
}

pub fn measure(recorded: &Recorded) -> Staleness {
    let mut writes = Vec::new();
    for record in &recorded.ops {
        let Outcome::Written(order) = &record.outcome else {
            continue;
        };
        let series = recorded
            .cache
            .get(&order.order_id)
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        let sample = in_force(series, record.end).is_some_and(|v| v < order.version);
        let staleness = time_to_consistent(series, order.version, record.end);
        // Affected by a fault: a fault was active at some moment between the commit and the moment the
        // cache caught up (or the end of the run).
        let caught_up = staleness.map_or(recorded.duration, |s| record.end + s);
        let during_fault = recorded
            .faults
            .iter()
            .any(|window| window.start <= caught_up && record.end <= window.end);
        writes.push(WriteStaleness {
            order_id: order.order_id,
            version: order.version,
            committed_at: record.end.as_secs_f64(),
            staleness: staleness.map(|d| d.as_secs_f64()),
            sample,
            during_fault,
        });
    }
    // A no-op update (same status) answers an old version: one write per (order, version) counts.
    writes.sort_by(|a, b| {
        (a.order_id, a.version, a.committed_at)
            .partial_cmp(&(b.order_id, b.version, b.committed_at))
            .unwrap_or(std::cmp::Ordering::Equal)
    });
    writes.dedup_by_key(|w| (w.order_id, w.version));
    writes.sort_by(|a, b| a.committed_at.total_cmp(&b.committed_at));
    Staleness {
        all: distribution(writes.iter()),
        no_fault: distribution(writes.iter().filter(|w| !w.during_fault)),
        during_fault: distribution(writes.iter().filter(|w| w.during_fault)),
        writes,
    }
}

/// The version the cache held at `at` (`None`: nothing).
fn in_force(series: &[CacheChange], at: Duration) -> Option<i64> {
    series
        .iter()
        .rev()
        .find(|change| change.at <= at)
        .and_then(|change| change.version)
}

/// From `committed`, how long until the cache held nothing older than `version` for good; `None` if it
/// still held an older one at the end.
fn time_to_consistent(series: &[CacheChange], version: i64, committed: Duration) -> Option<Duration> {
    let older = |held: Option<i64>| held.is_some_and(|v| v < version);
    let mut stale = older(in_force(series, committed));
    let mut consistent_from = committed;
    for change in series.iter().filter(|change| change.at > committed) {
        if stale {
            consistent_from = change.at;
        }
        stale = older(change.version);
    }
    (!stale).then(|| consistent_from - committed)
}

fn distribution<'a>(writes: impl Iterator<Item = &'a WriteStaleness>) -> Distribution {
    let writes: Vec<&WriteStaleness> = writes.collect();
    let total = writes.len();
    let within = |limit: f64| {
        if total == 0 {
            return 1.0;
        }
        let consistent = writes
            .iter()
            .filter(|w| w.staleness.is_some_and(|s| s <= limit))
            .count();
        consistent as f64 / total as f64
    };
    let mut samples: Vec<Duration> = writes
        .iter()
        .filter(|w| w.sample)
        .filter_map(|w| w.staleness)
        .map(Duration::from_secs_f64)
        .collect();
    samples.sort_unstable();
    let at = |q: f64| {
        if samples.is_empty() {
            0.0
        } else {
            crate::stats::millis(percentile(&samples, q))
        }
    };
    Distribution {
        writes: total,
        samples: writes.iter().filter(|w| w.sample).count(),
        p50_ms: at(0.5),
        p99_ms: at(0.99),
        p999_ms: at(0.999),
        max_ms: samples.last().map_or(0.0, |max| crate::stats::millis(*max)),
        within_1s: within(1.0),
        within_5s: within(5.0),
        never: writes.iter().filter(|w| w.staleness.is_none()).count(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(ms: u64, version: Option<i64>) -> CacheChange {
        CacheChange {
            at: Duration::from_millis(ms),
            version,
        }
    }

    const MS: fn(u64) -> Duration = Duration::from_millis;

    #[test]
    fn the_pipeline_replacing_an_older_entry_takes_the_time_until_it_did() {
        let series = [change(0, Some(1)), change(100, Some(2)), change(300, Some(3))];
        assert_eq!(time_to_consistent(&series, 2, MS(40)), Some(MS(60)));
        assert_eq!(time_to_consistent(&series, 3, MS(40)), Some(MS(260)));
        assert_eq!(time_to_consistent(&series, 2, MS(150)), Some(Duration::ZERO));
        assert_eq!(time_to_consistent(&series, 4, MS(150)), None, "never held 4");
    }

    #[test]
    fn an_absent_key_is_consistent_unless_an_older_entry_comes_later() {
        let series = [change(0, None)];
        assert_eq!(time_to_consistent(&series, 5, MS(10)), Some(Duration::ZERO));
        // A late fill of version 4 after the commit of 5, replaced at 250 ms.
        let late = [change(0, None), change(100, Some(4)), change(250, Some(5))];
        assert_eq!(time_to_consistent(&late, 5, MS(10)), Some(MS(240)));
        let wiped = [change(0, Some(4)), change(50, None)];
        assert_eq!(
            time_to_consistent(&wiped, 5, MS(10)),
            Some(MS(40)),
            "gone is consistent"
        );
    }

    #[test]
    fn samples_are_the_writes_whose_key_held_an_older_entry() {
        let series = [change(0, Some(1)), change(100, Some(2))];
        assert_eq!(in_force(&series, MS(50)), Some(1));
        assert_eq!(in_force(&series, MS(100)), Some(2));
        assert_eq!(in_force(&[], MS(100)), None);
    }
}
