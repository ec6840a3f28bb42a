//! The case log: events, the projection they lead to, report numbers, the inbox and dead letters.

use chrono::{DateTime, NaiveDate, Utc};
use prost::Message;
use sqlx::{FromRow, PgConnection, PgPool};
use uuid::Uuid;
use wangge_domain::case::{state_name, tier_name};
use wangge_proto as pb;

use crate::{Error, Result};

/// A stored protobuf snapshot or event body.
#[derive(FromRow)]
struct Stored {
    body: Vec<u8>,
}

fn decode_case(bytes: &[u8]) -> Result<pb::Case> {
    pb::Case::decode(bytes).map_err(|source| Error::Corrupt {
        what: "case",
        source,
    })
}

fn decode_event(bytes: &[u8]) -> Result<pb::CaseEvent> {
    pb::CaseEvent::decode(bytes).map_err(|source| Error::Corrupt {
        what: "case event",
        source,
    })
}

fn timestamp(ts: Option<prost_types::Timestamp>) -> DateTime<Utc> {
    ts.and_then(|t| DateTime::from_timestamp(t.seconds, t.nanos.clamp(0, 999_999_999) as u32))
        .unwrap_or_default()
}

/// The case, locked for the rest of the transaction when `lock` is set.
pub async fn load(conn: &mut PgConnection, id: Uuid, lock: bool) -> Result<Option<pb::Case>> {
    let sql = if lock {
        "SELECT snapshot AS body FROM cases WHERE id = $1 FOR UPDATE"
    } else {
        "SELECT snapshot AS body FROM cases WHERE id = $1"
    };
    let row: Option<Stored> = sqlx::query_as(sql).bind(id).fetch_optional(conn).await?;
    row.map(|r| decode_case(&r.body)).transpose()
}

pub async fn get(pool: &PgPool, id: Uuid) -> Result<Option<pb::Case>> {
    let mut conn = pool.acquire().await?;
    load(&mut conn, id, false).await
}

/// An event on its way to the bus, written to the outbox with the event (the author's side).
#[derive(Debug, Clone, Copy)]
pub struct Outgoing<'a> {
    pub subject: &'a str,
    /// The envelope, as it travels.
    pub body: &'a [u8],
    /// The tiers that must confirm it.
    pub peers: &'a [&'a str],
}

/// The projection's columns, as [`append`] and [`append_many`] insert them.
macro_rules! insert_case {
    () => {
        "INSERT INTO cases (id, number, client_id, category_code, description, longitude, latitude,
                            grid_code, state, owner_tier, owner_org, department, check_outcome,
                            check_by_tier, urgency, reporter_id, captured_at, reported_at, updated_at,
                            version, snapshot) "
    };
}

/// What a later event changes in a case's row, and whether the row is new (to count it).
macro_rules! upsert_case {
    () => {
        " ON CONFLICT (id) DO UPDATE SET
            state = EXCLUDED.state, owner_tier = EXCLUDED.owner_tier, owner_org = EXCLUDED.owner_org,
            department = EXCLUDED.department, check_outcome = EXCLUDED.check_outcome,
            check_by_tier = EXCLUDED.check_by_tier, updated_at = EXCLUDED.updated_at,
            version = EXCLUDED.version, snapshot = EXCLUDED.snapshot
          RETURNING (xmax = 0) AS created"
    };
}

/// The columns of a case's projection row, read off the case.
struct Projection<'a> {
    id: Uuid,
    case: &'a pb::Case,
    owner: pb::Owner,
    location: pb::GeoPoint,
    department: Option<&'a str>,
    check_outcome: Option<&'static str>,
    check_by: Option<&'static str>,
}

impl<'a> Projection<'a> {
    fn of(case: &'a pb::Case) -> Result<Projection<'a>> {
        let id: Uuid = case
            .id
            .parse()
            .map_err(|e| sqlx::Error::Decode(Box::new(e)))?;
        let check_outcome = match case.check_outcome() {
            pb::CheckOutcome::Unspecified => None,
            pb::CheckOutcome::Pending => Some("pending"),
            pb::CheckOutcome::Passed => Some("passed"),
            pb::CheckOutcome::Failed => Some("failed"),
        };
        let check_by = match case.check_requested_by() {
            pb::Tier::Unspecified => None,
            tier => Some(tier_name(tier)),
        };
        Ok(Projection {
            id,
            case,
            owner: case.owner.clone().unwrap_or_default(),
            location: case.location.unwrap_or_default(),
            department: Some(case.department_code.as_str()).filter(|d| !d.is_empty()),
            check_outcome,
            check_by,
        })
    }

    fn reporter(&self) -> &'a str {
        self.case
            .reporter
            .as_ref()
            .map(|a| a.id.as_str())
            .unwrap_or_default()
    }
}

/// The columns of an event's row in `case_events`.
struct Logged {
    event_id: Uuid,
    seq: i64,
    at: DateTime<Utc>,
    tier: &'static str,
    kind: &'static str,
    body: Vec<u8>,
}

impl Logged {
    fn of(event: &pb::CaseEvent) -> Result<Logged> {
        let event_id: Uuid = event
            .event_id
            .parse()
            .map_err(|e| sqlx::Error::Decode(Box::new(e)))?;
        Ok(Logged {
            event_id,
            seq: event.seq as i64,
            at: timestamp(event.at),
            tier: tier_name(event.tier()),
            kind: event
                .kind
                .as_ref()
                .map(wangge_domain::case::kind_name)
                .unwrap_or("none"),
            body: event.encode_to_vec(),
        })
    }
}

/// Stores an event, the projection it led to and, for its author, the outbox row that sends it:
/// one statement (data-modifying CTEs), so one round trip. The first event inserts the case and
/// counts it (a row in `case_count_deltas`: an insert, which no other writer waits for).
pub async fn append(
    conn: &mut PgConnection,
    after: &pb::Case,
    event: &pb::CaseEvent,
    outgoing: Option<Outgoing<'_>>,
) -> Result<()> {
    let row = Projection::of(after)?;
    let logged = Logged::of(event)?;
    sqlx::query(
        concat!(
            "WITH stored AS (",
            insert_case!(),
            "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21)",
            upsert_case!(),
            "), logged AS (
            INSERT INTO case_events (event_id, case_id, seq, at, tier, kind, body)
            VALUES ($22, $1, $23, $24, $25, $26, $27)
         ), sent AS (
            INSERT INTO outbox (event_id, case_id, seq, subject, body, pending_tiers)
            SELECT $22, $1, $23, $28, $29, $30 WHERE $28::text IS NOT NULL
         )
         INSERT INTO case_count_deltas (added) SELECT 1 FROM stored WHERE created"
        ),
    )
    .bind(row.id)
    .bind(&after.number)
    .bind(&after.client_id)
    .bind(&after.category_code)
    .bind(&after.description)
    .bind(row.location.longitude)
    .bind(row.location.latitude)
    .bind(&after.grid_code)
    .bind(state_name(after.state()))
    .bind(tier_name(row.owner.tier()))
    .bind(&row.owner.org_code)
    .bind(row.department)
    .bind(row.check_outcome)
    .bind(row.check_by)
    .bind(after.urgency().as_str_name())
    .bind(row.reporter())
    .bind(timestamp(after.captured_at))
    .bind(timestamp(after.reported_at))
    .bind(timestamp(after.updated_at))
    .bind(after.version as i64)
    .bind(after.encode_to_vec())
    .bind(logged.event_id)
    .bind(logged.seq)
    .bind(logged.at)
    .bind(logged.tier)
    .bind(logged.kind)
    .bind(logged.body)
    .bind(outgoing.map(|o| o.subject))
    .bind(outgoing.map(|o| o.body))
    .bind(outgoing.map(|o| o.peers))
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Stores events and the projections they led to, in one statement whatever their number:
/// `applied` in order, several events of one case among them, each with the case as it stood after
/// it. The projection stored is each case's last. `outgoing` is empty for events applied from
/// another tier (a replica's), or one outbox row per event of `applied`, in its order, for events
/// this tier authored (a batch of reports), all for the same peers.
pub async fn append_many(
    conn: &mut PgConnection,
    applied: &[(pb::Case, pb::CaseEvent)],
    outgoing: &[Outgoing<'_>],
) -> Result<()> {
    if applied.is_empty() {
        return Ok(());
    }
    if !outgoing.is_empty() && outgoing.len() != applied.len() {
        return Err(crate::Error::Mismatch(format!(
            "{} outbox rows for {} events",
            outgoing.len(),
            applied.len()
        )));
    }
    let peers: &[&str] = outgoing.first().map_or(&[], |o| o.peers);
    // Each case's last projection, once: an upsert may not touch a row twice in one statement.
    let mut seen = std::collections::HashSet::new();
    let last: Vec<&pb::Case> = applied
        .iter()
        .rev()
        .map(|(after, _)| after)
        .filter(|after| seen.insert(after.id.as_str()))
        .collect();
    let rows: Vec<Projection<'_>> = last
        .iter()
        .map(|c| Projection::of(c))
        .collect::<Result<_>>()?;
    let column =
        |f: &dyn Fn(&Projection<'_>) -> String| -> Vec<String> { rows.iter().map(f).collect() };
    let logged: Vec<Logged> = applied
        .iter()
        .map(|(_, e)| Logged::of(e))
        .collect::<Result<_>>()?;
    let event_cases: Vec<Uuid> = applied
        .iter()
        .map(|(after, _)| {
            after
                .id
                .parse()
                .map_err(|e| sqlx::Error::Decode(Box::new(e)))
        })
        .collect::<std::result::Result<_, sqlx::Error>>()?;
    sqlx::query(
        concat!(
            "WITH stored AS (",
            insert_case!(),
            "SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[],
                                 $6::float8[], $7::float8[], $8::text[], $9::text[], $10::text[],
                                 $11::text[], $12::text[], $13::text[], $14::text[], $15::text[],
                                 $16::text[], $17::timestamptz[], $18::timestamptz[], $19::timestamptz[],
                                 $20::bigint[], $21::bytea[])",
            upsert_case!(),
            "), logged AS (
            INSERT INTO case_events (event_id, case_id, seq, at, tier, kind, body)
            SELECT * FROM unnest($22::uuid[], $23::uuid[], $24::bigint[], $25::timestamptz[],
                                 $26::text[], $27::text[], $28::bytea[])
         ), sent AS (
            INSERT INTO outbox (event_id, case_id, seq, subject, body, pending_tiers)
            SELECT o.event_id, o.case_id, o.seq, o.subject, o.body, $31::text[]
            FROM unnest($22::uuid[], $23::uuid[], $24::bigint[], $29::text[], $30::bytea[])
                 AS o(event_id, case_id, seq, subject, body)
            WHERE o.subject IS NOT NULL
         )
         INSERT INTO case_count_deltas (added)
         SELECT count(*) FROM stored WHERE created HAVING count(*) > 0"
        ),
    )
    .bind(rows.iter().map(|r| r.id).collect::<Vec<_>>())
    .bind(column(&|r| r.case.number.clone()))
    .bind(column(&|r| r.case.client_id.clone()))
    .bind(column(&|r| r.case.category_code.clone()))
    .bind(column(&|r| r.case.description.clone()))
    .bind(rows.iter().map(|r| r.location.longitude).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.location.latitude).collect::<Vec<_>>())
    .bind(column(&|r| r.case.grid_code.clone()))
    .bind(column(&|r| state_name(r.case.state()).to_owned()))
    .bind(column(&|r| tier_name(r.owner.tier()).to_owned()))
    .bind(column(&|r| r.owner.org_code.clone()))
    .bind(rows.iter().map(|r| r.department).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.check_outcome).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.check_by).collect::<Vec<_>>())
    .bind(column(&|r| r.case.urgency().as_str_name().to_owned()))
    .bind(column(&|r| r.reporter().to_owned()))
    .bind(rows.iter().map(|r| timestamp(r.case.captured_at)).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| timestamp(r.case.reported_at)).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| timestamp(r.case.updated_at)).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.case.version as i64).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.case.encode_to_vec()).collect::<Vec<_>>())
    .bind(logged.iter().map(|l| l.event_id).collect::<Vec<_>>())
    .bind(event_cases)
    .bind(logged.iter().map(|l| l.seq).collect::<Vec<_>>())
    .bind(logged.iter().map(|l| l.at).collect::<Vec<_>>())
    .bind(logged.iter().map(|l| l.tier).collect::<Vec<_>>())
    .bind(logged.iter().map(|l| l.kind).collect::<Vec<_>>())
    .bind(logged.into_iter().map(|l| l.body).collect::<Vec<_>>())
    .bind(outgoing.iter().map(|o| o.subject).collect::<Vec<_>>())
    .bind(outgoing.iter().map(|o| o.body).collect::<Vec<_>>())
    .bind(peers)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// The cases of `ids` that exist, locked for the rest of the transaction in id order (so two
/// transactions locking overlapping sets never wait on each other in a circle).
pub async fn load_many(
    conn: &mut PgConnection,
    ids: &[Uuid],
) -> Result<std::collections::HashMap<Uuid, pb::Case>> {
    #[derive(FromRow)]
    struct Row {
        id: Uuid,
        body: Vec<u8>,
    }
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT id, snapshot AS body FROM cases WHERE id = ANY($1) ORDER BY id FOR UPDATE",
    )
    .bind(ids)
    // Planned with the table as it is: a generic plan made while the replica was nearly empty
    // scanned it whole for every batch (15 ms a batch at 25 000 cases in `wangge bench`).
    .persistent(false)
    .fetch_all(conn)
    .await?;
    rows.into_iter()
        .map(|row| Ok((row.id, decode_case(&row.body)?)))
        .collect()
}

/// The whole history of a case, oldest first.
pub async fn events(pool: &PgPool, case_id: Uuid) -> Result<Vec<pb::CaseEvent>> {
    let rows: Vec<Stored> =
        sqlx::query_as("SELECT body FROM case_events WHERE case_id = $1 ORDER BY seq")
            .bind(case_id)
            .fetch_all(pool)
            .await?;
    rows.iter().map(|r| decode_event(&r.body)).collect()
}

/// An open case near a new report (a duplicate candidate before its exact distance is known).
#[derive(Debug, Clone, FromRow)]
pub struct NearbyCase {
    pub id: Uuid,
    pub number: String,
    pub longitude: f64,
    pub latitude: f64,
    pub reported_at: DateTime<Utc>,
}

/// States a case no longer needs work in: never a duplicate candidate.
const FINISHED_STATES: [&str; 5] = ["closed", "rejected", "void", "merged", "archived"];

/// The cells (0.001° of longitude by 0.001° of latitude) that the box `low..=high` touches on one
/// axis, as the `cases_nearby` index numbers them.
fn cells(low: f64, high: f64) -> Vec<i32> {
    let (first, last) = ((low * 1000.0).floor(), (high * 1000.0).floor());
    if !(first.is_finite() && last.is_finite()) || last < first {
        return Vec::new();
    }
    (first as i32..=last as i32).collect()
}

/// Open cases of `category` reported since `since` inside the box of `longitude` ± `d_longitude`
/// and `latitude` ± `d_latitude` (at most `limit`, the newest first); the caller measures the
/// exact distance. Reads only the index cells the box touches (`cases_nearby`).
pub async fn open_nearby(
    pool: &PgPool,
    category: &str,
    since: DateTime<Utc>,
    (longitude, latitude): (f64, f64),
    (d_longitude, d_latitude): (f64, f64),
    limit: i64,
) -> Result<Vec<NearbyCase>> {
    let columns = cells(longitude - d_longitude, longitude + d_longitude);
    let rows = cells(latitude - d_latitude, latitude + d_latitude);
    Ok(sqlx::query_as(NEARBY_SQL)
        .bind(category)
        .bind(since)
        .bind(&FINISHED_STATES[..])
        .bind(longitude)
        .bind(latitude)
        .bind(d_longitude)
        .bind(d_latitude)
        .bind(limit)
        .bind(&columns)
        .bind(&rows)
        .fetch_all(pool)
        .await?)
}

/// One index range per cell the box touches: the same plan whatever the planner knows. The form
/// with `= ANY` over both cell arrays let a generic plan on a table without statistics (a new
/// database, autovacuum off) fall back to a bitmap scan of the category's whole window: 631 pages
/// and 1.2 ms a report at 25 000 cases, growing with the history.
const NEARBY_SQL: &str = "SELECT c.id, c.number, c.longitude, c.latitude, c.reported_at
     FROM unnest($9::integer[]) AS x(cell)
     CROSS JOIN unnest($10::integer[]) AS y(cell)
     CROSS JOIN LATERAL (
        SELECT id, number, longitude, latitude, reported_at FROM cases
        WHERE category_code = $1
          AND floor(longitude * 1000)::integer = x.cell
          AND floor(latitude * 1000)::integer = y.cell
          AND reported_at >= $2 AND state <> ALL($3)
          AND longitude BETWEEN $4 - $6 AND $4 + $6 AND latitude BETWEEN $5 - $7 AND $5 + $7
        ORDER BY reported_at DESC LIMIT $8
     ) c
     ORDER BY c.reported_at DESC LIMIT $8";

/// How PostgreSQL runs [`open_nearby`] (`EXPLAIN ANALYZE`, JSON), for the plan test: the generic
/// plan, the one a prepared statement settles on after a few runs, which sees no parameter values.
pub async fn explain_open_nearby(
    pool: &PgPool,
    category: &str,
    since: DateTime<Utc>,
    (longitude, latitude): (f64, f64),
    (d_longitude, d_latitude): (f64, f64),
) -> Result<serde_json::Value> {
    let columns = cells(longitude - d_longitude, longitude + d_longitude);
    let rows = cells(latitude - d_latitude, latitude + d_latitude);
    // A connection of its own, closed afterwards: the setting and the statement go with it.
    let mut conn = pool.acquire().await?.detach();
    sqlx::query("SET plan_cache_mode = force_generic_plan")
        .execute(&mut conn)
        .await?;
    sqlx::query(&format!(
        "PREPARE nearby_explained (text, timestamptz, text[], float8, float8, float8, float8, \
                                   bigint, integer[], integer[]) AS {NEARBY_SQL}"
    ))
    .execute(&mut conn)
    .await?;
    // EXECUTE takes no bound parameters inside EXPLAIN: the values are written out.
    let text = |value: &str| format!("'{}'", value.replace('\'', "''"));
    let integers = |values: &[i32]| {
        let listed: Vec<String> = values.iter().map(i32::to_string).collect();
        format!("'{{{}}}'::integer[]", listed.join(","))
    };
    let finished: Vec<String> = FINISHED_STATES.iter().map(|s| s.to_string()).collect();
    let explained: sqlx::types::Json<serde_json::Value> = sqlx::query_scalar(&format!(
        "EXPLAIN (ANALYZE, FORMAT JSON) EXECUTE nearby_explained ({}, {}::timestamptz, \
         {}::text[], {longitude}, {latitude}, {d_longitude}, {d_latitude}, 10, {}, {})",
        text(category),
        text(&since.to_rfc3339()),
        text(&format!("{{{}}}", finished.join(","))),
        integers(&columns),
        integers(&rows),
    ))
    .fetch_one(&mut conn)
    .await?;
    Ok(explained.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_box_touches_the_cells_it_spans() {
        assert_eq!(cells(118.0554, 118.0556), vec![118_055]);
        assert_eq!(cells(118.0549, 118.0561), vec![118_054, 118_055, 118_056]);
        assert_eq!(cells(24.5, 24.4), Vec::<i32>::new());
        assert_eq!(cells(f64::NAN, 1.0), Vec::<i32>::new());
    }
}

/// A case number for people: the community, the day and its daily sequence,
/// 350205002006-20261126-0042 (see `intake::claim_numbered`, which draws the sequence).
pub fn case_number(community: &str, day: NaiveDate, sequence: i32) -> String {
    format!("{community}-{}-{sequence:04}", day.format("%Y%m%d"))
}

/// Which cases a listing wants.
#[derive(Debug, Default, Clone)]
pub struct Filter {
    /// Database state names; empty means all.
    pub states: Vec<String>,
    /// Grid code prefixes (the scope, or parts of it): a case under any of them. Empty: none.
    pub grid_prefixes: Vec<String>,
    /// Only cases held by this tier.
    pub owner_tier: Option<String>,
    pub department: Option<String>,
    /// Only the field's tasks: cases in CHECKING with a pending check, or in VERIFYING.
    pub pending_check: bool,
    /// Cases with an id above this one (ids are UUIDv7, so in report order).
    pub after: Option<Uuid>,
    pub limit: i64,
}

/// A prefix this long or longer is a community's or a grid's code: its grids are few (a dozen),
/// so its lists go grid by grid. A street's or the district's lists read by state instead, where
/// the cases of the scope are most of what is read.
const NARROW_PREFIX: usize = 12;

/// Every state a case can be in (the protobuf's values but Unspecified).
pub(crate) fn known_states() -> impl Iterator<Item = pb::CaseState> {
    (0..=i32::from(u8::MAX))
        .map_while(|n| pb::CaseState::try_from(n).ok())
        .filter(|&state| state != pb::CaseState::Unspecified)
}

/// The database names of every state, for a list by grid, department or holder without a state
/// filter (each (…, state) range is read in id order).
fn every_state() -> Vec<String> {
    known_states()
        .map(|state| state_name(state).to_owned())
        .collect()
}

/// Which index a list reads, by its filter's leading columns: each (…, state) range in id order,
/// as far as the page needs, merged. The cost follows the page, not the history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Drive {
    /// `cases_department_state_id`.
    Department,
    /// `cases_grid_state_id`, the grids under the prefixes found by skipping along it.
    Grids,
    /// `cases_owner_state_id`.
    Holder,
    /// `cases_state_id`.
    State,
    /// The primary key, filtered: a page of a wide scope with no state filter.
    Id,
}

impl Filter {
    fn drive(&self) -> Drive {
        let narrow = !self.grid_prefixes.is_empty()
            && self.grid_prefixes.iter().all(|p| p.len() >= NARROW_PREFIX);
        if self.department.is_some() {
            Drive::Department
        } else if narrow {
            Drive::Grids
        } else if self.owner_tier.is_some() {
            Drive::Holder
        } else if self.states.is_empty() {
            Drive::Id
        } else {
            Drive::State
        }
    }

    /// The states bound as `$2`: all of them when the list reads by state without a state filter.
    fn bound_states(&self) -> Vec<String> {
        if self.states.is_empty() && self.drive() != Drive::Id {
            every_state()
        } else {
            self.states.clone()
        }
    }
}

/// The query of [`list`]. The parameters are always the same seven ($1 the grid prefixes (LIKE
/// patterns but where the list goes grid by grid), $2 the
/// states, $3 the holder, $4 the department, $5 pending checks only, $6 the cursor, $7 the page
/// size); only the conditions the filter sets are written, so each is a plain index condition
/// even in a generic plan (`$4 IS NULL OR department = $4` is not).
fn list_sql(filter: &Filter) -> String {
    let drive = filter.drive();
    let mut conditions = Vec::new();
    if drive != Drive::Grids {
        conditions.push("grid_code LIKE ANY($1)");
    }
    if filter.owner_tier.is_some() {
        conditions.push("owner_tier = $3");
    }
    if filter.department.is_some() {
        conditions.push("department = $4");
    }
    if filter.pending_check {
        conditions
            .push("((state = 'checking' AND check_outcome = 'pending') OR state = 'verifying')");
    }
    if filter.after.is_some() {
        conditions.push("id > $6");
    }
    let and = |conditions: &[&str]| -> String {
        conditions.iter().map(|c| format!(" AND {c}")).collect()
    };
    // A page per wanted state (of each grid, where `from` joins the grids), each read along its
    // own index range in id order, merged into one page.
    let by_state = |from: &str, grid: &str| {
        format!(
            "SELECT page.snapshot AS body
             FROM {from}unnest($2::text[]) AS wanted(state)
             CROSS JOIN LATERAL (
                 SELECT id, snapshot FROM cases
                 WHERE {grid}state = wanted.state{}
                 ORDER BY id
                 LIMIT $7
             ) AS page
             ORDER BY page.id
             LIMIT $7",
            and(&conditions)
        )
    };
    match drive {
        Drive::Id => format!(
            "SELECT snapshot AS body FROM cases
             WHERE true{}
             ORDER BY id
             LIMIT $7",
            and(&conditions)
        ),
        Drive::Grids => format!(
            // The grids under the prefixes, one index descent each (a loose index scan).
            "WITH RECURSIVE grid (code, prefix) AS (
                 SELECT (SELECT grid_code FROM cases
                         WHERE grid_code >= scope.prefix AND grid_code < scope.prefix || ':'
                         ORDER BY grid_code LIMIT 1),
                        scope.prefix
                 FROM unnest($1::text[]) AS scope(prefix)
               UNION ALL
                 SELECT (SELECT grid_code FROM cases
                         WHERE grid_code > grid.code AND grid_code < grid.prefix || ':'
                         ORDER BY grid_code LIMIT 1),
                        grid.prefix
                 FROM grid WHERE grid.code IS NOT NULL
             )
             {}",
            by_state("grid CROSS JOIN ", "grid_code = grid.code AND ")
        ),
        Drive::Department | Drive::Holder | Drive::State => by_state("", ""),
    }
}

/// `$1` of [`list_sql`]: the grid prefixes, as LIKE patterns where the scope is a filter (codes
/// are digits: no wildcard can hide in one).
fn bound_prefixes(filter: &Filter) -> Vec<String> {
    if filter.drive() == Drive::Grids {
        filter.grid_prefixes.clone()
    } else {
        filter
            .grid_prefixes
            .iter()
            .map(|p| format!("{p}%"))
            .collect()
    }
}

pub async fn list(pool: &PgPool, filter: &Filter) -> Result<Vec<pb::Case>> {
    let rows: Vec<Stored> = sqlx::query_as(&list_sql(filter))
        .bind(bound_prefixes(filter))
        .bind(filter.bound_states())
        .bind(&filter.owner_tier)
        .bind(&filter.department)
        .bind(filter.pending_check)
        .bind(filter.after)
        .bind(filter.limit)
        .fetch_all(pool)
        .await?;
    rows.iter().map(|r| decode_case(&r.body)).collect()
}

/// How PostgreSQL runs [`list`] for `filter`, run and measured (`EXPLAIN ANALYZE`, JSON): the
/// plan test reads it to show the cost follows the page, not the history.
pub async fn explain_list(pool: &PgPool, filter: &Filter) -> Result<serde_json::Value> {
    let sql = format!("EXPLAIN (ANALYZE, FORMAT JSON) {}", list_sql(filter));
    let plan: sqlx::types::Json<serde_json::Value> = sqlx::query_scalar(&sql)
        .bind(bound_prefixes(filter))
        .bind(filter.bound_states())
        .bind(&filter.owner_tier)
        .bind(&filter.department)
        .bind(filter.pending_check)
        .bind(filter.after)
        .bind(filter.limit)
        .fetch_one(pool)
        .await?;
    Ok(plan.0)
}

/// How many cases this database holds (kept as cases are added: no count of the table). Folds
/// the counts added since the last call into the total first, so the cost follows the cases added
/// lately, not the history.
pub async fn count(pool: &PgPool) -> Result<i64> {
    Ok(sqlx::query_scalar(
        "WITH folded AS (DELETE FROM case_count_deltas RETURNING added),
              total AS (
                 UPDATE case_counts SET cases = cases + (SELECT coalesce(sum(added), 0) FROM folded)
                 RETURNING cases
              )
         SELECT cases FROM total",
    )
    .fetch_one(pool)
    .await?)
}
