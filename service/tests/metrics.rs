//! The metrics a team would watch, as Prometheus scrapes them from the running service: recorded, not
//! only declared. Its own binary, because the metrics recorder is global to a process and is installed
//! here the way `main` does (`telemetry::init` with `METRICS_ADDR` set).

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use harness::app::{ALL, Environment, shared_stack};
use harness::metrics::{Sample, samples, scrape};
use service::domain::OrderStatus;

const ORDERS: usize = 30;

/// The partitions the samples of `metric` name.
fn partitions(page: &str, metric: &str) -> BTreeSet<i32> {
    samples(page, metric)
        .iter()
        .filter_map(|sample| sample.label("partition")?.parse().ok())
        .collect()
}

fn total(samples: &[Sample]) -> f64 {
    samples.iter().map(|sample| sample.value).sum()
}

/// Scrapes until `ready` holds for the page (librdkafka's statistics, hence the lag, come every 5 s), or
/// returns the last page after `within`.
async fn page_when(address: SocketAddr, within: Duration, ready: impl Fn(&str) -> bool) -> String {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let page = scrape(address).await.expect("the metrics endpoint answers");
        if ready(&page) || tokio::time::Instant::now() > deadline {
            return page;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test]
async fn the_consumer_relay_and_storage_metrics_are_recorded_as_the_service_works() {
    let mut env = Environment::fresh(shared_stack().await).await;
    let address = harness::stack::ports::reserve_address().expect("a free port");
    env.settings.metrics_addr = Some(address);
    service::telemetry::init(&env.settings).expect("the metrics endpoint starts");
    let app = env.spawn(&ALL).await.expect("the service starts");

    // Real work first: orders created and read (so cached), then changed; each change must reach Redis
    // through the updater, checked in Redis itself.
    let mut ids = Vec::new();
    for _ in 0..ORDERS {
        let order = app.create_order().await;
        app.cache_order(order.order_id).await;
        ids.push(order.order_id);
    }
    for &id in &ids {
        app.set_status(id, OrderStatus::Paid).await;
    }
    for &id in &ids {
        app.wait_until_cached(id, 2, Duration::from_secs(20))
            .await
            .unwrap_or_else(|e| panic!("the updater applies the change of order {id}: {e}"));
    }

    // Every event was applied, so the lag librdkafka reports for each partition must come down to 0.
    let topic_partitions = BTreeSet::from([0, 1, 2]);
    let page = page_when(address, Duration::from_secs(20), |page| {
        let lags = samples(page, "orders_updater_consumer_lag");
        partitions(page, "orders_updater_consumer_lag") == topic_partitions
            && lags.iter().all(|lag| lag.value == 0.0)
    })
    .await;
    let lags = samples(&page, "orders_updater_consumer_lag");
    assert_eq!(
        partitions(&page, "orders_updater_consumer_lag"),
        topic_partitions,
        "a lag for each partition: {lags:?}"
    );
    assert!(lags.iter().all(|lag| lag.value == 0.0), "caught up: {lags:?}");

    // The rebalance that gave the updater its partitions.
    assert_eq!(
        partitions(&page, "orders_updater_partitions_assigned_total"),
        topic_partitions,
        "every partition assigned once at least"
    );

    // The consumer's own report, per topic: everything handled, nothing held back.
    let topic = env.settings.orders_topic.as_str();
    for metric in [
        "orders_consumer_unhandled_messages",
        "orders_consumer_held_back_partitions",
        "orders_consumer_oldest_unhandled_seconds",
    ] {
        let ours: Vec<Sample> = samples(&page, metric)
            .into_iter()
            .filter(|sample| sample.label("topic") == Some(topic))
            .collect();
        assert_eq!(ours.len(), 1, "{metric} for {topic}: {ours:?}");
        assert_eq!(ours[0].value, 0.0, "{metric} once everything was handled");
    }

    // What the updater did with the events: each change written over the entry a read had cached.
    let written: Vec<Sample> = samples(&page, "orders_updater_events_total")
        .into_iter()
        .filter(|sample| sample.label("result") == Some("written"))
        .collect();
    assert!(total(&written) >= ORDERS as f64, "{written:?}");

    // The relay published every event (a create and a change per order), the storage wrote them in
    // batches, and the reads that cached the orders filled the cache.
    let published = total(&samples(&page, "orders_outbox_published_total"));
    assert!(published >= 2.0 * ORDERS as f64, "published {published}");
    let batched = samples(&page, "orders_storage_batched_writes_total");
    for kind in ["create", "status_change"] {
        let writes: f64 = batched
            .iter()
            .filter(|sample| sample.label("kind") == Some(kind))
            .map(|sample| sample.value)
            .sum();
        assert_eq!(writes, ORDERS as f64, "{kind} writes batched: {batched:?}");
    }
    let fills = samples(&page, "orders_cache_fills_total");
    assert!(total(&fills) >= ORDERS as f64, "{fills:?}");

    app.stop().await.expect("a clean stop");
}
