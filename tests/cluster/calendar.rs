//! The work calendar from outside, on virtual time: a case whose deadline runs past the last
//! loaded calendar year is flagged on its clocks and in `AdminService/GetStatus`, and a calendar
//! re-seeded by `wangge-seed` (other working periods, a district's holiday) applies after
//! `AdminService/ReloadGrids` without a restart.

use std::path::Path;

use chrono::{DateTime, Datelike, Duration as Span, NaiveDate, TimeZone, Utc, Weekday};
use wangge_proto as pb;
use wangge_proto::Tier;
use wangge_tests::cluster::as_actor;
use wangge_tests::fixtures::*;
use wangge_tests::{Cluster, TierClients, eventually, seeds_dir};
use wangge_tier::time::{ShiftedTime, TimeSource as _};

const ADMIN: &str = "admin-350205000000";
/// The org of the seeded city calendar, `seeds/calendar-2026.toml`.
const CITY: &str = "350200000000";
const DISTRICT: &str = "350205000000";

fn china() -> chrono::FixedOffset {
    chrono::FixedOffset::east_opt(8 * 3600).unwrap()
}

/// `hour:minute` China time on `date`.
fn china_at(date: NaiveDate, hour: u32, minute: u32) -> DateTime<Utc> {
    china()
        .from_local_datetime(&date.and_hms_opt(hour, minute, 0).unwrap())
        .unwrap()
        .with_timezone(&Utc)
}

fn china_date(at: DateTime<Utc>) -> NaiveDate {
    at.with_timezone(&china()).date_naive()
}

/// The first Monday on or after `date`.
fn monday_from(date: NaiveDate) -> NaiveDate {
    date.iter_days()
        .find(|d| d.weekday() == Weekday::Mon)
        .unwrap()
}

fn date(year: i32, month: u32, day: u32) -> NaiveDate {
    NaiveDate::from_ymd_opt(year, month, day).unwrap()
}

/// The clocks of a case at the street, which holds it: (current stage, whole case).
async fn street_clocks(
    clients: &TierClients,
    case: &pb::Case,
) -> (pb::ClockStanding, pb::ClockStanding) {
    let case = clients
        .cases(Tier::Street)
        .get_case(as_actor(
            STREET_OPERATOR,
            pb::GetCaseRequest {
                case_id: case.id.clone(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let clocks = case.clocks.unwrap_or_default();
    match (clocks.stage, clocks.case) {
        (Some(stage), Some(whole)) => (stage, whole),
        other => panic!("case {} lacks a clock: {other:?}", case.number),
    }
}

/// The deadline of a clock as China wall-clock time.
fn deadline(clock: &pb::ClockStanding) -> chrono::NaiveDateTime {
    let at = clock.deadline.unwrap();
    DateTime::from_timestamp(at.seconds, at.nanos as u32)
        .unwrap()
        .with_timezone(&china())
        .naive_local()
}

async fn reload(cluster: &Cluster) -> pb::ReloadGridsResponse {
    pb::admin_service_client::AdminServiceClient::new(cluster.street.channel().await)
        .reload_grids(as_actor(ADMIN, pb::ReloadGridsRequest {}))
        .await
        .unwrap()
        .into_inner()
}

#[tokio::test]
async fn a_deadline_past_the_last_loaded_year_is_flagged_on_the_case_and_in_the_status() {
    let time = ShiftedTime::new();
    // The last loaded year: 2026 from the seeds, or a later year when the tests run after early
    // December 2026, so that the first case below still ends inside it.
    let mut last_year = china_date(time.now()).year().max(2026);
    if china_at(monday_from(date(last_year, 12, 1)), 9, 0) <= time.now() {
        last_year += 1;
    }
    let cluster = Cluster::start_on_time(&time).await;
    let clients = cluster.clients().await;
    let pool = cluster.street.db.pool().await;
    // What wangge-seed records for calendar files of the years up to `last_year` (nothing new
    // while that is 2026).
    sqlx::query(
        "INSERT INTO calendar_years (org_code, year) SELECT $1, generate_series(2026, $2)
         ON CONFLICT DO NOTHING",
    )
    .bind(CITY)
    .bind(last_year)
    .execute(&pool)
    .await
    .unwrap();
    reload(&cluster).await;
    let until = format!("{last_year}-12-31");

    // Monday early in December: the whole case's 7 working days end in mid-December.
    time.advance_to(china_at(monday_from(date(last_year, 12, 1)), 9, 0));
    let early = report_case(&clients, GRID).await;
    clients.converged(&early.id, 1).await;
    let (stage, whole) = street_clocks(&clients, &early).await;
    assert_eq!(stage.stage(), pb::Stage::Accept);
    assert!(
        !stage.beyond_calendar,
        "minutes need no calendar: {stage:?}"
    );
    assert!(!whole.beyond_calendar, "{whole:?}");
    assert_eq!(deadline(&whole).year(), last_year);

    // The Monday of the year's last week: 7 working days run into a year without a calendar.
    time.advance_to(china_at(monday_from(date(last_year, 12, 25)), 9, 0));
    let late = report_case(&clients, GRID).await;
    clients.converged(&late.id, 1).await;
    let (stage, whole) = street_clocks(&clients, &late).await;
    assert!(!stage.beyond_calendar, "{stage:?}");
    assert!(whole.beyond_calendar, "{whole:?}");
    assert_eq!(deadline(&whole).year(), last_year + 1, "{whole:?}");
    // Counted on ordinary weekdays: Monday to Friday, 9 calendar days on.
    assert_eq!(
        deadline(&whole).date(),
        monday_from(date(last_year, 12, 25)) + Span::days(9),
        "{whole:?}"
    );
    // The early case, three weeks on, still spans only the loaded year.
    let (_, whole) = street_clocks(&clients, &early).await;
    assert!(!whole.beyond_calendar, "{whole:?}");

    // The status counts the flagged case after a scan, and says to load next year's calendar.
    let status = eventually(
        "the scan to count the flagged case",
        std::time::Duration::from_secs(20),
        || async {
            let status = tier_status(&cluster.street.channel().await).await;
            let clock = status.clock.clone().unwrap_or_default();
            (clock.open_cases >= 2).then_some(status)
        },
    )
    .await;
    let clock = status.clock.clone().unwrap();
    assert_eq!(clock.calendar_until, until, "{clock:?}");
    assert_eq!(clock.beyond_calendar, 1, "only the late case: {clock:?}");
    let flagged = format!("calendar: 1 open cases have deadlines past {until}");
    assert!(
        status.warnings.iter().any(|w| w.starts_with(&flagged)),
        "{:?}",
        status.warnings
    );
    assert!(
        status
            .warnings
            .iter()
            .any(|w| w.contains(&format!("ends {until}; load next year's"))),
        "{:?}",
        status.warnings
    );

    // Once next year's calendar is loaded and the tier reloads, nothing is flagged any more.
    sqlx::query("INSERT INTO calendar_years (org_code, year) VALUES ($1, $2)")
        .bind(CITY)
        .bind(last_year + 1)
        .execute(&pool)
        .await
        .unwrap();
    reload(&cluster).await;
    let (_, whole) = street_clocks(&clients, &late).await;
    assert!(!whole.beyond_calendar, "{whole:?}");
    let clock = eventually(
        "a scan on the new calendar",
        std::time::Duration::from_secs(20),
        || async {
            let status = tier_status(&cluster.street.channel().await).await;
            let clock = status.clock.unwrap_or_default();
            (clock.beyond_calendar == 0).then_some(clock)
        },
    )
    .await;
    assert_eq!(clock.calendar_until, format!("{}-12-31", last_year + 1));
    cluster.stop().await;
}

/// Copies the files of `from` into `to`, subdirectories included.
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

#[tokio::test]
async fn a_reseeded_calendar_applies_after_a_reload_without_a_restart() {
    let time = ShiftedTime::new();
    let monday = monday_from(china_date(time.now()) + Span::days(1));
    let wednesday = monday + Span::days(2);
    let cluster = Cluster::start_on_time(&time).await;
    let clients = cluster.clients().await;
    time.advance_to(china_at(monday, 11, 0));
    let case = report_case(&clients, GRID).await;
    clients.converged(&case.id, 1).await;

    // The whole case: 7 working days of 6.5 hours (08:30-12:00, 14:30-17:30), due the next
    // Wednesday at 11:00.
    let (_, whole) = street_clocks(&clients, &case).await;
    let day = |hours: f64| (hours * 3600.0) as i64;
    assert!(
        (day(7.0 * 6.5) - 60..=day(7.0 * 6.5)).contains(&whole.left_seconds),
        "{whole:?}"
    );
    let due = (monday + Span::days(9)).and_hms_opt(11, 0, 0).unwrap();
    assert!(
        (due..due + Span::minutes(1)).contains(&deadline(&whole)),
        "{whole:?}"
    );

    // The city moves to 08:00-12:00 and 13:00-17:00, and the district rests on Wednesday: what
    // a city edits in seeds/ and imports with wangge-seed into the street's database.
    let seeds = tempfile::tempdir().unwrap();
    copy_dir(&seeds_dir(), seeds.path());
    let city_file = seeds.path().join("calendar-2026.toml");
    let text = std::fs::read_to_string(&city_file).unwrap();
    let office = r#"periods = ["08:30-12:00", "14:30-17:30"]"#;
    assert!(text.contains(office), "the seeded hours changed: {text}");
    std::fs::write(
        &city_file,
        text.replace(office, r#"periods = ["08:00-12:00", "13:00-17:00"]"#),
    )
    .unwrap();
    let year = wednesday.year();
    let district_file = format!("calendar-{year}-{DISTRICT}.toml");
    std::fs::write(
        seeds.path().join(&district_file),
        format!(
            "org_code = \"{DISTRICT}\"\nyear = {year}\n\
             day = [ {{ date = {wednesday}, kind = \"holiday\", name = \"区休息日\" }} ]\n"
        ),
    )
    .unwrap();
    let pool = cluster.street.db.pool().await;
    let report = wangge_seed::import(&pool, seeds.path(), &mut |_| {})
        .await
        .unwrap();
    let city = report.file("calendar-2026.toml").unwrap();
    assert_eq!((city.changed, city.problems.len()), (1, 0), "{city:?}");
    let district = report.file(&district_file).unwrap();
    assert_eq!(
        (district.imported, district.problems.len()),
        (1, 0),
        "{district:?}"
    );

    // The running tier still counts on the calendar it loaded.
    let (_, before) = street_clocks(&clients, &case).await;
    assert_eq!(deadline(&before), deadline(&whole));

    // Reloaded without a restart: days of 8 working hours, and the next Wednesday off, so due
    // the next Thursday at 11:00.
    let reloaded = reload(&cluster).await;
    assert!(reloaded.calendars > 0, "{reloaded:?}");
    let (_, after) = street_clocks(&clients, &case).await;
    assert!(
        (day(7.0 * 8.0) - 60..=day(7.0 * 8.0)).contains(&after.left_seconds),
        "{after:?}"
    );
    let due = (monday + Span::days(10)).and_hms_opt(11, 0, 0).unwrap();
    assert!(
        (due..due + Span::minutes(1)).contains(&deadline(&after)),
        "{after:?}"
    );
    cluster.stop().await;
}
