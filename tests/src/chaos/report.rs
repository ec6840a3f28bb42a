//! The result of a fault run as a row, and the rows as the markdown tables the README carries (and
//! as JSON for machines).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use super::checker::Verdict;
use super::latency::Percentiles;

/// What one fault run showed.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Row {
    pub slug: String,
    pub fault: String,
    pub reports_acknowledged: usize,
    pub steps_acknowledged: usize,
    /// Error answers to reports and console steps (each attempt counts).
    pub errors_returned: u64,
    pub errors_by_code: BTreeMap<String, u64>,
    /// Reports still unacknowledged when the field apps gave up, well after the fault was healed.
    pub abandoned_reports: u64,
    /// Acknowledged reports and steps missing at some tier at the end.
    pub lost: usize,
    pub duplicated: usize,
    /// The full check passed before the deadline.
    pub converged: bool,
    /// From the heal until everything acknowledged before it was at every tier.
    pub converge_secs: Option<f64>,
    pub backlog: Option<Backlog>,
    pub verdict: Option<Verdict>,
    /// What the fault did (which messages were deleted, how many connections were terminated …).
    pub notes: String,
    /// What the system did wrong while the fault was injected (an oversized report answered other
    /// than INVALID_ARGUMENT naming its field, say).
    pub fault_failures: Vec<String>,
    /// The run itself failed (the harness, not the system under test).
    pub error: Option<String>,
    pub run_secs: f64,
}

/// The backlog a fault left and how it drained while live reports kept coming.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Backlog {
    /// Acknowledged reports the street did not hold when the fault was healed.
    pub reports_missing_at_street: usize,
    /// Outbox depth per tier (village, street, district) at the heal.
    pub outbox_at_heal: [i64; 3],
    /// Report→street latency of reports acknowledged after the heal, until the backlog was in.
    pub live_latency: Percentiles,
    /// Of those, how many the street watch never showed (it was being reopened).
    pub live_unseen: usize,
}

impl Row {
    pub fn passed(&self) -> bool {
        self.error.is_none()
            && self.fault_failures.is_empty()
            && self.lost == 0
            && self.duplicated == 0
            && self.converged
    }
}

/// The main table: one line per fault.
pub fn table(rows: &[Row]) -> String {
    let mut out = String::new();
    out.push_str("| fault | reports acked | steps acked | errors returned | lost | duplicated | converged | converge s |\n");
    out.push_str("|---|---:|---:|---:|---:|---:|---|---:|\n");
    for row in rows {
        let converge = row
            .converge_secs
            .map_or("—".to_owned(), |s| format!("{s:.1}"));
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            row.fault,
            row.reports_acknowledged,
            row.steps_acknowledged,
            row.errors_returned,
            row.lost,
            row.duplicated,
            if row.converged { "yes" } else { "**no**" },
            converge
        );
    }
    out
}

/// The drain table: the link cuts, their backlog and the live latency while it drained.
pub fn drain_table(rows: &[Row], cuts: impl Fn(&Row) -> bool) -> String {
    let mut out = String::new();
    out.push_str(
        "| link cut | backlog (reports) | drain s | live reports | p50 ms | p99 ms | max ms |\n",
    );
    out.push_str("|---|---:|---:|---:|---:|---:|---:|\n");
    for row in rows.iter().filter(|r| cuts(r)) {
        let Some(backlog) = &row.backlog else {
            continue;
        };
        let latency = backlog.live_latency;
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {:.0} | {:.0} | {:.0} |",
            row.fault,
            backlog.reports_missing_at_street,
            row.converge_secs
                .map_or("—".to_owned(), |s| format!("{s:.1}")),
            latency.count,
            latency.p50_ms,
            latency.p99_ms,
            latency.max_ms
        );
    }
    out
}

/// One line per row that did not pass, saying what the checker saw.
pub fn findings(rows: &[Row]) -> String {
    let mut out = String::new();
    for row in rows.iter().filter(|r| !r.passed() || !r.notes.is_empty()) {
        let mut parts = Vec::new();
        if let Some(error) = &row.error {
            parts.push(format!("run failed: {error}"));
        }
        if !row.notes.is_empty() {
            parts.push(row.notes.clone());
        }
        parts.extend(row.fault_failures.iter().map(|f| format!("FAILED: {f}")));
        if let Some(verdict) = &row.verdict {
            let findings = verdict.findings();
            if !findings.is_empty() {
                parts.push(findings);
            }
            if !row.passed() {
                parts.extend(verdict.examples.iter().take(3).cloned());
            }
        }
        if row.abandoned_reports > 0 {
            parts.push(format!(
                "{} reports never acknowledged",
                row.abandoned_reports
            ));
        }
        let _ = writeln!(out, "- `{}`: {}", row.slug, parts.join("; "));
    }
    out
}
