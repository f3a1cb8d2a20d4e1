//! New orders written in batches: the [`Flush`] behind [`super::Storage::create_order`].
//!
//! One statement inserts every order of the batch with its items, its first version and its event; it
//! is atomic on its own, so no transaction is opened or committed around it. An order whose client
//! already used its idempotency key is skipped (`ON CONFLICT DO NOTHING`), and the statement returns the
//! ids it did insert, so each write learns which it was.
//!
//! # Guarantees
//!
//! * Each order is written with all its rows or not at all, and with the event that announces it.
//! * One failing write does not fail the others: a batch whose statement fails for another reason than
//!   an unreachable database is written again one order at a time, so each gets its own outcome.
//! * Rows are inserted in the order of (client, idempotency key), so two batches that share keys (two
//!   retries of one request, racing) take the key's index entries in the same order: they wait for each
//!   other instead of deadlocking.

use rust_decimal::Decimal;

use super::group_commit::Flush;
use super::outbox::NewEvent;
use super::{StorageError, together_or_each_alone};
use crate::domain::{Order, OrderStatus};
use crate::telemetry::metrics;

/// An order to insert, with its client's idempotency key and its event.
#[derive(Debug)]
pub struct NewRow {
    pub order: Order,
    pub idempotency_key: Option<String>,
    pub event: NewEvent,
}

/// What became of a [`NewRow`].
#[derive(Debug)]
pub enum Created {
    /// Written: the order as stored.
    Inserted(Order),
    /// Not written: the client already used the key (maybe in the same batch).
    KeyUsed,
}

/// Writes [`NewRow`]s on `pool`.
pub struct InsertOrders {
    pub pool: sqlx::PgPool,
}

impl Flush for InsertOrders {
    type Write = NewRow;
    type Outcome = Result<Created, StorageError>;

    #[tracing::instrument(name = "insert orders", skip_all, fields(orders = batch.len()))]
    async fn flush(&self, batch: Vec<NewRow>) -> Vec<Self::Outcome> {
        metrics::storage_batch(metrics::StorageWrite::Create, batch.len());
        let inserted = together_or_each_alone(&batch, |rows| async move {
            let ids = insert(&self.pool, rows).await?;
            Ok(rows.iter().map(|row| ids.contains(&row.order.id.get())).collect())
        })
        .await;
        batch
            .into_iter()
            .zip(inserted)
            .map(|(row, inserted)| {
                inserted.map(|inserted| match inserted {
                    true => Created::Inserted(row.order),
                    false => Created::KeyUsed,
                })
            })
            .collect()
    }
}

/// Inserts the batch in one statement; the ids of the orders inserted.
async fn insert(pool: &sqlx::PgPool, batch: &[NewRow]) -> Result<Vec<i64>, sqlx::Error> {
    let mut orders = Columns::default();
    let mut items = ItemColumns::default();
    for row in batch {
        orders.push(row);
        for (position, item) in (0..).zip(&row.order.items) {
            items.order_id.push(row.order.id.get());
            items.position.push(position);
            items.sku_id.push(item.sku_id);
            items.quantity.push(item.quantity);
            items.price.push(item.price.amount());
        }
    }
    // Each part after the first joins `created`: an order skipped for its key writes nothing else.
    sqlx::query_scalar(
        "WITH input AS (
             SELECT * FROM UNNEST($1::bigint[], $2::bigint[], $3::text[], $4::numeric[], $5::text[],
                                  $6::timestamptz[], $7::uuid[], $8::bytea[], $9::text[])
                 AS input (id, client_id, currency_code, amount, idempotency_key, created_at, event_id,
                           payload, traceparent)),
         created AS (
             INSERT INTO orders (id, client_id, status, currency_code, amount, idempotency_key, version,
                                 created_at, updated_at)
             SELECT id, client_id, $10, currency_code, amount, idempotency_key, 1, created_at, created_at
             FROM input ORDER BY client_id, idempotency_key
             ON CONFLICT (client_id, idempotency_key) DO NOTHING
             RETURNING id),
         items AS (
             INSERT INTO order_items (order_id, position, sku_id, quantity, price)
             SELECT item.order_id, item.position, item.sku_id, item.quantity, item.price
             FROM UNNEST($11::bigint[], $12::int[], $13::bigint[], $14::int[], $15::numeric[])
                      AS item (order_id, position, sku_id, quantity, price)
             JOIN created ON created.id = item.order_id),
         version AS (
             INSERT INTO order_versions (order_id, version, status, changed_at)
             SELECT input.id, 1, $10, input.created_at FROM input JOIN created USING (id))
         INSERT INTO outbox (aggregate_id, event_id, payload, traceparent)
         SELECT input.id, input.event_id, input.payload, input.traceparent
         FROM input JOIN created USING (id) ORDER BY input.id
         RETURNING aggregate_id",
    )
    .bind(&orders.id)
    .bind(&orders.client_id)
    .bind(&orders.currency_code)
    .bind(&orders.amount)
    .bind(&orders.idempotency_key)
    .bind(&orders.created_at)
    .bind(&orders.event_id)
    .bind(&orders.payload)
    .bind(&orders.traceparent)
    .bind(OrderStatus::Created.as_str())
    .bind(&items.order_id)
    .bind(&items.position)
    .bind(&items.sku_id)
    .bind(&items.quantity)
    .bind(&items.price)
    .fetch_all(pool)
    .await
}

/// The batch's orders as one array per column, the shape `UNNEST` takes.
#[derive(Default)]
struct Columns<'a> {
    id: Vec<i64>,
    client_id: Vec<i64>,
    currency_code: Vec<&'a str>,
    amount: Vec<Decimal>,
    idempotency_key: Vec<Option<&'a str>>,
    created_at: Vec<chrono::DateTime<chrono::Utc>>,
    event_id: Vec<uuid::Uuid>,
    payload: Vec<&'a [u8]>,
    traceparent: Vec<&'a str>,
}

impl<'a> Columns<'a> {
    fn push(&mut self, row: &'a NewRow) {
        let order = &row.order;
        self.id.push(order.id.get());
        self.client_id.push(order.client_id);
        self.currency_code.push(order.amount.currency().as_str());
        self.amount.push(order.amount.amount());
        self.idempotency_key.push(row.idempotency_key.as_deref());
        self.created_at.push(order.created_at);
        self.event_id.push(row.event.event_id);
        self.payload.push(&row.event.payload);
        self.traceparent.push(&row.event.traceparent);
    }
}

/// The items of every order of the batch, one array per column.
#[derive(Default)]
struct ItemColumns {
    order_id: Vec<i64>,
    position: Vec<i32>,
    sku_id: Vec<i64>,
    quantity: Vec<i32>,
    price: Vec<Decimal>,
}
