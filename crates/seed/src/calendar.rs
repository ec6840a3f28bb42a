//! `calendar-<year>.toml`: the work calendar (工作日历) of an org, as exceptions to the
//! Monday-to-Friday week: weekdays off (holiday) and 调休 make-up working days on weekends
//! (workday). The calendar of an org applies to every org below it.
//!
//! The file's `year` is recorded as loaded for its org (`calendar_years`), even when it lists no
//! day: a deadline is flagged when it runs past the loaded years, and a year without exceptions
//! is still a year whose schedule is known. A file without `year` loads the years of its days.
//!
//! ```toml
//! org_code = "350200000000"
//! year = 2026
//! day = [
//!   { date = 2026-10-01, kind = "holiday", name = "国庆节" },
//!   { date = 2026-10-10, kind = "workday", name = "国庆节调休" },
//! ]
//! ```

use std::collections::BTreeSet;

use chrono::{Datelike, NaiveDate, Weekday};
use serde::Deserialize;
use sqlx::PgConnection;
use wangge_domain::OrgCode;
use wangge_domain::OrgLevel;
use wangge_domain::calendar::DayKind;

use crate::Known;
use crate::source::{Parsed, TomlFile, duplicate_message, duplicates};

/// One validated calendar day.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CalendarRow {
    pub line: usize,
    pub org: OrgCode,
    pub date: NaiveDate,
    pub kind: DayKind,
    pub name: String,
}

/// The years a file loads for its org.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CalendarYears {
    pub org: OrgCode,
    pub years: BTreeSet<i32>,
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

/// The days of one file, and the years it loads (none when its org or year is refused).
pub(crate) fn parse(
    file_name: &str,
    text: &str,
    known: &Known,
) -> (Parsed<CalendarRow>, Option<CalendarYears>) {
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
    let rows = file.rows(&mut parsed, "day");
    let (org, year) = match (org, year) {
        (Ok(org), Ok(year)) => (org, year),
        (Err((line, message)), _) | (_, Err((line, message))) => {
            // Without its org (or year) no day of the file can be placed: all are refused.
            parsed.problem(line, format!("{message}: no day imported"));
            parsed.rejected += rows.len();
            file.finish(&mut parsed);
            return (parsed.finish(), None);
        }
    };
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
            None => parsed.rows.push(row),
        }
    }
    let years = match year {
        Some(year) => BTreeSet::from([year]),
        None => parsed.rows.iter().map(|d| d.date.year()).collect(),
    };
    (parsed.finish(), Some(CalendarYears { org, years }))
}

/// Upserts the days of one file and records its years; returns the number of rows inserted or
/// changed.
pub(crate) async fn write(
    tx: &mut PgConnection,
    rows: &[CalendarRow],
    years: Option<&CalendarYears>,
) -> Result<u64, sqlx::Error> {
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
    let Some(years) = years else {
        return Ok(done.rows_affected());
    };
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
    Ok(done.rows_affected() + loaded.rows_affected())
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

    fn messages(parsed: &Parsed<CalendarRow>) -> Vec<(usize, String)> {
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
                years: BTreeSet::from([2026])
            })
        );
        assert_eq!(parsed.rows[1].line, 5);
        assert_eq!(parsed.rows[1].kind, DayKind::Workday);
        assert_eq!(
            parsed.rows[1].date,
            NaiveDate::from_ymd_opt(2026, 10, 10).unwrap()
        );
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
