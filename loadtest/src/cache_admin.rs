//! Direct access to the service's Redis, for what a client of the API cannot do: evict an order
//! before a cold read, flush the run's orders, and count cached orders without filling the cache (a
//! `GetOrder` would fill it on a miss).
//!
//! Only the run's own keys are touched (`order:{id}` of the orders it created), never `FLUSHALL`:
//! the Redis may be shared.

use service::cache::{CacheError, RedisConnection, RedisTarget};
use service::domain::OrderId;

/// Keys per `DEL` or `EXISTS`, to keep each command small.
const KEYS_PER_COMMAND: usize = 1000;

#[derive(Debug, thiserror::Error)]
pub enum CacheAdminError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("redis")]
    Cache(#[from] CacheError),
    #[error("order id {0} is not valid")]
    OrderId(i64),
}

/// One Redis or a cluster (the service's connection type: on a cluster, `DEL` and `EXISTS` go to
/// each key's master and their counts are summed).
#[derive(Clone)]
pub struct CacheAdmin {
    redis: RedisConnection,
}

impl CacheAdmin {
    /// Connects and pings now, so that a wrong `--redis-url` fails before the run rather than in it.
    pub async fn connect(url: &str) -> Result<Self, CacheAdminError> {
        let mut redis = RedisConnection::connect_lazy(&RedisTarget::parse(url)?)?;
        let _: String = redis::cmd("PING").query_async(&mut redis).await?;
        Ok(Self { redis })
    }

    /// Deletes the cached copy of one order.
    pub async fn evict(&self, order_id: i64) -> Result<(), CacheAdminError> {
        let mut redis = self.redis.clone();
        let _: i64 = redis::cmd("DEL")
            .arg(key(order_id)?)
            .query_async(&mut redis)
            .await?;
        Ok(())
    }

    /// Deletes the cached copies of `ids`; returns how many there were.
    pub async fn evict_many(&self, ids: &[i64]) -> Result<usize, CacheAdminError> {
        self.count_keys("DEL", ids).await
    }

    /// How many of `ids` are cached.
    pub async fn cached(&self, ids: &[i64]) -> Result<usize, CacheAdminError> {
        self.count_keys("EXISTS", ids).await
    }

    /// `DEL` and `EXISTS` both answer how many of their keys there were.
    async fn count_keys(&self, command: &str, ids: &[i64]) -> Result<usize, CacheAdminError> {
        let mut redis = self.redis.clone();
        let mut total = 0;
        for chunk in ids.chunks(KEYS_PER_COMMAND) {
            let keys = chunk.iter().map(|&id| key(id)).collect::<Result<Vec<_>, _>>()?;
            let counted: usize = redis::cmd(command).arg(keys).query_async(&mut redis).await?;
            total += counted;
        }
        Ok(total)
    }
}

/// The service's own cache key for an order.
fn key(order_id: i64) -> Result<String, CacheAdminError> {
    OrderId::parse(order_id)
        .map(|id| service::cache::key(id.get()))
        .map_err(|_| CacheAdminError::OrderId(order_id))
}
