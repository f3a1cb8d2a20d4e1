//! A circuit breaker for the read path's calls to Redis.
//!
//! Redis is an optimisation for reads: when it does not answer, a read goes to the database. But "does
//! not answer" costs the response timeout (500 ms) on every read that asks, which turns a Redis outage
//! into a latency outage. After [`FAILURES_TO_OPEN`] failures in a row the breaker *opens*: reads skip
//! Redis altogether for [`OPEN_FOR`]. Then one read is let through as a probe (*half-open*): if Redis
//! answers it the breaker closes and reads use the cache again; if not, it stays open for another
//! [`OPEN_FOR`]. So while Redis is down, one read per second pays the timeout instead of all of them,
//! and the cache comes back on its own within a second of Redis.
//!
//! A probe whose read was cancelled never reports; after [`PROBE_TIMEOUT`] another read probes.
//!
//! The updater does not go through it: it has nothing to fall back on, and retries with back-off.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use crate::telemetry::metrics;

/// Failures in a row that open the breaker.
pub const FAILURES_TO_OPEN: u32 = 3;

/// How long reads skip Redis once the breaker opened.
pub const OPEN_FOR: Duration = Duration::from_secs(1);

/// How long a probe may take before another read probes instead (a little more than Redis's
/// connection and response timeouts of 500 ms each).
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Redis is used; `failures` in a row so far.
    Closed { failures: u32 },
    /// Redis is skipped until `until`.
    Open { until: Instant },
    /// One read is trying Redis since `since`; the others skip it.
    HalfOpen { since: Instant },
}

#[derive(Debug)]
pub struct CircuitBreaker {
    state: Mutex<State>,
}

impl Default for CircuitBreaker {
    fn default() -> Self {
        Self {
            state: Mutex::new(State::Closed { failures: 0 }),
        }
    }
}

impl CircuitBreaker {
    /// Whether this read should ask Redis. A read that was allowed must report how it went.
    pub fn allow(&self) -> bool {
        let now = Instant::now();
        let mut state = self.lock();
        match *state {
            State::Closed { .. } => true,
            State::Open { until } if now < until => false,
            State::HalfOpen { since } if now < since + PROBE_TIMEOUT => false,
            State::Open { .. } | State::HalfOpen { .. } => {
                *state = State::HalfOpen { since: now };
                true
            }
        }
    }

    /// Redis answered.
    pub fn succeeded(&self) {
        let mut state = self.lock();
        if !matches!(*state, State::Closed { .. }) {
            tracing::info!("redis answers again; reads use the cache");
            metrics::cache_breaker_open(false);
        }
        *state = State::Closed { failures: 0 };
    }

    /// Redis did not answer.
    pub fn failed(&self) {
        let mut state = self.lock();
        let failures = match *state {
            State::Closed { failures } => failures + 1,
            // A failed probe, or a read let through before the breaker opened.
            State::HalfOpen { .. } | State::Open { .. } => FAILURES_TO_OPEN,
        };
        *state = if failures >= FAILURES_TO_OPEN {
            if matches!(*state, State::Closed { .. }) {
                tracing::warn!("redis does not answer; reads skip the cache, probing it every {OPEN_FOR:?}");
                metrics::cache_breaker_open(true);
            }
            State::Open {
                until: Instant::now() + OPEN_FOR,
            }
        } else {
            State::Closed { failures }
        };
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // The state is a plain value, valid whatever a panicking holder was doing.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opened() -> CircuitBreaker {
        let breaker = CircuitBreaker::default();
        for _ in 0..FAILURES_TO_OPEN {
            assert!(breaker.allow());
            breaker.failed();
        }
        breaker
    }

    #[tokio::test(start_paused = true)]
    async fn it_opens_after_enough_failures_in_a_row_and_a_success_in_between_resets_the_count() {
        let breaker = CircuitBreaker::default();
        for _ in 0..FAILURES_TO_OPEN - 1 {
            breaker.failed();
        }
        breaker.succeeded();
        for _ in 0..FAILURES_TO_OPEN - 1 {
            breaker.failed();
        }
        assert!(breaker.allow(), "still closed: the success reset the count");
        breaker.failed();
        assert!(
            !breaker.allow(),
            "open after {FAILURES_TO_OPEN} failures in a row"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn once_open_it_lets_one_probe_through_after_a_while_and_closes_if_it_succeeds() {
        let breaker = opened();
        tokio::time::advance(OPEN_FOR - Duration::from_millis(1)).await;
        assert!(!breaker.allow(), "still open");
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(breaker.allow(), "the probe");
        assert!(!breaker.allow(), "one probe at a time");
        breaker.succeeded();
        assert!(breaker.allow() && breaker.allow(), "closed again");
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_probe_keeps_it_open_for_another_while() {
        let breaker = opened();
        tokio::time::advance(OPEN_FOR).await;
        assert!(breaker.allow(), "the probe");
        breaker.failed();
        assert!(!breaker.allow(), "open again");
        tokio::time::advance(OPEN_FOR).await;
        assert!(breaker.allow(), "the next probe");
    }

    #[tokio::test(start_paused = true)]
    async fn a_probe_that_never_reports_is_replaced_after_its_timeout() {
        let breaker = opened();
        tokio::time::advance(OPEN_FOR).await;
        assert!(breaker.allow(), "a probe, then its read is cancelled");
        tokio::time::advance(PROBE_TIMEOUT - Duration::from_millis(1)).await;
        assert!(!breaker.allow());
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(breaker.allow(), "another probe");
    }
}
