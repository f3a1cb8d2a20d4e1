//! The Redis cache of orders: key `order:{id}`, value `{version}:{orders.v1.Order protobuf bytes}`.
//!
//! Every write goes through one compare-and-set script: it writes only if the key is absent, holds an
//! older version, or holds something unreadable. So the updater can apply events twice or out of order,
//! and a reader that fills a miss with what it read from the database a moment ago can never overwrite a
//! newer version the updater wrote meanwhile (the read-through race of the naive design).
//!
//! Redis is an optimisation, never a dependency: every call has a short response timeout, and callers
//! treat an error as a miss.

use std::time::Duration;

use prost::Message;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use crate::domain::OrderId;
use crate::proto::orders::v1 as pb;

/// Write `ARGV[2]` with TTL `ARGV[3]` ms unless the key holds version `ARGV[1]` or newer.
/// Returns 1 when written, 0 when the cached copy was as new or newer.
const COMPARE_AND_SET: &str = r"
local current = redis.call('GET', KEYS[1])
if current then
  local cached = tonumber(string.match(current, '^(%d+):'))
  if cached and cached >= tonumber(ARGV[1]) then
    return 0
  end
end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return 1
";

/// The naive design's blind write, as a script of the same shape (see [`WriteMode::Unchecked`]).
const UNCHECKED_SET: &str = r"
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return 1
";

/// Delete the key only if it still holds exactly `ARGV[1]` (a corrupt value someone may have replaced).
const DELETE_IF_EQUAL: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
";

#[derive(Debug, thiserror::Error)]
#[error("redis: {0}")]
pub struct CacheError(#[from] redis::RedisError);

/// What the cache holds for one order.
#[derive(Debug, Clone, PartialEq)]
pub enum Cached {
    Hit(pb::Order),
    Miss,
    /// Something that is not a valid entry: treated as a miss, and replaced.
    Corrupt(Vec<u8>),
}

/// Whether a compare-and-set wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Write {
    Written,
    /// The cache already held this version or a newer one.
    Stale,
}

/// How the cache writes. `Unchecked` is the naive design's blind `SET`, kept only so the consistency
/// harness can prove that it catches it; nothing selects it by default.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WriteMode {
    #[default]
    CompareAndSet,
    /// Testing only: a blind `SET`, the naive design's bug.
    Unchecked,
}

#[derive(Clone)]
pub struct OrderCache {
    redis: ConnectionManager,
    ttl: Duration,
    /// The compare-and-set, or the blind write of [`WriteMode::Unchecked`].
    write: redis::Script,
    delete_if_equal: redis::Script,
}

impl OrderCache {
    /// Connects lazily: the service starts while Redis is down and uses it once it answers.
    pub fn connect_lazy(url: &str, ttl: Duration, write_mode: WriteMode) -> Result<Self, CacheError> {
        let client = redis::Client::open(url)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_millis(500)))
            .set_response_timeout(Some(Duration::from_millis(500)))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_secs(1));
        Ok(Self {
            redis: ConnectionManager::new_lazy_with_config(client, config)?,
            ttl,
            write: redis::Script::new(match write_mode {
                WriteMode::CompareAndSet => COMPARE_AND_SET,
                WriteMode::Unchecked => UNCHECKED_SET,
            }),
            delete_if_equal: redis::Script::new(DELETE_IF_EQUAL),
        })
    }

    /// One `MGET` for all `ids`; the answer is in the order of `ids`.
    pub async fn get_many(&self, ids: &[OrderId]) -> Result<Vec<Cached>, CacheError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<String> = ids.iter().map(|id| id.cache_key()).collect();
        let mut redis = self.redis.clone();
        let values: Vec<Option<Vec<u8>>> = redis::cmd("MGET").arg(&keys).query_async(&mut redis).await?;
        Ok(values.into_iter().map(decode).collect())
    }

    /// Writes `order` unless the cache holds its version or a newer one.
    pub async fn put_if_newer(&self, order: &pb::Order) -> Result<Write, CacheError> {
        Ok(self
            .put_many_if_newer(std::slice::from_ref(order))
            .await?
            .remove(0))
    }

    /// [`put_if_newer`](Self::put_if_newer) for many orders in one pipelined round trip.
    pub async fn put_many_if_newer(&self, orders: &[pb::Order]) -> Result<Vec<Write>, CacheError> {
        if orders.is_empty() {
            return Ok(Vec::new());
        }
        let ttl_ms = self.ttl.as_millis().max(1) as u64;
        let mut pipeline = redis::pipe();
        for order in orders {
            let key = format!("order:{}", order.order_id);
            pipeline.invoke_script(
                self.write
                    .key(key)
                    .arg(order.version)
                    .arg(encode(order))
                    .arg(ttl_ms),
            );
        }
        let mut redis = self.redis.clone();
        // EVALSHA with a fallback to EVAL the first time (or after a restart wiped the script cache).
        let replies: Vec<i64> = match pipeline.query_async(&mut redis).await {
            Ok(replies) => replies,
            Err(error) if error.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
                self.write.prepare_invoke().load_async(&mut redis).await?;
                pipeline.query_async(&mut redis).await?
            }
            Err(error) => return Err(error.into()),
        };
        Ok(replies
            .into_iter()
            .map(|written| {
                if written == 1 {
                    Write::Written
                } else {
                    Write::Stale
                }
            })
            .collect())
    }

    /// Removes a corrupt entry, unless someone replaced it meanwhile.
    pub async fn remove_corrupt(&self, id: OrderId, value: &[u8]) -> Result<(), CacheError> {
        let mut redis = self.redis.clone();
        let _: i64 = self
            .delete_if_equal
            .key(id.cache_key())
            .arg(value)
            .invoke_async(&mut redis)
            .await?;
        Ok(())
    }

    pub async fn ping(&self) -> Result<(), CacheError> {
        let mut redis = self.redis.clone();
        let _: String = redis::cmd("PING").query_async(&mut redis).await?;
        Ok(())
    }
}

pub fn encode(order: &pb::Order) -> Vec<u8> {
    let mut value = format!("{}:", order.version).into_bytes();
    order.encode(&mut value).unwrap_or_default();
    value
}

pub fn decode(value: Option<Vec<u8>>) -> Cached {
    let Some(value) = value else { return Cached::Miss };
    let parsed = value.iter().position(|&b| b == b':').and_then(|colon| {
        let version: i64 = std::str::from_utf8(&value[..colon]).ok()?.parse().ok()?;
        let order = pb::Order::decode(&value[colon + 1..]).ok()?;
        (order.version == version && order.order_id > 0).then_some(order)
    });
    match parsed {
        Some(order) => Cached::Hit(order),
        None => Cached::Corrupt(value),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip_and_garbage_is_corrupt() {
        let order = pb::Order {
            order_id: 7,
            version: 3,
            ..Default::default()
        };
        assert_eq!(decode(Some(encode(&order))), Cached::Hit(order));
        assert_eq!(decode(None), Cached::Miss);
        assert!(matches!(decode(Some(b"garbage".to_vec())), Cached::Corrupt(_)));
        assert!(matches!(decode(Some(b"3:\xff\xff".to_vec())), Cached::Corrupt(_)));
        assert!(
            matches!(decode(Some(b"4:".to_vec())), Cached::Corrupt(_)),
            "version must match"
        );
    }
}
