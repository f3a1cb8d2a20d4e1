//! Orders in PostgreSQL: create, read, and change status, each change with its outbox event in the same
//! transaction.
//!
//! A status change locks the order's row (`FOR UPDATE`), so concurrent changes of one order serialize and
//! each one sees the version the previous one wrote: versions increase by exactly one per change, and
//! every version gets exactly one outbox event.

use std::collections::HashMap;

use rust_decimal::Decimal;
use sqlx::{PgConnection, Row};

use super::{Storage, StorageError, outbox};
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
    pub async fn create_order(&self, new: &NewOrder, trace: TraceParent) -> Result<Order, CreateError> {
        let mut transaction = self.pool().begin().await?;
        let inserted: Option<i64> = sqlx::query_scalar(
            "INSERT INTO orders (client_id, status, currency_code, amount, idempotency_key)
             VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (client_id, idempotency_key) DO NOTHING
             RETURNING id",
        )
        .bind(new.client_id)
        .bind(OrderStatus::Created.as_str())
        .bind(new.amount.currency().as_str())
        .bind(new.amount.amount())
        .bind(new.idempotency_key.as_deref())
        .fetch_optional(&mut *transaction)
        .await?;

        let Some(id) = inserted else {
            // The key was used before (possibly by a concurrent request that just committed).
            transaction.rollback().await?;
            return self.order_of_key(new).await;
        };

        let positions: Vec<i32> = (0..new.items.len() as i32).collect();
        let skus: Vec<i64> = new.items.iter().map(|item| item.sku_id).collect();
        let quantities: Vec<i32> = new.items.iter().map(|item| item.quantity).collect();
        let prices: Vec<Decimal> = new.items.iter().map(|item| item.price.amount()).collect();
        sqlx::query(
            "INSERT INTO order_items (order_id, position, sku_id, quantity, price)
             SELECT $1, * FROM UNNEST($2::int[], $3::bigint[], $4::int[], $5::numeric[])",
        )
        .bind(id)
        .bind(&positions)
        .bind(&skus)
        .bind(&quantities)
        .bind(&prices)
        .execute(&mut *transaction)
        .await?;

        let order = load_one(&mut transaction, id)
            .await?
            .ok_or_else(|| StorageError::Corrupt(format!("order {id} not visible in its own transaction")))?;
        record_version(&mut transaction, &order).await?;
        outbox::enqueue(&mut transaction, &order, trace).await?;
        transaction.commit().await?;
        Ok(order)
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

    /// Moves the order to `to`, checking `expected_version` and the state machine under the row lock.
    /// `trace` goes with the event.
    pub async fn update_status(
        &self,
        id: OrderId,
        to: OrderStatus,
        expected_version: Option<i64>,
        trace: TraceParent,
    ) -> Result<StatusChange, UpdateError> {
        let mut transaction = self.pool().begin().await?;
        let row = sqlx::query("SELECT status, version FROM orders WHERE id = $1 FOR UPDATE")
            .bind(id.get())
            .fetch_optional(&mut *transaction)
            .await?
            .ok_or(UpdateError::NotFound(id))?;
        let current = parse_status(row.try_get("status")?)?;
        let version: i64 = row.try_get("version")?;
        if let Some(expected) = expected_version
            && expected != version
        {
            return Err(UpdateError::VersionMismatch {
                id,
                expected,
                actual: version,
            });
        }
        let changed = current.check_transition(to)?;
        if changed {
            sqlx::query(
                "UPDATE orders SET status = $2, version = version + 1, updated_at = now() WHERE id = $1",
            )
            .bind(id.get())
            .bind(to.as_str())
            .execute(&mut *transaction)
            .await?;
        }
        let order = load_one(&mut transaction, id.get())
            .await?
            .ok_or(UpdateError::NotFound(id))?;
        if changed {
            record_version(&mut transaction, &order).await?;
            outbox::enqueue(&mut transaction, &order, trace).await?;
        }
        transaction.commit().await?;
        Ok(StatusChange { order, changed })
    }
}

async fn record_version(connection: &mut PgConnection, order: &Order) -> Result<(), StorageError> {
    sqlx::query("INSERT INTO order_versions (order_id, version, status, changed_at) VALUES ($1, $2, $3, $4)")
        .bind(order.id.get())
        .bind(order.version)
        .bind(order.status.as_str())
        .bind(order.updated_at)
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
        let currency =
            CurrencyCode::parse(row.try_get::<String, _>("currency_code")?.trim()).map_err(corrupt)?;
        let id: i64 = row.try_get("id")?;
        currencies.insert(id, currency.clone());
        orders.push(Order {
            id: OrderId::parse(id).map_err(corrupt)?,
            client_id: row.try_get("client_id")?,
            status: parse_status(row.try_get("status")?)?,
            items: Vec::new(),
            amount: Money::from_decimal(currency, row.try_get("amount")?).map_err(corrupt)?,
            version: row.try_get("version")?,
            created_at: row.try_get("created_at")?,
            updated_at: row.try_get("updated_at")?,
        });
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

fn parse_status(name: String) -> Result<OrderStatus, StorageError> {
    OrderStatus::parse_name(&name).map_err(corrupt)
}

fn corrupt(error: impl std::fmt::Display) -> StorageError {
    StorageError::Corrupt(error.to_string())
}
