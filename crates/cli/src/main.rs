//! `wangge`: the command line. `wangge demo` walks one case round the loop through the running
//! tiers' gRPC APIs, as the field app, the consoles and a department would, and prints each step;
//! `wangge load` sends a burst of reports and prints what it measured.

mod demo;
mod load;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "wangge", about = "wangge command line")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Reports a case and walks it round the loop: accept, dispatch, handle, check, close.
    Demo(demo::Args),
    /// Sends a burst of reports and prints intake rate, latency and time to reach every tier.
    Load(load::Args),
    /// Prints each tier's replication status: outbox depth and age, dead letters, cases.
    Status {
        #[arg(default_values_t = ["http://127.0.0.1:50051".to_owned(), "http://127.0.0.1:50052".to_owned(), "http://127.0.0.1:50053".to_owned()])]
        tiers: Vec<String>,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Demo(args) => demo::run(args).await,
        Command::Load(args) => load::run(args).await,
        Command::Status { tiers } => {
            for url in tiers {
                let channel = tonic::transport::Channel::from_shared(url.clone())?
                    .connect()
                    .await?;
                let s = load::status(&channel).await?;
                println!(
                    "{url} {:?} {}: {} cases, outbox {} (oldest {:.1} s), {} dead letters",
                    s.tier(),
                    s.org_prefix,
                    s.cases,
                    s.outbox_depth,
                    s.outbox_oldest_seconds,
                    s.dead_letters
                );
            }
            Ok(())
        }
    }
}
