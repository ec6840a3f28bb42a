//! The command clock of a tier: the rules it runs on (time limits, skip-tier rules, work
//! calendars, from the registry tables `wangge-seed` fills; swapped whole on reload) and how a
//! case's clocks stand at a moment, from its projection.
//!
//! Clocks are never stored: a stored figure would be stale a minute later. Every read computes
//! them at the reader's now, which the tier takes from its [`crate::time::TimeSource`], so tests
//! move time instead of waiting for it.

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, Duration, NaiveDateTime, Utc};
use wangge_domain::calendar::WorkCalendar;
use wangge_domain::case::{is_finished, stage_of};
use wangge_domain::clock::{Clock, Light, Limit, LimitUnit, Standing, china, china_time};
use wangge_domain::limits::{LimitRules, SkipRules, Stage};
use wangge_proto as pb;

/// What the clocks of a tier run on; loaded together, replaced together.
#[derive(Debug, Clone, Default)]
pub struct Rules {
    pub limits: LimitRules,
    pub skips: SkipRules,
    /// Work calendars by community code (each already merged with its street's, district's and
    /// city's days).
    pub calendars: HashMap<String, Arc<WorkCalendar>>,
    /// For an org without a calendar of its own.
    pub fallback: Arc<WorkCalendar>,
    /// The category codes of the registry: a report's category is checked here, not in the
    /// database.
    pub categories: std::collections::HashSet<String>,
}

impl Rules {
    /// The work calendar of a community.
    pub fn calendar(&self, community: &str) -> &WorkCalendar {
        self.calendars
            .get(community)
            .map(Arc::as_ref)
            .unwrap_or(&self.fallback)
    }

    /// The standard extension (标准延期) a duty chief may grant for a category.
    pub fn standard_extension(&self, category: &str) -> Option<Limit> {
        self.limits.standard_extension(category)
    }

    /// The working time of one working day in a community, under its latest working hours.
    pub fn working_day(&self, community: &str) -> Duration {
        self.calendar(community).working_day_length()
    }
}

/// The domain's unit of an API unit (None for unspecified).
pub fn unit_of(unit: pb::TimeUnit) -> Option<LimitUnit> {
    match unit {
        pb::TimeUnit::Minutes => Some(LimitUnit::Minutes),
        pb::TimeUnit::WorkingMinutes => Some(LimitUnit::WorkingMinutes),
        pb::TimeUnit::WorkingHours => Some(LimitUnit::WorkingHours),
        pb::TimeUnit::WorkingDays => Some(LimitUnit::WorkingDays),
        pb::TimeUnit::Unspecified => None,
    }
}

fn api_unit(unit: LimitUnit) -> pb::TimeUnit {
    match unit {
        LimitUnit::Minutes => pb::TimeUnit::Minutes,
        LimitUnit::WorkingMinutes => pb::TimeUnit::WorkingMinutes,
        LimitUnit::WorkingHours => pb::TimeUnit::WorkingHours,
        LimitUnit::WorkingDays => pb::TimeUnit::WorkingDays,
    }
}

fn limit_of(limit: &pb::TimeLimit) -> Option<Limit> {
    unit_of(limit.unit()).map(|unit| Limit {
        amount: limit.amount,
        unit,
    })
}

/// A wire timestamp as China local time (where working hours are counted).
pub fn local(at: Option<prost_types::Timestamp>) -> Option<NaiveDateTime> {
    let at = at?;
    DateTime::from_timestamp(at.seconds, at.nanos.clamp(0, 999_999_999) as u32)
        .map(|t| t.with_timezone(&china()).naive_local())
}

fn wire(local: NaiveDateTime) -> Option<prost_types::Timestamp> {
    let at = local.and_local_timezone(china()).single()?;
    Some(prost_types::Timestamp {
        seconds: at.timestamp(),
        nanos: at.timestamp_subsec_nanos() as i32,
    })
}

fn light(light: Light) -> pb::Light {
    match light {
        Light::Green => pb::Light::Green,
        Light::Yellow => pb::Light::Yellow,
        Light::Red => pb::Light::Red,
    }
}

fn standing(
    stage: Stage,
    limit: Limit,
    started: NaiveDateTime,
    standing: &Standing,
) -> pb::ClockStanding {
    pb::ClockStanding {
        stage: stage_of(stage) as i32,
        limit: Some(pb::TimeLimit {
            amount: limit.amount,
            unit: api_unit(limit.unit) as i32,
        }),
        started_at: wire(started),
        deadline: wire(standing.deadline),
        left_seconds: standing.left().num_seconds(),
        used_permille: (standing.share * 1000.0).clamp(0.0, f64::from(u32::MAX)) as u32,
        light: light(standing.light) as i32,
        stopped: standing.stopped,
        beyond_calendar: standing.beyond_calendar,
    }
}

/// How the clocks of `case` stand at `now`: its current stage's (from when it entered the stage;
/// the handling with the extensions approved in its round) and the whole case's (from the report,
/// with every approved extension, stopped when it finished). Hung spans stop both.
pub fn clocks(case: &pb::Case, rules: &Rules, now: DateTime<Utc>) -> pb::CaseClocks {
    let calendar = rules.calendar(&case.community_code);
    let now = china_time(now);
    let stops: Vec<(NaiveDateTime, Option<NaiveDateTime>)> = case
        .pauses
        .iter()
        .filter_map(|p| Some((local(p.from)?, local(p.until))))
        .collect();
    let extensions: Vec<Limit> = case.extensions.iter().filter_map(limit_of).collect();
    // The handling counts the extensions of its own round; the whole case all of them.
    let round = (case.round_extensions_from as usize).min(case.extensions.len());
    let this_round: Vec<Limit> = case.extensions[round..]
        .iter()
        .filter_map(limit_of)
        .collect();
    let category = case.category_code.as_str();
    let urgency = case.urgency();
    let run = |stage: Stage, started: NaiveDateTime, until: NaiveDateTime| {
        let limit = rules.limits.limit_for(stage, category, urgency)?;
        let extensions: &[Limit] = match stage {
            Stage::Handle => &this_round,
            Stage::Case => &extensions,
            _ => &[],
        };
        let clock = Clock {
            calendar,
            limit,
            started,
            stops: &stops,
            extensions,
        };
        Some(standing(stage, limit, started, &clock.at(until)))
    };
    let state = case.state();
    let stage = Stage::of_state(state).and_then(|stage| {
        let started = local(case.stage_started_at).or_else(|| local(case.reported_at))?;
        run(stage, started, now)
    });
    let whole = local(case.reported_at).and_then(|reported| {
        let until = if is_finished(state) {
            local(case.updated_at).unwrap_or(now)
        } else {
            now
        };
        let mut clock = run(Stage::Case, reported, until)?;
        clock.stopped |= is_finished(state);
        Some(clock)
    });
    pb::CaseClocks { stage, case: whole }
}

/// The case with its clocks filled in at `now`.
pub fn with_clocks(mut case: pb::Case, rules: &Rules, now: DateTime<Utc>) -> pb::Case {
    case.clocks = Some(clocks(&case, rules, now));
    case
}
