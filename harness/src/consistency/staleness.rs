//! Staleness, measured as Meta measures TAO's cache: for every committed write, the time until the cache
//! held that version or a newer one. Reported as percentiles and as the fraction of writes consistent
//! within 1 s and within 5 s, split by writes committed during a fault and the others.
//!
//! A write is "committed" when the client got its answer (an upper bound on the real commit time, so
//! staleness is never overstated by clock skew); the cache side comes from the sampler, so figures have
//! its resolution (`SAMPLE_EVERY`). A write whose order the cache never held at that version or newer
//! by the end (its key expired or was wiped and nobody read it since) counts as not consistent.

use std::time::Duration;

use serde::Serialize;

use super::history::{CacheChange, Outcome, Recorded};

/// One committed write and how long the cache took to reflect it.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct WriteStaleness {
    pub order_id: i64,
    pub version: i64,
    /// Seconds from the start of the run.
    pub committed_at: f64,
    /// `None`: never held by the end of the run.
    pub staleness: Option<f64>,
    /// A fault was active between the commit and the moment the cache caught up.
    pub during_fault: bool,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Distribution {
    pub writes: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
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
        let staleness = time_to_hold(series, order.version, record.end);
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

/// From `committed`, how long until the series holds `version` or newer.
fn time_to_hold(series: &[CacheChange], version: i64, committed: Duration) -> Option<Duration> {
    let held = |change: &CacheChange| change.version.is_some_and(|v| v >= version);
    let before = series.iter().rev().find(|change| change.at <= committed);
    if before.is_some_and(held) {
        return Some(Duration::ZERO);
    }
    series
        .iter()
        .find(|change| change.at > committed && held(change))
        .map(|change| change.at - committed)
}

fn distribution<'a>(writes: impl Iterator<Item = &'a WriteStaleness>) -> Distribution {
    let writes: Vec<&WriteStaleness> = writes.collect();
    let mut held: Vec<f64> = writes.iter().filter_map(|w| w.staleness).collect();
    held.sort_by(f64::total_cmp);
    let total = writes.len();
    let within = |limit: f64| {
        if total == 0 {
            return 1.0;
        }
        held.iter().filter(|s| **s <= limit).count() as f64 / total as f64
    };
    let percentile = |p: f64| {
        if held.is_empty() {
            return 0.0;
        }
        let index = ((held.len() as f64 - 1.0) * p).round() as usize;
        held[index.min(held.len() - 1)] * 1000.0
    };
    Distribution {
        writes: total,
        p50_ms: percentile(0.5),
        p99_ms: percentile(0.99),
        max_ms: held.last().map_or(0.0, |max| max * 1000.0),
        within_1s: within(1.0),
        within_5s: within(5.0),
        never: total - held.len(),
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

    #[test]
    fn time_to_hold_counts_from_the_commit_and_accepts_newer_versions() {
        let series = [change(0, None), change(100, Some(1)), change(300, Some(3))];
        let at = Duration::from_millis;
        assert_eq!(time_to_hold(&series, 1, at(50)), Some(at(50)));
        assert_eq!(time_to_hold(&series, 1, at(150)), Some(Duration::ZERO));
        assert_eq!(
            time_to_hold(&series, 2, at(150)),
            Some(at(150)),
            "version 3 covers version 2"
        );
        assert_eq!(time_to_hold(&series, 4, at(150)), None);
    }
}
