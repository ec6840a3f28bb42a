//! Imports the real `seeds/` into a fresh scratch database, twice, and checks what landed.
//!
//! The server is taken from `WANGGE_TEST_DATABASE_URL` (default: the `postgres` database on
//! 127.0.0.1:5432); the scratch database is created from there and dropped at the end.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::{SystemTime, UNIX_EPOCH};

use sqlx::postgres::{PgConnectOptions, PgPool};
use sqlx::{Connection, PgConnection};
use wangge_seed::{Progress, Report, import, interior_point, load_grids};

fn seeds_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../seeds")
}

fn admin_options() -> PgConnectOptions {
    let url = std::env::var("WANGGE_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned());
    PgConnectOptions::from_str(&url).unwrap()
}

/// The org codes of `orgs.csv` that occur once, with their level.
fn unique_orgs() -> HashMap<String, String> {
    let text = std::fs::read_to_string(seeds_dir().join("orgs.csv")).unwrap();
    let mut counts: HashMap<String, (usize, String)> = HashMap::new();
    for line in text.lines().skip(1) {
        let fields: Vec<&str> = line.split(',').collect();
        let entry = counts
            .entry(fields[0].to_owned())
            .or_insert((0, fields[2].to_owned()));
        entry.0 += 1;
    }
    counts
        .into_iter()
        .filter(|(_, (n, _))| *n == 1)
        .map(|(code, (_, level))| (code, level))
        .collect()
}

async fn count(pool: &PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(pool).await.unwrap()
}

async fn table_counts(pool: &PgPool) -> Vec<i64> {
    let mut counts = Vec::new();
    for table in [
        "orgs",
        "grids",
        "departments",
        "categories",
        "workers",
        "calendar_days",
    ] {
        counts.push(count(pool, &format!("SELECT count(*) FROM {table}")).await);
    }
    counts
}

async fn run_import(pool: &PgPool) -> (Report, Vec<String>) {
    let mut finished = Vec::new();
    let report = import(pool, &seeds_dir(), &mut |p| {
        if let Progress::Finished(file) = p {
            finished.push(file.file);
        }
    })
    .await
    .unwrap();
    (report, finished)
}

async fn check(pool: &PgPool) {
    let (first, finished) = run_import(pool).await;
    assert_eq!(
        finished,
        [
            "orgs.csv",
            "grids/350203000000.geojson",
            "grids/350205000000.geojson",
            "departments.toml",
            "categories.toml",
            "workers.toml",
            "calendar-2026.toml"
        ]
    );

    // The five rows with duplicated codes, each reported, none imported.
    let problems: Vec<String> = first.problems().map(ToString::to_string).collect();
    assert_eq!(
        problems,
        [
            "orgs.csv:187: duplicate code 350206003024 (also on line 188)",
            "orgs.csv:188: duplicate code 350206003024 (also on line 187)",
            "orgs.csv:219: duplicate code 350211002001 (also on lines 220, 221)",
            "orgs.csv:220: duplicate code 350211002001 (also on lines 219, 221)",
            "orgs.csv:221: duplicate code 350211002001 (also on lines 219, 220)",
        ]
    );
    let orgs = first.file("orgs.csv").unwrap();
    assert_eq!((orgs.imported, orgs.rejected), (433, 5));
    assert_eq!(
        count(
            pool,
            "SELECT count(*) FROM orgs WHERE code IN ('350206003024', '350211002001')"
        )
        .await,
        0
    );

    // The whole tree above the communities.
    assert_eq!(
        count(pool, "SELECT count(*) FROM orgs WHERE level = 'district'").await,
        6
    );
    assert_eq!(
        count(pool, "SELECT count(*) FROM orgs WHERE level = 'street'").await,
        54
    );

    // Every community of 海沧 and 思明 (none of them is duplicated).
    let unique = unique_orgs();
    for prefix in ["350205", "350203"] {
        let expected = unique
            .iter()
            .filter(|(c, l)| c.starts_with(prefix) && *l == "community")
            .count() as i64;
        assert!(expected > 40, "{prefix}: {expected}");
        let sql = format!(
            "SELECT count(*) FROM orgs WHERE level = 'community' AND code LIKE '{prefix}%'"
        );
        assert_eq!(count(pool, &sql).await, expected, "{prefix}");
    }

    // Every grid, with its boundary, and a worker in each.
    let grids = load_grids(&seeds_dir()).unwrap();
    assert_eq!(
        count(pool, "SELECT count(*) FROM grids").await,
        grids.len() as i64
    );
    assert_eq!(
        first
            .files
            .iter()
            .filter(|f| f.file.starts_with("grids/"))
            .map(|f| f.imported)
            .sum::<usize>(),
        grids.len()
    );
    let xiayang = grids
        .iter()
        .find(|g| g.code.as_str() == "350205002006001")
        .unwrap();
    let (lon, lat) = interior_point(xiayang);
    let inside: bool = sqlx::query_scalar(
        "SELECT (boundary->'coordinates'->0->0->>0)::float8 < $1 AND (boundary->'coordinates'->0->2->>0)::float8 > $1
            AND (boundary->'coordinates'->0->0->>1)::float8 < $2 AND (boundary->'coordinates'->0->2->>1)::float8 > $2
         FROM grids WHERE code = '350205002006001'",
    )
    .bind(lon)
    .bind(lat)
    .fetch_one(pool)
    .await
    .unwrap();
    assert!(inside, "({lon}, {lat})");
    assert_eq!(
        count(
            pool,
            "SELECT count(*) FROM workers WHERE role = 'grid_worker'"
        )
        .await,
        grids.len() as i64
    );

    // Nothing else was refused.
    for file in &first.files[1..] {
        assert_eq!(file.rejected, 0, "{}", file.file);
        assert_eq!(
            file.changed, file.imported as u64,
            "{}: a first import inserts every row",
            file.file
        );
    }
    let before = table_counts(pool).await;

    // A second import: same report, nothing changed.
    let (second, _) = run_import(pool).await;
    for (a, b) in first.files.iter().zip(&second.files) {
        assert_eq!(
            (&a.file, a.imported, a.rejected, &a.problems),
            (&b.file, b.imported, b.rejected, &b.problems)
        );
        assert_eq!(b.changed, 0, "{}", b.file);
    }
    assert_eq!(table_counts(pool).await, before);
}

#[tokio::test]
async fn the_real_seeds_import_into_a_fresh_database_and_a_second_import_changes_nothing() {
    let admin = admin_options();
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let name = format!("seedtest_{}_{nanos}", std::process::id());
    let mut conn = PgConnection::connect_with(&admin).await.unwrap();
    sqlx::query(&format!("CREATE DATABASE \"{name}\""))
        .execute(&mut conn)
        .await
        .unwrap();

    let pool = wangge_store::connect(admin.clone().database(&name), 4)
        .await
        .unwrap();
    // Checks run in a task so that the database is dropped even when one fails.
    let outcome = tokio::spawn({
        let pool = pool.clone();
        async move { check(&pool).await }
    })
    .await;
    pool.close().await;
    sqlx::query(&format!("DROP DATABASE \"{name}\" WITH (FORCE)"))
        .execute(&mut conn)
        .await
        .unwrap();
    if let Err(e) = outcome {
        std::panic::resume_unwind(e.into_panic());
    }
}
