//! What an evaluation (综合评价, `wangge_domain::evaluation`) reads: the histories of the cases of
//! a period, a page of cases at a time, and the names of the workers, orgs, grids and departments its
//! rows name.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use prost::Message;
use sqlx::{FromRow, PgPool};
use uuid::Uuid;
use wangge_domain::case::{is_finished, state_name};
use wangge_proto as pb;

use crate::{Error, Result};

/// How many cases' histories one read brings: an evaluation reads its period a page of cases at
/// a time and counts each page before the next, so a district's year never sits in memory at once
/// (a page is some 20 000 events, a few MB decoded).
pub const CASES_PER_READ: usize = 2_000;

#[derive(FromRow)]
struct CaseRow {
    id: Uuid,
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

/// The cases a period `[from, to)` reads, under `prefixes` (grid-code prefixes): those reported
/// before `to` that either had an event since `from` or are not finished (so were open at
/// `from`), in id order. Read their histories with [`histories`], a page at a time.
pub async fn period_cases(
    pool: &PgPool,
    prefixes: &[String],
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<Vec<Uuid>> {
    // Codes are digits: no LIKE wildcard can hide in a prefix.
    let patterns: Vec<String> = prefixes.iter().map(|p| format!("{p}%")).collect();
    let rows: Vec<CaseRow> = sqlx::query_as(
        // The cases changed since `from` (by the updated_at index) and the open ones (by the
        // state index): never the whole closed history.
        "SELECT id FROM cases
         WHERE updated_at >= $2 AND reported_at < $3 AND grid_code LIKE ANY($1)
         UNION
         SELECT id FROM cases
         WHERE state = ANY($4) AND reported_at < $3 AND grid_code LIKE ANY($1)",
    )
    .bind(&patterns)
    .bind(from)
    .bind(to)
    .bind(open_states())
    // Planned with its values each time (a rare call): a generic plan cannot know that the
    // period is a day of three years.
    .persistent(false)
    .fetch_all(pool)
    .await?;
    let mut ids: Vec<Uuid> = rows.into_iter().map(|row| row.id).collect();
    ids.sort_unstable();
    Ok(ids)
}

/// The histories, up to `to`, of the cases `ids` (a page of [`period_cases`]), each oldest first,
/// in id order.
pub async fn histories(
    pool: &PgPool,
    ids: &[Uuid],
    to: DateTime<Utc>,
) -> Result<Vec<Vec<pb::CaseEvent>>> {
    let rows: Vec<EventRow> = sqlx::query_as(
        // Each case's events by its own range of (case_id, seq): a hash join over every event is
        // what an estimate gone wrong at a million cases chose (2.7 s).
        "SELECT t.id AS case_id, e.seq, e.body
         FROM unnest($1::uuid[]) AS t(id)
         CROSS JOIN LATERAL (
             SELECT seq, body FROM case_events
             WHERE case_id = t.id AND at < $2
         ) AS e",
    )
    .bind(ids)
    .bind(to)
    .fetch_all(pool)
    .await?;
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
    Ok(histories)
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
