//! What every tier service runs: configuration, the case engine, the bus relay and consumer, the
//! gRPC server with health, reflection and grpc-web, the services all tiers share, and the one
//! graceful shutdown path.

pub mod actor;
pub mod config;
pub mod console;
pub mod engine;
mod error;
pub mod query;
pub mod shutdown;
pub mod telemetry;
pub mod watch;

use std::future::Future;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream;
use secrecy::ExposeSecret;
use sqlx::postgres::PgConnectOptions;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::service::RoutesBuilder;
use tonic_health::ServingStatus;
use tracing::{info, warn};
use wangge_bus::{Consumer, Relay};
use wangge_domain::Scope;
use wangge_domain::case::tier_name;
use wangge_domain::grids::GridIndex;
use wangge_proto as pb;

pub use config::Config;
pub use engine::Engine;
pub use error::Error;

/// What a tier's gRPC services share.
#[derive(Debug, Clone)]
pub struct Shared {
    pub engine: Arc<Engine>,
    /// Cancelled when the service begins to stop: long-lived streams end then.
    pub stopping: CancellationToken,
}

/// Runs a tier until `shutdown` resolves: connects its database (migrating it) and NATS, starts the
/// relay and the consumer, serves gRPC on `listener` with the shared services plus those `mount` adds,
/// (returning their gRPC names, for reflection), then stops in order: health NOT_SERVING, streams end, in-flight calls finish, relay and consumer
/// stop, NATS drains, the pool closes.
pub async fn run<F>(
    tier: pb::Tier,
    config: Config,
    listener: TcpListener,
    shutdown: F,
    mount: impl FnOnce(&Shared, &mut RoutesBuilder) -> Vec<&'static str>,
) -> anyhow::Result<()>
where
    F: Future<Output = ()> + Send + 'static,
{
    let scope: Scope = config
        .scope
        .parse()
        .map_err(|e| anyhow::anyhow!("scope: {e}"))?;
    let name = format!("{}-{}", tier_name(tier), scope.prefix());
    let options = PgConnectOptions::from_str(config.database_url.expose_secret())
        .context("database_url is not a PostgreSQL URL")?
        .application_name(&name);
    let pool = wangge_store::connect(options, config.database_max_connections)
        .await
        .context("cannot open the database")?;
    let grids = load_grids(&pool, &scope).await?;
    if grids.is_empty() {
        warn!(%scope, "no grids in scope: seed the registry (wangge-seed), reports will be refused");
    }

    let client = async_nats::ConnectOptions::new()
        .name(&name)
        .retry_on_initial_connect()
        .connect(
            config
                .nats_url
                .split(',')
                .map(str::trim)
                .collect::<Vec<_>>(),
        )
        .await
        .context("bad NATS URL")?;
    // A tier on a leaf nats-server reaches the hub's JetStream by naming its domain.
    let js = match config.jetstream_domain.as_deref() {
        Some(domain) if !domain.is_empty() => jetstream::with_domain(client.clone(), domain),
        _ => jetstream::new(client.clone()),
    };

    let relay = Relay::new(pool.clone(), js.clone());
    let engine = Arc::new(Engine::new(
        tier,
        scope,
        pool.clone(),
        grids,
        relay.handle(),
    ));
    let background = CancellationToken::new();
    let tasks = TaskTracker::new();
    tasks.spawn(relay.run(background.clone()));
    let consumer = Consumer::new(
        js.clone(),
        config.consumer_name.clone().unwrap_or_else(|| name.clone()),
        wangge_bus::scope_filter(&scope),
    );
    tasks.spawn(consume(js, consumer, engine.clone(), background.clone()));
    tasks.spawn(prune_inbox(
        pool.clone(),
        Duration::from_secs(config.inbox_retention_hours * 3600),
        Duration::from_secs(config.inbox_prune_every_secs.max(1)),
        background.clone(),
    ));

    let shared = Shared {
        engine,
        stopping: CancellationToken::new(),
    };
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_service_status("", ServingStatus::Serving).await;
    let mut routes = RoutesBuilder::default();
    routes
        .add_service(health_service)
        .add_service(pb::case_query_service_server::CaseQueryServiceServer::new(
            query::Cases(shared.clone()),
        ))
        .add_service(pb::registry_service_server::RegistryServiceServer::new(
            query::Registry(shared.clone()),
        ))
        .add_service(pb::admin_service_server::AdminServiceServer::new(
            query::Admin(shared.clone()),
        ));
    let mounted = mount(&shared, &mut routes);
    // Reflection advertises what this tier serves, not every service of the API.
    let services = [
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
        pb::case_query_service_server::SERVICE_NAME,
        pb::registry_service_server::SERVICE_NAME,
        pb::admin_service_server::SERVICE_NAME,
    ];
    let reflection = || {
        services.iter().chain(&mounted).fold(
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(wangge_proto::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET),
            |builder, name| builder.with_service_name(*name),
        )
    };
    // v1alpha too: grpcurl before 1.8.8 and many other tools only speak that one.
    routes
        .add_service(reflection().build_v1()?)
        .add_service(reflection().build_v1alpha()?);

    let stopping = shared.stopping.clone();
    let signal = async move {
        shutdown.await;
        health
            .set_service_status("", ServingStatus::NotServing)
            .await;
        stopping.cancel();
    };
    info!(tier = tier_name(tier), %scope, listen = %listener.local_addr()?, "serving");
    tonic::transport::Server::builder()
        // One span per call, named by its method, so every log line of a call says which call it was.
        .trace_fn(|request| tracing::info_span!("rpc", method = %request.uri().path()))
        .accept_http1(true)
        .layer(tonic_web::GrpcWebLayer::new())
        .add_routes(routes.routes())
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), signal)
        .await?;

    info!("grpc stopped, stopping relay and consumer");
    background.cancel();
    tasks.close();
    tasks.wait().await;
    if let Err(error) = tokio::time::timeout(Duration::from_secs(5), client.drain()).await {
        warn!(%error, "nats drain timed out");
    }
    pool.close().await;
    info!("stopped");
    Ok(())
}

/// Waits for the stream (NATS may come up after us), then consumes.
async fn consume(
    js: jetstream::Context,
    consumer: Consumer,
    engine: Arc<Engine>,
    stop: CancellationToken,
) {
    let mut delay = Duration::from_millis(200);
    loop {
        match wangge_bus::ensure_stream(&js)
            .await
            .and(consumer.ensure().await)
        {
            Ok(()) => break,
            Err(error) => {
                warn!(%error, "waiting for jetstream");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = stop.cancelled() => return,
                }
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
    consumer.run(engine::Replicator(engine), stop).await;
}

/// Removes old inbox entries now and then, so the table stays the size of the retention window.
async fn prune_inbox(
    pool: sqlx::PgPool,
    retention: Duration,
    every: Duration,
    stop: CancellationToken,
) {
    loop {
        match wangge_store::cases::prune_inbox(&pool, retention).await {
            Ok(0) => {}
            Ok(removed) => info!(removed, "old inbox entries removed"),
            Err(error) => warn!(%error, "inbox pruning failed"),
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.cancelled() => return,
        }
    }
}

/// The grids of the scope, from the registry.
pub(crate) async fn load_grids(pool: &sqlx::PgPool, scope: &Scope) -> anyhow::Result<GridIndex> {
    let rows = wangge_store::registry::grids(pool, scope.prefix()).await?;
    let mut grids = Vec::with_capacity(rows.len());
    for row in rows {
        let code = row
            .grid
            .code
            .parse()
            .map_err(|e| anyhow::anyhow!("grid {}: {e}", row.grid.code))?;
        let geometry: geojson::Geometry = serde_json::from_str(&row.boundary)
            .with_context(|| format!("grid {code}: boundary is not GeoJSON"))?;
        let boundary = match geo::Geometry::<f64>::try_from(geometry)
            .with_context(|| format!("grid {code}: boundary"))?
        {
            geo::Geometry::Polygon(p) => geo::MultiPolygon(vec![p]),
            geo::Geometry::MultiPolygon(mp) => mp,
            _ => anyhow::bail!("grid {code}: boundary is not a polygon"),
        };
        grids.push((code, boundary));
    }
    let index = GridIndex::new(grids);
    info!(grids = index.len(), "grid index loaded");
    Ok(index)
}
