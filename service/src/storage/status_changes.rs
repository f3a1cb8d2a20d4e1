//! Status changes written in batches: the [`Flush`] behind [`super::Storage::update_status`].
//!
//! A batch is one statement: an `UPDATE` of every order whose status may become the one asked for (and
//! whose version is the expected one, when the request names one), with, for each order it changed, the
//! new version's row and the event's outbox row; it returns the orders as changed. It is atomic on its
//! own, so no transaction is opened or committed around it: one round trip for the batch, however many
//! orders it changes. The event's outbox row names the version it announces and the relay encodes the
//! event from it when it publishes (`outbox.rs`): encoding it here would need the updated row first, and
//! a transaction of four round trips around the two statements (`BEGIN`, update, events, `COMMIT`).
//!
//! # Guarantees
//!
//! * Versions increase by exactly one per change, each with one event: the `UPDATE` holds every row it
//!   changed until the statement commits, and PostgreSQL re-checks the conditions on the latest row
//!   after waiting for a concurrent change's lock. Two changes of one order in one batch go in
//!   successive statements of one transaction, the second seeing the first.
//! * Rows are locked in the order of their ids, so two batches that share orders wait for each other
//!   instead of deadlocking.
//! * A change that does not apply (no such order, another version, a transition the state machine
//!   forbids) writes nothing and is answered `None`: the caller reads the order to tell which. One
//!   failing change does not fail the others: a batch whose statement fails for another reason than an
//!   unreachable database is written again one change at a time.

use std::collections::HashSet;

use super::group_commit::Flush;
use super::orders::{items_of_row, order_of_row};
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

/// Writes the batch; for each change, the order as changed or `None`. A batch that changes an order twice
/// takes a statement per round in one transaction, any other one statement alone.
async fn write(pool: &sqlx::PgPool, batch: &[Change]) -> Result<Vec<Option<Order>>, StorageError> {
    let mut outcomes = vec![None; batch.len()];
    let rounds = rounds(batch);
    if let [round] = rounds.as_slice() {
        let changed = change(pool, batch).await?;
        place(&mut outcomes, round, batch, changed)?;
        return Ok(outcomes);
    }
    let mut transaction = pool.begin().await?;
    for round in &rounds {
        let changes: Vec<Change> = round.iter().map(|&index| batch[index]).collect();
        let changed = change(&mut *transaction, &changes).await?;
        place(&mut outcomes, round, &changes, changed)?;
    }
    transaction.commit().await?;
    Ok(outcomes)
}

/// Puts each order `changed` by a round's `changes` (the batch's changes at the indexes `round`) in
/// `outcomes`, at its change's index in the batch.
fn place(
    outcomes: &mut [Option<Order>],
    round: &[usize],
    changes: &[Change],
    changed: Vec<Order>,
) -> Result<(), StorageError> {
    for order in changed {
        let position = changes
            .iter()
            .position(|change| change.id == order.id)
            .ok_or_else(|| StorageError::Corrupt(format!("order {} changed unasked", order.id)))?;
        outcomes[round[position]] = Some(order);
    }
    Ok(())
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

/// Applies the changes that may apply, each with its version and its event's outbox row, in one
/// statement (no order twice); the orders as changed, with their items.
async fn change<'c>(
    executor: impl sqlx::PgExecutor<'c>,
    changes: &[Change],
) -> Result<Vec<Order>, StorageError> {
    let ids: Vec<i64> = changes.iter().map(|change| change.id.get()).collect();
    let statuses: Vec<&str> = changes.iter().map(|change| change.to.as_str()).collect();
    let versions: Vec<Option<i64>> = changes.iter().map(|change| change.expected_version).collect();
    let event_ids: Vec<uuid::Uuid> = changes.iter().map(|_| uuid::Uuid::now_v7()).collect();
    let traceparents: Vec<String> = changes.iter().map(|change| change.trace.to_string()).collect();
    let (from, to): (Vec<&str>, Vec<&str>) = OrderStatus::ALL
        .into_iter()
        .flat_map(|from| OrderStatus::ALL.into_iter().map(move |to| (from, to)))
        .filter(|&(from, to)| from != to && from.can_become(to))
        .map(|(from, to)| (from.as_str(), to.as_str()))
        .unzip();
    let rows = sqlx::query(
        "WITH input AS (
             SELECT * FROM UNNEST($1::bigint[], $2::text[], $3::bigint[], $4::uuid[], $5::text[])
                 AS input (id, status, expected_version, event_id, traceparent)),
         legal AS (
             SELECT * FROM UNNEST($6::text[], $7::text[]) AS legal (from_status, to_status)),
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
                       orders.version, orders.created_at, orders.updated_at),
         version AS (
             INSERT INTO order_versions (order_id, version, status, changed_at)
             SELECT id, version, status, updated_at FROM changed),
         event AS (
             -- No payload: the relay encodes the event of this version when it publishes it.
             INSERT INTO outbox (aggregate_id, event_id, version, traceparent)
             SELECT changed.id, input.event_id, changed.version, input.traceparent
             FROM changed JOIN input USING (id) ORDER BY changed.id)
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
    .bind(&event_ids)
    .bind(&traceparents)
    .bind(&from)
    .bind(&to)
    .fetch_all(executor)
    .await?;
    rows.iter()
        .map(|row| {
            let mut order = order_of_row(row)?;
            order.items = items_of_row(row, order.amount.currency())?;
            Ok(order)
        })
        .collect()
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
