//! What reconciliation compares: per community and day, how many cases changed last that day and a
//! hash of their versions; per case, the version held; and the stored events a peer lacks.
//!
//! Days are China Standard Time days of `updated_at`, the time of the case's last event. That time
//! comes from the event, so two tiers holding the same version put the case on the same day.

use chrono::{DateTime, NaiveDate, Utc};
use sqlx::{FromRow, PgPool};
use uuid::Uuid;

use crate::Result;

/// China Standard Time, as a fixed offset (no daylight saving since 1991).
const DAY: &str = "((updated_at AT TIME ZONE 'UTC') + interval '8 hours')::date";

#[derive(Debug, Clone, PartialEq, Eq, FromRow)]
pub struct DayDigest {
    pub day: NaiveDate,
    pub cases: i64,
    pub hash: Vec<u8>,
}

/// Per day, the cases of grids under `prefix` last changed in `[since, until)`.
pub async fn digest(
    pool: &PgPool,
    prefix: &str,
    since: DateTime<Utc>,
    until: DateTime<Utc>,
) -> Result<Vec<DayDigest>> {
    Ok(sqlx::query_as(&format!(
        "SELECT {DAY} AS day, count(*) AS cases,
                decode(md5(string_agg(id::text || ':' || version::text, ',' ORDER BY id)), 'hex') AS hash
         FROM cases
         WHERE grid_code LIKE $1 || '%' AND updated_at >= $2 AND updated_at < $3
         GROUP BY 1 ORDER BY 1"
    ))
    .bind(prefix)
    .bind(since)
    .bind(until)
    .fetch_all(pool)
    .await?)
}

/// Which cases to list the versions of.
#[derive(Debug, Clone)]
pub enum Marks {
    /// Those of grids under a prefix last changed on a day, before a moment.
    Day {
        prefix: String,
        day: NaiveDate,
        until: DateTime<Utc>,
    },
    /// These cases, if held under the prefix.
    Cases { prefix: String, ids: Vec<Uuid> },
}

/// The versions of the cases `which` names with an id above `after`, in id order, at most `limit`.
pub async fn marks(
    pool: &PgPool,
    which: &Marks,
    after: Option<Uuid>,
    limit: i64,
) -> Result<Vec<(Uuid, i64)>> {
    let day_sql = format!(
        "SELECT id, version FROM cases
         WHERE grid_code LIKE $1 || '%' AND {DAY} = $2 AND updated_at < $3
           AND ($4::uuid IS NULL OR id > $4)
         ORDER BY id LIMIT $5"
    );
    let query = match which {
        Marks::Day { prefix, day, until } => sqlx::query_as(&day_sql)
            .bind(prefix.clone())
            .bind(*day)
            .bind(*until),
        Marks::Cases { prefix, ids } => sqlx::query_as(
            "SELECT id, version FROM cases
             WHERE grid_code LIKE $1 || '%' AND id = ANY($2)
               AND ($3::uuid IS NULL OR id > $3)
             ORDER BY id LIMIT $4",
        )
        .bind(prefix.clone())
        .bind(ids.clone()),
    };
    Ok(query.bind(after).bind(limit).fetch_all(pool).await?)
}

/// The stored events of a case after `after_seq`, oldest first, as long as they fit in `budget`
/// bytes (at least one); true when more follow.
pub async fn events_after(
    pool: &PgPool,
    case_id: Uuid,
    after_seq: u64,
    budget: usize,
) -> Result<(Vec<Vec<u8>>, bool)> {
    #[derive(FromRow)]
    struct Body {
        body: Vec<u8>,
    }
    let rows: Vec<Body> = sqlx::query_as(
        "SELECT body FROM case_events WHERE case_id = $1 AND seq > $2 ORDER BY seq LIMIT 256",
    )
    .bind(case_id)
    .bind(after_seq as i64)
    .fetch_all(pool)
    .await?;
    let total = rows.len();
    let mut events = Vec::new();
    let mut used = 0;
    for row in rows {
        if !events.is_empty() && used + row.body.len() > budget {
            break;
        }
        used += row.body.len();
        events.push(row.body);
    }
    let more = events.len() < total || total == 256;
    Ok((events, more))
}
