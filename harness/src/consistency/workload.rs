//! The clients: create orders, change their status, and read them, recording every call in the history.
//!
//! Clients keep a shared notion of each order's latest known status and version (from the answers they
//! get) to choose mostly legal transitions, `expected_version`s and `min_version`s that mean something;
//! a fixed share of requests is illegal on purpose, so refusals are exercised too. Randomness is seeded
//! per step, so a step replays the same choices (concurrency still interleaves them differently).
//!
//! Two mixes ([`Mix`]): every order stays a target (the tests: orders finish and requests to them are
//! refused), or a bounded working set of orders in progress (the soak: most changes commit a version,
//! and the sampler watches a bounded set of keys however long the run).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use service::domain::OrderStatus;
use service::proto::orders::v1 as pb;

use super::history::{History, Op, OpRecord, Outcome};
use crate::client::{OrdersClient, item};

/// How long the sampler keeps watching an order of the working set after it finished and its cache entry
/// caught up: a fill that read the order before it finished may land that much later (a slow fill
/// waits up to 500 ms; the end of the run samples every order once more anyway).
pub const RETIRED_WATCH: Duration = Duration::from_secs(5);

/// How the clients choose what to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mix {
    /// Every order ever created stays a target; a fifth of the status changes ask for a random status
    /// (often illegal, sometimes the current one): refusals and no-ops are exercised.
    Everything,
    /// At most this many orders in progress are targets: a finished order retires and a new one is
    /// created; nine status changes in ten are the next legal step.
    WorkingSet(usize),
}

/// What the clients believe about the orders.
#[derive(Debug, Default)]
pub struct Known {
    /// Every order created, in creation order.
    pub ids: Vec<i64>,
    /// The orders still in progress, in creation order (all of `ids` unless the mix has a working set).
    active: Vec<i64>,
    /// Finished orders of a working set: id, final version, when they finished (history time).
    retired: VecDeque<(i64, i64, Duration)>,
    latest: HashMap<i64, (i32, i64)>,
}

impl Known {
    fn observe(&mut self, order: &pb::Order, mix: Mix, now: Duration) {
        if !self.latest.contains_key(&order.order_id) {
            self.ids.push(order.order_id);
            self.active.push(order.order_id);
        }
        let entry = self
            .latest
            .entry(order.order_id)
            .or_insert((order.status, order.version));
        if order.version >= entry.1 {
            *entry = (order.status, order.version);
        }
        let finished = OrderStatus::from_proto(entry.0).is_ok_and(OrderStatus::is_final);
        if finished
            && matches!(mix, Mix::WorkingSet(_))
            && let Some(index) = self.active.iter().position(|id| *id == order.order_id)
        {
            self.active.remove(index);
            self.retired.push_back((order.order_id, entry.1, now));
        }
    }

    /// The orders the sampler watches: a finished order of the working set until its cache entry has
    /// held nothing older than its final version for [`RETIRED_WATCH`].
    fn watched(&mut self, mix: Mix, now: Duration, history: &History) -> Vec<i64> {
        match mix {
            Mix::Everything => self.ids.clone(),
            Mix::WorkingSet(_) => {
                for (id, version, at) in &mut self.retired {
                    if !history.cache_settled(*id, *version) {
                        *at = now;
                    }
                }
                self.retired
                    .retain(|(_, _, at)| now.saturating_sub(*at) <= RETIRED_WATCH);
                let retired = self.retired.iter().map(|(id, _, _)| *id);
                self.active.iter().copied().chain(retired).collect()
            }
        }
    }
}

#[derive(Clone)]
pub struct Workload {
    client: OrdersClient,
    history: Arc<History>,
    known: Arc<Mutex<Known>>,
    /// Most operations per second over all clients of a step.
    pace: Option<f64>,
    mix: Mix,
}

impl Workload {
    pub fn new(client: OrdersClient, history: Arc<History>, pace: Option<f64>, mix: Mix) -> Self {
        Self {
            client,
            history,
            known: Arc::new(Mutex::new(Known::default())),
            pace: pace.filter(|rate| *rate > 0.0),
            mix,
        }
    }

    /// The orders whose cache entries the sampler watches: every order, or the working set and the
    /// finished orders whose entries have not settled for [`RETIRED_WATCH`] yet.
    pub fn watched_ids(&self) -> Vec<i64> {
        let now = self.history.now();
        self.with_known(|known| known.watched(self.mix, now, &self.history))
    }

    fn with_known<T>(&self, action: impl FnOnce(&mut Known) -> T) -> T {
        let mut known = self.known.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        action(&mut known)
    }

    pub async fn create(&self, count: u8) {
        for _ in 0..count {
            self.call(0, Op::Create).await;
        }
    }

    /// `count` operations spread over `clients` concurrent clients.
    pub async fn traffic(&self, count: u16, clients: u8, seed: u64) {
        self.traffic_within(count, clients, seed, Duration::MAX).await;
    }

    /// [`traffic`](Self::traffic), but the clients stop at `limit` even if operations are left: during
    /// a fault calls can be slow (a frozen Redis costs every read its timeout), and a fault must not
    /// last longer because of it.
    pub async fn traffic_within(&self, count: u16, clients: u8, seed: u64, limit: Duration) {
        let deadline = tokio::time::Instant::now().checked_add(limit);
        let clients = clients.max(1) as usize;
        let mut tasks = Vec::with_capacity(clients);
        for client in 0..clients {
            let workload = self.clone();
            let share = count as usize / clients + usize::from(client < count as usize % clients);
            // With a pace, each client takes its share of the rate: one call per `clients / rate` s.
            let mut ticks = workload
                .pace
                .map(|rate| tokio::time::interval(Duration::from_secs_f64(clients as f64 / rate)));
            tasks.push(tokio::spawn(async move {
                let mut rng = StdRng::seed_from_u64(seed.wrapping_add(client as u64));
                for _ in 0..share {
                    if deadline.is_some_and(|deadline| tokio::time::Instant::now() >= deadline) {
                        break;
                    }
                    if let Some(ticks) = &mut ticks {
                        ticks.tick().await;
                    }
                    let op = workload.choose(&mut rng);
                    if !workload.call(client + 1, op).await {
                        // The service is unreachable (restarting): don't burn the step's operations on
                        // instant connection refusals.
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }));
        }
        for task in tasks {
            let _ = task.await;
        }
    }

    /// Reads every known order in one `GetOrders` (at most 1,000 ids, the RPC's bound, the newest).
    pub async fn read_all(&self) {
        let order_ids = self.with_known(|known| {
            let mut ids: Vec<i64> = known.latest.keys().copied().collect();
            ids.sort_unstable();
            ids.split_off(ids.len().saturating_sub(1000))
        });
        if !order_ids.is_empty() {
            self.call(0, Op::GetMany { order_ids }).await;
        }
    }

    /// Creates orders until at least `count` of those the clients know are in progress.
    pub async fn ensure_open(&self, count: usize) {
        for _ in self.open_orders(count).len()..count {
            self.call(0, Op::Create).await;
        }
    }

    /// Up to `count` orders in progress (they have a next status), newest first.
    pub fn open_orders(&self, count: usize) -> Vec<i64> {
        self.with_known(|known| {
            let open = |id: &&i64| {
                known
                    .latest
                    .get(*id)
                    .is_some_and(|(status, _)| next_status(*status).is_some())
            };
            known.ids.iter().rev().filter(open).take(count).copied().collect()
        })
    }

    /// Moves each of `orders` to its next status, one call after another, so that no order changes
    /// twice; returns how many calls committed a new version.
    pub async fn advance_each(&self, orders: &[i64]) -> usize {
        let mut committed = 0;
        for &order_id in orders {
            let Some((status, version)) = self.with_known(|known| known.latest.get(&order_id).copied())
            else {
                continue;
            };
            let Some(to) = next_status(status) else { continue };
            let op = Op::Update {
                order_id,
                to,
                expected_version: None,
            };
            self.call(1, op).await;
            let now = self.with_known(|known| known.latest.get(&order_id).map(|(_, v)| *v));
            committed += usize::from(now.is_some_and(|v| v > version));
        }
        committed
    }

    /// Several clients change one order to its next status, all with the same expected version: at
    /// most one may win.
    pub async fn race(&self, clients: u8, seed: u64) {
        let mut rng = StdRng::seed_from_u64(seed);
        let target = self.with_known(|known| {
            let open: Vec<(i64, (i32, i64))> = known
                .latest
                .iter()
                .filter(|(_, (status, _))| next_status(*status).is_some())
                .map(|(id, state)| (*id, *state))
                .collect();
            (!open.is_empty()).then(|| open[rng.random_range(0..open.len())])
        });
        let Some((order_id, (status, version))) = target else {
            return;
        };
        let Some(to) = next_status(status) else { return };
        let mut tasks = Vec::new();
        for client in 0..clients.max(2) as usize {
            let workload = self.clone();
            tasks.push(tokio::spawn(async move {
                let op = Op::Update {
                    order_id,
                    to,
                    expected_version: Some(version),
                };
                workload.call(100 + client, op).await;
            }));
        }
        for task in tasks {
            let _ = task.await;
        }
    }

    fn choose(&self, rng: &mut StdRng) -> Op {
        // (creates, status changes, single reads) as cumulative shares; batch reads take the rest. Of
        // the status changes, the next step, a cancellation, and a random status.
        let ((create, update, get), (next, cancel)) = match self.mix {
            Mix::Everything => ((0.03, 0.65, 0.9), (0.7, 0.8)),
            Mix::WorkingSet(_) => ((0.0, 0.8, 0.95), (0.9, 0.95)),
        };
        self.with_known(|known| {
            let targets = &known.active;
            let short = matches!(self.mix, Mix::WorkingSet(size) if targets.len() < size);
            if targets.is_empty() || short {
                return Op::Create;
            }
            // Half the traffic goes to the three newest orders, to make clients collide.
            let pick = |rng: &mut StdRng| {
                let hot = targets.len().min(3);
                if rng.random_bool(0.5) {
                    targets[targets.len() - 1 - rng.random_range(0..hot)]
                } else {
                    targets[rng.random_range(0..targets.len())]
                }
            };
            let order_id = pick(rng);
            let (status, version) = known.latest.get(&order_id).copied().unwrap_or((1, 1));
            let roll: f64 = rng.random();
            if roll < create {
                Op::Create
            } else if roll < update {
                let kind: f64 = rng.random();
                let to = if kind < next {
                    next_status(status).unwrap_or(pb::OrderStatus::Cancelled as i32)
                } else if kind < cancel {
                    pb::OrderStatus::Cancelled as i32
                } else {
                    rng.random_range(1..=8) // often illegal, sometimes the same status
                };
                let expected_version = rng.random_bool(0.3).then_some(version);
                Op::Update {
                    order_id,
                    to,
                    expected_version,
                }
            } else if roll < get {
                let min_version = if rng.random_bool(0.5) { version } else { 0 };
                Op::Get {
                    order_id,
                    min_version,
                }
            } else {
                let count = rng.random_range(1..=5);
                Op::GetMany {
                    order_ids: (0..count).map(|_| pick(rng)).collect(),
                }
            }
        })
    }

    /// Makes one call and records it; false when the service could not be reached.
    async fn call(&self, client: usize, op: Op) -> bool {
        let grpc = &self.client;
        let start = self.history.now();
        let outcome = match &op {
            Op::Create => {
                let request = pb::CreateOrderRequest {
                    client_id: client as i64 + 1,
                    items: vec![item(
                        1 + (start.as_micros() % 1000) as i64,
                        1 + (start.as_micros() % 5) as i32,
                        12,
                        340_000_000,
                    )],
                    idempotency_key: String::new(),
                };
                answered(grpc.create_order(request).await, Outcome::Written)
            }
            Op::Update {
                order_id,
                to,
                expected_version,
            } => match OrderStatus::from_proto(*to) {
                Ok(to) => answered(
                    grpc.set_status(*order_id, to, *expected_version).await,
                    Outcome::Written,
                ),
                Err(error) => Outcome::Unknown(format!("the workload chose an invalid status: {error}")),
            },
            Op::Get {
                order_id,
                min_version,
            } => answered(grpc.get_order(*order_id, *min_version).await, |response| {
                Outcome::Read(response.order.into_iter().map(|o| (o, response.source)).collect())
            }),
            Op::GetMany { order_ids } => answered(grpc.get_orders(order_ids.clone()).await, |response| {
                Outcome::Read(
                    response
                        .orders
                        .into_iter()
                        .map(|o| (o, pb::Source::Unspecified as i32))
                        .collect(),
                )
            }),
        };
        let end = self.history.now();
        match &outcome {
            Outcome::Written(order) => self.with_known(|known| known.observe(order, self.mix, end)),
            Outcome::Read(orders) => self.with_known(|known| {
                for (order, _) in orders {
                    known.observe(order, self.mix, end);
                }
            }),
            _ => {}
        }
        let reached = !matches!(&outcome, Outcome::Unknown(reason) if reason.contains("connect"));
        self.history.record_op(OpRecord {
            client,
            op,
            start,
            end,
            outcome,
        });
        reached
    }
}

/// An answer as an outcome; a status from the server is a refusal, except for those that leave the
/// outcome unknown (a transport failure, a deadline, UNAVAILABLE). INTERNAL is a refusal, which the
/// checker flags.
fn answered<T>(result: Result<T, tonic::Status>, outcome: impl FnOnce(T) -> Outcome) -> Outcome {
    match result {
        Ok(answer) => outcome(answer),
        Err(status) => match status.code() {
            tonic::Code::Unavailable
            | tonic::Code::DeadlineExceeded
            | tonic::Code::Cancelled
            | tonic::Code::Unknown => Outcome::Unknown(format!("{:?}: {}", status.code(), status.message())),
            code => Outcome::Refused {
                code,
                message: status.message().to_string(),
            },
        },
    }
}

fn next_status(status: i32) -> Option<i32> {
    OrderStatus::from_proto(status)
        .ok()?
        .next()
        .map(OrderStatus::to_proto)
}
