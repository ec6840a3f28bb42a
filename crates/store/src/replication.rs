//! The receiving side of replication: the inbox of applied event ids, events parked until their
//! predecessor arrives, and dead letters.

use std::time::Duration;

use sqlx::{FromRow, PgConnection, PgPool};
use uuid::Uuid;

use crate::Result;

/// Claims an event id in the inbox; false when it was applied before.
pub async fn claim_inbox(conn: &mut PgConnection, event_id: Uuid) -> Result<bool> {
    let done = sqlx::query("INSERT INTO inbox (event_id) VALUES ($1) ON CONFLICT DO NOTHING")
        .bind(event_id)
        .execute(conn)
        .await?;
    Ok(done.rows_affected() == 1)
}

/// Claims event ids in the inbox; returns how many were new (the others were applied before).
pub async fn claim_inbox_many(conn: &mut PgConnection, event_ids: &[Uuid]) -> Result<u64> {
    let done = sqlx::query(
        "INSERT INTO inbox (event_id) SELECT unnest($1::uuid[]) ON CONFLICT DO NOTHING",
    )
    .bind(event_ids)
    .execute(conn)
    .await?;
    Ok(done.rows_affected())
}

/// Where this tier holds the events with these ids, by id: the case and the place in it.
pub async fn held_where(
    conn: &mut PgConnection,
    event_ids: &[Uuid],
) -> Result<std::collections::HashMap<Uuid, (Uuid, i64)>> {
    let rows: Vec<(Uuid, Uuid, i64)> =
        sqlx::query_as("SELECT event_id, case_id, seq FROM case_events WHERE event_id = ANY($1)")
            .bind(event_ids)
            .fetch_all(conn)
            .await?;
    Ok(rows
        .into_iter()
        .map(|(event_id, case_id, seq)| (event_id, (case_id, seq)))
        .collect())
}

/// Removes inbox entries applied more than `older_than` ago; returns how many.
pub async fn prune_inbox(pool: &PgPool, older_than: Duration) -> Result<u64> {
    let done =
        sqlx::query("DELETE FROM inbox WHERE applied_at < now() - make_interval(secs => $1)")
            .bind(older_than.as_secs_f64())
            .execute(pool)
            .await?;
    Ok(done.rows_affected())
}

/// An event waiting for its predecessor.
#[derive(Debug, Clone, FromRow)]
pub struct Parked {
    pub event_id: Uuid,
    pub case_id: Uuid,
    pub seq: i64,
    pub author_tier: String,
    pub subject: String,
    /// The envelope as it arrived.
    pub body: Vec<u8>,
}

/// Parks an event until its predecessor is here; a second copy changes nothing.
pub async fn park(conn: &mut PgConnection, event: &Parked) -> Result<()> {
    sqlx::query(
        "INSERT INTO parked_events (event_id, case_id, seq, author_tier, subject, body)
         VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
    )
    .bind(event.event_id)
    .bind(event.case_id)
    .bind(event.seq)
    .bind(&event.author_tier)
    .bind(&event.subject)
    .bind(&event.body)
    .execute(conn)
    .await?;
    Ok(())
}

/// Takes the parked event `seq` of a case out of the park, if there is one.
pub async fn unpark(conn: &mut PgConnection, case_id: Uuid, seq: u64) -> Result<Option<Parked>> {
    Ok(sqlx::query_as(
        "DELETE FROM parked_events WHERE case_id = $1 AND seq = $2
         RETURNING event_id, case_id, seq, author_tier, subject, body",
    )
    .bind(case_id)
    .bind(seq as i64)
    .fetch_optional(conn)
    .await?)
}

/// A case with parked events, and where it stands.
#[derive(Debug, Clone, FromRow)]
pub struct ParkedCase {
    pub case_id: Uuid,
    /// The version held here (0 when the case itself has not arrived).
    pub have: i64,
    /// The lowest parked sequence.
    pub waiting: i64,
    pub author_tier: String,
    /// The subject of the lowest parked event (it names the grid).
    pub subject: String,
    pub parked_seconds: f64,
}

/// Cases with parked events, longest waiting first.
pub async fn parked_cases(pool: &PgPool, limit: i64) -> Result<Vec<ParkedCase>> {
    Ok(sqlx::query_as(
        "SELECT * FROM (
            SELECT DISTINCT ON (p.case_id) p.case_id, COALESCE(c.version, 0) AS have, p.seq AS waiting,
                   p.author_tier, p.subject,
                   EXTRACT(EPOCH FROM now() - p.parked_at)::float8 AS parked_seconds
            FROM parked_events p LEFT JOIN cases c ON c.id = p.case_id
            ORDER BY p.case_id, p.seq
         ) waiting ORDER BY parked_seconds DESC LIMIT $1",
    )
    .bind(limit)
    .fetch_all(pool)
    .await?)
}

/// How many events and cases are parked, and how long the oldest has waited.
#[derive(Debug, Clone, Default, FromRow)]
pub struct ParkedTotals {
    pub events: i64,
    pub cases: i64,
    pub oldest_seconds: f64,
}

pub async fn parked_totals(pool: &PgPool) -> Result<ParkedTotals> {
    Ok(sqlx::query_as(
        "SELECT count(*) AS events, count(DISTINCT case_id) AS cases,
                COALESCE(EXTRACT(EPOCH FROM now() - min(parked_at))::float8, 0) AS oldest_seconds
         FROM parked_events",
    )
    .fetch_one(pool)
    .await?)
}

/// Parked events whose predecessor has arrived meanwhile (applied by another instance, or by a
/// repair): the next event of their case, ready to apply.
pub async fn ready(pool: &PgPool, limit: i64) -> Result<Vec<Uuid>> {
    Ok(sqlx::query_scalar(
        "SELECT p.case_id FROM parked_events p JOIN cases c ON c.id = p.case_id
         WHERE p.seq = c.version + 1 LIMIT $1",
    )
    .bind(limit)
    .fetch_all(pool)
    .await?)
}

/// Parked events the case has already passed (they arrived again another way); removed and
/// returned, so the caller can tell whether they were the events it holds.
pub async fn remove_passed(conn: &mut PgConnection) -> Result<Vec<Parked>> {
    Ok(sqlx::query_as(
        "DELETE FROM parked_events p USING cases c
         WHERE c.id = p.case_id AND p.seq <= c.version
         RETURNING p.event_id, p.case_id, p.seq, p.author_tier, p.subject, p.body",
    )
    .fetch_all(conn)
    .await?)
}

/// Parked events older than `older_than`: their predecessor never came. Removed and returned.
pub async fn expire_parked(conn: &mut PgConnection, older_than: Duration) -> Result<Vec<Parked>> {
    Ok(sqlx::query_as(
        "DELETE FROM parked_events WHERE parked_at < now() - make_interval(secs => $1)
         RETURNING event_id, case_id, seq, author_tier, subject, body",
    )
    .bind(older_than.as_secs_f64())
    .fetch_all(conn)
    .await?)
}

/// Whether the event this tier holds at `seq` of a case is `event_id`.
pub async fn holds(
    conn: &mut PgConnection,
    case_id: Uuid,
    seq: i64,
    event_id: Uuid,
) -> Result<bool> {
    Ok(sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM case_events WHERE case_id = $1 AND seq = $2 AND event_id = $3)",
    )
    .bind(case_id)
    .bind(seq)
    .bind(event_id)
    .fetch_one(conn)
    .await?)
}

/// Keeps a message that cannot be applied, with the reason; the same event is kept once.
pub async fn dead_letter(
    conn: &mut PgConnection,
    subject: &str,
    body: &[u8],
    event_id: Option<Uuid>,
    case_id: Option<Uuid>,
    error: &str,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO dead_letters (direction, subject, body, event_id, case_id, error)
         VALUES ('incoming', $1, $2, $3, $4, $5)
         ON CONFLICT (direction, event_id) WHERE event_id IS NOT NULL DO NOTHING",
    )
    .bind(subject)
    .bind(body)
    .bind(event_id)
    .bind(case_id)
    .bind(error)
    .execute(conn)
    .await?;
    Ok(())
}

/// Dead letters kept here, incoming and outgoing.
#[derive(Debug, Clone, Default, FromRow)]
pub struct DeadLetterCounts {
    pub incoming: i64,
    pub outgoing: i64,
}

pub async fn dead_letter_counts(pool: &PgPool) -> Result<DeadLetterCounts> {
    Ok(sqlx::query_as(
        "SELECT count(*) FILTER (WHERE direction = 'incoming') AS incoming,
                count(*) FILTER (WHERE direction = 'outgoing') AS outgoing
         FROM dead_letters",
    )
    .fetch_one(pool)
    .await?)
}

/// Whether any event of the case is parked.
pub async fn has_parked(conn: &mut PgConnection, case_id: Uuid) -> Result<bool> {
    Ok(
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM parked_events WHERE case_id = $1)")
            .bind(case_id)
            .fetch_one(conn)
            .await?,
    )
}

/// Every case with a parked event.
pub async fn parked_case_ids(pool: &PgPool) -> Result<Vec<Uuid>> {
    Ok(
        sqlx::query_scalar("SELECT DISTINCT case_id FROM parked_events")
            .fetch_all(pool)
            .await?,
    )
}
