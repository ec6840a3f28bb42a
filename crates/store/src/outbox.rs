//! The outbox: events committed with their state change, waiting until every peer tier confirmed
//! that it holds them.
//!
//! A row goes through two phases. Unpublished, the relay sends it to JetStream (and retries, with a
//! bound on failures that are its own fault). Published, it waits for the peers' confirmations;
//! the relay checks on it now and then and sends it again if the stream no longer holds it. It
//! leaves only when the last peer confirmed, never on JetStream's acknowledgement alone.
//!
//! The table is a queue: nearly empty while the peers keep up, tens of thousands of rows while one
//! is away. The relay's and the receipts' statements (one per round or batch, not per report) are
//! therefore planned with the table as it is each time (`persistent(false)`): a prepared statement
//! settles on a generic plan after a few runs and keeps it for the connection's life, and one made
//! while the outbox was empty scans it whole, per statement, once it holds a backlog (the village's
//! PostgreSQL spent 9 ms a round on that during `wangge bench`'s backlog).

use std::time::Duration;

use sqlx::{FromRow, PgConnection, PgPool};
use uuid::Uuid;

use crate::Result;

/// One event to deliver.
#[derive(Debug, Clone, FromRow)]
pub struct Pending {
    pub event_id: Uuid,
    pub subject: String,
    pub body: Vec<u8>,
    /// How often it was sent before (its message ids differ per send).
    pub sends: i32,
    pub failures: i32,
    pub checks: i32,
    pub stream_seq: Option<i64>,
    pub stream_created: Option<i64>,
    pub created_at: chrono::DateTime<chrono::Utc>,
}

/// Queues an event in the caller's transaction, to be confirmed by `peers` (tier names).
pub async fn enqueue(
    conn: &mut PgConnection,
    event_id: Uuid,
    case_id: Uuid,
    seq: u64,
    subject: &str,
    body: &[u8],
    peers: &[&str],
) -> Result<()> {
    sqlx::query(
        "INSERT INTO outbox (event_id, case_id, seq, subject, body, pending_tiers)
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(event_id)
    .bind(case_id)
    .bind(seq as i64)
    .bind(subject)
    .bind(body)
    .bind(peers)
    .execute(conn)
    .await?;
    Ok(())
}

const COLUMNS: &str =
    "event_id, subject, body, sends, failures, checks, stream_seq, stream_created, created_at";

/// The newest `limit` unpublished events that are due, locked so a second relay skips them, oldest
/// first: the live rows of a round, which never wait behind a backlog.
pub async fn claim_newest(conn: &mut PgConnection, limit: i64) -> Result<Vec<Pending>> {
    Ok(sqlx::query_as(&format!(
        "SELECT * FROM (
            SELECT {COLUMNS} FROM outbox
            WHERE published_at IS NULL AND next_attempt_at <= clock_timestamp()
            ORDER BY created_at DESC, event_id DESC LIMIT $1 FOR UPDATE SKIP LOCKED
         ) live ORDER BY created_at, event_id"
    ))
    .bind(limit)
    .persistent(false)
    .fetch_all(conn)
    .await?)
}

/// The oldest `limit` unpublished events that are due, other than `taken`, locked: the backlog.
pub async fn claim_oldest(
    conn: &mut PgConnection,
    taken: &[Uuid],
    limit: i64,
) -> Result<Vec<Pending>> {
    if limit <= 0 {
        return Ok(Vec::new());
    }
    Ok(sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM outbox
         WHERE published_at IS NULL AND next_attempt_at <= clock_timestamp()
           AND NOT (event_id = ANY($1))
         ORDER BY created_at, event_id LIMIT $2 FOR UPDATE SKIP LOCKED"
    ))
    .bind(taken)
    .bind(limit)
    .persistent(false)
    .fetch_all(conn)
    .await?)
}

/// How many events were published within `within` and not yet confirmed by any of their `peers`
/// (counted up to `cap`): what is on its way right now. One peer confirming is enough to leave the
/// count, so a peer that is down does not hold the others back.
pub async fn in_flight(
    conn: &mut PgConnection,
    within: Duration,
    peers: usize,
    cap: i64,
) -> Result<i64> {
    Ok(sqlx::query_scalar(
        "SELECT count(*) FROM (
            SELECT 1 FROM outbox
            WHERE published_at > clock_timestamp() - make_interval(secs => $1)
              AND cardinality(pending_tiers) >= $2
            LIMIT $3
         ) recent",
    )
    .bind(within.as_secs_f64())
    .bind(peers.max(1) as i32)
    .bind(cap)
    .persistent(false)
    .fetch_one(conn)
    .await?)
}

/// Published events still awaiting a confirmation whose check is due, locked.
pub async fn claim_unconfirmed(conn: &mut PgConnection, limit: i64) -> Result<Vec<Pending>> {
    Ok(sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM outbox
         WHERE published_at IS NOT NULL AND next_attempt_at <= clock_timestamp()
         ORDER BY next_attempt_at LIMIT $1 FOR UPDATE SKIP LOCKED"
    ))
    .bind(limit)
    .persistent(false)
    .fetch_all(conn)
    .await?)
}

/// Where JetStream stored one send.
#[derive(Debug, Clone, Copy)]
pub struct Stored {
    pub event_id: Uuid,
    pub stream_seq: u64,
    /// The stream's creation time in unix nanoseconds: a stream made anew is another stream.
    pub stream_created: i64,
}

/// Records sends JetStream acknowledged; the first check on their confirmation is due after
/// `confirm_within`. Rows nobody needs to confirm leave at once.
pub async fn published(
    conn: &mut PgConnection,
    stored: &[Stored],
    confirm_within: Duration,
) -> Result<()> {
    if stored.is_empty() {
        return Ok(());
    }
    let ids: Vec<Uuid> = stored.iter().map(|s| s.event_id).collect();
    let seqs: Vec<i64> = stored.iter().map(|s| s.stream_seq as i64).collect();
    let created: Vec<i64> = stored.iter().map(|s| s.stream_created).collect();
    sqlx::query(
        "UPDATE outbox o SET published_at = clock_timestamp(), stream_seq = s.seq,
                stream_created = s.created, sends = o.sends + 1, checks = 0, last_error = NULL,
                next_attempt_at = clock_timestamp() + make_interval(secs => $4)
         FROM UNNEST($1::uuid[], $2::bigint[], $3::bigint[]) AS s(id, seq, created)
         WHERE o.event_id = s.id",
    )
    .bind(&ids)
    .bind(&seqs)
    .bind(&created)
    .bind(confirm_within.as_secs_f64())
    .persistent(false)
    .execute(&mut *conn)
    .await?;
    sqlx::query("DELETE FROM outbox WHERE event_id = ANY($1) AND cardinality(pending_tiers) = 0")
        .bind(&ids)
        .persistent(false)
        .execute(conn)
        .await?;
    Ok(())
}

/// Puts off the next send of an event whose last send failed by its own fault (others got
/// through, so the event itself is the problem) by `delay`, counting the failure.
pub async fn failed_send(
    conn: &mut PgConnection,
    event_id: Uuid,
    delay: Duration,
    error: &str,
) -> Result<()> {
    sqlx::query(
        "UPDATE outbox SET next_attempt_at = clock_timestamp() + make_interval(secs => $2),
                last_error = $3, failures = failures + 1
         WHERE event_id = $1",
    )
    .bind(event_id)
    .bind(delay.as_secs_f64())
    .bind(error)
    .execute(conn)
    .await?;
    Ok(())
}

/// Puts off the next check of events found still on their way, each by its own delay.
pub async fn check_later(conn: &mut PgConnection, later: &[(Uuid, Duration)]) -> Result<()> {
    if later.is_empty() {
        return Ok(());
    }
    let ids: Vec<Uuid> = later.iter().map(|l| l.0).collect();
    let delays: Vec<f64> = later.iter().map(|l| l.1.as_secs_f64()).collect();
    sqlx::query(
        "UPDATE outbox o SET checks = o.checks + 1,
                next_attempt_at = clock_timestamp() + make_interval(secs => d.delay)
         FROM UNNEST($1::uuid[], $2::float8[]) AS d(id, delay)
         WHERE o.event_id = d.id",
    )
    .bind(&ids)
    .bind(&delays)
    .persistent(false)
    .execute(conn)
    .await?;
    Ok(())
}

/// Marks events to be sent again on the next round (the stream lost them).
pub async fn unpublish(conn: &mut PgConnection, ids: &[Uuid], reason: &str) -> Result<()> {
    sqlx::query(
        "UPDATE outbox SET published_at = NULL, next_attempt_at = clock_timestamp(), last_error = $2
         WHERE event_id = ANY($1)",
    )
    .bind(ids)
    .bind(reason)
    .persistent(false)
    .execute(conn)
    .await?;
    Ok(())
}

/// Sets an event that cannot travel aside: kept as an outgoing dead letter with the reason, and
/// out of the way of everything behind it.
pub async fn set_aside(conn: &mut PgConnection, event_id: Uuid, reason: &str) -> Result<()> {
    sqlx::query(
        "WITH gone AS (DELETE FROM outbox WHERE event_id = $1 RETURNING event_id, case_id, subject, body)
         INSERT INTO dead_letters (direction, event_id, case_id, subject, body, error)
         SELECT 'outgoing', event_id, case_id, subject, body, $2 FROM gone
         ON CONFLICT (direction, event_id) WHERE event_id IS NOT NULL DO NOTHING",
    )
    .bind(event_id)
    .bind(reason)
    .execute(conn)
    .await?;
    Ok(())
}

/// A peer tier confirmed it holds these events; returns how many rows left the outbox. Only rows
/// whose subject starts with `within` (the confirmed community's case subjects) are confirmed: a
/// peer may confirm only for the scope its receipt's subject names.
///
/// One statement (the receipts of every report come here, twice): a row this confirmation
/// leaves with no peer pending is deleted, if the relay has recorded its send, without being
/// updated first; the others lose `tier` from their pending peers. The rows are locked first, so a
/// concurrent receipt of the other peer or the relay's bookkeeping is seen as it committed.
pub async fn confirm(pool: &PgPool, tier: &str, within: &str, event_ids: &[Uuid]) -> Result<u64> {
    let gone: i64 = sqlx::query_scalar(
        "WITH confirmed AS (
            SELECT event_id, array_remove(pending_tiers, $2) AS pending,
                   published_at IS NOT NULL AS published
            FROM outbox
            WHERE event_id = ANY($1) AND ($2 = ANY(pending_tiers) OR cardinality(pending_tiers) = 0)
              AND starts_with(subject, $3)
            FOR UPDATE
         ), gone AS (
            DELETE FROM outbox o USING confirmed c
            WHERE o.event_id = c.event_id AND cardinality(c.pending) = 0 AND c.published
            RETURNING 1
         ), kept AS (
            UPDATE outbox o SET pending_tiers = c.pending FROM confirmed c
            WHERE o.event_id = c.event_id AND o.pending_tiers <> c.pending
              AND NOT (cardinality(c.pending) = 0 AND c.published)
         )
         SELECT count(*) FROM gone",
    )
    .bind(event_ids)
    .bind(tier)
    .bind(within)
    .persistent(false)
    .fetch_one(pool)
    .await?;
    Ok(gone.unsigned_abs())
}

/// A peer tier holds `case_id` up to `version`: every event of it up to there is confirmed by that
/// peer. Returns how many rows left the outbox.
pub async fn confirm_through(pool: &PgPool, tier: &str, marks: &[(Uuid, u64)]) -> Result<u64> {
    if marks.is_empty() {
        return Ok(0);
    }
    let cases: Vec<Uuid> = marks.iter().map(|m| m.0).collect();
    let versions: Vec<i64> = marks.iter().map(|m| m.1 as i64).collect();
    let mut tx = pool.begin().await?;
    sqlx::query(
        "UPDATE outbox o SET pending_tiers = array_remove(o.pending_tiers, $3)
         FROM UNNEST($1::uuid[], $2::bigint[]) AS m(case_id, version)
         WHERE o.case_id = m.case_id AND o.seq <= m.version AND $3 = ANY(o.pending_tiers)",
    )
    .bind(&cases)
    .bind(&versions)
    .bind(tier)
    .persistent(false)
    .execute(&mut *tx)
    .await?;
    let gone = remove_confirmed(&mut tx, "case_id = ANY($1)", &cases).await?;
    tx.commit().await?;
    Ok(gone)
}

async fn remove_confirmed(conn: &mut PgConnection, filter: &str, ids: &[Uuid]) -> Result<u64> {
    // Only published rows: a confirmation can overtake the relay's own bookkeeping of the send.
    let done = sqlx::query(&format!(
        "DELETE FROM outbox WHERE {filter} AND cardinality(pending_tiers) = 0 AND published_at IS NOT NULL"
    ))
    .bind(ids)
    .persistent(false)
    .execute(conn)
    .await?;
    Ok(done.rows_affected())
}

/// Published events that `tier` has not confirmed for longer than `older_than`, oldest first:
/// what reconciliation asks that tier about.
#[derive(Debug, Clone, FromRow)]
pub struct Unconfirmed {
    pub case_id: Uuid,
    pub subject: String,
}

pub async fn unconfirmed_by(
    pool: &PgPool,
    tier: &str,
    older_than: Duration,
    limit: i64,
) -> Result<Vec<Unconfirmed>> {
    Ok(sqlx::query_as(
        "SELECT DISTINCT ON (case_id) case_id, subject FROM outbox
         WHERE $1 = ANY(pending_tiers) AND case_id IS NOT NULL AND published_at IS NOT NULL
           AND created_at < clock_timestamp() - make_interval(secs => $2)
         ORDER BY case_id LIMIT $3",
    )
    .bind(tier)
    .bind(older_than.as_secs_f64())
    .bind(limit)
    .fetch_all(pool)
    .await?)
}

/// What the outbox holds, for the operator.
#[derive(Debug, Clone, Default, FromRow)]
pub struct Depth {
    pub events: i64,
    pub oldest_seconds: f64,
    pub unpublished: i64,
}

pub async fn depth(pool: &PgPool) -> Result<Depth> {
    Ok(sqlx::query_as(
        "SELECT count(*) AS events,
                COALESCE(EXTRACT(EPOCH FROM clock_timestamp() - min(created_at))::float8, 0) AS oldest_seconds,
                count(*) FILTER (WHERE published_at IS NULL) AS unpublished
         FROM outbox",
    )
    .fetch_one(pool)
    .await?)
}

/// Published events awaiting one peer's confirmation.
#[derive(Debug, Clone, FromRow)]
pub struct PeerBacklog {
    pub tier: String,
    pub events: i64,
    pub oldest_seconds: f64,
}

pub async fn awaiting_confirmation(pool: &PgPool) -> Result<Vec<PeerBacklog>> {
    Ok(sqlx::query_as(
        "SELECT tier, count(*) AS events,
                EXTRACT(EPOCH FROM clock_timestamp() - min(created_at))::float8 AS oldest_seconds
         FROM outbox, UNNEST(pending_tiers) AS tier
         WHERE published_at IS NOT NULL
         GROUP BY tier ORDER BY tier",
    )
    .fetch_all(pool)
    .await?)
}
