//! Automatic 督办: the tier that owns a case raises a supervision event when the clock of the
//! case's current stage crosses yellow (80 %) or red (100 %), once per threshold per run of the
//! stage.
//!
//! The scan keeps no state of its own: what has been raised is in each case's projection
//! (`Case.supervisions`), written in the same transaction as the event. So a restarted tier
//! resumes where it stopped, and two instances of a tier scanning the same cases raise each
//! threshold once: both lock the case row, and the second finds the first one's mark.

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info};
use uuid::Uuid;
use wangge_domain::case::{stage_of, tier_name};
use wangge_domain::limits::Stage;
use wangge_proto as pb;
use wangge_store::cases;

use crate::clocks;
use crate::engine::Action;
use crate::validate::{Attachments, Note};
use crate::{Engine, Error};

/// The states in which a stage clock runs (or stands, while hung) and the case is worked on.
const LIVE_STATES: [&str; 13] = [
    "reported",
    "verifying",
    "escalated",
    "accepted",
    "void_requested",
    "return_requested",
    "dispatched",
    "in_progress",
    "delay_requested",
    "hang_requested",
    "hung",
    "handled",
    "checking",
];

/// Cases read per query.
const PAGE: i64 = 500;

/// What one scan did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Scan {
    /// Open cases this tier owns that were looked at.
    pub cases: usize,
    /// Supervision events raised.
    pub raised: usize,
    /// Of the cases, those whose stage or case deadline lies past the loaded work calendar.
    pub beyond_calendar: usize,
}

/// What the scans have done, for `GetStatus`.
#[derive(Debug, Default, Clone)]
pub struct ScanReport {
    pub last: Option<Scan>,
    pub last_finished: Option<std::time::Instant>,
    pub last_error: Option<String>,
    pub raised_total: u64,
}

/// The thresholds a stage has crossed and not yet had raised, in order (yellow before red).
pub fn due(case: &pb::Case, clock: &pb::ClockStanding) -> Vec<pb::SupervisionLevel> {
    let crossed: &[pb::SupervisionLevel] = match clock.light() {
        pb::Light::Red => &[pb::SupervisionLevel::Yellow, pb::SupervisionLevel::Red],
        pb::Light::Yellow => &[pb::SupervisionLevel::Yellow],
        pb::Light::Green | pb::Light::Unspecified => &[],
    };
    crossed
        .iter()
        .copied()
        .filter(|&level| {
            !case.supervisions.iter().any(|s| {
                s.automatic
                    && s.level() == level
                    && s.stage == clock.stage
                    && s.stage_started_at == case.stage_started_at
            })
        })
        .collect()
}

/// Looks at every open case this tier owns once and raises what is due.
pub async fn scan(engine: &Engine) -> Result<Scan, Error> {
    let mut done = Scan::default();
    let mut filter = cases::Filter {
        states: LIVE_STATES.iter().map(|s| (*s).to_owned()).collect(),
        grid_prefixes: vec![engine.scope().prefix().to_owned()],
        owner_tier: Some(tier_name(engine.tier()).to_owned()),
        limit: PAGE,
        ..Default::default()
    };
    loop {
        let page = cases::list(engine.pool(), &filter).await?;
        let full = page.len() as i64 == PAGE;
        filter.after = page.last().and_then(|c| Uuid::parse_str(&c.id).ok());
        for case in page {
            done.cases += 1;
            let (raised, beyond) = raise_due(engine, &case).await?;
            done.raised += raised;
            done.beyond_calendar += usize::from(beyond);
        }
        if !full {
            return Ok(done);
        }
    }
}

/// Raises the thresholds `case` has crossed, each under the case's lock, checking again there
/// (another instance may have raised it since the case was read). Returns how many were raised,
/// and whether a deadline of the case lies past the loaded calendar.
async fn raise_due(engine: &Engine, case: &pb::Case) -> Result<(usize, bool), Error> {
    let rules = engine.rules();
    let now = engine.now();
    let both = clocks::clocks(case, &rules, now);
    let beyond = [&both.stage, &both.case]
        .into_iter()
        .flatten()
        .any(|c| c.beyond_calendar);
    let Some(clock) = both.stage else {
        return Ok((0, beyond));
    };
    let mut raised = 0;
    for level in due(case, &clock) {
        let id = case_uuid(case)?;
        let action = Action {
            actor: pb::Actor {
                id: format!("system:{}-{}", tier_name(engine.tier()), engine.scope()),
                role: pb::Role::System as i32,
            },
            note: Note::optional("note", automatic_note(level))?,
            attachments: Attachments::default(),
        };
        let result = engine
            .act(id, action, |locked| {
                let stage = Stage::of_state(locked.state()).map(stage_of);
                let fresh = clocks::clocks(locked, &rules, engine.now()).stage;
                let still_due = fresh
                    .as_ref()
                    .is_some_and(|fresh| due(locked, fresh).contains(&level));
                match stage {
                    Some(stage) if still_due => {
                        Ok(pb::case_event::Kind::Supervised(pb::Supervised {
                            level: level as i32,
                            stage: stage as i32,
                            automatic: true,
                            stage_started_at: locked.stage_started_at,
                        }))
                    }
                    _ => Err(Error::FailedPrecondition(NOT_DUE.into())),
                }
            })
            .await;
        match result {
            Ok(_) => {
                raised += 1;
                info!(
                    case_id = %case.id,
                    number = %case.number,
                    level = level.as_str_name(),
                    stage = clock.stage().as_str_name(),
                    "automatic supervision raised"
                );
            }
            // Raised by another instance, or the case moved on: nothing to do.
            Err(Error::FailedPrecondition(message)) if message == NOT_DUE => {
                debug!(case_id = %case.id, "supervision no longer due");
            }
            // The case left this tier or its state changed between the read and the lock.
            Err(Error::Refused(refusal)) => {
                debug!(case_id = %case.id, %refusal, "supervision refused, the case moved on");
            }
            Err(e) => return Err(e),
        }
    }
    Ok((raised, beyond))
}

const NOT_DUE: &str = "supervision not due";

fn case_uuid(case: &pb::Case) -> Result<Uuid, Error> {
    Uuid::parse_str(&case.id)
        .map_err(|_| Error::Internal(format!("stored case id {:?} is not a UUID", case.id)))
}

fn automatic_note(level: pb::SupervisionLevel) -> &'static str {
    match level {
        pb::SupervisionLevel::Red => "超期: the stage's time limit has run out",
        _ => "预警: 80 % of the stage's time limit is used",
    }
}

/// Scans every `every` until `stop`, keeping `report` up to date; a failed scan is logged and
/// retried at the next turn (a database away now is no reason to stop supervising).
pub async fn run(
    engine: std::sync::Arc<Engine>,
    every: Duration,
    report: std::sync::Arc<std::sync::Mutex<ScanReport>>,
    stop: CancellationToken,
) {
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = stop.cancelled() => return,
        }
        let outcome = scan(&engine).await;
        let mut report = report.lock().unwrap_or_else(|e| e.into_inner());
        report.last_finished = Some(std::time::Instant::now());
        match outcome {
            Ok(done) => {
                if done.raised > 0 {
                    info!(cases = done.cases, raised = done.raised, "supervision scan");
                }
                report.raised_total += done.raised as u64;
                report.last = Some(done);
                report.last_error = None;
            }
            Err(e) => {
                error!(error = %e, "supervision scan failed, retrying at the next turn");
                report.last_error = Some(e.to_string());
            }
        }
    }
}
