//! Resident memory over a run: `VmRSS` from `/proc/<pid>/status`, sampled at a fixed interval.
//!
//! With `--start-service` the service runs in this process, so `/proc/self` is sampled, and the figure
//! includes the load generator (goose keeps aggregated metrics, which grow with the number of distinct
//! request names, not with the number of requests, and one point per second for its graphs). With
//! `--host`, `--service-pid` names the service's process.
//!
//! "Flat" is judged on the samples after a warm-up (allocators, pools and caches fill up first): the
//! slope of a least-squares line through them, and the difference between the first and the last
//! minute.

use std::time::{Duration, Instant};

use serde::Serialize;
use tokio_util::sync::CancellationToken;

/// Samples before this are left out of the flatness figures.
const WARM_UP: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    #[error("cannot read {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("{path} has no VmRSS line")]
    NoRss { path: String },
}

/// Which process to sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Process {
    This,
    Pid(u32),
}

impl Process {
    fn status_path(self) -> String {
        match self {
            Self::This => "/proc/self/status".into(),
            Self::Pid(pid) => format!("/proc/{pid}/status"),
        }
    }
}

/// Resident memory of `process`, in KiB.
pub fn resident_kib(process: Process) -> Result<u64, MemoryError> {
    let path = process.status_path();
    let status = std::fs::read_to_string(&path).map_err(|source| MemoryError::Read {
        path: path.clone(),
        source,
    })?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or(MemoryError::NoRss { path })
}

/// A running sampler; [`stop`](Self::stop) returns what it saw.
pub struct Sampler {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<Vec<(f64, f64)>>,
}

impl Sampler {
    /// Samples `process` every `every`, from now. Fails at once if the process cannot be read.
    pub fn start(process: Process, every: Duration) -> Result<Self, MemoryError> {
        resident_kib(process)?;
        let stop = CancellationToken::new();
        let token = stop.clone();
        let task = tokio::spawn(async move {
            let started = Instant::now();
            let mut samples = Vec::new();
            let mut ticker = tokio::time::interval(every);
            loop {
                tokio::select! {
                    _ = token.cancelled() => break,
                    _ = ticker.tick() => {}
                }
                // A process that ended is a run that ended: keep what was sampled.
                match resident_kib(process) {
                    Ok(kib) => samples.push((started.elapsed().as_secs_f64(), kib as f64 / 1024.0)),
                    Err(_) => break,
                }
            }
            samples
        });
        Ok(Self { stop, task })
    }

    pub async fn stop(self, process: Process) -> MemoryReport {
        self.stop.cancel();
        let samples = self.task.await.unwrap_or_default();
        MemoryReport::from_samples(process, samples)
    }
}

/// Resident memory over the run, in MiB.
#[derive(Debug, Clone, Default, Serialize)]
pub struct MemoryReport {
    pub process: String,
    /// `[seconds, MiB]`.
    pub samples: Vec<(f64, f64)>,
    pub first_mib: f64,
    pub max_mib: f64,
    pub last_mib: f64,
    pub warm_up_seconds: f64,
    /// Slope of a least-squares line through the samples after the warm-up; `None` with fewer than
    /// two of them.
    pub slope_mib_per_minute: Option<f64>,
    /// Mean of the first and of the last minute after the warm-up (when the run has two such minutes).
    pub first_minute_mib: Option<f64>,
    pub last_minute_mib: Option<f64>,
}

impl MemoryReport {
    fn from_samples(process: Process, samples: Vec<(f64, f64)>) -> Self {
        let process = match process {
            Process::This => format!("this process ({})", std::process::id()),
            Process::Pid(pid) => format!("pid {pid}"),
        };
        let values = || samples.iter().map(|(_, mib)| *mib);
        let first_mib = values().next().unwrap_or_default();
        let last_mib = values().next_back().unwrap_or_default();
        let max_mib = values().fold(0.0, f64::max);
        let end = samples.last().map_or(0.0, |(t, _)| *t);
        // The warm-up is a minute, or the first fifth of a shorter run.
        let warm_up_seconds = WARM_UP.as_secs_f64().min(end / 5.0);
        let steady: Vec<(f64, f64)> = samples
            .iter()
            .copied()
            .filter(|(t, _)| *t >= warm_up_seconds)
            .collect();
        let mean_between = |from: f64, to: f64| {
            let window: Vec<f64> = steady
                .iter()
                .filter(|(t, _)| (from..to).contains(t))
                .map(|(_, mib)| *mib)
                .collect();
            (!window.is_empty()).then(|| window.iter().sum::<f64>() / window.len() as f64)
        };
        let (first_minute_mib, last_minute_mib) = if end - warm_up_seconds >= 120.0 {
            (
                mean_between(warm_up_seconds, warm_up_seconds + 60.0),
                mean_between(end - 60.0, f64::INFINITY),
            )
        } else {
            (None, None)
        };
        Self {
            process,
            first_mib,
            max_mib,
            last_mib,
            warm_up_seconds,
            slope_mib_per_minute: slope(&steady).map(|per_second| per_second * 60.0),
            first_minute_mib,
            last_minute_mib,
            samples,
        }
    }
}

/// Least-squares slope of `points` (y per unit of x).
fn slope(points: &[(f64, f64)]) -> Option<f64> {
    if points.len() < 2 {
        return None;
    }
    let n = points.len() as f64;
    let mean_x = points.iter().map(|(x, _)| x).sum::<f64>() / n;
    let mean_y = points.iter().map(|(_, y)| y).sum::<f64>() / n;
    let covariance: f64 = points.iter().map(|(x, y)| (x - mean_x) * (y - mean_y)).sum();
    let variance: f64 = points.iter().map(|(x, _)| (x - mean_x).powi(2)).sum();
    (variance > 0.0).then(|| covariance / variance)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_has_a_resident_size() {
        assert!(resident_kib(Process::This).is_ok_and(|kib| kib > 0));
        assert!(resident_kib(Process::Pid(u32::MAX)).is_err());
    }

    #[test]
    fn flatness_is_judged_after_the_warm_up() {
        // A climb during the first minute, then flat for four minutes.
        let samples: Vec<(f64, f64)> = (0..300)
            .map(|t| (t as f64, if t < 60 { 50.0 + t as f64 } else { 110.0 }))
            .collect();
        let report = MemoryReport::from_samples(Process::This, samples);
        assert_eq!(report.warm_up_seconds, 59.8);
        assert_eq!(report.max_mib, 110.0);
        assert!(report.slope_mib_per_minute.is_some_and(|s| s.abs() < 0.01));
        assert_eq!(report.last_minute_mib, Some(110.0));

        let growing: Vec<(f64, f64)> = (0..300).map(|t| (t as f64, 100.0 + t as f64 / 60.0)).collect();
        let report = MemoryReport::from_samples(Process::This, growing);
        assert!(
            report
                .slope_mib_per_minute
                .is_some_and(|s| (s - 1.0).abs() < 1e-6)
        );
        assert!(slope(&[(1.0, 1.0)]).is_none());
    }
}
