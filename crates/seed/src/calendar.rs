//! `calendar-<year>.toml`: the work calendar (工作日历) of an org, as exceptions to the
//! Monday-to-Friday week: weekdays off (holiday) and 调休 make-up working days on weekends
//! (workday), and the working periods of a day (作息时间, `hours`: office hours with the lunch
//! break) from a date on. The calendar of an org applies to every org below it.
//!
//! The file's `year` is recorded as loaded for its org (`calendar_years`), even when it lists no
//! day: a deadline is flagged when it runs past the loaded years, and a year without exceptions
//! is still a year whose schedule is known. A file without `year` loads the years of its days.
//!
//! An `hours` entry applies from its date until the org's next entry, in this file or a later
//! year's (summer hours from June, the ordinary ones again from October). Unlike the days, the
//! hours of a file that has a `year` and imports them without a problem are followed exactly:
//! an entry of that org and year deleted from the file is deleted from the database, since a
//! stale entry would silently keep its periods until the next one.
//!
//! ```toml
//! org_code = "350200000000"
//! year = 2026
//! hours = [
//!   { from = 2026-01-01, periods = ["08:30-12:00", "14:30-17:30"], name = "作息时间" },
//! ]
//! day = [
//!   { date = 2026-10-01, kind = "holiday", name = "国庆节" },
//!   { date = 2026-10-10, kind = "workday", name = "国庆节调休" },
//! ]
//! ```

use std::collections::BTreeSet;

use chrono::{Datelike, NaiveDate, NaiveTime, Weekday};
use serde::Deserialize;
use sqlx::PgConnection;
use wangge_domain::OrgCode;
use wangge_domain::OrgLevel;
use wangge_domain::calendar::{DayKind, WorkingPeriod, day_periods};

use crate::Known;
use crate::source::{Parsed, TomlFile, TomlRow, duplicate_message, duplicates};

/// One validated calendar day.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CalendarRow {
    pub line: usize,
    pub org: OrgCode,
    pub date: NaiveDate,
    pub kind: DayKind,
    pub name: String,
}

/// The working periods of a day of an org from a date on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HoursRow {
    pub line: usize,
    pub org: OrgCode,
    pub from: NaiveDate,
    /// Sorted, non-overlapping, never empty.
    pub periods: Vec<WorkingPeriod>,
    pub name: String,
}

/// One validated row of a calendar file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Entry {
    Day(CalendarRow),
    Hours(HoursRow),
}

/// The years a file loads for its org.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CalendarYears {
    pub org: OrgCode,
    pub years: BTreeSet<i32>,
    /// The file has a `year` and lists `hours` without a refused entry: the org's hours from a
    /// date of that year are exactly the file's.
    pub hours_followed: Option<i32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DayToml {
    /// A TOML date (`2026-10-01`) or a string (`"2026-10-01"`).
    date: toml::Value,
    kind: String,
    #[serde(default)]
    name: String,
}

fn date(value: &toml::Value) -> Result<NaiveDate, String> {
    let text = match value {
        toml::Value::Datetime(dt) if dt.date.is_some() && dt.time.is_none() => dt.to_string(),
        toml::Value::String(s) => s.clone(),
        other => return Err(format!("date {other} is not a date")),
    };
    text.parse()
        .map_err(|_| format!("date {text:?} is not a date (YYYY-MM-DD)"))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HoursToml {
    /// A TOML date or a string, as a day's.
    from: toml::Value,
    /// `"08:30-12:00"`, one string per period.
    periods: Vec<String>,
    #[serde(default)]
    name: String,
}

fn validate_hours(hours: HoursToml, org: OrgCode, year: Option<i32>) -> Result<HoursRow, String> {
    let from = date(&hours.from)?;
    if let Some(year) = year
        && from.year() != year
    {
        return Err(format!("{from} is not in {year}, the year of the file"));
    }
    let periods = hours
        .periods
        .iter()
        .map(|p| p.parse::<WorkingPeriod>())
        .collect::<Result<Vec<_>, _>>()
        .and_then(day_periods)
        .map_err(|e| format!("hours from {from}: {e}"))?;
    Ok(HoursRow {
        line: 0,
        org,
        from,
        periods,
        name: hours.name.trim().to_owned(),
    })
}

fn validate(day: DayToml, org: OrgCode, year: Option<i32>) -> Result<CalendarRow, String> {
    let date = date(&day.date)?;
    if let Some(year) = year
        && date.year() != year
    {
        return Err(format!("{date} is not in {year}, the year of the file"));
    }
    let kind: DayKind = day.kind.parse().map_err(|e| format!("{e}"))?;
    let weekend = matches!(date.weekday(), Weekday::Sat | Weekday::Sun);
    // A weekend day listed as a holiday changes nothing and is allowed (it names the holiday);
    // a weekday listed as a workday is surely a mistake for a holiday or for another date.
    if kind == DayKind::Workday && !weekend {
        return Err(format!(
            "{date} is a {}: a make-up working day (workday) must be a Saturday or Sunday",
            date.weekday()
        ));
    }
    Ok(CalendarRow {
        line: 0,
        org,
        date,
        kind,
        name: day.name.trim().to_owned(),
    })
}

/// The days and hours of one file, and the years it loads (none when its org or year is
/// refused).
pub(crate) fn parse(
    file_name: &str,
    text: &str,
    known: &Known,
) -> (Parsed<Entry>, Option<CalendarYears>) {
    let mut parsed = Parsed::new(file_name);
    let Some(mut file) = TomlFile::parse(&mut parsed, text) else {
        return (parsed.finish(), None);
    };
    let org = match file.take("org_code") {
        None => Err((1, "org_code is missing".to_owned())),
        Some((line, value)) => match file.decode::<String>(line, value) {
            Err(e) => Err(e),
            Ok(code) => match code.parse::<OrgCode>() {
                Err(e) => Err((line, format!("malformed org_code: {e}"))),
                Ok(org) => {
                    let all = [
                        OrgLevel::City,
                        OrgLevel::District,
                        OrgLevel::Street,
                        OrgLevel::Community,
                    ];
                    match known.org_problem("org", &org, &all) {
                        Some(problem) => Err((line, problem)),
                        None => Ok(org),
                    }
                }
            },
        },
    };
    let year = match file.take("year") {
        None => Ok(None),
        Some((line, value)) => file.decode::<i32>(line, value).map(Some),
    };
    // Problems of the hours so far (not an array …) keep the stored hours as they are.
    let problems_before = parsed.problems.len();
    let hours_listed = file.has("hours");
    let hour_rows = file.rows(&mut parsed, "hours");
    let hours_clean = hours_listed && parsed.problems.len() == problems_before;
    let rows = file.rows(&mut parsed, "day");
    let (org, year) = match (org, year) {
        (Ok(org), Ok(year)) => (org, year),
        (Err((line, message)), _) | (_, Err((line, message))) => {
            // Without its org (or year) no day of the file can be placed: all are refused.
            parsed.problem(line, format!("{message}: no day imported"));
            parsed.rejected += rows.len() + hour_rows.len();
            file.finish(&mut parsed);
            return (parsed.finish(), None);
        }
    };
    let hours_followed = hours(&mut parsed, &file, hour_rows, org, year) && hours_clean;
    let mut days = Vec::new();
    for row in rows {
        let line = row.line;
        match file.decode_row::<DayToml>(row) {
            Ok(day) => days.push((line, day)),
            Err((at, message)) => parsed.reject(at, message),
        }
    }
    file.finish(&mut parsed);

    let mut candidates = Vec::new();
    for (line, day) in days {
        match validate(day, org, year) {
            Ok(row) => candidates.push(CalendarRow { line, ..row }),
            Err(message) => parsed.reject(line, message),
        }
    }
    let keys: Vec<String> = candidates.iter().map(|d| d.date.to_string()).collect();
    let dups = duplicates(
        keys.iter()
            .zip(&candidates)
            .map(|(k, d)| (k.as_str(), d.line)),
    );
    for (key, row) in keys.iter().zip(candidates) {
        match dups.get(key) {
            Some(lines) => parsed.reject(row.line, duplicate_message("date", key, lines, row.line)),
            None => parsed.rows.push(Entry::Day(row)),
        }
    }
    let years = match year {
        Some(year) => BTreeSet::from([year]),
        None => parsed
            .rows
            .iter()
            .filter_map(|entry| match entry {
                Entry::Day(day) => Some(day.date.year()),
                Entry::Hours(_) => None,
            })
            .collect(),
    };
    parsed.rows.sort_by_key(|entry| match entry {
        Entry::Day(day) => day.line,
        Entry::Hours(hours) => hours.line,
    });
    let years = CalendarYears {
        org,
        years,
        hours_followed: year.filter(|_| hours_followed),
    };
    (parsed.finish(), Some(years))
}

/// Validates the `hours` entries of a file into `parsed`; whether none was refused.
fn hours<'i>(
    parsed: &mut Parsed<Entry>,
    file: &TomlFile<'i>,
    rows: Vec<TomlRow<'i>>,
    org: OrgCode,
    year: Option<i32>,
) -> bool {
    let rejected = parsed.rejected;
    let mut candidates = Vec::new();
    for row in rows {
        let line = row.line;
        match file
            .decode_row::<HoursToml>(row)
            .and_then(|hours| validate_hours(hours, org, year).map_err(|m| (line, m)))
        {
            Ok(row) => candidates.push(HoursRow { line, ..row }),
            Err((at, message)) => parsed.reject(at, message),
        }
    }
    let keys: Vec<String> = candidates.iter().map(|h| h.from.to_string()).collect();
    let dups = duplicates(
        keys.iter()
            .zip(&candidates)
            .map(|(k, h)| (k.as_str(), h.line)),
    );
    for (key, row) in keys.iter().zip(candidates) {
        match dups.get(key) {
            Some(lines) => parsed.reject(
                row.line,
                duplicate_message("hours from", key, lines, row.line),
            ),
            None => parsed.rows.push(Entry::Hours(row)),
        }
    }
    parsed.rejected == rejected
}

/// Upserts the days and hours of one file and records its years; returns the number of rows
/// inserted, changed or deleted.
pub(crate) async fn write(
    tx: &mut PgConnection,
    entries: &[Entry],
    years: Option<&CalendarYears>,
) -> Result<u64, sqlx::Error> {
    let rows: Vec<&CalendarRow> = entries
        .iter()
        .filter_map(|entry| match entry {
            Entry::Day(day) => Some(day),
            Entry::Hours(_) => None,
        })
        .collect();
    let orgs: Vec<&str> = rows.iter().map(|d| d.org.as_str()).collect();
    let days: Vec<NaiveDate> = rows.iter().map(|d| d.date).collect();
    let kinds: Vec<&str> = rows.iter().map(|d| d.kind.as_str()).collect();
    let names: Vec<&str> = rows.iter().map(|d| d.name.as_str()).collect();
    let done = sqlx::query(
        "INSERT INTO calendar_days (org_code, day, kind, name)
         SELECT * FROM UNNEST($1::text[], $2::date[], $3::text[], $4::text[])
         ON CONFLICT (org_code, day) DO UPDATE SET kind = EXCLUDED.kind, name = EXCLUDED.name
         WHERE (calendar_days.kind, calendar_days.name) IS DISTINCT FROM (EXCLUDED.kind, EXCLUDED.name)",
    )
    .bind(&orgs)
    .bind(&days)
    .bind(&kinds)
    .bind(&names)
    .execute(&mut *tx)
    .await?;
    let mut changed = done.rows_affected();
    for entry in entries {
        if let Entry::Hours(hours) = entry {
            changed += write_hours(tx, hours).await?;
        }
    }
    let Some(years) = years else {
        return Ok(changed);
    };
    if let Some(year) = years.hours_followed {
        let kept: Vec<NaiveDate> = entries
            .iter()
            .filter_map(|entry| match entry {
                Entry::Hours(hours) => Some(hours.from),
                Entry::Day(_) => None,
            })
            .collect();
        let pruned = sqlx::query(
            "DELETE FROM working_hours
             WHERE org_code = $1 AND valid_from >= make_date($2, 1, 1)
               AND valid_from < make_date($2 + 1, 1, 1) AND valid_from <> ALL($3)",
        )
        .bind(years.org.as_str())
        .bind(year)
        .bind(&kept)
        .execute(&mut *tx)
        .await?;
        changed += pruned.rows_affected();
    }
    let list: Vec<i32> = years.years.iter().copied().collect();
    let loaded = sqlx::query(
        "INSERT INTO calendar_years (org_code, year)
         SELECT $1, year FROM UNNEST($2::int4[]) AS y(year)
         ON CONFLICT (org_code, year) DO NOTHING",
    )
    .bind(years.org.as_str())
    .bind(&list)
    .execute(&mut *tx)
    .await?;
    Ok(changed + loaded.rows_affected())
}

async fn write_hours(tx: &mut PgConnection, hours: &HoursRow) -> Result<u64, sqlx::Error> {
    let starts: Vec<NaiveTime> = hours.periods.iter().map(WorkingPeriod::start).collect();
    let ends: Vec<NaiveTime> = hours.periods.iter().map(WorkingPeriod::end).collect();
    let done = sqlx::query(
        "INSERT INTO working_hours (org_code, valid_from, starts, ends, name)
         VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (org_code, valid_from) DO UPDATE
             SET starts = EXCLUDED.starts, ends = EXCLUDED.ends, name = EXCLUDED.name
         WHERE (working_hours.starts, working_hours.ends, working_hours.name)
             IS DISTINCT FROM (EXCLUDED.starts, EXCLUDED.ends, EXCLUDED.name)",
    )
    .bind(hours.org.as_str())
    .bind(hours.from)
    .bind(&starts)
    .bind(&ends)
    .bind(&hours.name)
    .execute(&mut *tx)
    .await?;
    Ok(done.rows_affected())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn known() -> Known {
        let mut known = Known::default();
        known
            .orgs
            .insert("350200000000".parse().unwrap(), OrgLevel::City);
        known
    }

    fn days(parsed: &Parsed<Entry>) -> Vec<&CalendarRow> {
        parsed
            .rows
            .iter()
            .filter_map(|entry| match entry {
                Entry::Day(day) => Some(day),
                Entry::Hours(_) => None,
            })
            .collect()
    }

    fn hours(parsed: &Parsed<Entry>) -> Vec<&HoursRow> {
        parsed
            .rows
            .iter()
            .filter_map(|entry| match entry {
                Entry::Hours(hours) => Some(hours),
                Entry::Day(_) => None,
            })
            .collect()
    }

    fn messages(parsed: &Parsed<Entry>) -> Vec<(usize, String)> {
        parsed
            .problems
            .iter()
            .map(|p| (p.line, p.message.clone()))
            .collect()
    }

    #[test]
    fn holidays_and_make_up_days_are_read_with_their_lines() {
        let text = "org_code = \"350200000000\"\nyear = 2026\nday = [\n\
                    { date = 2026-10-01, kind = \"holiday\", name = \"国庆节\" },\n\
                    { date = \"2026-10-10\", kind = \"workday\", name = \"国庆节调休\" },\n\
                    { date = 2026-10-03, kind = \"holiday\", name = \"国庆节\" },\n]\n";
        let (parsed, years) = parse("calendar-2026.toml", text, &known());
        assert!(parsed.problems.is_empty(), "{:?}", parsed.problems);
        assert_eq!(parsed.rows.len(), 3, "a weekend holiday is allowed");
        assert_eq!(
            years,
            Some(CalendarYears {
                org: "350200000000".parse().unwrap(),
                years: BTreeSet::from([2026]),
                hours_followed: None,
            })
        );
        let days = days(&parsed);
        assert_eq!(days[1].line, 5);
        assert_eq!(days[1].kind, DayKind::Workday);
        assert_eq!(days[1].date, NaiveDate::from_ymd_opt(2026, 10, 10).unwrap());
    }

    #[test]
    fn bad_days_are_refused() {
        let text = "org_code = \"350200000000\"\nyear = 2026\nday = [\n\
                    { date = 2026-10-08, kind = \"workday\" },\n\
                    { date = 2027-01-01, kind = \"holiday\" },\n\
                    { date = 2026-10-01, kind = \"off\" },\n\
                    { date = \"2026-13-01\", kind = \"holiday\" },\n\
                    { date = 2026-10-02, kind = \"holiday\" },\n\
                    { date = 2026-10-02, kind = \"holiday\" },\n\
                    { kind = \"holiday\" },\n]\n";
        let (parsed, years) = parse("calendar-2026.toml", text, &known());
        assert!(parsed.rows.is_empty());
        assert_eq!(
            years.unwrap().years,
            BTreeSet::from([2026]),
            "the year is loaded though every day was refused"
        );
        let got = messages(&parsed);
        assert_eq!(
            got.iter().map(|(l, _)| *l).collect::<Vec<_>>(),
            [4, 5, 6, 7, 8, 9, 10],
            "{got:?}"
        );
        assert!(got[0].1.contains("must be a Saturday or Sunday"), "{got:?}");
        assert!(got[1].1.contains("not in 2026"), "{got:?}");
        assert!(got[2].1.contains("unknown day kind"), "{got:?}");
        assert!(got[3].1.contains("is not a date"), "{got:?}");
        assert_eq!(got[4].1, "duplicate date 2026-10-02 (also on line 9)");
        assert!(got[6].1.contains("missing field `date`"), "{got:?}");
    }

    #[test]
    fn a_year_without_exceptions_is_loaded_and_without_a_year_the_days_say_which() {
        let (parsed, years) = parse(
            "calendar-2031.toml",
            "org_code = \"350200000000\"\nyear = 2031\nday = []\n",
            &known(),
        );
        assert!(parsed.rows.is_empty() && parsed.problems.is_empty());
        assert_eq!(years.unwrap().years, BTreeSet::from([2031]));
        let (_, years) = parse(
            "calendar-extra.toml",
            "org_code = \"350200000000\"\nday = [\n\
             { date = 2026-10-01, kind = \"holiday\" },\n\
             { date = 2027-10-01, kind = \"holiday\" },\n]\n",
            &known(),
        );
        assert_eq!(years.unwrap().years, BTreeSet::from([2026, 2027]));
    }

    #[test]
    fn working_hours_are_read_sorted_and_followed_when_clean() {
        let text = "org_code = \"350200000000\"\nyear = 2026\nhours = [\n\
                    { from = 2026-01-01, periods = [\"14:30-17:30\", \"08:30-12:00\"], name = \"作息时间\" },\n\
                    { from = \"2026-06-01\", periods = [\"08:00-12:00\", \"15:00-18:00\"], name = \"夏季\" },\n]\n\
                    day = [\n{ date = 2026-10-01, kind = \"holiday\" },\n]\n";
        let (parsed, years) = parse("calendar-2026.toml", text, &known());
        assert!(parsed.problems.is_empty(), "{:?}", parsed.problems);
        assert_eq!(parsed.rows.len(), 3, "two hours and a day are imported");
        assert_eq!(years.unwrap().hours_followed, Some(2026));
        let hours = hours(&parsed);
        assert_eq!(
            hours
                .iter()
                .map(|h| (h.line, h.from.to_string()))
                .collect::<Vec<_>>(),
            [(4, "2026-01-01".to_owned()), (5, "2026-06-01".to_owned())]
        );
        assert_eq!(
            hours[0]
                .periods
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>(),
            ["08:30-12:00", "14:30-17:30"],
            "sorted by start"
        );
        assert_eq!(hours[1].name, "夏季");
    }

    #[test]
    fn bad_working_hours_are_refused_and_then_nothing_is_followed() {
        let text = "org_code = \"350200000000\"\nyear = 2026\nhours = [\n\
                    { from = 2026-01-01, periods = [\"08:30-12:00\", \"14:30-17:30\"] },\n\
                    { from = 2027-01-01, periods = [\"08:30-12:00\"] },\n\
                    { from = 2026-03-01, periods = [] },\n\
                    { from = 2026-04-01, periods = [\"08:30-12:00\", \"11:00-17:00\"] },\n\
                    { from = 2026-05-01, periods = [\"8.30-12\"] },\n\
                    { from = 2026-06-01, periods = [\"12:00-08:30\"] },\n\
                    { from = 2026-07-01, periods = [\"08:30-12:00\"], lunch = \"12:00\" },\n\
                    { from = 2026-08-01, periods = [\"08:30-12:00\"] },\n\
                    { from = 2026-08-01, periods = [\"09:00-12:00\"] },\n]\n";
        let (parsed, years) = parse("calendar-2026.toml", text, &known());
        assert_eq!(hours(&parsed).len(), 1, "only the first entry");
        assert_eq!(years.unwrap().hours_followed, None);
        let got = messages(&parsed);
        assert_eq!(
            got.iter().map(|(l, _)| *l).collect::<Vec<_>>(),
            [5, 6, 7, 8, 9, 10, 11, 12],
            "{got:?}"
        );
        assert!(got[0].1.contains("not in 2026"), "{got:?}");
        assert!(got[1].1.contains("at least one working period"), "{got:?}");
        assert!(got[2].1.contains("overlap"), "{got:?}");
        assert!(got[3].1.contains("not HH:MM-HH:MM"), "{got:?}");
        assert!(got[4].1.contains("empty or runs backwards"), "{got:?}");
        assert!(got[5].1.contains("unknown field `lunch`"), "{got:?}");
        assert_eq!(
            got[6].1,
            "duplicate hours from 2026-08-01 (also on line 12)"
        );

        // Without a year, or without hours, the stored hours are left alone.
        let (_, years) = parse(
            "calendar-extra.toml",
            "org_code = \"350200000000\"\nhours = [\n\
             { from = 2026-01-01, periods = [\"08:30-12:00\"] },\n]\n",
            &known(),
        );
        assert_eq!(years.unwrap().hours_followed, None);
        let (_, years) = parse(
            "calendar-2027.toml",
            "org_code = \"350200000000\"\nyear = 2027\nday = []\n",
            &known(),
        );
        assert_eq!(years.unwrap().hours_followed, None);
        let (_, years) = parse(
            "calendar-2027.toml",
            "org_code = \"350200000000\"\nyear = 2027\nhours = []\n",
            &known(),
        );
        assert_eq!(
            years.unwrap().hours_followed,
            Some(2027),
            "an empty list says the org has no hours of its own from 2027"
        );
    }

    #[test]
    fn an_unknown_org_refuses_every_day() {
        let text =
            "org_code = \"350299000000\"\nday = [\n{ date = 2026-10-01, kind = \"holiday\" },\n]\n";
        let (parsed, years) = parse("calendar-2026.toml", text, &known());
        assert!(parsed.rows.is_empty());
        assert_eq!(years, None);
        assert_eq!(parsed.rejected, 1);
        assert_eq!(
            messages(&parsed),
            [(1, "unknown org 350299000000: no day imported".to_owned())]
        );
    }
}
