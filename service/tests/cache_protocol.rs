//! The cache's lease protocol against a real Redis, race by race, with the interleavings forced by
//! hand: each test is one of the ways a late writer could bring back an older version, and shows that
//! the protocol stops it. Where the fill of the service before leases (the harness's `UnleasedFill`,
//! a compare-and-set that also writes into an absent key) would land, the test shows that too, so the
//! check is one that can fail.

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use harness::app::shared_stack;
use harness::node::{RawWrite, RawWrites, UnleasedFill};
use service::cache::{Cached, Lease, Miss, OrderCache, WriteOutcome};
use service::domain::OrderId;
use service::proto::orders::v1 as pb;
use service::reads::ReadThrough;

const TTL: Duration = Duration::from_secs(60);

fn version(id: OrderId, version: i64) -> pb::Order {
    pb::Order {
        order_id: id.get(),
        version,
        status: version.min(8) as i32,
        ..Default::default()
    }
}

struct Fixture {
    /// The first of this fixture's order ids: a range no other test uses, in this process or another
    /// one on the same stack (the Redis is shared).
    first_id: i64,
    next_id: AtomicI64,
    cache: OrderCache,
    redis: redis::aio::MultiplexedConnection,
    redis_url: String,
}

impl Fixture {
    async fn new() -> Self {
        let stack = shared_stack().await;
        let redis = redis::Client::open(stack.redis_url())
            .expect("redis url")
            .get_multiplexed_async_connection()
            .await
            .expect("redis");
        let number = stack.unique_number().await.expect("a number unique on the stack");
        Self {
            first_id: 9_000_000_000_000 + number * 100_000,
            next_id: AtomicI64::new(0),
            cache: OrderCache::connect_lazy(stack.redis_url(), TTL).expect("cache"),
            redis,
            redis_url: stack.redis_url().to_string(),
        }
    }

    fn fresh_id(&self) -> OrderId {
        let id = self.first_id + self.next_id.fetch_add(1, Ordering::Relaxed);
        OrderId::parse(id).expect("positive")
    }

    async fn lease(&self, id: OrderId) -> Option<Lease> {
        let miss = Miss { id, unreadable: None };
        self.cache.lease_many(&[miss]).await.expect("redis").remove(0)
    }

    async fn fill(&self, order: &pb::Order, lease: &Lease) -> WriteOutcome {
        self.cache
            .fill_many(&[(order, lease)])
            .await
            .expect("redis")
            .remove(0)
    }

    async fn update(&self, order: &pb::Order) -> WriteOutcome {
        self.cache
            .update_many(std::slice::from_ref(order))
            .await
            .expect("redis")
            .remove(0)
    }

    async fn held(&self, id: OrderId) -> Cached {
        self.cache.get_many(&[id]).await.expect("redis").remove(0)
    }

    /// Version 5 is cached by a reader that filled it, as after any miss.
    async fn cache_version_5(&self, id: OrderId) {
        let lease = self.lease(id).await.expect("a lease on a missing key");
        assert_eq!(self.fill(&version(id, 5), &lease).await, WriteOutcome::Written);
        assert_eq!(self.held(id).await, Cached::Hit(version(id, 5)));
    }

    async fn delete(&mut self, id: OrderId) {
        let _: i64 = redis::cmd("DEL")
            .arg(service::cache::key(id.get()))
            .query_async(&mut self.redis)
            .await
            .expect("DEL");
    }

    /// The key's time to live, in ms (negative: none, or no key).
    async fn pttl(&mut self, id: OrderId) -> i64 {
        redis::cmd("PTTL")
            .arg(service::cache::key(id.get()))
            .query_async(&mut self.redis)
            .await
            .expect("PTTL")
    }

    async fn expire_now(&mut self, id: OrderId) {
        let _: i64 = redis::cmd("PEXPIRE")
            .arg(service::cache::key(id.get()))
            .arg(1)
            .query_async(&mut self.redis)
            .await
            .expect("PEXPIRE");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    /// The fill of the service before leases, for contrast.
    async fn fill_without_lease(&self, order: &pb::Order) -> WriteOutcome {
        let raw = RawWrites::connect(&self.redis_url, TTL).await.expect("redis");
        let old = UnleasedFill::new(self.cache.clone(), raw, RawWrite::IfAbsentOrOlder);
        old.fill_many(&[(order, &Lease::new())])
            .await
            .expect("redis")
            .remove(0)
    }
}

/// The bug of issue 10: a reader misses and reads version 4; version 5 is committed and cached; the
/// key vanishes (here: deleted, as eviction does); the reader's late fill must not bring back 4.
#[tokio::test]
async fn a_late_fill_after_the_key_was_evicted_does_not_bring_back_an_older_version() {
    let mut fx = Fixture::new().await;
    let id = fx.fresh_id();
    let slow_reader = fx.lease(id).await.expect("the slow reader's lease");
    // Version 5 commits; the updater revokes the slow reader's lease...
    assert_eq!(fx.update(&version(id, 5)).await, WriteOutcome::Invalidated);
    // ...and the next reader fills version 5.
    fx.cache_version_5(id).await;
    fx.delete(id).await;

    assert_eq!(fx.fill(&version(id, 4), &slow_reader).await, WriteOutcome::Absent);
    assert_eq!(fx.held(id).await, Cached::Miss, "version 4 did not come back");
    assert_eq!(
        fx.fill_without_lease(&version(id, 4)).await,
        WriteOutcome::Written,
        "without the lease it would have"
    );
    assert_eq!(fx.held(id).await, Cached::Hit(version(id, 4)));
}

#[tokio::test]
async fn a_late_fill_after_the_key_expired_does_not_land() {
    let mut fx = Fixture::new().await;
    let id = fx.fresh_id();
    let slow_reader = fx.lease(id).await.expect("the slow reader's lease");
    fx.update(&version(id, 5)).await;
    fx.cache_version_5(id).await;
    fx.expire_now(id).await;
    assert_eq!(fx.fill(&version(id, 4), &slow_reader).await, WriteOutcome::Absent);
    assert_eq!(fx.held(id).await, Cached::Miss);
}

/// After a wipe another reader may lease the key again; the slow reader's token is not its token.
#[tokio::test]
async fn a_late_fill_after_the_key_was_leased_again_does_not_land() {
    let mut fx = Fixture::new().await;
    let id = fx.fresh_id();
    let slow_reader = fx.lease(id).await.expect("the slow reader's lease");
    fx.update(&version(id, 5)).await;
    fx.cache_version_5(id).await;
    fx.delete(id).await;
    let next_reader = fx.lease(id).await.expect("a new lease after the loss");
    assert_eq!(
        fx.fill(&version(id, 4), &slow_reader).await,
        WriteOutcome::LeaseLost
    );
    assert_eq!(
        fx.fill(&version(id, 6), &next_reader).await,
        WriteOutcome::Written
    );
    assert_eq!(fx.held(id).await, Cached::Hit(version(id, 6)));
}

/// The read-through race of the naive design, with the key present: compare-and-set suffices.
#[tokio::test]
async fn a_late_fill_cannot_overwrite_a_newer_entry() {
    let fx = Fixture::new().await;
    let id = fx.fresh_id();
    let slow_reader = fx.lease(id).await.expect("a lease");
    let other = {
        assert_eq!(fx.update(&version(id, 5)).await, WriteOutcome::Invalidated);
        fx.lease(id).await.expect("a lease after the revocation")
    };
    assert_eq!(fx.fill(&version(id, 5), &other).await, WriteOutcome::Written);
    assert_eq!(fx.fill(&version(id, 4), &slow_reader).await, WriteOutcome::Stale);
    assert_eq!(fx.held(id).await, Cached::Hit(version(id, 5)));
}

/// While a lease is out, other readers read the database without filling: one fill per miss.
#[tokio::test]
async fn a_missing_key_is_leased_to_one_reader_at_a_time() {
    let fx = Fixture::new().await;
    let id = fx.fresh_id();
    assert!(fx.lease(id).await.is_some());
    assert!(fx.lease(id).await.is_none(), "the second reader gets no lease");
    assert_eq!(fx.held(id).await, Cached::Miss, "a lease reads as a miss");
}

#[tokio::test]
async fn the_updater_never_creates_an_entry_and_updates_one_that_is_there() {
    let fx = Fixture::new().await;
    let id = fx.fresh_id();
    assert_eq!(fx.update(&version(id, 3)).await, WriteOutcome::Absent);
    assert_eq!(fx.held(id).await, Cached::Miss);

    fx.cache_version_5(id).await;
    assert_eq!(
        fx.update(&version(id, 4)).await,
        WriteOutcome::Stale,
        "an older event"
    );
    assert_eq!(
        fx.update(&version(id, 5)).await,
        WriteOutcome::Stale,
        "a repeated event"
    );
    assert_eq!(fx.update(&version(id, 6)).await, WriteOutcome::Written);
    assert_eq!(fx.held(id).await, Cached::Hit(version(id, 6)));
}

/// A redelivered event after the key vanished and was filled again must not go back either.
#[tokio::test]
async fn a_redelivered_event_after_a_refill_is_stale() {
    let mut fx = Fixture::new().await;
    let id = fx.fresh_id();
    fx.cache_version_5(id).await;
    fx.delete(id).await;
    // Redelivered from an older offset: the key is absent, so nothing is written.
    assert_eq!(fx.update(&version(id, 3)).await, WriteOutcome::Absent);
    fx.cache_version_5(id).await;
    assert_eq!(fx.update(&version(id, 4)).await, WriteOutcome::Stale);
    assert_eq!(fx.held(id).await, Cached::Hit(version(id, 5)));
}

#[tokio::test]
async fn a_lease_replaces_an_unreadable_value_only_if_it_is_still_there() {
    let mut fx = Fixture::new().await;
    let id = fx.fresh_id();
    let key = service::cache::key(id.get());
    let _: () = redis::cmd("SET")
        .arg(&key)
        .arg("garbage")
        .query_async(&mut fx.redis)
        .await
        .expect("SET");
    let stale_view = Miss {
        id,
        unreadable: Some(b"something else"),
    };
    assert_eq!(
        fx.cache.lease_many(&[stale_view]).await.expect("redis"),
        vec![None]
    );
    let seen = Miss {
        id,
        unreadable: Some(b"garbage"),
    };
    let lease = fx.cache.lease_many(&[seen]).await.expect("redis").remove(0);
    let lease = lease.expect("a lease over the garbage it saw");
    assert_eq!(fx.fill(&version(id, 2), &lease).await, WriteOutcome::Written);
    assert_eq!(fx.held(id).await, Cached::Hit(version(id, 2)));
}

/// A reader that dies between its lease and its fill keeps others from filling only for a while; an
/// entry lives as long as the service's TTL.
#[tokio::test]
async fn leases_and_entries_expire() {
    let mut fx = Fixture::new().await;
    let id = fx.fresh_id();
    let lease = fx.lease(id).await.expect("a lease");
    let lease_ttl = fx.pttl(id).await;
    assert!(
        (1..=service::cache::LEASE_TTL.as_millis() as i64).contains(&lease_ttl),
        "a lease expires: {lease_ttl} ms"
    );
    fx.fill(&version(id, 1), &lease).await;
    let entry_ttl = fx.pttl(id).await;
    assert!(
        (service::cache::LEASE_TTL.as_millis() as i64..=TTL.as_millis() as i64).contains(&entry_ttl),
        "an entry lives the cache's TTL: {entry_ttl} ms"
    );
    fx.update(&version(id, 2)).await;
    let updated_ttl = fx.pttl(id).await;
    assert!(
        (service::cache::LEASE_TTL.as_millis() as i64..=TTL.as_millis() as i64).contains(&updated_ttl),
        "an update renews it: {updated_ttl} ms"
    );
}
