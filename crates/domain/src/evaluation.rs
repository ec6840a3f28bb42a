//! 综合评价 (evaluation): the figures of the assessment (domain brief, section 6) per grid worker,
//! command center, department and area, computed from the case histories alone.
//!
//! [`evaluate`] takes the histories of the cases that had an event in a period `[from, to)` or were
//! open at its start, the time-limit rules and the work calendars, and counts. Every figure is a
//! count (`u32`); every rate is derived from two counts by a method of its row and is `None` when
//! its denominator is 0. The rules of counting:
//!
//! - **The history as of `to`.** A history is read up to its first event at or after `to`; what
//!   happened later does not exist for the period. So the figures of a past period are the same
//!   whenever they are asked for, and a case is *open at `to`* when its state then was not finished.
//! - **An event counts in the period when its `at` falls in `[from, to)`.** A figure "of those"
//!   (a filing later voided, a dispatch later reworked) follows what was counted in the period to
//!   what became of it by `to`, so a rate of that kind never exceeds 1.
//! - **On time** means within the stage's limit ([`LimitRules::limit_for`], by the case's
//!   category and urgency) on the [`Clock`]: used working time (wall-clock for minutes) at most the
//!   allowed time, the deadline itself included. A stage no rule covers has no deadline: whatever
//!   is done in it is on time.
//! - **Stage starts** follow the state machine (`case.rs`): a stage clock starts when the case
//!   entered the stage, an escalation starts the accept stage again at the upper center, and a
//!   lower center's dispatch of a case handed down to it (交办) starts the sign stage again.
//!
//! Per grid worker (网格员; the actor of a `Reported` event, or of a `Verified` or `Checked` event,
//! in the role of grid worker):
//! - 上报数 `reports`: their reports in the period.
//! - 有效上报数 `valid_reports`: of those, the ones filed by `to` (some event led the case to
//!   ACCEPTED, also when it was voided later) or whose self-handling (自处置) was approved.
//!   有效上报率 = valid_reports / reports.
//! - 核实数 `verified`: their answers to a verification (`Verified`) in the period;
//!   按时核实数 `verified_on_time`: of those, given within the check stage's limit counted from the
//!   `VerifyRequested` event. 按时核实率 = verified_on_time / verified.
//! - 核查数 `checked`, 按时核查数 `checked_on_time`: the same for on-site checks (`Checked`, counted
//!   from `CheckRequested`). 按时核查率 = checked_on_time / checked.
//! - 网格上报数 `grid_reports`: the reports in the period in the worker's grids (the grids of the
//!   cases they reported, verified or checked in the period), by anyone; 漏报数 `missed`: of those,
//!   the ones reported by someone not in the role of grid worker (the public, a hotline, community
//!   staff: found by others first). 漏报率 = missed / grid_reports.
//!
//! Per command center (指挥中心; the org of an event authored at the street or district tier):
//! - 立案数 `filed`: its filings in the period: `Accepted` events, and `Verified` answers that file
//!   the case (genuine), counted for the center that asked for the verification. 按时立案数
//!   `filed_on_time`: of those, within the accept stage's limit counted from when the case entered
//!   the stage (its report, the community's refusal of a self-handling, or its escalation to that
//!   center), the time the center waited for a verification not counted.
//!   按时立案率 = filed_on_time / filed.
//! - 作废数 `voided`: of the filings, those the case was voided after (`VoidApproved` before any
//!   later filing, by `to`). 准确立案率 = (filed − voided) / filed.
//! - 派遣数 `dispatched`: its `Dispatched` events in the period, a 交办 to a lower center
//!   included; 按时派遣数 `dispatched_on_time`: within the dispatch stage's limit from when the
//!   case entered the stage (its filing, a return request, a reopening, or, for the lower center's
//!   dispatch of a case handed down to it, the 交办). 按时派遣率 = dispatched_on_time / dispatched.
//! - 返工派遣数 `dispatch_reworked`: of the dispatches, those sent back for rework (`Reworked`)
//!   at least once before the case's next dispatch, by `to`.
//!   准确派遣率 = (dispatched − dispatch_reworked) / dispatched.
//!
//! Per department (职能部门; the department named by `Dispatched`, `Handled` and `Reworked`):
//! - 派遣数 `dispatched`: dispatches to it in the period; 已处置派遣数 `dispatched_handled`: of
//!   those, the ones it reported handled by `to` (before the case was dispatched again).
//!   处置率 = dispatched_handled / dispatched.
//! - 处置数 `handled`: its `Handled` events in the period (each round of rework again);
//!   按期处置数 `handled_on_time`: within the handle stage's limit counted from signing (签收), plus
//!   the extensions approved in that round (`DelayApproved`), less the hung spans
//!   (`HangApproved` until `Resumed`). 按期处置率 = handled_on_time / handled;
//!   超期处置数 = handled − handled_on_time ([`DepartmentFigures::handled_late`]).
//! - 返工数 `reworked`: of its handlings, those sent back for rework by `to`.
//!   返工率 = reworked / handled.
//!
//! Per area (区域: grid, community, street; from the case's grid code: 15 digits, the community
//! its first 12, the street its first 9 and `000`):
//! - 上报数 `reported`: the cases reported in the area in the period; 已结案数 `reported_closed`:
//!   of those, the ones closed at `to` (rejected, merged, voided or archived reports are not).
//!   结案率 = reported_closed / reported.
//! - 结案数 `closed`: the events in the period that closed a case (`Closed`, and the community's
//!   approval of a self-handling, `SelfHandleApproved`); 按期结案数 `closed_on_time`: of those,
//!   within the case's limit (整体时限) counted from the report, the hung spans and the spans it
//!   lay closed before a reopening not counted, every approved extension added.
//! - 超期未结数 `open_overdue`: the cases open at `to` whose case limit had run out by then,
//!   whenever they were reported. 按期结案率 = closed_on_time / (closed + open_overdue): an overdue
//!   open case counts against the area (the City of Austin pitfall: closed on time / closed
//!   flatters an area that leaves its hard cases open).

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, NaiveDateTime, Utc};
use pb::case_event::Kind;
use wangge_proto as pb;
use wangge_proto::{CaseState as State, Role, Tier};

use crate::calendar::WorkCalendar;
use crate::case::is_finished;
use crate::clock::{Clock, Limit, LimitUnit, china_time};
use crate::codes::GridCode;
use crate::limits::{LimitRules, Stage};

/// `numerator / denominator`, None when the denominator is 0.
pub fn rate(numerator: u32, denominator: u32) -> Option<f64> {
    (denominator > 0).then(|| f64::from(numerator) / f64::from(denominator))
}

/// The figures of one grid worker (see the module for the definitions).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WorkerFigures {
    pub worker_id: String,
    /// 上报数
    pub reports: u32,
    /// 有效上报数
    pub valid_reports: u32,
    /// 核实数
    pub verified: u32,
    /// 按时核实数
    pub verified_on_time: u32,
    /// 核查数
    pub checked: u32,
    /// 按时核查数
    pub checked_on_time: u32,
    /// 网格上报数: every report in the worker's grids.
    pub grid_reports: u32,
    /// 漏报数
    pub missed: u32,
}

impl WorkerFigures {
    /// 有效上报率
    pub fn valid_rate(&self) -> Option<f64> {
        rate(self.valid_reports, self.reports)
    }

    /// 按时核实率
    pub fn verified_on_time_rate(&self) -> Option<f64> {
        rate(self.verified_on_time, self.verified)
    }

    /// 按时核查率
    pub fn checked_on_time_rate(&self) -> Option<f64> {
        rate(self.checked_on_time, self.checked)
    }

    /// 漏报率
    pub fn missed_rate(&self) -> Option<f64> {
        rate(self.missed, self.grid_reports)
    }
}

/// The figures of one command center, a street's or the district's (see the module).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CenterFigures {
    /// The center's org code (`350205002000`, `350205000000`).
    pub org_code: String,
    /// 立案数
    pub filed: u32,
    /// 按时立案数
    pub filed_on_time: u32,
    /// 作废数: filings later voided.
    pub voided: u32,
    /// 派遣数
    pub dispatched: u32,
    /// 按时派遣数
    pub dispatched_on_time: u32,
    /// 返工派遣数: dispatches later sent back for rework.
    pub dispatch_reworked: u32,
}

impl CenterFigures {
    /// 按时立案率
    pub fn filed_on_time_rate(&self) -> Option<f64> {
        rate(self.filed_on_time, self.filed)
    }

    /// 准确立案率
    pub fn filing_accuracy(&self) -> Option<f64> {
        rate(self.filed.saturating_sub(self.voided), self.filed)
    }

    /// 按时派遣率
    pub fn dispatched_on_time_rate(&self) -> Option<f64> {
        rate(self.dispatched_on_time, self.dispatched)
    }

    /// 准确派遣率
    pub fn dispatch_accuracy(&self) -> Option<f64> {
        rate(
            self.dispatched.saturating_sub(self.dispatch_reworked),
            self.dispatched,
        )
    }
}

/// The figures of one department (see the module).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DepartmentFigures {
    pub department_code: String,
    /// 派遣数
    pub dispatched: u32,
    /// 已处置派遣数: dispatches the department reported handled.
    pub dispatched_handled: u32,
    /// 处置数
    pub handled: u32,
    /// 按期处置数
    pub handled_on_time: u32,
    /// 返工数: handlings sent back for rework.
    pub reworked: u32,
}

impl DepartmentFigures {
    /// 超期处置数
    pub fn handled_late(&self) -> u32 {
        self.handled.saturating_sub(self.handled_on_time)
    }

    /// 处置率
    pub fn handling_rate(&self) -> Option<f64> {
        rate(self.dispatched_handled, self.dispatched)
    }

    /// 按期处置率
    pub fn handled_on_time_rate(&self) -> Option<f64> {
        rate(self.handled_on_time, self.handled)
    }

    /// 返工率
    pub fn rework_rate(&self) -> Option<f64> {
        rate(self.reworked, self.handled)
    }
}

/// The level of an area.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum AreaLevel {
    /// 街道/镇: its code is the street's org code (`350205002000`).
    Street,
    /// 社区/村: the community's org code.
    Community,
    /// 网格: the 15-digit grid code.
    Grid,
}

impl AreaLevel {
    pub fn name(self) -> &'static str {
        match self {
            AreaLevel::Street => "street",
            AreaLevel::Community => "community",
            AreaLevel::Grid => "grid",
        }
    }
}

/// The figures of one area (see the module).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AreaFigures {
    pub level: AreaLevel,
    pub code: String,
    /// 上报数
    pub reported: u32,
    /// 已结案数: of the reports, those closed at the end of the period.
    pub reported_closed: u32,
    /// 结案数: closings in the period.
    pub closed: u32,
    /// 按期结案数
    pub closed_on_time: u32,
    /// 超期未结数
    pub open_overdue: u32,
}

impl AreaFigures {
    fn new(level: AreaLevel, code: String) -> AreaFigures {
        AreaFigures {
            level,
            code,
            reported: 0,
            reported_closed: 0,
            closed: 0,
            closed_on_time: 0,
            open_overdue: 0,
        }
    }

    /// 结案率
    pub fn closing_rate(&self) -> Option<f64> {
        rate(self.reported_closed, self.reported)
    }

    /// 按期结案率: overdue open cases count in the denominator.
    pub fn closed_on_time_rate(&self) -> Option<f64> {
        rate(
            self.closed_on_time,
            self.closed.saturating_add(self.open_overdue),
        )
    }
}

/// The figures of a period. Rows appear for whoever has a figure other than 0, each kind sorted
/// by its id or code (areas: streets, then communities, then grids).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Evaluation {
    pub workers: Vec<WorkerFigures>,
    pub centers: Vec<CenterFigures>,
    pub departments: Vec<DepartmentFigures>,
    pub areas: Vec<AreaFigures>,
}

/// Evaluates the period `[from, to)` from `histories` (each a case's events, oldest first,
/// starting with its report), by `rules`, on the work calendar `calendar_of` gives for a
/// community code. Histories that do not start with a report of a valid grid are skipped. See the
/// module for what is counted.
pub fn evaluate<'c>(
    histories: &[Vec<pb::CaseEvent>],
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    rules: &LimitRules,
    calendar_of: impl Fn(&str) -> &'c WorkCalendar,
) -> Evaluation {
    let mut evaluator = Evaluator::new(from, to);
    for history in histories {
        evaluator.add(history, rules, &calendar_of);
    }
    evaluator.finish()
}

/// An evaluation counted one case at a time, so that a long period never needs every history in
/// memory at once: the counts of each case are added as its history is read.
pub struct Evaluator {
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    tally: Tally,
}

impl Evaluator {
    /// An evaluation of the period `[from, to)` with nothing counted yet.
    pub fn new(from: DateTime<Utc>, to: DateTime<Utc>) -> Evaluator {
        Evaluator {
            from,
            to,
            tally: Tally::default(),
        }
    }

    /// Counts one case's history (as [`evaluate`] does each of its histories).
    pub fn add<'c>(
        &mut self,
        history: &[pb::CaseEvent],
        rules: &LimitRules,
        calendar_of: impl Fn(&str) -> &'c WorkCalendar,
    ) {
        let Some((first, report)) = history.first().and_then(|first| match &first.kind {
            Some(Kind::Reported(report)) => Some((first, report)),
            _ => None,
        }) else {
            return;
        };
        let Ok(grid) = report.grid_code.parse::<GridCode>() else {
            return;
        };
        let timing = Timing {
            calendar: calendar_of(grid.community().as_str()),
            rules,
            category: &report.category_code,
            urgency: report.urgency(),
        };
        if let Some(case) = walk(history, first, grid, &timing, self.from, self.to) {
            self.tally.add(&case);
        }
    }

    /// The figures of everything counted.
    pub fn finish(self) -> Evaluation {
        self.tally.finish()
    }
}

fn utc(event: &pb::CaseEvent) -> Option<DateTime<Utc>> {
    let at = event.at?;
    DateTime::from_timestamp(at.seconds, at.nanos.clamp(0, 999_999_999) as u32)
}

fn limit_of(limit: &pb::TimeLimit) -> Option<Limit> {
    let unit = match limit.unit() {
        pb::TimeUnit::Minutes => LimitUnit::Minutes,
        pb::TimeUnit::WorkingMinutes => LimitUnit::WorkingMinutes,
        pb::TimeUnit::WorkingHours => LimitUnit::WorkingHours,
        pb::TimeUnit::WorkingDays => LimitUnit::WorkingDays,
        pb::TimeUnit::Unspecified => return None,
    };
    Some(Limit {
        amount: limit.amount,
        unit,
    })
}

/// A span the clock stood still: `(from, until)`, `until` None while it lasts.
type Stop = (NaiveDateTime, Option<NaiveDateTime>);

/// Ends the last open stop at `at`.
fn resume(stops: &mut [Stop], at: NaiveDateTime) {
    if let Some(stop) = stops.iter_mut().rev().find(|(_, until)| until.is_none()) {
        stop.1 = Some(at);
    }
}

/// The limits of one case: its category and urgency on its community's calendar.
struct Timing<'a> {
    calendar: &'a WorkCalendar,
    rules: &'a LimitRules,
    category: &'a str,
    urgency: pb::Urgency,
}

impl Timing<'_> {
    /// The clock of `stage` started at `started` stands at `at`: None when no rule covers the
    /// stage, else whether the limit (with `extensions`, without `stops`) was not exceeded.
    fn within(
        &self,
        stage: Stage,
        started: NaiveDateTime,
        stops: &[Stop],
        extensions: &[Limit],
        at: NaiveDateTime,
    ) -> Option<bool> {
        let limit = self.rules.limit_for(stage, self.category, self.urgency)?;
        let standing = Clock {
            calendar: self.calendar,
            limit,
            started,
            stops,
            extensions,
        }
        .at(at);
        Some(standing.used <= standing.allowed)
    }

    /// Whether something done at `at` was on time (no rule: on time).
    fn on_time(
        &self,
        stage: Stage,
        started: NaiveDateTime,
        stops: &[Stop],
        extensions: &[Limit],
        at: NaiveDateTime,
    ) -> bool {
        self.within(stage, started, stops, extensions, at)
            .unwrap_or(true)
    }
}

/// A filing (立案) and what became of it.
struct Filing {
    center: String,
    in_period: bool,
    on_time: bool,
    voided: bool,
}

/// A dispatch (派遣) and what became of it.
struct Dispatch {
    center: String,
    department: String,
    in_period: bool,
    on_time: bool,
    handled: bool,
    reworked: bool,
}

/// A department's handling report (处置) and what became of it.
struct Handling {
    department: String,
    in_period: bool,
    on_time: bool,
    reworked: bool,
}

/// A grid worker's answer to a verification or a check.
struct Answer {
    worker: String,
    on_time: bool,
    verification: bool,
}

/// What one case contributes to the period.
struct CaseFacts {
    grid: GridCode,
    /// The reporter, if reported in the period.
    reported_by: Option<pb::Actor>,
    /// Filed by `to`, or its self-handling approved.
    valid: bool,
    closed_at_end: bool,
    open_overdue: bool,
    filings: Vec<Filing>,
    dispatches: Vec<Dispatch>,
    handlings: Vec<Handling>,
    /// Answers given in the period.
    answers: Vec<Answer>,
    /// Closings in the period: on time or not.
    closings: Vec<bool>,
}

/// Reads one history up to `to`.
fn walk(
    history: &[pb::CaseEvent],
    first: &pb::CaseEvent,
    grid: GridCode,
    timing: &Timing<'_>,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Option<CaseFacts> {
    let reported_utc = utc(first).filter(|&at| at < to)?;
    let reported = china_time(reported_utc);
    let reporter = first.actor.clone().unwrap_or_default();
    let mut case = CaseFacts {
        grid,
        reported_by: (reported_utc >= from).then_some(reporter),
        valid: false,
        closed_at_end: false,
        open_overdue: false,
        filings: Vec::new(),
        dispatches: Vec::new(),
        handlings: Vec::new(),
        answers: Vec::new(),
        closings: Vec::new(),
    };

    let mut state = State::Unspecified;
    let mut stage_started = reported;
    let mut verify_asked: Option<NaiveDateTime> = None;
    let mut check_asked: Option<NaiveDateTime> = None;
    // The current round of handling (from signing): its extensions and hung spans.
    let mut round_extensions: Vec<Limit> = Vec::new();
    let mut round_stops: Vec<Stop> = Vec::new();
    // The whole case: every extension; hung spans and spans closed before a reopening.
    let mut case_extensions: Vec<Limit> = Vec::new();
    let mut case_stops: Vec<Stop> = Vec::new();

    for event in history {
        let Some(at_utc) = utc(event) else {
            continue;
        };
        if at_utc >= to {
            break;
        }
        let at = china_time(at_utc);
        let in_period = at_utc >= from;
        let after = event.state_after();
        let actor = event.actor.clone().unwrap_or_default();
        let by_worker = actor.role() == Role::GridWorker;
        let at_center = matches!(event.tier(), Tier::Street | Tier::District);
        if after == State::Accepted {
            case.valid = true;
        }
        match &event.kind {
            Some(Kind::Accepted(_)) if at_center => case.filings.push(Filing {
                center: event.org_code.clone(),
                in_period,
                on_time: timing.on_time(Stage::Accept, stage_started, &[], &[], at),
                voided: false,
            }),
            Some(Kind::VerifyRequested(_)) => verify_asked = Some(at),
            Some(Kind::Verified(verified)) => {
                let asked = verify_asked.unwrap_or(at);
                if in_period && by_worker {
                    case.answers.push(Answer {
                        worker: actor.id.clone(),
                        on_time: timing.on_time(Stage::Check, asked, &[], &[], at),
                        verification: true,
                    });
                }
                if verified.genuine {
                    // The center waited for the field: that span is not its delay.
                    let waited = [(asked, Some(at))];
                    case.filings.push(Filing {
                        center: event
                            .owner_after
                            .as_ref()
                            .map(|owner| owner.org_code.clone())
                            .unwrap_or_default(),
                        in_period,
                        on_time: timing.on_time(Stage::Accept, stage_started, &waited, &[], at),
                        voided: false,
                    });
                }
            }
            Some(Kind::VoidApproved(_)) => {
                if let Some(filing) = case.filings.last_mut() {
                    filing.voided = true;
                }
            }
            Some(Kind::Dispatched(dispatched)) if at_center => case.dispatches.push(Dispatch {
                center: event.org_code.clone(),
                department: dispatched.department_code.clone(),
                in_period,
                on_time: timing.on_time(Stage::Dispatch, stage_started, &[], &[], at),
                handled: false,
                reworked: false,
            }),
            Some(Kind::DelayApproved(approved)) => {
                if let Some(limit) = approved.extension.as_ref().and_then(limit_of) {
                    round_extensions.push(limit);
                    case_extensions.push(limit);
                }
            }
            Some(Kind::HangApproved(_)) => {
                round_stops.push((at, None));
                case_stops.push((at, None));
            }
            Some(Kind::Resumed(_)) => {
                resume(&mut round_stops, at);
                resume(&mut case_stops, at);
            }
            Some(Kind::Reopened(_)) => resume(&mut case_stops, at),
            Some(Kind::Handled(handled)) => {
                case.handlings.push(Handling {
                    department: handled.department_code.clone(),
                    in_period,
                    on_time: timing.on_time(
                        Stage::Handle,
                        stage_started,
                        &round_stops,
                        &round_extensions,
                        at,
                    ),
                    reworked: false,
                });
                if let Some(dispatch) = case.dispatches.last_mut() {
                    dispatch.handled = true;
                }
            }
            Some(Kind::CheckRequested(_)) => check_asked = Some(at),
            Some(Kind::Checked(_)) if in_period && by_worker => {
                let asked = check_asked.unwrap_or(at);
                case.answers.push(Answer {
                    worker: actor.id.clone(),
                    on_time: timing.on_time(Stage::Check, asked, &[], &[], at),
                    verification: false,
                });
            }
            Some(Kind::Reworked(_)) => {
                if let Some(dispatch) = case.dispatches.last_mut() {
                    dispatch.reworked = true;
                }
                if let Some(handling) = case.handlings.last_mut() {
                    handling.reworked = true;
                }
            }
            _ => {}
        }
        if after == State::Closed && state != State::Closed {
            if in_period {
                case.closings.push(timing.on_time(
                    Stage::Case,
                    reported,
                    &case_stops,
                    &case_extensions,
                    at,
                ));
            }
            case_stops.push((at, None));
        }
        if Stage::of_state(after) != Stage::of_state(state)
            || matches!(event.kind, Some(Kind::Escalated(_) | Kind::Dispatched(_)))
        {
            stage_started = at;
            if Stage::of_state(after) == Some(Stage::Handle) {
                round_extensions.clear();
                round_stops.clear();
            }
        }
        if matches!(event.kind, Some(Kind::SelfHandleApproved(_))) {
            case.valid = true;
        }
        state = after;
    }

    case.closed_at_end = state == State::Closed;
    if state != State::Unspecified && !is_finished(state) {
        let overdue = timing.within(
            Stage::Case,
            reported,
            &case_stops,
            &case_extensions,
            china_time(to),
        );
        case.open_overdue = overdue == Some(false);
    }
    Some(case)
}

/// The counts so far, by row.
#[derive(Default)]
struct Tally {
    workers: BTreeMap<String, WorkerFigures>,
    /// The grids of each worker.
    worker_grids: BTreeMap<String, BTreeSet<String>>,
    /// Reports in the period per grid: all, and those by someone not a grid worker.
    grid_reports: BTreeMap<String, (u32, u32)>,
    centers: BTreeMap<String, CenterFigures>,
    departments: BTreeMap<String, DepartmentFigures>,
    areas: BTreeMap<(AreaLevel, String), AreaFigures>,
}

impl Tally {
    fn worker(&mut self, id: &str) -> &mut WorkerFigures {
        self.workers
            .entry(id.to_owned())
            .or_insert_with(|| WorkerFigures {
                worker_id: id.to_owned(),
                ..WorkerFigures::default()
            })
    }

    fn center(&mut self, code: &str) -> &mut CenterFigures {
        self.centers
            .entry(code.to_owned())
            .or_insert_with(|| CenterFigures {
                org_code: code.to_owned(),
                ..CenterFigures::default()
            })
    }

    fn department(&mut self, code: &str) -> &mut DepartmentFigures {
        self.departments
            .entry(code.to_owned())
            .or_insert_with(|| DepartmentFigures {
                department_code: code.to_owned(),
                ..DepartmentFigures::default()
            })
    }

    /// The rows of the grid's street, community and grid, for `count` to add to.
    fn areas(&mut self, grid: &GridCode, count: impl Fn(&mut AreaFigures)) {
        let codes = [
            (AreaLevel::Street, grid.street().to_string()),
            (AreaLevel::Community, grid.community().to_string()),
            (AreaLevel::Grid, grid.to_string()),
        ];
        for (level, code) in codes {
            let row = self
                .areas
                .entry((level, code.clone()))
                .or_insert_with(|| AreaFigures::new(level, code));
            count(row);
        }
    }

    fn add(&mut self, case: &CaseFacts) {
        let grid = case.grid.to_string();
        if let Some(reporter) = &case.reported_by {
            let by_worker = reporter.role() == Role::GridWorker;
            let counts = self.grid_reports.entry(grid.clone()).or_default();
            counts.0 += 1;
            counts.1 += u32::from(!by_worker);
            if by_worker {
                let worker = self.worker(&reporter.id);
                worker.reports += 1;
                worker.valid_reports += u32::from(case.valid);
                self.worker_grids
                    .entry(reporter.id.clone())
                    .or_default()
                    .insert(grid.clone());
            }
            let closed = u32::from(case.closed_at_end);
            self.areas(&case.grid, |area| {
                area.reported += 1;
                area.reported_closed += closed;
            });
        }
        for answer in &case.answers {
            let worker = self.worker(&answer.worker);
            let on_time = u32::from(answer.on_time);
            if answer.verification {
                worker.verified += 1;
                worker.verified_on_time += on_time;
            } else {
                worker.checked += 1;
                worker.checked_on_time += on_time;
            }
            self.worker_grids
                .entry(answer.worker.clone())
                .or_default()
                .insert(grid.clone());
        }
        for filing in case.filings.iter().filter(|f| f.in_period) {
            let center = self.center(&filing.center);
            center.filed += 1;
            center.filed_on_time += u32::from(filing.on_time);
            center.voided += u32::from(filing.voided);
        }
        for dispatch in case.dispatches.iter().filter(|d| d.in_period) {
            let center = self.center(&dispatch.center);
            center.dispatched += 1;
            center.dispatched_on_time += u32::from(dispatch.on_time);
            center.dispatch_reworked += u32::from(dispatch.reworked);
            if dispatch.department.is_empty() {
                // 交办 to a lower center: no department was sent it.
                continue;
            }
            let department = self.department(&dispatch.department);
            department.dispatched += 1;
            department.dispatched_handled += u32::from(dispatch.handled);
        }
        for handling in case.handlings.iter().filter(|h| h.in_period) {
            let department = self.department(&handling.department);
            department.handled += 1;
            department.handled_on_time += u32::from(handling.on_time);
            department.reworked += u32::from(handling.reworked);
        }
        for &on_time in &case.closings {
            self.areas(&case.grid, |area| {
                area.closed += 1;
                area.closed_on_time += u32::from(on_time);
            });
        }
        if case.open_overdue {
            self.areas(&case.grid, |area| area.open_overdue += 1);
        }
    }

    fn finish(mut self) -> Evaluation {
        for (worker, grids) in &self.worker_grids {
            let (all, missed) = grids
                .iter()
                .filter_map(|grid| self.grid_reports.get(grid))
                .fold((0, 0), |(a, m), &(all, missed)| (a + all, m + missed));
            if let Some(row) = self.workers.get_mut(worker) {
                row.grid_reports = all;
                row.missed = missed;
            }
        }
        Evaluation {
            workers: self.workers.into_values().collect(),
            centers: self.centers.into_values().collect(),
            departments: self.departments.into_values().collect(),
            areas: self.areas.into_values().collect(),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use chrono::{NaiveDate, TimeZone};
    use pb::Urgency;

    use super::*;
    use crate::calendar::DayKind;
    use crate::case;
    use crate::limits::LimitRule;

    /// Who acts: an actor id in a role.
    type Who = (&'static str, Role);

    // Grid workers, each of one grid.
    const W1: Who = ("gw-wang", Role::GridWorker);
    const W2: Who = ("gw-li", Role::GridWorker);
    const W3: Who = ("gw-zhang", Role::GridWorker);
    const W4: Who = ("gw-chen", Role::GridWorker);
    // Reporters who are not grid workers: a citizen (public channel) and community staff.
    const CITIZEN: Who = ("citizen-1", Role::Unspecified);
    const CS: Who = ("cs-wu", Role::CommunityStaff);
    // The street center (350205002000) and the district center (350205000000).
    const OPS: Who = ("op-street", Role::StreetOperator);
    const DCS: Who = ("dc-street", Role::DutyChief);
    const LDS: Who = ("ld-street", Role::Leader);
    const OPD: Who = ("op-district", Role::DistrictOperator);
    const DCD: Who = ("dc-district", Role::DutyChief);
    const LDD: Who = ("ld-district", Role::Leader);
    // Department handlers.
    const HCG: Who = ("dh-cg", Role::DepartmentHandler);
    const HSZ: Who = ("dh-sz", Role::DepartmentHandler);
    const HHB: Who = ("dh-hb", Role::DepartmentHandler);

    // Street 350205002: community 006 with grids 001 and 002, community 007 with grid 001.
    // Street 350205003: community 001 with grid 001; its reports skip the street (越级上报), so
    // the district files them and there are two centers only.
    const G1: &str = "350205002006001";
    const G2: &str = "350205002006002";
    const G3: &str = "350205002007001";
    const G4: &str = "350205003001001";
    const STREET: &str = "350205002000";
    const DISTRICT: &str = "350205000000";
    // Two street departments and one of the district.
    const CG: &str = "350205002-cgzd";
    const SZ: &str = "350205002-sz";
    const HB: &str = "350205-hb";

    /// `"11-23 09:00"`: that minute of 2026 in China time.
    fn t(s: &str) -> DateTime<Utc> {
        let local = NaiveDateTime::parse_from_str(&format!("2026-{s}"), "%Y-%m-%d %H:%M").unwrap();
        crate::clock::china()
            .from_local_datetime(&local)
            .unwrap()
            .with_timezone(&Utc)
    }

    /// A case history built through the state machine, so every scenario is a legal one.
    struct History {
        case: Option<pb::Case>,
        events: Vec<pb::CaseEvent>,
        id: String,
    }

    impl History {
        fn report(n: u32, at: &str, grid: &str, by: Who) -> History {
            Self::report_with(n, at, grid, by, |_| {})
        }

        fn report_with(
            n: u32,
            at: &str,
            grid: &str,
            by: Who,
            change: impl FnOnce(&mut pb::Reported),
        ) -> History {
            let mut report = pb::Reported {
                number: format!("C{n}"),
                category_code: "szcg-01-01".into(),
                grid_code: grid.into(),
                urgency: Urgency::Normal as i32,
                ..Default::default()
            };
            change(&mut report);
            let mut history = History {
                case: None,
                events: Vec::new(),
                id: format!("case-{n:02}"),
            };
            history.push(at, by, Tier::Village, &grid[..12], Kind::Reported(report));
            history
        }

        fn push(&mut self, at: &str, by: Who, tier: Tier, org: &str, kind: Kind) {
            let at = t(at);
            let mut event = pb::CaseEvent {
                event_id: format!("{}-{}", self.id, self.events.len() + 1),
                case_id: self.id.clone(),
                seq: self.events.len() as u64 + 1,
                at: Some(prost_types::Timestamp {
                    seconds: at.timestamp(),
                    nanos: 0,
                }),
                tier: tier as i32,
                org_code: org.to_owned(),
                actor: Some(pb::Actor {
                    id: by.0.to_owned(),
                    role: by.1 as i32,
                }),
                kind: Some(kind),
                ..Default::default()
            };
            let next = case::apply(self.case.as_ref(), &event)
                .unwrap_or_else(|e| panic!("{} event {}: {e}", self.id, event.seq));
            case::seal(&mut event, &next);
            self.case = Some(next);
            self.events.push(event);
        }

        /// The next event, written by the case's owner.
        fn then(mut self, at: &str, by: Who, kind: Kind) -> History {
            let owner = self.case.as_ref().and_then(|c| c.owner.clone()).unwrap();
            self.push(at, by, owner.tier(), &owner.org_code.clone(), kind);
            self
        }

        fn done(self) -> Vec<pb::CaseEvent> {
            self.events
        }
    }

    fn accepted() -> Kind {
        Kind::Accepted(pb::Accepted {})
    }
    fn rejected() -> Kind {
        Kind::Rejected(pb::Rejected {
            reason: "not a case".into(),
        })
    }
    fn dispatched(department: &str) -> Kind {
        Kind::Dispatched(pb::Dispatched {
            department_code: department.into(),
            ..Default::default()
        })
    }
    fn signed(department: &str) -> Kind {
        Kind::Signed(pb::Signed {
            department_code: department.into(),
        })
    }
    fn handled(department: &str) -> Kind {
        Kind::Handled(pb::Handled {
            department_code: department.into(),
            result: "done".into(),
        })
    }
    fn check_requested() -> Kind {
        Kind::CheckRequested(pb::CheckRequested::default())
    }
    fn checked(passed: bool) -> Kind {
        Kind::Checked(pb::Checked { passed })
    }
    fn closed() -> Kind {
        Kind::Closed(pb::Closed {})
    }
    fn reworked(department: &str) -> Kind {
        Kind::Reworked(pb::Reworked {
            department_code: department.into(),
        })
    }
    fn verify_requested() -> Kind {
        Kind::VerifyRequested(pb::VerifyRequested::default())
    }
    fn verified(genuine: bool) -> Kind {
        Kind::Verified(pb::Verified { genuine })
    }
    fn two_working_hours() -> pb::TimeLimit {
        pb::TimeLimit {
            amount: 2,
            unit: pb::TimeUnit::WorkingHours as i32,
        }
    }

    /// The scenario: 26 cases, 22 of them reported in the week evaluated (Monday 23 to Sunday
    /// 29 November 2026, Thursday 26 a holiday in this calendar), 4 before it. Working time is
    /// 08:30-12:00 and 14:30-17:30 (6.5 h a day). The limits (see `rules`): accept 30 min (10 for
    /// emergencies), dispatch 30 min, handle 4 working hours, check 1 working hour, the whole case
    /// 2 working days. ✓ marks a step on time, ✗ a late one, by the limit it is judged by.
    fn scenario() -> Vec<Vec<pb::CaseEvent>> {
        let self_handling = |r: &mut pb::Reported| {
            r.self_handling = Some(pb::SelfHandling {
                resolution: "fixed on the spot".into(),
            })
        };
        let skip = |r: &mut pb::Reported| r.skip_street = true;
        vec![
            // C1: the plain loop. Filed after 10 min ✓, dispatched 10 min after filing ✓,
            // handled 1 h 20 after signing ✓, checked 25 min after the request ✓, closed ✓.
            History::report(1, "11-23 09:00", G1, W1)
                .then("11-23 09:10", OPS, accepted())
                .then("11-23 09:20", OPS, dispatched(CG))
                .then("11-23 09:40", HCG, signed(CG))
                .then("11-23 11:00", HCG, handled(CG))
                .then("11-23 11:05", OPS, check_requested())
                .then("11-23 11:30", W1, checked(true))
                .then("11-23 11:40", DCS, closed())
                .done(),
            // C2: filed after 50 min ✗; dispatched to SZ 10 min later ✓; handled Monday 17:00
            // (11:10-12:00 + 14:30-17:00 = 3 h 20) ✓; the check fails Tuesday 08:50 (20 min on
            // Monday + 20 min on Tuesday) ✓; rework; handled again Tuesday 15:00 (09:30-12:00 +
            // 14:30-15:00 = 3 h) ✓; checked 30 min after ✓; closed Tuesday, due Wednesday 10:00 ✓.
            History::report(2, "11-23 10:00", G1, W1)
                .then("11-23 10:50", OPS, accepted())
                .then("11-23 11:00", OPS, dispatched(SZ))
                .then("11-23 11:10", HSZ, signed(SZ))
                .then("11-23 17:00", HSZ, handled(SZ))
                .then("11-23 17:10", OPS, check_requested())
                .then("11-24 08:50", W1, checked(false))
                .then("11-24 09:00", OPS, reworked(SZ))
                .then("11-24 09:30", HSZ, signed(SZ))
                .then("11-24 15:00", HSZ, handled(SZ))
                .then("11-24 15:10", OPS, check_requested())
                .then("11-24 15:40", W1, checked(true))
                .then("11-24 15:50", DCS, closed())
                .done(),
            // C3: a citizen found it in W1's grid (漏报). Filed after 20 min ✓, dispatched 20 min
            // later ✓; handled Tuesday 11:00: 15:00-17:30 + 08:30-11:00 = 5 h ✗; W1 checks at
            // 15:00: 11:10-12:00 + 14:30-15:00 = 80 min ✗; closed Tuesday, due Wednesday 14:00 ✓.
            History::report(3, "11-23 14:00", G1, CITIZEN)
                .then("11-23 14:20", OPS, accepted())
                .then("11-23 14:40", OPS, dispatched(CG))
                .then("11-23 15:00", HCG, signed(CG))
                .then("11-24 11:00", HCG, handled(CG))
                .then("11-24 11:10", OPS, check_requested())
                .then("11-24 15:00", W1, checked(true))
                .then("11-24 15:10", DCS, closed())
                .done(),
            // C4: the street asks W2 to verify at 09:10; W2 answers at 15:00: 09:10-12:00 +
            // 14:30-15:00 = 3 h 20 ✗. The answer files the case for the street: 10 min of the
            // accept limit used (the wait for the field does not count) ✓. Dispatched 10 min after
            // ✓, handled 2 h after signing ✓, checked Tuesday 08:40 (5 + 10 min) ✓, closed ✓.
            History::report(4, "11-23 09:00", G2, W2)
                .then("11-23 09:10", OPS, verify_requested())
                .then("11-23 15:00", W2, verified(true))
                .then("11-23 15:10", OPS, dispatched(CG))
                .then("11-23 15:20", HCG, signed(CG))
                .then("11-23 17:20", HCG, handled(CG))
                .then("11-23 17:25", OPS, check_requested())
                .then("11-24 08:40", W2, checked(true))
                .then("11-24 09:00", DCS, closed())
                .done(),
            // C5: verified as not genuine within 25 min ✓: rejected, not a valid report.
            History::report(5, "11-23 11:00", G2, W2)
                .then("11-23 11:05", OPS, verify_requested())
                .then("11-23 11:30", W2, verified(false))
                .done(),
            // C6: filed after 15 min ✓, then voided: a valid report, a filing that was voided.
            History::report(6, "11-24 09:00", G2, W2)
                .then("11-24 09:15", OPS, accepted())
                .then(
                    "11-24 09:30",
                    OPS,
                    Kind::VoidRequested(pb::VoidRequested {
                        reason: "duplicate of a filed case".into(),
                    }),
                )
                .then("11-24 10:00", DCS, Kind::VoidApproved(pb::VoidApproved {}))
                .done(),
            // C7: fixed on the spot; the community approves after 1 h: valid, closed ✓.
            History::report_with(7, "11-24 10:00", G2, W2, self_handling)
                .then(
                    "11-24 11:00",
                    CS,
                    Kind::SelfHandleApproved(pb::SelfHandleApproved {}),
                )
                .done(),
            // C8: the community refuses the self-handling at 10:30; the accept stage starts then:
            // filed at 10:50 (20 min) ✓, dispatched 10 min later ✓, handled 14:40 (40 + 10 min)
            // ✓, checked after 15 min ✓, closed ✓.
            History::report_with(8, "11-24 10:00", G3, W3, self_handling)
                .then(
                    "11-24 10:30",
                    CS,
                    Kind::SelfHandleRejected(pb::SelfHandleRejected {
                        reason: "needs the 城管".into(),
                    }),
                )
                .then("11-24 10:50", OPS, accepted())
                .then("11-24 11:00", OPS, dispatched(SZ))
                .then("11-24 11:20", HSZ, signed(SZ))
                .then("11-24 14:40", HSZ, handled(SZ))
                .then("11-24 14:45", OPS, check_requested())
                .then("11-24 15:00", W3, checked(true))
                .then("11-24 15:10", DCS, closed())
                .done(),
            // C9: the street files it after 20 min ✓ and escalates it at 09:40; the district
            // files it at 10:30, 50 min after the escalation ✗, dispatches to HB 15 min later ✓.
            // HB signs at 11:00, the case hangs from Monday 14:30 to Wednesday 08:30; handled
            // Wednesday 11:00: 11:00-12:00 + 08:30-11:00 = 3 h 30 ✓ (without the hang: late).
            // Checked after 30 min ✓. Closed Wednesday 11:50: due 2 working days after Monday
            // 09:00 = 13 working hours; used 09:00-12:00 + 08:30-11:50 = 6 h 20 ✓.
            History::report(9, "11-23 09:00", G3, W3)
                .then("11-23 09:20", OPS, accepted())
                .then(
                    "11-23 09:40",
                    OPS,
                    Kind::Escalated(pb::Escalated {
                        reason: "needs the district".into(),
                    }),
                )
                .then("11-23 10:30", OPD, accepted())
                .then("11-23 10:45", OPD, dispatched(HB))
                .then("11-23 11:00", HHB, signed(HB))
                .then(
                    "11-23 11:30",
                    HHB,
                    Kind::HangRequested(pb::HangRequested {
                        department_code: HB.into(),
                        reason: "waits for the dry season".into(),
                    }),
                )
                .then("11-23 14:30", LDD, Kind::HangApproved(pb::HangApproved {}))
                .then("11-25 08:30", DCD, Kind::Resumed(pb::Resumed {}))
                .then("11-25 11:00", HHB, handled(HB))
                .then("11-25 11:10", OPD, check_requested())
                .then("11-25 11:40", W3, checked(true))
                .then("11-25 11:50", DCD, closed())
                .done(),
            // C10: CG asks for 2 more working hours, granted. Handled 17:00: 09:30-12:00 +
            // 14:30-17:00 = 5 h, over 4 but within 4 + 2 ✓. Checked after 15 min ✓, closed ✓.
            History::report(10, "11-24 09:00", G1, W1)
                .then("11-24 09:10", OPS, accepted())
                .then("11-24 09:20", OPS, dispatched(CG))
                .then("11-24 09:30", HCG, signed(CG))
                .then(
                    "11-24 11:00",
                    HCG,
                    Kind::DelayRequested(pb::DelayRequested {
                        department_code: CG.into(),
                        extension: Some(two_working_hours()),
                        reason: "more rubbish than reported".into(),
                    }),
                )
                .then(
                    "11-24 11:30",
                    DCS,
                    Kind::DelayApproved(pb::DelayApproved {
                        extension: Some(two_working_hours()),
                    }),
                )
                .then("11-24 17:00", HCG, handled(CG))
                .then("11-24 17:05", OPS, check_requested())
                .then("11-24 17:20", W1, checked(true))
                .then("11-24 17:25", DCS, closed())
                .done(),
            // C11: filed ✓ and dispatched ✓, still in CG's hands at the end of the period
            // (handled only on 30 November, after it): due Wednesday 15:00, open and overdue.
            History::report(11, "11-23 15:00", G1, W1)
                .then("11-23 15:10", OPS, accepted())
                .then("11-23 15:20", OPS, dispatched(CG))
                .then("11-23 15:30", HCG, signed(CG))
                .then("11-30 10:00", HCG, handled(CG))
                .done(),
            // C12: filed ✓, dispatched ✓ on Friday afternoon; due Tuesday 1 December 14:30:
            // open at the end, not overdue.
            History::report(12, "11-27 14:30", G1, W1)
                .then("11-27 14:40", OPS, accepted())
                .then("11-27 14:50", OPS, dispatched(SZ))
                .done(),
            // C13: reported the Friday before; open and overdue since Tuesday 24 09:00.
            History::report(13, "11-20 09:00", G2, W2)
                .then("11-20 09:10", OPS, accepted())
                .then("11-20 09:20", OPS, dispatched(CG))
                .then("11-20 09:30", HCG, signed(CG))
                .done(),
            // C14: reported Thursday 19, due Monday 23 10:00; checked by W3 on Monday 09:50
            // (50 min after the request) ✓ and closed at 10:30 ✗. Only the check and the
            // closing fall in the period.
            History::report(14, "11-19 10:00", G3, W3)
                .then("11-19 10:10", OPS, accepted())
                .then("11-19 10:20", OPS, dispatched(SZ))
                .then("11-19 10:30", HSZ, signed(SZ))
                .then("11-20 16:00", HSZ, handled(SZ))
                .then("11-23 09:00", OPS, check_requested())
                .then("11-23 09:50", W3, checked(true))
                .then("11-23 10:30", DCS, closed())
                .done(),
            // C15: reported and closed the week before: counts nowhere.
            History::report(15, "11-18 09:00", G1, W1)
                .then("11-18 09:10", OPS, accepted())
                .then("11-18 09:20", OPS, dispatched(CG))
                .then("11-18 09:30", HCG, signed(CG))
                .then("11-18 10:30", HCG, handled(CG))
                .then("11-18 10:35", OPS, check_requested())
                .then("11-18 10:50", W1, checked(true))
                .then("11-18 11:00", DCS, closed())
                .done(),
            // C16: 越级上报 from street 003: the district files after 20 min ✓, dispatches to
            // HB ✓, HB handles after 1 h ✓, W4 checks after 15 min ✓, closed ✓.
            History::report_with(16, "11-24 09:00", G4, W4, skip)
                .then("11-24 09:20", OPD, accepted())
                .then("11-24 09:40", OPD, dispatched(HB))
                .then("11-24 10:00", HHB, signed(HB))
                .then("11-24 11:00", HHB, handled(HB))
                .then("11-24 11:05", OPD, check_requested())
                .then("11-24 11:20", W4, checked(true))
                .then("11-24 11:30", DCD, closed())
                .done(),
            // C17: a citizen in W4's grid (漏报); filed after 50 min ✗, dispatched 5 min later ✓;
            // handled Wednesday 10:00: 15:30-17:30 + 08:30-10:00 = 3 h 30 ✓; the check fails
            // (25 min ✓); rework; handled again at 16:00: 10:50-12:00 + 14:30-16:00 = 2 h 40 ✓;
            // checked after 25 min ✓; closed Wednesday, due Friday 27 14:30 (Thursday is off) ✓.
            History::report_with(17, "11-24 14:30", G4, CITIZEN, skip)
                .then("11-24 15:20", OPD, accepted())
                .then("11-24 15:25", OPD, dispatched(HB))
                .then("11-24 15:30", HHB, signed(HB))
                .then("11-25 10:00", HHB, handled(HB))
                .then("11-25 10:05", OPD, check_requested())
                .then("11-25 10:30", W4, checked(false))
                .then("11-25 10:40", OPD, reworked(HB))
                .then("11-25 10:50", HHB, signed(HB))
                .then("11-25 16:00", HHB, handled(HB))
                .then("11-25 16:05", OPD, check_requested())
                .then("11-25 16:30", W4, checked(true))
                .then("11-25 16:40", DCD, closed())
                .done(),
            // C18: filed ✓, dispatched to CG ✓, which asks to return it at 09:40 (the dispatch
            // stage starts again then); the return is approved and the case dispatched to SZ at
            // 10:40, 60 min after ✗. SZ handles after 1 h ✓, W1 checks after 5 + 10 min ✓, closed.
            History::report(18, "11-25 09:00", G1, W1)
                .then("11-25 09:10", OPS, accepted())
                .then("11-25 09:20", OPS, dispatched(CG))
                .then(
                    "11-25 09:40",
                    HCG,
                    Kind::ReturnRequested(pb::ReturnRequested {
                        department_code: CG.into(),
                        reason: "a 市政 matter".into(),
                    }),
                )
                .then(
                    "11-25 10:00",
                    DCS,
                    Kind::ReturnApproved(pb::ReturnApproved {}),
                )
                .then("11-25 10:40", OPS, dispatched(SZ))
                .then("11-25 10:50", HSZ, signed(SZ))
                .then("11-25 11:50", HSZ, handled(SZ))
                .then("11-25 11:55", OPS, check_requested())
                .then("11-25 14:40", W1, checked(true))
                .then("11-25 14:50", DCS, closed())
                .done(),
            // C19: reported by community staff in W2's grid (漏报), merged into C18.
            History::report(19, "11-25 10:00", G2, CS)
                .then(
                    "11-25 10:15",
                    OPS,
                    Kind::Merged(pb::Merged {
                        into_case_id: "case-18".into(),
                        into_number: "C18".into(),
                    }),
                )
                .done(),
            // C20: archived without filing: not a valid report.
            History::report(20, "11-25 14:30", G3, W3)
                .then(
                    "11-25 14:50",
                    DCS,
                    Kind::Archived(pb::Archived {
                        reason: "for the record".into(),
                    }),
                )
                .done(),
            // C21: an emergency: filed after 15 min, over its 10 ✗; dispatched ✓, handled ✓;
            // the check comes after the period. Open at the end, due 1 December 09:00.
            History::report_with(21, "11-27 09:00", G3, W3, |r| {
                r.urgency = Urgency::Emergency as i32
            })
            .then("11-27 09:15", OPS, accepted())
            .then("11-27 09:20", OPS, dispatched(SZ))
            .then("11-27 09:25", HSZ, signed(SZ))
            .then("11-27 10:00", HSZ, handled(SZ))
            .then("11-27 10:05", OPS, check_requested())
            .then("11-30 09:00", W3, checked(true))
            .done(),
            // C22: rejected: not a valid report.
            History::report(22, "11-27 10:00", G1, W1)
                .then("11-27 10:10", OPS, rejected())
                .done(),
            // C23: reworked twice. Handled after 40 min ✓, 20 min ✓ and 10 + 90 min ✓; every
            // check within the hour ✓; closed ✓.
            History::report(23, "11-25 09:00", G2, W2)
                .then("11-25 09:05", OPS, accepted())
                .then("11-25 09:10", OPS, dispatched(CG))
                .then("11-25 09:20", HCG, signed(CG))
                .then("11-25 10:00", HCG, handled(CG))
                .then("11-25 10:05", OPS, check_requested())
                .then("11-25 10:20", W2, checked(false))
                .then("11-25 10:30", OPS, reworked(CG))
                .then("11-25 10:40", HCG, signed(CG))
                .then("11-25 11:00", HCG, handled(CG))
                .then("11-25 11:05", OPS, check_requested())
                .then("11-25 11:30", W2, checked(false))
                .then("11-25 11:40", OPS, reworked(CG))
                .then("11-25 11:50", HCG, signed(CG))
                .then("11-25 16:00", HCG, handled(CG))
                .then("11-25 16:05", OPS, check_requested())
                .then("11-25 16:20", W2, checked(true))
                .then("11-25 16:30", DCS, closed())
                .done(),
            // C24: closed Monday 12:00 (2 h used ✓), reopened Wednesday 09:00, dispatched again
            // 20 min after the reopening ✓ and closed again at 11:00: 10:00-12:00 on Monday +
            // 09:00-11:00 on Wednesday = 4 h of 13 ✓ (counting the closed span it would be 14 h ✗).
            History::report_with(24, "11-23 10:00", G4, W4, skip)
                .then("11-23 10:10", OPD, accepted())
                .then("11-23 10:20", OPD, dispatched(HB))
                .then("11-23 10:30", HHB, signed(HB))
                .then("11-23 11:30", HHB, handled(HB))
                .then("11-23 11:35", OPD, check_requested())
                .then("11-23 11:50", W4, checked(true))
                .then("11-23 12:00", DCD, closed())
                .then(
                    "11-25 09:00",
                    DCD,
                    Kind::Reopened(pb::Reopened {
                        reason: "the citizen called again".into(),
                    }),
                )
                .then("11-25 09:20", OPD, dispatched(HB))
                .then("11-25 09:30", HHB, signed(HB))
                .then("11-25 10:30", HHB, handled(HB))
                .then("11-25 10:35", OPD, check_requested())
                .then("11-25 10:50", W4, checked(true))
                .then("11-25 11:00", DCD, closed())
                .done(),
            // C25: reported the Friday before and hung since Friday 10:30: its case clock stopped
            // after 1 h 30 of 13: open, not overdue.
            History::report(25, "11-20 09:00", G3, W3)
                .then("11-20 09:10", OPS, accepted())
                .then("11-20 09:20", OPS, dispatched(SZ))
                .then("11-20 09:30", HSZ, signed(SZ))
                .then(
                    "11-20 10:00",
                    HSZ,
                    Kind::HangRequested(pb::HangRequested {
                        department_code: SZ.into(),
                        reason: "engineering works".into(),
                    }),
                )
                .then("11-20 10:30", LDS, Kind::HangApproved(pb::HangApproved {}))
                .done(),
            // C26: the street escalates the report at 15:00 without filing it; the accept stage
            // starts again at the district, which files at 15:20, 20 min after ✓ (50 min after
            // the report). Dispatched to HB ✓, handled after 1 h ✓, W2 checks after 15 min ✓,
            // closed ✓.
            History::report(26, "11-24 14:30", G2, W2)
                .then(
                    "11-24 15:00",
                    OPS,
                    Kind::Escalated(pb::Escalated {
                        reason: "a district matter".into(),
                    }),
                )
                .then("11-24 15:20", OPD, accepted())
                .then("11-24 15:30", OPD, dispatched(HB))
                .then("11-24 15:40", HHB, signed(HB))
                .then("11-24 16:40", HHB, handled(HB))
                .then("11-24 16:45", OPD, check_requested())
                .then("11-24 17:00", W2, checked(true))
                .then("11-24 17:10", DCD, closed())
                .done(),
        ]
    }

    fn rules() -> LimitRules {
        let rule = |stage, urgency, limit| LimitRule {
            stage,
            category: None,
            urgency,
            limit,
        };
        LimitRules::new(vec![
            rule(Stage::Accept, None, Limit::minutes(30)),
            rule(Stage::Accept, Some(Urgency::Emergency), Limit::minutes(10)),
            rule(Stage::Dispatch, None, Limit::minutes(30)),
            rule(Stage::Sign, None, Limit::working_days(1)),
            rule(Stage::Handle, None, Limit::working_hours(4)),
            rule(Stage::Check, None, Limit::working_hours(1)),
            rule(Stage::Case, None, Limit::working_days(2)),
        ])
    }

    /// Monday to Friday, 08:30-12:00 and 14:30-17:30, Thursday 26 November 2026 off.
    fn calendar() -> WorkCalendar {
        let holiday = NaiveDate::from_ymd_opt(2026, 11, 26).unwrap();
        WorkCalendar::from_days([(holiday, DayKind::Holiday)]).with_years([2026])
    }

    fn week() -> Evaluation {
        let calendar = calendar();
        evaluate(
            &scenario(),
            t("11-23 00:00"),
            t("11-30 00:00"),
            &rules(),
            |_| &calendar,
        )
    }

    #[test]
    fn the_scenario_has_enough_cases() {
        let cases = scenario();
        assert_eq!(cases.len(), 26);
        let in_week = cases
            .iter()
            .filter(|h| h[0].at.unwrap().seconds >= t("11-23 00:00").timestamp())
            .count();
        assert_eq!(in_week, 22);
    }

    #[test]
    fn grid_workers_are_evaluated_by_hand() {
        let e = week();
        assert_eq!(
            e.workers,
            vec![
                // W4 (G4): reports C16, C24 (C17 was a citizen's), both filed: 2 of 2 valid.
                // No verification. Checks: C16, C17 twice, C24 twice, all within the hour: 5 of
                // 5. G4's reports: C16, C17, C24, of which C17 by a citizen: 1 of 3 missed.
                WorkerFigures {
                    worker_id: W4.0.into(),
                    reports: 2,
                    valid_reports: 2,
                    verified: 0,
                    verified_on_time: 0,
                    checked: 5,
                    checked_on_time: 5,
                    grid_reports: 3,
                    missed: 1,
                },
                // W2 (G2): reports C4, C5, C6, C7, C23, C26 (C13 was before the week); valid:
                // C4 (filed by the verification), C6 (filed, then voided), C7 (self-handling
                // approved), C23, C26; not C5 (rejected): 5 of 6. Verifications: C4 late, C5 on
                // time: 1 of 2. Checks: C4, C23 three times, C26, all on time: 5 of 5. G2's
                // reports: C4, C5, C6, C7, C19, C23, C26, of which C19 by community staff: 1 of
                // 7 missed.
                WorkerFigures {
                    worker_id: W2.0.into(),
                    reports: 6,
                    valid_reports: 5,
                    verified: 2,
                    verified_on_time: 1,
                    checked: 5,
                    checked_on_time: 5,
                    grid_reports: 7,
                    missed: 1,
                },
                // W1 (G1): reports C1, C2, C10, C11, C12, C18, C22 (C15 was before the week);
                // valid all but C22 (rejected): 6 of 7. Checks: C1, C2 twice, C3 (80 min, late),
                // C10, C18: 5 of 6 on time. G1's reports: C1, C2, C3, C10, C11, C12, C18, C22,
                // of which C3 by a citizen: 1 of 8 missed.
                WorkerFigures {
                    worker_id: W1.0.into(),
                    reports: 7,
                    valid_reports: 6,
                    verified: 0,
                    verified_on_time: 0,
                    checked: 6,
                    checked_on_time: 5,
                    grid_reports: 8,
                    missed: 1,
                },
                // W3 (G3): reports C8, C9, C20, C21; valid all but C20 (archived): 3 of 4.
                // Checks: C8, C9, C14 (on Monday, of a case reported before): 3 of 3 on time
                // (C21's check came after the week). G3's reports: C8, C9, C20, C21, none
                // missed.
                WorkerFigures {
                    worker_id: W3.0.into(),
                    reports: 4,
                    valid_reports: 3,
                    verified: 0,
                    verified_on_time: 0,
                    checked: 3,
                    checked_on_time: 3,
                    grid_reports: 4,
                    missed: 0,
                },
            ]
        );
        let rates: Vec<_> = e
            .workers
            .iter()
            .map(|w| {
                (
                    w.valid_rate(),
                    w.verified_on_time_rate(),
                    w.checked_on_time_rate(),
                    w.missed_rate(),
                )
            })
            .collect();
        assert_eq!(
            rates,
            vec![
                (Some(1.0), None, Some(1.0), Some(1.0 / 3.0)),
                (Some(5.0 / 6.0), Some(0.5), Some(1.0), Some(1.0 / 7.0)),
                (Some(6.0 / 7.0), None, Some(5.0 / 6.0), Some(1.0 / 8.0)),
                (Some(3.0 / 4.0), None, Some(1.0), Some(0.0)),
            ]
        );
    }

    #[test]
    fn command_centers_are_evaluated_by_hand() {
        let e = week();
        assert_eq!(
            e.centers,
            vec![
                // The district: filings C9 (50 min after the escalation ✗), C16 ✓, C17 ✗, C24 ✓,
                // C26 (20 min after the escalation) ✓: 3 of 5 on time, none voided. Dispatches
                // C9, C16, C17, C24 twice, C26, all on time; C17's was reworked: 6 dispatches,
                // 1 reworked.
                CenterFigures {
                    org_code: DISTRICT.into(),
                    filed: 5,
                    filed_on_time: 3,
                    voided: 0,
                    dispatched: 6,
                    dispatched_on_time: 6,
                    dispatch_reworked: 1,
                },
                // The street: filings C1, C2 ✗, C3, C4 (by the verification), C6 (voided), C8,
                // C9 (before the escalation), C10, C11, C12, C18, C21 ✗, C23: 13, 11 on time,
                // 1 voided. Dispatches C1, C2, C3, C4, C8, C10, C11, C12, C18 twice (the second
                // ✗), C21, C23: 12, 11 on time; C2 and C23 reworked: 2.
                CenterFigures {
                    org_code: STREET.into(),
                    filed: 13,
                    filed_on_time: 11,
                    voided: 1,
                    dispatched: 12,
                    dispatched_on_time: 11,
                    dispatch_reworked: 2,
                },
            ]
        );
        let rates: Vec<_> = e
            .centers
            .iter()
            .map(|c| {
                (
                    c.filed_on_time_rate(),
                    c.filing_accuracy(),
                    c.dispatched_on_time_rate(),
                    c.dispatch_accuracy(),
                )
            })
            .collect();
        assert_eq!(
            rates,
            vec![
                (Some(3.0 / 5.0), Some(1.0), Some(1.0), Some(5.0 / 6.0)),
                (
                    Some(11.0 / 13.0),
                    Some(12.0 / 13.0),
                    Some(11.0 / 12.0),
                    Some(10.0 / 12.0)
                ),
            ]
        );
    }

    #[test]
    fn departments_are_evaluated_by_hand() {
        let e = week();
        assert_eq!(
            e.departments,
            vec![
                // HB: dispatched C9, C16, C17, C24 twice, C26: 6, all handled. Handlings: C9
                // (3 h 30 with the hang left out), C16, C17 twice, C24 twice, C26: 7, all on
                // time; C17's first was reworked.
                DepartmentFigures {
                    department_code: HB.into(),
                    dispatched: 6,
                    dispatched_handled: 6,
                    handled: 7,
                    handled_on_time: 7,
                    reworked: 1,
                },
                // CG: dispatched C1, C3, C4, C10, C11, C18, C23: 7; handled all but C11 (after
                // the week) and C18 (returned): 5. Handlings: C1, C3 (5 h ✗), C4, C10 (within
                // its extension), C23 three times: 7, 6 on time; C23's first two reworked.
                DepartmentFigures {
                    department_code: CG.into(),
                    dispatched: 7,
                    dispatched_handled: 5,
                    handled: 7,
                    handled_on_time: 6,
                    reworked: 2,
                },
                // SZ: dispatched C2, C8, C12, C18, C21: 5; handled all but C12: 4. Handlings:
                // C2 twice, C8, C18, C21 (C14's came before the week): 5, all on time; C2's
                // first reworked.
                DepartmentFigures {
                    department_code: SZ.into(),
                    dispatched: 5,
                    dispatched_handled: 4,
                    handled: 5,
                    handled_on_time: 5,
                    reworked: 1,
                },
            ]
        );
        let figures: Vec<_> = e
            .departments
            .iter()
            .map(|d| {
                (
                    d.handled_late(),
                    d.handling_rate(),
                    d.handled_on_time_rate(),
                    d.rework_rate(),
                )
            })
            .collect();
        assert_eq!(
            figures,
            vec![
                (0, Some(1.0), Some(1.0), Some(1.0 / 7.0)),
                (1, Some(5.0 / 7.0), Some(6.0 / 7.0), Some(2.0 / 7.0)),
                (0, Some(4.0 / 5.0), Some(1.0), Some(1.0 / 5.0)),
            ]
        );
    }

    fn area(
        level: AreaLevel,
        code: &str,
        [
            reported,
            reported_closed,
            closed,
            closed_on_time,
            open_overdue,
        ]: [u32; 5],
    ) -> AreaFigures {
        AreaFigures {
            level,
            code: code.into(),
            reported,
            reported_closed,
            closed,
            closed_on_time,
            open_overdue,
        }
    }

    #[test]
    fn areas_are_evaluated_by_hand_with_overdue_open_cases() {
        use AreaLevel::{Community, Grid, Street};
        let e = week();
        // Each row: [reported, of those closed at the end, closings, on time, open and overdue].
        // G1: reported C1, C2, C3, C10, C11, C12, C18, C22; closed at the end: C1, C2, C3, C10,
        //     C18. Closings: the same 5, all on time; open and overdue: C11 (C12 is not due).
        let g1 = [8, 5, 5, 5, 1];
        // G2: reported C4, C5, C6, C7, C19, C23, C26; closed: C4, C7, C23, C26. Closings:
        //     those 4, on time; open and overdue: C13, reported before the week.
        let g2 = [7, 4, 4, 4, 1];
        // G3: reported C8, C9, C20, C21; closed: C8, C9. Closings: C8, C9 and C14 (late):
        //     2 of 3 on time; C21 is not due, C25 is hung with its clock stopped.
        let g3 = [4, 2, 3, 2, 0];
        // G4: reported C16, C17, C24, all closed. Closings: C16, C17, C24 twice, on time.
        let g4 = [3, 3, 4, 4, 0];
        let sum = |parts: &[[u32; 5]]| {
            let mut total = [0; 5];
            for part in parts {
                for (t, p) in total.iter_mut().zip(part) {
                    *t += p;
                }
            }
            total
        };
        assert_eq!(
            e.areas,
            vec![
                area(Street, STREET, sum(&[g1, g2, g3])),
                area(Street, "350205003000", g4),
                area(Community, "350205002006", sum(&[g1, g2])),
                area(Community, "350205002007", g3),
                area(Community, "350205003001", g4),
                area(Grid, G1, g1),
                area(Grid, G2, g2),
                area(Grid, G3, g3),
                area(Grid, G4, g4),
            ]
        );
        // The street 350205002: [19, 11, 12, 11, 2]: 结案率 11/19, 按期结案率 11 / (12 + 2).
        assert_eq!(sum(&[g1, g2, g3]), [19, 11, 12, 11, 2]);
        let rates: Vec<_> = e
            .areas
            .iter()
            .map(|a| (a.closing_rate(), a.closed_on_time_rate()))
            .collect();
        assert_eq!(
            rates,
            vec![
                (Some(11.0 / 19.0), Some(11.0 / 14.0)),
                (Some(1.0), Some(1.0)),
                (Some(9.0 / 15.0), Some(9.0 / 11.0)),
                (Some(2.0 / 4.0), Some(2.0 / 3.0)),
                (Some(1.0), Some(1.0)),
                (Some(5.0 / 8.0), Some(5.0 / 6.0)),
                (Some(4.0 / 7.0), Some(4.0 / 5.0)),
                (Some(2.0 / 4.0), Some(2.0 / 3.0)),
                (Some(1.0), Some(1.0)),
            ]
        );
    }

    #[test]
    fn what_happens_after_the_period_does_not_change_it() {
        let calendar = calendar();
        let full = week();
        // The same histories cut at the end of the week.
        let cut: Vec<Vec<pb::CaseEvent>> = scenario()
            .into_iter()
            .map(|h| {
                h.into_iter()
                    .filter(|e| e.at.unwrap().seconds < t("11-30 00:00").timestamp())
                    .collect()
            })
            .collect();
        let evaluated = evaluate(&cut, t("11-23 00:00"), t("11-30 00:00"), &rules(), |_| {
            &calendar
        });
        assert_eq!(evaluated, full);
        // No cases, no rows.
        let empty = evaluate(&[], t("11-23 00:00"), t("11-30 00:00"), &rules(), |_| {
            &calendar
        });
        assert_eq!(empty, Evaluation::default());
    }

    #[test]
    fn a_case_handed_down_counts_as_a_dispatch_of_both_centers_and_restarts_the_stage() {
        let calendar = calendar();
        // The street escalates C30 unfiled; the district files it at 09:30 and hands it down to
        // the street at 10:05, 35 min later ✗; the street dispatches it to CG at 10:25, 20 min
        // after the 交办 ✓ (55 min after the filing: the 交办 started its stage again).
        let history = History::report(30, "11-23 09:00", G1, W1)
            .then(
                "11-23 09:10",
                OPS,
                Kind::Escalated(pb::Escalated {
                    reason: "a district matter".into(),
                }),
            )
            .then("11-23 09:30", OPD, accepted())
            .then(
                "11-23 10:05",
                OPD,
                Kind::Dispatched(pb::Dispatched {
                    department_code: String::new(),
                    to_tier: Tier::Street as i32,
                }),
            )
            .then("11-23 10:25", OPS, dispatched(CG))
            .then("11-23 10:40", HCG, signed(CG))
            .then("11-23 11:40", HCG, handled(CG))
            .done();
        let evaluated = evaluate(
            &[history],
            t("11-23 00:00"),
            t("11-30 00:00"),
            &rules(),
            |_| &calendar,
        );
        let dispatches: Vec<(&str, u32, u32)> = evaluated
            .centers
            .iter()
            .map(|c| (c.org_code.as_str(), c.dispatched, c.dispatched_on_time))
            .collect();
        assert_eq!(dispatches, [(DISTRICT, 1, 0), (STREET, 1, 1)]);
        // The department was sent it once, by the street; the 交办 named no department.
        let departments: Vec<(&str, u32, u32)> = evaluated
            .departments
            .iter()
            .map(|d| {
                (
                    d.department_code.as_str(),
                    d.dispatched,
                    d.dispatched_handled,
                )
            })
            .collect();
        assert_eq!(departments, [(CG, 1, 1)]);
    }

    fn counts(a: &AreaFigures) -> [u32; 5] {
        [
            a.reported,
            a.reported_closed,
            a.closed,
            a.closed_on_time,
            a.open_overdue,
        ]
    }

    proptest::proptest! {
        /// Whatever the period: a street's and a community's counts are the sums of their
        /// grids', and every rate lies between 0 and 1.
        #[test]
        fn areas_add_up_and_rates_stay_within_one(
            start in 0i64..(16 * 24 * 60),
            length in 1i64..(16 * 24 * 60),
        ) {
            let calendar = calendar();
            let from = t("11-16 00:00") + chrono::Duration::minutes(start);
            let to = from + chrono::Duration::minutes(length);
            let e = evaluate(&scenario(), from, to, &rules(), |_| &calendar);
            for upper in e.areas.iter().filter(|a| a.level != AreaLevel::Grid) {
                let prefix = match upper.level {
                    AreaLevel::Street => &upper.code[..9],
                    _ => &upper.code[..],
                };
                let mut total = [0; 5];
                for grid in e.areas.iter().filter(|a| {
                    a.level == AreaLevel::Grid && a.code.starts_with(prefix)
                }) {
                    for (t, c) in total.iter_mut().zip(counts(grid)) {
                        *t += c;
                    }
                }
                proptest::prop_assert_eq!(counts(upper), total, "{}", upper.code);
            }
            let mut rates = Vec::new();
            for w in &e.workers {
                rates.extend([w.valid_rate(), w.verified_on_time_rate(), w.checked_on_time_rate(), w.missed_rate()]);
            }
            for c in &e.centers {
                rates.extend([c.filed_on_time_rate(), c.filing_accuracy(), c.dispatched_on_time_rate(), c.dispatch_accuracy()]);
            }
            for d in &e.departments {
                rates.extend([d.handling_rate(), d.handled_on_time_rate(), d.rework_rate()]);
            }
            for a in &e.areas {
                rates.extend([a.closing_rate(), a.closed_on_time_rate()]);
            }
            for rate in rates.into_iter().flatten() {
                proptest::prop_assert!((0.0..=1.0).contains(&rate), "{rate}");
            }
        }
    }
}
