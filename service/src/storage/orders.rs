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

use super::outbox::NewEvent;
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
    /// One round trip, no transaction to open or commit: one statement writes the order, its items, its
    /// first version and its event (a statement is atomic on its own). The event is encoded here, so its
    /// id and time are known before: the id from a block taken from the sequence ([`super::order_ids`]),
    /// the time from this process's clock (only versions order an order's changes, never times).
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
        let skus: Vec<i64> = new.items.iter().map(|item| item.sku_id).collect();
        let quantities: Vec<i32> = new.items.iter().map(|item| item.quantity).collect();
        let prices: Vec<Decimal> = new.items.iter().map(|item| item.price.amount()).collect();
        // Each part after the first writes only if the order was inserted: with the idempotency key
        // already used, nothing is.
        let inserted: Option<i64> = sqlx::query_scalar(
            "WITH created AS (
                 INSERT INTO orders (id, client_id, status, currency_code, amount, idempotency_key,
                                     version, created_at, updated_at)
                 VALUES ($1, $2, $3, $4, $5, $6, 1, $7, $7)
                 ON CONFLICT (client_id, idempotency_key) DO NOTHING
                 RETURNING id),
             items AS (
                 INSERT INTO order_items (order_id, position, sku_id, quantity, price)
                 SELECT created.id, item.position - 1, item.sku_id, item.quantity, item.price
                 FROM created,
                      UNNEST($8::bigint[], $9::int[], $10::numeric[])
                          WITH ORDINALITY AS item (sku_id, quantity, price, position)),
             version AS (
                 INSERT INTO order_versions (order_id, version, status, changed_at)
                 SELECT id, 1, $3, $7 FROM created)
             INSERT INTO outbox (aggregate_id, event_id, payload, traceparent)
             SELECT id, $11, $12, $13 FROM created
             RETURNING aggregate_id",
        )
        .bind(id)
        .bind(new.client_id)
        .bind(OrderStatus::Created.as_str())
        .bind(new.amount.currency().as_str())
        .bind(new.amount.amount())
        .bind(new.idempotency_key.as_deref())
        .bind(now)
        .bind(&skus)
        .bind(&quantities)
        .bind(&prices)
        .bind(event.event_id)
        .bind(&event.payload)
        .bind(&event.traceparent)
        .fetch_optional(self.pool())
        .await?;
        match inserted {
            Some(_) => Ok(order),
            // The key was used before (possibly by a concurrent request that just committed).
            None => self.order_of_key(new).await,
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

    /// Moves the order to `to`, checking `expected_version` and the state machine.
    ///
    /// Four round trips: in one transaction, an `UPDATE` that changes the row only if its status may
    /// become `to` and its version is the expected one (PostgreSQL re-checks both on the latest row
    /// after waiting for a concurrent change's lock, so changes of one order serialize), returning the
    /// order; then its version and event. Only when nothing changed does a second read find out why.
    /// `trace` goes with the event.
    pub async fn update_status(
        &self,
        id: OrderId,
        to: OrderStatus,
        expected_version: Option<i64>,
        trace: TraceParent,
    ) -> Result<StatusChange, UpdateError> {
        let from: Vec<&str> = OrderStatus::ALL
            .into_iter()
            .filter(|&status| status != to && status.can_become(to))
            .map(OrderStatus::as_str)
            .collect();
        // A change of the order between the UPDATE and the read that explains it can make the update
        // legal after all: try again, a bounded number of times.
        for _ in 0..UPDATE_ATTEMPTS {
            let mut transaction = self.pool().begin().await?;
            let changed = sqlx::query(
                "WITH changed AS (
                     UPDATE orders SET status = $2, version = version + 1, updated_at = now()
                     WHERE id = $1 AND status = ANY($3) AND ($4::bigint IS NULL OR version = $4)
                     RETURNING id, client_id, status, currency_code, amount, version, created_at,
                               updated_at)
                 SELECT changed.*,
                        ARRAY(SELECT sku_id FROM order_items WHERE order_id = changed.id
                              ORDER BY position) AS skus,
                        ARRAY(SELECT quantity FROM order_items WHERE order_id = changed.id
                              ORDER BY position) AS quantities,
                        ARRAY(SELECT price FROM order_items WHERE order_id = changed.id
                              ORDER BY position) AS prices
                 FROM changed",
            )
            .bind(id.get())
            .bind(to.as_str())
            .bind(&from)
            .bind(expected_version)
            .fetch_optional(&mut *transaction)
            .await?;
            if let Some(row) = changed {
                let mut order = order_of_row(&row)?;
                order.items = items_of_row(&row, order.amount.currency())?;
                record_change(&mut transaction, &order, trace).await?;
                transaction.commit().await?;
                return Ok(StatusChange { order, changed: true });
            }
            transaction.rollback().await?;

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

/// Writes `order`'s version and its event, made by the request `trace`: one statement.
async fn record_change(
    connection: &mut PgConnection,
    order: &Order,
    trace: TraceParent,
) -> Result<(), StorageError> {
    let event = NewEvent::of(order, trace);
    sqlx::query(
        "WITH version AS (
             INSERT INTO order_versions (order_id, version, status, changed_at) VALUES ($1, $2, $3, $4))
         INSERT INTO outbox (aggregate_id, event_id, payload, traceparent) VALUES ($1, $5, $6, $7)",
    )
    .bind(order.id.get())
    .bind(order.version)
    .bind(order.status.as_str())
    .bind(order.updated_at)
    .bind(event.event_id)
    .bind(&event.payload)
    .bind(&event.traceparent)
    .execute(connection)
    .await?;
    Ok(())
}

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
fn order_of_row(row: &PgRow) -> Result<Order, StorageError> {
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
fn items_of_row(row: &PgRow, currency: &CurrencyCode) -> Result<Vec<OrderItem>, StorageError> {
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
