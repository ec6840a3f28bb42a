//! Time-limit rules (时限规则) and the clocks of a case: which limit applies to a stage of a case
//! (by category and urgency, as data), and how the current stage (环节时限) and the whole case
//! (整体时限) stand, computed from the case's history on a work calendar.
//!
//! Rules come from the seeds; nothing here knows a category. The most specific rule wins: the case's
//! own category (小类) before its 大类 before a rule for every category, and at each of those a rule
//! for the case's urgency before a rule for any urgency. So a category that must be handled faster
//! says so itself, and urgency-driven limits (立案+派遣 within 10 minutes for emergencies) are written
//! without a category.
//!
//! Beside the limits: each category's standard extension (标准延期, what a duty chief may grant
//! once), found by the same lineage, and the skip-tier rules (越级上报): which reports go from the
//! village straight to the district, the street getting a copy.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, NaiveDateTime, Utc};
use wangge_proto as pb;
use wangge_proto::CaseState as State;
/// The urgency of a case, which the rules are written for (re-exported for their users).
pub use wangge_proto::Urgency;

use crate::calendar::WorkCalendar;
use crate::clock::{Clock, Limit, Standing, china_time};

/// A stage of the loop with a limit of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Stage {
    /// 受理/立案: from the report (or the escalation) until the center files or rejects it.
    Accept,
    /// 派遣: from filing until a department has it.
    Dispatch,
    /// 签收: from dispatch until the department signs for it.
    Sign,
    /// 处置: from signing until the department reports it handled.
    Handle,
    /// 核查: from the handling report until the on-site check is done.
    Check,
    /// 整体: from the report until the case is closed.
    Case,
}

impl Stage {
    pub const ALL: [Stage; 6] = [
        Stage::Accept,
        Stage::Dispatch,
        Stage::Sign,
        Stage::Handle,
        Stage::Check,
        Stage::Case,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Stage::Accept => "accept",
            Stage::Dispatch => "dispatch",
            Stage::Sign => "sign",
            Stage::Handle => "handle",
            Stage::Check => "check",
            Stage::Case => "case",
        }
    }

    /// The stage a case in `state` is in; None where no center or department clock runs
    /// (finished, or awaiting the community's review of a self-handled case).
    pub fn of_state(state: State) -> Option<Stage> {
        match state {
            State::Draft | State::Reported | State::Verifying | State::Escalated => {
                Some(Stage::Accept)
            }
            State::Accepted | State::ReturnRequested | State::VoidRequested => {
                Some(Stage::Dispatch)
            }
            State::Dispatched => Some(Stage::Sign),
            State::InProgress | State::DelayRequested | State::HangRequested | State::Hung => {
                Some(Stage::Handle)
            }
            State::Handled | State::Checking => Some(Stage::Check),
            State::Unspecified
            | State::SelfHandled
            | State::Closed
            | State::Rejected
            | State::Void
            | State::Merged
            | State::Archived => None,
        }
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Stage {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Stage::ALL
            .into_iter()
            .find(|stage| stage.name() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = Stage::ALL.iter().map(|s| s.name()).collect();
                format!("unknown stage {s:?}: expected one of {}", names.join(", "))
            })
    }
}

/// One rule: the limit of `stage` for cases of `category` (a 小类 or a 大类, None: every
/// category) and `urgency` (None: any).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitRule {
    pub stage: Stage,
    pub category: Option<String>,
    pub urgency: Option<Urgency>,
    pub limit: Limit,
}

/// A standard extension (标准延期): what a duty chief may grant once for a case of `category`
/// (a 小类 or a 大类, None: every category) after checking the reason; more needs a leader.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtensionRule {
    pub category: Option<String>,
    pub limit: Limit,
}

/// The rules of a deployment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LimitRules {
    rules: Vec<LimitRule>,
    extensions: Vec<ExtensionRule>,
}

/// `szcg-01-02`, then `szcg-01`: a category and its ancestors, the most specific first.
fn lineage(category: &str) -> impl Iterator<Item = &str> {
    std::iter::successors(Some(category), |code| {
        code.rsplit_once('-')
            .map(|(parent, _)| parent)
            .filter(|parent| parent.contains('-'))
    })
}

impl LimitRules {
    pub fn new(rules: Vec<LimitRule>) -> LimitRules {
        LimitRules {
            rules,
            extensions: Vec::new(),
        }
    }

    /// The same rules with these standard extensions.
    pub fn with_extensions(mut self, extensions: Vec<ExtensionRule>) -> LimitRules {
        self.extensions = extensions;
        self
    }

    pub fn rules(&self) -> &[LimitRule] {
        &self.rules
    }

    pub fn extensions(&self) -> &[ExtensionRule] {
        &self.extensions
    }

    /// The standard extension of a case of `category`: the rule of the category itself, else of
    /// its 大类, else the one for every category; None when there is none.
    pub fn standard_extension(&self, category: &str) -> Option<Limit> {
        lineage(category)
            .map(Some)
            .chain([None])
            .find_map(|wanted| {
                self.extensions
                    .iter()
                    .find(|rule| rule.category.as_deref() == wanted)
            })
            .map(|rule| rule.limit)
    }

    /// The limit of `stage` for a case of `category` and `urgency`: the most specific rule (see
    /// the module), None when no rule covers it.
    pub fn limit_for(&self, stage: Stage, category: &str, urgency: Urgency) -> Option<Limit> {
        let categories = lineage(category).map(Some).chain([None]);
        for wanted_category in categories {
            for wanted_urgency in [Some(urgency), None] {
                let found = self.rules.iter().find(|rule| {
                    rule.stage == stage
                        && rule.category.as_deref() == wanted_category
                        && rule.urgency == wanted_urgency
                });
                if let Some(rule) = found {
                    return Some(rule.limit);
                }
            }
        }
        None
    }
}

/// The name of an urgency in `seeds/` and in the rule tables.
pub fn urgency_name(urgency: Urgency) -> &'static str {
    match urgency {
        Urgency::Unspecified => "unspecified",
        Urgency::Normal => "normal",
        Urgency::Urgent => "urgent",
        Urgency::Emergency => "emergency",
    }
}

/// An urgency by its seed name: `normal`, `urgent` or `emergency`.
pub fn parse_urgency(name: &str) -> Result<Urgency, String> {
    match name {
        "normal" => Ok(Urgency::Normal),
        "urgent" => Ok(Urgency::Urgent),
        "emergency" => Ok(Urgency::Emergency),
        other => Err(format!(
            "unknown urgency {other:?}: expected normal, urgent or emergency"
        )),
    }
}

/// Normal < urgent < emergency; a case whose urgency was not given counts as normal.
fn urgency_rank(urgency: Urgency) -> u8 {
    match urgency {
        Urgency::Unspecified | Urgency::Normal => 0,
        Urgency::Urgent => 1,
        Urgency::Emergency => 2,
    }
}

/// A skip-tier rule (越级上报): a report of `category` (a 小类 or a 大类) at `urgency` or above
/// goes from the village straight to the district; the street gets a copy (抄送).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkipRule {
    pub category: String,
    /// The least urgency the rule applies to.
    pub urgency: Urgency,
}

/// The skip-tier rules of a deployment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SkipRules {
    rules: Vec<SkipRule>,
}

impl SkipRules {
    pub fn new(rules: Vec<SkipRule>) -> SkipRules {
        SkipRules { rules }
    }

    pub fn rules(&self) -> &[SkipRule] {
        &self.rules
    }

    /// Whether a report of `category` at `urgency` skips the street. The most specific rule
    /// decides (the 小类's before its 大类's), so a 小类 can ask for more urgency than its 大类
    /// (or less); a category without a rule in its lineage never skips.
    pub fn skips_street(&self, category: &str, urgency: Urgency) -> bool {
        lineage(category)
            .find_map(|wanted| self.rules.iter().find(|rule| rule.category == wanted))
            .is_some_and(|rule| urgency_rank(urgency) >= urgency_rank(rule.urgency))
    }
}

/// How a case's clocks stand.
#[derive(Debug, Clone, PartialEq)]
pub struct CaseClocks {
    /// The current stage and its clock; None when no stage clock runs or no rule covers it.
    pub stage: Option<(Stage, Standing)>,
    /// The whole case: until `now`, or until it was finished.
    pub case: Option<Standing>,
}

fn event_time(event: &pb::CaseEvent) -> Option<NaiveDateTime> {
    let at = event.at?;
    DateTime::from_timestamp(at.seconds, at.nanos.clamp(0, 999_999_999) as u32).map(china_time)
}

/// The clocks of the case whose history is `history` (in order, starting with its report), at
/// `now`, by `rules` on `calendar`. The stage clock starts when the case entered its current
/// stage (a rework or a return starts it again); the case clock at the report and stops when the
/// case is finished.
pub fn case_clocks(
    history: &[pb::CaseEvent],
    rules: &LimitRules,
    calendar: &WorkCalendar,
    now: DateTime<Utc>,
) -> CaseClocks {
    let none = CaseClocks {
        stage: None,
        case: None,
    };
    let Some(first) = history.first() else {
        return none;
    };
    let Some(pb::case_event::Kind::Reported(report)) = &first.kind else {
        return none;
    };
    let (Some(reported_at), urgency) = (event_time(first), report.urgency()) else {
        return none;
    };
    let now = china_time(now);

    // When the current stage began: the first event of the last run of events in that stage.
    let mut current: Option<(Stage, NaiveDateTime)> = None;
    let mut finished_at = None;
    for event in history {
        let Some(at) = event_time(event) else {
            continue;
        };
        let stage = Stage::of_state(event.state_after());
        match (stage, current) {
            (Some(stage), Some((running, _))) if stage == running => {}
            (Some(stage), _) => current = Some((stage, at)),
            (None, _) => current = None,
        }
        let finished = matches!(
            event.state_after(),
            State::Closed | State::Rejected | State::Void | State::Merged | State::Archived
        );
        if finished && finished_at.is_none() {
            finished_at = Some(at);
        } else if !finished {
            // Reopened: the case clock runs again.
            finished_at = None;
        }
    }

    let clock = |limit, started| Clock {
        calendar,
        limit,
        started,
        stops: &[],
        extensions: &[],
    };
    let stage = current.and_then(|(stage, started)| {
        rules
            .limit_for(stage, &report.category_code, urgency)
            .map(|limit| (stage, clock(limit, started).at(now)))
    });
    let case = rules
        .limit_for(Stage::Case, &report.category_code, urgency)
        .map(|limit| clock(limit, reported_at).at(finished_at.unwrap_or(now)));
    CaseClocks { stage, case }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use chrono::TimeZone;
    use pb::case_event::Kind;

    use super::*;
    use crate::clock::Light;

    fn rule(
        stage: Stage,
        category: Option<&str>,
        urgency: Option<Urgency>,
        limit: Limit,
    ) -> LimitRule {
        LimitRule {
            stage,
            category: category.map(str::to_owned),
            urgency,
            limit,
        }
    }

    fn rules() -> LimitRules {
        LimitRules::new(vec![
            rule(Stage::Accept, None, None, Limit::minutes(20)),
            rule(
                Stage::Accept,
                None,
                Some(Urgency::Emergency),
                Limit::minutes(5),
            ),
            rule(Stage::Dispatch, None, None, Limit::minutes(10)),
            rule(Stage::Sign, None, None, Limit::working_days(1)),
            rule(Stage::Handle, None, None, Limit::working_days(5)),
            rule(Stage::Handle, Some("szcg-01"), None, Limit::working_days(3)),
            rule(
                Stage::Handle,
                Some("szcg-01-01"),
                None,
                Limit::working_hours(4),
            ),
            rule(
                Stage::Handle,
                Some("szcg-01-01"),
                Some(Urgency::Urgent),
                Limit::working_hours(2),
            ),
            rule(Stage::Check, None, None, Limit::working_hours(1)),
            rule(Stage::Case, None, None, Limit::working_days(10)),
        ])
    }

    #[test]
    fn the_most_specific_rule_wins() {
        let r = rules();
        let normal = Urgency::Normal;
        // 小类 with the urgency, 小类 for any urgency, 大类, every category.
        assert_eq!(
            r.limit_for(Stage::Handle, "szcg-01-01", Urgency::Urgent),
            Some(Limit::working_hours(2))
        );
        assert_eq!(
            r.limit_for(Stage::Handle, "szcg-01-01", normal),
            Some(Limit::working_hours(4))
        );
        assert_eq!(
            r.limit_for(Stage::Handle, "szcg-01-02", normal),
            Some(Limit::working_days(3))
        );
        assert_eq!(
            r.limit_for(Stage::Handle, "shzl-02-01", normal),
            Some(Limit::working_days(5))
        );
        // Urgency rules without a category apply to every category.
        assert_eq!(
            r.limit_for(Stage::Accept, "szcg-01-01", Urgency::Emergency),
            Some(Limit::minutes(5))
        );
        assert_eq!(
            r.limit_for(Stage::Accept, "szcg-01-01", normal),
            Some(Limit::minutes(20))
        );
        assert_eq!(
            LimitRules::default().limit_for(Stage::Case, "szcg-01", normal),
            None
        );
    }

    #[test]
    fn the_standard_extension_follows_the_category_lineage() {
        let extension = |category: Option<&str>, limit| ExtensionRule {
            category: category.map(str::to_owned),
            limit,
        };
        let r = rules().with_extensions(vec![
            extension(None, Limit::working_days(5)),
            extension(Some("szcg-01"), Limit::working_days(2)),
            extension(Some("szcg-01-01"), Limit::working_hours(4)),
        ]);
        assert_eq!(
            r.standard_extension("szcg-01-01"),
            Some(Limit::working_hours(4))
        );
        assert_eq!(
            r.standard_extension("szcg-01-02"),
            Some(Limit::working_days(2))
        );
        assert_eq!(
            r.standard_extension("shzl-02-01"),
            Some(Limit::working_days(5))
        );
        assert_eq!(r.extensions().len(), 3);
        // The limits are untouched, and without extension rules there is none.
        assert_eq!(
            r.limit_for(Stage::Handle, "szcg-01-01", Urgency::Normal),
            Some(Limit::working_hours(4))
        );
        assert_eq!(rules().standard_extension("szcg-01-01"), None);
    }

    #[test]
    fn skip_rules_apply_from_their_urgency_up_by_the_most_specific_category() {
        let skip = |category: &str, urgency| SkipRule {
            category: category.to_owned(),
            urgency,
        };
        let r = SkipRules::new(vec![
            // 突发事件: emergencies skip the street; a gas leak already when urgent.
            skip("szcg-04", Urgency::Emergency),
            skip("szcg-04-04", Urgency::Urgent),
            // 群体性事件: always.
            skip("shzl-02-05", Urgency::Normal),
        ]);
        assert!(!r.skips_street("szcg-04-04", Urgency::Normal));
        assert!(r.skips_street("szcg-04-04", Urgency::Urgent));
        assert!(r.skips_street("szcg-04-04", Urgency::Emergency));
        assert!(!r.skips_street("szcg-04-01", Urgency::Urgent));
        assert!(r.skips_street("szcg-04-01", Urgency::Emergency));
        assert!(r.skips_street("szcg-04", Urgency::Emergency));
        assert!(r.skips_street("shzl-02-05", Urgency::Normal));
        assert!(
            r.skips_street("shzl-02-05", Urgency::Unspecified),
            "no urgency given counts as normal"
        );
        assert!(!r.skips_street("shzl-02-01", Urgency::Emergency));
        assert!(!r.skips_street("szcg-01-01", Urgency::Emergency));
        // A 小类 may ask for more urgency than its 大类: its own rule decides.
        let stricter = SkipRules::new(vec![
            skip("szcg-04", Urgency::Urgent),
            skip("szcg-04-02", Urgency::Emergency),
        ]);
        assert!(!stricter.skips_street("szcg-04-02", Urgency::Urgent));
        assert!(stricter.skips_street("szcg-04-03", Urgency::Urgent));
        assert!(!SkipRules::default().skips_street("szcg-04-04", Urgency::Emergency));
    }

    #[test]
    fn urgencies_parse_by_their_seed_names() {
        for urgency in [Urgency::Normal, Urgency::Urgent, Urgency::Emergency] {
            assert_eq!(parse_urgency(urgency_name(urgency)), Ok(urgency));
        }
        assert!(parse_urgency("unspecified").is_err());
        assert!(parse_urgency("high").unwrap_err().contains("emergency"));
    }

    #[test]
    fn stages_parse_by_name() {
        for stage in Stage::ALL {
            assert_eq!(stage.name().parse::<Stage>(), Ok(stage));
        }
        assert!("closing".parse::<Stage>().unwrap_err().contains("accept"));
    }

    /// An event of `kind` at `hh:mm` China time on 24 November 2026 (a Tuesday), leading to `state`.
    fn event(seq: u64, hm: (u32, u32), state: State, kind: Kind) -> pb::CaseEvent {
        let at = crate::clock::china()
            .with_ymd_and_hms(2026, 11, 24, hm.0, hm.1, 0)
            .unwrap()
            .with_timezone(&Utc);
        pb::CaseEvent {
            seq,
            at: Some(prost_types::Timestamp {
                seconds: at.timestamp(),
                nanos: 0,
            }),
            state_after: state as i32,
            kind: Some(kind),
            ..Default::default()
        }
    }

    fn china(hm: (u32, u32)) -> DateTime<Utc> {
        crate::clock::china()
            .with_ymd_and_hms(2026, 11, 24, hm.0, hm.1, 0)
            .unwrap()
            .with_timezone(&Utc)
    }

    fn history() -> Vec<pb::CaseEvent> {
        vec![
            event(
                1,
                (9, 0),
                State::Reported,
                Kind::Reported(pb::Reported {
                    category_code: "szcg-01-01".into(),
                    urgency: Urgency::Normal as i32,
                    ..Default::default()
                }),
            ),
            event(2, (9, 10), State::Accepted, Kind::Accepted(pb::Accepted {})),
            event(
                3,
                (9, 15),
                State::Dispatched,
                Kind::Dispatched(pb::Dispatched::default()),
            ),
            event(
                4,
                (9, 30),
                State::InProgress,
                Kind::Signed(pb::Signed::default()),
            ),
        ]
    }

    #[test]
    fn the_stage_clock_starts_when_the_case_entered_its_stage() {
        let calendar = WorkCalendar::default();
        let history = history();
        // Handling (4 working hours for 暴露垃圾) since 09:30: at 12:00, 2.5 h used: green.
        let clocks = case_clocks(&history, &rules(), &calendar, china((12, 0)));
        let (stage, standing) = clocks.stage.unwrap();
        assert_eq!(stage, Stage::Handle);
        assert_eq!(standing.light, Light::Green);
        assert_eq!(standing.deadline.format("%H:%M").to_string(), "16:00");
        // At 15:45 (3.75 of 4 h): yellow; the whole case (10 working days) is still green.
        let clocks = case_clocks(&history, &rules(), &calendar, china((15, 45)));
        assert_eq!(clocks.stage.unwrap().1.light, Light::Yellow);
        assert_eq!(clocks.case.unwrap().light, Light::Green);
        // Just after the accept stage began, 20 minutes to file it.
        let clocks = case_clocks(&history[..1], &rules(), &calendar, china((9, 17)));
        let (stage, standing) = clocks.stage.unwrap();
        assert_eq!((stage, standing.light), (Stage::Accept, Light::Yellow));
    }

    #[test]
    fn a_finished_case_has_no_stage_clock_and_its_case_clock_stops() {
        let calendar = WorkCalendar::default();
        let mut history = history();
        history.push(event(
            5,
            (10, 0),
            State::Handled,
            Kind::Handled(pb::Handled::default()),
        ));
        history.push(event(
            6,
            (10, 30),
            State::Closed,
            Kind::Closed(pb::Closed::default()),
        ));
        let later = case_clocks(&history, &rules(), &calendar, china((17, 0)));
        let at_close = case_clocks(&history, &rules(), &calendar, china((10, 30)));
        assert_eq!(later.stage, None);
        assert_eq!(later.case, at_close.case);
        assert_eq!(later.case.unwrap().used, chrono::Duration::minutes(90));
    }
}
