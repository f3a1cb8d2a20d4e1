//! The probe: proof that the whole path works, from a status change to its cache entry, through every
//! partition of the topic. A run starts measuring only once it passes, and a fault lasts until it
//! passes again: while one partition's writes are still held up (a killed updater's partitions wait
//! for the group's session timeout), the fault is not over.
//!
//! For each partition the probe keeps one order of its own (not part of the history): it reads the
//! order so that its entry is cached, checks in Redis that it is, changes its status, and waits until
//! Redis holds the new version. Only the updater can put it there: the updater alone writes over an
//! entry that is already cached.

use std::time::{Duration, Instant};

use service::cache::Cached;
use service::domain::OrderStatus;

use crate::client::OrdersClient;
use crate::inspect::CacheInspector;

/// The partition librdkafka's default partitioner (`consistent_random`) gives a key: CRC-32 of the
/// key, modulo the partition count. The run checks this against where every event really went.
pub fn partition_of(order_id: i64, partitions: i32) -> i32 {
    let hash = crc32fast::hash(&service::domain::OrderId::parse(order_id).map_or([0; 8], |id| id.to_key()));
    (hash % partitions.max(1) as u32) as i32
}

#[derive(Debug, thiserror::Error)]
#[error(
    "the probe did not get a write through to the cache within {within:?} (partitions {partitions:?}; last: {last})"
)]
pub struct ProbeError {
    within: Duration,
    /// The partitions that did not get through.
    partitions: Vec<i32>,
    last: String,
}

pub struct Probe {
    client: OrdersClient,
    cache: CacheInspector,
    partitions: i32,
    /// The probe's order on each partition (`None` until created).
    orders: Vec<Option<i64>>,
}

impl Probe {
    pub fn new(client: OrdersClient, cache: CacheInspector, partitions: i32) -> Self {
        Self {
            client,
            cache,
            partitions,
            orders: vec![None; partitions.max(1) as usize],
        }
    }

    /// The probe's own orders.
    pub fn order_ids(&self) -> Vec<i64> {
        self.orders.iter().flatten().copied().collect()
    }

    /// Returns once a fresh write reached the cache through every partition; fails after `within`.
    pub async fn through_every_partition(&mut self, within: Duration) -> Result<(), ProbeError> {
        let deadline = Instant::now() + within;
        let mut pending: Vec<i32> = (0..self.partitions).collect();
        let mut last = String::from("nothing tried");
        while !pending.is_empty() {
            let mut still = Vec::new();
            for partition in pending {
                if let Err(reason) = self.once(partition).await {
                    last = format!("partition {partition}: {reason}");
                    still.push(partition);
                }
            }
            pending = still;
            if pending.is_empty() {
                break;
            }
            if Instant::now() > deadline {
                return Err(ProbeError {
                    within,
                    partitions: pending,
                    last,
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(())
    }

    /// One write through `partition`, all the way to Redis.
    async fn once(&mut self, partition: i32) -> Result<(), String> {
        let order_id = self.order_on(partition).await?;
        // Cached first: a read fills the entry (under its lease)...
        let read = self
            .client
            .get_order(order_id, 0)
            .await
            .map_err(|status| format!("GetOrder: {status}"))?;
        let current = read.order.ok_or("GetOrder answered without an order")?;
        match self
            .cache
            .entry(order_id)
            .await
            .map_err(|e| format!("redis: {e}"))?
        {
            Cached::Hit(cached) if cached.version == current.version => {}
            other => {
                return Err(format!(
                    "the read did not leave version {} cached: {other:?}",
                    current.version
                ));
            }
        }
        // ...then a change, which only the updater can bring to the cached entry.
        let status = OrderStatus::from_proto(current.status).map_err(|e| e.to_string())?;
        let Some(next) = status.next() else {
            self.orders[partition as usize] = None;
            return Err(format!("order {order_id} is {status}: replaced"));
        };
        let changed = self
            .client
            .set_status(order_id, next, None)
            .await
            .map_err(|status| format!("UpdateOrderStatus: {status}"))?;
        self.cache
            .wait_for_version(order_id, changed.version, Duration::from_secs(5))
            .await?;
        Ok(())
    }

    /// The probe's order on `partition`, created if it has none yet (orders land on partitions by
    /// their key's hash, so this creates a few and keeps each for its partition).
    async fn order_on(&mut self, partition: i32) -> Result<i64, String> {
        for _ in 0..(20 * self.partitions) {
            if let Some(order_id) = self.orders[partition as usize] {
                return Ok(order_id);
            }
            let created = self
                .client
                .create(1)
                .await
                .map_err(|status| format!("CreateOrder: {status}"))?;
            let slot = &mut self.orders[partition_of(created.order_id, self.partitions) as usize];
            slot.get_or_insert(created.order_id);
        }
        Err(format!(
            "no order of the first {} landed on partition {partition}",
            20 * self.partitions
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_are_in_range() {
        // Whether they are the ones librdkafka picks is checked against the topic by every run.
        let partitions: Vec<i32> = (1..=6).map(|id| partition_of(id, 3)).collect();
        assert!(partitions.iter().all(|p| (0..3).contains(p)));
        assert_eq!(partition_of(7, 1), 0);
    }
}
