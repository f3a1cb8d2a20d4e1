//! Cache access for the harness's nodes: slow fills (correct, the race window held open) and the
//! naive design's writes, each plugged into the service's own read path or updater through its seams
//! ([`ReadThrough`], [`UpdateCache`]).

use std::time::Duration;

use rand::Rng;
use service::cache::{
    CacheError, Cached, Lease, Miss, OrderCache, RedisConnection, RedisTarget, WriteOutcome, encode,
};
use service::domain::OrderId;
use service::events::cache_updater::UpdateCache;
use service::proto::orders::v1 as pb;
use service::reads::ReadThrough;

/// The longest a slow fill waits between the database read and the fill: several times what the
/// updater takes to apply an event (tens of milliseconds), so that changes committed during a read
/// often reach the cache before the read's fill.
pub const SLOW_FILL_MAX: Duration = Duration::from_millis(500);

/// A read path whose fills wait a random time (up to [`SLOW_FILL_MAX`]) after the database read. The
/// correct protocol must stay consistent with any delay; a random one makes late fills overtake each
/// other, which a fixed one would not.
#[derive(Clone)]
pub struct SlowFill<C> {
    inner: C,
}

impl<C> SlowFill<C> {
    pub fn new(inner: C) -> Self {
        Self { inner }
    }
}

impl<C: ReadThrough> ReadThrough for SlowFill<C> {
    async fn get_many(&self, ids: &[OrderId]) -> Result<Vec<Cached>, CacheError> {
        self.inner.get_many(ids).await
    }

    async fn lease_many(&self, misses: &[Miss<'_>]) -> Result<Vec<Option<Lease>>, CacheError> {
        self.inner.lease_many(misses).await
    }

    async fn fill_many(&self, fills: &[(&pb::Order, &Lease)]) -> Result<Vec<WriteOutcome>, CacheError> {
        let delay = rand::rng().random_range(Duration::ZERO..=SLOW_FILL_MAX);
        tokio::time::sleep(delay).await;
        self.inner.fill_many(fills).await
    }
}

/// Broken: fills without leases, the naive ways. Every miss fills, with
///
/// * [`RawWrite::IfAbsentOrOlder`]: a compare-and-set that writes over an older entry *or an absent
///   key* (the service before leases): after the key vanished, a late fill brings back a version older
///   than one the cache already held;
/// * [`RawWrite::Blind`]: a blind `SET` (the naive design's read-through race): a late fill overwrites
///   a newer entry even while it is there.
#[derive(Clone)]
pub struct UnleasedFill {
    cache: OrderCache,
    raw: RawWrites,
    how: RawWrite,
}

impl UnleasedFill {
    pub fn new(cache: OrderCache, raw: RawWrites, how: RawWrite) -> Self {
        Self { cache, raw, how }
    }
}

impl ReadThrough for UnleasedFill {
    async fn get_many(&self, ids: &[OrderId]) -> Result<Vec<Cached>, CacheError> {
        self.cache.get_many(ids).await
    }

    async fn lease_many(&self, misses: &[Miss<'_>]) -> Result<Vec<Option<Lease>>, CacheError> {
        Ok(misses.iter().map(|_| Some(Lease::new())).collect())
    }

    async fn fill_many(&self, fills: &[(&pb::Order, &Lease)]) -> Result<Vec<WriteOutcome>, CacheError> {
        let orders: Vec<&pb::Order> = fills.iter().map(|(order, _)| *order).collect();
        self.raw.write(&orders, self.how).await
    }
}

/// Broken: the updater writes with a blind `SET`, so a redelivered or late event overwrites a newer
/// entry.
pub struct BlindWrite {
    raw: RawWrites,
}

impl BlindWrite {
    pub fn new(raw: RawWrites) -> Self {
        Self { raw }
    }
}

impl UpdateCache for BlindWrite {
    async fn update_many(&self, orders: &[pb::Order]) -> Result<Vec<WriteOutcome>, CacheError> {
        let orders: Vec<&pb::Order> = orders.iter().collect();
        self.raw.write(&orders, RawWrite::Blind).await
    }
}

/// How a broken writer writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RawWrite {
    /// `SET`, whatever the key holds.
    Blind,
    /// `SET` unless the key holds this version or a newer one: the compare-and-set without leases.
    IfAbsentOrOlder,
}

/// Write `ARGV[2]` with TTL `ARGV[3]` ms unless the key holds version `ARGV[1]` or newer.
const IF_ABSENT_OR_OLDER: &str = r"
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

/// The broken writers' own connection to Redis (one, or a cluster), with the service's entry format
/// and TTL.
#[derive(Clone)]
pub struct RawWrites {
    redis: RedisConnection,
    ttl: Duration,
    if_absent_or_older: redis::Script,
}

impl RawWrites {
    pub async fn connect(url: &str, ttl: Duration) -> Result<Self, CacheError> {
        Ok(Self {
            redis: RedisConnection::connect_lazy(&RedisTarget::parse(url)?)?,
            ttl,
            if_absent_or_older: redis::Script::new(IF_ABSENT_OR_OLDER),
        })
    }

    async fn write(&self, orders: &[&pb::Order], how: RawWrite) -> Result<Vec<WriteOutcome>, CacheError> {
        let ttl_ms = self.ttl.as_millis() as u64;
        let mut redis = self.redis.clone();
        let mut outcomes = Vec::with_capacity(orders.len());
        for order in orders {
            let key = service::cache::key(order.order_id);
            let written = match how {
                RawWrite::Blind => {
                    let _: () = redis::cmd("SET")
                        .arg(&key)
                        .arg(encode(order))
                        .arg("PX")
                        .arg(ttl_ms)
                        .query_async(&mut redis)
                        .await?;
                    true
                }
                RawWrite::IfAbsentOrOlder => {
                    let reply: i64 = self
                        .if_absent_or_older
                        .key(&key)
                        .arg(order.version)
                        .arg(encode(order))
                        .arg(ttl_ms)
                        .invoke_async(&mut redis)
                        .await?;
                    reply == 1
                }
            };
            outcomes.push(if written {
                WriteOutcome::Written
            } else {
                WriteOutcome::Stale
            });
        }
        Ok(outcomes)
    }
}
