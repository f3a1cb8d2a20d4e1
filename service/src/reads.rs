//! Cache-first reads: Redis first, PostgreSQL for what the cache does not have.
//!
//! * One `MGET` for all requested ids; for the misses, one pipelined round trip of leases, then one
//!   database query, then one pipelined round trip of fills (the [protocol](crate::cache)).
//! * A miss takes its lease *before* the database read, and its fill lands only while the lease holds,
//!   so a reader holding a version it read a moment ago never overwrites a newer one, even if the key
//!   vanished in between.
//! * `min_version` (read-your-writes): a cached copy older than it is bypassed, and left for the
//!   updater to replace.
//! * Redis is optional: when it does not answer, every id is a miss, no lease is asked for, and the
//!   database answers. After a few such reads in a row the reads skip Redis for a while (a
//!   [circuit breaker](crate::cache::CircuitBreaker)), rather than each paying its timeout.
//! * A corrupt cached value is a miss; the lease replaces it (if it is still there).

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;

use crate::cache::{CacheError, Cached, CircuitBreaker, Lease, Miss, OrderCache, WriteOutcome};
use crate::domain::OrderId;
use crate::proto::orders::v1 as pb;
use crate::storage::{Storage, StorageError};
use crate::telemetry::ErrorChain;
use crate::telemetry::metrics;

/// What the read path needs from a cache: [`OrderCache`]'s lookups, leases and fills. A seam, so that
/// the consistency harness can put a deliberately broken cache in the read path and show that its
/// checker notices.
pub trait ReadThrough: Clone + Send + Sync + 'static {
    fn get_many(&self, ids: &[OrderId]) -> impl Future<Output = Result<Vec<Cached>, CacheError>> + Send;

    fn lease_many(
        &self,
        misses: &[Miss<'_>],
    ) -> impl Future<Output = Result<Vec<Option<Lease>>, CacheError>> + Send;

    fn fill_many(
        &self,
        fills: &[(&pb::Order, &Lease)],
    ) -> impl Future<Output = Result<Vec<WriteOutcome>, CacheError>> + Send;
}

impl ReadThrough for OrderCache {
    async fn get_many(&self, ids: &[OrderId]) -> Result<Vec<Cached>, CacheError> {
        OrderCache::get_many(self, ids).await
    }

    async fn lease_many(&self, misses: &[Miss<'_>]) -> Result<Vec<Option<Lease>>, CacheError> {
        OrderCache::lease_many(self, misses).await
    }

    async fn fill_many(&self, fills: &[(&pb::Order, &Lease)]) -> Result<Vec<WriteOutcome>, CacheError> {
        OrderCache::fill_many(self, fills).await
    }
}

#[derive(Clone)]
pub struct OrderReader<C = OrderCache> {
    storage: Storage,
    cache: C,
    breaker: Arc<CircuitBreaker>,
}

/// An order and where it was read from.
#[derive(Debug, Clone, PartialEq)]
pub struct Read {
    pub order: pb::Order,
    pub source: pb::Source,
}

impl<C: ReadThrough> OrderReader<C> {
    pub fn new(storage: Storage, cache: C) -> Self {
        Self {
            storage,
            cache,
            breaker: Arc::default(),
        }
    }

    /// One order, from the cache if it holds `min_version` or newer.
    pub async fn get(&self, id: OrderId, min_version: i64) -> Result<Option<Read>, StorageError> {
        Ok(self.get_many(&[id], min_version).await?.remove(&id))
    }

    /// The orders among `ids` that exist, keyed by id.
    #[tracing::instrument(name = "read orders", skip_all, fields(ids = ids.len(), min_version))]
    pub async fn get_many(
        &self,
        ids: &[OrderId],
        min_version: i64,
    ) -> Result<HashMap<OrderId, Read>, StorageError> {
        let mut unique = HashSet::with_capacity(ids.len());
        let ids: Vec<OrderId> = ids.iter().copied().filter(|id| unique.insert(*id)).collect();

        let (cached, redis_answers) = match self.lookup(&ids).await {
            Some(cached) => (cached, true),
            None => (vec![Cached::Miss; ids.len()], false),
        };

        let mut found = HashMap::with_capacity(ids.len());
        let mut misses = Vec::new();
        let mut outdated = Vec::new();
        for (id, entry) in ids.iter().zip(&cached) {
            match entry {
                Cached::Hit(order) if order.version >= min_version => {
                    metrics::cache_read("hit", 1);
                    let read = Read {
                        order: order.clone(),
                        source: pb::Source::Cache,
                    };
                    found.insert(*id, read);
                }
                Cached::Hit(_) => {
                    metrics::cache_read("stale", 1);
                    outdated.push(*id);
                }
                Cached::Miss => {
                    if redis_answers {
                        metrics::cache_read("miss", 1);
                    }
                    misses.push(Miss {
                        id: *id,
                        unreadable: None,
                    });
                }
                Cached::Corrupt(value) => {
                    metrics::cache_read("corrupt", 1);
                    tracing::warn!(order_id = %id, "corrupt cache entry; replacing it");
                    misses.push(Miss {
                        id: *id,
                        unreadable: Some(value),
                    });
                }
            }
        }
        if misses.is_empty() && outdated.is_empty() {
            return Ok(found);
        }

        // The leases come before the database read: a fill may only carry what was read after them.
        let mut leases = self.take_leases(&misses, redis_answers).await;
        let wanted: Vec<OrderId> = misses.iter().map(|miss| miss.id).chain(outdated).collect();
        let from_database: Vec<pb::Order> = self
            .storage
            .get_orders(&wanted)
            .await?
            .iter()
            .map(pb::Order::from)
            .collect();
        self.fill(&from_database, &mut leases).await;
        for order in from_database {
            if let Ok(id) = OrderId::parse(order.order_id) {
                let read = Read {
                    order,
                    source: pb::Source::Database,
                };
                found.insert(id, read);
            }
        }
        Ok(found)
    }

    /// The cache's entries for `ids`, in order; `None` if Redis did not answer or is skipped for now.
    async fn lookup(&self, ids: &[OrderId]) -> Option<Vec<Cached>> {
        if !self.breaker.allow() {
            metrics::cache_read("skipped", ids.len());
            return None;
        }
        match self.cache.get_many(ids).await {
            Ok(cached) => {
                self.breaker.succeeded();
                Some(cached)
            }
            Err(error) => {
                self.breaker.failed();
                tracing::debug!(error = %ErrorChain(&error), "cache unavailable; reading from the database");
                metrics::cache_read("unavailable", ids.len());
                None
            }
        }
    }

    /// The leases granted on `misses`, by id (none when Redis did not answer the lookup: it would not
    /// answer this either, and the read should not wait for its timeout twice).
    async fn take_leases(&self, misses: &[Miss<'_>], redis_answers: bool) -> HashMap<OrderId, Lease> {
        if !redis_answers || misses.is_empty() {
            return HashMap::new();
        }
        match self.cache.lease_many(misses).await {
            Ok(leases) => misses
                .iter()
                .zip(leases)
                .filter_map(|(miss, lease)| Some((miss.id, lease?)))
                .collect(),
            Err(error) => {
                self.breaker.failed();
                tracing::debug!(error = %ErrorChain(&error), "no leases; the misses will not be filled");
                HashMap::new()
            }
        }
    }

    /// Fills each order that has a lease; the others (another reader's lease, an outdated entry) are
    /// left to their lease holder or to the updater.
    async fn fill(&self, orders: &[pb::Order], leases: &mut HashMap<OrderId, Lease>) {
        let fills: Vec<(&pb::Order, Lease)> = orders
            .iter()
            .filter_map(|order| {
                let id = OrderId::parse(order.order_id).ok()?;
                Some((order, leases.remove(&id)?))
            })
            .collect();
        if fills.is_empty() {
            return;
        }
        let fills: Vec<(&pb::Order, &Lease)> = fills.iter().map(|(order, lease)| (*order, lease)).collect();
        match self.cache.fill_many(&fills).await {
            Ok(outcomes) => {
                for outcome in outcomes {
                    metrics::cache_fill(outcome);
                }
            }
            Err(error) => {
                self.breaker.failed();
                tracing::debug!(error = %ErrorChain(&error), "could not fill the cache");
            }
        }
    }
}
