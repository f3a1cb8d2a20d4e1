//! The staleness probe: how long after `UpdateOrderStatus` returns does `GetOrder` answer the new
//! version *from the cache*?
//!
//! It runs beside the goose users, open-loop: a ticker fires at `--probe-rate` updates a second
//! whatever the service's speed (closed-loop users would slow down with it and hide the lag). Each tick
//! spawns one measurement: move one of the probe's own orders a step forward, note when the answer
//! came back with version `v`, then poll `GetOrder` until an answer has `source == SOURCE_CACHE` and
//! `version >= v`; the staleness is the time from the update's answer to that read's answer. Reads are
//! `--probe-poll-ms` apart, or a tenth of the time waited so far if that is longer. The figure is an
//! upper bound: the cache may have held `v` up to one such interval plus one read earlier.
//!
//! Back-pressure: at most `max_in_flight` measurements run at once; a tick that finds them all busy is
//! skipped and counted, so a service that falls behind shows as an achieved rate below the target
//! instead of an ever-growing pile of tasks. The probe's orders are used one measurement at a time (an
//! order is given back only once its measurement ends), and each finished order is replaced by a new
//! one, read once (so that it is cached) and put at the back of the queue: a poll never finds a plain
//! miss that its own database read would fill (which would measure the read path, not the updater).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde::Serialize;
use service::domain::OrderStatus;
use service::proto::orders::v1 as pb;
use service::proto::orders::v1::order_service_client::OrderServiceClient;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

use crate::seed::{create, sample_order};
use crate::stats::{Summary, millis};
use crate::workload::Tracked;

/// An update that reaches the cache within this shows the pipeline is live (see [`wait_until_live`]).
const LIVE_WITHIN: Duration = Duration::from_millis(250);

#[derive(Debug, Clone, Copy)]
pub struct ProbeSettings {
    /// Updates per second.
    pub rate: f64,
    /// Time between two reads of one measurement.
    pub poll_every: Duration,
    /// A measurement that has not seen its version in the cache by then counts as `never`.
    pub give_up_after: Duration,
    pub max_in_flight: usize,
}

/// A running probe; [`stop`](Self::stop) ends it and returns its figures.
pub struct Probe {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<StalenessReport>,
}

/// What one measurement found.
#[derive(Debug, Clone, Copy)]
enum Outcome {
    Converged {
        /// From the start of the probe to the update's answer.
        at: Duration,
        update_latency: Duration,
        staleness: Duration,
        polls: u32,
        database_answers: u32,
    },
    Never {
        polls: u32,
    },
    UpdateFailed,
    /// No order was free (more measurements in flight than the probe has orders).
    NoOrder,
}

/// The probe's figures, for the reports.
#[derive(Debug, Clone, Default, Serialize)]
pub struct StalenessReport {
    pub target_rate: f64,
    pub poll_every_ms: f64,
    pub give_up_after_ms: f64,
    pub seconds: f64,
    /// Updates that succeeded, per second of the probe's run.
    pub achieved_rate: f64,
    pub updates: usize,
    pub update_errors: usize,
    /// Ticks skipped because `max_in_flight` measurements were running or no order was free.
    pub skipped_ticks: usize,
    /// Orders the probe created to replace finished ones.
    pub orders_created: usize,
    pub converged: usize,
    /// Updates whose version the cache did not serve within `give_up_after`.
    pub never: usize,
    pub reads: usize,
    /// Reads answered from the database (a cache miss or an entry older than the read's version).
    pub database_answers: usize,
    pub staleness: Option<Summary>,
    pub update_latency: Option<Summary>,
    pub within_50ms: f64,
    pub within_1s: f64,
    /// Per second of the run: `[second, count, p50 ms, p99 ms, max ms]`, for the report's chart.
    pub per_second: Vec<[f64; 5]>,
}

impl Probe {
    /// Starts probing with `orders` (the probe's own, in status `CREATED`, not touched by the users).
    pub fn start(client: OrderServiceClient<Channel>, orders: &[i64], settings: ProbeSettings) -> Self {
        let stop = CancellationToken::new();
        let pool: VecDeque<Tracked> = orders
            .iter()
            .map(|&order_id| Tracked {
                order_id,
                status: OrderStatus::Created,
            })
            .collect();
        let shared = Arc::new(Shared {
            client,
            pool: Mutex::new(pool),
            settings,
            started: Instant::now(),
            created: std::sync::atomic::AtomicUsize::new(0),
        });
        let task = tokio::spawn(run(shared, stop.clone()));
        Self { stop, task }
    }

    /// Stops ticking, lets the measurements in flight finish (each within `give_up_after`), and
    /// returns the figures.
    pub async fn stop(self) -> StalenessReport {
        self.stop.cancel();
        self.task.await.unwrap_or_default()
    }
}

struct Shared {
    client: OrderServiceClient<Channel>,
    pool: Mutex<VecDeque<Tracked>>,
    settings: ProbeSettings,
    started: Instant,
    created: std::sync::atomic::AtomicUsize,
}

async fn run(shared: Arc<Shared>, stop: CancellationToken) -> StalenessReport {
    let settings = shared.settings;
    let mut outcomes = Vec::new();
    let mut skipped = 0;
    let mut tasks = JoinSet::new();
    if settings.rate > 0.0 {
        let in_flight = Arc::new(Semaphore::new(settings.max_in_flight));
        let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / settings.rate));
        // A late tick fires at once and the schedule is kept: the rate stays the one asked for.
        ticker.set_missed_tick_behavior(MissedTickBehavior::Burst);
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = ticker.tick() => {}
            }
            match in_flight.clone().try_acquire_owned() {
                Ok(permit) => {
                    tasks.spawn(measure(shared.clone(), permit));
                }
                Err(_) => skipped += 1,
            }
            // Collect what finished, so that the set holds only the measurements in flight.
            while let Some(done) = tasks.try_join_next() {
                outcomes.extend(done.ok());
            }
        }
    }
    let seconds = shared.started.elapsed().as_secs_f64();
    while let Some(done) = tasks.join_next().await {
        outcomes.extend(done.ok());
    }
    let created = shared.created.load(std::sync::atomic::Ordering::Relaxed);
    summarize(&outcomes, settings, seconds, skipped, created)
}

/// One update and the reads that follow it until the cache serves its version.
async fn measure(shared: Arc<Shared>, _permit: OwnedSemaphorePermit) -> Outcome {
    let settings = shared.settings;
    let Some(order) = shared
        .pool
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .pop_front()
    else {
        return Outcome::NoOrder;
    };
    let mut client = shared.client.clone();
    let Some(status) = order.status.next() else {
        return Outcome::NoOrder;
    };
    let sent = Instant::now();
    let update = client
        .update_order_status(pb::UpdateOrderStatusRequest {
            order_id: order.order_id,
            status: status.to_proto(),
            expected_version: None,
        })
        .await;
    let returned = Instant::now();
    let Some(version) = update
        .ok()
        .and_then(|answer| answer.into_inner().order)
        .map(|o| o.version)
    else {
        // The order's state is unknown: it leaves the pool, a new one replaces it.
        replace(&shared, &mut client).await;
        return Outcome::UpdateFailed;
    };

    let converged = converge(&mut client, order.order_id, version, returned, settings).await;
    let outcome = match converged.staleness {
        Some(staleness) => Outcome::Converged {
            at: returned - shared.started,
            update_latency: returned - sent,
            staleness,
            polls: converged.polls,
            database_answers: converged.database_answers,
        },
        None => Outcome::Never {
            polls: converged.polls,
        },
    };

    if status.is_final() {
        replace(&shared, &mut client).await;
    } else {
        let mut pool = shared.pool.lock().unwrap_or_else(PoisonError::into_inner);
        pool.push_back(Tracked {
            order_id: order.order_id,
            status,
        });
    }
    outcome
}

/// What the reads after one update saw.
struct Convergence {
    /// From the update's answer to the answer of the first read that served its version from the
    /// cache; `None`: not within `give_up_after`.
    staleness: Option<Duration>,
    polls: u32,
    database_answers: u32,
}

/// Reads `order_id` until the cache serves `version` or newer.
///
/// Reads are `poll_every` apart at first, then a tenth of the time waited so far apart: the
/// resolution stays within about 10% of the value measured while a slow convergence costs tens of
/// reads rather than thousands (the probe must not become the load it measures).
async fn converge(
    client: &mut OrderServiceClient<Channel>,
    order_id: i64,
    version: i64,
    returned: Instant,
    settings: ProbeSettings,
) -> Convergence {
    let (mut polls, mut database_answers) = (0, 0);
    loop {
        let read_at = Instant::now();
        let read = client
            .get_order(pb::GetOrderRequest {
                order_id,
                min_version: 0,
            })
            .await;
        let answered = Instant::now();
        polls += 1;
        if let Ok(read) = read.map(tonic::Response::into_inner) {
            let fresh = read.order.as_ref().is_some_and(|o| o.version >= version);
            if read.source == pb::Source::Cache as i32 && fresh {
                return Convergence {
                    staleness: Some(answered - returned),
                    polls,
                    database_answers,
                };
            }
            if read.source == pb::Source::Database as i32 {
                database_answers += 1;
            }
        }
        let waited = answered - returned;
        if waited >= settings.give_up_after {
            return Convergence {
                staleness: None,
                polls,
                database_answers,
            };
        }
        tokio::time::sleep_until((read_at + settings.poll_every.max(waited / 10)).into()).await;
    }
}

/// Waits until the service is live end to end: an update of one of `canaries` (cached orders in
/// status `CREATED`, used for nothing else) reaches the cache within `LIVE_WITHIN`. A service that just
/// started may still have its updater joining its consumer group, and the events of the data set's
/// creation in flight; measuring then would measure the start-up. Returns how long it took, or
/// `None` if the canaries ran out or `deadline` passed first.
pub async fn wait_until_live(
    client: &OrderServiceClient<Channel>,
    canaries: &[i64],
    settings: ProbeSettings,
    deadline: Duration,
) -> Option<Duration> {
    let started = Instant::now();
    let mut client = client.clone();
    for &order_id in canaries {
        let mut status = OrderStatus::Created;
        while let Some(next) = status.next() {
            if started.elapsed() > deadline {
                return None;
            }
            let update = client
                .update_order_status(pb::UpdateOrderStatusRequest {
                    order_id,
                    status: next.to_proto(),
                    expected_version: None,
                })
                .await;
            let returned = Instant::now();
            let Some(version) = update.ok().and_then(|a| a.into_inner().order).map(|o| o.version) else {
                break;
            };
            status = next;
            let converged = converge(&mut client, order_id, version, returned, settings).await;
            if converged
                .staleness
                .is_some_and(|staleness| staleness <= LIVE_WITHIN)
            {
                return Some(started.elapsed());
            }
        }
    }
    None
}

/// Creates a new order for the probe, at the back of its queue, and reads it once so that it is cached
/// (the read fills the miss) whatever the updater's lag: an update of an order the cache does not hold
/// would be "served from the cache" as soon as a poll's own miss filled it, which measures the read
/// path, not the updater.
async fn replace(shared: &Shared, client: &mut OrderServiceClient<Channel>) {
    let request = sample_order(&mut rand::rng(), String::new());
    match create(client, request).await {
        Ok(order) => {
            let read = client
                .get_order(pb::GetOrderRequest {
                    order_id: order.order_id,
                    min_version: 0,
                })
                .await;
            if let Err(status) = read {
                tracing::warn!(%status, "the staleness probe could not read back a new order");
            }
            shared.created.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let mut pool = shared.pool.lock().unwrap_or_else(PoisonError::into_inner);
            pool.push_back(Tracked {
                order_id: order.order_id,
                status: OrderStatus::Created,
            });
        }
        Err(error) => tracing::warn!(%error, "the staleness probe could not create an order"),
    }
}

fn summarize(
    outcomes: &[Outcome],
    settings: ProbeSettings,
    seconds: f64,
    skipped_ticks: usize,
    orders_created: usize,
) -> StalenessReport {
    let mut report = StalenessReport {
        target_rate: settings.rate,
        poll_every_ms: millis(settings.poll_every),
        give_up_after_ms: millis(settings.give_up_after),
        seconds,
        skipped_ticks,
        orders_created,
        ..StalenessReport::default()
    };
    let mut staleness = Vec::new();
    let mut update_latency = Vec::new();
    let mut by_second: Vec<Vec<std::time::Duration>> = Vec::new();
    for outcome in outcomes {
        match *outcome {
            Outcome::Converged {
                at,
                update_latency: latency,
                staleness: stale,
                polls,
                database_answers,
            } => {
                report.converged += 1;
                report.reads += polls as usize;
                report.database_answers += database_answers as usize;
                staleness.push(stale);
                update_latency.push(latency);
                let second = at.as_secs() as usize;
                if by_second.len() <= second {
                    by_second.resize(second + 1, Vec::new());
                }
                by_second[second].push(stale);
            }
            Outcome::Never { polls } => {
                report.never += 1;
                report.reads += polls as usize;
            }
            Outcome::UpdateFailed => report.update_errors += 1,
            Outcome::NoOrder => report.skipped_ticks += 1,
        }
    }
    report.updates = report.converged + report.never;
    report.achieved_rate = if seconds > 0.0 {
        report.updates as f64 / seconds
    } else {
        0.0
    };
    if report.updates > 0 {
        let within = |limit: Duration| {
            staleness.iter().filter(|s| **s <= limit).count() as f64 / report.updates as f64
        };
        report.within_50ms = within(Duration::from_millis(50));
        report.within_1s = within(Duration::from_secs(1));
    }
    report.staleness = Summary::of(&mut staleness);
    report.update_latency = Summary::of(&mut update_latency);
    report.per_second = by_second
        .iter_mut()
        .enumerate()
        .filter_map(|(second, samples)| {
            Summary::of(samples).map(|s| [second as f64, s.count as f64, s.p50_ms, s.p99_ms, s.max_ms])
        })
        .collect();
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    fn converged(at_ms: u64, staleness_ms: u64) -> Outcome {
        Outcome::Converged {
            at: Duration::from_millis(at_ms),
            update_latency: Duration::from_millis(2),
            staleness: Duration::from_millis(staleness_ms),
            polls: 3,
            database_answers: 0,
        }
    }

    #[test]
    fn the_summary_counts_every_outcome() {
        let settings = ProbeSettings {
            rate: 10.0,
            poll_every: Duration::from_millis(2),
            give_up_after: Duration::from_secs(10),
            max_in_flight: 10,
        };
        let outcomes = [
            converged(100, 10),
            converged(200, 30),
            converged(1500, 70),
            Outcome::Never { polls: 100 },
            Outcome::UpdateFailed,
            Outcome::NoOrder,
        ];
        let report = summarize(&outcomes, settings, 2.0, 1, 4);
        assert_eq!(report.updates, 4);
        assert_eq!(report.converged, 3);
        assert_eq!(report.never, 1);
        assert_eq!(report.update_errors, 1);
        assert_eq!(report.skipped_ticks, 2);
        assert_eq!(report.reads, 109);
        assert_eq!(report.achieved_rate, 2.0);
        assert_eq!(report.within_50ms, 0.5);
        assert_eq!(report.within_1s, 0.75);
        assert_eq!(report.staleness.as_ref().map(|s| s.max_ms), Some(70.0));
        assert_eq!(report.per_second.len(), 2);
        assert_eq!(report.per_second[0][1], 2.0);
        assert_eq!(report.per_second[1][0], 1.0);
    }
}
