//! Status changes written in batches: the [`Flush`] behind [`super::Storage::update_status`].
//!
//! A batch is one transaction: an `UPDATE` of every order whose status may become the one asked for (and
//! whose version is the expected one, when the request names one), returning the orders as changed; then
//! their versions and events, encoded here from those rows, in one `INSERT`; then the commit. Four round
//! trips for the batch, however many orders it changes.
//!
//! # Guarantees
//!
//! * Versions increase by exactly one per change, each with one event: the `UPDATE` holds every row it
//!   changed until the commit, and PostgreSQL re-checks the conditions on the latest row after waiting for
//!   a concurrent change's lock. Two changes of one order in one batch go in successive statements of
//!   its transaction, the second seeing the first.
//! * Rows are locked in the order of their ids, so two batches that share orders wait for each other
//!   instead of deadlocking.
//! * A change that does not apply (no such order, another version, a transition the state machine
//!   forbids) writes nothing and is answered `None`: the caller reads the order to tell which. One
//!   failing change does not fail the others: a batch whose transaction fails for another reason than an
//!   unreachable database is written again one change at a time.

use std::collections::HashSet;

use sqlx::PgConnection;

use super::group_commit::Flush;
use super::orders::{items_of_row, order_of_row};
use super::outbox::NewEvent;
use super::{StorageError, together_or_each_alone};
use crate::domain::{Order, OrderId, OrderStatus};
use crate::telemetry::metrics;
use crate::telemetry::trace_context::TraceParent;

/// A status change to make.
#[derive(Debug, Clone, Copy)]
pub struct Change {
    pub id: OrderId,
    pub to: OrderStatus,
    pub expected_version: Option<i64>,
    /// The request that asked for it: goes with the event.
    pub trace: TraceParent,
}

/// Writes [`Change`]s on `pool`: the order as changed, or `None` when the change did not apply.
pub struct ChangeStatuses {
    pub pool: sqlx::PgPool,
}

impl Flush for ChangeStatuses {
    type Write = Change;
    type Outcome = Result<Option<Order>, StorageError>;

    #[tracing::instrument(name = "change statuses", skip_all, fields(changes = batch.len()))]
    async fn flush(&self, batch: Vec<Change>) -> Vec<Self::Outcome> {
        metrics::storage_batch(metrics::StorageWrite::StatusChange, batch.len());
        together_or_each_alone(&batch, |changes| write(&self.pool, changes)).await
    }
}

/// Writes the batch in one transaction; for each change, the order as changed or `None`.
async fn write(pool: &sqlx::PgPool, batch: &[Change]) -> Result<Vec<Option<Order>>, StorageError> {
    let mut outcomes = vec![None; batch.len()];
    let mut transaction = pool.begin().await?;
    for round in rounds(batch) {
        let changes: Vec<Change> = round.iter().map(|&index| batch[index]).collect();
        let changed = update(&mut transaction, &changes).await?;
        record(&mut transaction, &changed, &changes).await?;
        for order in changed {
            let position = changes
                .iter()
                .position(|change| change.id == order.id)
                .ok_or_else(|| StorageError::Corrupt(format!("order {} changed unasked", order.id)))?;
            outcomes[round[position]] = Some(order);
        }
    }
    transaction.commit().await?;
    Ok(outcomes)
}

/// The batch's indexes split into rounds in which no order appears twice, in submission order: an
/// `UPDATE` changes a row at most once, so a second change of one order waits for the next statement.
fn rounds(batch: &[Change]) -> Vec<Vec<usize>> {
    let mut rounds: Vec<(HashSet<OrderId>, Vec<usize>)> = Vec::new();
    for (index, change) in batch.iter().enumerate() {
        // After the last round holding this order: a later change must see the earlier one.
        let after = rounds
            .iter()
            .rposition(|(ids, _)| ids.contains(&change.id))
            .map_or(0, |last| last + 1);
        match rounds.get_mut(after) {
            Some((ids, indexes)) => {
                ids.insert(change.id);
                indexes.push(index);
            }
            None => rounds.push((HashSet::from([change.id]), vec![index])),
        }
    }
    rounds.into_iter().map(|(_, indexes)| indexes).collect()
}

/// Applies the changes that may apply; the orders as changed, with their items.
async fn update(connection: &mut PgConnection, changes: &[Change]) -> Result<Vec<Order>, StorageError> {
    let ids: Vec<i64> = changes.iter().map(|change| change.id.get()).collect();
    let statuses: Vec<&str> = changes.iter().map(|change| change.to.as_str()).collect();
    let versions: Vec<Option<i64>> = changes.iter().map(|change| change.expected_version).collect();
    let (from, to): (Vec<&str>, Vec<&str>) = OrderStatus::ALL
        .into_iter()
        .flat_map(|from| OrderStatus::ALL.into_iter().map(move |to| (from, to)))
        .filter(|&(from, to)| from != to && from.can_become(to))
        .map(|(from, to)| (from.as_str(), to.as_str()))
        .unzip();
    let rows = sqlx::query(
        "WITH input AS (
             SELECT * FROM UNNEST($1::bigint[], $2::text[], $3::bigint[])
                 AS input (id, status, expected_version)),
         legal AS (
             SELECT * FROM UNNEST($4::text[], $5::text[]) AS legal (from_status, to_status)),
         locked AS MATERIALIZED (
             SELECT id FROM orders WHERE id = ANY($1) ORDER BY id FOR UPDATE),
         changed AS (
             UPDATE orders SET status = input.status, version = orders.version + 1,
                               updated_at = clock_timestamp()
             FROM input JOIN locked USING (id)
             WHERE orders.id = input.id
               AND (input.expected_version IS NULL OR orders.version = input.expected_version)
               AND EXISTS (SELECT FROM legal
                           WHERE legal.from_status = orders.status AND legal.to_status = input.status)
             RETURNING orders.id, orders.client_id, orders.status, orders.currency_code, orders.amount,
                       orders.version, orders.created_at, orders.updated_at)
         SELECT changed.*, items.skus, items.quantities, items.prices
         FROM changed,
              -- One scan of the order's items for all three arrays.
              LATERAL (SELECT coalesce(array_agg(sku_id ORDER BY position), '{}') AS skus,
                              coalesce(array_agg(quantity ORDER BY position), '{}') AS quantities,
                              coalesce(array_agg(price ORDER BY position), '{}') AS prices
                       FROM order_items WHERE order_id = changed.id) AS items",
    )
    .bind(&ids)
    .bind(&statuses)
    .bind(&versions)
    .bind(&from)
    .bind(&to)
    .fetch_all(&mut *connection)
    .await?;
    rows.iter()
        .map(|row| {
            let mut order = order_of_row(row)?;
            order.items = items_of_row(row, order.amount.currency())?;
            Ok(order)
        })
        .collect()
}

/// Writes the version and the event of each changed order, in one statement.
async fn record(
    connection: &mut PgConnection,
    changed: &[Order],
    changes: &[Change],
) -> Result<(), StorageError> {
    if changed.is_empty() {
        return Ok(());
    }
    let mut ids = Vec::with_capacity(changed.len());
    let mut versions = Vec::with_capacity(changed.len());
    let mut statuses = Vec::with_capacity(changed.len());
    let mut times = Vec::with_capacity(changed.len());
    let mut events = Vec::with_capacity(changed.len());
    for order in changed {
        let trace = changes
            .iter()
            .find(|change| change.id == order.id)
            .map(|change| change.trace)
            .ok_or_else(|| StorageError::Corrupt(format!("order {} changed unasked", order.id)))?;
        ids.push(order.id.get());
        versions.push(order.version);
        statuses.push(order.status.as_str());
        times.push(order.updated_at);
        events.push(NewEvent::of(order, trace));
    }
    let event_ids: Vec<uuid::Uuid> = events.iter().map(|event| event.event_id).collect();
    let payloads: Vec<&[u8]> = events.iter().map(|event| event.payload.as_slice()).collect();
    let traceparents: Vec<&str> = events.iter().map(|event| event.traceparent.as_str()).collect();
    sqlx::query(
        "WITH input AS (
             SELECT * FROM UNNEST($1::bigint[], $2::bigint[], $3::text[], $4::timestamptz[], $5::uuid[],
                                  $6::bytea[], $7::text[])
                 AS input (order_id, version, status, changed_at, event_id, payload, traceparent)),
         version AS (
             INSERT INTO order_versions (order_id, version, status, changed_at)
             SELECT order_id, version, status, changed_at FROM input)
         INSERT INTO outbox (aggregate_id, event_id, payload, traceparent)
         SELECT order_id, event_id, payload, traceparent FROM input ORDER BY order_id",
    )
    .bind(&ids)
    .bind(&versions)
    .bind(&statuses)
    .bind(&times)
    .bind(&event_ids)
    .bind(&payloads)
    .bind(&traceparents)
    .execute(connection)
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(id: i64) -> Change {
        Change {
            id: OrderId::parse(id).expect("a valid id"),
            to: OrderStatus::Paid,
            expected_version: None,
            trace: TraceParent::root(),
        }
    }

    fn rounds_of(ids: &[i64]) -> Vec<Vec<usize>> {
        let batch: Vec<Change> = ids.iter().map(|&id| change(id)).collect();
        rounds(&batch)
    }

    #[test]
    fn distinct_orders_go_in_one_round() {
        assert_eq!(rounds_of(&[3, 1, 2]), [vec![0, 1, 2]]);
    }

    #[test]
    fn a_second_change_of_an_order_waits_for_the_next_round_in_submission_order() {
        assert_eq!(
            rounds_of(&[1, 2, 1, 3, 1, 2]),
            [vec![0, 1, 3], vec![2, 5], vec![4]]
        );
    }

    #[test]
    fn a_change_never_goes_before_an_earlier_change_of_its_order() {
        // 2 could fill the first round's gap, but it must follow its first change in round 1.
        assert_eq!(rounds_of(&[1, 2, 1, 2, 3]), [vec![0, 1, 4], vec![2, 3]]);
    }
}
