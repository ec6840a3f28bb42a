//! `wangge`: the command line. `wangge demo` walks one case round the loop through the running
//! tiers' gRPC APIs, as the field app, the consoles and a department would, and prints each step.

mod demo;

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
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Demo(args) => demo::run(args).await,
    }
}
