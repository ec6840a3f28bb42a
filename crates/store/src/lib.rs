//! PostgreSQL storage shared by the three tiers: every tier keeps the registry and the case log of
//! its scope in its own database, with the same schema (`migrations/`).

pub mod cases;
pub mod outbox;
pub mod registry;
pub mod replication;
pub mod sync;

use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};

pub use sqlx::{PgConnection, Postgres, Transaction};

/// The schema, embedded in every binary.
pub static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// Storage failures.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    #[error("stored {what} does not decode: {source}")]
    Corrupt {
        what: &'static str,
        source: prost::DecodeError,
    },
}

impl Error {
    /// The SQLSTATE of a database error, if any (23505 is a unique violation).
    pub fn sqlstate(&self) -> Option<String> {
        match self {
            Error::Database(sqlx::Error::Database(db)) => db.code().map(|c| c.into_owned()),
            _ => None,
        }
    }

    /// True when the database could not be reached (worth retrying, UNAVAILABLE to callers).
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            Error::Database(
                sqlx::Error::Io(_)
                    | sqlx::Error::PoolTimedOut
                    | sqlx::Error::PoolClosed
                    | sqlx::Error::WorkerCrashed
            )
        )
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Opens a pool and brings the schema up to date.
pub async fn connect(options: PgConnectOptions, max_connections: u32) -> Result<PgPool> {
    let pool = PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(std::time::Duration::from_secs(10))
        .connect_with(options)
        .await?;
    MIGRATOR.run(&pool).await.map_err(sqlx::Error::from)?;
    Ok(pool)
}
