//! The system a fault run acts on: one nats-server with its store dir, three fresh seeded
//! databases, and the three tier binaries, each reaching NATS through its own [`LinkProxy`].

use std::path::Path;

use crate::Channel;
use wangge_domain::case::tier_name;
use wangge_proto::Tier;

use super::proxy::LinkProxy;
use crate::cluster::{DISTRICT_SCOPE, STREET_SCOPE, TierClients, VILLAGE_SCOPE};
use crate::db::TestDb;
use crate::nats::NatsServer;
use crate::process::TierProcess;

/// One tier: its process, its NATS link and its database.
pub struct Node {
    pub process: TierProcess,
    pub link: LinkProxy,
    pub db: TestDb,
}

/// NATS and the three tiers, with gRPC clients that reconnect by themselves.
pub struct Testbed {
    pub nats: NatsServer,
    pub village: Node,
    pub street: Node,
    pub district: Node,
    pub clients: TierClients,
}

pub const TIERS: [Tier; 3] = [Tier::Village, Tier::Street, Tier::District];

impl Testbed {
    /// Starts everything; the tiers' logs go to `<logs>/<label>-<tier>.log`. With `max_payload`,
    /// nats-server carries no larger message than that (the tiers learn it when they connect).
    pub async fn start(
        logs: &Path,
        label: &str,
        max_payload: Option<usize>,
    ) -> anyhow::Result<Testbed> {
        std::fs::create_dir_all(logs)?;
        let nats = match max_payload {
            Some(bytes) => NatsServer::start_with_max_payload(bytes).await,
            None => NatsServer::start().await,
        };
        let (vdb, sdb, ddb) = tokio::join!(
            TestDb::seeded("village"),
            TestDb::seeded("street"),
            TestDb::seeded("district")
        );
        let node = |tier: Tier, scope: &'static str, db: TestDb| {
            let upstream = nats.addr();
            let log = logs.join(format!("{label}-{}.log", tier_name(tier)));
            async move {
                let link = LinkProxy::start(upstream).await?;
                let process =
                    TierProcess::start_logging(tier, scope, &db.url, &link.url(), Some(log)).await;
                anyhow::Ok(Node { process, link, db })
            }
        };
        let (village, street, district) = tokio::join!(
            node(Tier::Village, VILLAGE_SCOPE, vdb),
            node(Tier::Street, STREET_SCOPE, sdb),
            node(Tier::District, DISTRICT_SCOPE, ddb),
        );
        let (village, street, district) = (village?, street?, district?);
        let lazy = |node: &Node| -> anyhow::Result<Channel> {
            Ok(crate::identity::observed(
                tonic::transport::Channel::from_shared(format!("http://{}", node.process.addr))?
                    .connect_lazy(),
            ))
        };
        let clients = TierClients {
            village: lazy(&village)?,
            street: lazy(&street)?,
            district: lazy(&district)?,
        };
        // The load starts at once: the tiers' consumers must be in place first.
        nats.case_stream_with_consumers(3).await;
        Ok(Testbed {
            nats,
            village,
            street,
            district,
            clients,
        })
    }

    pub fn node(&self, tier: Tier) -> &Node {
        match tier {
            Tier::Village => &self.village,
            Tier::Street => &self.street,
            _ => &self.district,
        }
    }

    pub fn node_mut(&mut self, tier: Tier) -> &mut Node {
        match tier {
            Tier::Village => &mut self.village,
            Tier::Street => &mut self.street,
            _ => &mut self.district,
        }
    }

    /// The databases' URLs, village first.
    pub fn database_urls(&self) -> [String; 3] {
        TIERS.map(|tier| self.node(tier).db.url.clone())
    }

    /// Kills the tiers and the server; the databases are dropped with `self`.
    pub async fn stop(mut self) {
        for tier in TIERS {
            self.node_mut(tier).process.kill().await;
        }
        self.nats.kill().await;
    }
}
