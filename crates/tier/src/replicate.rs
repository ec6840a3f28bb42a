//! The read path: events the other tiers wrote, applied to this tier's replica.
//!
//! Messages come from the consumer a batch at a time and are applied in one transaction, which
//! first locks every case the batch is about (one statement, in id order). Per event, against the
//! case as it stands in the transaction: `seq <= version` is a duplicate (held already);
//! `seq > version + 1` is a gap: the event is **parked** in the database (and acknowledged, so it
//! never clogs the consumer's ack-pending window) and the reconciler is asked to fetch what is
//! missing; otherwise `replay`, and then whatever was parked behind it. The applied events, their
//! projections and their inbox keys are written at the end, two statements for the whole batch.
//! After the commit, watchers hear of the changes and the authors get **receipts** for every event
//! this tier now holds.
//!
//! Events whose author could not have sent them on their subject (a village writing for another
//! community) are kept as dead letters, never applied.
//!
//! Poison isolation: a database that is away makes the whole batch come again later; a transaction
//! that lost a race is tried again at once, a few times; any other failure (a refused event, a
//! constraint, an event id another event holds, even a panic) makes the batch be applied again one
//! message at a time, and only the failing message is set aside as a dead letter. A message that
//! keeps losing races on its own is set aside too, after [`MAX_DELIVERIES`] deliveries.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::FutureExt;
use prost::Message as _;
use sqlx::PgConnection;
use tokio::sync::mpsc;
use tracing::{debug, error, instrument, warn};
use uuid::Uuid;
use wangge_bus::receipts::{Held, ReceiptSender};
use wangge_bus::{Disposition, Handler, Message, case_subject, check_author, grid_of_subject};
use wangge_domain::case::{self as machine, tier_name};
use wangge_domain::{GridCode, OrgCode};
use wangge_proto as pb;
use wangge_proto::case_event::Kind;
use wangge_store::cases;
use wangge_store::replication::{self, Parked};

use crate::engine::Engine;

/// A case stuck at a gap, for the reconciler to fetch what is missing.
#[derive(Debug, Clone)]
pub struct Repair {
    pub case_id: Uuid,
    pub community: OrgCode,
    /// The version held here.
    pub have: u64,
    /// The tier that wrote the parked event: it holds what came before.
    pub author: pb::Tier,
}

/// Why applying failed.
#[derive(Debug)]
pub enum Failure {
    /// The database is away: try the same again later, for as long as it is.
    Unavailable(String),
    /// The transaction lost a race (another lane applied an event meanwhile, a serialization
    /// failure or a deadlock) or a statement was cancelled: another try will likely do, but a
    /// message that keeps failing this way is set aside after a bounded number of tries.
    Transient(String),
    /// Something about the message: it must not hold up the others.
    Message(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Unavailable(e) => write!(f, "database unavailable: {e}"),
            Failure::Transient(e) => write!(f, "transaction lost a race: {e}"),
            Failure::Message(e) => f.write_str(e),
        }
    }
}

impl From<wangge_store::Error> for Failure {
    fn from(e: wangge_store::Error) -> Failure {
        match e.class() {
            // A cancelled statement may be a statement timeout that this very batch runs into
            // every time: tried again, but not forever.
            wangge_store::Class::Unavailable if e.sqlstate().as_deref() == Some(QUERY_CANCELED) => {
                Failure::Transient(e.to_string())
            }
            wangge_store::Class::Unavailable => Failure::Unavailable(e.to_string()),
            // Two lanes or instances locking the same cases.
            wangge_store::Class::Contention => Failure::Transient(e.to_string()),
            wangge_store::Class::Permanent => Failure::Message(e.to_string()),
        }
    }
}

/// SQLSTATE query_canceled: a statement timeout, or an operator's `pg_cancel_backend`.
const QUERY_CANCELED: &str = "57014";

/// How often a transaction that lost a race is tried again at once, before the batch is applied
/// one message at a time (or the message alone is let go, to come again).
const TRIES_AT_ONCE: usize = 3;

/// A message that still loses races on its own after this many deliveries is set aside: nothing
/// but a database that is away holds a message back without bound.
pub const MAX_DELIVERIES: i64 = 5;

impl From<sqlx::Error> for Failure {
    fn from(e: sqlx::Error) -> Failure {
        Failure::from(wangge_store::Error::from(e))
    }
}

/// What applying did, made known after the commit.
#[derive(Debug, Default)]
struct Effects {
    updates: Vec<pb::CaseUpdate>,
    held: Vec<Held>,
    repairs: Vec<Repair>,
    applied: usize,
}

/// One event to apply, wherever it came from.
struct Incoming<'a> {
    /// The subject it arrived on; none when fetched by reconciliation.
    subject: Option<&'a str>,
    /// The envelope as it arrived: what the park and the dead letters keep.
    raw: Cow<'a, [u8]>,
    event: pb::CaseEvent,
    event_id: Uuid,
    case_id: Uuid,
}

/// The cases a transaction applies events to, as they stand in it, and the events applied but
/// not yet written: a batch's events are written with one statement (`cases::append_many`) and
/// their inbox keys with another, not three statements an event.
#[derive(Default)]
struct Batch {
    /// Each case as held in the transaction (locked), none when it is not held here yet.
    cases: HashMap<Uuid, Option<pb::Case>>,
    /// Applied in order, each with the case after it.
    applied: Vec<(pb::Case, pb::CaseEvent)>,
}

impl Batch {
    /// Locks and reads the cases the messages are about, in one statement.
    async fn locking(tx: &mut PgConnection, ids: Vec<Uuid>) -> Result<Batch, Failure> {
        let mut held = cases::load_many(tx, &ids).await?;
        let cases = ids
            .into_iter()
            .map(|id| {
                let case = held.remove(&id);
                (id, case)
            })
            .collect();
        Ok(Batch {
            cases,
            applied: Vec::new(),
        })
    }

    /// The case as it stands in the transaction, locked.
    async fn case(&mut self, tx: &mut PgConnection, id: Uuid) -> Result<Option<pb::Case>, Failure> {
        if let Some(case) = self.cases.get(&id) {
            return Ok(case.clone());
        }
        let case = cases::load(tx, id, true).await?;
        self.cases.insert(id, case.clone());
        Ok(case)
    }

    fn apply(&mut self, case_id: Uuid, after: pb::Case, event: pb::CaseEvent) {
        self.cases.insert(case_id, Some(after.clone()));
        self.applied.push((after, event));
    }

    /// Writes what was applied: the inbox keys first, so that of two lanes applying the same new
    /// case at once one waits and then finds the key taken.
    ///
    /// A key found taken is looked up: held by this very event (same case, same place), the other
    /// lane won the race, and the batch tried again finds the case held ([`Failure::Transient`]).
    /// Held by another event, or used twice in the batch, the id was reused or forged: that
    /// message can never be applied, and only it must fail ([`Failure::Message`]).
    async fn write(&mut self, tx: &mut PgConnection) -> Result<(), Failure> {
        if self.applied.is_empty() {
            return Ok(());
        }
        let keys: Vec<Uuid> = self
            .applied
            .iter()
            .filter_map(|(_, event)| Uuid::parse_str(&event.event_id).ok())
            .collect();
        let mut seen = HashSet::with_capacity(keys.len());
        if let Some(twice) = keys.iter().find(|key| !seen.insert(**key)) {
            return Err(Failure::Message(format!(
                "event id {twice} is used by two different events"
            )));
        }
        let claimed = replication::claim_inbox_many(tx, &keys).await?;
        if claimed != keys.len() as u64 {
            return Err(self.taken(tx, &keys).await);
        }
        cases::append_many(tx, &self.applied, &[]).await?;
        self.applied.clear();
        Ok(())
    }

    /// Why some of `keys` were found taken in the inbox.
    async fn taken(&self, tx: &mut PgConnection, keys: &[Uuid]) -> Failure {
        let holders = match replication::held_where(tx, keys).await {
            Ok(holders) => holders,
            Err(error) => return Failure::from(error),
        };
        let mut raced = 0;
        for (_, event) in &self.applied {
            let Ok(id) = Uuid::parse_str(&event.event_id) else {
                continue;
            };
            match holders.get(&id) {
                Some((case_id, seq))
                    if case_id.to_string() == event.case_id && *seq == event.seq as i64 =>
                {
                    raced += 1;
                }
                Some((case_id, seq)) => {
                    return Failure::Message(format!(
                        "event id {id} is used by two different events: case {} seq {} arrived, \
                         case {case_id} seq {seq} is held",
                        event.case_id, event.seq
                    ));
                }
                None => {}
            }
        }
        if raced == 0 {
            return Failure::Message(
                "an event id of the batch is taken in the inbox by no event held here".to_owned(),
            );
        }
        Failure::Transient(format!(
            "{raced} of {} events were applied meanwhile by another consumer",
            keys.len()
        ))
    }
}

/// Applies replicated events; shared by the consumer and the reconciler.
#[derive(Debug)]
pub struct Replicator {
    engine: Arc<Engine>,
    receipts: ReceiptSender,
    repairs: mpsc::Sender<Repair>,
    /// Cases with parked events, as far as this process knows: only those need a look into the
    /// park after an apply. The reconciler's sweep covers what another instance parked.
    parked: Mutex<HashSet<Uuid>>,
}

impl Replicator {
    pub fn new(
        engine: Arc<Engine>,
        receipts: ReceiptSender,
        repairs: mpsc::Sender<Repair>,
    ) -> Replicator {
        Replicator {
            engine,
            receipts,
            repairs,
            parked: Mutex::new(HashSet::new()),
        }
    }

    fn parked(&self) -> std::sync::MutexGuard<'_, HashSet<Uuid>> {
        // A poisoned set is still a set of hints.
        self.parked.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether `event` is one this tier wrote lately (then it is in the database already).
    fn is_own_recent(&self, event: &pb::CaseEvent) -> bool {
        event.tier() == self.engine.tier()
            && Uuid::parse_str(&event.event_id).is_ok_and(|id| self.engine.wrote_recently(id))
    }

    /// Applies a batch of bus messages: in one transaction when all goes well (one commit, one
    /// fsync, for the lot), else one by one.
    pub async fn apply_batch(&self, messages: &[Message<'_>]) -> Vec<Disposition> {
        match self.tried_at_once(messages).await {
            Ok(effects) => {
                self.make_known(effects).await;
                vec![Disposition::Done; messages.len()]
            }
            Err(Failure::Unavailable(error)) => {
                warn!(%error, batch = messages.len(), "database unavailable, the batch comes again");
                vec![Disposition::Retry(Duration::from_secs(1)); messages.len()]
            }
            Err(error @ (Failure::Message(_) | Failure::Transient(_))) => {
                warn!(%error, batch = messages.len(), "a message of the batch failed, applying one by one");
                self.one_by_one(messages).await
            }
        }
    }

    /// [`Self::in_one_transaction`], tried again at once while it loses races, a few times.
    async fn tried_at_once(&self, messages: &[Message<'_>]) -> Result<Effects, Failure> {
        let mut tries = 1;
        loop {
            match self.in_one_transaction(messages).await {
                Err(Failure::Transient(error)) if tries < TRIES_AT_ONCE => {
                    debug!(%error, tries, "transaction lost a race, tried again");
                    tries += 1;
                }
                outcome => return outcome,
            }
        }
    }

    async fn in_one_transaction(&self, messages: &[Message<'_>]) -> Result<Effects, Failure> {
        // Each envelope decoded once: its case is locked with the batch's, then it is applied.
        // Our own events coming back (a tier consumes its whole scope) are left out: they need no
        // lock and no transaction, and a village consuming the reports it just took does not
        // touch its database.
        let theirs: Vec<(&Message<'_>, Result<pb::CaseEvent, String>)> = messages
            .iter()
            .map(|m| (m, case_event_in(m.payload)))
            .filter(|(_, event)| !event.as_ref().is_ok_and(|e| self.is_own_recent(e)))
            .collect();
        if theirs.is_empty() {
            return Ok(Effects::default());
        }
        let mut tx = self.engine.pool().begin().await?;
        let mut effects = Effects::default();
        let mut ids: Vec<Uuid> = theirs
            .iter()
            .filter_map(|(_, event)| event.as_ref().ok())
            .filter_map(|event| Uuid::parse_str(&event.case_id).ok())
            .collect();
        ids.sort_unstable();
        ids.dedup();
        let mut batch = Batch::locking(&mut tx, ids).await?;
        for (message, event) in theirs {
            guard(self.apply_message(&mut tx, message, event, &mut batch, &mut effects)).await?;
        }
        batch.write(&mut tx).await?;
        tx.commit().await?;
        Ok(effects)
    }

    async fn one_by_one(&self, messages: &[Message<'_>]) -> Vec<Disposition> {
        let mut dispositions = Vec::with_capacity(messages.len());
        for message in messages {
            let failed = match self.tried_at_once(std::slice::from_ref(message)).await {
                Ok(effects) => {
                    self.make_known(effects).await;
                    None
                }
                Err(Failure::Unavailable(error)) => {
                    warn!(%error, "database unavailable, the rest of the batch comes again");
                    break;
                }
                // Only this message comes again (the others go on; what follows it in its case
                // waits in the park), and not without bound.
                Err(Failure::Transient(error)) if message.delivered < MAX_DELIVERIES => {
                    warn!(%error, subject = message.subject, delivered = message.delivered, "message lost its races, it comes again");
                    dispositions.push(Disposition::Retry(Duration::from_secs(1)));
                    continue;
                }
                Err(Failure::Transient(error)) => Some(format!(
                    "still failing after {} deliveries: {error}",
                    message.delivered
                )),
                Err(Failure::Message(reason)) => Some(reason),
            };
            let disposition = match failed {
                None => Disposition::Done,
                Some(reason) => match self.set_aside_alone(message, &reason).await {
                    Ok(effects) => {
                        self.make_known(effects).await;
                        Disposition::Done
                    }
                    Err(error) => {
                        warn!(%error, "could not keep the failing message, it comes again");
                        dispositions.push(Disposition::Retry(Duration::from_secs(1)));
                        break;
                    }
                },
            };
            dispositions.push(disposition);
        }
        let rest = messages.len() - dispositions.len();
        dispositions.extend(std::iter::repeat_n(
            Disposition::Retry(Duration::from_secs(1)),
            rest,
        ));
        dispositions
    }

    /// Keeps a message that failed on its own as a dead letter, in a transaction of its own.
    async fn set_aside_alone(
        &self,
        message: &Message<'_>,
        reason: &str,
    ) -> Result<Effects, Failure> {
        let mut tx = self.engine.pool().begin().await?;
        let mut effects = Effects::default();
        let event = case_event_in(message.payload).ok();
        let grid = grid_of_subject(message.subject);
        let held = event.as_ref().zip(grid).map(|(event, grid)| Held {
            author: event.tier(),
            community: grid.community(),
            event_id: event.event_id.clone(),
        });
        let (event_id, case_id) = ids(event.as_ref());
        set_aside(
            &mut tx,
            message.subject,
            message.payload,
            event_id,
            case_id,
            reason,
        )
        .await?;
        effects.held.extend(held);
        tx.commit().await?;
        Ok(effects)
    }

    /// One message of a batch.
    async fn apply_message(
        &self,
        tx: &mut PgConnection,
        message: &Message<'_>,
        event: Result<pb::CaseEvent, String>,
        batch: &mut Batch,
        effects: &mut Effects,
    ) -> Result<(), Failure> {
        let (subject, payload) = (message.subject, message.payload);
        if message.delivered > MAX_DELIVERIES {
            warn!(
                subject,
                delivered = message.delivered,
                "message delivered again and again"
            );
        }
        let event = match event {
            Ok(event) => event,
            Err(reason) => return set_aside(tx, subject, payload, None, None, &reason).await,
        };
        let (Some(event_id), Some(case_id)) = ids(Some(&event)) else {
            return set_aside(
                tx,
                subject,
                payload,
                None,
                None,
                "event or case id is not a UUID",
            )
            .await;
        };
        let incoming = Incoming {
            subject: Some(subject),
            raw: Cow::Borrowed(payload),
            event,
            event_id,
            case_id,
        };
        self.apply_event(tx, incoming, batch, effects).await
    }

    /// Applies one event in the caller's transaction, or parks it, or keeps it as a dead letter.
    async fn apply_event(
        &self,
        tx: &mut PgConnection,
        incoming: Incoming<'_>,
        batch: &mut Batch,
        effects: &mut Effects,
    ) -> Result<(), Failure> {
        let Incoming {
            subject,
            raw,
            event,
            event_id,
            case_id,
        } = incoming;
        let case = batch.case(tx, case_id).await?;
        let version = case.as_ref().map_or(0, |c| c.version);
        let subject_grid = subject.and_then(grid_of_subject);
        // The case's own grid: as held here, else as reported, else as the subject says.
        let case_grid = case
            .as_ref()
            .and_then(|c| c.grid_code.parse::<GridCode>().ok())
            .or_else(|| match &event.kind {
                Some(Kind::Reported(report)) => report.grid_code.parse().ok(),
                _ => None,
            })
            .or(subject_grid);
        let subject_name = subject.map(Cow::Borrowed);
        let Some(case_grid) = case_grid else {
            let subject = subject_name.unwrap_or(Cow::Borrowed("sync"));
            return set_aside(
                tx,
                &subject,
                &raw,
                Some(event_id),
                Some(case_id),
                "the case's grid is unknown",
            )
            .await;
        };
        let subject: Cow<'_, str> =
            subject_name.unwrap_or_else(|| Cow::Owned(case_subject(&case_grid)));
        if let Some(subject_grid) = subject_grid
            && subject_grid != case_grid
        {
            let reason = format!(
                "arrived on the subject of grid {subject_grid}, but the case lies in grid {case_grid}"
            );
            return set_aside(tx, &subject, &raw, Some(event_id), Some(case_id), &reason).await;
        }
        // Whoever wrote the event must be one who may publish on its subject: NATS permissions
        // keep each tier's credential to its scope, and this refuses what got past them.
        if let Some(subject_grid) = subject_grid
            && let Err(out_of_scope) = check_author(event.tier, &event.org_code, &subject_grid)
        {
            let reason = format!("sent outside its author's scope: {out_of_scope}");
            return set_aside(tx, &subject, &raw, Some(event_id), Some(case_id), &reason).await;
        }
        if !self.engine.scope().contains_grid(&case_grid) {
            let reason = format!(
                "grid {case_grid} lies outside scope {}",
                self.engine.scope()
            );
            return set_aside(tx, &subject, &raw, Some(event_id), Some(case_id), &reason).await;
        }
        let held = Held {
            author: event.tier(),
            community: case_grid.community(),
            event_id: event.event_id.clone(),
        };
        if event.seq <= version {
            // Our own event coming back, or a copy that came another way.
            effects.held.push(held);
            return Ok(());
        }
        if event.seq > version + 1 {
            debug!(%case_id, seq = event.seq, have = version, "event ahead of its predecessor, parked");
            replication::park(
                tx,
                &Parked {
                    event_id,
                    case_id,
                    seq: event.seq as i64,
                    author_tier: tier_name(event.tier()).to_owned(),
                    subject: subject.into_owned(),
                    body: raw.into_owned(),
                },
            )
            .await?;
            self.parked().insert(case_id);
            effects.repairs.push(Repair {
                case_id,
                community: case_grid.community(),
                have: version,
                author: event.tier(),
            });
            return Ok(());
        }
        let after = match machine::replay(case.as_ref(), &event) {
            Ok(after) => after,
            Err(refusal) => {
                effects.held.push(held);
                let reason = refusal.to_string();
                return set_aside(tx, &subject, &raw, Some(event_id), Some(case_id), &reason).await;
            }
        };
        // Its inbox key is claimed when the batch is written, only for an event that is applied:
        // a refused copy must not shadow a good one.
        effects.held.push(held);
        effects.applied += 1;
        effects.updates.push(pb::CaseUpdate {
            case: Some(after.clone()),
            event: Some(event.clone()),
        });
        batch.apply(case_id, after.clone(), event);
        if self.parked().contains(&case_id) {
            // The park is read and written in the database: what the batch applied goes first.
            batch.write(tx).await?;
            let after = self
                .unpark_behind(tx, after, case_grid.community(), effects)
                .await?;
            batch.cases.insert(case_id, Some(after));
        }
        Ok(())
    }

    /// Applies the parked events that follow `case` now, one after the other; returns the case
    /// after them.
    async fn unpark_behind(
        &self,
        tx: &mut PgConnection,
        mut case: pb::Case,
        community: OrgCode,
        effects: &mut Effects,
    ) -> Result<pb::Case, Failure> {
        let case_id = Uuid::parse_str(&case.id).map_err(|e| Failure::Message(e.to_string()))?;
        while let Some(parked) = replication::unpark(tx, case_id, case.version + 1).await? {
            let event = match case_event_in(&parked.body) {
                Ok(event) => event,
                Err(reason) => {
                    set_aside(
                        tx,
                        &parked.subject,
                        &parked.body,
                        Some(parked.event_id),
                        Some(case_id),
                        &reason,
                    )
                    .await?;
                    break;
                }
            };
            effects.held.push(Held {
                author: event.tier(),
                community,
                event_id: event.event_id.clone(),
            });
            let after = match machine::replay(Some(&case), &event) {
                Ok(after) => after,
                Err(refusal) => {
                    let reason = refusal.to_string();
                    set_aside(
                        tx,
                        &parked.subject,
                        &parked.body,
                        Some(parked.event_id),
                        Some(case_id),
                        &reason,
                    )
                    .await?;
                    break;
                }
            };
            replication::claim_inbox(tx, parked.event_id).await?;
            cases::append(tx, &after, &event, None).await?;
            debug!(%case_id, seq = event.seq, "parked event applied");
            effects.applied += 1;
            effects.updates.push(pb::CaseUpdate {
                case: Some(after.clone()),
                event: Some(event),
            });
            case = after;
        }
        if !replication::has_parked(tx, case_id).await? {
            self.parked().remove(&case_id);
        }
        Ok(case)
    }

    /// After the commit: watchers hear of the changes, authors get their receipts, and cases stuck
    /// at a gap go to the reconciler.
    async fn make_known(&self, effects: Effects) {
        for update in effects.updates {
            self.engine.announce(update);
        }
        self.receipts.send(&effects.held).await;
        for repair in effects.repairs {
            // A full queue loses nothing: the sweep finds every parked case again.
            let _ = self.repairs.try_send(repair);
        }
    }

    /// Applies events fetched from a peer (stored bodies of one case, in order); returns how many
    /// were new here.
    #[instrument(skip_all, fields(events = bodies.len()))]
    pub async fn apply_fetched(&self, bodies: &[Vec<u8>]) -> Result<usize, Failure> {
        let mut tx = self.engine.pool().begin().await?;
        let mut effects = Effects::default();
        let mut batch = Batch::default();
        for body in bodies {
            let (event, event_id, case_id) = fetched_event(body)?;
            let raw = pb::Envelope {
                event_id: event.event_id.clone(),
                trace: Default::default(),
                body: Some(pb::envelope::Body::CaseEvent(event.clone())),
            }
            .encode_to_vec();
            let incoming = Incoming {
                subject: None,
                raw: Cow::Owned(raw),
                event,
                event_id,
                case_id,
            };
            guard(self.apply_event(&mut tx, incoming, &mut batch, &mut effects)).await?;
        }
        batch.write(&mut tx).await?;
        tx.commit().await?;
        let applied = effects.applied;
        self.make_known(effects).await;
        Ok(applied)
    }

    /// Looks after the park: applies events whose predecessor has arrived meanwhile, drops copies
    /// the case has passed, sets aside what waited longer than `expiry`. Returns the cases still
    /// waiting, for the reconciler to repair.
    pub async fn sweep(&self, expiry: Duration) -> Result<Vec<Repair>, Failure> {
        let pool = self.engine.pool();
        for case_id in replication::ready(pool, 256).await? {
            let mut tx = pool.begin().await?;
            let mut effects = Effects::default();
            if let Some(case) = cases::load(&mut tx, case_id, true).await?
                && let Ok(grid) = case.grid_code.parse::<GridCode>()
            {
                guard(self.unpark_behind(&mut tx, case, grid.community(), &mut effects)).await?;
            }
            tx.commit().await?;
            self.make_known(effects).await;
        }

        let mut tx = pool.begin().await?;
        let mut effects = Effects::default();
        for parked in replication::remove_passed(&mut tx).await? {
            if replication::holds(&mut tx, parked.case_id, parked.seq, parked.event_id).await? {
                if let Some(held) = held_of_parked(&parked) {
                    effects.held.push(held);
                }
            } else {
                let reason = "conflicts with the event held at its place in the case";
                set_aside(
                    &mut tx,
                    &parked.subject,
                    &parked.body,
                    Some(parked.event_id),
                    Some(parked.case_id),
                    reason,
                )
                .await?;
            }
        }
        for parked in replication::expire_parked(&mut tx, expiry).await? {
            let reason = format!(
                "its predecessor did not arrive within {} h",
                expiry.as_secs() / 3600
            );
            set_aside(
                &mut tx,
                &parked.subject,
                &parked.body,
                Some(parked.event_id),
                Some(parked.case_id),
                &reason,
            )
            .await?;
        }
        tx.commit().await?;
        self.make_known(effects).await;

        let waiting = replication::parked_case_ids(pool).await?;
        *self.parked() = waiting.into_iter().collect();
        let cases = replication::parked_cases(pool, 100).await?;
        Ok(cases
            .into_iter()
            .filter_map(|c| {
                let grid = grid_of_subject(&c.subject)?;
                Some(Repair {
                    case_id: c.case_id,
                    community: grid.community(),
                    have: c.have.max(0) as u64,
                    author: machine::tier_named(&c.author_tier),
                })
            })
            .collect())
    }
}

fn held_of_parked(parked: &Parked) -> Option<Held> {
    Some(Held {
        author: machine::tier_named(&parked.author_tier),
        community: grid_of_subject(&parked.subject)?.community(),
        event_id: parked.event_id.to_string(),
    })
}

/// A case event a peer sent in answer to a reconciliation request, with its ids, or why it
/// cannot be applied (nothing of the answer is then written).
pub(crate) fn fetched_event(body: &[u8]) -> Result<(pb::CaseEvent, Uuid, Uuid), Failure> {
    let event = pb::CaseEvent::decode(body)
        .map_err(|e| Failure::Message(format!("fetched event does not decode: {e}")))?;
    let (Some(event_id), Some(case_id)) = ids(Some(&event)) else {
        return Err(Failure::Message("fetched event has no valid ids".into()));
    };
    Ok((event, event_id, case_id))
}

/// The case event an envelope carries, or why there is none.
fn case_event_in(envelope: &[u8]) -> Result<pb::CaseEvent, String> {
    match pb::Envelope::decode(envelope) {
        Ok(pb::Envelope {
            body: Some(pb::envelope::Body::CaseEvent(event)),
            ..
        }) => Ok(event),
        Ok(_) => Err("envelope without a case event".to_owned()),
        Err(e) => Err(format!("undecodable envelope: {e}")),
    }
}

fn ids(event: Option<&pb::CaseEvent>) -> (Option<Uuid>, Option<Uuid>) {
    match event {
        Some(event) => (
            Uuid::parse_str(&event.event_id).ok(),
            Uuid::parse_str(&event.case_id).ok(),
        ),
        None => (None, None),
    }
}

/// Keeps a message that cannot be applied, in the caller's transaction, and lets it go.
async fn set_aside(
    tx: &mut PgConnection,
    subject: &str,
    payload: &[u8],
    event_id: Option<Uuid>,
    case_id: Option<Uuid>,
    reason: &str,
) -> Result<(), Failure> {
    error!(subject, event_id = ?event_id, case_id = ?case_id, reason, "message kept as a dead letter");
    replication::dead_letter(tx, subject, payload, event_id, case_id, reason).await?;
    Ok(())
}

/// Runs `work`, turning a panic into a failure of the message at hand.
async fn guard<T>(work: impl Future<Output = Result<T, Failure>>) -> Result<T, Failure> {
    match AssertUnwindSafe(work).catch_unwind().await {
        Ok(result) => result,
        Err(panic) => {
            let message = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".to_owned());
            Err(Failure::Message(format!("applying panicked: {message}")))
        }
    }
}

/// The consumer's view of the replicator.
#[derive(Debug, Clone)]
pub struct Consuming(pub Arc<Replicator>);

impl Handler for Consuming {
    #[instrument(skip_all, fields(batch = messages.len()))]
    async fn handle(&self, messages: &[Message<'_>]) -> Vec<Disposition> {
        self.0.apply_batch(messages).await
    }
}
