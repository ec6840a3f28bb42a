//! `wangge-chaos`: the fault suite. Starts nats-server and the three tier binaries (built by
//! `cargo build --workspace --bins`) on fresh databases, injects each fault under a steady load,
//! checks every tier afterwards and prints the table of the README.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use clap::Parser;
use wangge_tests::chaos::{self, Options, report};

#[derive(Debug, Parser)]
#[command(
    about = "Injects faults into a running wangge under load and checks that nothing is lost or doubled"
)]
struct Args {
    /// CI-sized runs (the default): 10 s pauses and cuts, 60 s to converge.
    #[arg(long, conflicts_with = "long")]
    short: bool,
    /// 30 s and 5 min link cuts, 30 s outages, 10 min to converge, one fault at a time.
    #[arg(long)]
    long: bool,
    /// Only the faults whose name contains this; repeat for several (see --list).
    #[arg(long, value_name = "FAULT")]
    only: Vec<String>,
    /// Also write the rows as JSON to this file.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Fault runs at the same time, each on its own system (default: 3 short, 1 long).
    #[arg(long)]
    parallel: Option<usize>,
    /// Reports per second.
    #[arg(long)]
    rate: Option<f64>,
    /// Where the tiers' logs go (default: a directory under $TMPDIR).
    #[arg(long, value_name = "DIR")]
    logs: Option<PathBuf>,
    /// Print the faults of the chosen form and exit.
    #[arg(long)]
    list: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<ExitCode> {
    let args = Args::parse();
    let mut options = if args.long {
        Options::long()
    } else {
        Options::short()
    };
    options.only = args.only;
    if let Some(parallel) = args.parallel {
        options.parallel = parallel;
    }
    if let Some(rate) = args.rate {
        options.load.rate = rate;
    }
    if let Some(logs) = args.logs {
        options.logs = logs;
    }
    let faults = options.faults();
    if args.list {
        for fault in &faults {
            println!("{:<24} {}", fault.slug(), fault.title());
        }
        return Ok(ExitCode::SUCCESS);
    }
    anyhow::ensure!(!faults.is_empty(), "no fault matches --only");
    eprintln!(
        "chaos: {} faults, {} at a time, {} reports/s; tier logs in {}",
        faults.len(),
        options.parallel,
        options.load.rate,
        options.logs.display()
    );

    let started = Instant::now();
    let rows = chaos::run(&options).await;
    println!("{}", report::table(&rows));
    let cuts: Vec<String> = faults
        .iter()
        .filter(|f| f.is_cut())
        .map(|f| f.slug())
        .collect();
    if !cuts.is_empty() {
        println!(
            "Backlog drain after the link cuts (live report→street latency while it drained):\n"
        );
        println!(
            "{}",
            report::drain_table(&rows, |row| cuts.contains(&row.slug))
        );
    }
    let findings = report::findings(&rows);
    if !findings.is_empty() {
        println!("{findings}");
    }
    println!("suite time {:.0} s", started.elapsed().as_secs_f64());
    if let Some(path) = args.json {
        std::fs::write(&path, serde_json::to_string_pretty(&rows)?)?;
    }
    Ok(if rows.iter().all(|r| r.passed()) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
