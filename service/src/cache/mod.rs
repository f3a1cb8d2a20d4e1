//! The Redis cache of orders: key `order:{id}`, value `{version}:{orders.v1.Order protobuf bytes}`.
//!
//! # The protocol
//!
//! Two kinds of writers put orders in the cache: readers filling a miss with what they read from the
//! database, and the cache updater applying the events of committed changes. Either can be late: a
//! reader that read version 4 may fill after version 5 was committed and cached. A version
//! compare-and-set stops a late write while the newer entry is there, but not after the key vanished
//! (Redis restarted empty, `FLUSHALL`, eviction under `maxmemory`, expiry): it cannot compare with
//! nothing. So the cache follows memcache's leases (Nishtala et al., "Scaling Memcache at Facebook",
//! NSDI 2013, section 3.2.1), adapted to versioned entries:
//!
//! 1. **A miss takes a lease.** A reader that finds no entry sets the key to `lease:{token}` (if it is
//!    still absent) *before* it reads the database, so the database answers with every version
//!    committed before the key went missing, and more.
//! 2. **A fill lands only on its own lease** (or, by compare-and-set, over an older entry). Any other
//!    write replaces the lease, and the loss of the key takes it away: either way the fill finds its
//!    token gone and gives up.
//! 3. **The updater never creates an entry.** It compare-and-sets an entry that is there, deletes a
//!    lease it finds (so that a fill which may hold an older version cannot land; the next reader
//!    fills from the database instead), and leaves an absent key absent. An event can be late too: it
//!    can be redelivered after a rebalance, or applied after a reader already filled a newer version;
//!    writing it into an absent key could bring back a version older than one the key held before it
//!    vanished.
//!
//! # Guarantees
//!
//! * **Monotonic.** Once the cache held version `v` of an order, it never holds an older one, across
//!   any loss of the key: every write either lands on a lease taken when the key was absent, with a
//!   version read afterwards from the database (so `>= v`), or replaces an entry older than itself.
//! * **Convergent.** Once the updater applied an order's last event, the cache holds that version or
//!   nothing: an entry it found is updated, a pending fill is revoked.
//! * **Cost.** A hit is one `MGET`, as without leases; a miss costs one round trip more (the lease
//!   script, pipelined for all the misses of a read).
//!
//! What it does not cover: a Redis that goes *back in time* (a restart from an old snapshot, a
//! failover to a replica that had copied an older entry but not the newer one that replaced it) can
//! bring back an older entry or a revoked lease. The local stack runs Redis without persistence, so a
//! restart starts empty.
//!
//! The cache runs on one Redis or on a Redis Cluster ([`connection`]): the scripts touch one key
//! each, so they run wherever the key's slot lives. On a cluster the updater's writes count as done
//! only once a replica holds them, which keeps a failover from taking the cache back to the entry an
//! update replaced (see [`OrderCache::update_many`]).
//!
//! Redis is an optimisation, never a dependency: every call has a short response timeout, and callers
//! treat an error as a miss.

pub mod breaker;
pub mod connection;
mod entry;
mod scripts;

use std::time::Duration;

pub use breaker::CircuitBreaker;
pub use connection::{Confirm, RedisConnection, RedisTarget};
pub use entry::{Cached, LEASE_PREFIX, Lease, decode, encode, key, version};
pub use scripts::WriteOutcome;
use scripts::{CacheScript, ScriptCall};

use crate::domain::OrderId;
use crate::proto::orders::v1 as pb;

/// How long a lease holds. A fill comes milliseconds after its lease; a reader that dies in between
/// keeps others from filling that key for this long (they still read the database). memcache hands
/// out one token per key every 10 s for the same reason.
pub const LEASE_TTL: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error(transparent)]
    Redis(#[from] redis::RedisError),
    #[error("redis answered {0} to a cache script")]
    UnexpectedReply(i64),
    /// A master ran the writes, but no replica confirmed holding them: a failover could lose them.
    #[error("no replica confirmed {writes} cache writes within {within:?}")]
    NotReplicated { writes: usize, within: Duration },
    #[error("REDIS_URL names no Redis")]
    NoUrl,
    #[error("REDIS_URL: {url} is not a Redis URL")]
    BadUrl { url: String, source: redis::RedisError },
}

/// A key the reader found without a usable entry.
#[derive(Debug, Clone, Copy)]
pub struct Miss<'a> {
    pub id: OrderId,
    /// What the key held instead of an entry, if it held something unreadable (it may be replaced).
    pub unreadable: Option<&'a [u8]>,
}

#[derive(Clone)]
pub struct OrderCache {
    redis: RedisConnection,
    ttl: Duration,
    lease: std::sync::Arc<CacheScript>,
    write: std::sync::Arc<CacheScript>,
}

impl OrderCache {
    /// Connects lazily to `url` (one Redis, or a comma-separated list of a cluster's nodes): the
    /// service starts while Redis is down and uses it once it answers.
    pub fn connect_lazy(url: &str, ttl: Duration) -> Result<Self, CacheError> {
        let target = RedisTarget::parse(url)?;
        Ok(Self {
            redis: RedisConnection::connect_lazy(&target)?,
            ttl,
            lease: std::sync::Arc::new(CacheScript::new(scripts::LEASE)),
            write: std::sync::Arc::new(CacheScript::new(scripts::WRITE)),
        })
    }

    /// Keys a cluster read sent the slow way so far ([`RedisConnection::keys_read_astray`]).
    pub fn keys_read_astray(&self) -> u64 {
        self.redis.keys_read_astray()
    }

    /// Whether the cache is on a Redis Cluster.
    pub fn is_cluster(&self) -> bool {
        matches!(self.redis, RedisConnection::Cluster(..))
    }

    /// What the cache holds for each of `ids`, in their order: one `MGET` (on a cluster, one pipeline
    /// per master).
    pub async fn get_many(&self, ids: &[OrderId]) -> Result<Vec<Cached>, CacheError> {
        let keys: Vec<String> = ids.iter().map(|id| key(id.get())).collect();
        let values = self.redis.get_many(&keys).await?;
        Ok(values.into_iter().map(decode).collect())
    }

    /// Takes a lease on each missing entry, in one round trip; `None` where the key holds an entry or
    /// another reader's lease by now.
    pub async fn lease_many(&self, misses: &[Miss<'_>]) -> Result<Vec<Option<Lease>>, CacheError> {
        let leases: Vec<Lease> = misses.iter().map(|_| Lease::new()).collect();
        let ttl_ms = LEASE_TTL.as_millis().to_string().into_bytes();
        let calls: Vec<ScriptCall> = misses
            .iter()
            .zip(&leases)
            .map(|(miss, lease)| {
                let args = vec![
                    lease.token().as_bytes().to_vec(),
                    ttl_ms.clone(),
                    miss.unreadable.unwrap_or_default().to_vec(),
                ];
                self.lease.call(key(miss.id.get()), args)
            })
            .collect();
        // A lease lost with a master leaves its key absent on the replica that takes over: a miss.
        let granted = self.redis.run_scripts(&calls, Confirm::Master).await?;
        Ok(granted
            .into_iter()
            .zip(leases)
            .map(|(granted, lease)| (granted == 1).then_some(lease))
            .collect())
    }

    /// Fills misses with what the database answered after their leases: each order lands on its own
    /// lease, or over an older entry.
    ///
    /// A fill is not waited for on a cluster: one lost with its master leaves the replica's copy of the
    /// key as it was when the reader found it missing (its lease, or nothing), and the next reader fills
    /// it again.
    pub async fn fill_many(&self, fills: &[(&pb::Order, &Lease)]) -> Result<Vec<WriteOutcome>, CacheError> {
        self.write_many(
            fills.iter().map(|(order, lease)| (*order, lease.token())),
            Confirm::Master,
        )
        .await
    }

    /// The updater's write: each order replaces an older entry, revokes a pending lease, and leaves
    /// an absent key absent.
    ///
    /// On a cluster it succeeds only once a replica holds what it did (and what it found: the script
    /// touches an entry it leaves in place, so the wait covers the writes of others before it), since
    /// the updater acknowledges the events to Kafka after it: an update lost with its master would
    /// leave the older entry for good.
    pub async fn update_many(&self, orders: &[pb::Order]) -> Result<Vec<WriteOutcome>, CacheError> {
        self.write_many(orders.iter().map(|order| (order, "")), Confirm::Replicated)
            .await
    }

    /// [`scripts::WRITE`] for each `(order, lease token)` (an empty token: the updater), in one round
    /// trip.
    async fn write_many<'a>(
        &self,
        writes: impl ExactSizeIterator<Item = (&'a pb::Order, &'a str)>,
        confirm: Confirm,
    ) -> Result<Vec<WriteOutcome>, CacheError> {
        if writes.len() == 0 {
            return Ok(Vec::new());
        }
        let ttl_ms = self.ttl.as_millis().max(1).to_string().into_bytes();
        let calls: Vec<ScriptCall> = writes
            .map(|(order, token)| {
                let args = vec![
                    order.version.to_string().into_bytes(),
                    encode(order),
                    ttl_ms.clone(),
                    token.as_bytes().to_vec(),
                ];
                self.write.call(key(order.order_id), args)
            })
            .collect();
        let replies = self.redis.run_scripts(&calls, confirm).await?;
        replies
            .into_iter()
            .map(|reply| WriteOutcome::from_reply(reply).ok_or(CacheError::UnexpectedReply(reply)))
            .collect()
    }

    pub async fn ping(&self) -> Result<(), CacheError> {
        let mut redis = self.redis.clone();
        let _: String = redis::cmd("PING").query_async(&mut redis).await?;
        Ok(())
    }
}
