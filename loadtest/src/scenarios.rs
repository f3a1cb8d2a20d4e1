//! The goose scenarios, each a kind of client, and the weights that decide how many users run each.
//!
//! | scenario | what a user does, in a loop |
//! |---|---|
//! | `warm-reads` | `GetOrder` of a random order of the data set (cached unless `--cache flush`) |
//! | `cold-reads` | evicts a cold order from the cache, then `GetOrder` of it (a miss, read from PostgreSQL and filled) |
//! | `batch-reads` | `GetOrders` of `--batch-size` random orders |
//! | `status-updates` | `UpdateOrderStatus` of an order, one legal step along its life cycle |
//! | `creates` | `CreateOrder` |
//! | `mix` | all of the above, weighted like an order service's day: mostly reads |
//!
//! goose hands scenarios to users in proportion to their weights (`--weights mix=3,creates=1`: three
//! users in four run the mix). Users run closed-loop, with no pause between transactions, so the load
//! is as much as the service answers; cap it with goose's `--throttle-requests` (calls per second of
//! all users together, see `session::timed`).

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use futures::future::BoxFuture;
use goose::prelude::*;
use service::domain::OrderStatus;
use service::proto::orders::v1 as pb;

use crate::seed::sample_order;
use crate::session::{self, Rpc};
use crate::workload::{Tracked, Workload, next_status};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    WarmReads,
    ColdReads,
    BatchReads,
    StatusUpdates,
    Creates,
    Mix,
}

impl Kind {
    pub const ALL: [Kind; 6] = [
        Self::WarmReads,
        Self::ColdReads,
        Self::BatchReads,
        Self::StatusUpdates,
        Self::Creates,
        Self::Mix,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::WarmReads => "warm-reads",
            Self::ColdReads => "cold-reads",
            Self::BatchReads => "batch-reads",
            Self::StatusUpdates => "status-updates",
            Self::Creates => "creates",
            Self::Mix => "mix",
        }
    }
}

/// One kind of call: a goose transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Call {
    WarmRead,
    ColdRead,
    BatchRead,
    StatusUpdate,
    Create,
}

impl Call {
    fn name(self) -> &'static str {
        match self {
            Self::WarmRead => "warm read",
            Self::ColdRead => "cold read",
            Self::BatchRead => "batch read",
            Self::StatusUpdate => "status update",
            Self::Create => "create",
        }
    }
}

/// The share of each kind of call in the `mix` scenario, per 100 calls.
const MIX: [(Call, usize); 5] = [
    (Call::WarmRead, 70),
    (Call::BatchRead, 10),
    (Call::StatusUpdate, 12),
    (Call::Create, 5),
    (Call::ColdRead, 3),
];

/// `--weights`: `name=weight` pairs separated by commas; kinds not named get weight 0 (not run).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Weights(BTreeMap<Kind, usize>);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WeightsError {
    #[error("{0:?} is not name=weight")]
    NotAPair(String),
    #[error("unknown scenario {0:?}; the scenarios are {names}", names = scenario_names())]
    UnknownScenario(String),
    #[error("weight {0:?} is not a whole number from 0 to 1000")]
    BadWeight(String),
    #[error("{0} is given twice")]
    Repeated(&'static str),
    #[error("every weight is 0: no scenario would run")]
    NothingToRun,
}

fn scenario_names() -> String {
    Kind::ALL.map(Kind::name).join(", ")
}

impl FromStr for Weights {
    type Err = WeightsError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let mut weights = BTreeMap::new();
        for pair in text.split(',').map(str::trim).filter(|pair| !pair.is_empty()) {
            let (name, weight) = pair
                .split_once('=')
                .ok_or_else(|| WeightsError::NotAPair(pair.to_owned()))?;
            let kind = Kind::ALL
                .into_iter()
                .find(|kind| kind.name() == name.trim())
                .ok_or_else(|| WeightsError::UnknownScenario(name.trim().to_owned()))?;
            let weight: usize = weight
                .trim()
                .parse()
                .ok()
                .filter(|weight| *weight <= 1000)
                .ok_or_else(|| WeightsError::BadWeight(weight.trim().to_owned()))?;
            if weights.insert(kind, weight).is_some() {
                return Err(WeightsError::Repeated(kind.name()));
            }
        }
        weights.retain(|_, weight| *weight > 0);
        if weights.is_empty() {
            return Err(WeightsError::NothingToRun);
        }
        Ok(Self(weights))
    }
}

impl fmt::Display for Weights {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let pairs: Vec<String> = self
            .0
            .iter()
            .map(|(kind, weight)| format!("{}={weight}", kind.name()))
            .collect();
        f.write_str(&pairs.join(","))
    }
}

impl Weights {
    /// The kinds that run, with their weights.
    pub fn iter(&self) -> impl Iterator<Item = (Kind, usize)> + '_ {
        self.0.iter().map(|(kind, weight)| (*kind, *weight))
    }

    /// Whether any user may read cold orders (alone, or as part of the mix).
    pub fn reads_cold(&self) -> bool {
        self.0.contains_key(&Kind::ColdReads) || self.0.contains_key(&Kind::Mix)
    }
}

/// The goose scenarios for `weights`. Cold reads need Redis access (`workload.admin()`); without it the
/// mix leaves them out, and a `cold-reads` scenario is refused by the caller.
pub fn build(weights: &Weights, workload: &Arc<Workload>) -> Result<Vec<Scenario>, GooseError> {
    weights
        .iter()
        .map(|(kind, weight)| {
            let mut scenario = Scenario::new(kind.name())
                .set_weight(weight)?
                .register_transaction(
                    Transaction::new(Arc::new(|user| Box::pin(session::connect(user))))
                        .set_on_start()
                        .set_name("connect"),
                );
            let calls: Vec<(Call, usize)> = match kind {
                Kind::WarmReads => vec![(Call::WarmRead, 1)],
                Kind::ColdReads => vec![(Call::ColdRead, 1)],
                Kind::BatchReads => vec![(Call::BatchRead, 1)],
                Kind::StatusUpdates => vec![(Call::StatusUpdate, 1)],
                Kind::Creates => vec![(Call::Create, 1)],
                Kind::Mix => MIX
                    .into_iter()
                    .filter(|(call, _)| *call != Call::ColdRead || workload.admin().is_some())
                    .collect(),
            };
            for (call, share) in calls {
                scenario = scenario.register_transaction(transaction(call, workload).set_weight(share)?);
            }
            Ok(scenario)
        })
        .collect()
}

/// One kind of call as a goose transaction sharing `workload`.
fn transaction(call: Call, workload: &Arc<Workload>) -> Transaction {
    let workload = workload.clone();
    let run: fn(&mut GooseUser, Arc<Workload>) -> BoxFuture<'_, TransactionResult> = match call {
        Call::WarmRead => |user, workload| Box::pin(warm_read(user, workload)),
        Call::ColdRead => |user, workload| Box::pin(cold_read(user, workload)),
        Call::BatchRead => |user, workload| Box::pin(batch_read(user, workload)),
        Call::StatusUpdate => |user, workload| Box::pin(status_update(user, workload)),
        Call::Create => |user, _| Box::pin(async { create(user).await.map(|_| ()) }),
    };
    Transaction::new(Arc::new(move |user| run(user, workload.clone()))).set_name(call.name())
}

async fn warm_read(user: &mut GooseUser, workload: Arc<Workload>) -> TransactionResult {
    let Some(order_id) = workload.warm_order(&mut rand::rng()) else {
        return Ok(());
    };
    let mut client = session::client(user)?;
    let request = pb::GetOrderRequest {
        order_id,
        min_version: 0,
    };
    if let Ok(answer) = session::timed(user, Rpc::GetOrderWarm, client.get_order(request)).await? {
        workload.sources.count_warm(answer.source);
    }
    Ok(())
}

/// Evicts (not timed), then reads. The order is this user's until the read is done, so no other user
/// refills it in between.
async fn cold_read(user: &mut GooseUser, workload: Arc<Workload>) -> TransactionResult {
    let Some(admin) = workload.admin() else {
        return Err(session::failure("cold reads need Redis access (--redis-url)"));
    };
    let Some(order_id) = workload.take_cold(&mut rand::rng()) else {
        return Ok(());
    };
    let evicted = admin.evict(order_id).await;
    let result = match evicted {
        Ok(()) => {
            let mut client = session::client(user)?;
            let request = pb::GetOrderRequest {
                order_id,
                min_version: 0,
            };
            session::timed(user, Rpc::GetOrderCold, client.get_order(request))
                .await
                .map(|answer| {
                    if let Ok(answer) = answer {
                        workload.sources.count_cold(answer.source);
                    }
                })
        }
        Err(error) => Err(session::failure(format!("evicting order {order_id}: {error}"))),
    };
    workload.give_back_cold(order_id);
    result
}

async fn batch_read(user: &mut GooseUser, workload: Arc<Workload>) -> TransactionResult {
    let order_ids = workload.warm_batch(&mut rand::rng());
    let mut client = session::client(user)?;
    // The answer is recorded (a failure as a failed request); there is nothing more to do with it.
    let _answer = session::timed(
        user,
        Rpc::GetOrders,
        client.get_orders(pb::GetOrdersRequest { order_ids }),
    )
    .await?;
    Ok(())
}

/// Moves one order a legal step; when every order is taken or finished, creates a new one first (a
/// recorded `CreateOrder`), so that a long run never runs out of orders to update.
async fn status_update(user: &mut GooseUser, workload: Arc<Workload>) -> TransactionResult {
    let order = match workload.take_for_update() {
        Some(order) => order,
        None => match create(user).await? {
            Some(order_id) => Tracked {
                order_id,
                status: OrderStatus::Created,
            },
            None => return Ok(()),
        },
    };
    let Some(status) = next_status(order.status, &mut rand::rng()) else {
        return Ok(());
    };
    let mut client = session::client(user)?;
    let request = pb::UpdateOrderStatusRequest {
        order_id: order.order_id,
        status: status.to_proto(),
        expected_version: None,
    };
    let answer = session::timed(user, Rpc::UpdateOrderStatus, client.update_order_status(request)).await?;
    // After a failure the order's status is unknown: it leaves the pool rather than risk illegal
    // transitions (new orders replace it).
    if let Ok(pb::UpdateOrderStatusResponse { order: Some(updated) }) = answer
        && let Ok(status) = OrderStatus::from_proto(updated.status)
    {
        workload.give_back(Tracked {
            order_id: order.order_id,
            status,
        });
    }
    Ok(())
}

/// `CreateOrder` of a plausible order; the new order's id if it succeeded.
async fn create(user: &mut GooseUser) -> Result<Option<i64>, Box<TransactionError>> {
    let mut client = session::client(user)?;
    let request = sample_order(&mut rand::rng(), String::new());
    let answer = session::timed(user, Rpc::CreateOrder, client.create_order(request)).await?;
    Ok(answer
        .ok()
        .and_then(|created| created.order)
        .map(|order| order.order_id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_parse_and_refuse_nonsense() {
        let parsed: Result<Weights, _> = "mix=3, creates=1,warm-reads=0".parse();
        let Ok(weights) = parsed else {
            panic!("valid weights refused: {parsed:?}")
        };
        assert_eq!(
            weights.iter().collect::<Vec<_>>(),
            vec![(Kind::Creates, 1), (Kind::Mix, 3)]
        );
        assert_eq!(weights.to_string(), "creates=1,mix=3");
        assert!(weights.reads_cold());

        assert_eq!(
            "mix".parse::<Weights>(),
            Err(WeightsError::NotAPair("mix".into()))
        );
        assert!(
            matches!("reads=1".parse::<Weights>(), Err(WeightsError::UnknownScenario(name)) if name == "reads")
        );
        assert_eq!(
            "mix=-1".parse::<Weights>(),
            Err(WeightsError::BadWeight("-1".into()))
        );
        assert_eq!(
            "mix=1e3".parse::<Weights>(),
            Err(WeightsError::BadWeight("1e3".into()))
        );
        assert_eq!(
            "mix=1,mix=2".parse::<Weights>(),
            Err(WeightsError::Repeated("mix"))
        );
        assert_eq!("mix=0".parse::<Weights>(), Err(WeightsError::NothingToRun));
        assert_eq!("".parse::<Weights>(), Err(WeightsError::NothingToRun));
        let message = "reads=1".parse::<Weights>().map_err(|e| e.to_string());
        assert!(message.is_err_and(|m| m.contains("warm-reads, cold-reads")));
    }

    #[test]
    fn the_mix_is_mostly_reads() {
        let total: usize = MIX.iter().map(|(_, share)| share).sum();
        assert_eq!(total, 100);
        let reads: usize = MIX
            .iter()
            .filter(|(call, _)| matches!(call, Call::WarmRead | Call::ColdRead | Call::BatchRead))
            .map(|(_, share)| share)
            .sum();
        assert!(reads >= 80);
    }
}
