//! The production NATS topology in miniature, started from the files operators run
//! (`deploy/nats/`): a district hub holding the one JetStream of the district in domain
//! [`DOMAIN`], and a street and a village nats-server attached to it as leaf nodes. Each leaf
//! reaches the hub through a [`Link`] the test can cut and restore, as a WAN outage would, while
//! both servers and the tiers' connections to their leaf stay up.

use std::time::{Duration, Instant};

use async_nats::jetstream;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use wangge_proto::Tier;

use crate::free_port;
use crate::nats::{self, NatsServer};

/// The JetStream domain of the test hub, as in `deploy/nats/example.env`.
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
    link: Link,
}

impl NatsTopology {
    /// Starts the hub, then both leaves, and waits until a client on either leaf reaches the hub's
    /// JetStream.
    pub async fn start() -> NatsTopology {
        let hub = NatsServer::from_config(hub_file(), |home| {
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
            ];
            (port, env)
        })
        .await;
        let leaf_port: u16 = hub
            .env("WANGGE_NATS_LEAF_PORT")
            .and_then(|port| port.parse().ok())
            .unwrap();
        let (village, street) = tokio::join!(
            LeafNode::start("village-leaf.conf", "xiayang-village-leaf-test", leaf_port),
            LeafNode::start("street-leaf.conf", "xinyang-street-leaf-test", leaf_port),
        );
        let leaves = LeafNodes { village, street };
        tokio::join!(leaves.village.linked(), leaves.street.linked());
        NatsTopology { hub, leaves }
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
    async fn start(file: &str, name: &str, hub_leaf_port: u16) -> LeafNode {
        let link = Link::open(hub_leaf_port).await;
        let hub = format!("nats-leaf://127.0.0.1:{}", link.port);
        let server = NatsServer::from_config(file, |_| {
            let port = free_port();
            let env = vec![
                var("WANGGE_NATS_NAME", name),
                var("WANGGE_NATS_HOST", "127.0.0.1"),
                var("WANGGE_NATS_PORT", port),
                var("WANGGE_NATS_MONITOR_PORT", -1),
                var("WANGGE_NATS_HUB", &hub),
            ];
            (port, env)
        })
        .await;
        LeafNode { server, link }
    }

    /// Where the tier of this leaf connects.
    pub fn url(&self) -> String {
        self.server.url()
    }

    /// The hub's JetStream as a tier on this leaf sees it: addressed by domain.
    pub async fn jetstream(&self) -> jetstream::Context {
        jetstream::with_domain(self.server.client().await, DOMAIN)
    }

    /// Severs the link to the hub: open connections drop, new ones are refused.
    pub fn cut(&self) {
        self.link.set_up(false);
    }

    /// Lets the leaf reconnect to the hub (it retries every second).
    pub fn restore(&self) {
        self.link.set_up(true);
    }

    /// Waits until a client on this leaf reaches the hub's JetStream.
    pub async fn linked(&self) {
        let client = self.server.client().await;
        // Any answer of the hub's JetStream API will do; async-nats' typed account info does not
        // decode 2.9.10's answer, so the request is made by hand.
        let subject = format!("$JS.{DOMAIN}.API.INFO");
        let started = Instant::now();
        loop {
            let answer = tokio::time::timeout(
                Duration::from_secs(1),
                client.request(subject.clone(), "".into()),
            )
            .await;
            match answer {
                Ok(Ok(_)) => return,
                _ if started.elapsed() > Duration::from_secs(15) => panic!(
                    "the leaf did not reach the hub's jetstream: {answer:?}\n{}",
                    self.server.log()
                ),
                _ => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
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
