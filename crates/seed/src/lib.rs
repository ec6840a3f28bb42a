//! The seed importer: loads the registry of a tier database (org tree, grids, departments,
//! categories, time limits and skip-tier rules, workers, work calendar) from the files of `seeds/`.
//!
//! Files are loaded in dependency order, each in one transaction, with batched idempotent upserts
//! (a second run changes nothing). Bad rows never stop the import: each is reported as a
//! [`Problem`] with its file and line and skipped, and so are the rows that depend on it (the
//! grids of a rejected community, the handler of a rejected department …). Only I/O and database
//! failures are errors. Rows removed from the seeds are not deleted from the database, except the
//! rules of a rule file that imported without a problem (see `limits`).

mod calendar;
mod grids;
mod limits;
mod orgs;
mod registry;
mod source;

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};

use sqlx::PgPool;
use wangge_domain::{GridCode, OrgCode, OrgLevel};

pub use grids::{GridSeed, interior_point, load_grids};

/// A row (or a whole file) that was not imported, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Relative to the seeds directory: `orgs.csv`, `grids/350205000000.geojson`.
    pub file: String,
    /// 1-based line of the row (of the feature in a GeoJSON file, whose message names its index).
    pub line: usize,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}", self.file, self.line, self.message)
    }
}

/// What happened to one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileReport {
    /// Relative to the seeds directory.
    pub file: String,
    /// Rows that passed validation and are now in the database.
    pub imported: usize,
    /// Rows refused (each has at least one problem).
    pub rejected: usize,
    /// Rows inserted or updated by this run: 0 when the database already held the same data.
    pub changed: u64,
    /// In file order.
    pub problems: Vec<Problem>,
}

/// What happened to every file, in import order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    pub files: Vec<FileReport>,
}

impl Report {
    pub fn problems(&self) -> impl Iterator<Item = &Problem> {
        self.files.iter().flat_map(|f| f.problems.iter())
    }

    pub fn file(&self, name: &str) -> Option<&FileReport> {
        self.files.iter().find(|f| f.file == name)
    }

    pub fn imported(&self) -> usize {
        self.files.iter().map(|f| f.imported).sum()
    }

    pub fn rejected(&self) -> usize {
        self.files.iter().map(|f| f.rejected).sum()
    }

    pub fn changed(&self) -> u64 {
        self.files.iter().map(|f| f.changed).sum()
    }
}

/// Progress of an import, reported file by file.
#[derive(Debug, Clone)]
pub enum Progress {
    /// A file is being read.
    Started { file: String },
    /// A file is done (committed).
    Finished(FileReport),
}

/// Failures that stop the import: the seeds cannot be read or the database refuses. The cause is
/// the error's `source()` (print the chain, e.g. with anyhow's `{:#}`).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read {}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("database failed while importing {file}")]
    Database { file: String, source: sqlx::Error },
}

impl Error {
    fn io(path: &Path, source: std::io::Error) -> Self {
        Error::Io {
            path: path.to_owned(),
            source,
        }
    }

    fn db(file: &str) -> impl FnOnce(sqlx::Error) -> Self + '_ {
        move |source| Error::Database {
            file: file.to_owned(),
            source,
        }
    }
}

/// What earlier files of this run imported or refused, for the checks of later files.
#[derive(Debug, Default)]
pub(crate) struct Known {
    orgs: HashMap<OrgCode, OrgLevel>,
    /// Codes of orgs.csv rows that were refused, so that dependents say why they are refused.
    rejected_orgs: HashSet<String>,
    grids: HashSet<GridCode>,
    departments: HashSet<String>,
    department_kinds: HashSet<String>,
    /// Category codes (大类 and 小类) imported from categories.toml.
    categories: HashSet<String>,
}

impl Known {
    pub(crate) fn org_level(&self, code: &OrgCode) -> Option<OrgLevel> {
        self.orgs.get(code).copied()
    }

    /// Why `code` (expected at one of `levels`) cannot be used, or `None` when it can.
    pub(crate) fn org_problem(
        &self,
        what: &str,
        code: &OrgCode,
        levels: &[OrgLevel],
    ) -> Option<String> {
        match self.org_level(code) {
            Some(level) if levels.contains(&level) => None,
            Some(level) => Some(format!(
                "{what} {code} is a {}, not a {}",
                level.as_str(),
                level_names(levels)
            )),
            None if self.rejected_orgs.contains(code.as_str()) => {
                Some(format!("{what} {code} was rejected in orgs.csv"))
            }
            None => Some(format!("unknown {what} {code}")),
        }
    }
}

fn level_names(levels: &[OrgLevel]) -> String {
    levels
        .iter()
        .map(|l| l.as_str())
        .collect::<Vec<_>>()
        .join(" or ")
}

fn read(dir: &Path, file: &str) -> Result<String, Error> {
    let path = dir.join(file);
    std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))
}

/// The files of `dir` whose name starts with `prefix` and ends with `suffix`, sorted by name.
fn list(dir: &Path, prefix: &str, suffix: &str) -> Result<Vec<String>, Error> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io(dir, e)),
    };
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        if let Some(name) = entry.file_name().to_str()
            && name.starts_with(prefix)
            && name.ends_with(suffix)
        {
            names.push(name.to_owned());
        }
    }
    names.sort();
    Ok(names)
}

/// Runs one file's upsert in its own transaction.
macro_rules! in_transaction {
    ($pool:expr, $file:expr, |$tx:ident| $body:expr) => {{
        let mut $tx = $pool.begin().await.map_err(Error::db($file))?;
        let changed = $body.await.map_err(Error::db($file))?;
        $tx.commit().await.map_err(Error::db($file))?;
        changed
    }};
}

fn finish<T>(
    parsed: source::Parsed<T>,
    changed: u64,
    progress: &mut (dyn FnMut(Progress) + Send),
) -> FileReport {
    let report = FileReport {
        file: parsed.file,
        imported: parsed.rows.len(),
        rejected: parsed.rejected,
        changed,
        problems: parsed.problems,
    };
    tracing::info!(
        file = %report.file,
        imported = report.imported,
        rejected = report.rejected,
        changed = report.changed,
        "seed file imported"
    );
    progress(Progress::Finished(report.clone()));
    report
}

/// Imports the seeds of `dir` into the database of `pool` (whose schema must be migrated):
/// `orgs.csv`, `grids/*.geojson`, `departments.toml`, `categories.toml`, `time-limits.toml`,
/// `skip-tier.toml`, `workers.toml` and `calendar-*.toml`, in that order. Bad rows are reported in the [`Report`] and skipped; an
/// unreadable file or a database failure stops the import (files already done stay committed).
/// `progress` is `Send` so that the import can run in a spawned task.
pub async fn import(
    pool: &PgPool,
    dir: &Path,
    progress: &mut (dyn FnMut(Progress) + Send),
) -> Result<Report, Error> {
    let mut known = Known::default();
    let mut report = Report::default();

    // The org tree first: everything else hangs off it.
    let file = orgs::FILE;
    progress(Progress::Started {
        file: file.to_owned(),
    });
    let (parsed, rejected) = orgs::parse(&read(dir, file)?);
    let changed = in_transaction!(pool, file, |tx| orgs::write(&mut tx, &parsed.rows));
    known
        .orgs
        .extend(parsed.rows.iter().map(|o| (o.code, o.level)));
    known.rejected_orgs = rejected;
    report.files.push(finish(parsed, changed, progress));

    // Grids: all files are read before any is written, as a code may be duplicated across files.
    let grid_dir = dir.join(grids::DIR);
    let mut grid_files = Vec::new();
    for name in list(&grid_dir, "", ".geojson")? {
        let file = format!("{}/{name}", grids::DIR);
        progress(Progress::Started { file: file.clone() });
        let text = read(dir, &file)?;
        grid_files.push(grids::parse(&file, &text));
    }
    grids::check(&mut grid_files, &known);
    for parsed in grid_files {
        let file = parsed.file.clone();
        let changed = in_transaction!(pool, &file, |tx| grids::write(&mut tx, &parsed.rows));
        known.grids.extend(parsed.rows.iter().map(|g| g.seed.code));
        report.files.push(finish(parsed, changed, progress));
    }

    let file = registry::DEPARTMENTS;
    progress(Progress::Started {
        file: file.to_owned(),
    });
    let parsed = registry::parse_departments(&read(dir, file)?, &known);
    let changed = in_transaction!(pool, file, |tx| registry::write_departments(
        &mut tx,
        &parsed.rows
    ));
    known
        .departments
        .extend(parsed.rows.iter().map(|d| d.code.clone()));
    known
        .department_kinds
        .extend(parsed.rows.iter().map(|d| d.kind.clone()));
    report.files.push(finish(parsed, changed, progress));

    let file = registry::CATEGORIES;
    progress(Progress::Started {
        file: file.to_owned(),
    });
    let parsed = registry::parse_categories(&read(dir, file)?, &known);
    let changed = in_transaction!(pool, file, |tx| registry::write_categories(
        &mut tx,
        &parsed.rows
    ));
    known
        .categories
        .extend(parsed.rows.iter().map(|c| c.code.clone()));
    report.files.push(finish(parsed, changed, progress));

    // The rules of the command clock, which name categories.
    let file = limits::TIME_LIMITS;
    progress(Progress::Started {
        file: file.to_owned(),
    });
    let parsed = limits::parse_time_limits(&read(dir, file)?, &known);
    let prune = parsed.problems.is_empty();
    let changed = in_transaction!(pool, file, |tx| limits::write_time_limits(
        &mut tx,
        &parsed.rows,
        prune
    ));
    report.files.push(finish(parsed, changed, progress));

    let file = limits::SKIP_TIER;
    progress(Progress::Started {
        file: file.to_owned(),
    });
    let parsed = limits::parse_skip_tier(&read(dir, file)?, &known);
    let prune = parsed.problems.is_empty();
    let changed = in_transaction!(pool, file, |tx| limits::write_skip_tier(
        &mut tx,
        &parsed.rows,
        prune
    ));
    report.files.push(finish(parsed, changed, progress));

    let file = registry::WORKERS;
    progress(Progress::Started {
        file: file.to_owned(),
    });
    let parsed = registry::parse_workers(&read(dir, file)?, &known);
    let changed = in_transaction!(pool, file, |tx| registry::write_workers(
        &mut tx,
        &parsed.rows
    ));
    report.files.push(finish(parsed, changed, progress));

    // Work calendars: one file per year (and per org, when an org keeps its own).
    for file in list(dir, "calendar-", ".toml")? {
        progress(Progress::Started { file: file.clone() });
        let (parsed, years) = calendar::parse(&file, &read(dir, &file)?, &known);
        let changed = in_transaction!(pool, &file, |tx| calendar::write(
            &mut tx,
            &parsed.rows,
            years.as_ref()
        ));
        report.files.push(finish(parsed, changed, progress));
    }

    Ok(report)
}
