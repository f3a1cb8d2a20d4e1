//! PostgreSQL, the source of truth: orders, their versions, and the outbox, behind one pool.
//!
//! Migrations are embedded in the binary (`service/migrations`) and applied at start-up; sqlx takes an
//! advisory lock while it migrates, so several instances starting at once are safe.

mod orders;
pub mod outbox;

use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;

pub use orders::{CreateError, StatusChange, UpdateError};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The database could not be reached (or did not answer in time): worth retrying.
    #[error("the database is unavailable")]
    Unavailable(#[source] sqlx::Error),
    #[error("a database query failed")]
    Query(#[source] sqlx::Error),
    /// A row that breaks the domain's rules (it should be impossible: the schema's checks forbid it).
    #[error("corrupt row: {0}")]
    Corrupt(String),
    #[error("migration failed")]
    Migration(#[from] sqlx::migrate::MigrateError),
}

impl From<sqlx::Error> for StorageError {
    fn from(error: sqlx::Error) -> Self {
        if is_unavailable(&error) {
            Self::Unavailable(error)
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

#[derive(Clone, Debug)]
pub struct Storage {
    pool: PgPool,
}

impl Storage {
    /// A lazily connecting pool: the service starts (and reports itself not ready) while the database is
    /// down, and callers get `Unavailable` within `acquire_timeout` instead of hanging.
    pub fn connect_lazy(url: &str, max_connections: u32) -> Result<Self, StorageError> {
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(Duration::from_secs(3))
            .connect_lazy(url)?;
        Ok(Self { pool })
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
