//! The village/community tier (居/村): grid workers' field apps report cases and confirm on-site
//! checks here; the community workstation reviews self-handled cases.

mod field;

use std::future::Future;

use tokio::net::TcpListener;
use wangge_proto as pb;
use wangge_tier::Config;

pub use field::{Community, FieldApp};

/// Serves the village tier on `listener` until `shutdown` resolves.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    wangge_tier::run(
        pb::Tier::Village,
        config,
        listener,
        shutdown,
        |shared, routes| {
            routes
                .add_service(
                    shared.guard(
                        pb::field_app_service_server::FieldAppServiceServer::new(FieldApp(
                            shared.clone(),
                        ))
                        .max_decoding_message_size(shared.max_request_bytes),
                    ),
                )
                .add_service(
                    shared.guard(
                        pb::community_service_server::CommunityServiceServer::new(Community(
                            shared.clone(),
                        ))
                        .max_decoding_message_size(shared.max_request_bytes),
                    ),
                );
            vec![
                pb::field_app_service_server::SERVICE_NAME,
                pb::community_service_server::SERVICE_NAME,
            ]
        },
    )
    .await
}
