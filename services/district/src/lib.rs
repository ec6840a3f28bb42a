//! The district tier (区): the district command center takes escalated cases, dispatches them to district departments and closes them; it keeps every case of the district.

use std::future::Future;

use tokio::net::TcpListener;
use wangge_proto as pb;
use wangge_tier::Config;
use wangge_tier::console::{Console, Departments};

/// Serves the district tier on `listener` until `shutdown` resolves.
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
        |shared, routes| {
            routes
                .add_service(
                    pb::command_console_service_server::CommandConsoleServiceServer::new(Console(
                        shared.clone(),
                    )),
                )
                .add_service(pb::department_service_server::DepartmentServiceServer::new(
                    Departments(shared.clone()),
                ));
            vec![
                pb::command_console_service_server::SERVICE_NAME,
                pb::department_service_server::SERVICE_NAME,
            ]
        },
    )
    .await
}
