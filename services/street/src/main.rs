//! The wangge-street binary: configuration, logs, listener, signal; the rest is the library.

use clap::Parser;
use wangge_proto::Tier;
use wangge_tier::config::{Cli, dump};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let config = cli.load(Tier::Street)?;
    if cli.dump_config {
        print!("{}", dump(&config)?);
        return Ok(());
    }
    wangge_tier::telemetry::init(&config.log);
    // Bind before any other work, so a port clash fails fast.
    let listener = tokio::net::TcpListener::bind(config.listen).await?;
    wangge_street::run(config, listener, wangge_tier::shutdown::signal()).await
}
