//! Percentiles of latency samples (nearest rank, no interpolation), in milliseconds: the one definition
//! the consistency harness's staleness figures and the load test's latencies share.
//!
//! Samples are kept whole rather than in a histogram: a 10-minute run at 200 probes a second is
//! 120,000 durations, a megabyte, and exact percentiles are easier to trust than bucketed ones.

use std::time::Duration;

use serde::Serialize;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    pub count: usize,
    pub mean_ms: f64,
    pub min_ms: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

impl Summary {
    /// `None` without samples. Sorts `samples`.
    pub fn of(samples: &mut [Duration]) -> Option<Self> {
        if samples.is_empty() {
            return None;
        }
        samples.sort_unstable();
        let total: Duration = samples.iter().sum();
        Some(Self {
            count: samples.len(),
            mean_ms: millis(total) / samples.len() as f64,
            min_ms: millis(samples[0]),
            p50_ms: millis(percentile(samples, 0.50)),
            p90_ms: millis(percentile(samples, 0.90)),
            p99_ms: millis(percentile(samples, 0.99)),
            p999_ms: millis(percentile(samples, 0.999)),
            max_ms: millis(samples[samples.len() - 1]),
        })
    }
}

/// The nearest-rank `q` quantile of `sorted` (ascending, not empty): the smallest sample with at
/// least `q` of the samples at or below it.
pub fn percentile(sorted: &[Duration], q: f64) -> Duration {
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

pub fn millis(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let mut samples: Vec<Duration> = (1..=100).rev().map(Duration::from_millis).collect();
        let summary = Summary::of(&mut samples);
        let Some(summary) = summary else {
            panic!("a summary of 100 samples")
        };
        assert_eq!(summary.count, 100);
        assert_eq!(summary.min_ms, 1.0);
        assert_eq!(summary.p50_ms, 50.0);
        assert_eq!(summary.p99_ms, 99.0);
        assert_eq!(summary.p999_ms, 100.0);
        assert_eq!(summary.max_ms, 100.0);
        assert!((summary.mean_ms - 50.5).abs() < 1e-9);
        assert_eq!(
            percentile(&[Duration::from_millis(7)], 0.0),
            Duration::from_millis(7)
        );
        assert!(Summary::of(&mut []).is_none());
    }
}
