//! Numbers unique on a stack, whichever process asks: what tests name their databases, topics, groups
//! and order-id ranges after.
//!
//! With one process per test (cargo-nextest) and one stack shared by the whole run, a counter in the
//! process, or its pid, is not enough: pids repeat (`pid % 1000` did, across processes), and a stress
//! run starts the same test, with the same counter, many times on the same stack. A sequence in the
//! stack's own PostgreSQL is shared by all of them and never hands out a number twice.

use sqlx::Connection;

use super::error::Result;

/// The next number of the stack whose administrative database is `admin_url` (1, 2, 3, ...).
pub async fn next(admin_url: &str) -> Result<i64> {
    let mut connection = sqlx::PgConnection::connect(admin_url).await?;
    let mut transaction = connection.begin().await?;
    // Two sessions running `CREATE SEQUENCE IF NOT EXISTS` at once can both find it missing, and the
    // second then fails on the catalog's unique index: a transaction-scoped lock puts them in turn.
    sqlx::query("SELECT pg_advisory_xact_lock(7264001)")
        .execute(&mut *transaction)
        .await?;
    sqlx::query("CREATE SEQUENCE IF NOT EXISTS harness_unique_numbers")
        .execute(&mut *transaction)
        .await?;
    let number: i64 = sqlx::query_scalar("SELECT nextval('harness_unique_numbers')")
        .fetch_one(&mut *transaction)
        .await?;
    transaction.commit().await?;
    let _ = connection.close().await;
    Ok(number)
}
