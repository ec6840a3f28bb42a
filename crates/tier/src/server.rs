//! Start-up and shutdown of a tier: the database, NATS, the background work under the supervisor,
//! the gRPC server with health, reflection and grpc-web, and the one graceful stop.

use std::future::Future;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream;
use secrecy::ExposeSecret;
use sqlx::postgres::PgConnectOptions;
use tokio::net::TcpListener;
use tokio::sync::{Notify, mpsc};
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;
use tonic::service::RoutesBuilder;
use tonic_health::ServingStatus;
use tracing::{error, info, warn};
use wangge_bus::receipts::ReceiptSender;
use wangge_bus::sync::SyncClient;
use wangge_bus::{Consumer, Relay, RelayHandle, RelaySettings};
use wangge_domain::Scope;
use wangge_domain::case::tier_name;
use wangge_proto as pb;
use wangge_store::Class;

use crate::engine::{EventLimit, load_grids, load_rules};
use crate::tls::{self, NatsTls as _};
use crate::{Config, Engine, Shared, admin, query, reconcile, replicate, supervisor};

/// Runs a tier until `shutdown` resolves: connects its database (migrating it) and NATS, starts the
/// background work under the supervisor, serves gRPC on `listener` with the shared services plus
/// those `mount` adds (returning their gRPC names, for reflection), then stops in order: health
/// NOT_SERVING, streams end, in-flight calls finish, background work stops, NATS drains, the pool
/// closes. Returns an error when a background task kept failing (the process should exit non-zero).
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
    // Transport security first: a tier that would talk in plain text beyond loopback stops here.
    tls::check(&config.tls, listener.local_addr()?, &config.nats_url)?;
    let grpc = tls::grpc_server(&config.tls)?;
    let name = format!("{}-{}", tier_name(tier), scope.prefix());
    let options = PgConnectOptions::from_str(config.database_url.expose_secret())
        .context("database_url is not a PostgreSQL URL")?
        .application_name(&name)
        // No JIT: a tier's statements are short, and at a district's size a misestimate lifts a
        // few of them (the evaluation) over JIT's cost thresholds, where compiling took 1.4 s of
        // a 2.3 s query that runs in 84 ms without (wangge bench --scale, 1M cases).
        .options([("jit", "off")]);
    let pool = wangge_store::connect(options, config.database_max_connections)
        .await
        .context("cannot open the database")?;
    let grids = load_grids(&pool, &scope).await?;
    let rules = load_rules(&pool, &scope, &grids).await?;
    if grids.is_empty() {
        warn!(%scope, "no grids in scope: seed the registry (wangge-seed), reports will be refused");
    }

    let (client, reconnected) = connect_nats(&config, &name).await?;
    // A tier on a leaf nats-server reaches the hub's JetStream by naming its domain.
    let js = match config.jetstream_domain.as_deref() {
        Some(domain) if !domain.is_empty() => jetstream::with_domain(client.clone(), domain),
        _ => jetstream::new(client.clone()),
    };
    // The server may carry less than configured: an event must fit what it announces.
    let max_event_bytes = EventLimit::following(config.delivery.max_event_bytes, client.clone());

    let relay_handle = RelayHandle::default();
    let engine = Arc::new(
        Engine::new(
            tier,
            scope,
            pool.clone(),
            grids,
            relay_handle.clone(),
            config.peers_of(tier),
            max_event_bytes.clone(),
        )
        .with_intake(config.intake)
        .with_time(match (&config.clock.time, config.clock.virtual_time) {
            (Some(time), _) => time.clone(),
            (None, true) => {
                warn!("virtual time: an admin may move this tier's clock (clock.virtual_time)");
                crate::time::ShiftedTime::new()
            }
            (None, false) => Arc::new(crate::time::SystemTime),
        })
        .with_rules(rules),
    );
    let durable = config.consumer_name.clone().unwrap_or_else(|| name.clone());
    let supervisor = supervisor::Supervisor::new(supervisor::RestartPolicy::default());
    let supervision = Arc::new(std::sync::Mutex::new(
        crate::supervise::ScanReport::default(),
    ));
    let reconciliation = spawn_background(
        &supervisor,
        Parts {
            config: &config,
            engine: engine.clone(),
            client: client.clone(),
            js: js.clone(),
            relay: relay_handle,
            reconnected,
            durable: durable.clone(),
            max_event_bytes: max_event_bytes.clone(),
            supervision: supervision.clone(),
        },
    );

    let serving = Arc::new(AtomicBool::new(true));
    let shared = Shared {
        authenticate: authenticate(&config.auth)?,
        max_request_bytes: config.auth.max_request_bytes,
        lights_every: Duration::from_secs(config.clock.supervise_every_secs.max(1)),
        engine,
        stopping: CancellationToken::new(),
        ops: Arc::new(admin::Operations {
            supervisor: supervisor.clone(),
            nats: client.clone(),
            js: js.clone(),
            durable,
            reconciliation,
            serving: serving.clone(),
            supervision,
        }),
    };
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_service_status("", ServingStatus::Serving).await;
    // Health follows the background work: NOT_SERVING while a task is down.
    {
        let (health, stopping, serving) =
            (health.clone(), shared.stopping.clone(), serving.clone());
        let mut healthy = supervisor.healthy();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    changed = healthy.changed() => if changed.is_err() { return },
                    _ = stopping.cancelled() => return,
                }
                let up = *healthy.borrow_and_update();
                serving.store(up, Ordering::Relaxed);
                let status = if up {
                    ServingStatus::Serving
                } else {
                    ServingStatus::NotServing
                };
                health.set_service_status("", status).await;
            }
        });
    }
    // Health and reflection stay open; every wangge service sits behind the authentication
    // interceptor (`Shared::guard`).
    let mut routes = RoutesBuilder::default();
    routes
        .add_service(health_service)
        .add_service(
            shared.guard(
                pb::case_query_service_server::CaseQueryServiceServer::new(query::Cases(
                    shared.clone(),
                ))
                .max_decoding_message_size(shared.max_request_bytes),
            ),
        )
        .add_service(
            shared.guard(
                pb::registry_service_server::RegistryServiceServer::new(query::Registry(
                    shared.clone(),
                ))
                .max_decoding_message_size(shared.max_request_bytes),
            ),
        )
        .add_service(
            shared.guard(
                pb::admin_service_server::AdminServiceServer::new(admin::Admin(shared.clone()))
                    .max_decoding_message_size(shared.max_request_bytes),
            ),
        );
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
    // Both reflection protocols are listed, so both descriptors are registered with each: a
    // builder only adds its own protocol's, and a client that describes every listed service
    // would get NOT_FOUND for the other one.
    let reflection = || {
        services.iter().chain(&mounted).fold(
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(wangge_proto::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(
                    tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
                ),
            |builder, name| builder.with_service_name(*name),
        )
    };
    // v1alpha too: grpcurl before 1.8.8 and many other tools only speak that one.
    routes
        .add_service(reflection().build_v1()?)
        .add_service(reflection().build_v1alpha()?);

    let stopping = shared.stopping.clone();
    let watched = supervisor.clone();
    let signal = async move {
        tokio::select! {
            _ = shutdown => {}
            _ = watched.failed() => {}
        }
        serving.store(false, Ordering::Relaxed);
        health
            .set_service_status("", ServingStatus::NotServing)
            .await;
        stopping.cancel();
    };
    info!(
        tier = tier_name(tier),
        %scope,
        listen = %listener.local_addr()?,
        grpc_tls = config.tls.grpc_cert.is_some(),
        client_certificates = config.tls.grpc_client_ca.is_some(),
        max_event_bytes = max_event_bytes.bytes(),
        "serving"
    );
    grpc
        // One span per call, named by its method, so every log line of a call says which call it was.
        .trace_fn(|request| tracing::info_span!("rpc", method = %request.uri().path()))
        .accept_http1(true)
        .layer(tonic_web::GrpcWebLayer::new())
        // Inside grpc-web, so browser callers get the same RESOURCE_EXHAUSTED.
        .layer(tower::util::MapResponseLayer::new(
            crate::limits::oversized_is_resource_exhausted::<tonic::body::Body>,
        ))
        .add_routes(routes.routes())
        .serve_with_incoming_shutdown(without_nagle(TcpListenerStream::new(listener)), signal)
        .await?;

    info!("grpc stopped, stopping the background work");
    supervisor.shutdown().await;
    if let Err(error) = tokio::time::timeout(Duration::from_secs(5), client.drain()).await {
        warn!(%error, "nats drain timed out");
    }
    pool.close().await;
    if let Some(failed) = supervisor.gave_up() {
        error!(task = %failed, "stopped because a background task kept failing");
        anyhow::bail!("background task {failed}");
    }
    info!("stopped");
    Ok(())
}

/// The interceptor that verifies callers' tokens against the configured keys.
fn authenticate(config: &crate::config::AuthConfig) -> anyhow::Result<crate::authn::Authenticate> {
    let mut keys = Vec::new();
    for path in &config.public_keys {
        keys.push(wangge_auth::PublicKey::load(path).context("auth.public_keys")?);
    }
    if let Some(path) = &config.jwks_file {
        keys.extend(wangge_auth::PublicKey::load_jwks(path).context("auth.jwks_file")?);
    }
    anyhow::ensure!(
        !keys.is_empty(),
        "auth: no public keys (auth.public_keys or auth.jwks_file), so every call would be \
         refused; `wangge keygen` makes a development key pair"
    );
    let kids: Vec<&str> = keys.iter().map(|k| k.kid.as_str()).collect();
    info!(keys = ?kids, "caller tokens are verified with these keys");
    let verifier = wangge_auth::Verifier::new(keys, config.issuer.clone(), config.leeway_secs);
    let nonzero = |value: u32, name: &str| {
        std::num::NonZeroU32::new(value).with_context(|| format!("auth.{name} must be above 0"))
    };
    Ok(crate::authn::Authenticate::new(
        verifier,
        nonzero(config.calls_per_second, "calls_per_second")?,
        nonzero(config.burst, "burst")?,
    ))
}

/// What the background work is made of.
struct Parts<'a> {
    config: &'a Config,
    engine: Arc<Engine>,
    client: async_nats::Client,
    js: jetstream::Context,
    relay: RelayHandle,
    reconnected: Arc<Notify>,
    /// The durable consumer's name, also the queue group of the tier scope's instances.
    durable: String,
    max_event_bytes: EventLimit,
    /// What the automatic 督办 scans report.
    supervision: Arc<std::sync::Mutex<crate::supervise::ScanReport>>,
}

/// Starts relay, consumer, receipts, answers, reconciler, pruner and the 督办 scan under
/// `supervisor`; returns
/// the reconciliation report they keep.
fn spawn_background(
    supervisor: &supervisor::Supervisor,
    parts: Parts<'_>,
) -> Arc<std::sync::Mutex<reconcile::Report>> {
    let Parts {
        config,
        engine,
        client,
        js,
        relay: relay_handle,
        reconnected,
        durable,
        max_event_bytes,
        supervision,
    } = parts;
    let (tier, scope, pool) = (engine.tier(), *engine.scope(), engine.pool().clone());
    let delivery = &config.delivery;
    let (repairs_tx, repairs_rx) = mpsc::channel(1024);
    let replicator = Arc::new(replicate::Replicator::new(
        engine.clone(),
        ReceiptSender::new(client.clone(), tier, &scope),
        repairs_tx,
    ));
    let reconciliation = Arc::new(std::sync::Mutex::new(reconcile::Report::default()));
    let confirm_within = Duration::from_secs(delivery.confirm_within_secs.max(1));

    {
        let (pool, js, handle) = (pool.clone(), js.clone(), relay_handle.clone());
        let settings = RelaySettings {
            confirm_within,
            max_failures: delivery.max_publish_failures.max(1),
            peers: engine.peers().len(),
            ..RelaySettings::default()
        };
        supervisor.spawn("relay", move |stop| {
            let relay = Relay::new(pool.clone(), js.clone(), settings.clone(), handle.clone());
            async move {
                relay.run(stop).await;
                Ok(())
            }
        });
    }
    {
        let (js, durable, replicator) = (js.clone(), durable.clone(), replicator.clone());
        let filter = wangge_bus::scope_filter(&scope);
        // A consumer back after a cut (a leaf link that returned) is a reconnect too.
        let resumed = reconnected.clone();
        supervisor.spawn("consumer", move |stop| {
            let consumer = Consumer::new(js.clone(), durable.clone(), filter.clone())
                .notify_resumed(resumed.clone());
            let handler = replicate::Consuming(replicator.clone());
            async move {
                consumer.run(handler, stop).await;
                Ok(())
            }
        });
    }
    {
        let (client, durable, pool) = (client.clone(), durable.clone(), pool.clone());
        let relay = relay_handle.clone();
        supervisor.spawn("receipts", move |stop| {
            let (pool, relay) = (pool.clone(), relay.clone());
            let receive = wangge_bus::receipts::receive(
                client.clone(),
                tier,
                scope,
                durable.clone(),
                move |peer, community, ids| {
                    let (pool, relay) = (pool.clone(), relay.clone());
                    async move {
                        let within = wangge_bus::community_subject_prefix(&community);
                        let gone =
                            wangge_store::outbox::confirm(&pool, tier_name(peer), &within, &ids)
                                .await?;
                        // Room in the window of events on their way: the relay may send more.
                        relay.wake();
                        Ok(gone)
                    }
                },
                stop,
            );
            async move { Ok(receive.await?) }
        });
    }
    {
        let (engine, report) = (engine.clone(), supervision.clone());
        let every = Duration::from_secs(config.clock.supervise_every_secs.max(1));
        supervisor.spawn("supervision", move |stop| {
            let (engine, report) = (engine.clone(), report.clone());
            async move {
                crate::supervise::run(engine, every, report, stop).await;
                Ok(())
            }
        });
    }
    {
        let (client, durable) = (client.clone(), durable.clone());
        let answers = reconcile::Answers {
            engine: engine.clone(),
            max_bytes: max_event_bytes,
        };
        supervisor.spawn("answers", move |stop| {
            let serve = wangge_bus::sync::serve(
                client.clone(),
                tier,
                scope,
                durable.clone(),
                answers.clone(),
                stop,
            );
            async move { Ok(serve.await?) }
        });
    }
    {
        let settings = reconcile::Settings {
            every: Duration::from_secs(delivery.reconcile_every_secs.max(1)),
            window: Duration::from_secs(delivery.reconcile_window_days.max(1) * 24 * 3600),
            settle: Duration::from_secs(30).min(confirm_within * 2),
            confirm_within,
            sweep_every: Duration::from_secs(delivery.sweep_every_secs.max(1)),
            park_expiry: Duration::from_secs(delivery.park_expiry_hours.max(1) * 3600),
        };
        let sync = SyncClient::new(
            client.clone(),
            Duration::from_millis(delivery.sync_timeout_ms.max(100)),
        );
        let repairs = Arc::new(tokio::sync::Mutex::new(repairs_rx));
        let (engine, replicator, report, reconnected) = (
            engine.clone(),
            replicator.clone(),
            reconciliation.clone(),
            reconnected.clone(),
        );
        supervisor.spawn("reconciler", move |stop| {
            let reconciler = reconcile::Reconciler {
                engine: engine.clone(),
                replicator: replicator.clone(),
                sync: sync.clone(),
                settings: settings.clone(),
                report: report.clone(),
                repairs: repairs.clone(),
                reconnected: reconnected.clone(),
            };
            reconciler.run(stop)
        });
    }
    {
        let pool = pool.clone();
        let retention = Duration::from_secs(config.inbox_retention_hours * 3600);
        let every = Duration::from_secs(config.inbox_prune_every_secs.max(1));
        supervisor.spawn("pruner", move |stop| {
            prune_inbox(pool.clone(), retention, every, stop)
        });
    }

    reconciliation
}

/// Connects to NATS (retrying in the background until it is there); the notify fires on every
/// (re)connection.
async fn connect_nats(
    config: &Config,
    name: &str,
) -> anyhow::Result<(async_nats::Client, Arc<Notify>)> {
    let reconnected = Arc::new(Notify::new());
    let on_event = reconnected.clone();
    let client = with_credentials(async_nats::ConnectOptions::new(), config, name)
        .await?
        .name(name)
        .retry_on_initial_connect()
        .tls(&config.tls)
        // Back on the bus within a second of the link returning (the default waits up to 4 s).
        .reconnect_delay_callback(|attempts| {
            Duration::from_millis(1 << attempts.clamp(1, 11).saturating_sub(1))
                .min(Duration::from_secs(1))
        })
        .event_callback(move |event| {
            let on_event = on_event.clone();
            async move {
                match event {
                    async_nats::Event::Connected => {
                        info!("nats connected");
                        on_event.notify_one();
                    }
                    async_nats::Event::Disconnected => warn!("nats disconnected"),
                    other => warn!(event = %other, "nats"),
                }
            }
        })
        .connect(
            config
                .nats_url
                .split(',')
                .map(str::trim)
                .collect::<Vec<_>>(),
        )
        .await
        .context("bad NATS URL")?;
    Ok((client, reconnected))
}

/// Adds the instance's NATS credential (`nats_auth`) to `options`, and with it replies under
/// `_INBOX.<name>`: the server's permissions let each user subscribe to its own inbox only, so no
/// tier can read the replies (pulled messages among them) meant for another.
async fn with_credentials(
    options: async_nats::ConnectOptions,
    config: &Config,
    name: &str,
) -> anyhow::Result<async_nats::ConnectOptions> {
    let auth = &config.nats_auth;
    if !auth.is_set() {
        return Ok(options);
    }
    let mut options = options.custom_inbox_prefix(format!("_INBOX.{name}"));
    if let Some(user) = &auth.user {
        let password = auth
            .password
            .as_ref()
            .map(|p| p.expose_secret().to_owned())
            .unwrap_or_default();
        options = options.user_and_password(user.clone(), password);
    }
    if let Some(path) = &auth.nkey_seed_file {
        let seed = std::fs::read_to_string(path)
            .with_context(|| format!("nats_auth.nkey_seed_file {}", path.display()))?;
        options = options.nkey(seed.trim().to_owned());
    }
    if let Some(path) = &auth.credentials_file {
        options = options
            .credentials_file(path)
            .await
            .with_context(|| format!("nats_auth.credentials_file {}", path.display()))?;
    }
    info!(
        user = auth.user.as_deref().unwrap_or("(nkey or creds)"),
        "nats credential set"
    );
    Ok(options)
}

/// How often the case count's deltas are folded into its total, so they stay few.
const FOLD_COUNT_EVERY: Duration = Duration::from_secs(30);

/// Removes old inbox entries now and then, so the table stays the size of the retention window,
/// and folds the case count's deltas more often, so reading the count stays cheap.
///
/// A database away for a while is waited out. A permanent failure (a table or column gone, a
/// privilege revoked: the schema is not the one this binary was built for) ends the task, so the
/// supervisor reports it and, when it persists, stops the tier: logged as a warning now and then,
/// it would let the inbox and the deltas grow unseen.
async fn prune_inbox(
    pool: sqlx::PgPool,
    retention: Duration,
    every: Duration,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let mut pruned_at: Option<tokio::time::Instant> = None;
    loop {
        if pruned_at.is_none_or(|at| at.elapsed() >= every) {
            match wangge_store::replication::prune_inbox(&pool, retention).await {
                Ok(0) => {}
                Ok(removed) => info!(removed, "old inbox entries removed"),
                Err(error) if error.class() == Class::Permanent => {
                    return Err(anyhow::Error::new(error).context("inbox pruning failed"));
                }
                Err(error) => warn!(%error, "inbox pruning failed"),
            }
            pruned_at = Some(tokio::time::Instant::now());
        }
        match wangge_store::cases::count(&pool).await {
            Ok(_) => {}
            Err(error) if error.class() == Class::Permanent => {
                return Err(anyhow::Error::new(error).context("folding the case count failed"));
            }
            Err(error) => warn!(%error, "folding the case count failed"),
        }
        tokio::select! {
            _ = tokio::time::sleep(every.min(FOLD_COUNT_EVERY)) => {}
            _ = stop.cancelled() => return Ok(()),
        }
    }
}

/// The accepted connections with Nagle's algorithm off: a response is one small write, and with
/// Nagle on it waits for the client's delayed ACK (~40 ms) before it leaves. tonic's own
/// `tcp_nodelay` applies only to listeners it binds itself; the tiers serve on an injected one.
fn without_nagle(
    incoming: TcpListenerStream,
) -> impl futures::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    use futures::StreamExt as _;
    incoming.map(|accepted| {
        let stream = accepted?;
        if let Err(error) = stream.set_nodelay(true) {
            // Served all the same, only slower.
            warn!(%error, "cannot turn Nagle's algorithm off on a connection");
        }
        Ok(stream)
    })
}
