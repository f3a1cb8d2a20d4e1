//! The cache on a Redis Cluster of three masters and three replicas: reads, fills and updates for keys
//! spread over every master, and through the failover of one master.
//!
//! What reached the cache is read in Redis itself (the inspector follows the cluster's slot map),
//! never through a read that could fill it.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use harness::app::{ALL, App, Environment, own_stack_with};
use harness::{RedisFailure, RedisMode, Service, Stack};
use service::cache::connection::slot;
use service::cache::{Cached, OrderCache, key};
use service::domain::OrderId;
use service::domain::OrderStatus;
use service::proto::orders::v1 as pb;

const ORDERS: usize = 50;
const DEADLINE: Duration = Duration::from_secs(20);

async fn cluster_app() -> (Stack, App) {
    let stack = own_stack_with(RedisMode::Cluster).await;
    let env = Environment::fresh(&stack).await;
    let app = env.spawn(&ALL).await.expect("the service starts on the cluster");
    (stack, app)
}

async fn create_orders(app: &App) -> Vec<i64> {
    let mut ids = Vec::with_capacity(ORDERS);
    for _ in 0..ORDERS {
        ids.push(app.create_order().await.order_id);
    }
    // The premise: the keys live on every master (a third of the slots each, as the cluster was
    // formed), so a read of them all crosses slots and nodes.
    let thirds: BTreeSet<u16> = ids.iter().map(|id| slot(key(*id).as_bytes()) / 5462).collect();
    assert_eq!(
        thirds.len(),
        3,
        "the orders' keys span the three masters' slot ranges"
    );
    ids
}

/// Polls Redis until every order's key holds `version` or newer; panics naming the ones that do not.
async fn wait_until_all_cached(app: &App, ids: &[i64], version: i64) {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let behind: Vec<(i64, Option<i64>)> = match app.env.cache.versions(ids).await {
            Ok(versions) => ids
                .iter()
                .copied()
                .zip(versions)
                .filter(|(_, cached)| cached.is_none_or(|v| v < version))
                .collect(),
            // Redis unreachable for a moment (a failover): every order is behind for now.
            Err(_) => ids.iter().map(|id| (*id, None)).collect(),
        };
        if behind.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {} orders not cached at version {version} in Redis: {:?}",
            behind.len(),
            ids.len(),
            &behind[..behind.len().min(5)]
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Orders on every master, read once so that each is cached at version 1 (checked in Redis).
async fn cached_orders(app: &App) -> Vec<i64> {
    let ids = create_orders(app).await;
    read_all(app, &ids).await;
    wait_until_all_cached(app, &ids, 1).await;
    ids
}

/// Pays every order, reads them all (a read fills an entry lost with a master: the updater never
/// creates one), and waits until Redis holds version 2 of each.
async fn pay_and_wait_until_cached(app: &App, ids: &[i64]) {
    for id in ids {
        app.set_status(*id, OrderStatus::Paid).await;
    }
    read_all(app, ids).await;
    wait_until_all_cached(app, ids, 2).await;
}

async fn read_all(app: &App, ids: &[i64]) -> pb::GetOrdersResponse {
    let answer = app.api.get_orders(ids.to_vec()).await.expect("GetOrders");
    let answered: Vec<i64> = answer.orders.iter().map(|o| o.order_id).collect();
    assert_eq!(answered, ids, "GetOrders answers every order, in the order asked");
    answer
}

#[tokio::test]
async fn on_a_redis_cluster_reads_fill_keys_on_every_master_and_updates_reach_them() {
    let (_stack, app) = cluster_app().await;
    let ids = create_orders(&app).await;

    read_all(&app, &ids).await;
    wait_until_all_cached(&app, &ids, 1).await;

    for id in &ids {
        app.set_status(*id, OrderStatus::Paid).await;
    }
    // Only the updater writes over a cached entry: version 2 in Redis is its work.
    wait_until_all_cached(&app, &ids, 2).await;
    let read = app.get_order(ids[0]).await;
    assert_eq!(
        read.source,
        pb::Source::Cache as i32,
        "reads are served by the cluster"
    );
    app.stop().await.expect("a clean stop");
}

#[tokio::test]
async fn a_killed_master_fails_over_and_the_cache_keeps_working_on_its_promoted_replica() {
    let (stack, app) = cluster_app().await;
    let ids = cached_orders(&app).await;

    let masters = stack.redis_masters().await.expect("the cluster's masters");
    assert_eq!(masters.len(), 3);
    let lost = masters[0];
    stack
        .fail_over_redis(lost, RedisFailure::Kill)
        .await
        .expect("the cluster fails the killed master over");
    let after = stack
        .redis_masters()
        .await
        .expect("the cluster's masters after the failover");
    assert!(
        !after.contains(&lost) && after.len() == 3,
        "a replica took over: {after:?}"
    );

    // Writes after the failover reach every key, including those now on the promoted replica (which
    // may not have the scripts cached: the calls it answers NOSCRIPT run again with the source).
    pay_and_wait_until_cached(&app, &ids).await;

    stack
        .start_service(Service::RedisNode(lost))
        .await
        .expect("the killed node starts again");
    stack
        .wait_redis_cluster_healthy()
        .await
        .expect("it rejoins as a replica and the cluster is whole");
    app.stop().await.expect("a clean stop");
}

#[tokio::test]
async fn a_master_paused_until_replaced_rejoins_and_the_cache_keeps_working() {
    let (stack, app) = cluster_app().await;
    let ids = cached_orders(&app).await;

    let masters = stack.redis_masters().await.expect("the cluster's masters");
    let paused = masters[0];
    // A reader that keeps asking all along, as the consistency checker's sampler does.
    let sampler = {
        let (cache, ids) = (app.env.cache.clone(), ids.clone());
        tokio::spawn(async move {
            loop {
                let _ = cache.versions(&ids).await;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    stack
        .fail_over_redis(paused, RedisFailure::Pause)
        .await
        .expect("the cluster fails the paused master over");
    stack
        .resume(Service::RedisNode(paused))
        .await
        .expect("resume the old master");
    stack
        .wait_redis_cluster_healthy()
        .await
        .expect("it rejoins as a replica and the cluster is whole");

    pay_and_wait_until_cached(&app, &ids).await;
    sampler.abort();
    app.stop().await.expect("a clean stop");
}

/// The updater acknowledges an event to Kafka only once a replica holds its write: a master answers
/// before its replica copied the write, and a failover to a replica without it would leave the older
/// entry in the cache for good, its event already acknowledged.
///
/// Decided by conditions, not by the clock: the replicas are paused with the cluster's node timeout
/// raised (so no failover ends the pause early), the master has the update, the updater has *tried*
/// to confirm it and been refused (its Redis retries, on its own `/metrics`), and from then on the
/// event stays uncommitted for two commit intervals (1 s each). An updater that did not wait would
/// never retry; one that acknowledged anyway would be committed within the first interval.
#[tokio::test]
async fn an_update_is_acknowledged_to_kafka_only_once_a_replica_holds_it() {
    let stack = own_stack_with(RedisMode::Cluster).await;
    let mut env = Environment::fresh(&stack).await;
    let metrics = harness::stack::ports::reserve_address().expect("a port for /metrics");
    env.settings.metrics_addr = Some(metrics);
    service::telemetry::init(&env.settings).expect("the metrics endpoint starts");
    let app = env.spawn(&ALL).await.expect("the service starts on the cluster");
    let ids = cached_orders(&app).await;
    app.wait_until_handled(DEADLINE).await;

    stack
        .set_redis_node_timeout(Duration::from_secs(60))
        .await
        .expect("a node timeout longer than the pause");
    let replicas = stack.redis_replicas().await.expect("the cluster's replicas");
    assert_eq!(replicas.len(), 3, "each master has a replica");
    let retries_before = redis_retries(metrics).await;
    for replica in &replicas {
        stack
            .pause(Service::RedisNode(*replica))
            .await
            .expect("pause a replica");
    }
    app.set_status(ids[0], OrderStatus::Paid).await;
    // The master has the update (the updater ran it)...
    wait_until_all_cached(&app, &ids[..1], 2).await;
    // ...and the updater was refused its confirmation: it holds the event.
    let deadline = Instant::now() + DEADLINE;
    while redis_retries(metrics).await <= retries_before {
        assert!(
            Instant::now() < deadline,
            "the updater never retried a write no replica confirmed: it did not wait for one"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let watched = Instant::now();
    while watched.elapsed() < Duration::from_millis(2_500) {
        assert_eq!(
            app.updater_lag().await,
            1,
            "the event of an update no replica holds is not acknowledged"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    for replica in &replicas {
        stack
            .resume(Service::RedisNode(*replica))
            .await
            .expect("resume a replica");
    }
    app.wait_until_handled(DEADLINE).await;
    stack
        .wait_redis_cluster_healthy()
        .await
        .expect("the replicas are back in sync");
    app.stop().await.expect("a clean stop");
}

/// The updater's `orders_updater_redis_retries_total`: writes it had to try again (a refusal to
/// confirm included).
async fn redis_retries(metrics: std::net::SocketAddr) -> f64 {
    let page = harness::metrics::scrape(metrics)
        .await
        .expect("the service's /metrics");
    harness::metrics::samples(&page, "orders_updater_redis_retries_total")
        .iter()
        .map(|sample| sample.value)
        .sum()
}

/// A batch read goes to each master in one pipeline, after the cluster's slot map: none of its keys
/// takes the slow way (the cluster client's MGET, one command per slot) while the map is right. Once
/// slots moved between masters (a reshard), the next read finds the map wrong for some keys, reads
/// those the slow way, right all the same, and the map is read again. (Across a failover a read may
/// go the slow way while the client relearns where the lost master's slots went: only its answers
/// are checked there.)
#[tokio::test]
async fn a_batch_read_goes_to_each_master_by_the_slot_map_and_the_slow_way_after_a_reshard() {
    let (stack, app) = cluster_app().await;
    let ids = cached_orders(&app).await;
    let cache = OrderCache::connect_lazy(stack.redis_url(), Duration::from_secs(60)).expect("a cache");
    let order_ids: Vec<OrderId> = ids.iter().map(|id| OrderId::parse(*id).expect("an id")).collect();
    let hits = |cached: &[Cached]| cached.iter().filter(|c| matches!(c, Cached::Hit(_))).count();
    let read = || async { cache.get_many(&order_ids).await.expect("a batch read") };
    // Reads until one answers and goes entirely by the map (at most 20, 100 ms apart); the keys
    // read the slow way by then.
    let settled = || async {
        for _ in 0..20 {
            let before = cache.keys_read_astray();
            let answered = cache.get_many(&order_ids).await.is_ok();
            if answered && cache.keys_read_astray() == before {
                return before;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("no read went by the slot map alone: it is never read right");
    };

    assert_eq!(hits(&read().await), ids.len(), "every order read from the cache");
    assert_eq!(
        cache.keys_read_astray(),
        0,
        "the slot map sent every key to its master"
    );

    let masters = stack.redis_masters().await.expect("the cluster's masters");
    stack
        .fail_over_redis(masters[0], RedisFailure::Kill)
        .await
        .expect("the cluster fails the killed master over");
    settled().await;
    let after_failover = read().await;
    let before_reshard = cache.keys_read_astray();

    // 3,000 of the lowest slots of one master (about 17 of the 50 keys live on it): some keys move.
    let masters = stack.redis_masters().await.expect("the cluster's masters");
    stack
        .reshard_redis(masters[0], masters[1], 3_000)
        .await
        .expect("slots move between masters");
    let after_reshard = read().await;
    let astray = cache.keys_read_astray() - before_reshard;
    assert!(
        astray > 0 && astray < ids.len() as u64,
        "the keys of the moved slots went the slow way, the others not: {astray}"
    );
    assert_eq!(
        hits(&after_reshard),
        hits(&after_failover),
        "the slow way reads the same entries"
    );
    assert_eq!(
        settled().await,
        before_reshard + astray,
        "the map read again serves every key"
    );
    app.stop().await.expect("a clean stop");
}
