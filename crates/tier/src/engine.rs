//! The case engine of a tier: authors events on the cases this tier holds and tells watchers about
//! every change. (Events replicated from the other tiers are applied by `replicate`.)
//!
//! Write path: lock the case row, run the state machine, check that the event can travel, store
//! event + projection + outbox row in one transaction, wake the relay. New reports are written
//! together with the others that arrive meanwhile (`intake`, group commit).

use std::sync::{Arc, RwLock};

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use prost::Message as _;
use sqlx::PgPool;
use tokio::sync::broadcast;
use tracing::{debug, info, instrument};
use uuid::Uuid;
use wangge_bus::RelayHandle;
use wangge_domain::case as machine;
use wangge_domain::grids::GridIndex;
use wangge_domain::{GridCode, Scope};
use wangge_proto as pb;
use wangge_proto::case_event::Kind;
use wangge_store::{cases, intake};

use crate::Error;
use crate::clocks::{self, Rules};
use crate::config::IntakeConfig;
use crate::intake::{BatchError, IntakeQueue, NewCase, Outcome};
use crate::policy::Grant;
use crate::request::NewReport;
use crate::time::{SystemTime, Time};
use crate::validate::{Attachments, Note};

/// The tier's case engine, shared by its gRPC services and its bus consumer.
#[derive(Debug)]
pub struct Engine {
    tier: pb::Tier,
    scope: Scope,
    pool: PgPool,
    /// Swapped whole on reload; readers keep the index they started with.
    grids: RwLock<Arc<GridIndex>>,
    relay: RelayHandle,
    updates: broadcast::Sender<pb::CaseUpdate>,
    /// The tiers that must confirm each event this tier writes.
    peers: Vec<pb::Tier>,
    /// The largest event that can travel.
    max_event_bytes: EventLimit,
    /// What a new report is checked against for duplicates.
    intake: IntakeConfig,
    /// Where the engine reads the time (injected: tests and the demo move it).
    time: Time,
    /// Time limits, skip-tier rules and calendars; swapped whole on reload.
    rules: RwLock<Arc<Rules>>,
    /// The events this engine committed lately: when they come back from the bus (a tier
    /// consumes its whole scope, its own events too) they are dropped without a database trip.
    recent: std::sync::Mutex<RecentIds>,
    /// New reports waiting to be written together (group commit).
    intake_queue: IntakeQueue,
}

/// A bounded set of event ids, the oldest forgotten first.
#[derive(Debug, Default)]
struct RecentIds {
    ids: std::collections::HashSet<Uuid>,
    order: std::collections::VecDeque<Uuid>,
}

/// How many of its own event ids an engine remembers (a few seconds of full intake, or more).
const RECENT_IDS: usize = 65_536;

impl RecentIds {
    fn insert(&mut self, id: Uuid) {
        if self.ids.insert(id) {
            self.order.push_back(id);
        }
        while self.order.len() > RECENT_IDS {
            if let Some(old) = self.order.pop_front() {
                self.ids.remove(&old);
            }
        }
    }
}

/// At most this many duplicate candidates travel with a report, the nearest.
const MAX_DUPLICATE_CANDIDATES: usize = 10;

/// Who acts on a case, with what remark and attachments (checked at the edge, `validate`); the
/// step itself is given to [`Engine::act`].
#[derive(Debug, Clone)]
pub struct Action {
    pub actor: pb::Actor,
    pub note: Note,
    pub attachments: Attachments,
}

pub(crate) fn wire_time(at: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: at.timestamp(),
        nanos: at.timestamp_subsec_nanos() as i32,
    }
}

/// Case numbers count days in China Standard Time.
fn china_day(at: DateTime<Utc>) -> chrono::NaiveDate {
    wangge_domain::clock::china_time(at).date()
}

pub fn parse_case_id(id: &str) -> Result<Uuid, Error> {
    Uuid::parse_str(id.trim())
        .map_err(|_| Error::invalid("case_id", format!("{id:?} is not a UUID")))
}

impl Engine {
    pub fn new(
        tier: pb::Tier,
        scope: Scope,
        pool: PgPool,
        grids: GridIndex,
        relay: RelayHandle,
        peers: Vec<pb::Tier>,
        max_event_bytes: EventLimit,
    ) -> Engine {
        let (updates, _) = broadcast::channel(4096);
        Engine {
            tier,
            scope,
            pool,
            grids: RwLock::new(Arc::new(grids)),
            relay,
            updates,
            peers,
            max_event_bytes,
            intake: IntakeConfig::default(),
            time: Arc::new(SystemTime),
            rules: RwLock::new(Arc::new(Rules::default())),
            recent: std::sync::Mutex::new(RecentIds::default()),
            intake_queue: IntakeQueue::default(),
        }
    }

    /// The same engine with other intake rules (duplicate radius and window).
    pub fn with_intake(mut self, intake: IntakeConfig) -> Engine {
        self.intake = intake;
        self
    }

    /// The same engine reading the time from `time`.
    pub fn with_time(mut self, time: Time) -> Engine {
        self.time = time;
        self
    }

    /// The same engine with `rules` (until the next reload).
    pub fn with_rules(self, rules: Rules) -> Engine {
        *self.rules.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(rules);
        self
    }

    /// The time now, as the tier sees it.
    pub fn now(&self) -> DateTime<Utc> {
        self.time.now()
    }

    /// Moves the tier's time forward, where its time source allows (virtual time).
    pub fn advance_time(&self, by: chrono::Duration) -> bool {
        self.time.advance_by(by)
    }

    /// The largest message the bus carries now, as [`EventLimit`] says.
    pub fn event_limit(&self) -> usize {
        self.max_event_bytes.bytes()
    }

    /// The rules the clocks run on.
    pub fn rules(&self) -> Arc<Rules> {
        // A poisoned lock still holds whole rules: the writer only swaps an Arc.
        self.rules.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Reads the time limits, skip-tier rules and calendars from the registry again.
    pub async fn reload_rules(&self) -> anyhow::Result<()> {
        let rules = load_rules(&self.pool, &self.scope, &self.grids()).await?;
        *self.rules.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(rules);
        Ok(())
    }

    /// Whether this engine committed the event `id` lately (then it is in the database already).
    pub fn wrote_recently(&self, id: Uuid) -> bool {
        self.recent
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .ids
            .contains(&id)
    }

    fn remember(&self, event: &pb::CaseEvent) {
        if let Ok(id) = Uuid::parse_str(&event.event_id) {
            self.recent
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(id);
        }
    }

    /// `case` with its clocks as they stand now.
    pub fn with_clocks(&self, case: pb::Case) -> pb::Case {
        clocks::with_clocks(case, &self.rules(), self.now())
    }

    pub fn peers(&self) -> &[pb::Tier] {
        &self.peers
    }

    /// Tells watchers about a change (nobody watching is fine).
    pub(crate) fn announce(&self, update: pb::CaseUpdate) {
        let _ = self.updates.send(update);
    }

    pub fn tier(&self) -> pb::Tier {
        self.tier
    }

    pub fn scope(&self) -> &Scope {
        &self.scope
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    pub fn grids(&self) -> Arc<GridIndex> {
        // A poisoned lock still holds a whole index: the writer only swaps an Arc.
        self.grids.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Reads the scope's grids from the registry again; returns how many there are.
    pub async fn reload_grids(&self) -> anyhow::Result<usize> {
        let index = load_grids(&self.pool, &self.scope).await?;
        let count = index.len();
        *self.grids.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(index);
        Ok(count)
    }

    /// Every change this tier makes or applies, as it happens.
    pub fn subscribe(&self) -> broadcast::Receiver<pb::CaseUpdate> {
        self.updates.subscribe()
    }

    /// A case of this scope.
    pub async fn case(&self, id: Uuid) -> Result<pb::Case, Error> {
        cases::get(&self.pool, id)
            .await?
            .filter(|c| c.grid_code.starts_with(self.scope.prefix()))
            .ok_or_else(|| Error::NotFound(format!("case {id}")))
    }

    /// 上报: takes a grid worker's report. Idempotent on the reporter's client id: the same report
    /// again returns the case it created (also when two copies race); the same client id with a
    /// different report is ALREADY_EXISTS.
    #[instrument(skip_all, fields(client_id = %report.client_id))]
    ///
    /// The report must lie in one of the grids `grant` covers (a grid worker reports in their own).
    pub async fn report(
        self: &Arc<Self>,
        grant: &Grant,
        report: NewReport,
    ) -> Result<pb::Case, Error> {
        let actor = grant.actor();
        let digest = report.digest();
        let client_id = report.client_id.clone();
        // A resubmitted report is found when its key is claimed below: looking for it first would
        // cost every new report a round trip.
        let pb::GeoPoint {
            longitude,
            latitude,
        } = report.location;
        let grid = self.grids().locate(longitude, latitude).ok_or_else(|| {
            Error::invalid(
                "location",
                format!(
                    "({longitude}, {latitude}) lies outside every grid of scope {}",
                    self.scope
                ),
            )
        })?;
        grant.check_grid(grid.as_str())?;
        if !self.rules().categories.contains(&report.category_code) {
            return Err(Error::invalid(
                "category_code",
                format!("unknown category {:?}", report.category_code),
            ));
        }

        let possible_duplicates = self
            .duplicate_candidates(&report.category_code, longitude, latitude)
            .await?;

        let case_id = Uuid::now_v7();
        let received = self.now();
        let at = wire_time(received);
        let skip_street = report.self_handling.is_none()
            && self
                .rules()
                .skips
                .skips_street(&report.category_code, report.urgency);
        let community = grid.community();
        let day = china_day(received);
        let mut event = pb::CaseEvent {
            event_id: Uuid::now_v7().to_string(),
            case_id: case_id.to_string(),
            seq: 1,
            at: Some(at),
            tier: pb::Tier::Village as i32,
            org_code: community.to_string(),
            actor: Some(actor.clone()),
            note: String::new(),
            attachments: report.attachments.into_vec(),
            state_after: 0,
            owner_after: None,
            kind: Some(Kind::Reported(pb::Reported {
                client_id: report.client_id,
                // Drawn in the batch's transaction (`write_reports`).
                number: String::new(),
                category_code: report.category_code,
                description: report.description,
                location: Some(report.location),
                grid_code: grid.to_string(),
                captured_at: report.captured_at.or(Some(at)),
                urgency: report.urgency as i32,
                self_handling: report.self_handling,
                possible_duplicates,
                skip_street,
            })),
        };
        // Checked here with the longest number of an ordinary day, so that a report the bus
        // cannot carry is refused on its own rather than in the batch it would have joined.
        set_number(
            &mut event,
            cases::case_number(community.as_str(), day, 9999),
        );
        let bytes = self.seal(None, event.clone())?.body.len();
        set_number(&mut event, String::new());
        let outcome = self
            .intake_queue
            .submit(
                self,
                NewCase {
                    reporter_id: actor.id.clone(),
                    client_id: client_id.clone(),
                    digest,
                    community: community.to_string(),
                    day,
                    event,
                    bytes,
                },
            )
            .await?;
        let case = match outcome {
            Outcome::Reported(case) => *case,
            Outcome::Taken => {
                debug!(
                    "the report was taken before (a resubmission or a concurrent copy), returning its case"
                );
                return self
                    .earlier_report(&actor.id, &client_id, &digest)
                    .await?
                    .ok_or_else(|| Error::NotFound(format!("case of client_id {client_id}")));
            }
        };
        info!(
            case_id = %case.id,
            number = %case.number,
            grid = %case.grid_code,
            possible_duplicates = case.possible_duplicates.len(),
            skip_street,
            "case reported"
        );
        Ok(self.with_clocks(case))
    }

    /// Writes a batch of new reports in one transaction (see `intake`): claims their keys and
    /// draws their numbers in one statement, stores every case, event and outbox row in another,
    /// commits, then tells the relay and the watchers. A report whose key was taken makes no case.
    pub(crate) async fn write_reports(
        &self,
        batch: &[&NewCase],
    ) -> Result<Vec<Outcome>, BatchError> {
        let all = |error: wangge_store::Error| BatchError::All(error.into());
        let claims: Vec<intake::Claim<'_>> = batch
            .iter()
            .map(|case| {
                Ok(intake::Claim {
                    reporter_id: &case.reporter_id,
                    client_id: &case.client_id,
                    case_id: parse_case_id(&case.event.case_id).map_err(BatchError::All)?,
                    digest: &case.digest,
                    community: &case.community,
                    day: case.day,
                })
            })
            .collect::<Result<_, BatchError>>()?;
        let mut tx = self.pool.begin().await.map_err(|e| all(e.into()))?;
        let sequences = intake::claim_numbered(&mut tx, &claims)
            .await
            .map_err(all)?;
        // Per report of the batch, the index of its case among those written (None: taken).
        let mut written = Vec::with_capacity(batch.len());
        // The events stored, and beside them (in their order) the envelopes they travel in.
        let mut applied: Vec<(pb::Case, pb::CaseEvent)> = Vec::with_capacity(batch.len());
        let mut envelopes: Vec<(String, Vec<u8>)> = Vec::with_capacity(batch.len());
        for (index, (case, sequence)) in batch.iter().zip(sequences).enumerate() {
            let Some(sequence) = sequence else {
                written.push(None);
                continue;
            };
            let mut event = case.event.clone();
            set_number(
                &mut event,
                cases::case_number(&case.community, case.day, sequence),
            );
            let Sealed {
                after,
                event,
                subject,
                body,
            } = self
                .seal(None, event)
                .map_err(|e| BatchError::Report(index, e))?;
            written.push(Some(applied.len()));
            applied.push((after, event));
            envelopes.push((subject, body));
        }
        let peers = self.peer_names();
        let outgoing: Vec<cases::Outgoing<'_>> = envelopes
            .iter()
            .map(|(subject, body)| cases::Outgoing {
                subject,
                body,
                peers: &peers,
            })
            .collect();
        cases::append_many(&mut tx, &applied, &outgoing)
            .await
            .map_err(all)?;
        tx.commit().await.map_err(|e| all(e.into()))?;
        self.relay.wake();
        for (after, event) in &applied {
            self.remember(event);
            self.announce(pb::CaseUpdate {
                case: Some(after.clone()),
                event: Some(event.clone()),
            });
        }
        Ok(written
            .into_iter()
            .map(|at| match at {
                Some(index) => Outcome::Reported(Box::new(applied[index].0.clone())),
                None => Outcome::Taken,
            })
            .collect())
    }

    /// Open cases of `category` reported within the intake's radius and window of the point,
    /// nearest first (疑似重复): the box query finds them, the haversine distance decides.
    async fn duplicate_candidates(
        &self,
        category: &str,
        longitude: f64,
        latitude: f64,
    ) -> Result<Vec<pb::DuplicateCandidate>, Error> {
        use geo::{Distance as _, Haversine, Point};

        let radius = f64::from(self.intake.duplicate_radius_m);
        if radius <= 0.0 {
            return Ok(Vec::new());
        }
        // Degrees of latitude are ~111 km everywhere; of longitude, shorter by cos(latitude).
        // The box is a little larger than the circle on purpose.
        let d_latitude = radius / 111_000.0 * 1.1;
        let d_longitude = d_latitude / latitude.to_radians().cos().abs().max(0.01);
        let since =
            self.now() - chrono::Duration::hours(i64::from(self.intake.duplicate_window_hours));
        let nearby = cases::open_nearby(
            &self.pool,
            category,
            since,
            (longitude, latitude),
            (d_longitude, d_latitude),
            200,
        )
        .await?;
        let here = Point::new(longitude, latitude);
        let mut candidates: Vec<(f64, pb::DuplicateCandidate)> = nearby
            .into_iter()
            .filter_map(|case| {
                let distance = Haversine.distance(here, Point::new(case.longitude, case.latitude));
                (distance <= radius).then(|| {
                    (
                        distance,
                        pb::DuplicateCandidate {
                            case_id: case.id.to_string(),
                            number: case.number,
                            distance_m: distance.round() as u32,
                            reported_at: Some(prost_types::Timestamp {
                                seconds: case.reported_at.timestamp(),
                                nanos: case.reported_at.timestamp_subsec_nanos() as i32,
                            }),
                        },
                    )
                })
            })
            .collect();
        candidates.sort_by(|a, b| a.0.total_cmp(&b.0));
        Ok(candidates
            .into_iter()
            .take(MAX_DUPLICATE_CANDIDATES)
            .map(|(_, candidate)| candidate)
            .collect())
    }

    /// The case an earlier copy of this report created, if the reporter sent it before; a taken
    /// client id with another report is ALREADY_EXISTS.
    async fn earlier_report(
        &self,
        reporter_id: &str,
        client_id: &str,
        digest: &[u8; 32],
    ) -> Result<Option<pb::Case>, Error> {
        let mut conn = self.pool.acquire().await?;
        let Some(key) = intake::find(&mut conn, reporter_id, client_id).await? else {
            return Ok(None);
        };
        if !key.matches(digest) {
            return Err(Error::AlreadyExists {
                field: "client_id",
                message: format!(
                    "{} was used by this reporter for a different report (case {}); \
                     a new report needs a new client_id",
                    client_id, key.case_id
                ),
            });
        }
        let case = cases::load(&mut conn, key.case_id, false).await?;
        Ok(case.filter(|c| c.grid_code.starts_with(self.scope.prefix())))
    }

    /// Appends one event by this tier to a case it holds.
    ///
    /// `step` builds the event kind from the case as locked, so a step that depends on the case
    /// (its community, its department) reads it once, under the lock.
    pub async fn act(
        &self,
        case_id: Uuid,
        action: Action,
        step: impl FnOnce(&pb::Case) -> Result<Kind, Error>,
    ) -> Result<pb::Case, Error> {
        let Action {
            actor,
            note,
            attachments,
        } = action;
        self.act_as(case_id, note, attachments, |case| Ok((actor, step(case)?)))
            .await
    }

    /// Like [`Engine::act`], for a step whose actor depends on the case as locked: `step` gives
    /// who acts (in which role) with the event.
    #[instrument(skip_all, fields(case_id = %case_id))]
    pub async fn act_as(
        &self,
        case_id: Uuid,
        note: Note,
        attachments: Attachments,
        step: impl FnOnce(&pb::Case) -> Result<(pb::Actor, Kind), Error>,
    ) -> Result<pb::Case, Error> {
        let mut tx = self.pool.begin().await?;
        let case = cases::load(&mut tx, case_id, true)
            .await?
            .filter(|c| c.grid_code.starts_with(self.scope.prefix()))
            .ok_or_else(|| Error::NotFound(format!("case {case_id}")))?;
        let grid = stored_grid(&case)?;
        let (actor, kind) = step(&case)?;
        let kind_name = machine::kind_name(&kind);
        let event = self.next_event(
            &case,
            &grid,
            actor,
            note.into_string(),
            attachments.into_vec(),
            kind,
        );
        let case = self.commit(tx, Some(&case), event).await?;
        info!(
            kind = kind_name,
            state = machine::state_name(case.state()),
            version = case.version,
            "case updated"
        );
        Ok(self.with_clocks(case))
    }

    /// Runs the state machine and stores event, projection and outbox row in the caller's
    /// transaction, then commits it and tells the relay and the watchers.
    async fn commit(
        &self,
        mut tx: sqlx::Transaction<'static, sqlx::Postgres>,
        before: Option<&pb::Case>,
        event: pb::CaseEvent,
    ) -> Result<pb::Case, Error> {
        let (after, event) = self.write(&mut tx, before, event).await?;
        tx.commit().await?;
        self.remember(&event);
        self.relay.wake();
        self.announce(pb::CaseUpdate {
            case: Some(after.clone()),
            event: Some(event),
        });
        Ok(after)
    }

    /// Runs the state machine and stores event, projection and outbox row in `tx`. An event too
    /// large to travel is refused before anything is stored.
    async fn write(
        &self,
        tx: &mut sqlx::Transaction<'static, sqlx::Postgres>,
        before: Option<&pb::Case>,
        event: pb::CaseEvent,
    ) -> Result<(pb::Case, pb::CaseEvent), Error> {
        let Sealed {
            after,
            event,
            subject,
            body,
        } = self.seal(before, event)?;
        let peers = self.peer_names();
        let outgoing = cases::Outgoing {
            subject: &subject,
            body: &body,
            peers: &peers,
        };
        cases::append(tx, &after, &event, Some(outgoing)).await?;
        Ok((after, event))
    }

    /// Runs the state machine on `event` and makes the envelope it travels in, refusing an event
    /// too large to travel; stores nothing.
    fn seal(&self, before: Option<&pb::Case>, mut event: pb::CaseEvent) -> Result<Sealed, Error> {
        let after = machine::apply(before, &event)?;
        machine::seal(&mut event, &after);
        let grid = stored_grid(&after)?;
        let envelope = pb::Envelope {
            event_id: event.event_id.clone(),
            trace: Default::default(),
            body: Some(pb::envelope::Body::CaseEvent(event.clone())),
        };
        let body = envelope.encode_to_vec();
        let limit = self.max_event_bytes.bytes();
        if body.len() > limit {
            return Err(too_large(&event, body.len(), limit));
        }
        Ok(Sealed {
            after,
            event,
            subject: wangge_bus::case_subject(&grid),
            body,
        })
    }

    /// The tiers that must confirm this tier's events, by name (the outbox's `pending_tiers`).
    fn peer_names(&self) -> Vec<&'static str> {
        self.peers.iter().map(|&t| machine::tier_name(t)).collect()
    }

    /// The next event by this tier on `case`.
    fn next_event(
        &self,
        case: &pb::Case,
        grid: &GridCode,
        actor: pb::Actor,
        note: String,
        attachments: Vec<pb::Attachment>,
        kind: Kind,
    ) -> pb::CaseEvent {
        pb::CaseEvent {
            event_id: Uuid::now_v7().to_string(),
            case_id: case.id.clone(),
            seq: case.version + 1,
            at: Some(wire_time(self.now())),
            tier: self.tier as i32,
            org_code: machine::owner_for(self.tier, grid).org_code,
            actor: Some(actor),
            note,
            attachments,
            state_after: 0,
            owner_after: None,
            kind: Some(kind),
        }
    }

    /// 合并: `duplicate` follows `into` from now on. Both cases must be held by this tier; both
    /// get their event in one transaction (MERGED on the duplicate, the link on the other), so
    /// neither is ever merged halfway.
    #[instrument(skip_all, fields(case_id = %duplicate, into = %into))]
    pub async fn merge(
        &self,
        duplicate: Uuid,
        into: Uuid,
        action: Action,
        check: impl Fn(&pb::Case) -> Result<(), Error>,
    ) -> Result<pb::Case, Error> {
        let mut tx = self.pool.begin().await?;
        // Lock in id order, so two merges of the same pair cannot deadlock.
        let mut ids = [duplicate, into];
        ids.sort();
        let mut locked = Vec::with_capacity(2);
        for id in ids {
            let case = cases::load(&mut tx, id, true)
                .await?
                .filter(|c| c.grid_code.starts_with(self.scope.prefix()));
            locked.push((id, case));
        }
        let mut take = |id: Uuid| {
            locked
                .iter_mut()
                .find(|(locked_id, _)| *locked_id == id)
                .and_then(|(_, case)| case.take())
        };
        let (case, target) = (take(duplicate), take(into));
        // The caller's scope first: a case they may not touch is refused as such, whatever the
        // other one is.
        for case in [&case, &target].into_iter().flatten() {
            check(case)?;
        }
        let case = case.ok_or_else(|| Error::NotFound(format!("case {duplicate}")))?;
        let target = target.ok_or_else(|| Error::NotFound(format!("case {into}")))?;
        if machine::is_finished(target.state()) {
            return Err(Error::FailedPrecondition(format!(
                "case {} is {}: a case is merged into an open one",
                target.number,
                machine::state_name(target.state())
            )));
        }
        let merged = self.next_event(
            &case,
            &stored_grid(&case)?,
            action.actor.clone(),
            action.note.as_str().to_owned(),
            action.attachments.into_vec(),
            Kind::Merged(pb::Merged {
                into_case_id: target.id.clone(),
                into_number: target.number.clone(),
            }),
        );
        let received = self.next_event(
            &target,
            &stored_grid(&target)?,
            action.actor,
            action.note.into_string(),
            Vec::new(),
            Kind::MergeReceived(pb::MergeReceived {
                case_id: case.id.clone(),
                number: case.number.clone(),
                reporter: case.reporter.clone(),
            }),
        );
        let (after, merged) = self.write(&mut tx, Some(&case), merged).await?;
        let (target_after, received) = self.write(&mut tx, Some(&target), received).await?;
        tx.commit().await?;
        self.remember(&merged);
        self.remember(&received);
        self.relay.wake();
        for (case, event) in [(after.clone(), merged), (target_after, received)] {
            self.announce(pb::CaseUpdate {
                case: Some(case),
                event: Some(event),
            });
        }
        info!(into = %target.number, "case merged");
        Ok(self.with_clocks(after))
    }
}

/// Why an event cannot travel, naming the part of the request that made it large.
/// An event run through the state machine, with the case after it and its envelope.
struct Sealed {
    after: pb::Case,
    event: pb::CaseEvent,
    subject: String,
    body: Vec<u8>,
}

/// Sets the daily number (编号) of a 上报 event.
fn set_number(event: &mut pb::CaseEvent, number: String) {
    if let Some(Kind::Reported(reported)) = &mut event.kind {
        reported.number = number;
    }
}

/// Room for the headers and the subject next to an event in a NATS message.
const MESSAGE_OVERHEAD: usize = 1024;

/// The largest encoded event a step may produce: the configured bound (`delivery.max_event_bytes`),
/// lowered to the max payload the NATS server announced, less room for headers. Read on every
/// step, not once at start: a tier connects to NATS in the background (before the server's INFO
/// arrives the client assumes NATS's default of 1 MiB), and a server may come back, or another
/// of a cluster answer, with a lower limit.
#[derive(Debug, Clone)]
pub struct EventLimit {
    configured: usize,
    client: async_nats::Client,
}

impl EventLimit {
    /// `configured`, or less when the server `client` is connected to announces less.
    pub fn following(configured: usize, client: async_nats::Client) -> EventLimit {
        EventLimit { configured, client }
    }

    /// The limit now.
    pub fn bytes(&self) -> usize {
        let carried = self.client.max_payload().saturating_sub(MESSAGE_OVERHEAD);
        self.configured.min(carried)
    }
}

fn too_large(event: &pb::CaseEvent, bytes: usize, limit: usize) -> Error {
    let attachments: usize = event.attachments.iter().map(|a| a.encoded_len()).sum();
    let field = if attachments * 2 > bytes {
        "attachments"
    } else if matches!(event.kind, Some(Kind::Reported(_))) {
        "description"
    } else {
        "note"
    };
    Error::invalid(
        field,
        format!("the step's event would be {bytes} bytes, above the {limit} bytes the bus carries"),
    )
}

pub(crate) fn stored_grid(case: &pb::Case) -> Result<GridCode, Error> {
    case.grid_code
        .parse()
        .map_err(|e| Error::invalid("grid_code", format!("{e}")))
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

/// The time limits, skip-tier rules and the work calendars of the scope's communities, from the
/// registry.
pub(crate) async fn load_rules(
    pool: &sqlx::PgPool,
    scope: &Scope,
    grids: &GridIndex,
) -> anyhow::Result<Rules> {
    use wangge_store::rules;
    let limits = rules::limit_rules(pool)
        .await
        .context("cannot read the time limits")?;
    let skips = rules::skip_rules(pool)
        .await
        .context("cannot read the skip-tier rules")?;
    let fallback = Arc::new(
        rules::calendar_for(pool, scope.prefix())
            .await
            .context("cannot read the work calendar")?,
    );
    let categories = wangge_store::registry::categories(pool, None)
        .await
        .context("cannot read the categories")?
        .into_iter()
        .map(|c| c.code)
        .collect();
    let mut calendars = std::collections::HashMap::new();
    for community in grids.communities() {
        let community = community.to_string();
        let calendar = rules::calendar_for(pool, &community)
            .await
            .with_context(|| format!("cannot read the work calendar of {community}"))?;
        calendars.insert(community, Arc::new(calendar));
    }
    let until = fallback.covered_until();
    info!(
        limits = limits.rules().len(),
        calendars = calendars.len(),
        calendar_until = ?until,
        "time limits and calendars loaded"
    );
    if until.is_none() {
        tracing::warn!("no work calendar loaded: working time counts Monday to Friday only");
    }
    if fallback.period_changes().next().is_none() {
        // A database migrated before working hours were data, and not seeded since.
        tracing::warn!(
            "no working hours loaded: the built-in office hours apply until wangge-seed imports              the calendar's hours"
        );
    }
    Ok(Rules {
        limits,
        skips,
        calendars,
        fallback,
        categories,
    })
}
