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
use crate::limits::Stage;

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
    #[error("the {0} tier has no lower center to hand a case down to")]
    NoLowerCenter(&'static str),
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
        State::VoidRequested => "void_requested",
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
        Kind::VerifyRequested(_) => "verify_requested",
        Kind::Verified(_) => "verified",
        Kind::VoidRequested(_) => "void_requested",
        Kind::VoidApproved(_) => "void_approved",
        Kind::VoidDenied(_) => "void_denied",
        Kind::DelayRequested(_) => "delay_requested",
        Kind::DelayApproved(_) => "delay_approved",
        Kind::DelayDenied(_) => "delay_denied",
        Kind::HangRequested(_) => "hang_requested",
        Kind::HangApproved(_) => "hang_approved",
        Kind::HangDenied(_) => "hang_denied",
        Kind::Resumed(_) => "resumed",
        Kind::ReturnApproved(_) => "return_approved",
        Kind::ReturnDenied(_) => "return_denied",
        Kind::Reopened(_) => "reopened",
        Kind::Archived(_) => "archived",
        Kind::Merged(_) => "merged",
        Kind::MergeReceived(_) => "merge_received",
        Kind::Supervised(_) => "supervised",
    }
}

fn action_name(kind: &Kind) -> &'static str {
    match kind {
        Kind::Reported(_) => "report",
        Kind::Accepted(_) => "accept",
        Kind::Rejected(_) => "reject",
        Kind::Dispatched(d) if d.to_tier() != Tier::Unspecified => "hand down",
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
        Kind::VerifyRequested(_) => "ask for the verification of",
        Kind::Verified(_) => "confirm the verification of",
        Kind::VoidRequested(_) => "ask to void",
        Kind::VoidApproved(_) | Kind::VoidDenied(_) => "decide on voiding",
        Kind::DelayRequested(_) => "ask for an extension of",
        Kind::DelayApproved(_) | Kind::DelayDenied(_) => "decide on an extension of",
        Kind::HangRequested(_) => "ask to hang",
        Kind::HangApproved(_) | Kind::HangDenied(_) => "decide on hanging",
        Kind::Resumed(_) => "resume",
        Kind::ReturnApproved(_) | Kind::ReturnDenied(_) => "decide on the return of",
        Kind::Reopened(_) => "reopen",
        Kind::Archived(_) => "archive",
        Kind::Merged(_) => "merge",
        Kind::MergeReceived(_) => "merge another case into",
        Kind::Supervised(_) => "supervise",
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

/// The tier below `tier`.
pub fn lower_tier(tier: Tier) -> Option<Tier> {
    match tier {
        Tier::District => Some(Tier::Street),
        Tier::Street => Some(Tier::Village),
        Tier::Village | Tier::Unspecified => None,
    }
}

/// The tier whose center a case is handed down to (交办) from `tier`: the district hands down to
/// the street. The village has no command center to dispatch to departments.
pub fn lower_center(tier: Tier) -> Option<Tier> {
    match tier {
        Tier::District => Some(Tier::Street),
        Tier::Street | Tier::Village | Tier::Unspecified => None,
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
    let (state, owner) = match (&report.self_handling, report.skip_street) {
        (Some(_), true) => {
            return Err(malformed(
                "self_handling",
                "a case handled on the spot does not skip the street",
            ));
        }
        (Some(_), false) => (State::SelfHandled, owner_for(Tier::Village, &grid)),
        (None, false) => (State::Reported, owner_for(Tier::Street, &grid)),
        // 越级上报: straight to the district; the street holds it too.
        (None, true) => (State::Reported, owner_for(Tier::District, &grid)),
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
        resumes_to: State::Unspecified as i32,
        rework_count: 0,
        extensions: Vec::new(),
        requested_extension: None,
        stage_started_at: event.at,
        pauses: Vec::new(),
        merged_into: String::new(),
        merged: Vec::new(),
        supervisions: Vec::new(),
        skipped_street: report.skip_street,
        clocks: None,
        round_extensions_from: 0,
        delay_requests: 0,
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
    // The arms follow the state table of the domain brief (section 3). Where they go beyond it,
    // a comment says why: ESCALATED is the upper center's 待受理 (its REPORTED), so what the
    // table lets a center do with a fresh report it may do with an escalated one.
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
        Kind::Dispatched(dispatch) if dispatch.to_tier() != Tier::Unspecified => {
            // 交办: handed down to the lower tier's center, which holds it without a department
            // until it dispatches it to one of its own.
            if !dispatch.department_code.is_empty() {
                return Err(malformed(
                    "department_code",
                    "a case handed down to a lower tier names no department",
                ));
            }
            let lower = lower_center(held_by).filter(|_| is_center);
            match (state, lower) {
                (State::Accepted, Some(lower)) if lower == dispatch.to_tier() => {
                    next.state = State::Dispatched as i32;
                    next.department_code = String::new();
                    next.check_outcome = CheckOutcome::Unspecified as i32;
                    next.owner = Some(owner_for(lower, &grid));
                }
                (State::Accepted, Some(_)) => {
                    return Err(malformed("to_tier", "the case goes to the next tier down"));
                }
                (_, None) if is_center => {
                    return Err(Refusal::NoLowerCenter(tier_name(held_by)));
                }
                _ => return Err(illegal()),
            }
        }
        Kind::Dispatched(dispatch) => {
            // 派遣 of a filed case, or of one handed down to this center (no department yet).
            let dispatchable = match state {
                State::Accepted => true,
                State::Dispatched => case.department_code.is_empty(),
                _ => false,
            };
            if !(dispatchable && is_center) {
                return Err(illegal());
            }
            require(&dispatch.department_code, "department_code")?;
            next.state = State::Dispatched as i32;
            next.department_code = dispatch.department_code.clone();
            next.check_outcome = CheckOutcome::Unspecified as i32;
        }
        Kind::Signed(signed) => match state {
            // A case handed down to a center is not a department's to sign for.
            State::Dispatched if !case.department_code.is_empty() => {
                same_department(&signed.department_code)?;
                next.state = State::InProgress as i32;
            }
            _ => return Err(illegal()),
        },
        Kind::ReturnRequested(returned) => match state {
            // 回退 before signing: once signed for, the department has accepted the remit.
            State::Dispatched if !case.department_code.is_empty() => {
                same_department(&returned.department_code)?;
                require(&returned.reason, "reason")?;
                request(&mut next, State::ReturnRequested, state);
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
                next.rework_count += 1;
                // A new round of handling: earlier extensions were for the earlier round.
                next.round_extensions_from = next.extensions.len() as u32;
            }
            _ => return Err(illegal()),
        },
        Kind::Escalated(escalated) => {
            let upper = upper_tier(held_by).filter(|_| is_center);
            match (state, upper) {
                (_, None) if is_center => return Err(Refusal::NoUpperTier(tier_name(held_by))),
                // The table has 上报 from ACCEPTED and IN_PROGRESS (a case the department cannot
                // handle). Kept beyond it: from REPORTED, a report outside the street's remit
                // passed up without filing it (the practice of 上报 of a 待受理 report).
                (State::Reported | State::Accepted | State::InProgress, Some(upper)) => {
                    require(&escalated.reason, "reason")?;
                    next.state = State::Escalated as i32;
                    next.department_code = String::new();
                    next.owner = Some(owner_for(upper, &grid));
                    // The upper center's handling is a new round: earlier extensions were for
                    // the department that gave it up.
                    next.round_extensions_from = next.extensions.len() as u32;
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
        Kind::VerifyRequested(_) => match state {
            State::Reported | State::Escalated if is_center => {
                next.state = State::Verifying as i32;
                next.check_requested_by = held_by as i32;
                next.owner = Some(owner_for(Tier::Village, &grid));
            }
            _ => return Err(illegal()),
        },
        Kind::Verified(verified) => match state {
            State::Verifying if held_by == Tier::Village => {
                next.state = if verified.genuine {
                    State::Accepted
                } else {
                    State::Rejected
                } as i32;
                next.owner = Some(owner_for(case.check_requested_by(), &grid));
            }
            _ => return Err(illegal()),
        },
        Kind::VoidRequested(void) => match state {
            State::Accepted if is_center => {
                require(&void.reason, "reason")?;
                request(&mut next, State::VoidRequested, state);
            }
            _ => return Err(illegal()),
        },
        Kind::VoidApproved(_) => match state {
            State::VoidRequested if is_center => decide(&mut next, Some(State::Void)),
            _ => return Err(illegal()),
        },
        Kind::ReturnApproved(_) => match state {
            State::ReturnRequested if is_center => {
                // Back to the center, which dispatches it again.
                decide(&mut next, Some(State::Accepted));
                next.department_code = String::new();
            }
            _ => return Err(illegal()),
        },
        Kind::DelayRequested(delay) => match state {
            State::InProgress => {
                same_department(&delay.department_code)?;
                require(&delay.reason, "reason")?;
                let extension = delay
                    .extension
                    .filter(|e| e.amount > 0 && e.unit() != pb::TimeUnit::Unspecified)
                    .ok_or_else(|| malformed("extension", "needs an amount above 0 and a unit"))?;
                request(&mut next, State::DelayRequested, state);
                next.requested_extension = Some(extension);
                next.delay_requests += 1;
            }
            _ => return Err(illegal()),
        },
        Kind::DelayApproved(approved) => match state {
            State::DelayRequested if is_center => {
                if approved.extension != case.requested_extension {
                    return Err(malformed(
                        "extension",
                        "an approval grants the extension that was asked for",
                    ));
                }
                decide(&mut next, None);
                next.extensions.extend(case.requested_extension);
                next.requested_extension = None;
            }
            _ => return Err(illegal()),
        },
        Kind::HangRequested(hang) => match state {
            State::InProgress => {
                same_department(&hang.department_code)?;
                require(&hang.reason, "reason")?;
                request(&mut next, State::HangRequested, state);
            }
            _ => return Err(illegal()),
        },
        Kind::HangApproved(_) => match state {
            State::HangRequested if is_center => {
                decide(&mut next, Some(State::Hung));
                next.pauses.push(pb::Pause {
                    from: event.at,
                    until: None,
                });
            }
            _ => return Err(illegal()),
        },
        Kind::Resumed(_) => match state {
            State::Hung if is_center => {
                next.state = State::InProgress as i32;
                if let Some(pause) = next.pauses.last_mut() {
                    pause.until = event.at;
                }
            }
            _ => return Err(illegal()),
        },
        Kind::VoidDenied(pb::VoidDenied { reason })
        | Kind::ReturnDenied(pb::ReturnDenied { reason })
        | Kind::DelayDenied(pb::DelayDenied { reason })
        | Kind::HangDenied(pb::HangDenied { reason }) => {
            let asked = match kind {
                Kind::VoidDenied(_) => State::VoidRequested,
                Kind::ReturnDenied(_) => State::ReturnRequested,
                Kind::DelayDenied(_) => State::DelayRequested,
                _ => State::HangRequested,
            };
            if state != asked || !is_center {
                return Err(illegal());
            }
            require(reason, "reason")?;
            decide(&mut next, None);
            next.requested_extension = None;
        }
        Kind::Reopened(reopened) => match state {
            State::Closed if is_center => {
                require(&reopened.reason, "reason")?;
                next.state = State::Accepted as i32;
                next.department_code = String::new();
                next.check_outcome = CheckOutcome::Unspecified as i32;
                next.round_extensions_from = next.extensions.len() as u32;
            }
            _ => return Err(illegal()),
        },
        Kind::Archived(archived) => match state {
            // The table names ARCHIVED (备案) terminal without saying from where: a report filed
            // for the record without handling, or a closed case put on record.
            State::Reported | State::Escalated | State::Closed if is_center => {
                require(&archived.reason, "reason")?;
                next.state = State::Archived as i32;
            }
            _ => return Err(illegal()),
        },
        Kind::Merged(merged) => match state {
            // A duplicate is merged before it is filed: from REPORTED, or ESCALATED, the upper
            // center's 待受理.
            State::Reported | State::Escalated if is_center => {
                require(&merged.into_case_id, "into_case_id")?;
                if merged.into_case_id == case.id {
                    return Err(malformed(
                        "into_case_id",
                        "a case cannot be merged into itself",
                    ));
                }
                next.state = State::Merged as i32;
                next.merged_into = merged.into_case_id.clone();
            }
            _ => return Err(illegal()),
        },
        Kind::MergeReceived(received) => {
            if !is_center || is_finished(state) {
                return Err(illegal());
            }
            require(&received.case_id, "case_id")?;
            next.merged.push(pb::MergedCase {
                case_id: received.case_id.clone(),
                number: received.number.clone(),
                reporter: received.reporter.clone(),
            });
        }
        Kind::Supervised(supervised) => {
            let level = supervised.level();
            if !matches!(
                level,
                pb::SupervisionLevel::Normal
                    | pb::SupervisionLevel::Yellow
                    | pb::SupervisionLevel::Red
            ) {
                return Err(malformed("level", "must be normal, yellow or red"));
            }
            let current = Stage::of_state(state).ok_or_else(illegal)?;
            if supervised.stage() != stage_of(current) {
                return Err(malformed(
                    "stage",
                    format!("the case is in the {current} stage"),
                ));
            }
            if next.supervision < level as i32 {
                next.supervision = level as i32;
            }
            next.supervisions.push(pb::Supervision {
                level: level as i32,
                stage: supervised.stage,
                automatic: supervised.automatic,
                stage_started_at: supervised.stage_started_at,
                at: event.at,
                by: event.actor.clone(),
            });
        }
    }
    // An escalation starts the accept stage again at the upper center; a dispatch of a case
    // handed down starts the sign stage again for the department.
    let restarts = matches!(kind, Kind::Escalated(_) | Kind::Dispatched(_));
    if restarts || Stage::of_state(next.state()) != Stage::of_state(state) {
        next.stage_started_at = event.at;
    }
    Ok(next)
}

/// A request that awaits a decision: the case waits in `pending`, a denial returns it to `from`.
fn request(next: &mut pb::Case, pending: State, from: State) {
    next.state = pending as i32;
    next.resumes_to = from as i32;
}

/// Decides the pending request: on to `approved`, or back to where it was asked (None).
fn decide(next: &mut pb::Case, approved: Option<State>) {
    let back = next.resumes_to();
    next.state = approved.unwrap_or(back) as i32;
    next.resumes_to = State::Unspecified as i32;
}

/// True for the states no further work follows (a closed case may still be reopened).
pub fn is_finished(state: State) -> bool {
    matches!(
        state,
        State::Closed | State::Rejected | State::Void | State::Merged | State::Archived
    )
}

/// The API's name of a stage.
pub fn stage_of(stage: Stage) -> pb::Stage {
    match stage {
        Stage::Accept => pb::Stage::Accept,
        Stage::Dispatch => pb::Stage::Dispatch,
        Stage::Sign => pb::Stage::Sign,
        Stage::Handle => pb::Stage::Handle,
        Stage::Check => pb::Stage::Check,
        Stage::Case => pb::Stage::Case,
    }
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
                ..Default::default()
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
                ..Default::default()
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
    fn a_case_its_department_cannot_handle_is_escalated_while_in_progress() {
        let d = dept("350205002-cgzd");
        let mut log = Log::report(false);
        accepted_and_signed(&mut log, &d);
        let escalated = log
            .step(
                Tier::Street,
                K::Escalated(pb::Escalated {
                    reason: "需区级多部门联合处置".into(),
                }),
            )
            .unwrap();
        assert_eq!(
            (escalated.state(), owner_tier(escalated)),
            (State::Escalated, Tier::District)
        );
        assert_eq!(escalated.department_code, "");
        // The street's department has given it up: it can no longer report it handled.
        assert!(matches!(
            log.step(
                Tier::Street,
                K::Handled(pb::Handled {
                    department_code: d,
                    result: "done".into(),
                })
            ),
            Err(Refusal::NotOwner { .. })
        ));
        log.step(Tier::District, K::Accepted(pb::Accepted {}))
            .unwrap();
        assert_eq!(log.state(), State::Accepted);
    }

    #[test]
    fn the_district_hands_a_case_down_to_the_street_which_dispatches_it() {
        let street_department = dept("350205002-cgzd");
        let mut log = Log::report(false);
        log.step(
            Tier::Street,
            K::Escalated(pb::Escalated {
                reason: "区级统筹".into(),
            }),
        )
        .unwrap();
        log.step(Tier::District, K::Accepted(pb::Accepted {}))
            .unwrap();
        let down = |to: Tier, department: &str| {
            K::Dispatched(pb::Dispatched {
                department_code: department.to_owned(),
                to_tier: to as i32,
            })
        };
        // 交办 names the next tier down and no department.
        assert!(
            log.step(Tier::District, down(Tier::Village, ""))
                .unwrap_err()
                .is_bad_input()
        );
        assert!(
            log.step(Tier::District, down(Tier::Street, &street_department))
                .unwrap_err()
                .is_bad_input()
        );
        let handed = log.step(Tier::District, down(Tier::Street, "")).unwrap();
        assert_eq!(
            (
                handed.state(),
                owner_tier(handed),
                handed.department_code.as_str()
            ),
            (State::Dispatched, Tier::Street, "")
        );
        // Dispatched to the street's center: no department signs for it or sends it back, and
        // the street hands nothing further down.
        assert!(matches!(
            log.step(
                Tier::Street,
                K::Signed(pb::Signed {
                    department_code: String::new(),
                })
            ),
            Err(Refusal::IllegalTransition { .. })
        ));
        assert!(matches!(
            log.step(
                Tier::Street,
                K::ReturnRequested(pb::ReturnRequested {
                    department_code: String::new(),
                    reason: "x".into(),
                })
            ),
            Err(Refusal::IllegalTransition { .. })
        ));
        assert_eq!(
            log.step(Tier::Street, down(Tier::Village, "")),
            Err(Refusal::NoLowerCenter("street"))
        );
        log.step(
            Tier::Street,
            K::Dispatched(pb::Dispatched {
                department_code: street_department.clone(),
                to_tier: Tier::Unspecified as i32,
            }),
        )
        .unwrap();
        assert_eq!(
            (log.state(), log.owner()),
            (State::Dispatched, Tier::Street)
        );
        // Now dispatched to a department: not again until it is returned.
        assert!(matches!(
            log.step(
                Tier::Street,
                K::Dispatched(pb::Dispatched {
                    department_code: dept("350205002-sz"),
                    to_tier: 0,
                })
            ),
            Err(Refusal::IllegalTransition { .. })
        ));
        log.step(
            Tier::Street,
            K::Signed(pb::Signed {
                department_code: street_department,
            }),
        )
        .unwrap();
        assert_eq!(log.state(), State::InProgress);
    }

    #[test]
    fn a_case_is_returned_only_before_it_is_signed_and_merged_only_before_it_is_filed() {
        let d = dept("350205002-cgzd");
        let mut log = Log::report(false);
        log.step(Tier::Street, K::Accepted(pb::Accepted {}))
            .unwrap();
        let merge = K::Merged(pb::Merged {
            into_case_id: "c2".into(),
            into_number: "n2".into(),
        });
        assert!(matches!(
            log.step(Tier::Street, merge),
            Err(Refusal::IllegalTransition { .. })
        ));
        log.step(
            Tier::Street,
            K::Dispatched(pb::Dispatched {
                department_code: d.clone(),
                to_tier: 0,
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
        assert!(matches!(
            log.step(
                Tier::Street,
                K::ReturnRequested(pb::ReturnRequested {
                    department_code: d,
                    reason: "not ours".into(),
                })
            ),
            Err(Refusal::IllegalTransition { .. })
        ));
    }

    #[test]
    fn every_delay_request_is_counted_granted_or_not() {
        let d = dept("350205002-cgzd");
        let mut log = Log::report(false);
        accepted_and_signed(&mut log, &d);
        let ask = || {
            K::DelayRequested(pb::DelayRequested {
                department_code: d.clone(),
                extension: Some(pb::TimeLimit {
                    amount: 1,
                    unit: pb::TimeUnit::WorkingDays as i32,
                }),
                reason: "materials".into(),
            })
        };
        assert_eq!(log.step(Tier::Street, ask()).unwrap().delay_requests, 1);
        log.step(
            Tier::Street,
            K::DelayDenied(pb::DelayDenied {
                reason: "no".into(),
            }),
        )
        .unwrap();
        let again = log.step(Tier::Street, ask()).unwrap();
        assert_eq!((again.delay_requests, again.extensions.len()), (2, 0));
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
                ..Default::default()
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
        // Nothing is dispatched again before the duty chief agrees.
        let refused = log
            .step(
                Tier::Street,
                K::Dispatched(pb::Dispatched {
                    department_code: right.clone(),
                    ..Default::default()
                }),
            )
            .unwrap_err();
        assert!(matches!(refused, Refusal::IllegalTransition { .. }));
        log.step(Tier::Street, K::ReturnApproved(pb::ReturnApproved {}))
            .unwrap();
        assert_eq!(log.state(), State::Accepted);
        assert_eq!(log.case.as_ref().unwrap().department_code, "");
        log.step(
            Tier::Street,
            K::Dispatched(pb::Dispatched {
                department_code: right.clone(),
                ..Default::default()
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

    fn accepted_and_signed(log: &mut Log, d: &str) {
        log.step(Tier::Street, K::Accepted(pb::Accepted {}))
            .unwrap();
        log.step(
            Tier::Street,
            K::Dispatched(pb::Dispatched {
                department_code: d.to_owned(),
                ..Default::default()
            }),
        )
        .unwrap();
        log.step(
            Tier::Street,
            K::Signed(pb::Signed {
                department_code: d.to_owned(),
            }),
        )
        .unwrap();
    }

    fn at(seconds: i64) -> Option<prost_types::Timestamp> {
        Some(prost_types::Timestamp { seconds, nanos: 0 })
    }

    #[test]
    fn a_verification_files_or_rejects_the_report_by_the_answer() {
        for (genuine, after) in [(true, State::Accepted), (false, State::Rejected)] {
            let mut log = Log::report(false);
            log.step(
                Tier::Street,
                K::VerifyRequested(pb::VerifyRequested::default()),
            )
            .unwrap();
            assert_eq!(
                (log.state(), log.owner()),
                (State::Verifying, Tier::Village)
            );
            // The street waits for the answer; it cannot file meanwhile.
            assert!(matches!(
                log.step(Tier::Street, K::Accepted(pb::Accepted {})),
                Err(Refusal::NotOwner { .. })
            ));
            log.step(Tier::Village, K::Verified(pb::Verified { genuine }))
                .unwrap();
            assert_eq!((log.state(), log.owner()), (after, Tier::Street));
        }
    }

    #[test]
    fn a_void_needs_a_decision_and_a_denial_goes_back() {
        let mut log = Log::report(false);
        log.step(Tier::Street, K::Accepted(pb::Accepted {}))
            .unwrap();
        assert!(
            log.step(Tier::Street, K::VoidRequested(pb::VoidRequested::default()))
                .unwrap_err()
                .is_bad_input()
        );
        log.step(
            Tier::Street,
            K::VoidRequested(pb::VoidRequested {
                reason: "a test report".into(),
            }),
        )
        .unwrap();
        assert_eq!(log.state(), State::VoidRequested);
        assert!(
            log.step(Tier::Street, K::VoidDenied(pb::VoidDenied::default()))
                .unwrap_err()
                .is_bad_input(),
            "a denial says why"
        );
        log.step(
            Tier::Street,
            K::VoidDenied(pb::VoidDenied {
                reason: "it is real".into(),
            }),
        )
        .unwrap();
        assert_eq!(log.state(), State::Accepted);
        log.step(
            Tier::Street,
            K::VoidRequested(pb::VoidRequested { reason: "x".into() }),
        )
        .unwrap();
        log.step(Tier::Street, K::VoidApproved(pb::VoidApproved {}))
            .unwrap();
        assert_eq!(log.state(), State::Void);
        assert!(matches!(
            log.step(Tier::Street, K::VoidApproved(pb::VoidApproved {})),
            Err(Refusal::IllegalTransition { .. })
        ));
    }

    #[test]
    fn an_approved_delay_adds_its_extension_and_a_denied_one_does_not() {
        let d = dept("350205002-cgzd");
        let mut log = Log::report(false);
        accepted_and_signed(&mut log, &d);
        let two_days = pb::TimeLimit {
            amount: 2,
            unit: pb::TimeUnit::WorkingDays as i32,
        };
        let ask = |extension| {
            K::DelayRequested(pb::DelayRequested {
                department_code: d.clone(),
                extension,
                reason: "materials".into(),
            })
        };
        assert!(
            log.step(Tier::Street, ask(None))
                .unwrap_err()
                .is_bad_input()
        );
        log.step(Tier::Street, ask(Some(two_days))).unwrap();
        assert_eq!(log.state(), State::DelayRequested);
        // Only what was asked for can be granted.
        let other = pb::TimeLimit {
            amount: 5,
            ..two_days
        };
        assert!(
            log.step(
                Tier::Street,
                K::DelayApproved(pb::DelayApproved {
                    extension: Some(other)
                })
            )
            .unwrap_err()
            .is_bad_input()
        );
        let case = log
            .step(
                Tier::Street,
                K::DelayApproved(pb::DelayApproved {
                    extension: Some(two_days),
                }),
            )
            .unwrap();
        assert_eq!(case.state(), State::InProgress);
        assert_eq!(case.extensions, vec![two_days]);
        assert_eq!(case.requested_extension, None);
        log.step(Tier::Street, ask(Some(two_days))).unwrap();
        let case = log
            .step(
                Tier::Street,
                K::DelayDenied(pb::DelayDenied {
                    reason: "no".into(),
                }),
            )
            .unwrap();
        assert_eq!(case.state(), State::InProgress);
        assert_eq!(case.extensions.len(), 1);
    }

    #[test]
    fn a_hung_case_pauses_until_it_is_resumed() {
        let d = dept("350205002-cgzd");
        let mut log = Log::report(false);
        accepted_and_signed(&mut log, &d);
        log.step(
            Tier::Street,
            K::HangRequested(pb::HangRequested {
                department_code: d.clone(),
                reason: "the rainy season".into(),
            }),
        )
        .unwrap();
        let mut ev = event(
            log.seq(),
            Tier::Street,
            K::HangApproved(pb::HangApproved {}),
        );
        ev.at = at(1_000);
        let hung = apply(log.case.as_ref(), &ev).unwrap();
        assert_eq!(hung.state(), State::Hung);
        assert_eq!(
            hung.pauses,
            vec![pb::Pause {
                from: at(1_000),
                until: None
            }]
        );
        // A hung case is not handled until it is resumed.
        let mut handled = event(
            log.seq() + 1,
            Tier::Street,
            K::Handled(pb::Handled {
                department_code: d,
                result: "done".into(),
            }),
        );
        handled.at = at(2_000);
        assert!(matches!(
            apply(Some(&hung), &handled),
            Err(Refusal::IllegalTransition { .. })
        ));
        let mut resume = event(log.seq() + 1, Tier::Street, K::Resumed(pb::Resumed {}));
        resume.at = at(5_000);
        let resumed = apply(Some(&hung), &resume).unwrap();
        assert_eq!(resumed.state(), State::InProgress);
        assert_eq!(
            resumed.pauses,
            vec![pb::Pause {
                from: at(1_000),
                until: at(5_000)
            }]
        );
    }

    #[test]
    fn rework_is_counted_and_a_closed_case_can_be_reopened_or_archived() {
        let d = dept("350205002-cgzd");
        let mut log = Log::report(false);
        accepted_and_signed(&mut log, &d);
        let handle_and_check = |log: &mut Log, passed| {
            log.step(
                Tier::Street,
                K::Handled(pb::Handled {
                    department_code: d.clone(),
                    result: "done".into(),
                }),
            )
            .unwrap();
            log.step(
                Tier::Street,
                K::CheckRequested(pb::CheckRequested::default()),
            )
            .unwrap();
            log.step(Tier::Village, K::Checked(pb::Checked { passed }))
                .unwrap();
        };
        handle_and_check(&mut log, false);
        log.step(
            Tier::Street,
            K::Reworked(pb::Reworked {
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
        handle_and_check(&mut log, true);
        let closed = log.step(Tier::Street, K::Closed(pb::Closed {})).unwrap();
        assert_eq!(closed.rework_count, 1);
        log.step(
            Tier::Street,
            K::Reopened(pb::Reopened {
                reason: "it came back".into(),
            }),
        )
        .unwrap();
        assert_eq!(log.state(), State::Accepted);
        let mut log = Log::report(false);
        log.step(
            Tier::Street,
            K::Archived(pb::Archived {
                reason: "for the record".into(),
            }),
        )
        .unwrap();
        assert_eq!(log.state(), State::Archived);
    }

    #[test]
    fn a_merged_case_points_at_the_case_it_follows() {
        let mut log = Log::report(false);
        assert!(
            log.step(
                Tier::Street,
                K::Merged(pb::Merged {
                    into_case_id: "c1".into(),
                    into_number: "n".into(),
                })
            )
            .unwrap_err()
            .is_bad_input()
        );
        let merged = log
            .step(
                Tier::Street,
                K::Merged(pb::Merged {
                    into_case_id: "c2".into(),
                    into_number: "n2".into(),
                }),
            )
            .unwrap();
        assert_eq!(
            (merged.state(), merged.merged_into.as_str()),
            (State::Merged, "c2")
        );
        assert!(matches!(
            log.step(
                Tier::Street,
                K::MergeReceived(pb::MergeReceived {
                    case_id: "c3".into(),
                    ..Default::default()
                })
            ),
            Err(Refusal::IllegalTransition { .. })
        ));
    }

    #[test]
    fn supervision_raises_the_level_in_the_current_stage_only() {
        let mut log = Log::report(false);
        let supervise = |level: pb::SupervisionLevel, stage: pb::Stage| {
            K::Supervised(pb::Supervised {
                level: level as i32,
                stage: stage as i32,
                automatic: true,
                stage_started_at: None,
            })
        };
        assert!(
            log.step(
                Tier::Street,
                supervise(pb::SupervisionLevel::Yellow, pb::Stage::Handle)
            )
            .unwrap_err()
            .is_bad_input()
        );
        log.step(
            Tier::Street,
            supervise(pb::SupervisionLevel::Red, pb::Stage::Accept),
        )
        .unwrap();
        let case = log
            .step(
                Tier::Street,
                supervise(pb::SupervisionLevel::Yellow, pb::Stage::Accept),
            )
            .unwrap();
        assert_eq!(case.supervision(), pb::SupervisionLevel::Red);
        assert_eq!(case.supervisions.len(), 2);
        assert_eq!(case.state(), State::Reported);
    }

    #[test]
    fn a_skip_tier_report_goes_straight_to_the_district() {
        let report = pb::Reported {
            grid_code: GRID.into(),
            skip_street: true,
            ..Default::default()
        };
        let case = apply(None, &event(1, Tier::Village, K::Reported(report))).unwrap();
        assert_eq!(
            (case.state(), owner_tier(&case)),
            (State::Reported, Tier::District)
        );
        assert!(case.skipped_street);
    }
}
