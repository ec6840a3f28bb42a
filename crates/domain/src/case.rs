//! The case state machine: which event may follow which, who may append it, and the projection it
//! leads to.
//!
//! A case is an append-only sequence of events. Exactly one tier owns a case at a time and only the
//! owner appends; events that move the case between tiers (report, check, escalate) move ownership.
//! The same pure [`apply`] runs where an event is authored and wherever it is replicated, so every
//! tier holds the same projection.

use pb::case_event::Kind;
use pb::{CaseState as State, CheckOutcome, Tier};
use wangge_proto as pb;

use crate::codes::GridCode;

/// Why an event may not be appended to a case.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Refusal {
    /// The event itself is malformed (bad input, not a bad moment).
    #[error("{field}: {message}")]
    Malformed {
        field: &'static str,
        message: String,
    },
    #[error("case expects event {expected} next, got {got}")]
    OutOfOrder { expected: u64, got: u64 },
    #[error("the case is held by the {owner} tier ({org}), not by the {actor} tier")]
    NotOwner {
        owner: &'static str,
        org: String,
        actor: &'static str,
    },
    #[error("cannot {action} a case in state {state}")]
    IllegalTransition {
        action: &'static str,
        state: &'static str,
    },
    #[error("the case is dispatched to {held_by:?}, not to department {department}")]
    WrongDepartment { department: String, held_by: String },
    #[error("cannot close a case before an on-site check has passed (check: {outcome})")]
    NotChecked { outcome: &'static str },
    #[error("the {0} tier has no upper tier to escalate to")]
    NoUpperTier(&'static str),
    #[error("event says it leads to {claimed} but the state machine gives {computed}")]
    Diverged { claimed: String, computed: String },
}

impl Refusal {
    /// True when the fault lies in the request, not in the state of the case.
    pub fn is_bad_input(&self) -> bool {
        matches!(self, Refusal::Malformed { .. })
    }
}

fn malformed(field: &'static str, message: impl Into<String>) -> Refusal {
    Refusal::Malformed {
        field,
        message: message.into(),
    }
}

/// Lowercase name of a tier, for messages.
pub fn tier_name(tier: Tier) -> &'static str {
    match tier {
        Tier::Village => "village",
        Tier::Street => "street",
        Tier::District => "district",
        Tier::Unspecified => "unspecified",
    }
}

/// The tier a lowercase name stands for (the inverse of [`tier_name`]); unspecified for others.
pub fn tier_named(name: &str) -> Tier {
    match name {
        "village" => Tier::Village,
        "street" => Tier::Street,
        "district" => Tier::District,
        _ => Tier::Unspecified,
    }
}

/// Lowercase name of a state, for messages and the database.
pub fn state_name(state: State) -> &'static str {
    match state {
        State::Unspecified => "unspecified",
        State::Draft => "draft",
        State::Reported => "reported",
        State::Verifying => "verifying",
        State::Accepted => "accepted",
        State::Dispatched => "dispatched",
        State::InProgress => "in_progress",
        State::Handled => "handled",
        State::Checking => "checking",
        State::Closed => "closed",
        State::Hung => "hung",
        State::Rejected => "rejected",
        State::Void => "void",
        State::Merged => "merged",
        State::Archived => "archived",
        State::SelfHandled => "self_handled",
        State::Escalated => "escalated",
        State::ReturnRequested => "return_requested",
        State::DelayRequested => "delay_requested",
        State::HangRequested => "hang_requested",
    }
}

/// Short name of an event kind, for messages and the database.
pub fn kind_name(kind: &Kind) -> &'static str {
    match kind {
        Kind::Reported(_) => "reported",
        Kind::Accepted(_) => "accepted",
        Kind::Rejected(_) => "rejected",
        Kind::Dispatched(_) => "dispatched",
        Kind::Signed(_) => "signed",
        Kind::ReturnRequested(_) => "return_requested",
        Kind::Handled(_) => "handled",
        Kind::CheckRequested(_) => "check_requested",
        Kind::Checked(_) => "checked",
        Kind::Closed(_) => "closed",
        Kind::Escalated(_) => "escalated",
        Kind::SelfHandleApproved(_) => "self_handle_approved",
        Kind::SelfHandleRejected(_) => "self_handle_rejected",
        Kind::Reworked(_) => "reworked",
    }
}

fn action_name(kind: &Kind) -> &'static str {
    match kind {
        Kind::Reported(_) => "report",
        Kind::Accepted(_) => "accept",
        Kind::Rejected(_) => "reject",
        Kind::Dispatched(_) => "dispatch",
        Kind::Signed(_) => "sign for",
        Kind::ReturnRequested(_) => "return",
        Kind::Handled(_) => "report the handling of",
        Kind::CheckRequested(_) => "request a check of",
        Kind::Checked(_) => "confirm the check of",
        Kind::Closed(_) => "close",
        Kind::Escalated(_) => "escalate",
        Kind::SelfHandleApproved(_) => "approve the self-handling of",
        Kind::SelfHandleRejected(_) => "reject the self-handling of",
        Kind::Reworked(_) => "send back for rework",
    }
}

fn outcome_name(outcome: CheckOutcome) -> &'static str {
    match outcome {
        CheckOutcome::Unspecified => "none asked",
        CheckOutcome::Pending => "pending",
        CheckOutcome::Passed => "passed",
        CheckOutcome::Failed => "failed",
    }
}

/// The org a tier acts as for a case in a grid: the grid's community, street or district.
pub fn owner_for(tier: Tier, grid: &GridCode) -> pb::Owner {
    let org = match tier {
        Tier::Village => grid.community(),
        Tier::Street => grid.street(),
        Tier::District | Tier::Unspecified => grid.district(),
    };
    pb::Owner {
        tier: tier as i32,
        org_code: org.to_string(),
    }
}

/// The tier a case is escalated to from `tier`.
pub fn upper_tier(tier: Tier) -> Option<Tier> {
    match tier {
        Tier::Village => Some(Tier::Street),
        Tier::Street => Some(Tier::District),
        Tier::District | Tier::Unspecified => None,
    }
}

fn owner_tier(case: &pb::Case) -> Tier {
    case.owner.as_ref().map(|o| o.tier()).unwrap_or_default()
}

/// Applies `event` to `case` (None before the first event) and returns the case after it, or why
/// the event may not follow. Pure: the caller persists the result.
pub fn apply(case: Option<&pb::Case>, event: &pb::CaseEvent) -> Result<pb::Case, Refusal> {
    let kind = event
        .kind
        .as_ref()
        .ok_or_else(|| malformed("kind", "event has no kind"))?;
    let next = match (case, kind) {
        (None, Kind::Reported(report)) => open(event, report)?,
        (None, _) => {
            return Err(Refusal::OutOfOrder {
                expected: 1,
                got: event.seq,
            });
        }
        (Some(case), kind) => {
            if event.seq != case.version + 1 {
                return Err(Refusal::OutOfOrder {
                    expected: case.version + 1,
                    got: event.seq,
                });
            }
            let mut next = advance(case, event, kind)?;
            next.version = event.seq;
            next.updated_at = event.at;
            next
        }
    };
    Ok(next)
}

/// Like [`apply`], and also checks the state and owner the event claims to lead to: what a
/// receiving tier runs on a replicated event.
pub fn replay(case: Option<&pb::Case>, event: &pb::CaseEvent) -> Result<pb::Case, Refusal> {
    let next = apply(case, event)?;
    let computed = (next.state, next.owner.clone());
    let claimed = (event.state_after, event.owner_after.clone());
    if computed != claimed {
        return Err(Refusal::Diverged {
            claimed: format!("{claimed:?}"),
            computed: format!("{computed:?}"),
        });
    }
    Ok(next)
}

/// Fills in the state and owner the event leads to, after [`apply`] accepted it.
pub fn seal(event: &mut pb::CaseEvent, after: &pb::Case) {
    event.state_after = after.state;
    event.owner_after = after.owner.clone();
}

fn open(event: &pb::CaseEvent, report: &pb::Reported) -> Result<pb::Case, Refusal> {
    if event.seq != 1 {
        return Err(Refusal::OutOfOrder {
            expected: 1,
            got: event.seq,
        });
    }
    if event.tier() != Tier::Village {
        return Err(malformed("tier", "only the village tier takes reports"));
    }
    let grid: GridCode = report
        .grid_code
        .parse()
        .map_err(|e| malformed("grid_code", format!("{e}")))?;
    let (state, owner) = match report.self_handling {
        Some(_) => (State::SelfHandled, owner_for(Tier::Village, &grid)),
        None => (State::Reported, owner_for(Tier::Street, &grid)),
    };
    Ok(pb::Case {
        id: event.case_id.clone(),
        number: report.number.clone(),
        client_id: report.client_id.clone(),
        category_code: report.category_code.clone(),
        description: report.description.clone(),
        location: report.location,
        grid_code: grid.to_string(),
        community_code: grid.community().to_string(),
        street_code: grid.street().to_string(),
        district_code: grid.district().to_string(),
        state: state as i32,
        owner: Some(owner),
        department_code: String::new(),
        check_outcome: CheckOutcome::Unspecified as i32,
        urgency: report.urgency,
        supervision: pb::SupervisionLevel::None as i32,
        reporter: event.actor.clone(),
        captured_at: report.captured_at,
        reported_at: event.at,
        updated_at: event.at,
        version: 1,
        attachments: event.attachments.clone(),
        check_requested_by: Tier::Unspecified as i32,
        possible_duplicates: report.possible_duplicates.clone(),
    })
}

fn advance(case: &pb::Case, event: &pb::CaseEvent, kind: &Kind) -> Result<pb::Case, Refusal> {
    let owner = case.owner.clone().unwrap_or_default();
    let held_by = owner_tier(case);
    let acting = event.tier();
    if acting != held_by || event.org_code != owner.org_code {
        return Err(Refusal::NotOwner {
            owner: tier_name(held_by),
            org: owner.org_code,
            actor: tier_name(acting),
        });
    }
    let grid: GridCode = case
        .grid_code
        .parse()
        .map_err(|e| malformed("grid_code", format!("stored case has a bad grid: {e}")))?;
    let state = case.state();
    let illegal = || Refusal::IllegalTransition {
        action: action_name(kind),
        state: state_name(state),
    };
    let is_center = matches!(held_by, Tier::Street | Tier::District);
    let same_department = |department: &str| {
        if department == case.department_code {
            Ok(())
        } else {
            Err(Refusal::WrongDepartment {
                department: department.to_owned(),
                held_by: case.department_code.clone(),
            })
        }
    };

    let mut next = case.clone();
    next.attachments.extend(event.attachments.iter().cloned());
    match kind {
        Kind::Reported(_) => return Err(illegal()),
        Kind::Accepted(_) => match state {
            State::Reported | State::Escalated if is_center => next.state = State::Accepted as i32,
            _ => return Err(illegal()),
        },
        Kind::Rejected(rejected) => match state {
            State::Reported | State::Escalated if is_center => {
                require(&rejected.reason, "reason")?;
                next.state = State::Rejected as i32;
            }
            _ => return Err(illegal()),
        },
        Kind::Dispatched(dispatch) => match state {
            State::Accepted | State::ReturnRequested if is_center => {
                require(&dispatch.department_code, "department_code")?;
                next.state = State::Dispatched as i32;
                next.department_code = dispatch.department_code.clone();
                next.check_outcome = CheckOutcome::Unspecified as i32;
            }
            _ => return Err(illegal()),
        },
        Kind::Signed(signed) => match state {
            State::Dispatched => {
                same_department(&signed.department_code)?;
                next.state = State::InProgress as i32;
            }
            _ => return Err(illegal()),
        },
        Kind::ReturnRequested(returned) => match state {
            State::Dispatched | State::InProgress => {
                same_department(&returned.department_code)?;
                require(&returned.reason, "reason")?;
                next.state = State::ReturnRequested as i32;
                next.department_code = String::new();
            }
            _ => return Err(illegal()),
        },
        Kind::Handled(handled) => match state {
            State::InProgress => {
                same_department(&handled.department_code)?;
                require(&handled.result, "result")?;
                next.state = State::Handled as i32;
            }
            _ => return Err(illegal()),
        },
        Kind::CheckRequested(_) => match state {
            State::Handled if is_center => {
                next.state = State::Checking as i32;
                next.check_outcome = CheckOutcome::Pending as i32;
                next.check_requested_by = held_by as i32;
                next.owner = Some(owner_for(Tier::Village, &grid));
            }
            _ => return Err(illegal()),
        },
        Kind::Checked(checked) => match (state, case.check_outcome()) {
            (State::Checking, CheckOutcome::Pending) if held_by == Tier::Village => {
                next.check_outcome = if checked.passed {
                    CheckOutcome::Passed
                } else {
                    CheckOutcome::Failed
                } as i32;
                next.owner = Some(owner_for(case.check_requested_by(), &grid));
            }
            _ => return Err(illegal()),
        },
        Kind::Closed(_) => match (state, case.check_outcome()) {
            (State::Checking, CheckOutcome::Passed) if is_center => {
                next.state = State::Closed as i32
            }
            (State::Checking | State::Handled | State::InProgress | State::Dispatched, outcome)
                if is_center =>
            {
                return Err(Refusal::NotChecked {
                    outcome: outcome_name(outcome),
                });
            }
            _ => return Err(illegal()),
        },
        Kind::Reworked(rework) => match (state, case.check_outcome()) {
            (State::Checking, CheckOutcome::Failed) if is_center => {
                same_department(&rework.department_code)?;
                next.state = State::Dispatched as i32;
                next.check_outcome = CheckOutcome::Unspecified as i32;
            }
            _ => return Err(illegal()),
        },
        Kind::Escalated(escalated) => {
            let upper = upper_tier(held_by).filter(|_| is_center);
            match (state, upper) {
                (_, None) if is_center => return Err(Refusal::NoUpperTier(tier_name(held_by))),
                (State::Reported | State::Accepted | State::ReturnRequested, Some(upper)) => {
                    require(&escalated.reason, "reason")?;
                    next.state = State::Escalated as i32;
                    next.department_code = String::new();
                    next.owner = Some(owner_for(upper, &grid));
                }
                _ => return Err(illegal()),
            }
        }
        Kind::SelfHandleApproved(_) => match state {
            State::SelfHandled if held_by == Tier::Village => next.state = State::Closed as i32,
            _ => return Err(illegal()),
        },
        Kind::SelfHandleRejected(rejected) => match state {
            State::SelfHandled if held_by == Tier::Village => {
                require(&rejected.reason, "reason")?;
                next.state = State::Reported as i32;
                next.owner = Some(owner_for(Tier::Street, &grid));
            }
            _ => return Err(illegal()),
        },
    }
    Ok(next)
}

fn require(value: &str, field: &'static str) -> Result<(), Refusal> {
    if value.trim().is_empty() {
        Err(malformed(field, "must not be empty"))
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pb::case_event::Kind as K;

    const GRID: &str = "350205002006001";

    struct Log {
        case: Option<pb::Case>,
    }

    fn event(seq: u64, tier: Tier, kind: K) -> pb::CaseEvent {
        let grid: GridCode = GRID.parse().unwrap();
        pb::CaseEvent {
            event_id: format!("e{seq}"),
            case_id: "c1".into(),
            seq,
            tier: tier as i32,
            org_code: owner_for(tier, &grid).org_code,
            kind: Some(kind),
            ..Default::default()
        }
    }

    impl Log {
        fn report(self_handling: bool) -> Log {
            let report = pb::Reported {
                grid_code: GRID.into(),
                self_handling: self_handling.then(|| pb::SelfHandling {
                    resolution: "swept".into(),
                }),
                ..Default::default()
            };
            let case = apply(None, &event(1, Tier::Village, K::Reported(report))).unwrap();
            Log { case: Some(case) }
        }

        fn seq(&self) -> u64 {
            self.case.as_ref().map_or(1, |c| c.version + 1)
        }

        fn step(&mut self, tier: Tier, kind: K) -> Result<&pb::Case, Refusal> {
            let mut ev = event(self.seq(), tier, kind);
            let next = apply(self.case.as_ref(), &ev)?;
            seal(&mut ev, &next);
            // What a receiving tier runs must agree with the author.
            let replayed = replay(self.case.as_ref(), &ev)?;
            assert_eq!(replayed, next);
            self.case = Some(next);
            Ok(self.case.as_ref().unwrap())
        }

        fn state(&self) -> State {
            self.case.as_ref().unwrap().state()
        }

        fn owner(&self) -> Tier {
            owner_tier(self.case.as_ref().unwrap())
        }
    }

    fn dept(code: &str) -> String {
        code.to_owned()
    }

    #[test]
    fn a_report_goes_to_the_street_and_round_the_whole_loop() {
        let mut log = Log::report(false);
        assert_eq!((log.state(), log.owner()), (State::Reported, Tier::Street));
        log.step(Tier::Street, K::Accepted(pb::Accepted {}))
            .unwrap();
        let d = dept("350205002-cgzd");
        log.step(
            Tier::Street,
            K::Dispatched(pb::Dispatched {
                department_code: d.clone(),
            }),
        )
        .unwrap();
        log.step(
            Tier::Street,
            K::Signed(pb::Signed {
                department_code: d.clone(),
            }),
        )
        .unwrap();
        log.step(
            Tier::Street,
            K::Handled(pb::Handled {
                department_code: d,
                result: "done".into(),
            }),
        )
        .unwrap();
        log.step(
            Tier::Street,
            K::CheckRequested(pb::CheckRequested::default()),
        )
        .unwrap();
        assert_eq!((log.state(), log.owner()), (State::Checking, Tier::Village));
        log.step(Tier::Village, K::Checked(pb::Checked { passed: true }))
            .unwrap();
        assert_eq!(log.owner(), Tier::Street);
        let closed = log.step(Tier::Street, K::Closed(pb::Closed {})).unwrap();
        assert_eq!(closed.state(), State::Closed);
        assert_eq!(closed.version, 8);
    }

    #[test]
    fn closing_without_a_passed_check_is_refused() {
        let mut log = Log::report(false);
        let d = dept("350205002-cgzd");
        log.step(Tier::Street, K::Accepted(pb::Accepted {}))
            .unwrap();
        log.step(
            Tier::Street,
            K::Dispatched(pb::Dispatched {
                department_code: d.clone(),
            }),
        )
        .unwrap();
        log.step(
            Tier::Street,
            K::Signed(pb::Signed {
                department_code: d.clone(),
            }),
        )
        .unwrap();
        log.step(
            Tier::Street,
            K::Handled(pb::Handled {
                department_code: d.clone(),
                result: "x".into(),
            }),
        )
        .unwrap();
        let refused = log
            .step(Tier::Street, K::Closed(pb::Closed {}))
            .unwrap_err();
        assert!(matches!(refused, Refusal::NotChecked { .. }), "{refused}");
        log.step(
            Tier::Street,
            K::CheckRequested(pb::CheckRequested::default()),
        )
        .unwrap();
        // The case is with the village now: the street may not close it.
        let refused = log
            .step(Tier::Street, K::Closed(pb::Closed {}))
            .unwrap_err();
        assert!(matches!(refused, Refusal::NotOwner { .. }), "{refused}");
        log.step(Tier::Village, K::Checked(pb::Checked { passed: false }))
            .unwrap();
        let refused = log
            .step(Tier::Street, K::Closed(pb::Closed {}))
            .unwrap_err();
        assert!(
            matches!(refused, Refusal::NotChecked { outcome: "failed" }),
            "{refused}"
        );
        log.step(
            Tier::Street,
            K::Reworked(pb::Reworked { department_code: d }),
        )
        .unwrap();
        assert_eq!(log.state(), State::Dispatched);
    }

    #[test]
    fn escalation_moves_the_case_to_the_district_which_cannot_escalate_further() {
        let mut log = Log::report(false);
        log.step(Tier::Street, K::Accepted(pb::Accepted {}))
            .unwrap();
        let refused = log
            .step(Tier::Street, K::Escalated(pb::Escalated::default()))
            .unwrap_err();
        assert!(refused.is_bad_input(), "a reason is required: {refused}");
        log.step(
            Tier::Street,
            K::Escalated(pb::Escalated {
                reason: "beyond the street".into(),
            }),
        )
        .unwrap();
        assert_eq!(
            (log.state(), log.owner()),
            (State::Escalated, Tier::District)
        );
        let refused = log
            .step(Tier::Street, K::Accepted(pb::Accepted {}))
            .unwrap_err();
        assert!(
            matches!(
                refused,
                Refusal::NotOwner {
                    owner: "district",
                    ..
                }
            ),
            "{refused}"
        );
        log.step(Tier::District, K::Accepted(pb::Accepted {}))
            .unwrap();
        let refused = log
            .step(
                Tier::District,
                K::Escalated(pb::Escalated { reason: "x".into() }),
            )
            .unwrap_err();
        assert_eq!(refused, Refusal::NoUpperTier("district"));
    }

    #[test]
    fn a_returned_case_can_be_dispatched_again_and_others_cannot_sign_it() {
        let mut log = Log::report(false);
        log.step(Tier::Street, K::Accepted(pb::Accepted {}))
            .unwrap();
        let wrong = dept("350205002-pcs");
        let right = dept("350205002-cgzd");
        log.step(
            Tier::Street,
            K::Dispatched(pb::Dispatched {
                department_code: wrong.clone(),
            }),
        )
        .unwrap();
        let refused = log
            .step(
                Tier::Street,
                K::Signed(pb::Signed {
                    department_code: right.clone(),
                }),
            )
            .unwrap_err();
        assert!(
            matches!(refused, Refusal::WrongDepartment { .. }),
            "{refused}"
        );
        let refused = log
            .step(
                Tier::Street,
                K::ReturnRequested(pb::ReturnRequested {
                    department_code: wrong.clone(),
                    reason: " ".into(),
                }),
            )
            .unwrap_err();
        assert!(refused.is_bad_input());
        log.step(
            Tier::Street,
            K::ReturnRequested(pb::ReturnRequested {
                department_code: wrong,
                reason: "not ours".into(),
            }),
        )
        .unwrap();
        assert_eq!(log.state(), State::ReturnRequested);
        log.step(
            Tier::Street,
            K::Dispatched(pb::Dispatched {
                department_code: right.clone(),
            }),
        )
        .unwrap();
        log.step(
            Tier::Street,
            K::Signed(pb::Signed {
                department_code: right,
            }),
        )
        .unwrap();
        assert_eq!(log.state(), State::InProgress);
    }

    #[test]
    fn self_handled_cases_stay_with_the_community_until_reviewed() {
        let mut log = Log::report(true);
        assert_eq!(
            (log.state(), log.owner()),
            (State::SelfHandled, Tier::Village)
        );
        let refused = log
            .step(Tier::Street, K::Accepted(pb::Accepted {}))
            .unwrap_err();
        assert!(matches!(refused, Refusal::NotOwner { .. }));
        log.step(
            Tier::Village,
            K::SelfHandleApproved(pb::SelfHandleApproved {}),
        )
        .unwrap();
        assert_eq!(log.state(), State::Closed);

        let mut log = Log::report(true);
        log.step(
            Tier::Village,
            K::SelfHandleRejected(pb::SelfHandleRejected {
                reason: "too big".into(),
            }),
        )
        .unwrap();
        assert_eq!((log.state(), log.owner()), (State::Reported, Tier::Street));
    }

    #[test]
    fn events_apply_only_in_sequence() {
        let log = Log::report(false);
        let case = log.case.as_ref().unwrap();
        let skipped = event(3, Tier::Street, K::Accepted(pb::Accepted {}));
        assert_eq!(
            apply(Some(case), &skipped),
            Err(Refusal::OutOfOrder {
                expected: 2,
                got: 3
            })
        );
        let again = event(1, Tier::Street, K::Accepted(pb::Accepted {}));
        assert!(matches!(
            apply(Some(case), &again),
            Err(Refusal::OutOfOrder { .. })
        ));
        let orphan = event(2, Tier::Street, K::Accepted(pb::Accepted {}));
        assert!(matches!(
            apply(None, &orphan),
            Err(Refusal::OutOfOrder { expected: 1, .. })
        ));
    }

    #[test]
    fn a_replayed_event_that_claims_another_outcome_is_refused() {
        let log = Log::report(false);
        let mut ev = event(2, Tier::Street, K::Accepted(pb::Accepted {}));
        ev.state_after = State::Closed as i32;
        assert!(matches!(
            replay(log.case.as_ref(), &ev),
            Err(Refusal::Diverged { .. })
        ));
    }
}
