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

use std::collections::HashMap;
use std::time::Duration;

use serde::Serialize;
use service::proto::orders::v1 as pb;

use super::history::{CacheChange, FaultWindow, Outcome, Recorded};
use crate::stats::percentile;

/// How long before a write's answer its order must have been served from the cache for the write to
/// count as one that can make a sample: the sampler's timeout (200 ms) and period (10 ms), with room,
/// so that the sampler has seen the entry the client was served.
pub const SEEN_BEFORE: Duration = Duration::from_millis(250);

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
    /// A client was served the order from the cache, older, long enough before the write's answer
    /// for the sampler to have seen it, and no fault that may remove entries ran since: the write
    /// can make a sample (see [`sample_floor`]).
    pub possible: bool,
    /// A fault was active between the commit and the moment the cache caught up.
    pub during_fault: bool,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Distribution {
    pub writes: usize,
    /// Writes whose key held an older entry at their commit (see the module documentation).
    pub samples: usize,
    /// Writes that could make a sample (see [`sample_floor`]).
    pub possible: usize,
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
    let hits = CacheHits::of(recorded);
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
        let possible = hits.older_one_served_before(order, record.end);
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
            possible,
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

/// The least number of staleness samples a run must make: a quarter of the writes that could make
/// one, and at least one if any could.
///
/// Each such write follows a read served from its order's entry, with no fault since that may remove
/// entries, so in a working system its key still holds an older entry when it commits, unless its
/// event beat its own answer to the cache; the quarter leaves room for those. A floor set from the
/// requested traffic instead failed correct runs whose traffic mostly ran into emptied caches
/// ("3 samples, below the floor of 6"): only reads refill entries, and writes to orders nobody read
/// since have nothing to replace. A run short of this floor saw clients served entries that the
/// sampler never saw replaced: the sampler stalled, or watched the wrong keys.
pub fn sample_floor(staleness: &Staleness) -> usize {
    staleness.all.possible.div_ceil(4)
}

/// The reads answered from the cache, per order, and the faults that may remove entries: what
/// decides whether a write could make a sample.
struct CacheHits<'a> {
    /// Per order, each read served from the cache: (start, end, version served), ordered by end.
    reads: HashMap<i64, Vec<(Duration, Duration, i64)>>,
    losing: Vec<&'a FaultWindow>,
}

impl<'a> CacheHits<'a> {
    fn of(recorded: &'a Recorded) -> Self {
        let mut reads: HashMap<i64, Vec<(Duration, Duration, i64)>> = HashMap::new();
        for record in &recorded.ops {
            let Outcome::Read(orders) = &record.outcome else {
                continue;
            };
            for (order, _) in orders
                .iter()
                .filter(|(_, source)| *source == pb::Source::Cache as i32)
            {
                reads
                    .entry(order.order_id)
                    .or_default()
                    .push((record.start, record.end, order.version));
            }
        }
        reads
            .values_mut()
            .for_each(|reads| reads.sort_by_key(|read| read.1));
        let losing = recorded
            .faults
            .iter()
            .filter(|window| window.kind.may_lose_entries())
            .collect();
        Self { reads, losing }
    }

    /// Whether the last read of `order` served from the cache at least [`SEEN_BEFORE`] before
    /// `answered` returned an older version, with no fault that may remove entries since it began.
    fn older_one_served_before(&self, order: &pb::Order, answered: Duration) -> bool {
        let reads = self.reads.get(&order.order_id).map_or(&[][..], Vec::as_slice);
        let seen = reads.partition_point(|read| read.1 + SEEN_BEFORE <= answered);
        let Some(&(start, _, version)) = seen.checked_sub(1).map(|last| &reads[last]) else {
            return false;
        };
        version < order.version
            && !self
                .losing
                .iter()
                .any(|window| window.start <= answered && start <= window.end)
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
        possible: writes.iter().filter(|w| w.possible).count(),
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
    use crate::consistency::history::{Op, OpRecord};
    use crate::consistency::scenario::FaultKind;

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

    fn order(id: i64, version: i64) -> pb::Order {
        pb::Order {
            order_id: id,
            version,
            ..Default::default()
        }
    }

    /// A run with one cached read of order 1 (version 1) answered at 100 ms, and these fault windows.
    fn hits_after_one_cached_read(faults: &[FaultWindow]) -> Recorded {
        Recorded {
            ops: vec![OpRecord {
                client: 0,
                op: Op::Get {
                    order_id: 1,
                    min_version: 0,
                },
                start: MS(90),
                end: MS(100),
                outcome: Outcome::Read(vec![(order(1, 1), pb::Source::Cache as i32)]),
            }],
            faults: faults.to_vec(),
            cache: HashMap::new(),
            evicted_keys: 0,
            duration: MS(10_000),
        }
    }

    #[test]
    fn a_write_can_make_a_sample_once_the_sampler_could_see_the_older_entry_a_client_was_served() {
        let recorded = hits_after_one_cached_read(&[]);
        let hits = CacheHits::of(&recorded);
        assert!(hits.older_one_served_before(&order(1, 2), MS(400)));
        assert!(
            !hits.older_one_served_before(&order(1, 2), MS(200)),
            "served less than SEEN_BEFORE before the answer"
        );
        assert!(
            !hits.older_one_served_before(&order(1, 1), MS(400)),
            "the entry served is not older"
        );
        assert!(
            !hits.older_one_served_before(&order(2, 2), MS(400)),
            "never served"
        );
    }

    #[test]
    fn a_fault_that_may_remove_entries_since_the_read_means_no_sample_is_owed() {
        let recorded = hits_after_one_cached_read(&[flush_window()]);
        assert!(!CacheHits::of(&recorded).older_one_served_before(&order(1, 2), MS(400)));
        let pause = FaultWindow {
            kind: FaultKind::RedisPause,
            ..flush_window()
        };
        let recorded = hits_after_one_cached_read(&[pause]);
        assert!(
            CacheHits::of(&recorded).older_one_served_before(&order(1, 2), MS(400)),
            "a paused Redis keeps its entries"
        );
    }

    fn flush_window() -> FaultWindow {
        FaultWindow {
            kind: FaultKind::RedisFlush,
            start: MS(200),
            end: MS(300),
        }
    }

    #[test]
    fn the_sample_floor_is_a_quarter_of_the_possible_samples_and_one_if_any() {
        let with = |possible| Staleness {
            all: Distribution {
                possible,
                ..Distribution::default()
            },
            ..Staleness::default()
        };
        assert_eq!(sample_floor(&with(0)), 0);
        assert_eq!(sample_floor(&with(1)), 1);
        assert_eq!(sample_floor(&with(8)), 2);
        assert_eq!(sample_floor(&with(9)), 3);
    }

    #[test]
    fn samples_are_the_writes_whose_key_held_an_older_entry() {
        let series = [change(0, Some(1)), change(100, Some(2))];
        assert_eq!(in_force(&series, MS(50)), Some(1));
        assert_eq!(in_force(&series, MS(100)), Some(2));
        assert_eq!(in_force(&[], MS(100)), None);
    }
}
