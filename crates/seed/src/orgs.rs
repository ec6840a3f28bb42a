//! `orgs.csv`: the org tree (city, 区, 街道/镇, 社区/村) by NBS division code (统计用区划代码).
//!
//! Columns: `code,name,level,parent_code` and optionally `valid_from,valid_to` (YYYY-MM-DD; codes of
//! abolished units are never reused, they keep their validity dates); other columns (`source`) are
//! ignored. The code is the tier path, so a row's level and parent must be the ones its code says.

use std::collections::{HashMap, HashSet};

use chrono::NaiveDate;
use sqlx::PgConnection;
use wangge_domain::{OrgCode, OrgLevel};

use crate::source::{Parsed, duplicate_message, duplicates};

pub(crate) const FILE: &str = "orgs.csv";

const REQUIRED: [&str; 4] = ["code", "name", "level", "parent_code"];

/// One validated org.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct OrgRow {
    pub line: usize,
    pub code: OrgCode,
    pub name: String,
    pub level: OrgLevel,
    pub parent: Option<OrgCode>,
    pub valid_from: Option<NaiveDate>,
    pub valid_to: Option<NaiveDate>,
}

#[derive(Debug, serde::Deserialize)]
struct Record {
    code: String,
    name: String,
    level: String,
    #[serde(default)]
    parent_code: String,
    #[serde(default)]
    valid_from: String,
    #[serde(default)]
    valid_to: String,
}

fn date(text: &str, column: &str) -> Result<Option<NaiveDate>, String> {
    if text.is_empty() {
        return Ok(None);
    }
    text.parse()
        .map(Some)
        .map_err(|_| format!("{column} {text:?} is not a date (YYYY-MM-DD)"))
}

/// Checks what a row says against what its code says; the parent's existence is checked later.
fn validate(line: usize, code: OrgCode, record: &Record) -> Result<OrgRow, String> {
    let level: OrgLevel = record.level.parse()?;
    if level != code.level() {
        return Err(format!(
            "level {:?} does not match code {code}, which is a {}",
            record.level,
            code.level().as_str()
        ));
    }
    let expected = code.parent();
    let parent = if record.parent_code.is_empty() {
        None
    } else {
        Some(
            record
                .parent_code
                .parse::<OrgCode>()
                .map_err(|e| format!("malformed parent code: {e}"))?,
        )
    };
    match (parent, expected) {
        (Some(p), Some(e)) if p != e => {
            return Err(format!(
                "parent {p} does not match code {code}, whose parent is {e}"
            ));
        }
        (Some(p), None) => return Err(format!("a {} has no parent, got {p}", level.as_str())),
        (None, Some(e)) => return Err(format!("parent missing (expected {e})")),
        _ => {}
    }
    if record.name.is_empty() {
        return Err("name is empty".to_owned());
    }
    let valid_from = date(&record.valid_from, "valid_from")?;
    let valid_to = date(&record.valid_to, "valid_to")?;
    if let (Some(from), Some(to)) = (valid_from, valid_to)
        && to < from
    {
        return Err(format!("valid_to {to} is before valid_from {from}"));
    }
    Ok(OrgRow {
        line,
        code,
        name: record.name.clone(),
        level,
        parent,
        valid_from,
        valid_to,
    })
}

/// Validates every row of `orgs.csv`. Also returns the codes of rejected rows, so that the
/// grids, departments and workers that name them can say why they are refused.
pub(crate) fn parse(text: &str) -> (Parsed<OrgRow>, HashSet<String>) {
    let mut parsed = Parsed::new(FILE);
    let mut rejected_codes = HashSet::new();
    let mut reader = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .from_reader(text.as_bytes());
    let headers = match reader.headers() {
        Ok(headers) => headers.clone(),
        Err(e) => {
            parsed.problem(1, format!("unreadable header: {e}"));
            return (parsed.finish(), rejected_codes);
        }
    };
    let missing: Vec<&str> = REQUIRED
        .into_iter()
        .filter(|c| !headers.iter().any(|h| h == *c))
        .collect();
    if !missing.is_empty() {
        parsed.problem(
            1,
            format!("missing columns {}: no row imported", missing.join(", ")),
        );
        return (parsed.finish(), rejected_codes);
    }

    // Shape first: a row we cannot read has no code to compare.
    let mut records: Vec<(usize, OrgCode, Record)> = Vec::new();
    for result in reader.records() {
        let record = match result {
            Ok(record) => record,
            Err(e) => {
                let line = e.position().map_or(0, |p| p.line() as usize);
                parsed.reject(line, format!("unreadable row: {e}"));
                continue;
            }
        };
        let line = record.position().map_or(0, |p| p.line() as usize);
        let row: Record = match record.deserialize(Some(&headers)) {
            Ok(row) => row,
            Err(e) => {
                parsed.reject(line, format!("unreadable row: {e}"));
                continue;
            }
        };
        match row.code.parse::<OrgCode>() {
            Ok(code) => records.push((line, code, row)),
            Err(e) => {
                parsed.reject(line, format!("malformed code: {e}"));
                rejected_codes.insert(row.code);
            }
        }
    }

    // A duplicated code is refused everywhere: we cannot tell which row is right.
    let dups = duplicates(records.iter().map(|(line, code, _)| (code.as_str(), *line)));
    let mut candidates = Vec::new();
    for (line, code, record) in records {
        if let Some(lines) = dups.get(code.as_str()) {
            parsed.reject(line, duplicate_message("code", code.as_str(), lines, line));
            rejected_codes.insert(code.to_string());
            continue;
        }
        match validate(line, code, &record) {
            Ok(row) => candidates.push(row),
            Err(message) => {
                parsed.reject(line, message);
                rejected_codes.insert(code.to_string());
            }
        }
    }

    // Parents before children, so that a refused street refuses its communities too.
    candidates.sort_by_key(|o| (o.level, o.code));
    let mut accepted: HashMap<OrgCode, usize> = HashMap::new();
    for row in candidates {
        match row.parent {
            Some(parent) if !accepted.contains_key(&parent) => {
                let message = if rejected_codes.contains(parent.as_str()) {
                    format!("parent {parent} was rejected")
                } else {
                    format!("unknown parent {parent}")
                };
                parsed.reject(row.line, message);
                rejected_codes.insert(row.code.to_string());
            }
            _ => {
                accepted.insert(row.code, row.line);
                parsed.rows.push(row);
            }
        }
    }
    (parsed.finish(), rejected_codes)
}

/// Upserts the orgs in one statement (the self-reference is checked at its end, so the order of
/// the rows does not matter); returns the number of rows inserted or changed.
pub(crate) async fn write(tx: &mut PgConnection, rows: &[OrgRow]) -> Result<u64, sqlx::Error> {
    let codes: Vec<&str> = rows.iter().map(|o| o.code.as_str()).collect();
    let names: Vec<&str> = rows.iter().map(|o| o.name.as_str()).collect();
    let levels: Vec<&str> = rows.iter().map(|o| o.level.as_str()).collect();
    let parents: Vec<Option<String>> = rows
        .iter()
        .map(|o| o.parent.map(|p| p.to_string()))
        .collect();
    let froms: Vec<Option<NaiveDate>> = rows.iter().map(|o| o.valid_from).collect();
    let tos: Vec<Option<NaiveDate>> = rows.iter().map(|o| o.valid_to).collect();
    let done = sqlx::query(
        "INSERT INTO orgs (code, name, level, parent_code, valid_from, valid_to)
         SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::date[], $6::date[])
         ON CONFLICT (code) DO UPDATE SET
             name = EXCLUDED.name, level = EXCLUDED.level, parent_code = EXCLUDED.parent_code,
             valid_from = EXCLUDED.valid_from, valid_to = EXCLUDED.valid_to
         WHERE (orgs.name, orgs.level, orgs.parent_code, orgs.valid_from, orgs.valid_to)
             IS DISTINCT FROM
             (EXCLUDED.name, EXCLUDED.level, EXCLUDED.parent_code, EXCLUDED.valid_from, EXCLUDED.valid_to)",
    )
    .bind(&codes)
    .bind(&names)
    .bind(&levels)
    .bind(&parents)
    .bind(&froms)
    .bind(&tos)
    .execute(&mut *tx)
    .await?;
    Ok(done.rows_affected())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const HEADER: &str = "code,name,level,parent_code,source\n";

    fn run(body: &str) -> (Parsed<OrgRow>, HashSet<String>) {
        parse(&format!("{HEADER}{body}"))
    }

    fn messages(parsed: &Parsed<OrgRow>) -> Vec<(usize, String)> {
        parsed
            .problems
            .iter()
            .map(|p| (p.line, p.message.clone()))
            .collect()
    }

    const TREE: &str = "\
350200000000,厦门市,city,,nbs
350205000000,海沧区,district,350200000000,nbs
350205002000,新阳街道,street,350205000000,nbs
350205002006,霞阳社区,community,350205002000,secondary
";

    #[test]
    fn a_consistent_tree_is_accepted() {
        let (parsed, rejected) = run(TREE);
        assert!(parsed.problems.is_empty(), "{:?}", parsed.problems);
        assert_eq!(parsed.rows.len(), 4);
        assert!(rejected.is_empty());
        let community = parsed
            .rows
            .iter()
            .find(|o| o.level == OrgLevel::Community)
            .unwrap();
        assert_eq!(community.line, 5);
        assert_eq!(community.parent.unwrap().as_str(), "350205002000");
    }

    #[test]
    fn every_occurrence_of_a_duplicate_code_is_refused() {
        let (parsed, rejected) = run(&format!(
            "{TREE}350205002007,祥露社区,community,350205002000,x\n350205002007,兴旺社区,community,350205002000,x\n\
             350205002007,一农社区,community,350205002000,x\n"
        ));
        assert_eq!(
            messages(&parsed),
            [
                (
                    6,
                    "duplicate code 350205002007 (also on lines 7, 8)".to_owned()
                ),
                (
                    7,
                    "duplicate code 350205002007 (also on lines 6, 8)".to_owned()
                ),
                (
                    8,
                    "duplicate code 350205002007 (also on lines 6, 7)".to_owned()
                ),
            ]
        );
        assert_eq!(parsed.rejected, 3);
        assert_eq!(parsed.rows.len(), 4);
        assert!(rejected.contains("350205002007"));
    }

    #[test]
    fn level_and_parent_must_match_the_code() {
        let (parsed, _) = run(&format!(
            "{TREE}350205002008,兴旺社区,street,350205002000,x\n\
             350205002009,一农社区,community,350205003000,x\n\
             350205002010,兴祥社区,community,,x\n\
             350205002011,,community,350205002000,x\n\
             350205002012,某社区,village,350205002000,x\n"
        ));
        let got = messages(&parsed);
        assert_eq!(got.len(), 5, "{got:?}");
        assert!(
            got[0]
                .1
                .contains("does not match code 350205002008, which is a community"),
            "{got:?}"
        );
        assert!(
            got[1].1.contains("parent 350205003000 does not match"),
            "{got:?}"
        );
        assert!(got[2].1.contains("parent missing"), "{got:?}");
        assert!(got[3].1.contains("name is empty"), "{got:?}");
        assert!(got[4].1.contains("unknown org level"), "{got:?}");
    }

    #[test]
    fn malformed_codes_and_rows_are_refused_with_their_line() {
        let (parsed, _) = run(&format!(
            "{TREE}35020500201,短码社区,community,350205002000,x\n3502050020a3,字母社区,community,350205002000,x\n\
             350205002013,少列社区\n"
        ));
        let got = messages(&parsed);
        assert_eq!(got.len(), 3, "{got:?}");
        assert_eq!((got[0].0, got[1].0, got[2].0), (6, 7, 8));
        assert!(got[0].1.starts_with("malformed code"), "{got:?}");
        assert!(got[2].1.starts_with("unreadable row"), "{got:?}");
        assert_eq!(parsed.rows.len(), 4);
    }

    #[test]
    fn children_of_refused_or_unknown_parents_are_refused_too() {
        let (parsed, rejected) = run(&format!(
            "{TREE}350205003000,嵩屿街道,street,350205000000,x\n350205003000,嵩屿街道,street,350205000000,x\n\
             350205003006,海虹社区,community,350205003000,x\n350205004001,天竺社区,community,350205004000,x\n"
        ));
        let got = messages(&parsed);
        assert_eq!(got.len(), 4, "{got:?}");
        assert_eq!(got[2], (8, "parent 350205003000 was rejected".to_owned()));
        assert_eq!(got[3], (9, "unknown parent 350205004000".to_owned()));
        assert!(rejected.contains("350205003006"));
    }

    #[test]
    fn validity_dates_are_optional_and_checked() {
        let text = "code,name,level,parent_code,valid_from,valid_to\n\
                    350200000000,厦门市,city,,,\n\
                    350205000000,海沧区,district,350200000000,2003-05-01,\n\
                    350206000000,湖里区,district,350200000000,2020-01-01,2019-01-01\n\
                    350211000000,集美区,district,350200000000,someday,\n";
        let (parsed, _) = parse(text);
        assert_eq!(parsed.rows.len(), 2);
        assert_eq!(
            parsed.rows[1].valid_from,
            Some(NaiveDate::from_ymd_opt(2003, 5, 1).unwrap())
        );
        let got = messages(&parsed);
        assert!(got[0].1.contains("before valid_from"), "{got:?}");
        assert!(got[1].1.contains("not a date"), "{got:?}");
    }

    #[test]
    fn a_file_without_the_required_columns_imports_nothing() {
        let (parsed, _) = parse("code,name\n350200000000,厦门市\n");
        assert_eq!(parsed.rows.len(), 0);
        assert_eq!(messages(&parsed)[0].0, 1);
    }

    #[test]
    fn the_real_orgs_csv_has_exactly_five_bad_rows() {
        let text =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../seeds/orgs.csv"))
                .unwrap();
        let (parsed, _) = parse(&text);
        let lines: Vec<usize> = parsed.problems.iter().map(|p| p.line).collect();
        assert_eq!(lines, [187, 188, 219, 220, 221]);
        assert_eq!(parsed.rows.len(), 438 - 5);
        assert_eq!(
            parsed.problems[1].message,
            "duplicate code 350206003024 (also on line 187)"
        );
    }
}
