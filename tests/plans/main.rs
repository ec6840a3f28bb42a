//! Reads stay flat in the size of the history: with a hundred thousand closed cases and a few
//! hundred open ones, the console's, the department's and the field app's lists read about a
//! page of rows, never the closed history. Checked on the plans PostgreSQL runs (`EXPLAIN
//! ANALYZE`) of the store's own queries, so a lost index or a query that stops using one fails
//! here, whatever the machine's speed.

#![allow(clippy::unwrap_used)]

use serde_json::Value;
use sqlx::PgPool;
use wangge_store::cases::{self, Filter};
use wangge_tests::db::TestDb;

const CLOSED: i64 = 100_000;
const PAGE: i64 = 100;
const GRIDS: [&str; 4] = [
    "350205002006001",
    "350205002006002",
    "350205002007001",
    "350205003001001",
];

/// `count` cases in `state` (held by `owner`, department and check as given), spread over the
/// grids, with ids in random order among the others.
async fn insert(
    pool: &PgPool,
    count: i64,
    (state, owner): (&str, &str),
    department: Option<&str>,
    check: Option<&str>,
) {
    sqlx::query(
        "INSERT INTO cases (id, number, client_id, category_code, description, longitude, latitude,
                            grid_code, state, owner_tier, owner_org, department, check_outcome,
                            check_by_tier, urgency, reporter_id, captured_at, reported_at, updated_at,
                            version, snapshot)
         SELECT gen_random_uuid(), concat_ws('-', $2, $6, $3, g), concat_ws('-', 'c', $2, $6, $3, g),
                'szcg-01-01', '暴露垃圾',
                118.0, 24.5, ($5::text[])[1 + g % 4], $2, $6, '350205002000', $3, $4, 'street',
                'URGENCY_NORMAL', 'gw', now() - interval '400 days' + g * interval '1 minute',
                now() - interval '400 days' + g * interval '1 minute', now() - interval '1 day', 8, ''::bytea
         FROM generate_series(1, $1) AS g",
    )
    .bind(count)
    .bind(state)
    .bind(department)
    .bind(check)
    .bind(&GRIDS[..])
    .bind(owner)
    .execute(pool)
    .await
    .unwrap();
}

/// Every scan of `cases` or of one of its indexes in a plan: (node type, rows it returned plus
/// rows it read and threw away). A bitmap index scan names only its index: the entries it found
/// count too, so a `BitmapAnd` that reads a department's whole history shows.
fn scans(plan: &Value, found: &mut Vec<(String, f64)>) {
    let relation = plan.get("Relation Name").and_then(Value::as_str);
    let index = plan.get("Index Name").and_then(Value::as_str);
    let node = plan.get("Node Type").and_then(Value::as_str).unwrap_or("?");
    let of_cases = relation == Some("cases")
        || (node == "Bitmap Index Scan" && index.is_some_and(|i| i.starts_with("cases_")));
    if of_cases {
        let number = |key: &str| plan.get(key).and_then(Value::as_f64).unwrap_or(0.0);
        let loops = number("Actual Loops").max(1.0);
        let read = (number("Actual Rows") + number("Rows Removed by Filter")) * loops;
        found.push((node.to_owned(), read));
    }
    for child in plan
        .get("Plans")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        scans(child, found);
    }
}

/// Runs `filter` under EXPLAIN ANALYZE and checks it reads at most `bound` rows of `cases` and
/// scans none of it sequentially; returns the rows read.
async fn reads_at_most(pool: &PgPool, what: &str, filter: &Filter, bound: f64) -> f64 {
    let explained = cases::explain_list(pool, filter).await.unwrap();
    let mut found = Vec::new();
    scans(&explained[0]["Plan"], &mut found);
    assert!(
        !found.is_empty(),
        "{what}: no scan of cases in {explained:#}"
    );
    let read: f64 = found.iter().map(|(_, rows)| rows).sum();
    assert!(
        found.iter().all(|(node, _)| node != "Seq Scan"),
        "{what}: a sequential scan of the cases: {found:?}"
    );
    assert!(
        read <= bound,
        "{what}: read {read} rows of cases for a page (at most {bound}): {found:?}\n{explained:#}"
    );
    read
}

#[tokio::test]
async fn lists_read_a_page_not_the_history() {
    let db = TestDb::seeded("plans").await;
    let pool = db.pool().await;
    let department = Some("350205002-cgzd");
    insert(
        &pool,
        CLOSED,
        ("closed", "street"),
        department,
        Some("passed"),
    )
    .await;
    insert(&pool, 400, ("reported", "street"), None, None).await;
    insert(&pool, 300, ("in_progress", "street"), department, None).await;
    insert(
        &pool,
        200,
        ("checking", "street"),
        department,
        Some("pending"),
    )
    .await;
    // A few the district holds itself, and a department's few open ones among its closed history.
    insert(&pool, 40, ("in_progress", "district"), None, None).await;
    insert(
        &pool,
        8,
        ("dispatched", "street"),
        Some("350205002-szj"),
        None,
    )
    .await;
    insert(
        &pool,
        CLOSED / 4,
        ("closed", "street"),
        Some("350205002-szj"),
        Some("passed"),
    )
    .await;
    sqlx::query("ANALYZE cases").execute(&pool).await.unwrap();

    let open = |states: &[&str]| Filter {
        states: states.iter().map(|s| (*s).to_owned()).collect(),
        grid_prefixes: vec!["350205".into()],
        limit: PAGE,
        ..Default::default()
    };
    let bound = (PAGE * 4) as f64;
    // The console: the open cases of the district, first page and a later one.
    let live = [
        "reported",
        "accepted",
        "dispatched",
        "in_progress",
        "handled",
        "checking",
    ];
    reads_at_most(&pool, "open cases, first page", &open(&live), bound).await;
    let first = cases::list(&pool, &open(&["reported"])).await.unwrap();
    let after = first.len();
    assert_eq!(after, PAGE as usize);
    let ids: Vec<uuid::Uuid> =
        sqlx::query_scalar("SELECT id FROM cases WHERE state = 'reported' ORDER BY id")
            .fetch_all(&pool)
            .await
            .unwrap();
    let mut later = open(&["reported"]);
    later.after = Some(ids[250]);
    reads_at_most(&pool, "reported, a later page", &later, bound).await;
    // The console narrowed to a grid, and to a community: the grid's own range.
    let mut grid = open(&["in_progress"]);
    grid.grid_prefixes = vec![GRIDS[0].into()];
    reads_at_most(&pool, "in progress in one grid", &grid, bound).await;
    let mut community = open(&live);
    community.grid_prefixes = vec!["350205002006".into()];
    // At most a page of each (grid, state) range that holds cases: 2 grids, 3 such states.
    let ranges = (2 * 3 * PAGE) as f64;
    reads_at_most(&pool, "open states of one community", &community, ranges).await;
    let mut closed_in_community = open(&["closed"]);
    closed_in_community.grid_prefixes = vec!["350205002006".into()];
    reads_at_most(
        &pool,
        "closed in one community",
        &closed_in_community,
        bound,
    )
    .await;
    // The department's list (ListAssigned): its open cases, not the closed ones it handled.
    let mut assigned = open(&["dispatched", "in_progress"]);
    assigned.department = Some("350205002-cgzd".into());
    reads_at_most(&pool, "a department's work", &assigned, bound).await;
    assigned.department = Some("350205002-szj".into());
    reads_at_most(&pool, "a department's few open cases", &assigned, 40.0).await;
    // The cases the district holds itself, among the streets' open ones.
    let mut held = open(&live);
    held.owner_tier = Some("district".into());
    reads_at_most(&pool, "the district's own open cases", &held, 80.0).await;
    // The field app's tasks: pending checks and verifications of a grid.
    let tasks = Filter {
        states: vec!["checking".into(), "verifying".into()],
        grid_prefixes: vec![GRIDS[1].into()],
        pending_check: true,
        limit: 1000,
        ..Default::default()
    };
    reads_at_most(&pool, "field tasks", &tasks, 400.0).await;
    // A grid worker's whole grid, every state: a page of each state's range of the grid.
    let mut everything = open(&[]);
    everything.grid_prefixes = vec![GRIDS[2].into()];
    reads_at_most(&pool, "every state, one grid", &everything, bound).await;
    let listed = cases::list(&pool, &everything).await.unwrap();
    assert_eq!(listed.len(), PAGE as usize, "a full page of the grid");
    // The district's console without a state filter pages the primary key.
    reads_at_most(&pool, "every state, the district", &open(&[]), bound).await;

    // And each finds what it should: every match when they fit in the page.
    let whole = |mut filter: Filter| {
        filter.limit = 10_000;
        filter
    };
    for (what, filter, expected) in [
        (
            "the community's open cases",
            whole(community),
            "grid_code LIKE '350205002006%' AND state IN ('reported', 'accepted', 'dispatched', 'in_progress', 'handled', 'checking')",
        ),
        (
            "the department's few",
            whole(assigned),
            "department = '350205002-szj' AND state IN ('dispatched', 'in_progress')",
        ),
        (
            "the district's own",
            whole(held),
            "owner_tier = 'district' AND state <> 'closed'",
        ),
        (
            "the field tasks",
            whole(tasks),
            "grid_code = '350205002006002' AND state = 'checking'",
        ),
    ] {
        let listed = cases::list(&pool, &filter).await.unwrap().len();
        let counted: i64 =
            sqlx::query_scalar(&format!("SELECT count(*) FROM cases WHERE {expected}"))
                .fetch_one(&pool)
                .await
                .unwrap();
        assert_eq!(listed as i64, counted, "{what}");
        assert!(counted > 0, "{what}: nothing to find");
    }

    // The case count is read, not counted.
    let explained: sqlx::types::Json<Value> = sqlx::query_scalar(
        "EXPLAIN (ANALYZE, FORMAT JSON) SELECT coalesce(sum(cases), 0)::bigint FROM case_counts",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    let mut found = Vec::new();
    scans(&explained.0[0]["Plan"], &mut found);
    assert!(found.is_empty(), "the count reads cases: {found:?}");
}

#[tokio::test]
async fn the_duplicate_lookup_reads_the_cells_around_a_report_not_its_category() {
    let db = TestDb::seeded("plans_nearby").await;
    let pool = db.pool().await;
    // A district's worth of open reports of one category, spread over a 0.1° square: one per
    // ~3 m of a 300 x 300 lattice (90 000 cases).
    sqlx::query(
        "INSERT INTO cases (id, number, client_id, category_code, description, longitude, latitude,
                            grid_code, state, owner_tier, owner_org, urgency, reporter_id,
                            captured_at, reported_at, updated_at, version, snapshot)
         SELECT gen_random_uuid(), 'n-' || i || '-' || j, 'c-' || i || '-' || j, 'szcg-01-01', 'x',
                118.0 + i * 0.00033, 24.5 + j * 0.00033, '350205002006001', 'reported', 'street',
                '350205002000', 'URGENCY_NORMAL', 'gw', now(), now(), now(), 1, ''::bytea
         FROM generate_series(0, 299) AS i, generate_series(0, 299) AS j",
    )
    .execute(&pool)
    .await
    .unwrap();
    // Before any statistics (a new database, or autovacuum off) and after: the generic plan a
    // prepared statement settles on must read the cells either way.
    nearby_reads_the_cells(&pool, "without statistics").await;
    sqlx::query("ANALYZE cases").execute(&pool).await.unwrap();
    nearby_reads_the_cells(&pool, "with statistics").await;
}

async fn nearby_reads_the_cells(pool: &PgPool, when: &str) {
    // A 50 m box around a point inside the square.
    let explained = cases::explain_open_nearby(
        pool,
        "szcg-01-01",
        chrono::Utc::now() - chrono::Duration::hours(72),
        (118.05, 24.55),
        (0.00054, 0.00050),
    )
    .await
    .unwrap();
    let mut found = Vec::new();
    scans(&explained[0]["Plan"], &mut found);
    let read: f64 = found.iter().map(|(_, rows)| rows).sum();
    assert!(
        found.iter().all(|(node, _)| node != "Seq Scan"),
        "{when}: a sequential scan: {found:?}"
    );
    // The box spans at most 2 x 2 cells of ~100 m: about 4 x 9 x 9 cases, not 90 000.
    assert!(
        read <= 600.0,
        "{when}: read {read} rows: {found:?}\n{explained:#}"
    );
}
