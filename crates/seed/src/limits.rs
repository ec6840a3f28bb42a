//! `time-limits.toml` and `skip-tier.toml`: the rules of the command clock as data, so that a city
//! edits its limits (时限), standard extensions (标准延期) and skip-tier rules (越级上报) without a
//! release.
//!
//! ```toml
//! limit = [
//!   { stage = "accept", amount = 20, unit = "minutes" },
//!   { stage = "accept", urgency = "emergency", amount = 5, unit = "minutes" },
//!   { stage = "handle", category = "szcg-01-01", amount = 4, unit = "working_hours" },
//! ]
//! extension = [ { amount = 5, unit = "working_days" } ]
//! ```
//! ```toml
//! skip = [ { category = "szcg-04-04", urgency = "urgent" } ]
//! ```
//!
//! A rule names only categories of `categories.toml`. Unlike the registry, the rule tables follow
//! their file: a rule deleted from a file that imports without a single problem is deleted from
//! the database too, since a stale rule would silently beat the 大类's or the default one. A file
//! with problems deletes nothing (a refused row may be the new version of a stored rule).

use serde::Deserialize;
use sqlx::PgConnection;
use wangge_domain::clock::{Limit, LimitUnit};
use wangge_domain::limits::{
    ExtensionRule, LimitRule, SkipRule, Stage, Urgency, parse_urgency, urgency_name,
};

use crate::Known;
use crate::source::{Parsed, TomlFile, duplicate_message, duplicates};

pub(crate) const TIME_LIMITS: &str = "time-limits.toml";
pub(crate) const SKIP_TIER: &str = "skip-tier.toml";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LimitToml {
    stage: String,
    #[serde(default)]
    category: Option<String>,
    #[serde(default)]
    urgency: Option<String>,
    amount: i64,
    unit: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExtensionToml {
    #[serde(default)]
    category: Option<String>,
    amount: i64,
    unit: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SkipToml {
    category: String,
    urgency: String,
}

/// One validated row of `time-limits.toml`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TimeLimitRow {
    pub line: usize,
    pub rule: Rule,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Rule {
    Limit(LimitRule),
    Extension(ExtensionRule),
}

/// One validated row of `skip-tier.toml`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SkipRow {
    pub line: usize,
    pub rule: SkipRule,
}

/// Decodes the rows of the array of tables `key` of an already parsed file.
fn decode<'i, T: Deserialize<'i>, R>(
    file: &mut TomlFile<'i>,
    parsed: &mut Parsed<R>,
    key: &str,
) -> Vec<(usize, T)> {
    let mut decoded = Vec::new();
    for row in file.rows(parsed, key) {
        let line = row.line;
        match file.decode_row::<T>(row) {
            Ok(value) => decoded.push((line, value)),
            Err((at, message)) => parsed.reject(at, message),
        }
    }
    decoded
}

/// A category a rule may name: one imported from `categories.toml`.
fn category(code: Option<String>, known: &Known) -> Result<Option<String>, String> {
    match code {
        None => Ok(None),
        Some(code) if code.trim().is_empty() => {
            Err("category is empty: leave it out for a rule of every category".to_owned())
        }
        Some(code) if known.categories.contains(&code) => Ok(Some(code)),
        Some(code) => Err(format!(
            "unknown category {code:?} (not imported from categories.toml)"
        )),
    }
}

fn limit(amount: i64, unit: &str) -> Result<Limit, String> {
    let unit: LimitUnit = unit.parse()?;
    // The tables store an int4.
    let amount = i32::try_from(amount)
        .ok()
        .and_then(|a| u32::try_from(a).ok())
        .filter(|&a| a > 0)
        .ok_or_else(|| format!("amount {amount} is not a positive whole number"))?;
    Ok(Limit { amount, unit })
}

fn validate_limit(l: LimitToml, known: &Known) -> Result<LimitRule, String> {
    let stage: Stage = l.stage.parse()?;
    let category = category(l.category, known)?;
    let urgency = l.urgency.as_deref().map(parse_urgency).transpose()?;
    Ok(LimitRule {
        stage,
        category,
        urgency,
        limit: limit(l.amount, &l.unit)?,
    })
}

fn validate_extension(e: ExtensionToml, known: &Known) -> Result<ExtensionRule, String> {
    Ok(ExtensionRule {
        category: category(e.category, known)?,
        limit: limit(e.amount, &e.unit)?,
    })
}

fn validate_skip(s: SkipToml, known: &Known) -> Result<SkipRule, String> {
    let category = category(Some(s.category), known)?.unwrap_or_default();
    Ok(SkipRule {
        category,
        urgency: parse_urgency(&s.urgency)?,
    })
}

fn every_category(category: Option<&str>) -> &str {
    category.unwrap_or("every category")
}

/// What a rule is and what it applies to, for the duplicate check: (`limit`, `handle for
/// szcg-01-01 at any urgency`).
fn rule_key(rule: &Rule) -> (&'static str, String) {
    match rule {
        Rule::Limit(l) => (
            "limit",
            format!(
                "{} for {} at {}",
                l.stage,
                every_category(l.category.as_deref()),
                l.urgency.map_or("any urgency", urgency_name)
            ),
        ),
        Rule::Extension(e) => (
            "extension",
            format!("for {}", every_category(e.category.as_deref())),
        ),
    }
}

/// Refuses every occurrence of a rule given twice (by `key`: what it is, what it applies to),
/// keeps the rest in order.
fn keep_unique<R>(
    parsed: &mut Parsed<R>,
    candidates: Vec<R>,
    line: impl Fn(&R) -> usize,
    key: impl Fn(&R) -> (&'static str, String),
) {
    let keys: Vec<(&str, String)> = candidates.iter().map(&key).collect();
    let joined: Vec<String> = keys
        .iter()
        .map(|(what, key)| format!("{what} {key}"))
        .collect();
    let dups = duplicates(
        joined
            .iter()
            .zip(&candidates)
            .map(|(k, row)| (k.as_str(), line(row))),
    );
    for ((joined, (what, key)), row) in joined.iter().zip(&keys).zip(candidates) {
        match dups.get(joined) {
            Some(lines) => {
                let at = line(&row);
                parsed.reject(at, duplicate_message(what, key, lines, at));
            }
            None => parsed.rows.push(row),
        }
    }
}

pub(crate) fn parse_time_limits(text: &str, known: &Known) -> Parsed<TimeLimitRow> {
    let mut parsed = Parsed::new(TIME_LIMITS);
    let Some(mut file) = TomlFile::parse(&mut parsed, text) else {
        return parsed.finish();
    };
    let limits = decode::<LimitToml, _>(&mut file, &mut parsed, "limit");
    let extensions = decode::<ExtensionToml, _>(&mut file, &mut parsed, "extension");
    file.finish(&mut parsed);

    let mut candidates = Vec::new();
    for (line, l) in limits {
        match validate_limit(l, known) {
            Ok(rule) => candidates.push(TimeLimitRow {
                line,
                rule: Rule::Limit(rule),
            }),
            Err(message) => parsed.reject(line, message),
        }
    }
    for (line, e) in extensions {
        match validate_extension(e, known) {
            Ok(rule) => candidates.push(TimeLimitRow {
                line,
                rule: Rule::Extension(rule),
            }),
            Err(message) => parsed.reject(line, message),
        }
    }
    candidates.sort_by_key(|row| row.line);
    keep_unique(
        &mut parsed,
        candidates,
        |row| row.line,
        |row| rule_key(&row.rule),
    );
    parsed.finish()
}

pub(crate) fn parse_skip_tier(text: &str, known: &Known) -> Parsed<SkipRow> {
    let mut parsed = Parsed::new(SKIP_TIER);
    let Some(mut file) = TomlFile::parse(&mut parsed, text) else {
        return parsed.finish();
    };
    let skips = decode::<SkipToml, _>(&mut file, &mut parsed, "skip");
    file.finish(&mut parsed);
    let mut candidates = Vec::new();
    for (line, s) in skips {
        match validate_skip(s, known) {
            Ok(rule) => candidates.push(SkipRow { line, rule }),
            Err(message) => parsed.reject(line, message),
        }
    }
    keep_unique(
        &mut parsed,
        candidates,
        |row| row.line,
        |row| ("skip rule", format!("for {}", row.rule.category)),
    );
    parsed.finish()
}

/// The stored form of an optional urgency.
fn urgency_column(urgency: Option<Urgency>) -> Option<&'static str> {
    urgency.map(urgency_name)
}

/// Upserts the limits and extensions of the file and, when `prune` (the file had no problem),
/// deletes the stored ones it no longer lists; returns the number of rows inserted, changed or
/// deleted.
pub(crate) async fn write_time_limits(
    tx: &mut PgConnection,
    rows: &[TimeLimitRow],
    prune: bool,
) -> Result<u64, sqlx::Error> {
    let limits: Vec<&LimitRule> = rows
        .iter()
        .filter_map(|row| match &row.rule {
            Rule::Limit(rule) => Some(rule),
            Rule::Extension(_) => None,
        })
        .collect();
    let extensions: Vec<&ExtensionRule> = rows
        .iter()
        .filter_map(|row| match &row.rule {
            Rule::Extension(rule) => Some(rule),
            Rule::Limit(_) => None,
        })
        .collect();

    let stages: Vec<&str> = limits.iter().map(|l| l.stage.name()).collect();
    let categories: Vec<Option<&str>> = limits.iter().map(|l| l.category.as_deref()).collect();
    let urgencies: Vec<Option<&str>> = limits.iter().map(|l| urgency_column(l.urgency)).collect();
    let amounts: Vec<i64> = limits.iter().map(|l| i64::from(l.limit.amount)).collect();
    let units: Vec<&str> = limits.iter().map(|l| l.limit.unit.name()).collect();
    let mut changed = sqlx::query(
        "INSERT INTO time_limits (stage, category_code, urgency, amount, unit)
         SELECT stage, category_code, urgency, amount::int4, unit
         FROM UNNEST($1::text[], $2::text[], $3::text[], $4::int8[], $5::text[])
             AS f(stage, category_code, urgency, amount, unit)
         ON CONFLICT (stage, (coalesce(category_code, '')), (coalesce(urgency, ''))) DO UPDATE
             SET amount = EXCLUDED.amount, unit = EXCLUDED.unit
         WHERE (time_limits.amount, time_limits.unit) IS DISTINCT FROM (EXCLUDED.amount, EXCLUDED.unit)",
    )
    .bind(&stages)
    .bind(&categories)
    .bind(&urgencies)
    .bind(&amounts)
    .bind(&units)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if prune {
        changed += sqlx::query(
            "DELETE FROM time_limits t WHERE NOT EXISTS (
                 SELECT 1 FROM UNNEST($1::text[], $2::text[], $3::text[]) AS f(stage, category_code, urgency)
                 WHERE f.stage = t.stage
                   AND coalesce(f.category_code, '') = coalesce(t.category_code, '')
                   AND coalesce(f.urgency, '') = coalesce(t.urgency, ''))",
        )
        .bind(&stages)
        .bind(&categories)
        .bind(&urgencies)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    }

    let categories: Vec<Option<&str>> = extensions.iter().map(|e| e.category.as_deref()).collect();
    let amounts: Vec<i64> = extensions
        .iter()
        .map(|e| i64::from(e.limit.amount))
        .collect();
    let units: Vec<&str> = extensions.iter().map(|e| e.limit.unit.name()).collect();
    changed += sqlx::query(
        "INSERT INTO extension_limits (category_code, amount, unit)
         SELECT category_code, amount::int4, unit
         FROM UNNEST($1::text[], $2::int8[], $3::text[]) AS f(category_code, amount, unit)
         ON CONFLICT ((coalesce(category_code, ''))) DO UPDATE
             SET amount = EXCLUDED.amount, unit = EXCLUDED.unit
         WHERE (extension_limits.amount, extension_limits.unit)
             IS DISTINCT FROM (EXCLUDED.amount, EXCLUDED.unit)",
    )
    .bind(&categories)
    .bind(&amounts)
    .bind(&units)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if prune {
        changed += sqlx::query(
            "DELETE FROM extension_limits t WHERE NOT EXISTS (
                 SELECT 1 FROM UNNEST($1::text[]) AS f(category_code)
                 WHERE coalesce(f.category_code, '') = coalesce(t.category_code, ''))",
        )
        .bind(&categories)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    }
    Ok(changed)
}

/// Upserts the skip-tier rules of the file and, when `prune`, deletes the stored ones it no
/// longer lists; returns the number of rows inserted, changed or deleted.
pub(crate) async fn write_skip_tier(
    tx: &mut PgConnection,
    rows: &[SkipRow],
    prune: bool,
) -> Result<u64, sqlx::Error> {
    let categories: Vec<&str> = rows.iter().map(|r| r.rule.category.as_str()).collect();
    let urgencies: Vec<&str> = rows.iter().map(|r| urgency_name(r.rule.urgency)).collect();
    let mut changed = sqlx::query(
        "INSERT INTO skip_tier_rules (category_code, urgency)
         SELECT * FROM UNNEST($1::text[], $2::text[])
         ON CONFLICT (category_code) DO UPDATE SET urgency = EXCLUDED.urgency
         WHERE skip_tier_rules.urgency IS DISTINCT FROM EXCLUDED.urgency",
    )
    .bind(&categories)
    .bind(&urgencies)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if prune {
        changed += sqlx::query("DELETE FROM skip_tier_rules WHERE NOT (category_code = ANY($1))")
            .bind(&categories)
            .execute(&mut *tx)
            .await?
            .rows_affected();
    }
    Ok(changed)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn known() -> Known {
        let mut known = Known::default();
        known
            .categories
            .extend(["szcg-01", "szcg-01-01", "szcg-04", "szcg-04-04"].map(str::to_owned));
        known
    }

    fn messages<T>(parsed: &Parsed<T>) -> Vec<(usize, String)> {
        parsed
            .problems
            .iter()
            .map(|p| (p.line, p.message.clone()))
            .collect()
    }

    #[test]
    fn limits_and_extensions_are_read_with_their_lines() {
        let text = r#"# Xiamen
limit = [
  { stage = "accept", amount = 20, unit = "minutes" },
  { stage = "accept", urgency = "emergency", amount = 5, unit = "minutes" },
  { stage = "handle", category = "szcg-01-01", amount = 4, unit = "working_hours" },
  { stage = "check", amount = 90, unit = "working_minutes" },
]

[[extension]]
amount = 5
unit = "working_days"

[[extension]]
category = "szcg-01"
amount = 2
unit = "working_days"
"#;
        let parsed = parse_time_limits(text, &known());
        assert!(parsed.problems.is_empty(), "{:?}", parsed.problems);
        let lines: Vec<usize> = parsed.rows.iter().map(|r| r.line).collect();
        assert_eq!(lines, [3, 4, 5, 6, 9, 13]);
        assert_eq!(
            parsed.rows[1].rule,
            Rule::Limit(LimitRule {
                stage: Stage::Accept,
                category: None,
                urgency: Some(Urgency::Emergency),
                limit: Limit::minutes(5),
            })
        );
        assert_eq!(
            parsed.rows[3].rule,
            Rule::Limit(LimitRule {
                stage: Stage::Check,
                category: None,
                urgency: None,
                limit: Limit::working_minutes(90),
            }),
            "working minutes stop over the lunch break"
        );
        assert_eq!(
            parsed.rows[5].rule,
            Rule::Extension(ExtensionRule {
                category: Some("szcg-01".to_owned()),
                limit: Limit::working_days(2),
            })
        );
    }

    #[test]
    fn bad_limits_are_refused_with_the_reason() {
        let text = r#"limit = [
  { stage = "closing", amount = 20, unit = "minutes" },
  { stage = "handle", category = "szcg-09", amount = 1, unit = "working_days" },
  { stage = "handle", urgency = "high", amount = 1, unit = "working_days" },
  { stage = "handle", amount = 1, unit = "hours" },
  { stage = "handle", amount = 0, unit = "minutes" },
  { stage = "handle", amount = -3, unit = "minutes" },
  { stage = "handle", category = "", amount = 1, unit = "minutes" },
  { stage = "check", amount = 1, unit = "working_hours", area = "rural" },
  { stage = "sign", amount = 1, unit = "working_days" },
  { stage = "sign", amount = 2, unit = "working_days" },
  { stage = "sign", urgency = "emergency", amount = 15, unit = "minutes" },
]
extension = [
  { category = "szcg-01", amount = 2, unit = "working_days" },
  { category = "szcg-01", amount = 3, unit = "working_days" },
  { amount = 0, unit = "working_days" },
]
colour = "blue"
"#;
        let parsed = parse_time_limits(text, &known());
        assert_eq!(parsed.rows.len(), 1, "{:?}", parsed.rows);
        assert_eq!(parsed.rows[0].line, 12);
        assert_eq!(parsed.rejected, 13);
        let got = messages(&parsed);
        let lines: Vec<usize> = got.iter().map(|(l, _)| *l).collect();
        assert_eq!(
            lines,
            [2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 15, 16, 17, 19],
            "{got:?}"
        );
        assert!(got[0].1.contains("unknown stage \"closing\""), "{got:?}");
        assert_eq!(
            got[1].1,
            "unknown category \"szcg-09\" (not imported from categories.toml)"
        );
        assert!(got[2].1.contains("unknown urgency \"high\""), "{got:?}");
        assert!(got[3].1.contains("unknown time unit \"hours\""), "{got:?}");
        assert_eq!(got[4].1, "amount 0 is not a positive whole number");
        assert_eq!(got[5].1, "amount -3 is not a positive whole number");
        assert!(got[6].1.contains("category is empty"), "{got:?}");
        assert!(got[7].1.contains("unknown field `area`"), "{got:?}");
        assert_eq!(
            got[8].1,
            "duplicate limit sign for every category at any urgency (also on line 11)"
        );
        assert_eq!(
            got[10].1,
            "duplicate extension for szcg-01 (also on line 16)"
        );
        assert_eq!(got[12].1, "amount 0 is not a positive whole number");
        assert_eq!(got[13].1, "unknown key \"colour\": ignored");
    }

    #[test]
    fn skip_rules_need_a_known_category_and_urgency() {
        let text = r#"skip = [
  { category = "szcg-04", urgency = "emergency" },
  { category = "szcg-04-04", urgency = "urgent" },
  { category = "shzl-02-05", urgency = "normal" },
  { category = "szcg-01", urgency = "soon" },
  { category = "szcg-01-01" },
  { category = "szcg-01-01", urgency = "urgent" },
  { category = "szcg-01-01", urgency = "emergency" },
]
"#;
        let parsed = parse_skip_tier(text, &known());
        let rules: Vec<(&str, Urgency)> = parsed
            .rows
            .iter()
            .map(|r| (r.rule.category.as_str(), r.rule.urgency))
            .collect();
        assert_eq!(
            rules,
            [
                ("szcg-04", Urgency::Emergency),
                ("szcg-04-04", Urgency::Urgent)
            ]
        );
        let got = messages(&parsed);
        assert_eq!(
            got.iter().map(|(l, _)| *l).collect::<Vec<_>>(),
            [4, 5, 6, 7, 8],
            "{got:?}"
        );
        assert!(
            got[0].1.contains("unknown category \"shzl-02-05\""),
            "{got:?}"
        );
        assert!(got[1].1.contains("unknown urgency \"soon\""), "{got:?}");
        assert!(got[2].1.contains("missing field `urgency`"), "{got:?}");
        assert_eq!(
            got[3].1,
            "duplicate skip rule for szcg-01-01 (also on line 8)"
        );
    }

    #[test]
    fn a_syntax_error_refuses_the_whole_file() {
        let parsed = parse_time_limits("limit = [\n  { stage = \"accept\" \n", &known());
        assert!(parsed.rows.is_empty());
        assert_eq!(parsed.problems.len(), 1);
        assert!(
            parsed.problems[0].message.contains("no row imported"),
            "{:?}",
            parsed.problems
        );
    }

    #[test]
    fn the_real_rules_import_without_a_problem() {
        let seeds = concat!(env!("CARGO_MANIFEST_DIR"), "/../../seeds/");
        let read = |file: &str| std::fs::read_to_string(format!("{seeds}{file}")).unwrap();
        let text = read(crate::registry::CATEGORIES);
        let table: toml::Table = text.parse().unwrap();
        let mut known = Known::default();
        for category in table["category"].as_array().unwrap() {
            let code = category["code"].as_str().unwrap();
            known.categories.insert(code.to_owned());
        }
        let limits = parse_time_limits(&read(TIME_LIMITS), &known);
        assert!(limits.problems.is_empty(), "{:?}", limits.problems);
        let skips = parse_skip_tier(&read(SKIP_TIER), &known);
        assert!(skips.problems.is_empty(), "{:?}", skips.problems);

        let rules = wangge_domain::limits::LimitRules::new(
            limits
                .rows
                .iter()
                .filter_map(|r| match &r.rule {
                    Rule::Limit(l) => Some(l.clone()),
                    Rule::Extension(_) => None,
                })
                .collect(),
        );
        // Every stage has a default for every category and urgency.
        for stage in Stage::ALL {
            for code in &known.categories {
                for urgency in [Urgency::Normal, Urgency::Urgent, Urgency::Emergency] {
                    assert!(
                        rules.limit_for(stage, code, urgency).is_some(),
                        "{stage} {code} {urgency:?}"
                    );
                }
            }
        }
        // 立案+派遣 within 30 minutes, 10 for emergencies (domain brief, section 4).
        let accept_and_dispatch = |code, urgency| {
            [Stage::Accept, Stage::Dispatch]
                .map(|stage| rules.limit_for(stage, code, urgency).unwrap())
        };
        assert_eq!(
            accept_and_dispatch("szcg-01-01", Urgency::Normal),
            [Limit::minutes(20), Limit::minutes(10)]
        );
        assert_eq!(
            accept_and_dispatch("szcg-01-01", Urgency::Emergency),
            [Limit::minutes(5), Limit::minutes(5)]
        );
        assert_eq!(
            accept_and_dispatch("szcg-04-01", Urgency::Normal),
            [Limit::minutes(5), Limit::minutes(5)]
        );
        let handle = |code| rules.limit_for(Stage::Handle, code, Urgency::Normal);
        assert_eq!(handle("szcg-01-01"), Some(Limit::working_hours(4)));
        assert_eq!(handle("szcg-01-02"), Some(Limit::working_hours(2)));
        assert_eq!(handle("szcg-01-03"), Some(Limit::working_days(20)));
        assert_eq!(handle("szcg-06-01"), Some(Limit::working_days(1)));
        assert_eq!(handle("szcg-05-05"), Some(Limit::minutes(60)));
        assert_eq!(handle("szcg-02-02"), Some(Limit::working_days(5)));
        assert_eq!(handle("szcg-04-01"), Some(Limit::working_days(1)));
    }
}
