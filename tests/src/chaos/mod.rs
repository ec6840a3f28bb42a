//! The fault suite: the real tier binaries under a steady load of reports and console steps while
//! faults are injected one at a time (and mixed); after each, a checker holds every tier's database
//! to what the callers were told. `wangge-chaos` (src/bin) runs it; `tests/cluster/chaos.rs` runs
//! the short form in CI.
//!
//! One fault per run, each on a fresh system (nats-server, seeded databases, tiers), so a row shows
//! what its fault did and nothing else. A run: warm-up under load → inject → heal → the load goes on
//! until everything acknowledged before the heal is at every tier (the backlog drained: the
//! "converge" time) plus a short tail → the load stops → the full check, polled until it passes or
//! the deadline.

pub mod checker;
pub mod faults;
pub mod latency;
pub mod proxy;
pub mod report;
pub mod testbed;
pub mod workload;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use wangge_proto::Tier;

use self::checker::Checker;
use self::faults::Fault;
use self::latency::{Percentiles, StreetWatch};
use self::report::{Backlog, Row};
use self::testbed::Testbed;
use self::workload::{Ledger, Load, Workload};

/// How a suite runs.
#[derive(Debug, Clone)]
pub struct Options {
    /// The long form: 30 s and 5 min cuts, longer pauses and outages.
    pub long: bool,
    /// Only faults whose slug contains one of these (all when empty): `cut-village` selects every
    /// cut of the village's link, `nats-restart` both restarts of nats-server.
    pub only: Vec<String>,
    /// Fault runs at the same time, each on its own system.
    pub parallel: usize,
    pub load: Load,
    /// Load before the fault.
    pub warmup: Duration,
    /// Load after the backlog drained, before the final check.
    pub tail: Duration,
    /// From the heal: how long the system has to converge.
    pub deadline: Duration,
    /// Where the tiers' logs go.
    pub logs: PathBuf,
}

impl Options {
    /// CI-sized: every fault in a few minutes on a 2-core machine.
    pub fn short() -> Options {
        Options {
            long: false,
            only: Vec::new(),
            parallel: 3,
            load: Load {
                rate: 20.0,
                operators: 2,
            },
            warmup: Duration::from_secs(3),
            tail: Duration::from_secs(2),
            deadline: Duration::from_secs(60),
            logs: std::env::temp_dir().join(format!("wangge-chaos-{}", std::process::id())),
        }
    }

    /// On demand: the 30 s and 5 min cuts, longer outages, one fault at a time.
    pub fn long() -> Options {
        Options {
            long: true,
            parallel: 1,
            warmup: Duration::from_secs(10),
            tail: Duration::from_secs(5),
            deadline: Duration::from_secs(600),
            ..Options::short()
        }
    }

    /// The faults these options select, in order.
    pub fn faults(&self) -> Vec<Fault> {
        faults::suite(self.long)
            .into_iter()
            .filter(|f| self.only.is_empty() || self.only.iter().any(|o| f.slug().contains(o)))
            .collect()
    }
}

/// Runs the selected faults, `parallel` at a time; the rows come in suite order.
pub async fn run(options: &Options) -> Vec<Row> {
    futures::stream::iter(options.faults())
        .map(|fault| {
            let options = options.clone();
            async move {
                let slug = fault.slug();
                let title = fault.title();
                eprintln!("chaos: {slug} starting");
                // Its own task: a panic in the harness fails this row, not the suite.
                let row = match tokio::spawn(async move { run_fault(&fault, &options).await }).await
                {
                    Ok(Ok(row)) => row,
                    Ok(Err(error)) => failed(slug, title, format!("{error:#}")),
                    Err(panic) => failed(slug, title, format!("{panic}")),
                };
                eprintln!(
                    "chaos: {} {} ({:.0} s)",
                    row.slug,
                    if row.passed() { "passed" } else { "FAILED" },
                    row.run_secs
                );
                row
            }
        })
        .buffered(options.parallel.max(1))
        .collect()
        .await
}

fn failed(slug: String, fault: String, error: String) -> Row {
    Row {
        slug,
        fault,
        error: Some(error),
        ..Row::default()
    }
}

/// One fault on a fresh system.
pub async fn run_fault(fault: &Fault, options: &Options) -> anyhow::Result<Row> {
    let started = Instant::now();
    let mut bed = Testbed::start(&options.logs, &fault.slug(), fault.nats_max_payload()).await?;
    let checker = Checker::connect(&bed.database_urls()).await?;
    let department = street_department(&bed).await?;
    let ledger = Arc::new(Ledger::default());
    let watch = StreetWatch::start(bed.clients.street.clone());
    let workload = Workload::start(&bed, ledger.clone(), options.load, department);
    tokio::time::sleep(options.warmup).await;

    let injection = fault.inject(&mut bed, &workload).await?;
    let healed = Instant::now();
    let at_heal = ledger.snapshot();
    let reports_missing_at_street = checker.missing_at(Tier::Street, &at_heal, healed).await?;
    let outbox_at_heal = checker.outboxes().await?;

    // The load goes on while the backlog drains.
    let deadline = healed + options.deadline;
    let converge = loop {
        if checker.caught_up(&ledger.snapshot(), healed).await? {
            break Some(healed.elapsed());
        }
        if Instant::now() > deadline {
            break None;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    if converge.is_some() {
        tokio::time::sleep(options.tail).await;
    }
    workload.stop().await;
    let entries = ledger.snapshot();

    // Live reports during the drain: acknowledged after the heal, until the backlog was in.
    let drained = healed + converge.unwrap_or(options.deadline);
    let live: Vec<_> = entries
        .reports
        .iter()
        .filter(|r| r.at >= healed && r.at <= drained)
        .collect();
    let latencies: Vec<Duration> = live
        .iter()
        .filter_map(|r| {
            watch
                .first_seen(&r.case_id)
                .map(|seen| seen.saturating_duration_since(r.at))
        })
        .collect();
    let live_unseen = live.len() - latencies.len();
    watch.stop().await;

    // The full check, until it passes; at least a few rounds after the load stopped.
    let final_deadline = deadline.max(Instant::now() + Duration::from_secs(10));
    let verdict = loop {
        let verdict = checker.verdict(&entries, &injection.injected).await?;
        if verdict.converged() || Instant::now() > final_deadline {
            break verdict;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    bed.stop().await;

    Ok(Row {
        slug: fault.slug(),
        fault: fault.title(),
        reports_acknowledged: entries.reports.len(),
        steps_acknowledged: entries.steps.len(),
        errors_returned: entries.errors_returned(),
        errors_by_code: entries.errors.clone(),
        abandoned_reports: entries.abandoned,
        lost: verdict.lost_reports + verdict.lost_steps,
        duplicated: verdict.duplicated,
        converged: converge.is_some() && verdict.converged(),
        converge_secs: converge
            .filter(|_| verdict.converged())
            .map(|d| d.as_secs_f64()),
        backlog: Some(Backlog {
            reports_missing_at_street,
            outbox_at_heal,
            live_latency: Percentiles::of(latencies),
            live_unseen,
        }),
        verdict: Some(verdict),
        notes: injection.notes,
        fault_failures: injection.failures,
        error: None,
        run_secs: started.elapsed().as_secs_f64(),
    })
}

/// The street department the operators dispatch to: the street's 城管 (city management) unit.
async fn street_department(bed: &Testbed) -> anyhow::Result<String> {
    let departments =
        crate::fixtures::departments_of(&bed.clients, Tier::Street, "350205002000").await;
    departments
        .into_iter()
        .find(|d| d.kind == "城管")
        .map(|d| d.code)
        .ok_or_else(|| anyhow::anyhow!("the seeds have no 城管 department at the street"))
}
