//! `GetOrder` answered from the cache against `GetOrder` with the cache off, at the same concurrency.
//!
//! One local stack, two instances of the service in this process, on the same database and data set
//! (`BENCH_ORDERS`, default 1000 orders):
//!
//! * **cache**: the API, the relay and the updater, with the stack's Redis; the data set is warm, so
//!   every read is a hit;
//! * **cache_off**: the API alone, its Redis a stand-in that refuses every command at once
//!   ([`loadtest::cache_off`]), so every read goes to PostgreSQL, as when Redis is down.
//!
//! An iteration is `BENCH_REQUESTS` (default 2000) `GetOrder`s of random orders, sent by
//! `BENCH_CONCURRENCY` (default 16) clients at once, each on its own connection and each waiting for
//! its answer before its next request. Criterion reports requests/s; the end of the run prints the
//! medians, their ratio, each side's latency percentiles over every request sent, and where the answers
//! came from. A last, short measurement shows why the cache-off side is a stand-in and not a closed
//! port: against a closed port the service waits for its Redis client's reconnection back-off.
//!
//! Load generator and services share the machine's cores, equally for both sides.

mod common;

use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::{Tally, env_number, must, ratio};
use criterion::{BenchmarkId, Criterion, Throughput};
use loadtest::cache_off::RefusingRedis;
use loadtest::seed;
use loadtest::stats::Summary;
use loadtest::target::{self, LocalStack};
use rand::seq::IndexedRandom;
use service::config::Component;
use service::proto::orders::v1 as pb;
use service::proto::orders::v1::order_service_client::OrderServiceClient;
use tonic::transport::Channel;

/// Requests of the closed-port measurement, per client.
const CLOSED_PORT_REQUESTS: usize = 20;

/// One side of the comparison: its clients, and what their requests saw.
struct Side {
    name: &'static str,
    clients: Vec<OrderServiceClient<Channel>>,
    latencies: Mutex<Vec<Duration>>,
    from_cache: Mutex<(u64, u64)>,
}

impl Side {
    async fn connect(name: &'static str, endpoint: &str, concurrency: usize) -> Self {
        let mut clients = Vec::with_capacity(concurrency);
        for _ in 0..concurrency {
            clients.push(must("connecting a client", target::connect(endpoint).await));
        }
        Self {
            name,
            clients,
            latencies: Mutex::new(Vec::new()),
            from_cache: Mutex::new((0, 0)),
        }
    }

    /// `requests` reads of random `orders`, spread over the clients; returns the wall time.
    async fn run(&self, orders: &[i64], requests: usize) -> Duration {
        let per_client = requests.div_ceil(self.clients.len());
        let mut rng = rand::rng();
        let mut tasks = tokio::task::JoinSet::new();
        let started = Instant::now();
        for client in &self.clients {
            let ids: Vec<i64> = (0..per_client)
                .filter_map(|_| orders.choose(&mut rng).copied())
                .collect();
            let mut client = client.clone();
            tasks.spawn(async move {
                let mut latencies = Vec::with_capacity(ids.len());
                let (mut cached, mut total) = (0, 0);
                for order_id in ids {
                    let sent = Instant::now();
                    let answer = client
                        .get_order(pb::GetOrderRequest {
                            order_id,
                            min_version: 0,
                        })
                        .await;
                    latencies.push(sent.elapsed());
                    let answer = must("GetOrder", answer).into_inner();
                    total += 1;
                    if answer.source == pb::Source::Cache as i32 {
                        cached += 1;
                    }
                }
                (latencies, cached, total)
            });
        }
        let mut all = Vec::new();
        let (mut cached, mut total) = (0, 0);
        while let Some(done) = tasks.join_next().await {
            let (latencies, c, t) = must("a client task", done);
            all.extend(latencies);
            cached += c;
            total += t;
        }
        let elapsed = started.elapsed();
        self.latencies
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .extend(all);
        let mut sources = self
            .from_cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        sources.0 += cached;
        sources.1 += total;
        elapsed
    }

    fn latency(&self) -> Option<Summary> {
        let mut latencies = self
            .latencies
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        Summary::of(&mut latencies)
    }
}

fn main() {
    if !common::benchmarking() {
        println!("get_order: runs under `cargo bench` only");
        return;
    }
    let orders = env_number("BENCH_ORDERS", 1000) as usize;
    let requests = env_number("BENCH_REQUESTS", 2000) as usize;
    let concurrency = env_number("BENCH_CONCURRENCY", 16) as usize;
    let runtime = common::runtime();

    let (stack, cached_service, uncached_service, stub, ids, cache, cache_off) = runtime.block_on(async {
        let stack = must(
            "starting the local stack",
            LocalStack::start("bench", harness::RedisMode::Single).await,
        );
        let all = [Component::Api, Component::Relay, Component::Updater];
        let cached_service = must("the service", stack.spawn(stack.settings().clone(), &all).await);
        let stub = must("the refusing Redis", RefusingRedis::start().await);
        let mut settings = stack.settings().clone();
        settings.redis_url = stub.url();
        let uncached_service = must(
            "the cache-off service",
            stack.spawn(settings, &[Component::Api]).await,
        );

        let client = must("a client", target::connect(&cached_service.endpoint()).await);
        let ids = must("seeding", seed::create_orders(&client, orders, "bench").await);
        must(
            "warming the cache",
            seed::prepare_cache(&client, None, &ids, seed::CacheMode::Warm).await,
        );
        let cache = Side::connect("cache", &cached_service.endpoint(), concurrency).await;
        let cache_off = Side::connect("cache_off", &uncached_service.endpoint(), concurrency).await;
        (
            stack,
            cached_service,
            uncached_service,
            stub,
            ids,
            cache,
            cache_off,
        )
    });

    let tally = Tally::default();
    let mut criterion = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_secs(2))
        .measurement_time(Duration::from_secs(10))
        .configure_from_args();
    let mut group = criterion.benchmark_group("get_order");
    group.throughput(Throughput::Elements(requests as u64));
    for side in [&cache, &cache_off] {
        group.bench_function(BenchmarkId::new(side.name, concurrency), |b| {
            b.to_async(&runtime).iter_custom(|iterations| {
                let (tally, ids) = (&tally, &ids);
                async move {
                    let mut total = Duration::ZERO;
                    for _ in 0..iterations {
                        let elapsed = side.run(ids, requests).await;
                        tally.record(side.name, requests as u64, elapsed);
                        total += elapsed;
                    }
                    total
                }
            })
        });
    }
    group.finish();

    println!("\nget_order: {requests} GetOrders per iteration from {concurrency} clients, {orders} orders");
    println!("| side | requests/s (median) | iterations | p50 ms | p99 ms | p99.9 ms | from the cache |");
    println!("|---|---|---|---|---|---|---|");
    for side in [&cache, &cache_off] {
        let (median, iterations) = tally.median(side.name).unwrap_or_default();
        let latency = side.latency();
        let (cached, total) = *side
            .from_cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        println!(
            "| {} | {median:.0} | {iterations} | {:.3} | {:.3} | {:.3} | {cached} of {total} |",
            side.name,
            latency.as_ref().map_or(0.0, |l| l.p50_ms),
            latency.as_ref().map_or(0.0, |l| l.p99_ms),
            latency.as_ref().map_or(0.0, |l| l.p999_ms),
        );
    }
    println!(
        "cache / cache_off throughput: {}",
        ratio(
            tally.median("cache").map(|m| m.0),
            tally.median("cache_off").map(|m| m.0)
        )
    );

    runtime.block_on(async {
        closed_port(&stack, &ids, concurrency).await;
        for service in [cached_service, uncached_service] {
            if let Err(error) = service.stop().await {
                eprintln!("get_order: stopping a service: {error}");
            }
        }
    });
    drop(stub);
    criterion.final_summary();
}

/// The same reads against a service whose Redis port is closed: a short measurement, not criterion's.
async fn closed_port(stack: &LocalStack, ids: &[i64], concurrency: usize) {
    let closed = must("a free port", std::net::TcpListener::bind("127.0.0.1:0"));
    let address = must("its address", closed.local_addr());
    drop(closed);
    let mut settings = stack.settings().clone();
    settings.redis_url = format!("redis://{address}/");
    let service = must(
        "the closed-port service",
        stack.spawn(settings, &[Component::Api]).await,
    );
    let side = Side::connect("closed_port", &service.endpoint(), concurrency).await;
    let requests = CLOSED_PORT_REQUESTS * concurrency;
    let elapsed = side.run(ids, requests).await;
    let latency = side.latency();
    println!(
        "get_order: with Redis on a closed port instead: {requests} requests in {:.2} s = {:.0} requests/s, p50 {:.1} ms, p99 {:.1} ms",
        elapsed.as_secs_f64(),
        requests as f64 / elapsed.as_secs_f64(),
        latency.as_ref().map_or(0.0, |l| l.p50_ms),
        latency.as_ref().map_or(0.0, |l| l.p99_ms),
    );
    if let Err(error) = service.stop().await {
        eprintln!("get_order: stopping the closed-port service: {error}");
    }
}
