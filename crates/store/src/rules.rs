//! The rules of the command clock as the seeds left them, decoded into the domain's types: the
//! time limits and standard extensions (`time_limits`, `extension_limits`), the skip-tier rules
//! (`skip_tier_rules`) and the work calendar of an org (`calendar_days`, `calendar_years`,
//! `working_hours`).
//!
//! The importer checks every row, so a row that does not decode was written past it (by hand, or
//! by a newer schema): it is skipped with a warning rather than failing every clock of the tier,
//! and the other rules still apply.

use std::cmp::Reverse;

use chrono::{NaiveDate, NaiveTime};
use sqlx::PgPool;
use tracing::warn;
use wangge_domain::OrgCode;
use wangge_domain::calendar::{DayKind, WorkCalendar, WorkingPeriod, day_periods};
use wangge_domain::clock::{Limit, LimitUnit};
use wangge_domain::limits::{
    ExtensionRule, LimitRule, LimitRules, SkipRule, SkipRules, parse_urgency,
};

fn limit(amount: i32, unit: &str) -> Result<Limit, String> {
    let unit: LimitUnit = unit.parse()?;
    let amount = u32::try_from(amount)
        .ok()
        .filter(|&amount| amount > 0)
        .ok_or_else(|| format!("amount {amount} is not a positive whole number"))?;
    Ok(Limit { amount, unit })
}

#[derive(Debug, sqlx::FromRow)]
struct LimitRow {
    stage: String,
    category_code: Option<String>,
    urgency: Option<String>,
    amount: i32,
    unit: String,
}

impl LimitRow {
    fn decode(&self) -> Result<LimitRule, String> {
        Ok(LimitRule {
            stage: self.stage.parse()?,
            category: self.category_code.clone(),
            urgency: self.urgency.as_deref().map(parse_urgency).transpose()?,
            limit: limit(self.amount, &self.unit)?,
        })
    }
}

#[derive(Debug, sqlx::FromRow)]
struct ExtensionRow {
    category_code: Option<String>,
    amount: i32,
    unit: String,
}

/// Every time-limit rule and standard extension of the database.
pub async fn limit_rules(pool: &PgPool) -> Result<LimitRules, sqlx::Error> {
    let rows = sqlx::query_as::<_, LimitRow>(
        "SELECT stage, category_code, urgency, amount, unit FROM time_limits
         ORDER BY stage, category_code NULLS FIRST, urgency NULLS FIRST",
    )
    .fetch_all(pool)
    .await?;
    let mut rules = Vec::with_capacity(rows.len());
    for row in rows {
        match row.decode() {
            Ok(rule) => rules.push(rule),
            Err(reason) => warn!(
                stage = %row.stage,
                category = row.category_code.as_deref().unwrap_or("*"),
                urgency = row.urgency.as_deref().unwrap_or("*"),
                %reason,
                "time limit skipped"
            ),
        }
    }

    let rows = sqlx::query_as::<_, ExtensionRow>(
        "SELECT category_code, amount, unit FROM extension_limits ORDER BY category_code NULLS FIRST",
    )
    .fetch_all(pool)
    .await?;
    let mut extensions = Vec::with_capacity(rows.len());
    for row in rows {
        match limit(row.amount, &row.unit) {
            Ok(limit) => extensions.push(ExtensionRule {
                category: row.category_code,
                limit,
            }),
            Err(reason) => warn!(
                category = row.category_code.as_deref().unwrap_or("*"),
                %reason,
                "standard extension skipped"
            ),
        }
    }
    Ok(LimitRules::new(rules).with_extensions(extensions))
}

#[derive(Debug, sqlx::FromRow)]
struct SkipRow {
    category_code: String,
    urgency: String,
}

/// Every skip-tier rule (越级上报) of the database.
pub async fn skip_rules(pool: &PgPool) -> Result<SkipRules, sqlx::Error> {
    let rows = sqlx::query_as::<_, SkipRow>(
        "SELECT category_code, urgency FROM skip_tier_rules ORDER BY category_code",
    )
    .fetch_all(pool)
    .await?;
    let mut rules = Vec::with_capacity(rows.len());
    for row in rows {
        match parse_urgency(&row.urgency) {
            Ok(urgency) => rules.push(SkipRule {
                category: row.category_code,
                urgency,
            }),
            Err(reason) => warn!(
                category = %row.category_code,
                %reason,
                "skip-tier rule skipped"
            ),
        }
    }
    Ok(SkipRules::new(rules))
}

/// `org_code` and the orgs above it, nearest first: a community, its street, its district and the
/// city (the code's prefixes padded with zeros). A shorter run of digits is a scope prefix
/// (`350205`) and names the org it pads to; anything else is no org code and has no ancestors.
fn org_lineage(org_code: &str) -> Vec<String> {
    let prefix = !org_code.is_empty() && org_code.len() < 12;
    let padded = if prefix && org_code.bytes().all(|b| b.is_ascii_digit()) {
        format!("{org_code:0<12}")
    } else {
        org_code.to_owned()
    };
    match padded.parse::<OrgCode>() {
        Ok(org) => std::iter::successors(Some(org), OrgCode::parent)
            .map(|org| org.as_str().to_owned())
            .collect(),
        Err(_) => vec![org_code.to_owned()],
    }
}

#[derive(Debug, sqlx::FromRow)]
struct DayRow {
    org_code: String,
    day: NaiveDate,
    kind: String,
}

#[derive(Debug, sqlx::FromRow)]
struct HoursRow {
    org_code: String,
    valid_from: NaiveDate,
    starts: Vec<NaiveTime>,
    ends: Vec<NaiveTime>,
}

impl HoursRow {
    fn periods(&self) -> Result<Vec<WorkingPeriod>, String> {
        if self.starts.len() != self.ends.len() {
            return Err("as many starts as ends are needed".to_owned());
        }
        let periods = self
            .starts
            .iter()
            .zip(&self.ends)
            .map(|(start, end)| WorkingPeriod::new(*start, *end))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| e.to_string())?;
        day_periods(periods).map_err(|e| e.to_string())
    }
}

/// The working periods of a lineage as steps: at each date any org of it changes its hours, the
/// hours of the nearest org whose entries have begun by then (its latest entry from that date or
/// earlier). `entries` are `(distance, from, periods)`; an empty result leaves the calendar's
/// default.
fn inherited_hours(
    entries: &[(usize, NaiveDate, Vec<WorkingPeriod>)],
) -> Vec<(NaiveDate, &[WorkingPeriod])> {
    let mut dates: Vec<NaiveDate> = entries.iter().map(|&(_, from, _)| from).collect();
    dates.sort();
    dates.dedup();
    let mut steps: Vec<(NaiveDate, &[WorkingPeriod])> = Vec::new();
    for date in dates {
        let in_force = entries
            .iter()
            .filter(|&&(_, from, _)| from <= date)
            .min_by_key(|&&(distance, from, _)| (distance, Reverse(from)));
        if let Some((_, _, periods)) = in_force
            && steps
                .last()
                .is_none_or(|(_, last)| *last != periods.as_slice())
        {
            steps.push((date, periods.as_slice()));
        }
    }
    steps
}

/// The work calendar of `org_code` (12 digits, or a scope prefix such as `350205`): the days the
/// calendars of the city, the district, the street and the org itself define, the nearest org's
/// entry for a date overriding farther ones (a street that works on a day the city has off says
/// so in its own file); the working periods of their `hours`, from each date on the nearest
/// org's whose entries have begun (before the first entry, the first entry's periods); and the
/// years loaded for any of them (a deadline past them is flagged, see
/// [`WorkCalendar::covered_until`]).
pub async fn calendar_for(pool: &PgPool, org_code: &str) -> Result<WorkCalendar, sqlx::Error> {
    let lineage = org_lineage(org_code);
    let rows = sqlx::query_as::<_, DayRow>(
        "SELECT org_code, day, kind FROM calendar_days WHERE org_code = ANY($1) ORDER BY day",
    )
    .bind(&lineage)
    .fetch_all(pool)
    .await?;
    let distance = |org: &str| lineage.iter().position(|o| o == org).unwrap_or(usize::MAX);
    let mut days = Vec::with_capacity(rows.len());
    for row in rows {
        match row.kind.parse::<DayKind>() {
            Ok(kind) => days.push((distance(&row.org_code), row.day, kind)),
            Err(reason) => warn!(
                org = %row.org_code,
                day = %row.day,
                %reason,
                "calendar day skipped"
            ),
        }
    }
    // Farthest first: the calendar keeps the last entry of a date, the nearest org's.
    days.sort_by_key(|&(distance, day, _)| (Reverse(distance), day));

    let years: Vec<i32> = sqlx::query_scalar(
        "SELECT DISTINCT year FROM calendar_years WHERE org_code = ANY($1) ORDER BY year",
    )
    .bind(&lineage)
    .fetch_all(pool)
    .await?;
    let rows = sqlx::query_as::<_, HoursRow>(
        "SELECT org_code, valid_from, starts, ends FROM working_hours
         WHERE org_code = ANY($1) ORDER BY valid_from",
    )
    .bind(&lineage)
    .fetch_all(pool)
    .await?;
    let mut entries = Vec::with_capacity(rows.len());
    for row in rows {
        match row.periods() {
            Ok(periods) => entries.push((distance(&row.org_code), row.valid_from, periods)),
            Err(reason) => warn!(
                org = %row.org_code,
                from = %row.valid_from,
                %reason,
                "working hours skipped"
            ),
        }
    }

    let mut calendar = WorkCalendar::from_days(days.into_iter().map(|(_, day, kind)| (day, kind)))
        .with_years(years);
    let steps = inherited_hours(&entries);
    // Before the first entry the first periods apply: the data, not the built-in default. Each
    // step passed `day_periods` above, so the calendar refuses none; were it to, the step is
    // skipped rather than the calendar lost.
    let base = steps.first().map(|&(_, periods)| (None, periods));
    let dated = steps.iter().map(|&(from, periods)| (Some(from), periods));
    for (from, periods) in base.into_iter().chain(dated) {
        let periods = periods.iter().copied();
        let next = match from {
            None => calendar.clone().with_periods(periods),
            Some(from) => calendar.clone().with_periods_from(from, periods),
        };
        match next {
            Ok(next) => calendar = next,
            Err(reason) => warn!(org = org_code, ?from, %reason, "working hours skipped"),
        }
    }
    Ok(calendar)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn an_org_inherits_from_its_street_district_and_city() {
        assert_eq!(
            org_lineage("350205002006"),
            [
                "350205002006",
                "350205002000",
                "350205000000",
                "350200000000"
            ]
        );
        assert_eq!(
            org_lineage("350205000000"),
            ["350205000000", "350200000000"]
        );
        assert_eq!(org_lineage("350200000000"), ["350200000000"]);
        // A scope prefix names its org.
        assert_eq!(
            org_lineage("350205002"),
            ["350205002000", "350205000000", "350200000000"]
        );
        assert_eq!(org_lineage("3502"), ["350200000000"]);
        assert_eq!(org_lineage("35020500200x"), ["35020500200x"]);
    }

    #[test]
    fn working_hours_come_from_the_nearest_org_whose_entries_have_begun() {
        let periods = |list: &[&str]| -> Vec<WorkingPeriod> {
            list.iter().map(|p| p.parse().unwrap()).collect()
        };
        let date = |s: &str| s.parse::<NaiveDate>().unwrap();
        let office = periods(&["08:30-12:00", "14:30-17:30"]);
        let summer = periods(&["08:00-12:00", "15:00-18:00"]);
        let street = periods(&["08:00-20:00"]);
        // The city (distance 2) has summer hours from June to October; the street (distance 1)
        // its own hours from July.
        let entries = vec![
            (2, date("2026-01-01"), office.clone()),
            (2, date("2026-06-01"), summer.clone()),
            (2, date("2026-10-01"), office.clone()),
            (1, date("2026-07-01"), street.clone()),
        ];
        let steps = inherited_hours(&entries);
        assert_eq!(
            steps,
            [
                (date("2026-01-01"), office.as_slice()),
                (date("2026-06-01"), summer.as_slice()),
                // From July the street's, also after the city's October change.
                (date("2026-07-01"), street.as_slice()),
            ]
        );
        // Without the street: the city's three steps.
        assert_eq!(inherited_hours(&entries[..3]).len(), 3);
        // The same periods twice in a row make one step.
        let repeated = vec![
            (2, date("2026-01-01"), office.clone()),
            (1, date("2026-03-01"), office.clone()),
        ];
        assert_eq!(inherited_hours(&repeated).len(), 1);
        assert!(inherited_hours(&[]).is_empty());
    }

    #[test]
    fn stored_working_hours_decode_or_say_why_not() {
        let hm = |h, m| NaiveTime::from_hms_opt(h, m, 0).unwrap();
        let row = |starts: Vec<NaiveTime>, ends: Vec<NaiveTime>| HoursRow {
            org_code: "350200000000".to_owned(),
            valid_from: "2026-01-01".parse().unwrap(),
            starts,
            ends,
        };
        let periods = row(vec![hm(14, 30), hm(8, 30)], vec![hm(17, 30), hm(12, 0)])
            .periods()
            .unwrap();
        assert_eq!(periods[0].to_string(), "08:30-12:00", "sorted");
        assert!(row(vec![hm(8, 30)], vec![]).periods().is_err());
        assert!(row(vec![hm(12, 0)], vec![hm(8, 0)]).periods().is_err());
        assert!(
            row(vec![hm(8, 0), hm(9, 0)], vec![hm(10, 0), hm(11, 0)])
                .periods()
                .is_err_and(|e| e.contains("overlap"))
        );
    }

    #[test]
    fn stored_limits_decode_or_say_why_not() {
        let row = |stage: &str, urgency: Option<&str>, amount, unit: &str| LimitRow {
            stage: stage.to_owned(),
            category_code: Some("szcg-01-01".to_owned()),
            urgency: urgency.map(str::to_owned),
            amount,
            unit: unit.to_owned(),
        };
        assert_eq!(
            row("handle", None, 4, "working_hours").decode(),
            Ok(LimitRule {
                stage: wangge_domain::limits::Stage::Handle,
                category: Some("szcg-01-01".to_owned()),
                urgency: None,
                limit: Limit::working_hours(4),
            })
        );
        assert_eq!(
            row("check", None, 90, "working_minutes")
                .decode()
                .map(|rule| rule.limit),
            Ok(Limit::working_minutes(90))
        );
        assert!(
            row("closing", None, 4, "minutes")
                .decode()
                .is_err_and(|e| e.contains("unknown stage"))
        );
        assert!(
            row("handle", Some("high"), 4, "minutes")
                .decode()
                .is_err_and(|e| e.contains("unknown urgency"))
        );
        assert!(
            row("handle", None, 0, "minutes")
                .decode()
                .is_err_and(|e| e.contains("positive"))
        );
        assert!(
            row("handle", None, 4, "hours")
                .decode()
                .is_err_and(|e| e.contains("unknown time unit"))
        );
    }
}
