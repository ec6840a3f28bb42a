//! Reads of the registry (org tree, grids, categories, departments, workers), as seeded.

use sqlx::{PgPool, Row};
use wangge_proto as pb;

use crate::Result;

fn level(name: &str) -> pb::OrgLevel {
    match name {
        "city" => pb::OrgLevel::City,
        "district" => pb::OrgLevel::District,
        "street" => pb::OrgLevel::Street,
        "community" => pb::OrgLevel::Community,
        _ => pb::OrgLevel::Unspecified,
    }
}

fn org(row: &sqlx::postgres::PgRow) -> pb::Org {
    pb::Org {
        code: row.get("code"),
        name: row.get("name"),
        level: level(row.get("level")) as i32,
        parent_code: row
            .get::<Option<String>, _>("parent_code")
            .unwrap_or_default(),
    }
}

pub async fn org_by_code(pool: &PgPool, code: &str) -> Result<Option<pb::Org>> {
    let row = sqlx::query("SELECT code, name, level, parent_code FROM orgs WHERE code = $1")
        .bind(code)
        .fetch_optional(pool)
        .await?;
    Ok(row.as_ref().map(org))
}

pub async fn children(pool: &PgPool, parent: &str) -> Result<Vec<pb::Org>> {
    let rows = sqlx::query(
        "SELECT code, name, level, parent_code FROM orgs WHERE parent_code = $1 ORDER BY code",
    )
    .bind(parent)
    .fetch_all(pool)
    .await?;
    Ok(rows.iter().map(org).collect())
}

/// A grid and its boundary as GeoJSON geometry text.
#[derive(Debug, Clone)]
pub struct GridRow {
    pub grid: pb::Grid,
    pub boundary: String,
}

/// The grids whose code starts with `prefix`.
pub async fn grids(pool: &PgPool, prefix: &str) -> Result<Vec<GridRow>> {
    let rows = sqlx::query(
        "SELECT code, name, community_code, households, boundary::text FROM grids
         WHERE code LIKE $1 || '%' ORDER BY code",
    )
    .bind(prefix)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .iter()
        .map(|r| GridRow {
            grid: pb::Grid {
                code: r.get(0),
                name: r.get(1),
                community_code: r.get(2),
                households: r.get::<i32, _>(3).max(0) as u32,
            },
            boundary: r.get(4),
        })
        .collect())
}

fn unit(name: Option<&str>) -> pb::TimeUnit {
    match name {
        Some("minutes") => pb::TimeUnit::Minutes,
        Some("working_hours") => pb::TimeUnit::WorkingHours,
        Some("working_days") => pb::TimeUnit::WorkingDays,
        _ => pb::TimeUnit::Unspecified,
    }
}

fn limit(amount: Option<i32>, unit_name: Option<&str>) -> Option<pb::TimeLimit> {
    amount.map(|a| pb::TimeLimit {
        amount: a.max(0) as u32,
        unit: unit(unit_name) as i32,
    })
}

pub async fn categories(pool: &PgPool, scheme: Option<&str>) -> Result<Vec<pb::Category>> {
    let rows = sqlx::query(
        "SELECT code, scheme, name, parent_code, department_kind, accept_limit, accept_limit_unit,
                handle_limit, handle_limit_unit
         FROM categories WHERE ($1::text IS NULL OR scheme = $1) ORDER BY code",
    )
    .bind(scheme)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .iter()
        .map(|r| pb::Category {
            code: r.get(0),
            scheme: r.get(1),
            name: r.get(2),
            parent_code: r.get::<Option<String>, _>(3).unwrap_or_default(),
            department_kind: r.get(4),
            accept_limit: limit(r.get(5), r.get(6)),
            handle_limit: limit(r.get(7), r.get(8)),
        })
        .collect())
}

pub async fn category_exists(pool: &PgPool, code: &str) -> Result<bool> {
    Ok(
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM categories WHERE code = $1)")
            .bind(code)
            .fetch_one(pool)
            .await?,
    )
}

fn department(r: &sqlx::postgres::PgRow) -> pb::Department {
    pb::Department {
        code: r.get(0),
        name: r.get(1),
        org_code: r.get(2),
        kind: r.get(3),
    }
}

pub async fn department_by_code(pool: &PgPool, code: &str) -> Result<Option<pb::Department>> {
    let row = sqlx::query("SELECT code, name, org_code, kind FROM departments WHERE code = $1")
        .bind(code)
        .fetch_optional(pool)
        .await?;
    Ok(row.as_ref().map(department))
}

/// Departments whose org code starts with `prefix`.
pub async fn departments(pool: &PgPool, prefix: &str) -> Result<Vec<pb::Department>> {
    let rows = sqlx::query(
        "SELECT code, name, org_code, kind FROM departments WHERE org_code LIKE $1 || '%' ORDER BY code",
    )
    .bind(prefix)
    .fetch_all(pool)
    .await?;
    Ok(rows.iter().map(department).collect())
}

fn role(name: &str) -> pb::Role {
    pb::Role::from_str_name(&format!("ROLE_{}", name.to_ascii_uppercase())).unwrap_or_default()
}

/// Workers whose grid or org code starts with `prefix`.
pub async fn workers(pool: &PgPool, prefix: &str) -> Result<Vec<pb::Worker>> {
    let rows = sqlx::query(
        "SELECT id, name, role, org_code FROM workers WHERE org_code LIKE $1 || '%' ORDER BY id",
    )
    .bind(prefix)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .iter()
        .map(|r| pb::Worker {
            id: r.get(0),
            name: r.get(1),
            role: role(r.get(2)) as i32,
            org_code: r.get(3),
        })
        .collect())
}
