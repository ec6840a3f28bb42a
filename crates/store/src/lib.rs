//! PostgreSQL storage shared by the three tiers: every tier keeps the registry and the case log of
//! its scope in its own database, with the same schema.

use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};

/// The schema, embedded in every binary.
pub static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// Opens a pool and brings the schema up to date.
pub async fn connect(options: PgConnectOptions, max_connections: u32) -> Result<PgPool, sqlx::Error> {
    let pool = PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(std::time::Duration::from_secs(10))
        .connect_with(options)
        .await?;
    MIGRATOR.run(&pool).await?;
    Ok(pool)
}
