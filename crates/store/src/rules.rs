//! The rules of the command clock as the seeds left them, decoded into the domain's types: the
//! time limits and standard extensions (`time_limits`, `extension_limits`), the skip-tier rules
//! (`skip_tier_rules`) and the work calendar of an org (`calendar_days`, `calendar_years`).
//!
//! The importer checks every row, so a row that does not decode was written past it (by hand, or
//! by a newer schema): it is skipped with a warning rather than failing every clock of the tier,
//! and the other rules still apply.

use std::cmp::Reverse;

use chrono::NaiveDate;
use sqlx::PgPool;
use tracing::warn;
use wangge_domain::OrgCode;
use wangge_domain::calendar::{DayKind, WorkCalendar};
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

/// The work calendar of `org_code` (12 digits, or a scope prefix such as `350205`): the days the calendars of the city, the district, the street
/// and the org itself define, the nearest org's entry for a date overriding farther ones (a street
/// that works on a day the city has off says so in its own file), and the years loaded for any of
/// them (a deadline past them is flagged, see [`WorkCalendar::covered_until`]).
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
    Ok(
        WorkCalendar::from_days(days.into_iter().map(|(_, day, kind)| (day, kind)))
            .with_years(years),
    )
}

#[cfg(test)]
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
