//! Admission control: at most a fixed number of `OrderService` calls run at once; a call that finds no
//! room within [`QUEUE_WAIT`] is refused with `RESOURCE_EXHAUSTED` instead of waiting without end.
//!
//! Why: past the point where the database (or Redis) is saturated, every extra call in progress only
//! adds to everyone's latency, and a queue without a bound turns a burst into minutes of timeouts. A
//! refused call costs the server next to nothing and tells the client to back off; the calls that are
//! admitted keep the latency of a loaded, not an overloaded, server.
//!
//! Health checks and reflection are not counted: an overloaded server is still alive, and a load
//! balancer that saw it as dead would move its load onto the others and overload them in turn.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::Status;

use crate::telemetry::metrics;

/// How long a call may wait for room before it is refused: long enough to absorb the jitter of a
/// server at capacity (calls take milliseconds), short enough that a refused client retries soon.
pub const QUEUE_WAIT: Duration = Duration::from_millis(50);

/// How long a refused client is asked to wait before it tries again: the `grpc-retry-pushback-ms`
/// metadata of the refusal, which gRPC's retry policy honours (gRFC A6) and so does the project's load
/// test. Refusals are cheap but not free, and an overloaded server has no CPU to spare: with 1,024 goose
/// users on a server that saturates at 16 (`bash loadtest/overload.sh`, 2 cores), users retrying at once
/// were served 1,228 creates/s, with a 100 ms pause 1,777/s, with 1 s 2,129/s (docs/BENCHMARKS.md
/// section 7).
pub const RETRY_PUSHBACK: Duration = Duration::from_millis(1000);

/// The metadata key of [`RETRY_PUSHBACK`], in milliseconds.
pub const RETRY_PUSHBACK_KEY: &str = "grpc-retry-pushback-ms";

/// The calls in progress, and the bound on them.
#[derive(Clone)]
pub struct Admission {
    permits: Arc<Semaphore>,
    limit: usize,
}

impl Admission {
    pub fn new(limit: usize) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(limit)),
            limit,
        }
    }

    /// Room for one call, held until the permit is dropped; `RESOURCE_EXHAUSTED` if none frees up
    /// within [`QUEUE_WAIT`].
    pub async fn admit(&self) -> Result<OwnedSemaphorePermit, Status> {
        let permit = tokio::time::timeout(QUEUE_WAIT, self.permits.clone().acquire_owned()).await;
        match permit {
            Ok(Ok(permit)) => Ok(permit),
            // Timed out, or (never: the semaphore is not closed) closed.
            Ok(Err(_)) | Err(_) => {
                metrics::grpc_shed();
                let mut status = Status::resource_exhausted(format!(
                    "the server is at its limit of {} calls in progress; retry with back-off",
                    self.limit
                ));
                let pushback = u64::try_from(RETRY_PUSHBACK.as_millis()).unwrap_or(u64::MAX);
                status.metadata_mut().insert(RETRY_PUSHBACK_KEY, pushback.into());
                Err(status)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_call_beyond_the_limit_is_refused_and_room_comes_back_when_a_call_ends() {
        let admission = Admission::new(2);
        let first = admission.admit().await.expect("room for the first");
        let _second = admission.admit().await.expect("room for the second");

        let refused = admission.admit().await.expect_err("no room for a third");
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
        assert_eq!(
            refused.message(),
            "the server is at its limit of 2 calls in progress; retry with back-off"
        );
        let pushback = refused.metadata().get(RETRY_PUSHBACK_KEY).expect("a pushback");
        assert_eq!(pushback.to_str().ok(), Some("1000"));

        drop(first);
        let _third = admission.admit().await.expect("room again once a call ended");
    }

    #[tokio::test]
    async fn a_call_waits_for_room_that_frees_up_within_the_queue_wait() {
        let admission = Admission::new(1);
        let first = admission.admit().await.expect("room");
        let waiting = tokio::spawn({
            let admission = admission.clone();
            async move { admission.admit().await.map(drop) }
        });
        tokio::time::sleep(QUEUE_WAIT / 5).await;
        drop(first);
        waiting
            .await
            .expect("no panic")
            .expect("admitted once the first call ended");
    }
}
