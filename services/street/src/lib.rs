//! The street/town tier (街/镇): the street command center accepts (立案), dispatches to street
//! departments, asks for on-site checks, closes, and escalates to the district.

use std::future::Future;

use tokio::net::TcpListener;
use wangge_proto as pb;
use wangge_tier::Config;

/// Serves the street tier on `listener` until `shutdown` resolves: the command console, the
/// street's departments and the evaluation (综合评价), besides what every tier serves.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    wangge_tier::run(
        pb::Tier::Street,
        config,
        listener,
        shutdown,
        wangge_tier::evaluation::mount_center,
    )
    .await
}
