//! The district tier (区): the district command center takes escalated cases, dispatches them to
//! district departments and closes them; it keeps every case of the district.

use std::future::Future;

use tokio::net::TcpListener;
use wangge_proto as pb;
use wangge_tier::Config;

/// Serves the district tier on `listener` until `shutdown` resolves: the command console, the
/// district's departments and the evaluation (综合评价), besides what every tier serves.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    wangge_tier::run(
        pb::Tier::District,
        config,
        listener,
        shutdown,
        wangge_tier::evaluation::mount_center,
    )
    .await
}
