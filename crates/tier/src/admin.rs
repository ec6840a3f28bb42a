//! `wangge.v1.AdminService`: what the operator of a tier needs to see (replication backlog,
//! confirmations, consumer lag, parked gaps, dead letters, reconciliation, background tasks, and a
//! plain list of what needs attention) and do (reload the grids).
//!
//! Status never hangs and never fails as a whole: every source has a deadline, and one that does
//! not answer becomes a line in `problems`.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream;
use tonic::{Request, Response, Status};
use wangge_domain::case::{tier_name, tier_named};
use wangge_proto as pb;
use wangge_store::{cases, outbox, replication};

use crate::policy::{Grant, Right, authorize, caller};
use crate::reconcile;
use crate::supervisor::Supervisor;
use crate::{Error, Shared};

/// What the admin service reports on, besides the engine.
#[derive(Debug)]
pub struct Operations {
    pub supervisor: Supervisor,
    pub nats: async_nats::Client,
    pub js: jetstream::Context,
    /// The durable consumer of this tier on the case stream.
    pub durable: String,
    pub reconciliation: Arc<Mutex<reconcile::Report>>,
    /// What the health service says now.
    pub serving: Arc<AtomicBool>,
    /// What the automatic 督办 scans have done.
    pub supervision: Arc<Mutex<crate::supervise::ScanReport>>,
}

/// How long the sources of the status may take; they are asked at once, so the status answers
/// within this (`wangge status` waits 3 s) even when the database or JetStream hangs.
const DEADLINE: Duration = Duration::from_secs(2);
/// Beyond these, a backlog is a problem.
const UNPUBLISHED_FOR: f64 = 60.0;
const UNCONFIRMED_FOR: f64 = 300.0;
const PARKED_FOR: f64 = 60.0;
const CONSUMER_BEHIND: u64 = 10_000;
/// How long before the loaded calendar ends that its end is a warning: the State Council
/// announces next year's holidays in November or December.
const CALENDAR_NOTICE_DAYS: i64 = 45;

/// `wangge.v1.AdminService`.
#[derive(Debug, Clone)]
pub struct Admin(pub Shared);

/// Runs a status query with the deadline; a failure gives a default value and the problem.
async fn within<T: Default>(
    what: &str,
    query: impl Future<Output = Result<T, wangge_store::Error>>,
) -> (T, Option<String>) {
    match tokio::time::timeout(DEADLINE, query).await {
        Ok(Ok(value)) => (value, None),
        Ok(Err(error)) => (T::default(), Some(format!("database ({what}): {error}"))),
        Err(_) => (
            T::default(),
            Some(format!("database ({what}): no answer within {DEADLINE:?}")),
        ),
    }
}

impl Admin {
    /// The command clock's part of the status: a failing scan is a problem; deadlines past the
    /// loaded calendar, or a calendar about to end, are warnings (the figures are still computed,
    /// on ordinary weekdays, until next year's calendar is loaded).
    fn clock(&self, problems: &mut Vec<String>) -> (pb::CommandClock, Vec<String>) {
        let engine = &self.0.engine;
        let rules = engine.rules();
        let until = rules.fallback.covered_until();
        let scans = self
            .0
            .ops
            .supervision
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let last = scans.last.unwrap_or_default();
        let mut warnings = Vec::new();
        if let Some(error) = &scans.last_error {
            problems.push(format!("supervision: the scan fails: {error}"));
        }
        let today = wangge_domain::clock::china_time(engine.now()).date();
        match until {
            None => warnings.push(
                "calendar: no work calendar is loaded; working time counts Monday to Friday"
                    .to_owned(),
            ),
            Some(until) if until - today < chrono::Duration::days(CALENDAR_NOTICE_DAYS) => warnings
                .push(format!(
                    "calendar: the loaded work calendar ends {until}; load next year's \
                     (seeds/README.md)"
                )),
            Some(_) => {}
        }
        if last.beyond_calendar > 0 {
            warnings.push(format!(
                "calendar: {} open cases have deadlines past {}, counted on ordinary weekdays",
                last.beyond_calendar,
                until.map_or_else(|| "any loaded calendar".to_owned(), |d| d.to_string())
            ));
        }
        let clock = pb::CommandClock {
            calendar_until: until.map(|d| d.to_string()).unwrap_or_default(),
            limit_rules: rules.limits.rules().len() as u32,
            open_cases: last.cases as u64,
            beyond_calendar: last.beyond_calendar as u64,
            supervisions_raised: scans.raised_total,
            last_scan_seconds_ago: scans
                .last_finished
                .map_or(-1.0, |at| at.elapsed().as_secs_f64()),
            last_scan_error: scans.last_error.unwrap_or_default(),
        };
        (clock, warnings)
    }

    async fn status(&self) -> pb::TierStatus {
        let engine = &self.0.engine;
        let ops = &self.0.ops;
        let pool = engine.pool();
        let (
            (depth, depth_problem),
            (awaiting, awaiting_problem),
            (dead, dead_problem),
            (parked, parked_problem),
            (sample, sample_problem),
            (case_count, count_problem),
            lag,
        ) = tokio::join!(
            within("outbox", outbox::depth(pool)),
            within("outbox", outbox::awaiting_confirmation(pool)),
            within("dead letters", replication::dead_letter_counts(pool)),
            within("parked events", replication::parked_totals(pool)),
            within("parked events", replication::parked_cases(pool, 20)),
            within("cases", cases::count(pool)),
            wangge_bus::consumer_lag(&ops.js, &ops.durable, DEADLINE),
        );
        let mut problems: Vec<String> = [
            depth_problem,
            awaiting_problem,
            dead_problem,
            parked_problem,
            sample_problem,
            count_problem,
        ]
        .into_iter()
        .flatten()
        .collect();
        problems.dedup();

        let consumer = match lag {
            Ok(lag) => pb::ConsumerLag {
                known: true,
                pending: lag.pending,
                ack_pending: lag.ack_pending,
                redelivered: lag.redelivered,
                error: String::new(),
            },
            Err(error) => pb::ConsumerLag {
                known: false,
                error: error.to_string(),
                ..Default::default()
            },
        };
        let report = ops
            .reconciliation
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let tasks: Vec<pb::TaskStatus> = ops
            .supervisor
            .states()
            .into_iter()
            .map(|(name, state)| pb::TaskStatus {
                name: name.to_owned(),
                running: state.running,
                restarts: state.restarts,
                last_error: state.last_error.unwrap_or_default(),
            })
            .collect();
        let serving = ops.serving.load(Ordering::Relaxed);
        let nats_connected =
            ops.nats.connection_state() == async_nats::connection::State::Connected;

        // What needs attention, in words.
        if !serving {
            problems.push("health: NOT_SERVING".to_owned());
        }
        if !nats_connected {
            problems.push("nats: not connected".to_owned());
        }
        for task in &tasks {
            if !task.running {
                problems.push(format!(
                    "task {}: not running ({})",
                    task.name, task.last_error
                ));
            } else if task.restarts > 0 {
                problems.push(format!(
                    "task {}: restarted {} times, last: {}",
                    task.name, task.restarts, task.last_error
                ));
            }
        }
        if depth.unpublished > 0 && depth.oldest_seconds > UNPUBLISHED_FOR {
            problems.push(format!(
                "outbox: {} events not yet accepted by JetStream",
                depth.unpublished
            ));
        }
        for peer in &awaiting {
            if peer.oldest_seconds > UNCONFIRMED_FOR {
                problems.push(format!(
                    "outbox: {} events not confirmed by the {} tier, the oldest for {:.0} s",
                    peer.events, peer.tier, peer.oldest_seconds
                ));
            }
        }
        if !consumer.known {
            problems.push(format!("consumer: {}", consumer.error));
        } else if consumer.pending > CONSUMER_BEHIND {
            problems.push(format!("consumer: {} events behind", consumer.pending));
        }
        if parked.events > 0 && parked.oldest_seconds > PARKED_FOR {
            problems.push(format!(
                "parked: {} events of {} cases wait for a predecessor, the oldest for {:.0} s",
                parked.events, parked.cases, parked.oldest_seconds
            ));
        }
        if dead.incoming > 0 {
            problems.push(format!("{} incoming dead letters", dead.incoming));
        }
        if dead.outgoing > 0 {
            problems.push(format!(
                "{} outgoing dead letters (events set aside)",
                dead.outgoing
            ));
        }
        if let Some(error) = &report.last_error {
            problems.push(format!("reconciliation: {error}"));
        }
        for peer in &report.silent_peers {
            problems.push(format!(
                "reconciliation: no instance of the {peer} tier answered"
            ));
        }
        if let Some(error) = &report.sweep_error {
            problems.push(format!("parked events: the sweep fails: {error}"));
        }
        let (clock, warnings) = self.clock(&mut problems);

        pb::TierStatus {
            tier: engine.tier() as i32,
            org_prefix: engine.scope().prefix().to_owned(),
            outbox_depth: depth.events.max(0) as u64,
            outbox_oldest_seconds: depth.oldest_seconds,
            dead_letters: dead.incoming.max(0) as u64,
            cases: case_count.max(0) as u64,
            grids: engine.grids().len() as u32,
            outbox_unpublished: depth.unpublished.max(0) as u64,
            awaiting_confirmation: awaiting
                .into_iter()
                .map(|p| pb::PeerBacklog {
                    tier: tier_named(&p.tier) as i32,
                    events: p.events.max(0) as u64,
                    oldest_seconds: p.oldest_seconds,
                })
                .collect(),
            dead_letters_outgoing: dead.outgoing.max(0) as u64,
            consumer: Some(consumer),
            parked: Some(pb::ParkedGaps {
                events: parked.events.max(0) as u64,
                cases: parked.cases.max(0) as u64,
                oldest_seconds: parked.oldest_seconds,
                sample: sample
                    .into_iter()
                    .map(|c| pb::ParkedCase {
                        case_id: c.case_id.to_string(),
                        have: c.have.max(0) as u64,
                        waiting: c.waiting.max(0) as u64,
                        parked_seconds: c.parked_seconds,
                    })
                    .collect(),
            }),
            reconciliation: Some(pb::Reconciliation {
                last_run: report
                    .last_run
                    .map(|at| std::time::SystemTime::from(at).into()),
                last_run_seconds: report.last_run_seconds,
                compared: report.compared,
                unreachable: report.unreachable,
                cases_repaired: report.cases_repaired,
                events_fetched: report.events_fetched,
                confirmed: report.confirmed,
                total_cases_repaired: report.total_cases_repaired,
                total_events_fetched: report.total_events_fetched,
                runs: report.runs,
                last_error: report.last_error.unwrap_or_default(),
            }),
            tasks,
            serving,
            nats_connected,
            problems,
            clock: Some(clock),
            warnings,
        }
    }
}

/// Most an admin may move a virtual clock in one call.
pub const MAX_CLOCK_STEP_SECONDS: i64 = 400 * 24 * 3600;

/// `AdminService/AdvanceClock`, parsed: how far the virtual clock moves, 1 s to 400 days.
pub(crate) fn clock_step(request: &pb::AdvanceClockRequest) -> Result<chrono::Duration, Error> {
    let seconds = request.seconds;
    if !(1..=MAX_CLOCK_STEP_SECONDS).contains(&seconds) {
        return Err(Error::invalid(
            "seconds",
            format!("{seconds} is not between 1 and {MAX_CLOCK_STEP_SECONDS} (400 days)"),
        ));
    }
    Ok(chrono::Duration::seconds(seconds))
}

impl Admin {
    /// An admin whose scope covers this whole tier.
    fn operator<T>(&self, request: &Request<T>) -> Result<Grant, Error> {
        let engine = &self.0.engine;
        let grant = authorize(caller(request)?, Right::Admin, engine.tier())?;
        grant.check_whole(engine.scope().prefix())?;
        Ok(grant)
    }
}

#[tonic::async_trait]
impl pb::admin_service_server::AdminService for Admin {
    async fn get_status(
        &self,
        request: Request<pb::GetStatusRequest>,
    ) -> Result<Response<pb::TierStatus>, Status> {
        self.operator(&request)?;
        Ok(Response::new(self.status().await))
    }

    async fn reload_grids(
        &self,
        request: Request<pb::ReloadGridsRequest>,
    ) -> Result<Response<pb::ReloadGridsResponse>, Status> {
        let who = self.operator(&request)?.actor();
        let grids = self.0.engine.reload_grids().await.map_err(|error| {
            tracing::error!(%error, "grid reload failed");
            Status::failed_precondition(format!(
                "grids could not be reloaded, the old ones stay: {error}"
            ))
        })?;
        // The rules follow the grids: the calendars are per community of the new grids.
        self.0.engine.reload_rules().await.map_err(|error| {
            tracing::error!(%error, "time-limit reload failed");
            Status::failed_precondition(format!(
                "time limits and calendars could not be reloaded, the old ones stay: {error}"
            ))
        })?;
        let rules = self.0.engine.rules();
        tracing::info!(
            actor = %who.id,
            grids,
            limit_rules = rules.limits.rules().len(),
            calendars = rules.calendars.len(),
            tier = tier_name(self.0.engine.tier()),
            "grids, time limits and calendars reloaded"
        );
        Ok(Response::new(pb::ReloadGridsResponse {
            grids: grids as u32,
            limit_rules: rules.limits.rules().len() as u32,
            calendars: rules.calendars.len() as u32,
        }))
    }

    async fn advance_clock(
        &self,
        request: Request<pb::AdvanceClockRequest>,
    ) -> Result<Response<pb::AdvanceClockResponse>, Status> {
        let who = self.operator(&request)?.actor();
        let step = clock_step(request.get_ref())?;
        let seconds = step.num_seconds();
        let engine = &self.0.engine;
        if !engine.advance_time(step) {
            return Err(Status::failed_precondition(
                "this tier runs on the machine's clock; only a tier started with \
                 clock.virtual_time (demos, tests) moves it",
            ));
        }
        let now = engine.now();
        tracing::warn!(actor = %who.id, seconds, now = %now, "virtual clock moved forward");
        Ok(Response::new(pb::AdvanceClockResponse {
            now: Some(crate::engine::wire_time(now)),
        }))
    }
}
