//! The three tiers in-process against NATS and three fresh databases, with gRPC clients. NATS is
//! one nats-server, or the production topology (a district hub, the village and the street on leaf
//! nodes) with [`Cluster::start_on_leaves`] or, for the whole suite, `WANGGE_TEST_TOPOLOGY=leaf`.

use std::net::SocketAddr;
use std::time::Duration;

use crate::Channel;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::Request;
use tonic::transport::{ClientTlsConfig, Endpoint};
use wangge_proto as pb;
use wangge_proto::Tier;
use wangge_tier::Config;

use crate::db::TestDb;
use crate::eventually;
use crate::nats::{NatsServer, credential_of};
use crate::tls::TestPki;
use crate::topology::{self, LeafNodes, NatsTopology};

/// The village and the street serve 新阳街道 (Haicang), the district serves Haicang.
pub const VILLAGE_SCOPE: &str = "350205002";
pub const STREET_SCOPE: &str = "350205002";
pub const DISTRICT_SCOPE: &str = "350205";

/// One tier running inside the test process.
pub struct TierHandle {
    pub tier: Tier,
    pub addr: SocketAddr,
    pub db: TestDb,
    pub config: Config,
    /// How the test's clients reach the tier: plain text unless set.
    client_tls: Option<ClientTlsConfig>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

/// Delivery timings short enough for tests: confirmations checked after 2 s, reconciliation every
/// 5 s, the park swept every second.
pub fn quick_delivery(config: &mut Config) {
    config.delivery.confirm_within_secs = 2;
    config.delivery.reconcile_every_secs = 5;
    config.delivery.sweep_every_secs = 1;
    config.delivery.sync_timeout_ms = 1000;
}

impl TierHandle {
    pub async fn start(tier: Tier, scope: &str, nats_url: &str, db: TestDb) -> TierHandle {
        TierHandle::start_with(tier, scope, nats_url, db, |_| {}).await
    }

    /// Like [`Self::start`], with the configuration adjusted by `tweak`.
    pub async fn start_with(
        tier: Tier,
        scope: &str,
        nats_url: &str,
        db: TestDb,
        tweak: impl FnOnce(&mut Config),
    ) -> TierHandle {
        TierHandle::start_reached(tier, scope, nats_url, db, None, tweak).await
    }

    async fn start_reached(
        tier: Tier,
        scope: &str,
        nats_url: &str,
        db: TestDb,
        client_tls: Option<ClientTlsConfig>,
        tweak: impl FnOnce(&mut Config),
    ) -> TierHandle {
        // Below the ephemeral range, so that a restart finds the port free (see `free_port`).
        let listener = TcpListener::bind(("127.0.0.1", crate::free_port()))
            .await
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let mut config = Config::defaults(tier);
        config.scope = scope.to_owned();
        config.listen = addr;
        config.database_url = db.url.clone().into();
        config.database_max_connections = 8;
        config.nats_url = nats_url.to_owned();
        config.auth.public_keys = vec![crate::identity::public_key().to_owned()];
        // One test subject drives what many people would: only the limits test keeps the
        // per-caller defaults.
        config.auth.calls_per_second = 10_000;
        config.auth.burst = 10_000;
        quick_delivery(&mut config);
        tweak(&mut config);
        TierHandle::launch(tier, listener, config, client_tls, db).await
    }

    async fn launch(
        tier: Tier,
        listener: TcpListener,
        config: Config,
        client_tls: Option<ClientTlsConfig>,
        db: TestDb,
    ) -> TierHandle {
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let shutdown = async move {
            let _ = stopped.await;
        };
        let run_config = config.clone();
        let task = tokio::spawn(async move {
            let config = run_config;
            match tier {
                Tier::Village => wangge_village::run(config, listener, shutdown).await,
                Tier::Street => wangge_street::run(config, listener, shutdown).await,
                _ => wangge_district::run(config, listener, shutdown).await,
            }
        });
        let handle = TierHandle {
            tier,
            addr,
            db,
            config,
            client_tls,
            stop: Some(stop),
            task: Some(task),
        };
        handle.wait_serving().await;
        handle
    }

    /// Stops the tier gracefully and starts it again on the same port, database and configuration.
    pub async fn restart(&mut self) {
        self.stop().await.unwrap();
        self.resume().await;
    }

    /// Starts a stopped tier again on the same port, database and configuration.
    pub async fn resume(&mut self) {
        let listener = TcpListener::bind(self.addr).await.unwrap();
        let db = TestDb {
            name: std::mem::take(&mut self.db.name),
            url: self.db.url.clone(),
        };
        let client_tls = self.client_tls.take();
        *self = TierHandle::launch(self.tier, listener, self.config.clone(), client_tls, db).await;
    }

    /// The tier's gRPC endpoint, over TLS when the tier serves so.
    pub fn endpoint(&self) -> Endpoint {
        crate::endpoint(self.addr, self.client_tls.as_ref())
    }

    pub async fn channel(&self) -> Channel {
        crate::identity::observed(self.endpoint().connect().await.unwrap())
    }

    async fn wait_serving(&self) {
        eventually("the tier to serve", Duration::from_secs(20), || {
            crate::serving_at(self.endpoint())
        })
        .await;
    }

    /// Kills the tier as a crash would: its task is aborted mid-work, no shutdown runs (open
    /// transactions roll back when their connections drop). `resume` starts it again.
    ///
    /// Only the task of `run` (the gRPC server) dies: the background tasks the tier spawned (relay,
    /// consumer, 督办 scan, reconciler) are tasks of their own and keep running. A test of what a
    /// dead instance no longer does runs the tier's binary ([`crate::process::TierProcess`]).
    pub async fn kill(&mut self) {
        self.stop.take();
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }

    /// Graceful stop; returns what `run` returned.
    pub async fn stop(&mut self) -> anyhow::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match self.task.take() {
            Some(task) => task.await?,
            None => Ok(()),
        }
    }
}

impl Drop for TierHandle {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// Which NATS a test cluster runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Topology {
    /// One nats-server with JetStream, every tier connected to it.
    SingleServer,
    /// The district hub (JetStream, domain [`topology::DOMAIN`]) with the district connected to it,
    /// and the village and the street each on a leaf node of it.
    LeafNodes,
}

impl Topology {
    /// `WANGGE_TEST_TOPOLOGY`: `leaf` runs every [`Cluster::start`] on leaf nodes; unset or
    /// `single`, on one server.
    pub fn from_env() -> Topology {
        match std::env::var("WANGGE_TEST_TOPOLOGY").as_deref() {
            Err(_) | Ok("" | "single") => Topology::SingleServer,
            Ok("leaf") => Topology::LeafNodes,
            Ok(other) => panic!("WANGGE_TEST_TOPOLOGY={other}: expected `single` or `leaf`"),
        }
    }
}

/// NATS, three databases and the three tiers.
pub struct Cluster {
    pub village: TierHandle,
    pub street: TierHandle,
    pub district: TierHandle,
    /// The server holding JetStream: the only one, or the district hub on leaf nodes.
    pub nats: NatsServer,
    /// The village's and the street's leaf servers, when the cluster runs on leaf nodes.
    pub leaves: Option<LeafNodes>,
}

impl Cluster {
    /// The tiers with the test scopes, on the topology `WANGGE_TEST_TOPOLOGY` names.
    pub async fn start() -> Cluster {
        Cluster::start_with([VILLAGE_SCOPE, STREET_SCOPE, DISTRICT_SCOPE]).await
    }

    /// The tiers with the given scopes (village, street, district).
    pub async fn start_with(scopes: [&str; 3]) -> Cluster {
        Cluster::start_on(Topology::from_env(), scopes).await
    }

    /// The tiers with the test scopes, the village and the street on leaf nodes of the hub.
    pub async fn start_on_leaves() -> Cluster {
        Cluster::start_on(
            Topology::LeafNodes,
            [VILLAGE_SCOPE, STREET_SCOPE, DISTRICT_SCOPE],
        )
        .await
    }

    pub async fn start_on(on: Topology, scopes: [&str; 3]) -> Cluster {
        Cluster::start_configured(on, scopes, |_| {}).await
    }

    /// Like [`Self::start_on`], with every tier's configuration adjusted by `tweak`.
    pub async fn start_configured(
        on: Topology,
        scopes: [&str; 3],
        tweak: impl Fn(&mut Config),
    ) -> Cluster {
        let (nats, leaves) = match on {
            Topology::SingleServer => (NatsServer::start().await, None),
            Topology::LeafNodes => {
                let NatsTopology { hub, leaves } = NatsTopology::start_for(scopes).await;
                (hub, Some(leaves))
            }
        };
        // On leaf nodes every tier names the hub's domain, the district too: one setting for all.
        let domain = leaves.as_ref().map(|_| topology::DOMAIN.to_owned());
        // There every tier also connects as its own user, and the district reaches the hub over
        // TLS: the servers run the production files.
        let on_leaves = leaves.is_some();
        let hub_tls = nats.client_tls().cloned();
        Cluster::assemble(nats, leaves, scopes, None, |tier, scope, config| {
            config.jetstream_domain = domain.clone();
            if on_leaves {
                config.nats_auth = credential_of(tier, scope);
            }
            if let (Tier::District, Some(tls)) = (tier, hub_tls.clone()) {
                config.tls = tls;
            }
            tweak(config);
        })
        .await
    }

    /// The usual three tiers, all reading the virtual `time` the test moves forward (days of
    /// deadlines in milliseconds), and scanning for due 督办 every second.
    pub async fn start_on_time(time: &std::sync::Arc<wangge_tier::time::ShiftedTime>) -> Cluster {
        Cluster::start_on_time_scanning_every(time, 1).await
    }

    /// Like [`Self::start_on_time`], scanning for due 督办 every `secs` seconds.
    pub async fn start_on_time_scanning_every(
        time: &std::sync::Arc<wangge_tier::time::ShiftedTime>,
        secs: u64,
    ) -> Cluster {
        let time = time.clone();
        Cluster::start_configured(
            Topology::from_env(),
            [VILLAGE_SCOPE, STREET_SCOPE, DISTRICT_SCOPE],
            move |config| {
                config.clock.time = Some(time.clone());
                config.clock.supervise_every_secs = secs;
            },
        )
        .await
    }

    /// Seeded databases and the three tiers of `scopes` (village, street, district) on `nats`, or
    /// with the village and the street on their `leaves`; each tier's configuration is adjusted
    /// by `configure`, and the test's clients use `client_tls` when the tiers serve TLS.
    pub async fn assemble(
        nats: NatsServer,
        leaves: Option<LeafNodes>,
        scopes: [&str; 3],
        client_tls: Option<ClientTlsConfig>,
        configure: impl Fn(Tier, &str, &mut Config),
    ) -> Cluster {
        crate::init_logs();
        let (vdb, sdb, ddb) = tokio::join!(
            TestDb::seeded("village"),
            TestDb::seeded("street"),
            TestDb::seeded("district")
        );
        // On leaf nodes the village and the street connect to their leaf, the district to the hub.
        let url = |tier: Tier| match (&leaves, tier) {
            (Some(leaves), Tier::Village | Tier::Street) => leaves.of(tier).url(),
            _ => nats.url(),
        };
        let start = |tier: Tier, scope: &str, db: TestDb| {
            let (url, client_tls, configure) = (url(tier), client_tls.clone(), &configure);
            let scope = scope.to_owned();
            async move {
                TierHandle::start_reached(tier, &scope, &url, db, client_tls, |config| {
                    configure(tier, &scope, config)
                })
                .await
            }
        };
        let (village, street, district) = tokio::join!(
            start(Tier::Village, scopes[0], vdb),
            start(Tier::Street, scopes[1], sdb),
            start(Tier::District, scopes[2], ddb),
        );
        // Tests start acting at once: let the tiers' consumers be in place first.
        nats.case_stream_with_consumers(3).await;
        Cluster {
            village,
            street,
            district,
            nats,
            leaves,
        }
    }

    /// The tiers with the test scopes, everything over TLS with the certificates of `pki` (keep
    /// it alive until the cluster stopped): one nats-server that speaks only TLS and checks client
    /// certificates, and tiers that serve gRPC over TLS to clients with certificates only.
    pub async fn start_tls(pki: &TestPki) -> Cluster {
        Cluster::assemble(
            NatsServer::start_tls(pki).await,
            None,
            [VILLAGE_SCOPE, STREET_SCOPE, DISTRICT_SCOPE],
            Some(pki.grpc_client()),
            |_, _, config| config.tls = pki.tier_tls(),
        )
        .await
    }

    /// The leaf servers; panics unless the cluster runs on leaf nodes.
    pub fn leaves(&self) -> &LeafNodes {
        self.leaves
            .as_ref()
            .expect("the cluster runs on one server, not on leaf nodes")
    }

    pub async fn clients(&self) -> TierClients {
        TierClients {
            village: self.village.channel().await,
            street: self.street.channel().await,
            district: self.district.channel().await,
        }
    }

    pub async fn stop(mut self) {
        for tier in [&mut self.village, &mut self.street, &mut self.district] {
            tier.stop().await.unwrap();
        }
    }
}

/// A request carrying the token of a fixture person (see [`crate::identity::claims_for`]).
pub fn as_actor<T>(actor: &str, message: T) -> Request<T> {
    crate::identity::with_token(&crate::identity::token_for(actor), message)
}

pub type FieldClient = pb::field_app_service_client::FieldAppServiceClient<Channel>;
pub type CommunityClient = pb::community_service_client::CommunityServiceClient<Channel>;
pub type ConsoleClient = pb::command_console_service_client::CommandConsoleServiceClient<Channel>;
pub type DepartmentClient = pb::department_service_client::DepartmentServiceClient<Channel>;
pub type CasesClient = pb::case_query_service_client::CaseQueryServiceClient<Channel>;
pub type RegistryClient = pb::registry_service_client::RegistryServiceClient<Channel>;

/// Channels to the three tiers, and the clients of their services.
#[derive(Clone)]
pub struct TierClients {
    pub village: Channel,
    pub street: Channel,
    pub district: Channel,
}

impl TierClients {
    pub fn field(&self) -> FieldClient {
        FieldClient::new(self.village.clone())
    }
    pub fn community(&self) -> CommunityClient {
        CommunityClient::new(self.village.clone())
    }
    pub fn street_console(&self) -> ConsoleClient {
        ConsoleClient::new(self.street.clone())
    }
    pub fn district_console(&self) -> ConsoleClient {
        ConsoleClient::new(self.district.clone())
    }
    pub fn street_departments(&self) -> DepartmentClient {
        DepartmentClient::new(self.street.clone())
    }
    pub fn district_departments(&self) -> DepartmentClient {
        DepartmentClient::new(self.district.clone())
    }
    pub fn cases(&self, tier: Tier) -> CasesClient {
        CasesClient::new(self.channel(tier))
    }
    pub fn registry(&self, tier: Tier) -> RegistryClient {
        RegistryClient::new(self.channel(tier))
    }
    fn channel(&self, tier: Tier) -> Channel {
        match tier {
            Tier::Village => self.village.clone(),
            Tier::Street => self.street.clone(),
            _ => self.district.clone(),
        }
    }

    /// The history of a case at one tier (empty when the tier does not have it yet).
    pub async fn history(&self, tier: Tier, case_id: &str) -> Vec<pb::CaseEvent> {
        let request = pb::ListCaseEventsRequest {
            case_id: case_id.to_owned(),
        };
        match self.cases(tier).list_case_events(request).await {
            Ok(response) => response.into_inner().events,
            Err(status) if status.code() == tonic::Code::NotFound => Vec::new(),
            Err(status) => panic!("list_case_events at {tier:?}: {status}"),
        }
    }

    /// Waits until all three tiers hold `version` events of the case and the same history; returns it.
    pub async fn converged(&self, case_id: &str, version: u64) -> Vec<pb::CaseEvent> {
        self.converged_within(case_id, version, Duration::from_secs(15))
            .await
    }

    /// Like [`Self::converged`], waiting up to `timeout`.
    pub async fn converged_within(
        &self,
        case_id: &str,
        version: u64,
        timeout: Duration,
    ) -> Vec<pb::CaseEvent> {
        eventually(
            &format!("case {case_id} at version {version} on every tier"),
            timeout,
            || async {
                let village = self.history(Tier::Village, case_id).await;
                let street = self.history(Tier::Street, case_id).await;
                let district = self.history(Tier::District, case_id).await;
                (village.len() as u64 == version && village == street && street == district)
                    .then_some(village)
            },
        )
        .await
    }
}
