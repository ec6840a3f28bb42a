//! `wangge bench`: brings up a wangge of its own (PostgreSQL databases on the server of
//! `--database-url`, a nats-server child process, the three tier binaries built beside this one)
//! and measures, in one run, the machine's raw limits and the system beside them:
//!
//! - baselines: durable single-row commits (1 and 16 connections), JetStream publish (each ack
//!   awaited, and pipelined) and pull consumption, a trivial gRPC call with 64 in flight;
//! - the system: start to SERVING, memory, one report at a time, intake (closed loop) and end to
//!   end, report → street and → district latency at fixed offered loads (open loop), CPU per
//!   report per process, and how fast a backlog drains while live reports go on.
//!
//! `--scale` is another run (`scale`): whether the calls stay flat in the size of the history. It
//! loads a synthetic history of a district (`history`: years of cases built through the state
//! machine, mostly closed, the recent ones open) into the tiers at a small size (1k cases), times
//! every read of the console, the field app and `GetStatus`, the first message of the watches and
//! the first steps of a case from outside, grows the history to a large size (1M) and times them
//! again: each call at both sizes, the ratio of the medians and the target (≤ 2x).
//!
//! Arrival at the street and district is seen on their consoles' live watches, never by counting
//! rows. Every wait has a deadline; a phase that fails is reported and the next one runs; the exit
//! status is non-zero if any failed. Nothing asserts on speed. Prints a table and writes every
//! figure to a JSON file.

mod baseline;
mod drain;
mod history;
mod load;
mod meter;
mod phases;
mod procfs;
mod report;
mod scale;
mod system;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::json;

use crate::phases::World;
use crate::report::Report;
use crate::system::Databases;

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// A PostgreSQL server where the bench may create (and drops again) databases named
    /// `wangge_bench_*`.
    #[arg(
        long,
        env = "WANGGE_BENCH_DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/postgres"
    )]
    database_url: String,
    /// The seeds folder (the tiers' registry, and the grids the reports are made in).
    #[arg(long, default_value = "seeds")]
    seeds: PathBuf,
    /// The short run for CI (under 2 minutes): shorter phases and a 10k backlog.
    #[arg(long)]
    short: bool,
    /// Where every figure goes; default `bench-<UTC time>.json` in the current directory.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Field apps sending at once in the closed-loop phases.
    #[arg(long, default_value_t = 16)]
    clients: usize,
    /// The offered loads of the open-loop phases, reports/s (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "100,500,1000")]
    rates: Vec<u32>,
    /// Reports taken while the street is paused, then drained (default 100000; 10000 with --short).
    #[arg(long)]
    backlog: Option<u64>,
    /// Where `wangge-village`, `wangge-street` and `wangge-district` are; default: beside this
    /// executable.
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// Keep the work directory (the tiers' and nats-server's logs) even when all went well.
    #[arg(long)]
    keep_logs: bool,
    /// Leave the bench's databases in place at the end (their names are printed), to look into
    /// them (EXPLAIN a slow call's query, say); drop them yourself afterwards.
    #[arg(long)]
    keep_databases: bool,
    /// The scale mode instead of the throughput run: loads a synthetic history of
    /// --scale-small cases (a district's years, mostly closed, the recent ones open) into all
    /// three tiers, times every read of the console, the field app and GetStatus, the first
    /// message of the watches, a report and the street's first steps on it, from outside; grows
    /// the history to --scale-cases and times them again. Prints each call at both sizes and the
    /// ratio of the medians against the target (≤ 2x). Loading 1M cases takes a few minutes and
    /// ~25 GB of disk (the history and the three tiers' copies of it).
    #[arg(long, conflicts_with_all = ["short", "backlog", "rates", "clients"])]
    scale: bool,
    /// The large history of --scale, cases.
    #[arg(long, default_value_t = 1_000_000)]
    scale_cases: u64,
    /// The small history of --scale, cases: the newest of the large one, to which the large one's
    /// working set is added (its older cases still open at the end or changed in its last 25 h),
    /// so that both sizes hold the same open work and the same last day.
    #[arg(long, default_value_t = 1_000)]
    scale_small: u64,
    /// The years the history of --scale reaches back.
    #[arg(long, default_value_t = 3.0)]
    scale_years: f64,
    /// Timed calls of each kind at each size, after up to 5 untimed ones (a kind is timed for at
    /// most 60 s once it has 5).
    #[arg(long, default_value_t = 100)]
    scale_calls: usize,
}

/// How long each phase runs.
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    baseline: Duration,
    settle: Duration,
    single: Duration,
    intake: Duration,
    load: Duration,
    rates: Vec<u32>,
    backlog: u64,
    /// How long background CPU is measured with nothing sent.
    idle: Duration,
    /// How long the drain is watched at most.
    drain_window: Duration,
    /// Live reports a second sent while the backlog drains.
    live_rate: f64,
    clients: usize,
}

impl Plan {
    fn of(args: &Args) -> Plan {
        let secs = Duration::from_secs_f64;
        let plan = if args.short {
            Plan {
                baseline: secs(1.5),
                settle: secs(2.0),
                idle: secs(3.0),
                single: secs(3.0),
                intake: secs(5.0),
                load: secs(5.0),
                rates: Vec::new(),
                backlog: 10_000,
                drain_window: secs(40.0),
                live_rate: 5.0,
                clients: 16,
            }
        } else {
            Plan {
                baseline: secs(5.0),
                settle: secs(3.0),
                idle: secs(5.0),
                single: secs(10.0),
                intake: secs(30.0),
                load: secs(30.0),
                rates: Vec::new(),
                backlog: 100_000,
                drain_window: secs(180.0),
                live_rate: 5.0,
                clients: 16,
            }
        };
        Plan {
            rates: args.rates.iter().copied().filter(|r| *r > 0).collect(),
            backlog: args.backlog.unwrap_or(plan.backlog),
            clients: args.clients.max(1),
            ..plan
        }
    }
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let plan = Plan::of(&args);
    let mode = if args.scale {
        "scale"
    } else if args.short {
        "short"
    } else {
        "full"
    };
    let begun = Instant::now();
    let mut report = Report::default();
    report.meta("wangge_bench", json!(1));
    report.meta("mode", json!(mode));
    report.meta("started_at", json!(chrono::Utc::now().to_rfc3339()));
    report.meta("machine", procfs::machine());
    report.meta("git", git());
    let settings = if args.scale {
        json!({
            "scale_small": args.scale_small,
            "scale_cases": args.scale_cases,
            "scale_years": args.scale_years,
            "scale_calls": args.scale_calls,
            "scope": load::SCOPE,
        })
    } else {
        json!({
            "clients": plan.clients,
            "rates": plan.rates,
            "backlog": plan.backlog,
            "baseline_s": plan.baseline.as_secs_f64(),
            "single_s": plan.single.as_secs_f64(),
            "intake_s": plan.intake.as_secs_f64(),
            "load_s": plan.load.as_secs_f64(),
            "idle_s": plan.idle.as_secs_f64(),
            "drain_window_s": plan.drain_window.as_secs_f64(),
            "live_rate": plan.live_rate,
            "scope": load::SCOPE,
        })
    };
    report.meta("settings", settings);
    let json_path = args.json.clone().unwrap_or_else(|| {
        PathBuf::from(format!(
            "bench-{}.json",
            chrono::Utc::now().format("%Y%m%dT%H%M%SZ")
        ))
    });

    let temp = tempfile::Builder::new()
        .prefix("wangge-bench-")
        .tempdir()
        .context("cannot make a work directory")?;
    let mut world = World {
        work: temp.path().to_owned(),
        temp: Some(temp),
        databases: Databases::new(&args.database_url)?,
        nats: None,
        tiers: Vec::new(),
        watches: Vec::new(),
    };
    let outcome = tokio::select! {
        outcome = async {
            if args.scale {
                scale::all(&args, &mut world, &mut report).await
            } else {
                phases::all(&args, &plan, &mut world, &mut report).await
            }
        } => outcome,
        signal = interrupted() => Err(anyhow::anyhow!("interrupted by {signal}")),
    };
    if let Err(error) = &outcome {
        report.note(format!("the run stopped early: {error:#}"));
    }
    eprintln!("==> tearing down");
    world
        .teardown(&mut report, args.keep_logs, args.keep_databases)
        .await;
    report.meta("seconds", json!(begun.elapsed().as_secs_f64()));

    println!(
        "\nwangge bench ({mode}), {:.0} s{}",
        begun.elapsed().as_secs_f64(),
        report.table()
    );
    let text = serde_json::to_string_pretty(&report.json())?;
    std::fs::write(&json_path, text + "\n")
        .with_context(|| format!("cannot write {}", json_path.display()))?;
    println!("\nEvery figure: {}", json_path.display());

    outcome?;
    let failures = report.failures();
    anyhow::ensure!(
        failures.is_empty(),
        "{} phase(s) failed:\n  {}",
        failures.len(),
        failures.join("\n  ")
    );
    Ok(())
}

/// The first SIGINT or SIGTERM.
async fn interrupted() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut term) = signal(SignalKind::terminate()) else {
        let _ = tokio::signal::ctrl_c().await;
        return "SIGINT";
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => "SIGINT",
        _ = term.recv() => "SIGTERM",
    }
}

/// The commit the bench runs at, when this is a git checkout.
fn git() -> serde_json::Value {
    let ask = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .stderr(std::process::Stdio::null())
            .output()
            .ok()
            .filter(|out| out.status.success())
            .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_owned())
    };
    match ask(&["rev-parse", "HEAD"]) {
        Some(commit) => {
            let dirty = ask(&["status", "--porcelain", "--untracked-files=no"])
                .map(|changes| !changes.is_empty());
            json!({ "commit": commit, "dirty": dirty })
        }
        None => serde_json::Value::Null,
    }
}
