//! Imports the real `seeds/` into a fresh scratch database, twice, and checks what landed.
//!
//! The server is taken from `WANGGE_TEST_DATABASE_URL` (default: the `postgres` database on
//! 127.0.0.1:5432); the scratch database is created from there and dropped at the end.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::{SystemTime, UNIX_EPOCH};

use chrono::NaiveDate;
use sqlx::postgres::{PgConnectOptions, PgPool};
use sqlx::{Connection, PgConnection};
use wangge_domain::calendar::WorkCalendar;
use wangge_domain::clock::Limit;
use wangge_domain::limits::{Stage, Urgency};
use wangge_proto as pb;
use wangge_seed::{Progress, Report, import, interior_point, load_grids};
use wangge_store::{registry, rules};

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
        "time_limits",
        "extension_limits",
        "skip_tier_rules",
        "workers",
        "calendar_days",
        "calendar_years",
        "working_hours",
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
            "time-limits.toml",
            "skip-tier.toml",
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
        // A calendar file also records its year as loaded.
        let year = u64::from(file.file.starts_with("calendar-"));
        assert_eq!(
            file.changed,
            file.imported as u64 + year,
            "{}: a first import inserts every row",
            file.file
        );
    }
    let before = table_counts(pool).await;
    check_rules(pool, &first).await;

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

    check_rule_files_are_followed(pool).await;
    check_working_hours_follow_their_file(pool).await;
    check_calendars_inherit(pool).await;
}

fn periods(calendar: &WorkCalendar, date: &str) -> Vec<String> {
    calendar
        .periods_on(day(date))
        .iter()
        .map(ToString::to_string)
        .collect()
}

/// The seeded hours of a file with a year are followed exactly: an entry of that org and year
/// the file does not list is deleted, one it lists is corrected; other orgs and years are left.
async fn check_working_hours_follow_their_file(pool: &PgPool) {
    sqlx::query(
        "INSERT INTO working_hours (org_code, valid_from, starts, ends) VALUES
             ('350200000000', '2026-06-01', '{08:00,15:00}', '{12:00,18:00}'),
             ('350200000000', '2027-06-01', '{08:00,15:00}', '{12:00,18:00}'),
             ('350205000000', '2026-06-01', '{08:00,15:00}', '{12:00,18:00}')",
    )
    .execute(pool)
    .await
    .unwrap();
    sqlx::query(
        "UPDATE working_hours SET ends = '{12:00,18:00}'
         WHERE org_code = '350200000000' AND valid_from = '2026-01-01'",
    )
    .execute(pool)
    .await
    .unwrap();
    let (again, _) = run_import(pool).await;
    assert_eq!(
        again.file("calendar-2026.toml").unwrap().changed,
        2,
        "one entry deleted, one corrected"
    );
    let left: Vec<(String, NaiveDate)> = sqlx::query_as(
        "SELECT org_code, valid_from FROM working_hours ORDER BY org_code, valid_from",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    assert_eq!(
        left,
        [
            ("350200000000".to_owned(), day("2026-01-01")),
            ("350200000000".to_owned(), day("2027-06-01")),
            ("350205000000".to_owned(), day("2026-06-01")),
        ]
    );
    let city = rules::calendar_for(pool, "350200000000").await.unwrap();
    assert_eq!(periods(&city, "2026-11-25"), ["08:30-12:00", "14:30-17:30"]);
    sqlx::query(
        "DELETE FROM working_hours WHERE (org_code, valid_from) IN
             (('350200000000', '2027-06-01'), ('350205000000', '2026-06-01'))",
    )
    .execute(pool)
    .await
    .unwrap();
}

fn day(s: &str) -> NaiveDate {
    s.parse().unwrap()
}

/// The rules of the command clock, as the store loads them.
async fn check_rules(pool: &PgPool, report: &Report) {
    let limits = report.file("time-limits.toml").unwrap();
    let (rules_in_db, extensions_in_db) = (
        count(pool, "SELECT count(*) FROM time_limits").await,
        count(pool, "SELECT count(*) FROM extension_limits").await,
    );
    assert_eq!((rules_in_db + extensions_in_db) as usize, limits.imported);
    let skips = report.file("skip-tier.toml").unwrap();
    assert_eq!(
        count(pool, "SELECT count(*) FROM skip_tier_rules").await as usize,
        skips.imported
    );

    let rules = rules::limit_rules(pool).await.unwrap();
    assert_eq!(rules.rules().len() as i64, rules_in_db);
    assert_eq!(rules.extensions().len() as i64, extensions_in_db);
    let normal = Urgency::Normal;
    assert_eq!(
        rules.limit_for(Stage::Handle, "szcg-01-01", normal),
        Some(Limit::working_hours(4)),
        "暴露垃圾"
    );
    assert_eq!(
        rules.limit_for(Stage::Handle, "szcg-02-02", normal),
        Some(Limit::working_days(5)),
        "the department default"
    );
    assert_eq!(
        rules.limit_for(Stage::Accept, "szcg-01-01", Urgency::Emergency),
        Some(Limit::minutes(5))
    );
    assert_eq!(
        rules.limit_for(Stage::Check, "shzl-01-02", normal),
        Some(Limit::working_hours(1))
    );
    assert!(rules.limit_for(Stage::Case, "shzl-01-02", normal).is_some());
    assert_eq!(
        rules.standard_extension("szcg-01-01"),
        Some(Limit::working_hours(4))
    );
    assert_eq!(
        rules.standard_extension("szcg-04-01"),
        Some(Limit::working_days(1)),
        "路面塌陷 takes 突发事件's"
    );
    assert_eq!(
        rules.standard_extension("shzl-03-01"),
        Some(Limit::working_days(5))
    );

    let skip = rules::skip_rules(pool).await.unwrap();
    assert_eq!(skip.rules().len(), skips.imported);
    assert!(
        skip.skips_street("szcg-04-04", Urgency::Urgent),
        "燃气管道泄漏"
    );
    assert!(!skip.skips_street("szcg-04-04", Urgency::Normal));
    assert!(skip.skips_street("szcg-04-01", Urgency::Emergency));
    assert!(skip.skips_street("shzl-02-05", normal), "群体性事件");
    assert!(!skip.skips_street("szcg-01-01", Urgency::Emergency));

    // The registry shows a category's limits from the rules: a normal case's.
    let categories = registry::categories(pool, Some("szcg")).await.unwrap();
    let garbage = categories.iter().find(|c| c.code == "szcg-01-01").unwrap();
    let limit = |amount, unit: pb::TimeUnit| {
        Some(pb::TimeLimit {
            amount,
            unit: unit as i32,
        })
    };
    assert_eq!(garbage.accept_limit, limit(20, pb::TimeUnit::Minutes));
    assert_eq!(garbage.handle_limit, limit(4, pb::TimeUnit::WorkingHours));
    let lamps = categories.iter().find(|c| c.code == "szcg-06-01").unwrap();
    assert_eq!(lamps.handle_limit, limit(1, pb::TimeUnit::WorkingDays));
}

/// A rule deleted from a clean rule file is deleted from the database; one the file still has is
/// corrected.
async fn check_rule_files_are_followed(pool: &PgPool) {
    sqlx::query(
        "INSERT INTO time_limits (stage, category_code, urgency, amount, unit)
         VALUES ('handle', 'szcg-01-01', 'urgent', 1, 'working_hours')",
    )
    .execute(pool)
    .await
    .unwrap();
    sqlx::query("UPDATE extension_limits SET amount = 9 WHERE category_code IS NULL")
        .execute(pool)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO skip_tier_rules (category_code, urgency) VALUES ('szcg-01', 'normal')",
    )
    .execute(pool)
    .await
    .unwrap();
    let (again, _) = run_import(pool).await;
    assert_eq!(again.file("time-limits.toml").unwrap().changed, 2);
    assert_eq!(again.file("skip-tier.toml").unwrap().changed, 1);
    let rules = rules::limit_rules(pool).await.unwrap();
    assert_eq!(
        rules.limit_for(Stage::Handle, "szcg-01-01", Urgency::Urgent),
        Some(Limit::working_hours(4))
    );
    assert_eq!(
        rules.standard_extension("shzl-03-01"),
        Some(Limit::working_days(5))
    );
    let skip = rules::skip_rules(pool).await.unwrap();
    assert!(!skip.skips_street("szcg-01-01", Urgency::Normal));
}

/// A community's calendar: the city's, overridden by its district's, street's and its own.
async fn check_calendars_inherit(pool: &PgPool) {
    // 霞阳社区 of 新阳街道, 海沧区.
    let community = "350205002006";
    let calendar = rules::calendar_for(pool, community).await.unwrap();
    assert!(!calendar.is_working_day(day("2026-10-01")), "国庆节");
    assert!(calendar.is_working_day(day("2026-10-10")), "国庆节调休");
    assert!(calendar.is_working_day(day("2026-11-25")));
    assert_eq!(calendar.covered_until(), Some(day("2026-12-31")));
    assert_eq!(calendar.years().iter().copied().collect::<Vec<_>>(), [2026]);
    // The city's office hours with the lunch break, from the seeds, on every day.
    let office = ["08:30-12:00", "14:30-17:30"];
    assert_eq!(periods(&calendar, "2026-11-25"), office);
    assert_eq!(
        periods(&calendar, "2025-06-01"),
        office,
        "before the first entry"
    );
    assert_eq!(
        calendar
            .period_changes()
            .map(|(from, _)| from)
            .collect::<Vec<_>>(),
        [day("2026-01-01")]
    );
    assert_eq!(
        calendar.working_day_length(),
        chrono::Duration::minutes(390)
    );

    // The street works on Oct 2 (its own entry beats the city's), the district rests on Nov 25,
    // and the community itself rests on Oct 10 (beating the city's make-up day).
    sqlx::query(
        "INSERT INTO calendar_days (org_code, day, kind, name) VALUES
             ('350205002000', '2026-10-02', 'workday', 'test'),
             ('350205000000', '2026-11-25', 'holiday', 'test'),
             ('350205002006', '2026-10-10', 'holiday', 'test')",
    )
    .execute(pool)
    .await
    .unwrap();
    sqlx::query("INSERT INTO calendar_years (org_code, year) VALUES ('350205000000', 2027)")
        .execute(pool)
        .await
        .unwrap();
    let calendar = rules::calendar_for(pool, community).await.unwrap();
    assert!(calendar.is_working_day(day("2026-10-02")));
    assert!(!calendar.is_working_day(day("2026-11-25")));
    assert!(!calendar.is_working_day(day("2026-10-10")));
    assert!(
        !calendar.is_working_day(day("2026-10-01")),
        "still the city's"
    );
    assert_eq!(calendar.covered_until(), Some(day("2027-12-31")));

    // Hours: the city keeps summer hours from June to October, the street its own from July.
    sqlx::query(
        "INSERT INTO working_hours (org_code, valid_from, starts, ends) VALUES
             ('350200000000', '2026-06-01', '{08:00,15:00}', '{12:00,18:00}'),
             ('350200000000', '2026-10-01', '{08:30,14:30}', '{12:00,17:30}'),
             ('350205002000', '2026-07-01', '{08:00}', '{20:00}')",
    )
    .execute(pool)
    .await
    .unwrap();
    let calendar = rules::calendar_for(pool, community).await.unwrap();
    assert_eq!(periods(&calendar, "2026-05-29"), office);
    assert_eq!(
        periods(&calendar, "2026-06-15"),
        ["08:00-12:00", "15:00-18:00"]
    );
    assert_eq!(periods(&calendar, "2026-07-01"), ["08:00-20:00"]);
    assert_eq!(
        periods(&calendar, "2026-11-25"),
        ["08:00-20:00"],
        "the street's, its entries having begun"
    );
    let other_street = rules::calendar_for(pool, "350205001001").await.unwrap();
    assert_eq!(
        periods(&other_street, "2026-07-01"),
        ["08:00-12:00", "15:00-18:00"]
    );
    assert_eq!(periods(&other_street, "2026-11-25"), office);

    // Another street of the district shares the district's day only; another district none.
    let other_street = rules::calendar_for(pool, "350205001001").await.unwrap();
    assert!(!other_street.is_working_day(day("2026-10-02")));
    assert!(!other_street.is_working_day(day("2026-11-25")));
    assert!(other_street.is_working_day(day("2026-10-10")));
    let siming = rules::calendar_for(pool, "350203001001").await.unwrap();
    assert!(siming.is_working_day(day("2026-11-25")));
    assert_eq!(siming.covered_until(), Some(day("2026-12-31")));
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
