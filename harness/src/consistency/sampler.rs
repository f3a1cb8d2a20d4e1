//! The sampler: reads every watched order's cache entry straight from Redis every [`SAMPLE_EVERY`], like
//! a client would (Meta's Polaris does the same against TAO), and records each change in the history:
//! what the monotonicity check and the staleness figures are made of.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::history::History;
use super::workload::Workload;
use crate::inspect::CacheInspector;

/// How often the sampler reads every known order from the cache.
pub const SAMPLE_EVERY: Duration = Duration::from_millis(10);

/// Samples until `stop`. A frozen or restarting Redis gives no sample: each series keeps its last
/// value until Redis answers again.
pub async fn sample_cache(
    cache: CacheInspector,
    workload: Workload,
    history: Arc<History>,
    stop: CancellationToken,
) {
    while !stop.is_cancelled() {
        let ids = workload.watched_ids();
        let at = history.now();
        if let Ok(Ok(versions)) = tokio::time::timeout(Duration::from_millis(200), cache.versions(&ids)).await
        {
            for (id, version) in ids.iter().zip(versions) {
                history.record_cache(*id, version, at);
            }
        }
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(SAMPLE_EVERY) => {}
        }
    }
}
