//! What an evaluation (综合评价, `wangge_domain::evaluation`) reads: the histories of the cases of
//! a period, in one bounded query, and the names of the workers, orgs, grids and departments its
//! rows name.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use prost::Message;
use sqlx::{FromRow, PgPool};
use uuid::Uuid;
use wangge_domain::case::{is_finished, state_name};
use wangge_proto as pb;

use crate::{Error, Result};

/// The most events one evaluation loads: a period and area beyond it is refused rather than
/// allowed to fill the tier's memory (about 200 MB of decoded events).
pub const MAX_EVENTS: usize = 200_000;

/// The histories of a period, or the news that they are too large.
#[derive(Debug)]
pub enum Histories {
    /// Each case's events, oldest first, the cases in id order.
    Loaded(Vec<Vec<pb::CaseEvent>>),
    /// More than `limit` events: nothing was kept.
    TooMany { limit: usize },
}

#[derive(FromRow)]
struct EventRow {
    case_id: Uuid,
    seq: i64,
    body: Vec<u8>,
}

/// The database names of the states further work follows (a case in one is open).
fn open_states() -> Vec<&'static str> {
    crate::cases::known_states()
        .filter(|&state| !is_finished(state))
        .map(state_name)
        .collect()
}

/// The histories, up to `to`, of the cases under `prefixes` (grid-code prefixes) that were
/// reported before `to` and either had an event since `from` or are not finished (so were open at
/// `from`). One query, reading at most `max_events` + 1 rows; the histories in case order, each
/// oldest first.
pub async fn histories(
    pool: &PgPool,
    prefixes: &[String],
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    max_events: usize,
) -> Result<Histories> {
    // Codes are digits: no LIKE wildcard can hide in a prefix.
    let patterns: Vec<String> = prefixes.iter().map(|p| format!("{p}%")).collect();
    let limit = i64::try_from(max_events)
        .unwrap_or(i64::MAX)
        .saturating_add(1);
    let rows: Vec<EventRow> = sqlx::query_as(
        // The cases changed since `from` (by the updated_at index) and the open ones (by the
        // state index): never the whole closed history. Each case's events are read by its own
        // range of (case_id, seq), the LIMIT keeping the lateral a loop over the cases: a hash
        // join over every event is what an estimate gone wrong at a million cases chose (2.7 s).
        "WITH touched AS (
             SELECT id FROM cases
             WHERE updated_at >= $2 AND reported_at < $3 AND grid_code LIKE ANY($1)
             UNION
             SELECT id FROM cases
             WHERE state = ANY($4) AND reported_at < $3 AND grid_code LIKE ANY($1)
         )
         SELECT t.id AS case_id, e.seq, e.body
         FROM touched t
         CROSS JOIN LATERAL (
             SELECT seq, body FROM case_events
             WHERE case_id = t.id AND at < $3
             LIMIT $5
         ) AS e
         LIMIT $5",
    )
    .bind(&patterns)
    .bind(from)
    .bind(to)
    .bind(open_states())
    .bind(limit)
    // Planned with its values each time (a rare call): a generic plan cannot know that the
    // period is a day of three years.
    .persistent(false)
    .fetch_all(pool)
    .await?;
    if rows.len() > max_events {
        return Ok(Histories::TooMany { limit: max_events });
    }
    // Sorted here, not in the query: at a million cases PostgreSQL's sort of the bodies spilled to
    // disk and took a third of the query's time.
    let mut rows = rows;
    rows.sort_unstable_by_key(|row| (row.case_id, row.seq));
    let mut histories: Vec<Vec<pb::CaseEvent>> = Vec::new();
    let mut current = None;
    for row in rows {
        let event =
            pb::CaseEvent::decode(row.body.as_slice()).map_err(|source| Error::Corrupt {
                what: "case event",
                source,
            })?;
        if current != Some(row.case_id) {
            current = Some(row.case_id);
            histories.push(Vec::new());
        }
        if let Some(history) = histories.last_mut() {
            history.push(event);
        }
    }
    Ok(Histories::Loaded(histories))
}

/// What a name belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Named {
    Worker,
    /// A district, street or community.
    Org,
    Grid,
    Department,
}

#[derive(FromRow)]
struct NameRow {
    kind: String,
    key: String,
    name: String,
}

/// The registry's names of these workers, orgs, grids and departments; what it does not know is
/// missing from the map.
pub async fn names(
    pool: &PgPool,
    workers: &[String],
    orgs: &[String],
    grids: &[String],
    departments: &[String],
) -> Result<HashMap<(Named, String), String>> {
    let rows: Vec<NameRow> = sqlx::query_as(
        "SELECT 'worker' AS kind, id AS key, name FROM workers WHERE id = ANY($1)
         UNION ALL SELECT 'org', code, name FROM orgs WHERE code = ANY($2)
         UNION ALL SELECT 'grid', code, name FROM grids WHERE code = ANY($3)
         UNION ALL SELECT 'department', code, name FROM departments WHERE code = ANY($4)",
    )
    .bind(workers)
    .bind(orgs)
    .bind(grids)
    .bind(departments)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .filter_map(|row| {
            let kind = match row.kind.as_str() {
                "worker" => Named::Worker,
                "org" => Named::Org,
                "grid" => Named::Grid,
                "department" => Named::Department,
                _ => return None,
            };
            Some(((kind, row.key), row.name))
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_open_states_are_all_but_the_finished_ones() {
        let open = open_states();
        for finished in [
            "closed",
            "rejected",
            "void",
            "merged",
            "archived",
            "unspecified",
        ] {
            assert!(!open.contains(&finished), "{finished}");
        }
        for live in [
            "reported",
            "verifying",
            "in_progress",
            "hung",
            "void_requested",
        ] {
            assert!(open.contains(&live), "{live}");
        }
    }
}
