//! The outbox: events committed with their state change, waiting for the relay to publish them.

use sqlx::{PgConnection, Row};
use uuid::Uuid;

use crate::Result;

/// One message to publish.
#[derive(Debug, Clone)]
pub struct Pending {
    pub event_id: Uuid,
    pub subject: String,
    pub body: Vec<u8>,
}

/// Queues a message in the caller's transaction.
pub async fn enqueue(
    conn: &mut PgConnection,
    event_id: Uuid,
    subject: &str,
    body: &[u8],
) -> Result<()> {
    sqlx::query("INSERT INTO outbox (event_id, subject, body) VALUES ($1, $2, $3)")
        .bind(event_id)
        .bind(subject)
        .bind(body)
        .execute(conn)
        .await?;
    Ok(())
}

/// The oldest pending messages, locked so a second relay skips them.
pub async fn claim(conn: &mut PgConnection, limit: i64) -> Result<Vec<Pending>> {
    let rows = sqlx::query(
        "SELECT event_id, subject, body FROM outbox ORDER BY created_at, event_id LIMIT $1 FOR UPDATE SKIP LOCKED",
    )
    .bind(limit)
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| Pending {
            event_id: r.get(0),
            subject: r.get(1),
            body: r.get(2),
        })
        .collect())
}

/// Removes published messages.
pub async fn remove(conn: &mut PgConnection, ids: &[Uuid]) -> Result<()> {
    sqlx::query("DELETE FROM outbox WHERE event_id = ANY($1)")
        .bind(ids)
        .execute(conn)
        .await?;
    Ok(())
}

/// How many messages wait, and the age in seconds of the oldest.
pub async fn depth(conn: &mut PgConnection) -> Result<(i64, f64)> {
    let row = sqlx::query(
        "SELECT count(*), COALESCE(EXTRACT(EPOCH FROM clock_timestamp() - min(created_at))::float8, 0) FROM outbox",
    )
    .fetch_one(conn)
    .await?;
    Ok((row.get(0), row.get(1)))
}
