//! The faults, one per row of the report: what is done to the running system and how it is healed.
//! [`Fault::inject`] returns once the fault is healed; the clock of convergence starts then.

use std::str::FromStr;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, PgConnection};
use wangge_domain::case::tier_name;
use wangge_proto as pb;
use wangge_proto::Tier;

use super::checker::APPLICATION_NAME;
use super::testbed::Testbed;
use super::workload::Workload;
use crate::cluster::{DISTRICT_SCOPE, STREET_SCOPE};
use crate::fixtures::{client_id, report};

/// One kind of trouble, with its durations.
#[derive(Debug, Clone)]
pub enum Fault {
    /// SIGKILL of a tier, started again after `down`.
    Kill { tier: Tier, down: Duration },
    /// SIGSTOP of a tier for `paused`, then SIGCONT.
    Pause { tier: Tier, paused: Duration },
    /// nats-server SIGKILLed and started again after `down`, with its store or with it emptied.
    NatsRestart { down: Duration, empty_store: bool },
    /// The newest `count` messages of the case stream deleted before the street and the district
    /// received them (their links are cut meanwhile).
    DeleteMessages { count: u64 },
    /// Every connection of every tier to its database terminated, again and again, for `during`.
    TerminateDatabaseConnections { during: Duration },
    /// A tier's NATS link cut for `during` while the load goes on.
    CutLink { tier: Tier, during: Duration },
    /// A report whose event is larger than NATS's max payload.
    OversizedEvent,
    /// Several at once: the district cut off, the street killed, the village's database
    /// connections terminated, nats-server restarted, all healed together.
    Mixed { during: Duration },
}

impl Fault {
    /// The short name `--only` matches, unique within a suite.
    pub fn slug(&self) -> String {
        match self {
            Fault::Kill { tier, .. } => format!("kill-{}", tier_name(*tier)),
            Fault::Pause { tier, .. } => format!("pause-{}", tier_name(*tier)),
            Fault::NatsRestart {
                empty_store: false, ..
            } => "nats-restart-kept".into(),
            Fault::NatsRestart {
                empty_store: true, ..
            } => "nats-restart-empty".into(),
            Fault::DeleteMessages { .. } => "delete-messages".into(),
            Fault::TerminateDatabaseConnections { .. } => "db-terminate".into(),
            Fault::CutLink { tier, during } => {
                format!("cut-{}-{}s", tier_name(*tier), during.as_secs())
            }
            Fault::OversizedEvent => "oversized-event".into(),
            Fault::Mixed { .. } => "mixed".into(),
        }
    }

    /// What the row says.
    pub fn title(&self) -> String {
        let secs = |d: &Duration| d.as_secs();
        match self {
            Fault::Kill { tier, .. } => format!("SIGKILL {}", tier_name(*tier)),
            Fault::Pause { tier, paused } => {
                format!("SIGSTOP {} {} s", tier_name(*tier), secs(paused))
            }
            Fault::NatsRestart {
                down,
                empty_store: false,
            } => format!("nats-server SIGKILL, {} s down, store kept", secs(down)),
            Fault::NatsRestart {
                down,
                empty_store: true,
            } => format!("nats-server SIGKILL, {} s down, store EMPTIED", secs(down)),
            Fault::DeleteMessages { count } => format!("{count} messages deleted from the stream"),
            Fault::TerminateDatabaseConnections { during } => {
                format!("database connections terminated for {} s", secs(during))
            }
            Fault::CutLink { tier, during } => {
                format!("{} NATS link cut {} s", tier_name(*tier), secs(during))
            }
            Fault::OversizedEvent => "oversized event (> NATS max payload)".into(),
            Fault::Mixed { during } => format!(
                "mixed: district cut, street SIGKILL, village db terminated, nats restart ({} s)",
                secs(during)
            ),
        }
    }

    /// True for the link cuts, whose backlog drain the report shows.
    pub fn is_cut(&self) -> bool {
        matches!(self, Fault::CutLink { .. })
    }

    /// Injects the fault, waits it out and heals it; returns what was done, for the notes.
    pub async fn inject(&self, bed: &mut Testbed, workload: &Workload) -> anyhow::Result<String> {
        match self {
            Fault::Kill { tier, down } => {
                let process = &mut bed.node_mut(*tier).process;
                process.kill().await;
                tokio::time::sleep(*down).await;
                process.restart().await;
                Ok(String::new())
            }
            Fault::Pause { tier, paused } => {
                let process = &bed.node(*tier).process;
                process.pause().await;
                tokio::time::sleep(*paused).await;
                process.resume().await;
                Ok(String::new())
            }
            Fault::NatsRestart { down, empty_store } => {
                bed.nats.kill().await;
                if *empty_store {
                    bed.nats.wipe_store();
                }
                tokio::time::sleep(*down).await;
                bed.nats.resume().await;
                Ok(String::new())
            }
            Fault::DeleteMessages { count } => delete_undelivered(bed, *count).await,
            Fault::TerminateDatabaseConnections { during } => {
                let names = [
                    &bed.village.db.name,
                    &bed.street.db.name,
                    &bed.district.db.name,
                ];
                let terminated = terminate_connections(&names, *during).await?;
                Ok(format!("{terminated} backends terminated"))
            }
            Fault::CutLink { tier, during } => {
                let link = &bed.node(*tier).link;
                link.cut();
                tokio::time::sleep(*during).await;
                link.restore();
                Ok(String::new())
            }
            Fault::OversizedEvent => {
                let outcome = match workload.report_once(oversized_report()).await {
                    Ok(case) => format!("accepted as case {}", case.id),
                    Err(status) => format!("refused: {:?}", status.code()),
                };
                Ok(format!("the oversized report was {outcome}"))
            }
            Fault::Mixed { during } => {
                let started = Instant::now();
                bed.district.link.cut();
                bed.street.process.kill().await;
                let village_db = [&bed.village.db.name];
                let terminated = terminate_connections(&village_db, *during / 3).await?;
                bed.nats.kill().await;
                tokio::time::sleep((*during / 3).min(Duration::from_secs(5))).await;
                bed.nats.resume().await;
                tokio::time::sleep(during.saturating_sub(started.elapsed())).await;
                bed.street.process.restart().await;
                bed.district.link.restore();
                Ok(format!("{terminated} village backends terminated"))
            }
        }
    }
}

/// Which faults a form of the suite runs, in order.
pub fn suite(long: bool) -> Vec<Fault> {
    let s = Duration::from_secs;
    let tiers = [Tier::Village, Tier::Street, Tier::District];
    let mut faults = Vec::new();
    for tier in tiers {
        faults.push(Fault::Kill { tier, down: s(2) });
    }
    for tier in tiers {
        let paused = if long { s(30) } else { s(10) };
        faults.push(Fault::Pause { tier, paused });
    }
    let down = if long { s(30) } else { s(3) };
    faults.push(Fault::NatsRestart {
        down,
        empty_store: false,
    });
    faults.push(Fault::NatsRestart {
        down,
        empty_store: true,
    });
    faults.push(Fault::DeleteMessages { count: 5 });
    faults.push(Fault::TerminateDatabaseConnections {
        during: if long { s(30) } else { s(5) },
    });
    for tier in tiers {
        let during = if long { s(30) } else { s(10) };
        faults.push(Fault::CutLink { tier, during });
    }
    if long {
        for tier in [Tier::Village, Tier::Street] {
            faults.push(Fault::CutLink {
                tier,
                during: s(300),
            });
        }
    }
    faults.push(Fault::OversizedEvent);
    faults.push(Fault::Mixed {
        during: if long { s(60) } else { s(10) },
    });
    faults
}

/// A report whose attachments make the event larger than NATS's 1 MiB max payload: the attachment
/// checks do not limit `sha256` today.
fn oversized_report() -> pb::ReportCaseRequest {
    let mut request = report(&client_id(), "350205002006001");
    request.attachments = (0..20)
        .map(|i| pb::Attachment {
            id: format!("photo-{i}"),
            content_type: "image/jpeg".into(),
            size_bytes: 1,
            sha256: "f".repeat(60_000),
            caption: String::new(),
        })
        .collect();
    request
}

/// Terminates every backend of the given databases except the checker's, every 250 ms for
/// `during`; returns how many were terminated.
async fn terminate_connections(databases: &[&String], during: Duration) -> anyhow::Result<i64> {
    let mut admin = PgConnectOptions::from_str(&crate::db::admin_url())?
        .application_name(APPLICATION_NAME)
        .connect()
        .await?;
    let until = Instant::now() + during;
    let mut terminated = 0;
    while Instant::now() < until {
        for name in databases {
            terminated += terminate(&mut admin, name).await?;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    Ok(terminated)
}

async fn terminate(admin: &mut PgConnection, database: &str) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar(
        "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity \
         WHERE datname = $1 AND pid <> pg_backend_pid() AND application_name <> $2",
    )
    .bind(database)
    .bind(APPLICATION_NAME)
    .fetch_one(admin)
    .await?)
}

/// Cuts the street's and the district's links, waits until the stream holds `count` messages
/// neither of them was ever sent, deletes those, and restores the links.
async fn delete_undelivered(bed: &Testbed, count: u64) -> anyhow::Result<String> {
    bed.street.link.cut();
    bed.district.link.cut();
    let js = jetstream::new(bed.nats.client().await);
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut previous = None;
    let outcome = loop {
        if Instant::now() > deadline {
            break Err(anyhow::anyhow!(
                "no {count} undelivered messages in the stream within 60 s"
            ));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let mut stream = js.get_stream(wangge_bus::CASE_STREAM).await?;
        let last = stream.info().await?.state.last_sequence;
        let mut delivered = 0;
        for (tier, scope) in [
            (Tier::Street, STREET_SCOPE),
            (Tier::District, DISTRICT_SCOPE),
        ] {
            // The tiers name their durable consumers `<tier>-<scope>`.
            let name = format!("{}-{scope}", tier_name(tier));
            let info = stream.consumer_info(&name).await?;
            delivered = delivered.max(info.delivered.stream_sequence);
        }
        // Pull requests already open may still carry messages out: wait until delivery has stopped.
        let settled = previous == Some(delivered);
        previous = Some(delivered);
        if settled && last >= delivered + count {
            let first = last - count + 1;
            for sequence in first..=last {
                stream.delete_message(sequence).await?;
            }
            break Ok(format!(
                "deleted stream seq {first}-{last}; street and district had been sent up to {delivered}"
            ));
        }
    };
    bed.street.link.restore();
    bed.district.link.restore();
    outcome
}
