//! Reconciliation: the tiers compare what they hold and repair any gap from the PostgreSQL of a peer
//! that holds the events (the author always does), without a restart.
//!
//! - **Scheduled and after every reconnect** (of the tier's NATS connection, or of its consumer to
//!   JetStream after a cut, as when a leaf node's link returns), per peer tier and per community of
//!   the scope: a digest of the cases last changed per day (count and a hash of `case:version`) in
//!   a window. Days that differ are compared case by case (marks); where the peer is ahead, its
//!   events are fetched and applied here. The peer's marks also confirm this tier's outbox rows the peer holds (a receipt
//!   that got lost). Each tier does this against every peer, so each repairs its own side.
//! - **On a gap**: a parked event makes the replicator ask for its case; the missing events are
//!   fetched from the event's author first, then from the other peers.
//! - **The sweep**, every few seconds: parked events whose predecessor has come are applied, and
//!   cases still waiting are repaired again (at most every few seconds each).
//! - **Answers** the same questions from peers out of this tier's database.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{NaiveDate, Utc};
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};
use uuid::Uuid;
use wangge_bus::sync::{Responder, SyncClient, SyncError};
use wangge_bus::{Persisting, grid_of_subject};
use wangge_domain::OrgCode;
use wangge_domain::case::tier_name;
use wangge_proto as pb;
use wangge_store::{outbox, sync};

use crate::engine::{Engine, EventLimit};
use crate::replicate::{Repair, Replicator};

/// How reconciliation paces itself.
#[derive(Debug, Clone)]
pub struct Settings {
    pub every: Duration,
    pub window: Duration,
    /// Cases changed more recently than this are left out of digests: their events may be on the
    /// way.
    pub settle: Duration,
    /// Outbox rows unconfirmed for longer than this are asked about.
    pub confirm_within: Duration,
    pub sweep_every: Duration,
    pub park_expiry: Duration,
}

/// What the last runs did, for `GetStatus`.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub last_run: Option<chrono::DateTime<Utc>>,
    pub last_run_seconds: f64,
    pub compared: u64,
    pub unreachable: Vec<String>,
    pub cases_repaired: u64,
    pub events_fetched: u64,
    pub confirmed: u64,
    pub total_cases_repaired: u64,
    pub total_events_fetched: u64,
    pub runs: u64,
    pub last_error: Option<String>,
    /// Peers none of whose instances answered in the last run.
    pub silent_peers: Vec<String>,
    /// Why the last sweep of the park failed, if it did.
    pub sweep_error: Option<String>,
}

/// Figures of one run.
#[derive(Debug, Default)]
struct Tally {
    compared: u64,
    silent_peers: Vec<String>,
    unreachable: Vec<String>,
    cases_repaired: u64,
    events_fetched: u64,
    confirmed: u64,
}

/// Most marks per answer, and cases asked about at once.
const MARKS_PAGE: i64 = 2000;
pub(crate) const CASES_PER_ASK: usize = 500;
/// What a case id costs in a request, and a case mark (id and version) in an answer.
const BYTES_PER_ID: usize = 40;
const BYTES_PER_MARK: usize = 48;

/// The cases one request may name when a message may be `limit` bytes: a bus configured below
/// NATS's default 1 MiB must still carry reconciliation (500 ids are some 20 KB, a page of marks
/// some 100 KB).
fn cases_per_ask(limit: usize) -> usize {
    (limit / BYTES_PER_ID).clamp(1, CASES_PER_ASK)
}

/// The marks one answer may carry when a message may be `limit` bytes.
fn marks_per_page(limit: usize) -> i64 {
    i64::try_from(limit / BYTES_PER_MARK)
        .unwrap_or(MARKS_PAGE)
        .clamp(1, MARKS_PAGE)
}
/// The first full run comes this long after the start.
const FIRST_RUN_AFTER: Duration = Duration::from_secs(5);
/// A stuck case is asked about at most this often.
const REPAIR_EVERY: Duration = Duration::from_secs(3);

/// The reconciler of one tier.
#[derive(Debug)]
pub struct Reconciler {
    pub engine: Arc<Engine>,
    pub replicator: Arc<Replicator>,
    pub sync: SyncClient,
    pub settings: Settings,
    pub report: Arc<Mutex<Report>>,
    /// Cases stuck at a gap, from the replicator.
    pub repairs: Arc<tokio::sync::Mutex<mpsc::Receiver<Repair>>>,
    /// Notified when the NATS connection is (re)established, and when the consumer opens again
    /// after it was cut off from JetStream for a few seconds (a leaf link back, which no reconnect
    /// of this tier's own connection tells).
    pub reconnected: Arc<Notify>,
}

impl Reconciler {
    /// Runs until `stop`: a full run at once, then on schedule and after reconnects, with repairs
    /// and sweeps in between.
    pub async fn run(self, stop: CancellationToken) -> anyhow::Result<()> {
        let mut repairs = self.repairs.clone().lock_owned().await;
        let (mut running, mut sweeping) = (Persisting::default(), Persisting::default());
        let mut recent: HashMap<Uuid, Instant> = HashMap::new();
        // The first run waits for the peers starting alongside to answer.
        let mut next_run = Instant::now() + FIRST_RUN_AFTER;
        let mut next_sweep = Instant::now() + self.settings.sweep_every;
        let mut next_confirm = Instant::now() + self.settings.confirm_within;
        loop {
            let wake = next_run.min(next_sweep).min(next_confirm);
            tokio::select! {
                _ = tokio::time::sleep_until(wake.into()) => {}
                _ = self.reconnected.notified() => {
                    // Give the consumers a moment to resume first.
                    next_run = next_run.min(Instant::now() + Duration::from_secs(2));
                    continue;
                }
                repair = repairs.recv() => {
                    if let Some(repair) = repair {
                        self.repair_once(&repair, &mut recent).await;
                    }
                    continue;
                }
                _ = stop.cancelled() => return Ok(()),
            }
            let now = Instant::now();
            if now >= next_sweep {
                self.sweep(&mut recent, &mut sweeping).await;
                next_sweep = Instant::now() + self.settings.sweep_every;
            }
            if now >= next_confirm {
                self.confirm_round().await;
                next_confirm = Instant::now() + self.settings.confirm_within;
            }
            if now >= next_run {
                self.full_run(&mut running).await;
                next_run = Instant::now() + self.settings.every;
            }
        }
    }

    /// Asks every peer about the events it has not confirmed for a while: a receipt lost while
    /// this tier was down, paused or without its database costs seconds, not a full run's wait.
    async fn confirm_round(&self) {
        let mut tally = Tally::default();
        for &peer in self.engine.peers() {
            if let Err(error) = self.confirm_stale(peer, &mut tally).await {
                debug!(peer = tier_name(peer), %error, "asking a peer about unconfirmed events failed");
            }
        }
        if tally.confirmed > 0 {
            info!(
                confirmed = tally.confirmed,
                "events confirmed by their peers' marks"
            );
        }
    }

    fn report(&self) -> std::sync::MutexGuard<'_, Report> {
        self.report.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn sweep(&self, recent: &mut HashMap<Uuid, Instant>, sweeping: &mut Persisting) {
        match self.replicator.sweep(self.settings.park_expiry).await {
            Ok(waiting) => {
                sweeping.succeeded("sweeping the parked events");
                self.report().sweep_error = None;
                for repair in waiting {
                    self.repair_once(&repair, recent).await;
                }
            }
            Err(error) => {
                sweeping.failed("sweeping the parked events", &error);
                self.report().sweep_error = Some(error.to_string());
            }
        }
        recent.retain(|_, at| at.elapsed() < Duration::from_secs(60));
    }

    /// Repairs a stuck case unless it was tried a moment ago.
    async fn repair_once(&self, repair: &Repair, recent: &mut HashMap<Uuid, Instant>) {
        if recent
            .get(&repair.case_id)
            .is_some_and(|at| at.elapsed() < REPAIR_EVERY)
        {
            return;
        }
        recent.insert(repair.case_id, Instant::now());
        let mut peers = vec![repair.author];
        peers.extend(self.engine.peers().iter().filter(|&&p| p != repair.author));
        for peer in peers {
            if peer == self.engine.tier() || peer == pb::Tier::Unspecified {
                continue;
            }
            match self
                .fetch(peer, &repair.community, repair.case_id, repair.have)
                .await
            {
                Ok(0) => continue,
                Ok(applied) => {
                    info!(case_id = %repair.case_id, peer = tier_name(peer), applied, "gap repaired");
                    let mut report = self.report();
                    report.total_cases_repaired += 1;
                    report.total_events_fetched += applied as u64;
                    return;
                }
                Err(error) => {
                    debug!(case_id = %repair.case_id, peer = tier_name(peer), %error, "gap repair failed")
                }
            }
        }
    }

    /// Fetches the events of a case after `have` from `peer` and applies them; returns how many
    /// were new here.
    async fn fetch(
        &self,
        peer: pb::Tier,
        community: &OrgCode,
        case_id: Uuid,
        mut have: u64,
    ) -> anyhow::Result<usize> {
        let mut applied = 0;
        loop {
            let request = pb::EventsRequest {
                case_id: case_id.to_string(),
                after_seq: have,
            };
            let reply = self.sync.events(peer, community, &request).await?;
            if reply.events.is_empty() {
                return Ok(applied);
            }
            applied += self
                .replicator
                .apply_fetched(&reply.events)
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            have += reply.events.len() as u64;
            if !reply.more {
                return Ok(applied);
            }
        }
    }

    /// Compares everything in the window with every peer.
    async fn full_run(&self, running: &mut Persisting) {
        let started = Instant::now();
        let mut tally = Tally::default();
        let mut error = None;
        for &peer in self.engine.peers() {
            if let Err(e) = self.compare_with(peer, &mut tally).await {
                error = Some(format!("{}: {e:#}", tier_name(peer)));
            }
            if let Err(e) = self.confirm_stale(peer, &mut tally).await {
                error.get_or_insert(format!("{}: {e:#}", tier_name(peer)));
            }
        }
        match &error {
            Some(e) => running.failed("reconciliation", e),
            None => running.succeeded("reconciliation"),
        }
        let seconds = started.elapsed().as_secs_f64();
        if tally.cases_repaired > 0 || tally.confirmed > 0 {
            info!(
                cases_repaired = tally.cases_repaired,
                events_fetched = tally.events_fetched,
                confirmed = tally.confirmed,
                seconds,
                "reconciliation repaired"
            );
        } else {
            debug!(
                compared = tally.compared,
                seconds, "reconciliation found nothing to repair"
            );
        }
        let mut report = self.report();
        report.last_run = Some(Utc::now());
        report.last_run_seconds = seconds;
        report.compared = tally.compared;
        report.unreachable = tally.unreachable;
        report.cases_repaired = tally.cases_repaired;
        report.events_fetched = tally.events_fetched;
        report.confirmed = tally.confirmed;
        report.total_cases_repaired += tally.cases_repaired;
        report.total_events_fetched += tally.events_fetched;
        report.runs += 1;
        report.last_error = error;
        report.silent_peers = tally.silent_peers;
    }

    async fn compare_with(&self, peer: pb::Tier, tally: &mut Tally) -> anyhow::Result<()> {
        let now = Utc::now();
        let until = now - chrono::Duration::from_std(self.settings.settle)?;
        let since = now - chrono::Duration::from_std(self.settings.window)?;
        let pool = self.engine.pool();
        let mut unreachable = 0;
        for community in self.engine.grids().communities() {
            let request = pb::DigestRequest {
                community_code: community.to_string(),
                since: Some(timestamp(since)),
                until: Some(timestamp(until)),
            };
            let theirs = match self.sync.digest(peer, &community, &request).await {
                Ok(reply) => reply.days,
                Err(SyncError::NoResponders(_) | SyncError::TimedOut(_)) => {
                    unreachable += 1;
                    if tally.unreachable.len() < 20 {
                        tally
                            .unreachable
                            .push(format!("{} for {community}", tier_name(peer)));
                    }
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            tally.compared += 1;
            let mine = sync::digest(pool, community.prefix(), since, until).await?;
            for day in differing_days(&mine, &theirs) {
                self.compare_day(peer, &community, day, until, tally)
                    .await?;
            }
        }
        if unreachable > 0 {
            debug!(
                peer = tier_name(peer),
                communities = unreachable,
                "peer did not answer for some communities"
            );
        }
        let communities = self.engine.grids().communities().len();
        if communities > 0 && unreachable == communities {
            tally.silent_peers.push(tier_name(peer).to_owned());
        }
        Ok(())
    }

    /// Compares one day of one community case by case; fetches where the peer is ahead.
    async fn compare_day(
        &self,
        peer: pb::Tier,
        community: &OrgCode,
        day: NaiveDate,
        until: chrono::DateTime<Utc>,
        tally: &mut Tally,
    ) -> anyhow::Result<()> {
        let pool = self.engine.pool();
        let mut after = String::new();
        loop {
            let request = pb::MarksRequest {
                community_code: community.to_string(),
                day: day.to_string(),
                until: Some(timestamp(until)),
                case_ids: Vec::new(),
                after_case_id: after.clone(),
            };
            let reply = self.sync.marks(peer, community, &request).await?;
            let theirs = parse_marks(&reply.marks);
            let ids: Vec<Uuid> = theirs.iter().map(|m| m.0).collect();
            let which = sync::Marks::Cases {
                prefix: community.prefix().to_owned(),
                ids,
            };
            let mine: HashMap<Uuid, u64> = sync::marks(pool, &which, None, MARKS_PAGE)
                .await?
                .into_iter()
                .map(|(id, v)| (id, v.max(0) as u64))
                .collect();
            for &(case_id, version) in &theirs {
                let have = mine.get(&case_id).copied().unwrap_or(0);
                if version > have {
                    let applied = self.fetch(peer, community, case_id, have).await?;
                    if applied > 0 {
                        tally.cases_repaired += 1;
                        tally.events_fetched += applied as u64;
                    }
                }
            }
            tally.confirmed += outbox::confirm_through(pool, tier_name(peer), &theirs).await?;
            match (reply.more, reply.marks.last()) {
                (true, Some(last)) => after = last.case_id.clone(),
                _ => return Ok(()),
            }
        }
    }

    /// Asks `peer` about events it has not confirmed for a while: a lost receipt is made good here.
    async fn confirm_stale(&self, peer: pb::Tier, tally: &mut Tally) -> anyhow::Result<()> {
        let pool = self.engine.pool();
        let stale =
            outbox::unconfirmed_by(pool, tier_name(peer), self.settings.confirm_within, 10_000)
                .await?;
        let mut by_community: BTreeMap<OrgCode, Vec<String>> = BTreeMap::new();
        for row in stale {
            if let Some(grid) = grid_of_subject(&row.subject) {
                by_community
                    .entry(grid.community())
                    .or_default()
                    .push(row.case_id.to_string());
            }
        }
        for (community, case_ids) in by_community {
            for chunk in case_ids.chunks(cases_per_ask(self.engine.event_limit())) {
                let request = pb::MarksRequest {
                    community_code: community.to_string(),
                    case_ids: chunk.to_vec(),
                    ..Default::default()
                };
                let reply = match self.sync.marks(peer, &community, &request).await {
                    Ok(reply) => reply,
                    Err(SyncError::NoResponders(_) | SyncError::TimedOut(_)) => break,
                    Err(e) => return Err(e.into()),
                };
                tally.confirmed +=
                    outbox::confirm_through(pool, tier_name(peer), &parse_marks(&reply.marks))
                        .await?;
            }
        }
        Ok(())
    }
}

pub(crate) fn parse_marks(marks: &[pb::CaseMark]) -> Vec<(Uuid, u64)> {
    marks
        .iter()
        .filter_map(|m| Some((Uuid::parse_str(&m.case_id).ok()?, m.version)))
        .collect()
}

/// Days whose digest differs between the two sides (missing on one side counts).
pub(crate) fn differing_days(mine: &[sync::DayDigest], theirs: &[pb::DayDigest]) -> Vec<NaiveDate> {
    let mine: BTreeMap<NaiveDate, (u64, &[u8])> = mine
        .iter()
        .map(|d| (d.day, (d.cases.max(0) as u64, d.hash.as_slice())))
        .collect();
    let theirs: BTreeMap<NaiveDate, (u64, &[u8])> = theirs
        .iter()
        .filter_map(|d| Some((d.day.parse().ok()?, (d.cases, d.hash.as_slice()))))
        .collect();
    let mut days: Vec<NaiveDate> = mine
        .iter()
        .filter(|(day, digest)| theirs.get(day) != Some(digest))
        .map(|(day, _)| *day)
        .chain(theirs.keys().filter(|day| !mine.contains_key(day)).copied())
        .collect();
    days.sort();
    days.dedup();
    days
}

fn timestamp(at: chrono::DateTime<Utc>) -> prost_types::Timestamp {
    std::time::SystemTime::from(at).into()
}

fn from_timestamp(ts: Option<prost_types::Timestamp>) -> Result<chrono::DateTime<Utc>, String> {
    let ts = ts.ok_or("a time is missing")?;
    chrono::DateTime::from_timestamp(ts.seconds, ts.nanos.clamp(0, 999_999_999) as u32)
        .ok_or_else(|| "a time is out of range".to_owned())
}

/// The period a digest request asks about.
pub(crate) fn window(
    request: &pb::DigestRequest,
) -> Result<(chrono::DateTime<Utc>, chrono::DateTime<Utc>), String> {
    Ok((
        from_timestamp(request.since)?,
        from_timestamp(request.until)?,
    ))
}

/// Which marks a request asks for under `prefix` (a day's or the listed cases', at most
/// [`CASES_PER_ASK`]; ids that are not UUIDs name no case), and after which case.
pub(crate) fn marks_asked(
    prefix: &str,
    request: &pb::MarksRequest,
) -> Result<(sync::Marks, Option<Uuid>), String> {
    let prefix = prefix.to_owned();
    let which = if request.case_ids.is_empty() {
        sync::Marks::Day {
            prefix,
            day: request
                .day
                .parse()
                .map_err(|_| format!("{:?} is not a day", request.day))?,
            until: from_timestamp(request.until)?,
        }
    } else {
        sync::Marks::Cases {
            prefix,
            ids: request
                .case_ids
                .iter()
                .take(CASES_PER_ASK)
                .filter_map(|id| Uuid::parse_str(id).ok())
                .collect(),
        }
    };
    let after = match request.after_case_id.as_str() {
        "" => None,
        id => Some(Uuid::parse_str(id).map_err(|_| "after_case_id is not a UUID")?),
    };
    Ok((which, after))
}

/// The case whose events a request asks for.
pub(crate) fn events_of(request: &pb::EventsRequest) -> Result<Uuid, String> {
    Uuid::parse_str(&request.case_id).map_err(|_| "case_id is not a UUID".to_owned())
}

/// Answers the peers' reconciliation requests from this tier's database.
#[derive(Debug, Clone)]
pub struct Answers {
    pub engine: Arc<Engine>,
    /// The largest answer that can travel.
    pub max_bytes: EventLimit,
}

impl Answers {
    fn check(&self, community: &OrgCode, named: &str) -> Result<(), String> {
        if community.as_str() != named {
            return Err(format!(
                "the subject names {community}, the request {named}"
            ));
        }
        if !self.engine.scope().contains_org(community) {
            return Err(format!(
                "{community} lies outside scope {}",
                self.engine.scope()
            ));
        }
        Ok(())
    }
}

impl Responder for Answers {
    async fn digest(
        &self,
        community: OrgCode,
        request: pb::DigestRequest,
    ) -> Result<pb::DigestReply, String> {
        self.check(&community, &request.community_code)?;
        let (since, until) = window(&request)?;
        let days = sync::digest(self.engine.pool(), community.prefix(), since, until)
            .await
            .map_err(|e| e.to_string())?;
        Ok(pb::DigestReply {
            days: days
                .into_iter()
                .map(|d| pb::DayDigest {
                    day: d.day.to_string(),
                    cases: d.cases.max(0) as u64,
                    hash: d.hash,
                })
                .collect(),
        })
    }

    async fn marks(
        &self,
        community: OrgCode,
        request: pb::MarksRequest,
    ) -> Result<pb::MarksReply, String> {
        self.check(&community, &request.community_code)?;
        let (which, after) = marks_asked(community.prefix(), &request)?;
        let page = marks_per_page(self.max_bytes.bytes());
        let marks = sync::marks(self.engine.pool(), &which, after, page + 1)
            .await
            .map_err(|e| e.to_string())?;
        let more = marks.len() as i64 > page;
        Ok(pb::MarksReply {
            marks: marks
                .into_iter()
                .take(page as usize)
                .map(|(id, version)| pb::CaseMark {
                    case_id: id.to_string(),
                    version: version.max(0) as u64,
                })
                .collect(),
            more,
        })
    }

    async fn events(
        &self,
        community: OrgCode,
        request: pb::EventsRequest,
    ) -> Result<pb::EventsReply, String> {
        let case_id = events_of(&request)?;
        let case = self.engine.case(case_id).await.map_err(|e| e.to_string())?;
        if !case.grid_code.starts_with(community.prefix()) {
            return Err(format!("case {case_id} does not lie in {community}"));
        }
        let (events, more) = sync::events_after(
            self.engine.pool(),
            case_id,
            request.after_seq,
            self.max_bytes.bytes(),
        )
        .await
        .map_err(|e| e.to_string())?;
        Ok(pb::EventsReply { events, more })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_answers_fit_the_bus() {
        use prost::Message as _;
        let id = || Uuid::now_v7().to_string();
        for limit in [4 * 1024, 15 * 1024, 64 * 1024, 1_000_000] {
            let ask = pb::MarksRequest {
                community_code: "350205002006".into(),
                case_ids: (0..cases_per_ask(limit)).map(|_| id()).collect(),
                ..Default::default()
            };
            assert!(ask.encoded_len() <= limit, "{limit}: ask");
            let answer = pb::MarksReply {
                marks: (0..marks_per_page(limit))
                    .map(|_| pb::CaseMark {
                        case_id: id(),
                        version: u64::from(u32::MAX),
                    })
                    .collect(),
                more: true,
            };
            assert!(answer.encoded_len() <= limit, "{limit}: answer");
        }
        assert_eq!(cases_per_ask(1_000_000), CASES_PER_ASK);
        assert_eq!(marks_per_page(1_000_000), MARKS_PAGE);
    }

    #[test]
    fn days_differ_when_counts_hashes_or_presence_differ() {
        let day = |d: &str| d.parse::<NaiveDate>().unwrap();
        let mine = vec![
            sync::DayDigest {
                day: day("2026-11-24"),
                cases: 3,
                hash: vec![1],
            },
            sync::DayDigest {
                day: day("2026-11-25"),
                cases: 2,
                hash: vec![2],
            },
            sync::DayDigest {
                day: day("2026-11-26"),
                cases: 1,
                hash: vec![3],
            },
        ];
        let theirs = vec![
            pb::DayDigest {
                day: "2026-11-24".into(),
                cases: 3,
                hash: vec![1],
            },
            pb::DayDigest {
                day: "2026-11-25".into(),
                cases: 2,
                hash: vec![9],
            },
            pb::DayDigest {
                day: "2026-11-23".into(),
                cases: 1,
                hash: vec![4],
            },
        ];
        assert_eq!(
            differing_days(&mine, &theirs),
            vec![day("2026-11-23"), day("2026-11-25"), day("2026-11-26")]
        );
        assert!(differing_days(&mine, &[]).len() == 3);
        assert!(differing_days(&[], &[]).is_empty());
    }
}
