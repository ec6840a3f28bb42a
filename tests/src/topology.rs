//! The production NATS topology in miniature, started from the files operators run
//! (`deploy/nats/`): a district hub holding the one JetStream of the district in domain
//! [`DOMAIN`], and a street and a village nats-server attached to it as leaf nodes. Each leaf
//! reaches the hub through a [`Link`] the test can cut and restore, as a WAN outage would, while
//! both servers and the tiers' connections to their leaf stay up.
//!
//! As in production, every server has the users `deploy/nats/gen-users` writes (for the test
//! scopes): the hub the district's and one link user per leaf, each leaf its tier's; and the
//! hub's client and leaf node ports speak TLS only, with certificates of a [`TestPki`].

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use wangge_domain::case::tier_name;
use wangge_proto::Tier;

use crate::cluster::{DISTRICT_SCOPE, STREET_SCOPE, VILLAGE_SCOPE};
use crate::free_port;
use crate::nats::{self, NatsServer, password_of};
use crate::tls::TestPki;

/// The JetStream domain of the test hub, as in `deploy/nats/hub.env`.
pub const DOMAIN: &str = "haicang";

/// The hub file for the nats-server under test: `hub.conf` (with `sync_interval: always`) needs
/// nats-server 2.10 or later; Debian bookworm's 2.9.10 refuses that key, so it gets the variant.
pub fn hub_file() -> &'static str {
    if nats::version() >= (2, 10) {
        "hub.conf"
    } else {
        "hub-nats-2.9.conf"
    }
}

/// A district hub with a street and a village leaf node; every server killed on drop.
pub struct NatsTopology {
    /// Speaks TLS on both ports: its [`NatsServer::client`] and [`NatsServer::client_tls`] know.
    pub hub: NatsServer,
    pub leaves: LeafNodes,
}

/// The leaf servers the village and the street tiers connect to.
pub struct LeafNodes {
    pub village: LeafNode,
    pub street: LeafNode,
}

/// A leaf nats-server and its link to the hub.
pub struct LeafNode {
    pub server: NatsServer,
    /// The user of the tier instance this leaf serves, `<tier>-<scope>`.
    tier_user: String,
    link: Link,
}

/// How a leaf server reaches the hub: the hub's leaf node port, the CA of its certificate.
#[derive(Clone)]
pub struct HubAddress {
    leaf_port: u16,
    ca: PathBuf,
}

/// The user of a leaf link, as `gen-users --leaf-links` names it.
pub fn link_user(tier: Tier, scope: &str) -> String {
    format!("leaf-{}-{scope}", tier_name(tier))
}

impl NatsTopology {
    /// [`Self::start_for`] the test scopes of [`crate::cluster`].
    pub async fn start() -> NatsTopology {
        NatsTopology::start_for([VILLAGE_SCOPE, STREET_SCOPE, DISTRICT_SCOPE]).await
    }

    /// Starts the hub, with users for a district of `scopes[2]` and the links of a village leaf of
    /// `scopes[0]` and a street leaf of `scopes[1]`, then both leaves, and waits until each leaf's
    /// tier user reaches the hub's JetStream.
    pub async fn start_for(scopes: [&str; 3]) -> NatsTopology {
        let pki = Arc::new(TestPki::generate());
        let hub_users = [
            "--account",
            "WANGGE",
            &format!("district:{}", scopes[2]),
            "--leaf-links",
            "--domain",
            DOMAIN,
            &format!("village:{}", scopes[0]),
            &format!("street:{}", scopes[1]),
        ]
        .map(str::to_owned)
        .to_vec();
        let mut hub =
            NatsServer::from_config(hub_file(), &[("hub-users.conf", hub_users)], |home| {
                let port = free_port();
                let env = vec![
                    var("WANGGE_NATS_NAME", "haicang-hub-test"),
                    var("WANGGE_NATS_HOST", "127.0.0.1"),
                    var("WANGGE_NATS_PORT", port),
                    var("WANGGE_NATS_LEAF_PORT", free_port()),
                    // Any free port: the tests do not look at the monitoring endpoints.
                    var("WANGGE_NATS_MONITOR_PORT", -1),
                    var("WANGGE_NATS_STORE", home.join("store").display()),
                    var("WANGGE_JETSTREAM_DOMAIN", DOMAIN),
                    var("WANGGE_NATS_TLS_CERT", pki.path("server.pem").display()),
                    var("WANGGE_NATS_TLS_KEY", pki.path("server-key.pem").display()),
                ];
                (port, env)
            })
            .await;
        let address = HubAddress {
            leaf_port: hub
                .env("WANGGE_NATS_LEAF_PORT")
                .and_then(|port| port.parse().ok())
                .unwrap(),
            ca: pki.path("ca.pem"),
        };
        hub.speaks_tls(pki);
        let village_link = link_user(Tier::Village, scopes[0]);
        let street_link = link_user(Tier::Street, scopes[1]);
        let (village_password, street_password) =
            (password_of(&village_link), password_of(&street_link));
        let (village, street) = tokio::join!(
            LeafNode::start(
                (Tier::Village, scopes[0]),
                "xiayang-village-leaf-test",
                &address,
                Some((&village_link, &village_password)),
            ),
            LeafNode::start(
                (Tier::Street, scopes[1]),
                "xinyang-street-leaf-test",
                &address,
                Some((&street_link, &street_password)),
            ),
        );
        let leaves = LeafNodes { village, street };
        tokio::join!(leaves.village.linked(), leaves.street.linked());
        NatsTopology { hub, leaves }
    }

    /// Another village leaf of the same scope, linking to the hub as `link` (user and password;
    /// none: no credential at all). It does not wait for the link.
    pub async fn another_village_leaf(&self, link: Option<(&str, &str)>) -> LeafNode {
        let scope = self.leaves.village.tier_user.trim_start_matches("village-");
        let address = HubAddress {
            leaf_port: self
                .hub
                .env("WANGGE_NATS_LEAF_PORT")
                .and_then(|port| port.parse().ok())
                .unwrap(),
            ca: self.hub.client_tls().unwrap().nats_ca.clone().unwrap(),
        };
        LeafNode::start(
            (Tier::Village, scope),
            "another-village-leaf-test",
            &address,
            link,
        )
        .await
    }
}

fn var(name: &str, value: impl ToString) -> (String, String) {
    (name.to_owned(), value.to_string())
}

impl LeafNodes {
    /// The leaf a tier connects to; the district connects to the hub itself.
    pub fn of(&self, tier: Tier) -> &LeafNode {
        match tier {
            Tier::Village => &self.village,
            Tier::Street => &self.street,
            _ => panic!("the {tier:?} tier connects to the hub, not to a leaf node"),
        }
    }
}

impl LeafNode {
    /// The leaf server of the tier instance `serves` (tier and scope), with that instance's user
    /// and wangge-admin, linked to the hub through a [`Link`] as `link` (user and password).
    async fn start(
        serves: (Tier, &str),
        name: &str,
        hub: &HubAddress,
        link: Option<(&str, &str)>,
    ) -> LeafNode {
        let (tier, scope) = serves;
        let file = format!("{}-leaf.conf", tier_name(tier));
        let users_file = format!("{}-leaf-users.conf", tier_name(tier));
        let users = vec![
            "--domain".to_owned(),
            DOMAIN.to_owned(),
            format!("{}:{scope}", tier_name(tier)),
        ];
        let relay = Link::open(hub.leaf_port).await;
        // The credential rides in the URL, as in the example environments.
        let credential = link
            .map(|(user, password)| format!("{user}:{password}@"))
            .unwrap_or_default();
        let hub_url = format!("nats-leaf://{credential}127.0.0.1:{}", relay.port);
        let server = NatsServer::from_config(&file, &[(&users_file, users)], |_| {
            let port = free_port();
            let env = vec![
                var("WANGGE_NATS_NAME", name),
                var("WANGGE_NATS_HOST", "127.0.0.1"),
                var("WANGGE_NATS_PORT", port),
                var("WANGGE_NATS_MONITOR_PORT", -1),
                var("WANGGE_NATS_HUB", &hub_url),
                var("WANGGE_NATS_TLS_CA", hub.ca.display()),
            ];
            (port, env)
        })
        .await;
        LeafNode {
            server,
            tier_user: format!("{}-{scope}", tier_name(tier)),
            link: relay,
        }
    }

    /// Where the tier of this leaf connects.
    pub fn url(&self) -> String {
        self.server.url()
    }

    /// A client of this leaf as its tier connects (its user, its reply subjects), and the errors
    /// the leaf sends it.
    pub async fn tier_client(
        &self,
    ) -> (
        async_nats::Client,
        tokio::sync::mpsc::UnboundedReceiver<String>,
    ) {
        self.server.client_as(&self.tier_user).await
    }

    /// The hub's JetStream as the tier on this leaf sees it: as its user, addressed by domain.
    pub async fn jetstream(&self) -> jetstream::Context {
        jetstream::with_domain(self.tier_client().await.0, DOMAIN)
    }

    /// Severs the link to the hub: open connections drop, new ones are refused.
    pub fn cut(&self) {
        self.link.set_up(false);
    }

    /// Lets the leaf reconnect to the hub (it retries every second).
    pub fn restore(&self) {
        self.link.set_up(true);
    }

    /// Waits until the tier's user on this leaf reaches the hub's JetStream.
    pub async fn linked(&self) {
        if !self.reaches_hub_within(Duration::from_secs(15)).await {
            panic!(
                "the leaf did not reach the hub's jetstream\n{}",
                self.server.log()
            );
        }
    }

    /// Whether the tier's user on this leaf reaches the hub's JetStream before `timeout`.
    pub async fn reaches_hub_within(&self, timeout: Duration) -> bool {
        let (client, _) = self.tier_client().await;
        // Any answer of the hub's JetStream API will do, "no such stream" too. Its user may ask
        // about the case stream only, and async-nats' typed answers do not decode 2.9.10's, so
        // the request is made by hand.
        let subject = format!("$JS.{DOMAIN}.API.STREAM.INFO.WANGGE_CASES");
        let started = Instant::now();
        while started.elapsed() < timeout {
            let answer = tokio::time::timeout(
                Duration::from_secs(1),
                client.request(subject.clone(), "".into()),
            )
            .await;
            if let Ok(Ok(_)) = answer {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }
}

/// A TCP relay between a leaf and the hub's leaf node port, which can be severed.
struct Link {
    port: u16,
    up: watch::Sender<bool>,
    relay: JoinHandle<()>,
}

impl Link {
    async fn open(hub_leaf_port: u16) -> Link {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (up, state) = watch::channel(true);
        let relay = tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    continue;
                };
                if !*state.borrow() {
                    // Cut: the leaf's reconnect attempt is closed at once.
                    continue;
                }
                let mut state = state.clone();
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(("127.0.0.1", hub_leaf_port)).await
                    else {
                        return;
                    };
                    // Dropping both ends on a cut closes the connection on either server.
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = state.wait_for(|up| !*up) => {}
                    }
                });
            }
        });
        Link { port, up, relay }
    }

    fn set_up(&self, up: bool) {
        self.up.send_replace(up);
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        // Ends the open connections too, not only the accepting loop.
        self.up.send_replace(false);
        self.relay.abort();
    }
}
