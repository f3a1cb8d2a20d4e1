//! Ground truth: what Redis really holds, read directly rather than through the API (a `GetOrder` that
//! misses fills the cache itself, so it cannot show that the updater did). Uses the service's own cache
//! key and entry format.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use service::cache::{self, CacheError, Cached, RedisConnection, RedisTarget};
use service::proto::orders::v1 as pb;

/// Reads the cache's entries as Redis has them, on one Redis or a cluster (the service's own
/// connection type, so a cluster's keys are read where their slots live).
#[derive(Clone)]
pub struct CacheInspector {
    target: RedisTarget,
    redis: Arc<Mutex<RedisConnection>>,
}

impl CacheInspector {
    pub async fn connect(redis_url: &str) -> Result<Self, CacheError> {
        let target = RedisTarget::parse(redis_url)?;
        Ok(Self {
            redis: Arc::new(Mutex::new(RedisConnection::connect_lazy(&target)?)),
            target,
        })
    }

    fn connection(&self) -> RedisConnection {
        match self.redis.lock() {
            Ok(redis) => redis.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// A new connection in place of one that keeps timing out. The cluster client learns a new slot
    /// map from a redirection or a broken connection, not from a timeout: after a master was paused
    /// until replaced, a reader that kept asking it all along (the sampler) timed out for good
    /// (a soak run's probe: 90 s of timeouts, while the service's own reads had recovered).
    fn reconnect(&self) {
        if let Ok(fresh) = RedisConnection::connect_lazy(&self.target)
            && let Ok(mut redis) = self.redis.lock()
        {
            *redis = fresh;
        }
    }

    /// The raw value of an order's key.
    pub async fn raw(&self, order_id: i64) -> Result<Option<Vec<u8>>, redis::RedisError> {
        self.query(redis::cmd("GET").arg(cache::key(order_id))).await
    }

    /// Runs `command`, once more if the connection had dropped (after a Redis restart the first
    /// command finds the old connection broken; the manager reconnects for the next one). A timeout
    /// replaces the connection for the next command.
    async fn query<T: redis::FromRedisValue>(&self, command: &redis::Cmd) -> Result<T, redis::RedisError> {
        let mut redis = self.connection();
        match command.query_async(&mut redis).await {
            Err(error) if error.is_timeout() => {
                self.reconnect();
                Err(error)
            }
            Err(error) if error.is_io_error() || error.is_connection_dropped() => {
                command.query_async(&mut redis).await
            }
            result => result,
        }
    }

    /// An order's entry, decoded as the service decodes it (a lease reads as a miss).
    pub async fn entry(&self, order_id: i64) -> Result<Cached, redis::RedisError> {
        Ok(cache::decode(self.raw(order_id).await?))
    }

    /// Each order's entry, in one `MGET`.
    pub async fn entries(&self, order_ids: &[i64]) -> Result<Vec<Cached>, redis::RedisError> {
        Ok(self
            .values(order_ids)
            .await?
            .into_iter()
            .map(cache::decode)
            .collect())
    }

    async fn values(&self, order_ids: &[i64]) -> Result<Vec<Option<Vec<u8>>>, redis::RedisError> {
        if order_ids.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<String> = order_ids.iter().map(|id| cache::key(*id)).collect();
        self.query(redis::cmd("MGET").arg(&keys)).await
    }

    /// The version each order's key announces (`None`: absent, a lease, or unreadable), in one `MGET`.
    pub async fn versions(&self, order_ids: &[i64]) -> Result<Vec<Option<i64>>, redis::RedisError> {
        Ok(self
            .values(order_ids)
            .await?
            .into_iter()
            .map(|value| value.as_deref().and_then(cache::version))
            .collect())
    }

    /// Polls until Redis holds `version` of the order or a newer one, and returns that entry; on
    /// timeout, says what it held last.
    pub async fn wait_for_version(
        &self,
        order_id: i64,
        version: i64,
        within: Duration,
    ) -> Result<pb::Order, String> {
        let deadline = Instant::now() + within;
        loop {
            let last = match self.entry(order_id).await {
                Ok(Cached::Hit(order)) if order.version >= version => return Ok(order),
                Ok(Cached::Hit(order)) => format!("version {}", order.version),
                Ok(Cached::Miss) => "no entry".into(),
                Ok(Cached::Corrupt(_)) => "a corrupt entry".into(),
                Err(error) => format!("redis: {error}"),
            };
            if Instant::now() > deadline {
                return Err(format!(
                    "Redis did not hold order {order_id} version {version} within {within:?}; last: {last}"
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
