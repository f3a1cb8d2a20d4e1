//! PostgreSQL, the source of truth: orders, their versions, and the outbox, behind one pool.
//!
//! Writes go through group commit ([`group_commit`]): creates and status changes that arrive while
//! others are being written are written together, one statement for the lot (`creates.rs`,
//! `status_changes.rs`).
//!
//! Migrations are embedded in the binary (`service/migrations`) and applied at start-up; sqlx takes an
//! advisory lock while it migrates, so several instances starting at once are safe.

mod creates;
pub mod group_commit;
mod order_ids;
mod orders;
pub mod outbox;
mod status_changes;

use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, PgPool};

use self::creates::InsertOrders;
use self::group_commit::{GroupCommit, Limits, Refused};
use self::status_changes::ChangeStatuses;

pub use order_ids::BLOCK as ORDER_ID_BLOCK;
pub use orders::{CreateError, StatusChange, UpdateError};

/// How long a pooled connection may sit idle and still be handed out without a ping first. A connection
/// the server closed meanwhile (a restart, `idle_session_timeout`) is found by the ping and replaced; one
/// that breaks within this window fails its query, as it would between a ping and the query anyway.
/// HikariCP's `aliveBypassWindowMs` is the same idea (500 ms there).
pub const PING_AFTER_IDLE: Duration = Duration::from_secs(1);

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The database could not be reached (or did not answer in time): worth retrying.
    #[error("the database is unavailable")]
    Unavailable(#[source] Arc<sqlx::Error>),
    #[error("a database query failed")]
    Query(#[source] sqlx::Error),
    /// A row that breaks the domain's rules (it should be impossible: the schema's checks forbid it).
    #[error("corrupt row: {0}")]
    Corrupt(String),
    #[error("migration failed")]
    Migration(#[from] sqlx::migrate::MigrateError),
    /// The write was not carried out by a batch: refused, or its batch's flush failed to answer.
    #[error("write not flushed")]
    Flush(#[from] Refused),
}

impl From<sqlx::Error> for StorageError {
    fn from(error: sqlx::Error) -> Self {
        if is_unavailable(&error) {
            Self::Unavailable(Arc::new(error))
        } else {
            Self::Query(error)
        }
    }
}

/// Whether the error means "the database is not there right now" rather than "this query is wrong".
pub fn is_unavailable(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        // 57P01 admin_shutdown, 57P02 crash_shutdown, 57P03 cannot_connect_now: a restarting server.
        sqlx::Error::Database(db) => db.code().is_some_and(|code| code.starts_with("57P")),
        _ => false,
    }
}

/// Writes a batch with `write`, which writes a slice of writes at once and answers for each: if that
/// fails because the database cannot be reached, every write gets that error (another try would only
/// wait for the same outage); if it fails for another reason, some write broke the statement, and each is
/// written again alone, so that only the one that broke it fails.
async fn together_or_each_alone<'a, W, T, Written>(
    batch: &'a [W],
    write: impl Fn(&'a [W]) -> Written,
) -> Vec<Result<T, StorageError>>
where
    Written: std::future::Future<Output = Result<Vec<T>, StorageError>>,
{
    match write(batch).await {
        Ok(written) => written.into_iter().map(Ok).collect(),
        Err(StorageError::Unavailable(error)) => batch
            .iter()
            .map(|_| Err(StorageError::Unavailable(Arc::clone(&error))))
            .collect(),
        Err(_) if batch.len() > 1 => {
            let mut outcomes = Vec::with_capacity(batch.len());
            for alone in batch.chunks(1) {
                outcomes.push(write(alone).await.and_then(|mut written| {
                    written
                        .pop()
                        .ok_or_else(|| StorageError::Corrupt("a write alone got no outcome".into()))
                }));
            }
            outcomes
        }
        Err(error) => vec![Err(error)],
    }
}

/// How many batches of each kind of write (creates, status changes) are written at once: one per this
/// many of the pool's connections, 2 of each with the default 16. Fewer flushes make bigger batches, and
/// a batch costs the database about what one write did: with 16 calls in flight (ghz, quick runs of the
/// ghz steps of `loadtest/write-path.sh`, 2 cores), `UpdateOrderStatus` reached 0.70x pgbench's TPC-B-like
/// rate with 4 flushes, 0.72-0.89x with 2 and 0.79x with 1. Two keep a second batch going while one
/// waits on a lock or a commit. Measured again for creates (2026-11-30, two interleaved passes of 15 s
/// ghz runs): pools of 8, 16, 24 and 32 connections made 2,688-3,071, 3,093-3,137, 2,998-3,173 and
/// 2,769-2,825 creates/s.
const CONNECTIONS_PER_FLUSH: u32 = 8;

/// The group commit of each kind of write with a pool of `max_connections`: [`CONNECTIONS_PER_FLUSH`]
/// decides the flushes; the batch and the queue are bounds of memory and of a statement's size, far
/// above what admission control lets in (`MAX_CONCURRENT_REQUESTS`).
fn write_limits(max_connections: u32) -> Limits {
    Limits {
        flushes: (max_connections / CONNECTIONS_PER_FLUSH).max(1) as usize,
        max_batch: 64,
        max_queued: 4096,
    }
}

/// `url`'s options, with PostgreSQL told to plan each of the service's statements once per connection.
///
/// By default PostgreSQL plans a prepared statement anew on each execution (a "custom" plan for the
/// parameters given) unless its one generic plan looks no costlier, and for the batched writes it does
/// not: a profile of `UpdateOrderStatus` under load showed the server parsing column defaults and costing
/// joins (`stringToNode`, `add_paths_to_joinrel`) on every call. The service's statements are all
/// lookups by key or writes of whole batches, for which one generic plan is the right plan.
fn connect_options(url: &str) -> Result<PgConnectOptions, StorageError> {
    Ok(url
        .parse::<PgConnectOptions>()?
        .options([("plan_cache_mode", "force_generic_plan")]))
}

#[derive(Clone, Debug)]
pub struct Storage {
    pool: PgPool,
    order_ids: Arc<order_ids::OrderIds>,
    creates: GroupCommit<InsertOrders>,
    status_changes: GroupCommit<ChangeStatuses>,
}

impl Storage {
    /// A lazily connecting pool: the service starts (and reports itself not ready) while the database is
    /// down, and callers get `Unavailable` within `acquire_timeout` instead of hanging.
    ///
    /// A connection idle for longer than [`PING_AFTER_IDLE`] is pinged before it is handed out; one in
    /// steady use is not (sqlx's default pings on every acquire: a round trip per query).
    pub fn connect_lazy(url: &str, max_connections: u32) -> Result<Self, StorageError> {
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(Duration::from_secs(3))
            .test_before_acquire(false)
            .before_acquire(|connection, meta| {
                Box::pin(async move {
                    if meta.idle_for > PING_AFTER_IDLE {
                        connection.ping().await?;
                    }
                    Ok(true)
                })
            })
            .connect_lazy_with(connect_options(url)?);
        let limits = write_limits(max_connections);
        Ok(Self {
            creates: GroupCommit::new(InsertOrders { pool: pool.clone() }, limits),
            status_changes: GroupCommit::new(ChangeStatuses { pool: pool.clone() }, limits),
            order_ids: Default::default(),
            pool,
        })
    }

    pub async fn migrate(&self) -> Result<(), StorageError> {
        MIGRATOR.run(&self.pool).await?;
        Ok(())
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// A round trip, for health checks.
    pub async fn ping(&self) -> Result<(), StorageError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }
}
