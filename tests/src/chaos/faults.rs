//! The faults, one per row of the report: what is done to the running system and how it is healed.
//! [`Fault::inject`] returns once the fault is healed; the clock of convergence starts then.

use std::str::FromStr;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use prost::Message as _;
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, PgConnection};
use tonic::Code;
use uuid::Uuid;
use wangge_domain::GridCode;
use wangge_domain::case::{owner_for, tier_name};
use wangge_proto as pb;
use wangge_proto::Tier;
use wangge_tier::validate::{
    MAX_ATTACHMENT_BYTES, MAX_ATTACHMENTS, MAX_CAPTION_CHARS, MAX_DESCRIPTION_CHARS,
};

use super::checker::{APPLICATION_NAME, Injected};
use super::testbed::Testbed;
use super::workload::Workload;
use crate::cluster::{DISTRICT_SCOPE, STREET_SCOPE};
use crate::fixtures::{CATEGORY, GRID, client_id, point_in, report};

/// nats-server's `max_payload` in the oversized row, down from its default of 1 MiB. Within the
/// validators' bounds no report comes near 1 MiB (the largest is about 21 KB), so the row lowers
/// the broker's limit instead, as an operator may: the tiers lower the largest event they accept
/// to fit it (less room for headers) when they connect. The load's events (about 1.1 KB at most)
/// still fit many times over; the largest valid report does not. Only this row runs with it: a
/// receipt (up to 1000 event ids) and a page of case versions in reconciliation (up to 2000) are
/// not cut to the server's limit, and a long run's backlog makes them larger than this.
pub const OVERSIZED_MAX_PAYLOAD: usize = 16 * 1024;

/// How long the relay has to set aside an event that can never travel.
const SET_ASIDE_WITHIN: Duration = Duration::from_secs(30);

/// What injecting a fault did, for the row and the checker.
#[derive(Debug, Default)]
pub struct Injection {
    /// What was done, for the notes.
    pub notes: String,
    /// What the checker holds the tiers to besides the load.
    pub injected: Injected,
    /// What the system did wrong while the fault was injected.
    pub failures: Vec<String>,
}

impl Injection {
    fn noted(notes: String) -> Injection {
        Injection {
            notes,
            ..Injection::default()
        }
    }
}

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
    /// On a nats-server with a small max payload ([`OVERSIZED_MAX_PAYLOAD`]): a valid report whose
    /// event would be larger, and an event larger than it already in the village's outbox.
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

    /// The `max_payload` the fault's nats-server runs with, when not its default.
    pub fn nats_max_payload(&self) -> Option<usize> {
        matches!(self, Fault::OversizedEvent).then_some(OVERSIZED_MAX_PAYLOAD)
    }

    /// True for the link cuts, whose backlog drain the report shows.
    pub fn is_cut(&self) -> bool {
        matches!(self, Fault::CutLink { .. })
    }

    /// Injects the fault, waits it out and heals it; returns what was done.
    pub async fn inject(
        &self,
        bed: &mut Testbed,
        workload: &Workload,
    ) -> anyhow::Result<Injection> {
        let notes = match self {
            Fault::Kill { tier, down } => {
                let process = &mut bed.node_mut(*tier).process;
                process.kill().await;
                tokio::time::sleep(*down).await;
                process.restart().await;
                String::new()
            }
            Fault::Pause { tier, paused } => {
                let process = &bed.node(*tier).process;
                process.pause().await;
                tokio::time::sleep(*paused).await;
                process.resume().await;
                String::new()
            }
            Fault::NatsRestart { down, empty_store } => {
                bed.nats.kill().await;
                if *empty_store {
                    bed.nats.wipe_store();
                }
                tokio::time::sleep(*down).await;
                bed.nats.resume().await;
                String::new()
            }
            Fault::DeleteMessages { count } => delete_undelivered(bed, *count).await?,
            Fault::TerminateDatabaseConnections { during } => {
                let names = [
                    &bed.village.db.name,
                    &bed.street.db.name,
                    &bed.district.db.name,
                ];
                let terminated = terminate_connections(&names, *during).await?;
                format!("{terminated} backends terminated")
            }
            Fault::CutLink { tier, during } => {
                let link = &bed.node(*tier).link;
                link.cut();
                tokio::time::sleep(*during).await;
                link.restore();
                String::new()
            }
            Fault::OversizedEvent => return oversized(bed, workload).await,
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
                format!("{terminated} village backends terminated")
            }
        };
        Ok(Injection::noted(notes))
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

/// The oversized row: an event that cannot travel written into the village's outbox (as an older
/// version, or a broker whose limit was lowered since, leaves one), then a valid report whose event
/// would not fit the broker's max payload. The report must be refused with INVALID_ARGUMENT naming
/// its attachments before anything is stored; the outbox row must be set aside as a dead letter
/// within [`SET_ASIDE_WITHIN`], while the load behind it flows on (the checker sees to that).
async fn oversized(bed: &Testbed, workload: &Workload) -> anyhow::Result<Injection> {
    let pool = bed.village.db.pool().await;
    let mut injection = Injection::default();
    let mut notes = Vec::new();

    let (event_id, bytes) = write_undeliverable(&pool).await?;
    let written = Instant::now();
    injection.injected.undeliverable.push(event_id);

    let request = largest_report();
    injection.injected.refused.push(request.client_id.clone());
    match workload.report_once(request).await {
        Ok(case) => injection.failures.push(format!(
            "the oversized report was accepted as case {}",
            case.id
        )),
        Err(status) => {
            let carried = limit_named(status.message());
            let named = status.code() == Code::InvalidArgument
                && status.message().starts_with("attachments:")
                && carried.is_some_and(|limit| limit <= OVERSIZED_MAX_PAYLOAD);
            if named {
                notes.push(format!(
                    "the largest valid report was refused: {}",
                    status.message()
                ));
            } else {
                injection.failures.push(format!(
                    "the oversized report was answered {:?} {:?}, not INVALID_ARGUMENT naming \
                     attachments and a limit within the broker's {OVERSIZED_MAX_PAYLOAD} bytes",
                    status.code(),
                    status.message()
                ));
            }
        }
    }
    let largest: Option<i32> =
        sqlx::query_scalar("SELECT max(octet_length(body)) FROM case_events")
            .fetch_one(&pool)
            .await?;
    notes.push(format!(
        "the load's largest event so far {} bytes",
        largest.unwrap_or(0)
    ));

    // The relay tries it once, finds it larger than the server takes, and sets it aside.
    let set_aside = loop {
        let reason: Option<String> = sqlx::query_scalar(
            "SELECT error FROM dead_letters WHERE direction = 'outgoing' AND event_id = $1",
        )
        .bind(event_id)
        .fetch_optional(&pool)
        .await?;
        if let Some(reason) = reason {
            break Some(reason);
        }
        if written.elapsed() > SET_ASIDE_WITHIN {
            break None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    match set_aside {
        Some(reason) => notes.push(format!(
            "a {bytes}-byte event written into the village's outbox was set aside after {:.1} s ({reason})",
            written.elapsed().as_secs_f64()
        )),
        None => injection.failures.push(format!(
            "a {bytes}-byte event written into the village's outbox was not set aside within {} s",
            SET_ASIDE_WITHIN.as_secs()
        )),
    }
    pool.close().await;
    injection.notes = notes.join("; ");
    Ok(injection)
}

/// The limit an "event too large" refusal names: `… above the <n> bytes the bus carries`.
fn limit_named(message: &str) -> Option<usize> {
    let (_, rest) = message.split_once("above the ")?;
    rest.split_once(" bytes")?.0.parse().ok()
}

/// The largest report the validators allow, within their bounds field by field: every attachment
/// a well-formed reference (id, media type, size, lowercase hex SHA-256) with the longest caption,
/// and the longest description. Its event is about 21 KB.
fn largest_report() -> pb::ReportCaseRequest {
    let mut request = report(&client_id(), GRID);
    request.description = longest("路边暴露垃圾一堆，", MAX_DESCRIPTION_CHARS);
    request.attachments = (0..MAX_ATTACHMENTS as u128)
        .map(|i| {
            // Any 64 lowercase hex digits pass: the tiers keep references, not the photos.
            let digest = 0x9f86_d081_884c_7d65_9a2f_eaa0_c55a_d015_u128.wrapping_mul(i + 1);
            pb::Attachment {
                id: format!("photo-{i:02}"),
                content_type: "image/jpeg".into(),
                size_bytes: MAX_ATTACHMENT_BYTES,
                sha256: format!("{digest:032x}{:032x}", digest.rotate_left(64)),
                caption: longest("垃圾桶旁堆放的建筑垃圾，", MAX_CAPTION_CHARS),
            }
        })
        .collect();
    request
}

/// `pattern` repeated to exactly `chars` characters.
fn longest(pattern: &str, chars: usize) -> String {
    pattern.chars().cycle().take(chars).collect()
}

/// Writes an event larger than the broker's max payload straight into the village's outbox, the
/// way a version without the size check left one: a report of a case no tier holds, awaiting the
/// street and the district. Returns its event id and size.
async fn write_undeliverable(pool: &sqlx::PgPool) -> anyhow::Result<(Uuid, usize)> {
    let grid: GridCode = GRID.parse()?;
    let (event_id, case_id) = (Uuid::now_v7(), Uuid::now_v7());
    let report = largest_report();
    let event = pb::CaseEvent {
        event_id: event_id.to_string(),
        case_id: case_id.to_string(),
        seq: 1,
        at: Some(prost_types::Timestamp {
            seconds: chrono::Utc::now().timestamp(),
            nanos: 0,
        }),
        tier: Tier::Village as i32,
        org_code: owner_for(Tier::Village, &grid).org_code,
        attachments: report.attachments,
        state_after: pb::CaseState::Reported as i32,
        owner_after: Some(owner_for(Tier::Village, &grid)),
        kind: Some(pb::case_event::Kind::Reported(pb::Reported {
            client_id: report.client_id,
            category_code: CATEGORY.to_owned(),
            description: report.description,
            location: Some(point_in(GRID)),
            grid_code: GRID.to_owned(),
            ..Default::default()
        })),
        ..Default::default()
    };
    let body = pb::Envelope {
        event_id: event.event_id.clone(),
        trace: Default::default(),
        body: Some(pb::envelope::Body::CaseEvent(event)),
    }
    .encode_to_vec();
    anyhow::ensure!(
        body.len() > OVERSIZED_MAX_PAYLOAD,
        "the undeliverable event is {} bytes, within the broker's {OVERSIZED_MAX_PAYLOAD}",
        body.len()
    );
    sqlx::query(
        "INSERT INTO outbox (event_id, case_id, seq, subject, body, pending_tiers)
         VALUES ($1, $2, 1, $3, $4, '{street,district}')",
    )
    .bind(event_id)
    .bind(case_id)
    .bind(wangge_bus::case_subject(&grid))
    .bind(&body)
    .execute(pool)
    .await?;
    Ok((event_id, body.len()))
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
