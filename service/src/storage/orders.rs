//! Orders in PostgreSQL: create, read, and change status, each change with its outbox event in the same
//! transaction.
//!
//! A status change is an `UPDATE` of the order's row that holds its lock until commit, so concurrent
//! changes of one order serialize and each one sees the version the previous one wrote: versions increase
//! by exactly one per change, and every version gets exactly one outbox event.

use std::collections::HashMap;

use chrono::{SubsecRound, Utc};
use rust_decimal::Decimal;
use sqlx::postgres::PgRow;
use sqlx::{PgConnection, Row};

use super::creates::{Created, NewRow};
use super::outbox::NewEvent;
use super::status_changes::Change;
use super::{Storage, StorageError};
use crate::domain::{CurrencyCode, Money, NewOrder, Order, OrderId, OrderItem, OrderStatus, TransitionError};
use crate::telemetry::trace_context::TraceParent;

/// What a status change did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusChange {
    /// The order after the request.
    pub order: Order,
    /// False when the order already had the requested status: nothing was written, no event sent.
    pub changed: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum CreateError {
    #[error("idempotency_key {key:?} was already used by this client for a different order ({order_id})")]
    KeyReused { key: String, order_id: OrderId },
    #[error(transparent)]
    Storage(#[from] StorageError),
}

impl From<sqlx::Error> for CreateError {
    fn from(error: sqlx::Error) -> Self {
        Self::Storage(error.into())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum UpdateError {
    #[error("order {0} does not exist")]
    NotFound(OrderId),
    #[error("order {id} is at version {actual}, not the expected version {expected}")]
    VersionMismatch { id: OrderId, expected: i64, actual: i64 },
    #[error(transparent)]
    Transition(#[from] TransitionError),
    /// Concurrent changes of the order kept overtaking this one; the client may try again.
    #[error("order {0} changed concurrently {UPDATE_ATTEMPTS} times during this update; try again")]
    Contended(OrderId),
    #[error(transparent)]
    Storage(#[from] StorageError),
}

impl From<sqlx::Error> for UpdateError {
    fn from(error: sqlx::Error) -> Self {
        Self::Storage(error.into())
    }
}

impl Storage {
    /// Creates the order (version 1) and its event. With an idempotency key this client already used,
    /// returns the order first created with it if the request is the same (a retry), and refuses it if
    /// the request differs (the key reused for another order). `trace` goes with the event.
    ///
    /// The order goes to the database with the creates waiting at that moment, in one statement
    /// ([`super::group_commit`], [`super::creates`]). Its event is encoded here, so its id and time are
    /// known before: the id from a block taken from the sequence ([`super::order_ids`]), the time from
    /// this process's clock (only versions order an order's changes, never times).
    pub async fn create_order(&self, new: &NewOrder, trace: TraceParent) -> Result<Order, CreateError> {
        let id = self.order_ids.next(self.pool()).await?;
        // PostgreSQL keeps microseconds: the order answered is the order stored.
        let now = Utc::now().trunc_subsecs(6);
        let order = Order {
            id: OrderId::parse(id).map_err(corrupt)?,
            client_id: new.client_id,
            status: OrderStatus::Created,
            items: new.items.clone(),
            amount: new.amount.clone(),
            version: 1,
            created_at: now,
            updated_at: now,
        };
        let event = NewEvent::of(&order, trace);
        let row = NewRow {
            order,
            idempotency_key: new.idempotency_key.clone(),
            event,
        };
        match self.creates.submit(row).await.map_err(StorageError::from)?? {
            Created::Inserted(order) => Ok(order),
            // The key was used before (possibly by a concurrent request that just committed).
            Created::KeyUsed => self.order_of_key(new).await,
        }
    }

    /// The order `new`'s client first created with `new`'s idempotency key, if `new` asks for the same
    /// order.
    async fn order_of_key(&self, new: &NewOrder) -> Result<Order, CreateError> {
        let key = new.idempotency_key.as_deref().unwrap_or_default();
        let id: i64 =
            sqlx::query_scalar("SELECT id FROM orders WHERE client_id = $1 AND idempotency_key = $2")
                .bind(new.client_id)
                .bind(key)
                .fetch_one(self.pool())
                .await?;
        let mut connection = self.pool().acquire().await?;
        let order = load_one(&mut connection, id).await?.ok_or_else(|| {
            StorageError::Corrupt(format!("order {id} vanished after its idempotency key matched"))
        })?;
        if order.items == new.items && order.amount == new.amount {
            Ok(order)
        } else {
            Err(CreateError::KeyReused {
                key: key.to_string(),
                order_id: order.id,
            })
        }
    }

    pub async fn get_order(&self, id: OrderId) -> Result<Option<Order>, StorageError> {
        let mut connection = self.pool().acquire().await?;
        load_one(&mut connection, id.get()).await
    }

    /// The orders among `ids` that exist, in no particular order.
    pub async fn get_orders(&self, ids: &[OrderId]) -> Result<Vec<Order>, StorageError> {
        let ids: Vec<i64> = ids.iter().map(|id| id.get()).collect();
        let mut connection = self.pool().acquire().await?;
        load(&mut connection, &ids).await
    }

    /// Moves the order to `to`, checking `expected_version` and the state machine. `trace` goes with
    /// the event.
    ///
    /// The change goes to the database with the changes waiting at that moment, in one transaction
    /// ([`super::group_commit`], [`super::status_changes`]): an `UPDATE` that changes the row only if its
    /// status may become `to` and its version is the expected one, then its version and event. Only when
    /// nothing changed does a read find out why.
    pub async fn update_status(
        &self,
        id: OrderId,
        to: OrderStatus,
        expected_version: Option<i64>,
        trace: TraceParent,
    ) -> Result<StatusChange, UpdateError> {
        let change = Change {
            id,
            to,
            expected_version,
            trace,
        };
        // A change of the order between the UPDATE and the read that explains it can make the update
        // legal after all: try again, a bounded number of times.
        for _ in 0..UPDATE_ATTEMPTS {
            if let Some(order) = self
                .status_changes
                .submit(change)
                .await
                .map_err(StorageError::from)??
            {
                return Ok(StatusChange { order, changed: true });
            }
            let mut connection = self.pool().acquire().await?;
            let order = load_one(&mut connection, id.get())
                .await?
                .ok_or(UpdateError::NotFound(id))?;
            if let Some(expected) = expected_version
                && expected != order.version
            {
                return Err(UpdateError::VersionMismatch {
                    id,
                    expected,
                    actual: order.version,
                });
            }
            if !order.status.check_transition(to)? {
                return Ok(StatusChange {
                    order,
                    changed: false,
                });
            }
        }
        Err(UpdateError::Contended(id))
    }
}

/// How often [`Storage::update_status`] tries an update that a concurrent change keeps overtaking.
const UPDATE_ATTEMPTS: usize = 3;

async fn load_one(connection: &mut PgConnection, id: i64) -> Result<Option<Order>, StorageError> {
    Ok(load(connection, &[id]).await?.pop())
}

/// Two queries whatever the number of ids: the orders, then all their items.
async fn load(connection: &mut PgConnection, ids: &[i64]) -> Result<Vec<Order>, StorageError> {
    let order_rows = sqlx::query(
        "SELECT id, client_id, status, currency_code, amount, version, created_at, updated_at
         FROM orders WHERE id = ANY($1)",
    )
    .bind(ids)
    .fetch_all(&mut *connection)
    .await?;
    if order_rows.is_empty() {
        return Ok(Vec::new());
    }
    let found: Vec<i64> = order_rows
        .iter()
        .map(|row| row.try_get("id"))
        .collect::<Result<_, _>>()?;
    let item_rows = sqlx::query(
        "SELECT order_id, sku_id, quantity, price FROM order_items
         WHERE order_id = ANY($1) ORDER BY order_id, position",
    )
    .bind(&found)
    .fetch_all(&mut *connection)
    .await?;

    let mut currencies = HashMap::new();
    let mut orders = Vec::with_capacity(order_rows.len());
    for row in &order_rows {
        let order = order_of_row(row)?;
        currencies.insert(order.id.get(), order.amount.currency().clone());
        orders.push(order);
    }
    let mut items: HashMap<i64, Vec<OrderItem>> = HashMap::new();
    for row in &item_rows {
        let order_id: i64 = row.try_get("order_id")?;
        let currency = currencies
            .get(&order_id)
            .cloned()
            .ok_or_else(|| StorageError::Corrupt(format!("item of unknown order {order_id}")))?;
        items.entry(order_id).or_default().push(OrderItem {
            sku_id: row.try_get("sku_id")?,
            quantity: row.try_get("quantity")?,
            price: Money::from_decimal(currency, row.try_get("price")?).map_err(corrupt)?,
        });
    }
    for order in &mut orders {
        order.items = items.remove(&order.id.get()).unwrap_or_default();
    }
    Ok(orders)
}

/// An order's own columns (`id`, `client_id`, `status`, `currency_code`, `amount`, `version`,
/// `created_at`, `updated_at`), without its items.
pub(super) fn order_of_row(row: &PgRow) -> Result<Order, StorageError> {
    let currency = CurrencyCode::parse(row.try_get::<String, _>("currency_code")?.trim()).map_err(corrupt)?;
    Ok(Order {
        id: OrderId::parse(row.try_get("id")?).map_err(corrupt)?,
        client_id: row.try_get("client_id")?,
        status: parse_status(row.try_get("status")?)?,
        items: Vec::new(),
        amount: Money::from_decimal(currency, row.try_get("amount")?).map_err(corrupt)?,
        version: row.try_get("version")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

/// The items of a row with the arrays `skus`, `quantities` and `prices`, in position order.
pub(super) fn items_of_row(row: &PgRow, currency: &CurrencyCode) -> Result<Vec<OrderItem>, StorageError> {
    let skus: Vec<i64> = row.try_get("skus")?;
    let quantities: Vec<i32> = row.try_get("quantities")?;
    let prices: Vec<Decimal> = row.try_get("prices")?;
    skus.into_iter()
        .zip(quantities)
        .zip(prices)
        .map(|((sku_id, quantity), price)| {
            Ok(OrderItem {
                sku_id,
                quantity,
                price: Money::from_decimal(currency.clone(), price).map_err(corrupt)?,
            })
        })
        .collect()
}

fn parse_status(name: String) -> Result<OrderStatus, StorageError> {
    OrderStatus::parse_name(&name).map_err(corrupt)
}

fn corrupt(error: impl std::fmt::Display) -> StorageError {
    StorageError::Corrupt(error.to_string())
}
