//! The orders the goose users share, and the counters of where reads were answered from.
//!
//! The seeded data set is split in two:
//!
//! * **cold** orders, read only by cold reads, each evicted from the cache just before it is read;
//!   nothing else touches them, so that nothing refills them between the eviction and the read;
//! * **warm** orders, the rest, for warm and batch reads, and moved along their life cycle by status
//!   updates.
//!
//! Cold orders and orders being updated are handed out one user at a time (taken from a queue and
//! given back): two users evicting and reading the same order at once would turn a cold read warm, and
//! two users moving the same order at once would race into illegal transitions. The queues are behind
//! plain mutexes, held for a push or a pop and never across an `.await`.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use rand::Rng;
use rand::seq::{IndexedRandom, SliceRandom};
use serde::Serialize;
use service::domain::OrderStatus;
use service::proto::orders::v1 as pb;

use crate::cache_admin::CacheAdmin;

/// Share of status updates that cancel the order instead of moving it forward.
const CANCEL_PROBABILITY: f64 = 0.05;

/// An order being moved along its life cycle, as of its last update.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tracked {
    pub order_id: i64,
    pub status: OrderStatus,
}

pub struct Workload {
    warm: Vec<i64>,
    cold: Vec<i64>,
    cold_queue: Mutex<VecDeque<i64>>,
    lifecycle: Mutex<VecDeque<Tracked>>,
    admin: Option<CacheAdmin>,
    batch_size: usize,
    pub sources: Sources,
}

impl Workload {
    /// Splits `seeded` (orders in status `CREATED`): the first `cold` of them are cold, the rest warm.
    /// Cold reads need `admin` to evict.
    pub fn new(seeded: &[i64], cold: usize, admin: Option<CacheAdmin>, batch_size: usize) -> Self {
        let cold = cold.min(seeded.len().saturating_sub(1));
        let (cold_ids, warm_ids) = seeded.split_at(cold);
        let mut lifecycle: Vec<Tracked> = warm_ids
            .iter()
            .map(|&order_id| Tracked {
                order_id,
                status: OrderStatus::Created,
            })
            .collect();
        lifecycle.shuffle(&mut rand::rng());
        Self {
            warm: warm_ids.to_vec(),
            cold: cold_ids.to_vec(),
            cold_queue: Mutex::new(cold_ids.iter().copied().collect()),
            lifecycle: Mutex::new(lifecycle.into()),
            admin,
            batch_size,
            sources: Sources::default(),
        }
    }

    pub fn admin(&self) -> Option<&CacheAdmin> {
        self.admin.as_ref()
    }

    /// A warm order, at random.
    pub fn warm_order(&self, rng: &mut impl Rng) -> Option<i64> {
        self.warm.choose(rng).copied()
    }

    /// `batch_size` distinct warm orders (fewer if there are not that many), at random.
    pub fn warm_batch(&self, rng: &mut impl Rng) -> Vec<i64> {
        self.warm.choose_multiple(rng, self.batch_size).copied().collect()
    }

    /// A cold order for this user alone, until [`give_back_cold`](Self::give_back_cold). When every
    /// cold order is taken (more users than cold orders), one at random, shared.
    pub fn take_cold(&self, rng: &mut impl Rng) -> Option<i64> {
        lock(&self.cold_queue)
            .pop_front()
            .or_else(|| self.cold.choose(rng).copied())
    }

    pub fn give_back_cold(&self, order_id: i64) {
        let mut queue = lock(&self.cold_queue);
        if !queue.contains(&order_id) && self.cold.contains(&order_id) {
            queue.push_back(order_id);
        }
    }

    /// An order to update, for this user alone until [`give_back`](Self::give_back); `None` when every
    /// order is taken or finished (the caller creates a new one).
    pub fn take_for_update(&self) -> Option<Tracked> {
        lock(&self.lifecycle).pop_front()
    }

    /// Returns an order after its update; finished orders (completed, cancelled) leave the pool.
    pub fn give_back(&self, order: Tracked) {
        if !order.status.is_final() {
            lock(&self.lifecycle).push_back(order);
        }
    }
}

/// The next legal status of an order: one step forward, or now and then a cancellation; `None` for a
/// finished order.
pub fn next_status(current: OrderStatus, rng: &mut impl Rng) -> Option<OrderStatus> {
    if current.is_final() {
        None
    } else if rng.random_bool(CANCEL_PROBABILITY) {
        Some(OrderStatus::Cancelled)
    } else {
        current.next()
    }
}

/// Where reads were answered from. A warm read answered from the database is a miss the run did not
/// intend; a cold read answered from the cache, one it could not prevent (an update's event refilled
/// the key between eviction and read). The report shows both.
#[derive(Debug, Default)]
pub struct Sources {
    warm_cache: AtomicU64,
    warm_database: AtomicU64,
    cold_cache: AtomicU64,
    cold_database: AtomicU64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct SourceCounts {
    pub warm_cache: u64,
    pub warm_database: u64,
    pub cold_cache: u64,
    pub cold_database: u64,
}

impl Sources {
    pub fn count_warm(&self, source: i32) {
        Self::count(source, &self.warm_cache, &self.warm_database);
    }

    pub fn count_cold(&self, source: i32) {
        Self::count(source, &self.cold_cache, &self.cold_database);
    }

    fn count(source: i32, cache: &AtomicU64, database: &AtomicU64) {
        if source == pb::Source::Cache as i32 {
            cache.fetch_add(1, Ordering::Relaxed);
        } else if source == pb::Source::Database as i32 {
            database.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn snapshot(&self) -> SourceCounts {
        SourceCounts {
            warm_cache: self.warm_cache.load(Ordering::Relaxed),
            warm_database: self.warm_database.load(Ordering::Relaxed),
            cold_cache: self.cold_cache.load(Ordering::Relaxed),
            cold_database: self.cold_database.load(Ordering::Relaxed),
        }
    }
}

/// A poisoned queue is still a valid queue (pushes and pops do not leave it half-done).
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cold_orders_are_handed_out_one_user_at_a_time() {
        let workload = Workload::new(&[1, 2, 3, 4, 5], 2, None, 10);
        let mut rng = rand::rng();
        assert_eq!(workload.take_cold(&mut rng), Some(1));
        assert_eq!(workload.take_cold(&mut rng), Some(2));
        // Both taken: a shared one at random, still a cold one.
        assert!(matches!(workload.take_cold(&mut rng), Some(1 | 2)));
        workload.give_back_cold(1);
        workload.give_back_cold(1);
        assert_eq!(workload.take_cold(&mut rng), Some(1));
        assert!(
            workload
                .warm_batch(&mut rng)
                .iter()
                .all(|id| (3..=5).contains(id))
        );
        assert_eq!(workload.warm_batch(&mut rng).len(), 3);
    }

    #[test]
    fn updates_follow_the_state_machine_and_finished_orders_leave() {
        let workload = Workload::new(&[7], 0, None, 1);
        let mut rng = rand::rng();
        let mut steps = 0;
        while let Some(mut order) = workload.take_for_update() {
            let Some(next) = next_status(order.status, &mut rng) else {
                panic!("a finished order was handed out")
            };
            assert!(order.status.can_become(next), "{:?} -> {next:?}", order.status);
            order.status = next;
            workload.give_back(order);
            steps += 1;
        }
        assert!((1..=6).contains(&steps));
    }
}
