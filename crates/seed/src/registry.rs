//! `departments.toml`, `categories.toml` and `workers.toml`: the functional departments (职能部门),
//! the category trees (事件分类), and the people of the platform. The time limits of the
//! categories live in `time-limits.toml` (see `limits`).
//!
//! Each file is a TOML array of tables (`[[department]]`, `[[category]]`, `[[worker]]`, or the
//! same key as an array of inline tables, one per line); unknown fields are refused, so a typo
//! does not silently drop a value.

use std::collections::HashSet;

use serde::Deserialize;
use sqlx::PgConnection;
use wangge_domain::{GridCode, OrgCode, OrgLevel};

use crate::Known;
use crate::source::{Parsed, TomlFile, duplicate_message, duplicates};

pub(crate) const DEPARTMENTS: &str = "departments.toml";
pub(crate) const CATEGORIES: &str = "categories.toml";
pub(crate) const WORKERS: &str = "workers.toml";

/// Decodes the rows of the array of tables `key`, refusing the ones that do not decode and every
/// occurrence of a duplicated key.
fn decode_rows<'i, T: Deserialize<'i>, R>(
    parsed: &mut Parsed<R>,
    text: &'i str,
    key: &str,
    what: &str,
    id: impl Fn(&T) -> &str,
) -> Vec<(usize, T)> {
    let Some(mut file) = TomlFile::parse(parsed, text) else {
        return Vec::new();
    };
    let mut decoded = Vec::new();
    for row in file.rows(parsed, key) {
        let line = row.line;
        match file.decode_row::<T>(row) {
            Ok(value) => decoded.push((line, value)),
            Err((at, message)) => parsed.reject(at, message),
        }
    }
    file.finish(parsed);
    let dups = duplicates(decoded.iter().map(|(line, value)| (id(value), *line)));
    let mut unique = Vec::new();
    for (line, value) in decoded {
        match dups.get(id(&value)) {
            Some(lines) => {
                let message = duplicate_message(what, id(&value), lines, line);
                parsed.reject(line, message);
            }
            None => unique.push((line, value)),
        }
    }
    unique
}

fn non_empty(value: &str, field: &str) -> Result<(), String> {
    if value.trim().is_empty() {
        Err(format!("{field} is empty"))
    } else {
        Ok(())
    }
}

// ---- departments ----

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DepartmentToml {
    code: String,
    name: String,
    org_code: String,
    kind: String,
}

/// One validated department.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DepartmentRow {
    pub line: usize,
    pub code: String,
    pub name: String,
    pub org: OrgCode,
    pub kind: String,
}

fn validate_department(d: DepartmentToml, known: &Known) -> Result<DepartmentRow, String> {
    let org: OrgCode = d
        .org_code
        .parse()
        .map_err(|e| format!("malformed org_code: {e}"))?;
    if let Some(problem) = known.org_problem("org", &org, &[OrgLevel::District, OrgLevel::Street]) {
        return Err(format!("department {}: {problem}", d.code));
    }
    // `350205-cgj` at a district, `350205002-cgzd` at a street: the org's prefix, a dash, a key.
    let well_formed = d.code.split_once('-').is_some_and(|(prefix, key)| {
        prefix == org.prefix()
            && !key.is_empty()
            && key
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    });
    if !well_formed {
        return Err(format!(
            "malformed department code {:?}: expected \"{}-<key>\" (lowercase ascii key) for org {org}",
            d.code,
            org.prefix()
        ));
    }
    non_empty(&d.name, "name")?;
    non_empty(&d.kind, "kind")?;
    Ok(DepartmentRow {
        line: 0,
        code: d.code,
        name: d.name.trim().to_owned(),
        org,
        kind: d.kind.trim().to_owned(),
    })
}

pub(crate) fn parse_departments(text: &str, known: &Known) -> Parsed<DepartmentRow> {
    let mut parsed = Parsed::new(DEPARTMENTS);
    for (line, d) in decode_rows(
        &mut parsed,
        text,
        "department",
        "department code",
        |d: &DepartmentToml| &d.code,
    ) {
        match validate_department(d, known) {
            Ok(row) => parsed.rows.push(DepartmentRow { line, ..row }),
            Err(message) => parsed.reject(line, message),
        }
    }
    parsed.finish()
}

pub(crate) async fn write_departments(
    tx: &mut PgConnection,
    rows: &[DepartmentRow],
) -> Result<u64, sqlx::Error> {
    let codes: Vec<&str> = rows.iter().map(|d| d.code.as_str()).collect();
    let names: Vec<&str> = rows.iter().map(|d| d.name.as_str()).collect();
    let orgs: Vec<&str> = rows.iter().map(|d| d.org.as_str()).collect();
    let kinds: Vec<&str> = rows.iter().map(|d| d.kind.as_str()).collect();
    let done = sqlx::query(
        "INSERT INTO departments (code, name, org_code, kind)
         SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[])
         ON CONFLICT (code) DO UPDATE SET name = EXCLUDED.name, org_code = EXCLUDED.org_code, kind = EXCLUDED.kind
         WHERE (departments.name, departments.org_code, departments.kind)
             IS DISTINCT FROM (EXCLUDED.name, EXCLUDED.org_code, EXCLUDED.kind)",
    )
    .bind(&codes)
    .bind(&names)
    .bind(&orgs)
    .bind(&kinds)
    .execute(&mut *tx)
    .await?;
    Ok(done.rows_affected())
}

// ---- categories ----

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CategoryToml {
    code: String,
    #[serde(default)]
    parent: Option<String>,
    name: String,
    department_kind: String,
}

/// One validated category node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CategoryRow {
    pub line: usize,
    pub code: String,
    pub scheme: String,
    pub name: String,
    pub parent: Option<String>,
    pub department_kind: String,
}

/// `szcg-01-02` → scheme `szcg`, parent `szcg-01`; `szcg-01` has no parent.
fn split_category_code(code: &str) -> Result<(String, Option<String>), String> {
    let mut parts = code.split('-');
    let scheme = parts.next().unwrap_or_default();
    let segments: Vec<&str> = parts.collect();
    let scheme_ok = scheme.starts_with(|c: char| c.is_ascii_lowercase())
        && scheme
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    let segments_ok = !segments.is_empty()
        && segments
            .iter()
            .all(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()));
    if !scheme_ok || !segments_ok {
        return Err(format!(
            "malformed category code {code:?}: expected <scheme>-NN or <scheme>-NN-NN"
        ));
    }
    let parent = code
        .rsplit_once('-')
        .map(|(p, _)| p)
        .filter(|p| p.contains('-'))
        .map(str::to_owned);
    Ok((scheme.to_owned(), parent))
}

fn validate_category(c: CategoryToml, known: &Known) -> Result<CategoryRow, String> {
    let (scheme, expected_parent) = split_category_code(&c.code)?;
    let parent = c.parent.filter(|p| !p.is_empty());
    if parent != expected_parent {
        return Err(match expected_parent {
            Some(e) => format!(
                "parent {:?} does not match code {}, whose parent is {e}",
                parent.unwrap_or_default(),
                c.code
            ),
            None => format!(
                "{} is a top-level category (大类) and has no parent",
                c.code
            ),
        });
    }
    non_empty(&c.name, "name")?;
    non_empty(&c.department_kind, "department_kind")?;
    let kind = c.department_kind.trim().to_owned();
    if !known.department_kinds.contains(&kind) {
        return Err(format!(
            "no department has kind {kind:?} (see departments.toml)"
        ));
    }
    Ok(CategoryRow {
        line: 0,
        code: c.code,
        scheme,
        name: c.name.trim().to_owned(),
        parent,
        department_kind: kind,
    })
}

pub(crate) fn parse_categories(text: &str, known: &Known) -> Parsed<CategoryRow> {
    let mut parsed = Parsed::new(CATEGORIES);
    let mut candidates = Vec::new();
    let mut refused = HashSet::new();
    for (line, c) in decode_rows(
        &mut parsed,
        text,
        "category",
        "category code",
        |c: &CategoryToml| &c.code,
    ) {
        let code = c.code.clone();
        match validate_category(c, known) {
            Ok(row) => candidates.push(CategoryRow { line, ..row }),
            Err(message) => {
                parsed.reject(line, message);
                refused.insert(code);
            }
        }
    }
    // Parents before children (shorter codes first), so that a refused 大类 refuses its 小类.
    candidates.sort_by(|a, b| (a.code.len(), &a.code).cmp(&(b.code.len(), &b.code)));
    let mut accepted = HashSet::new();
    for row in candidates {
        match &row.parent {
            Some(parent) if !accepted.contains(parent) => {
                let message = if refused.contains(parent) {
                    format!("parent {parent} was rejected")
                } else {
                    format!("unknown parent {parent}")
                };
                parsed.reject(row.line, message);
                refused.insert(row.code.clone());
            }
            _ => {
                accepted.insert(row.code.clone());
                parsed.rows.push(row);
            }
        }
    }
    parsed.finish()
}

pub(crate) async fn write_categories(
    tx: &mut PgConnection,
    rows: &[CategoryRow],
) -> Result<u64, sqlx::Error> {
    let codes: Vec<&str> = rows.iter().map(|c| c.code.as_str()).collect();
    let schemes: Vec<&str> = rows.iter().map(|c| c.scheme.as_str()).collect();
    let names: Vec<&str> = rows.iter().map(|c| c.name.as_str()).collect();
    let parents: Vec<Option<&str>> = rows.iter().map(|c| c.parent.as_deref()).collect();
    let kinds: Vec<&str> = rows.iter().map(|c| c.department_kind.as_str()).collect();
    let done = sqlx::query(
        "INSERT INTO categories (code, scheme, name, parent_code, department_kind)
         SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[])
         ON CONFLICT (code) DO UPDATE SET
             scheme = EXCLUDED.scheme, name = EXCLUDED.name, parent_code = EXCLUDED.parent_code,
             department_kind = EXCLUDED.department_kind
         WHERE (categories.scheme, categories.name, categories.parent_code, categories.department_kind)
             IS DISTINCT FROM
               (EXCLUDED.scheme, EXCLUDED.name, EXCLUDED.parent_code, EXCLUDED.department_kind)",
    )
    .bind(&codes)
    .bind(&schemes)
    .bind(&names)
    .bind(&parents)
    .bind(&kinds)
    .execute(&mut *tx)
    .await?;
    Ok(done.rows_affected())
}

// ---- workers ----

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WorkerToml {
    id: String,
    name: String,
    role: String,
    org_code: String,
}

/// One validated worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct WorkerRow {
    pub line: usize,
    pub id: String,
    pub name: String,
    pub role: String,
    /// A grid code, a department code or an org code, by role.
    pub org_code: String,
}

/// What a role's `org_code` names.
enum Place {
    Grid,
    Department,
    Org(&'static [OrgLevel]),
}

fn place_of(role: &str) -> Option<Place> {
    use OrgLevel::*;
    Some(match role {
        "grid_worker" => Place::Grid,
        "community_staff" => Place::Org(&[Community]),
        "street_operator" => Place::Org(&[Street]),
        "duty_chief" => Place::Org(&[Street, District]),
        "district_operator" => Place::Org(&[District]),
        "department_handler" => Place::Department,
        "supervisor" | "auditor" | "admin" => Place::Org(&[City, District, Street, Community]),
        _ => return None,
    })
}

fn validate_worker(w: WorkerToml, known: &Known) -> Result<WorkerRow, String> {
    non_empty(&w.id, "id")?;
    non_empty(&w.name, "name")?;
    let place = place_of(&w.role).ok_or_else(|| {
        format!(
            "unknown role {:?} (expected grid_worker, community_staff, street_operator, duty_chief, \
             district_operator, department_handler, supervisor, auditor or admin)",
            w.role
        )
    })?;
    let problem = match place {
        Place::Grid => match w.org_code.parse::<GridCode>() {
            Err(e) => Some(format!("malformed grid code: {e}")),
            Ok(grid) if known.grids.contains(&grid) => None,
            Ok(grid) => Some(format!("unknown grid {grid} (not imported from grids/)")),
        },
        Place::Department => (!known.departments.contains(&w.org_code))
            .then(|| format!("unknown department {}", w.org_code)),
        Place::Org(levels) => match w.org_code.parse::<OrgCode>() {
            Err(e) => Some(format!("malformed org code: {e}")),
            Ok(org) => known.org_problem("org", &org, levels),
        },
    };
    if let Some(problem) = problem {
        return Err(format!("worker {} ({}): {problem}", w.id, w.role));
    }
    Ok(WorkerRow {
        line: 0,
        id: w.id,
        name: w.name.trim().to_owned(),
        role: w.role,
        org_code: w.org_code,
    })
}

pub(crate) fn parse_workers(text: &str, known: &Known) -> Parsed<WorkerRow> {
    let mut parsed = Parsed::new(WORKERS);
    for (line, w) in decode_rows(
        &mut parsed,
        text,
        "worker",
        "worker id",
        |w: &WorkerToml| &w.id,
    ) {
        match validate_worker(w, known) {
            Ok(row) => parsed.rows.push(WorkerRow { line, ..row }),
            Err(message) => parsed.reject(line, message),
        }
    }
    parsed.finish()
}

pub(crate) async fn write_workers(
    tx: &mut PgConnection,
    rows: &[WorkerRow],
) -> Result<u64, sqlx::Error> {
    let ids: Vec<&str> = rows.iter().map(|w| w.id.as_str()).collect();
    let names: Vec<&str> = rows.iter().map(|w| w.name.as_str()).collect();
    let roles: Vec<&str> = rows.iter().map(|w| w.role.as_str()).collect();
    let orgs: Vec<&str> = rows.iter().map(|w| w.org_code.as_str()).collect();
    let done = sqlx::query(
        "INSERT INTO workers (id, name, role, org_code)
         SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[])
         ON CONFLICT (id) DO UPDATE SET name = EXCLUDED.name, role = EXCLUDED.role, org_code = EXCLUDED.org_code
         WHERE (workers.name, workers.role, workers.org_code)
             IS DISTINCT FROM (EXCLUDED.name, EXCLUDED.role, EXCLUDED.org_code)",
    )
    .bind(&ids)
    .bind(&names)
    .bind(&roles)
    .bind(&orgs)
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
        for (code, level) in [
            ("350200000000", OrgLevel::City),
            ("350205000000", OrgLevel::District),
            ("350205002000", OrgLevel::Street),
            ("350205002006", OrgLevel::Community),
        ] {
            known.orgs.insert(code.parse().unwrap(), level);
        }
        known.rejected_orgs.insert("350205003000".to_owned());
        known.grids.insert("350205002006001".parse().unwrap());
        known.departments.insert("350205-cgj".to_owned());
        known
            .department_kinds
            .extend(["城管".to_owned(), "市政".to_owned()]);
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
    fn departments_need_a_known_district_or_street_and_a_matching_code() {
        let text = r#"
[[department]]
code = "350205-cgj"
name = "海沧区城市管理行政执法局"
org_code = "350205000000"
kind = "城管"

[[department]]
code = "350205002-cgzd"
name = "新阳街道城管执法中队"
org_code = "350205002000"
kind = "城管"

[[department]]
code = "350205003-cgzd"
name = "嵩屿街道城管执法中队"
org_code = "350205003000"
kind = "城管"

[[department]]
code = "350205-szs"
name = "错位的市政所"
org_code = "350205002000"
kind = "市政"

[[department]]
code = "350205002006-x"
name = "社区"
org_code = "350205002006"
kind = "城管"

[[department]]
code = "350205-mzj"
name = "民政局"
org_code = "350205000000"
kind = "民政"
colour = "blue"
"#;
        let parsed = parse_departments(text, &known());
        assert_eq!(
            parsed
                .rows
                .iter()
                .map(|d| d.code.as_str())
                .collect::<Vec<_>>(),
            ["350205-cgj", "350205002-cgzd"]
        );
        assert_eq!(parsed.rows[1].line, 8);
        let got = messages(&parsed);
        assert_eq!(got.len(), 4, "{got:?}");
        assert_eq!(
            got[0],
            (
                14,
                "department 350205003-cgzd: org 350205003000 was rejected in orgs.csv".to_owned()
            )
        );
        assert!(
            got[1]
                .1
                .starts_with("malformed department code \"350205-szs\""),
            "{got:?}"
        );
        assert!(
            got[2]
                .1
                .contains("is a community, not a district or street"),
            "{got:?}"
        );
        assert_eq!(got[3].0, 37, "the line of the unknown field");
        assert!(got[3].1.contains("unknown field `colour`"), "{got:?}");
    }

    #[test]
    fn duplicate_department_codes_are_all_refused() {
        let row =
            "{ code = \"350205-cgj\", name = \"x\", org_code = \"350205000000\", kind = \"城管\" }";
        let parsed = parse_departments(
            &format!("department = [\n  {row},\n  {row},\n]\n"),
            &known(),
        );
        assert!(parsed.rows.is_empty());
        assert_eq!(
            messages(&parsed),
            [
                (
                    2,
                    "duplicate department code 350205-cgj (also on line 3)".to_owned()
                ),
                (
                    3,
                    "duplicate department code 350205-cgj (also on line 2)".to_owned()
                )
            ]
        );
    }

    #[test]
    fn a_toml_syntax_error_refuses_the_file_with_its_line() {
        let parsed = parse_departments("[[department]]\ncode = \"a\"\nname = \n", &known());
        assert!(parsed.rows.is_empty());
        assert_eq!(parsed.problems.len(), 1);
        assert_eq!(parsed.problems[0].line, 3, "{:?}", parsed.problems);
    }

    fn category(code: &str, parent: Option<&str>, kind: &str) -> String {
        let parent = parent
            .map(|p| format!("parent = \"{p}\"\n"))
            .unwrap_or_default();
        format!(
            "[[category]]\ncode = \"{code}\"\n{parent}name = \"n\"\ndepartment_kind = \"{kind}\"\n\n"
        )
    }

    #[test]
    fn categories_form_trees_per_scheme() {
        let text = [
            category("szcg-01", None, "城管"),
            category("szcg-01-01", Some("szcg-01"), "市政"),
            category("szcg-02-01", Some("szcg-02"), "市政"),
            category("szcg-01-02", Some("szcg-02"), "市政"),
            category("szcg-01-03", Some("szcg-01"), "环保"),
            // Limits moved to time-limits.toml: the old keys are refused, not silently ignored.
            format!(
                "{}\nhandle_limit = 4\nhandle_limit_unit = \"working_hours\"\n\n",
                category("szcg-01-04", Some("szcg-01"), "城管").trim_end()
            ),
            category("SZCG-7", None, "城管"),
            category("shzl-01", None, "城管"),
        ]
        .concat();
        let parsed = parse_categories(&text, &known());
        let codes: Vec<&str> = parsed.rows.iter().map(|c| c.code.as_str()).collect();
        assert_eq!(codes, ["shzl-01", "szcg-01", "szcg-01-01"]);
        let leaf = &parsed.rows[2];
        assert_eq!(leaf.scheme, "szcg");
        assert_eq!(leaf.parent.as_deref(), Some("szcg-01"));
        let got: Vec<String> = messages(&parsed).into_iter().map(|(_, m)| m).collect();
        assert_eq!(got.len(), 5, "{got:?}");
        assert!(got[0].contains("unknown parent szcg-02"), "{got:?}");
        assert!(got[1].contains("does not match code szcg-01-02"), "{got:?}");
        assert!(
            got[2].contains("no department has kind \"环保\""),
            "{got:?}"
        );
        assert!(got[3].contains("unknown field `handle_limit`"), "{got:?}");
        assert!(got[4].contains("malformed category code"), "{got:?}");
    }

    #[test]
    fn minor_classes_of_a_refused_major_class_are_refused() {
        let text = [
            category("szcg-01", None, "环保"),
            category("szcg-01-01", Some("szcg-01"), "市政"),
        ]
        .concat();
        let parsed = parse_categories(&text, &known());
        assert!(parsed.rows.is_empty());
        assert_eq!(parsed.problems[1].message, "parent szcg-01 was rejected");
    }

    #[test]
    fn workers_must_name_a_place_that_fits_their_role() {
        let text = r#"worker = [
  { id = "gw-350205002006001", name = "陈雅婷", role = "grid_worker", org_code = "350205002006001" },
  { id = "gw-350205002006009", name = "林志强", role = "grid_worker", org_code = "350205002006009" },
  { id = "cs-350205002006", name = "黄丽娟", role = "community_staff", org_code = "350205002006" },
  { id = "op-350205002000", name = "张文杰", role = "street_operator", org_code = "350205002000" },
  { id = "op-350205000000", name = "李秀英", role = "street_operator", org_code = "350205000000" },
  { id = "dc-350205000000", name = "王俊杰", role = "duty_chief", org_code = "350205000000" },
  { id = "dh-350205-cgj", name = "吴晓燕", role = "department_handler", org_code = "350205-cgj" },
  { id = "dh-350205-xxx", name = "刘国荣", role = "department_handler", org_code = "350205-xxx" },
  { id = "x-1", name = "蔡美玲", role = "mayor", org_code = "350205000000" },
  { id = "cs-350205003001", name = "杨振华", role = "community_staff", org_code = "350205003001" },
]
"#;
        let parsed = parse_workers(text, &known());
        let ids: Vec<&str> = parsed.rows.iter().map(|w| w.id.as_str()).collect();
        assert_eq!(
            ids,
            [
                "gw-350205002006001",
                "cs-350205002006",
                "op-350205002000",
                "dc-350205000000",
                "dh-350205-cgj"
            ]
        );
        let got = messages(&parsed);
        assert_eq!(
            got.iter().map(|(l, _)| *l).collect::<Vec<_>>(),
            [3, 6, 9, 10, 11]
        );
        assert!(got[0].1.contains("unknown grid 350205002006009"), "{got:?}");
        assert!(got[1].1.contains("is a district, not a street"), "{got:?}");
        assert!(
            got[2].1.contains("unknown department 350205-xxx"),
            "{got:?}"
        );
        assert!(got[3].1.contains("unknown role \"mayor\""), "{got:?}");
        assert!(got[4].1.contains("unknown org 350205003001"), "{got:?}");
    }

    #[test]
    fn every_category_kind_has_a_department_at_both_districts_and_at_every_street() {
        let seeds = concat!(env!("CARGO_MANIFEST_DIR"), "/../../seeds/");
        let read = |file: &str| std::fs::read_to_string(format!("{seeds}{file}")).unwrap();
        let (orgs, _) = crate::orgs::parse(&read("orgs.csv"));
        let mut known = Known::default();
        known
            .orgs
            .extend(orgs.rows.iter().map(|o| (o.code, o.level)));
        let departments = parse_departments(&read(DEPARTMENTS), &known);
        assert!(
            departments.problems.is_empty(),
            "{:?}",
            departments.problems
        );
        known
            .department_kinds
            .extend(departments.rows.iter().map(|d| d.kind.clone()));
        let categories = parse_categories(&read(CATEGORIES), &known);
        assert!(categories.problems.is_empty(), "{:?}", categories.problems);
        for prefix in ["350205", "350203"] {
            let places = orgs.rows.iter().filter(|o| {
                o.code.as_str().starts_with(prefix)
                    && matches!(o.level, OrgLevel::District | OrgLevel::Street)
            });
            for place in places {
                for category in &categories.rows {
                    let found = departments
                        .rows
                        .iter()
                        .any(|d| d.org == place.code && d.kind == category.department_kind);
                    assert!(
                        found,
                        "no {} department at {} for {}",
                        category.department_kind, place.code, category.code
                    );
                }
            }
        }
    }
}
