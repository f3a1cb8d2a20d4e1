//! The data set a run makes for itself through the API, and the state its cache entries start in.
//!
//! Orders are created with idempotency keys unique to the run, so a run against a long-lived service
//! never reuses another run's orders (whose statuses have moved on). Creation runs a bounded number of
//! calls at once: enough to be quick, few enough not to be a load test of its own.

use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use rand::Rng;
use serde::Serialize;
use service::proto::google::r#type::Money;
use service::proto::orders::v1 as pb;
use service::proto::orders::v1::order_service_client::OrderServiceClient;
use tonic::transport::Channel;

use crate::cache_admin::{CacheAdmin, CacheAdminError};

/// `CreateOrder` calls in flight while seeding.
const SEED_CONCURRENCY: usize = 16;
/// Ids per `GetOrders` (the API's limit).
const BATCH_LIMIT: usize = 1000;

#[derive(Debug, thiserror::Error)]
pub enum SeedError {
    #[error("{call}: {status}")]
    Rpc {
        call: &'static str,
        status: tonic::Status,
    },
    #[error("CreateOrder answered without an order")]
    NoOrder,
    #[error(transparent)]
    Cache(#[from] CacheAdminError),
}

/// What the cache holds of the data set when the load starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum CacheMode {
    /// Read every order once, so that the cache holds them all.
    Warm,
    /// Delete every order of the data set from the cache (needs Redis access).
    Flush,
    /// Leave the cache as the seeding left it.
    AsIs,
}

/// How the data set and its cache were prepared, for the report.
#[derive(Debug, Clone, Serialize)]
pub struct Preparation {
    pub orders: usize,
    pub seed_seconds: f64,
    pub cache_mode: CacheMode,
    pub cache_seconds: f64,
    /// Orders of the data set in the cache when the load started (`None`: no Redis access to count).
    pub cached_at_start: Option<usize>,
    /// How long it took, after seeding, until an update reached the cache quickly (`None`: it did not
    /// within the deadline, and the run went ahead anyway).
    pub live_after_seconds: Option<f64>,
}

/// Creates `count` orders; their ids, in creation order.
pub async fn create_orders(
    client: &OrderServiceClient<Channel>,
    count: usize,
    run_id: &str,
) -> Result<Vec<i64>, SeedError> {
    futures::stream::iter(0..count)
        .map(|index| {
            let mut client = client.clone();
            let request = sample_order(&mut rand::rng(), format!("loadtest-{run_id}-{index}"));
            async move { create(&mut client, request).await.map(|order| order.order_id) }
        })
        .buffered(SEED_CONCURRENCY)
        .try_collect()
        .await
}

/// One `CreateOrder`.
pub async fn create(
    client: &mut OrderServiceClient<Channel>,
    request: pb::CreateOrderRequest,
) -> Result<pb::Order, SeedError> {
    client
        .create_order(request)
        .await
        .map_err(|status| SeedError::Rpc {
            call: "CreateOrder",
            status,
        })?
        .into_inner()
        .order
        .ok_or(SeedError::NoOrder)
}

/// A plausible order: one to three items of a random client, in euros.
pub fn sample_order(rng: &mut impl Rng, idempotency_key: String) -> pb::CreateOrderRequest {
    let items = (0..rng.random_range(1..=3))
        .map(|_| pb::OrderItem {
            sku_id: rng.random_range(1..=10_000),
            quantity: rng.random_range(1..=3),
            price: Some(Money {
                currency_code: "EUR".into(),
                units: rng.random_range(1..=200),
                nanos: rng.random_range(0..100) * 10_000_000,
            }),
        })
        .collect();
    pb::CreateOrderRequest {
        client_id: rng.random_range(1..=100_000),
        items,
        idempotency_key,
    }
}

/// Puts the cache in `mode` for `ids`; `admin` is needed for [`CacheMode::Flush`] (the caller checks)
/// and used, when given, to count what the cache holds.
pub async fn prepare_cache(
    client: &OrderServiceClient<Channel>,
    admin: Option<&CacheAdmin>,
    ids: &[i64],
    mode: CacheMode,
) -> Result<(Duration, Option<usize>), SeedError> {
    let started = Instant::now();
    match (mode, admin) {
        (CacheMode::Warm, _) => warm(client, ids).await?,
        (CacheMode::Flush, Some(admin)) => flush(admin, ids).await?,
        (CacheMode::Flush, None) | (CacheMode::AsIs, _) => {}
    }
    let elapsed = started.elapsed();
    let cached = match admin {
        Some(admin) => Some(admin.cached(ids).await?),
        None => None,
    };
    Ok((elapsed, cached))
}

/// Reads every order once through `GetOrders`, which fills the cache with what it misses.
async fn warm(client: &OrderServiceClient<Channel>, ids: &[i64]) -> Result<(), SeedError> {
    let mut client = client.clone();
    for chunk in ids.chunks(BATCH_LIMIT) {
        client
            .get_orders(pb::GetOrdersRequest {
                order_ids: chunk.to_vec(),
            })
            .await
            .map_err(|status| SeedError::Rpc {
                call: "GetOrders",
                status,
            })?;
    }
    Ok(())
}

/// Deletes every seeded order's entry. Nothing puts them back but a read: the updater never creates
/// an entry (see the service's cache protocol).
async fn flush(admin: &CacheAdmin, ids: &[i64]) -> Result<(), SeedError> {
    admin.evict_many(ids).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sample_orders_are_valid_requests() {
        let mut rng = rand::rng();
        for i in 0..100 {
            let order = sample_order(&mut rng, format!("k{i}"));
            assert!((1..=3).contains(&order.items.len()));
            assert!(order.client_id > 0);
            for item in &order.items {
                assert!(item.quantity >= 1);
                let Some(price) = &item.price else {
                    panic!("an item without a price")
                };
                assert!(price.units >= 1 && (0..1_000_000_000).contains(&price.nanos));
            }
        }
    }
}
