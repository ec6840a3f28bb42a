//! `wangge`: the command line. `wangge demo` walks one case round the loop through the running
//! tiers' gRPC APIs, as the field app, the consoles and a department would, and prints each step;
//! `wangge load` sends a burst of reports and prints what it measured; `wangge status` shows every
//! tier's health; `wangge eval` prints the assessment figures (综合评价) of a period; `wangge keygen`
//! and `wangge token` are the development token issuer.

mod credentials;
mod demo;
mod eval;
mod keys;
mod load;
mod status;
mod tls;

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
    /// Prints every tier's replication health (each with a deadline; a tier that does not answer
    /// is reported, not waited for). Exit code 0: all well, 1: a tier reports a problem, 2: a tier
    /// did not answer.
    Status(status::Args),
    /// Prints the assessment figures (综合评价) of a period per grid worker, command center,
    /// department and area, as a table or as CSV for Excel (--csv).
    Eval(eval::Args),
    /// Brings up its own databases, nats-server and tiers (release build) and measures the raw
    /// baselines and the system beside them; prints a table and writes a JSON file.
    Bench(wangge_bench::Args),
    /// Makes an Ed25519 key pair for signing development tokens.
    Keygen(keys::KeygenArgs),
    /// Prints a signed token for a demo persona or for the given subject, roles and orgs.
    Token(keys::TokenArgs),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Demo(args) => demo::run(args).await,
        Command::Load(args) => load::run(args).await,
        Command::Status(args) => std::process::exit(status::run(args).await),
        Command::Eval(args) => eval::run(args).await,
        Command::Bench(args) => wangge_bench::run(args).await,
        Command::Keygen(args) => keys::keygen(args),
        Command::Token(args) => keys::token(args),
    }
}
