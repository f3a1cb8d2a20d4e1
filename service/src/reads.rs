//! Cache-first reads: Redis first, PostgreSQL for what the cache does not have.
//!
//! * One `MGET` for all requested ids, then one database query for all the misses.
//! * Misses are filled through the cache's version compare-and-set, so a reader holding a version it
//!   read a moment ago can never overwrite a newer one the updater wrote meanwhile.
//! * `min_version` (read-your-writes): a cached copy older than it is bypassed.
//! * Redis is optional: when it does not answer, every id is a miss and the database answers.
//! * A corrupt cached value is a miss; it is deleted (if still there) and refilled.

use std::collections::{HashMap, HashSet};

use crate::cache::{Cached, OrderCache};
use crate::domain::OrderId;
use crate::proto::orders::v1 as pb;
use crate::storage::{Storage, StorageError};
use crate::telemetry::metrics;

#[derive(Clone)]
pub struct OrderReader {
    storage: Storage,
    cache: OrderCache,
    /// The cache that misses are filled through: `cache` itself, but for the blind-fill fault.
    fill: OrderCache,
    /// Zero but in tests (see [`crate::faults::TestFaults::fill_delay`]).
    fill_delay: std::time::Duration,
}

/// An order and where it was read from.
#[derive(Debug, Clone, PartialEq)]
pub struct Read {
    pub order: pb::Order,
    pub source: pb::Source,
}

impl OrderReader {
    pub fn new(storage: Storage, cache: OrderCache) -> Self {
        Self {
            storage,
            fill: cache.clone(),
            cache,
            fill_delay: std::time::Duration::ZERO,
        }
    }

    /// **Testing only**: fill misses through `fill`, after `delay`.
    pub fn with_fill(mut self, fill: OrderCache, delay: std::time::Duration) -> Self {
        self.fill = fill;
        self.fill_delay = delay;
        self
    }

    /// One order, from the cache if it holds `min_version` or newer.
    pub async fn get(&self, id: OrderId, min_version: i64) -> Result<Option<Read>, StorageError> {
        Ok(self.get_many(&[id], min_version).await?.remove(&id))
    }

    /// The orders among `ids` that exist, keyed by id.
    pub async fn get_many(
        &self,
        ids: &[OrderId],
        min_version: i64,
    ) -> Result<HashMap<OrderId, Read>, StorageError> {
        let mut unique = HashSet::with_capacity(ids.len());
        let ids: Vec<OrderId> = ids.iter().copied().filter(|id| unique.insert(*id)).collect();

        let cached = match self.cache.get_many(&ids).await {
            Ok(cached) => cached,
            Err(error) => {
                tracing::debug!(%error, "cache unavailable; reading from the database");
                metrics::cache_read("unavailable", ids.len());
                vec![Cached::Miss; ids.len()]
            }
        };

        let mut found = HashMap::with_capacity(ids.len());
        let mut misses = Vec::new();
        for (id, entry) in ids.iter().zip(cached) {
            match entry {
                Cached::Hit(order) if order.version >= min_version => {
                    metrics::cache_read("hit", 1);
                    found.insert(
                        *id,
                        Read {
                            order,
                            source: pb::Source::Cache,
                        },
                    );
                }
                Cached::Hit(_) => {
                    metrics::cache_read("stale", 1);
                    misses.push(*id);
                }
                Cached::Miss => {
                    metrics::cache_read("miss", 1);
                    misses.push(*id);
                }
                Cached::Corrupt(value) => {
                    metrics::cache_read("corrupt", 1);
                    tracing::warn!(order_id = %id, "corrupt cache entry; replacing it");
                    if let Err(error) = self.cache.remove_corrupt(*id, &value).await {
                        tracing::debug!(%error, "could not remove a corrupt cache entry");
                    }
                    misses.push(*id);
                }
            }
        }
        if misses.is_empty() {
            return Ok(found);
        }

        let from_database: Vec<pb::Order> = self
            .storage
            .get_orders(&misses)
            .await?
            .iter()
            .map(pb::Order::from)
            .collect();
        if !self.fill_delay.is_zero() {
            tokio::time::sleep(self.fill_delay).await;
        }
        if let Err(error) = self.fill.put_many_if_newer(&from_database).await {
            tracing::debug!(%error, "could not fill the cache");
        }
        for order in from_database {
            if let Ok(id) = OrderId::parse(order.order_id) {
                found.insert(
                    id,
                    Read {
                        order,
                        source: pb::Source::Database,
                    },
                );
            }
        }
        Ok(found)
    }
}
