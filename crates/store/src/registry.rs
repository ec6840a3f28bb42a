//! Reads of the registry (org tree, grids, categories, departments, workers), as seeded. The
//! limits shown with a category come from the time-limit rules (`rules`).
//!
//! Rows decode into `FromRow` structs: a column that drifted (renamed, retyped) is an error of the
//! query, not a panic in the middle of a request.

use sqlx::PgPool;
use wangge_domain::clock::{Limit, LimitUnit};
use wangge_domain::limits::{LimitRules, Stage};
use wangge_proto as pb;

use crate::Result;
use crate::rules::limit_rules;

fn level(name: &str) -> pb::OrgLevel {
    match name {
        "city" => pb::OrgLevel::City,
        "district" => pb::OrgLevel::District,
        "street" => pb::OrgLevel::Street,
        "community" => pb::OrgLevel::Community,
        _ => pb::OrgLevel::Unspecified,
    }
}

#[derive(Debug, sqlx::FromRow)]
struct OrgRow {
    code: String,
    name: String,
    level: String,
    parent_code: Option<String>,
}

impl From<OrgRow> for pb::Org {
    fn from(row: OrgRow) -> pb::Org {
        pb::Org {
            code: row.code,
            name: row.name,
            level: level(&row.level) as i32,
            parent_code: row.parent_code.unwrap_or_default(),
        }
    }
}

pub async fn org_by_code(pool: &PgPool, code: &str) -> Result<Option<pb::Org>> {
    let row = sqlx::query_as::<_, OrgRow>(
        "SELECT code, name, level, parent_code FROM orgs WHERE code = $1",
    )
    .bind(code)
    .fetch_optional(pool)
    .await?;
    Ok(row.map(pb::Org::from))
}

pub async fn children(pool: &PgPool, parent: &str) -> Result<Vec<pb::Org>> {
    let rows = sqlx::query_as::<_, OrgRow>(
        "SELECT code, name, level, parent_code FROM orgs WHERE parent_code = $1 ORDER BY code",
    )
    .bind(parent)
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().map(pb::Org::from).collect())
}

/// A grid and its boundary as GeoJSON geometry text.
#[derive(Debug, Clone)]
pub struct GridRow {
    pub grid: pb::Grid,
    pub boundary: String,
}

#[derive(Debug, sqlx::FromRow)]
struct GridColumns {
    code: String,
    name: String,
    community_code: String,
    households: i32,
    boundary: String,
}

/// The grids whose code starts with `prefix`.
pub async fn grids(pool: &PgPool, prefix: &str) -> Result<Vec<GridRow>> {
    let rows = sqlx::query_as::<_, GridColumns>(
        "SELECT code, name, community_code, households, boundary::text AS boundary FROM grids
         WHERE code LIKE $1 || '%' ORDER BY code",
    )
    .bind(prefix)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| GridRow {
            grid: pb::Grid {
                code: r.code,
                name: r.name,
                community_code: r.community_code,
                households: r.households.max(0) as u32,
            },
            boundary: r.boundary,
        })
        .collect())
}

fn time_limit(limit: Limit) -> pb::TimeLimit {
    let unit = match limit.unit {
        LimitUnit::Minutes => pb::TimeUnit::Minutes,
        LimitUnit::WorkingMinutes => pb::TimeUnit::WorkingMinutes,
        LimitUnit::WorkingHours => pb::TimeUnit::WorkingHours,
        LimitUnit::WorkingDays => pb::TimeUnit::WorkingDays,
    };
    pb::TimeLimit {
        amount: limit.amount,
        unit: unit as i32,
    }
}

#[derive(Debug, sqlx::FromRow)]
struct CategoryRow {
    code: String,
    scheme: String,
    name: String,
    parent_code: Option<String>,
    department_kind: String,
}

impl CategoryRow {
    /// The category with the limits of a normal case of it, from the time-limit rules (the
    /// category's own, else its 大类's, else the default), so the registry shows what the clock
    /// will count.
    fn into_category(self, rules: &LimitRules) -> pb::Category {
        let limit = |stage| {
            rules
                .limit_for(stage, &self.code, pb::Urgency::Normal)
                .map(time_limit)
        };
        pb::Category {
            accept_limit: limit(Stage::Accept),
            handle_limit: limit(Stage::Handle),
            code: self.code,
            scheme: self.scheme,
            name: self.name,
            parent_code: self.parent_code.unwrap_or_default(),
            department_kind: self.department_kind,
        }
    }
}

pub async fn categories(pool: &PgPool, scheme: Option<&str>) -> Result<Vec<pb::Category>> {
    let rows = sqlx::query_as::<_, CategoryRow>(
        "SELECT code, scheme, name, parent_code, department_kind
         FROM categories WHERE ($1::text IS NULL OR scheme = $1) ORDER BY code",
    )
    .bind(scheme)
    .fetch_all(pool)
    .await?;
    let rules = limit_rules(pool).await?;
    Ok(rows
        .into_iter()
        .map(|row| row.into_category(&rules))
        .collect())
}

#[derive(Debug, sqlx::FromRow)]
struct DepartmentRow {
    code: String,
    name: String,
    org_code: String,
    kind: String,
}

impl From<DepartmentRow> for pb::Department {
    fn from(r: DepartmentRow) -> pb::Department {
        pb::Department {
            code: r.code,
            name: r.name,
            org_code: r.org_code,
            kind: r.kind,
        }
    }
}

pub async fn department_by_code(pool: &PgPool, code: &str) -> Result<Option<pb::Department>> {
    let row = sqlx::query_as::<_, DepartmentRow>(
        "SELECT code, name, org_code, kind FROM departments WHERE code = $1",
    )
    .bind(code)
    .fetch_optional(pool)
    .await?;
    Ok(row.map(pb::Department::from))
}

/// Departments whose org code starts with `prefix`.
pub async fn departments(pool: &PgPool, prefix: &str) -> Result<Vec<pb::Department>> {
    let rows = sqlx::query_as::<_, DepartmentRow>(
        "SELECT code, name, org_code, kind FROM departments WHERE org_code LIKE $1 || '%' ORDER BY code",
    )
    .bind(prefix)
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().map(pb::Department::from).collect())
}

fn role(name: &str) -> pb::Role {
    pb::Role::from_str_name(&format!("ROLE_{}", name.to_ascii_uppercase())).unwrap_or_default()
}

#[derive(Debug, sqlx::FromRow)]
struct WorkerRow {
    id: String,
    name: String,
    role: String,
    org_code: String,
}

/// Workers whose grid or org code starts with `prefix`.
pub async fn workers(pool: &PgPool, prefix: &str) -> Result<Vec<pb::Worker>> {
    let rows = sqlx::query_as::<_, WorkerRow>(
        "SELECT id, name, role, org_code FROM workers WHERE org_code LIKE $1 || '%' ORDER BY id",
    )
    .bind(prefix)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| pb::Worker {
            role: role(&r.role) as i32,
            id: r.id,
            name: r.name,
            org_code: r.org_code,
        })
        .collect())
}
