//! What the benchmarks share: when to run at all, settings from the environment, failing with a
//! message, and the tally of rates behind the ratios printed at the end.
//!
//! Both benchmarks start real servers and move real data, so they run only under `cargo bench`
//! (criterion is then given `--bench`). Built or run any other way (`cargo test --benches`,
//! `cargo clippy --all-targets`), they do nothing: `cargo test --workspace` stays light.

#![allow(dead_code)] // each benchmark uses part of this

use std::collections::BTreeMap;
use std::fmt::Display;
use std::sync::Mutex;
use std::time::Duration;

/// Whether this is a `cargo bench` run.
pub fn benchmarking() -> bool {
    std::env::args().any(|arg| arg == "--bench")
}

/// A positive whole number from the environment, or `default`; anything else stops the benchmark
/// with a message naming the variable.
pub fn env_number(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Err(_) => default,
        Ok(text) => match text.trim().replace('_', "").parse::<u64>() {
            Ok(value) if value > 0 => value,
            _ => panic!("{name}={text:?}: expected a positive whole number"),
        },
    }
}

/// The value, or a panic naming what failed (a benchmark cannot go on without its servers, and
/// unwinding stops them).
pub fn must<T, E: Display>(what: &str, result: Result<T, E>) -> T {
    match result {
        Ok(value) => value,
        Err(error) => panic!("{what}: {error}"),
    }
}

/// A runtime for the servers and the async clients: all the machine's cores, as the service has.
pub fn runtime() -> tokio::runtime::Runtime {
    must(
        "tokio runtime",
        tokio::runtime::Builder::new_multi_thread().enable_all().build(),
    )
}

/// The rates every measured iteration achieved, by benchmark, so that ratios can be printed from the
/// same iterations criterion measured.
#[derive(Default)]
pub struct Tally {
    rates: Mutex<BTreeMap<String, Vec<f64>>>,
}

impl Tally {
    /// One iteration of `benchmark`: `elements` in `elapsed`.
    pub fn record(&self, benchmark: &str, elements: u64, elapsed: Duration) {
        let rate = elements as f64 / elapsed.as_secs_f64().max(1e-9);
        let mut rates = self
            .rates
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        rates.entry(benchmark.to_owned()).or_default().push(rate);
    }

    /// The median rate of `benchmark` (per second), and how many iterations it is the median of.
    pub fn median(&self, benchmark: &str) -> Option<(f64, usize)> {
        let rates = self
            .rates
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut values = rates.get(benchmark)?.clone();
        if values.is_empty() {
            return None;
        }
        values.sort_by(f64::total_cmp);
        Some((values[values.len() / 2], values.len()))
    }
}

/// `a / b` as `1.23x`, or `n/a`.
pub fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}x", a / b),
        _ => "n/a".into(),
    }
}
