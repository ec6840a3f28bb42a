//! `wangge-seed`: imports `seeds/` into a tier database (migrating it first) and prints what was
//! imported and every problem found. Exit status: 0 when the import ran (even with bad rows,
//! unless `--strict`), 1 when `--strict` and a row was refused, 2 when the seeds could not be read
//! or the database failed.

use std::path::PathBuf;
use std::process::ExitCode;
use std::str::FromStr;

use anyhow::Context;
use clap::Parser;
use sqlx::postgres::PgConnectOptions;
use wangge_seed::{Progress, import};

#[derive(Debug, Parser)]
#[command(
    about = "Import the seed data (orgs, grids, departments, categories, time limits, skip-tier rules, workers, calendar) into a database"
)]
struct Args {
    /// The database to seed (its schema is migrated first).
    #[arg(
        long,
        env = "WANGGE_DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/wangge"
    )]
    database_url: String,
    /// The seeds directory.
    #[arg(long, default_value = "seeds")]
    dir: PathBuf,
    /// Exit with status 1 if any row was refused.
    #[arg(long)]
    strict: bool,
}

async fn run(args: Args) -> anyhow::Result<bool> {
    let options =
        PgConnectOptions::from_str(&args.database_url).context("invalid --database-url")?;
    let target = format!(
        "{}:{}/{}",
        options.get_host(),
        options.get_port(),
        options.get_database().unwrap_or_default()
    );
    let pool = wangge_store::connect(options, 2)
        .await
        .with_context(|| format!("cannot connect to or migrate the database at {target}"))?;
    let dir = args.dir.display().to_string();
    let report = import(&pool, &args.dir, &mut |progress| {
        if let Progress::Finished(file) = progress {
            let changed = if file.changed > 0 {
                format!(" ({} changed)", file.changed)
            } else {
                String::new()
            };
            println!(
                "{}: {} imported, {} rejected{changed}",
                file.file, file.imported, file.rejected
            );
            for problem in &file.problems {
                println!("{dir}/{problem}");
            }
        }
    })
    .await?;
    pool.close().await;
    let problems = report.problems().count();
    println!(
        "seeded {target}: {} rows imported ({} changed), {} rejected, {problems} problems",
        report.imported(),
        report.changed(),
        report.rejected()
    );
    Ok(problems == 0)
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let strict = args.strict;
    match run(args).await {
        Ok(clean) if clean || !strict => ExitCode::SUCCESS,
        Ok(_) => {
            eprintln!("wangge-seed: problems found (--strict)");
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("wangge-seed: {e:#}");
            ExitCode::from(2)
        }
    }
}
