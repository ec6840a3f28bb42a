//! The case lifecycle against a model: random command sequences, by random roles at random tiers,
//! are run through the policy (who may ask for what) and the state machine (what may follow what,
//! at which tier). A small model, written from the state table of the domain brief (section 3) and
//! independent of `wangge_domain::case`, says what each step should do. Checked: no step the model
//! calls illegal is accepted, every legal one is, each lands in the model's state, and replaying
//! the accepted history from nothing gives the same case.

use proptest::prelude::*;
use wangge_domain::case::{apply, replay, seal};
use wangge_proto as pb;
use wangge_proto::case_event::Kind;
use wangge_proto::{CaseState as S, Role, Tier};

use crate::policy::{Right, roles_for};

const GRID: &str = "350205002006001";
const DEPARTMENT: &str = "350205002-cgzd";

#[derive(Debug, Clone, Copy, PartialEq)]
enum Command {
    Accept,
    Reject,
    Dispatch,
    Sign,
    SignAsAnotherDepartment,
    Return,
    Handle,
    RequestCheck,
    ConfirmCheck(bool),
    Close,
    Rework,
    Escalate,
    RequestVerification,
    ConfirmVerification(bool),
    RequestVoid,
    DecideVoid(bool),
    DecideReturn(bool),
    RequestDelay,
    DecideDelay(bool),
    RequestHang,
    DecideHang(bool),
    Resume,
    Reopen,
    Archive,
    Merge,
    Supervise,
    ApproveSelfHandled,
    RejectSelfHandled,
}

fn command() -> impl Strategy<Value = Command> {
    use Command::*;
    prop_oneof![
        Just(Accept),
        Just(Reject),
        Just(Dispatch),
        Just(Sign),
        Just(SignAsAnotherDepartment),
        Just(Return),
        Just(Handle),
        Just(RequestCheck),
        any::<bool>().prop_map(ConfirmCheck),
        Just(Close),
        Just(Rework),
        Just(Escalate),
        Just(RequestVerification),
        any::<bool>().prop_map(ConfirmVerification),
        Just(RequestVoid),
        any::<bool>().prop_map(DecideVoid),
        any::<bool>().prop_map(DecideReturn),
        Just(RequestDelay),
        any::<bool>().prop_map(DecideDelay),
        Just(RequestHang),
        any::<bool>().prop_map(DecideHang),
        Just(Resume),
        Just(Reopen),
        Just(Archive),
        Just(Merge),
        Just(Supervise),
        Just(ApproveSelfHandled),
        Just(RejectSelfHandled),
    ]
}

fn role() -> impl Strategy<Value = Role> {
    prop::sample::select(wangge_auth::ROLES.to_vec())
}

fn tier() -> impl Strategy<Value = Tier> {
    prop::sample::select(vec![Tier::Village, Tier::Street, Tier::District])
}

/// The right a handler asks for a command (as the services do).
fn right_of(command: Command) -> Right {
    use Command::*;
    match command {
        Accept | RequestCheck | Rework | Escalate | RequestVerification | RequestVoid | Resume
        | Merge => Right::Accept,
        Dispatch => Right::Dispatch,
        Reject => Right::Void,
        Close => Right::Close,
        DecideVoid(_) | DecideReturn(_) | DecideDelay(_) | Reopen | Archive => Right::Approve,
        DecideHang(_) => Right::Lead,
        Supervise => Right::Supervise,
        Sign | SignAsAnotherDepartment | Return | Handle | RequestDelay | RequestHang => {
            Right::Handle
        }
        ConfirmCheck(_) | ConfirmVerification(_) => Right::ConfirmCheck,
        ApproveSelfHandled | RejectSelfHandled => Right::ReviewSelfHandled,
    }
}

/// Who may ask for a command, as the domain brief's roles say.
fn model_roles(command: Command) -> &'static [Role] {
    use Command::*;
    match command {
        Accept | RequestCheck | Rework | Escalate | RequestVerification | RequestVoid | Resume
        | Merge | Dispatch => &[
            Role::StreetOperator,
            Role::DistrictOperator,
            Role::DutyChief,
        ],
        Reject | Close => &[Role::DutyChief],
        DecideVoid(_) | DecideReturn(_) | DecideDelay(_) | Reopen | Archive => {
            &[Role::DutyChief, Role::Leader]
        }
        DecideHang(_) => &[Role::Leader],
        Supervise => &[Role::Supervisor, Role::DutyChief, Role::Leader],
        Sign | SignAsAnotherDepartment | Return | Handle | RequestDelay | RequestHang => {
            &[Role::DepartmentHandler]
        }
        ConfirmCheck(_) | ConfirmVerification(_) => &[Role::GridWorker],
        ApproveSelfHandled | RejectSelfHandled => &[Role::CommunityStaff],
    }
}

/// The model of a case: what the brief's state table needs to decide the next step.
#[derive(Debug, Clone, PartialEq)]
struct Model {
    state: S,
    owner: Tier,
    /// None: no check asked; Some(None): pending; Some(Some(passed)).
    check: Option<Option<bool>>,
    /// Who asked for the running check or verification.
    asked_by: Tier,
    /// Where a denied request goes back to.
    resumes_to: S,
}

fn is_center(tier: Tier) -> bool {
    matches!(tier, Tier::Street | Tier::District)
}

/// The model's next case, or None when the step is illegal at `tier`.
fn model_step(m: &Model, command: Command, tier: Tier) -> Option<Model> {
    use Command::*;
    if tier != m.owner {
        return None;
    }
    let center = is_center(tier);
    let mut next = m.clone();
    let to = |next: &mut Model, state| next.state = state;
    match (command, m.state) {
        (Accept, S::Reported | S::Escalated) if center => to(&mut next, S::Accepted),
        (Reject, S::Reported | S::Escalated) if center => to(&mut next, S::Rejected),
        (Dispatch, S::Accepted) if center => {
            to(&mut next, S::Dispatched);
            next.check = None;
        }
        (Sign, S::Dispatched) => to(&mut next, S::InProgress),
        (Return, S::Dispatched | S::InProgress) => {
            next.resumes_to = m.state;
            to(&mut next, S::ReturnRequested);
        }
        (Handle, S::InProgress) => to(&mut next, S::Handled),
        (RequestCheck, S::Handled) if center => {
            to(&mut next, S::Checking);
            next.check = Some(None);
            next.asked_by = tier;
            next.owner = Tier::Village;
        }
        (ConfirmCheck(passed), S::Checking) if tier == Tier::Village && m.check == Some(None) => {
            next.check = Some(Some(passed));
            next.owner = m.asked_by;
        }
        (Close, S::Checking) if center && m.check == Some(Some(true)) => to(&mut next, S::Closed),
        (Rework, S::Checking) if center && m.check == Some(Some(false)) => {
            to(&mut next, S::Dispatched);
            next.check = None;
        }
        (Escalate, S::Reported | S::Accepted) if tier == Tier::Street => {
            to(&mut next, S::Escalated);
            next.owner = Tier::District;
        }
        (RequestVerification, S::Reported | S::Escalated) if center => {
            to(&mut next, S::Verifying);
            next.asked_by = tier;
            next.owner = Tier::Village;
        }
        (ConfirmVerification(genuine), S::Verifying) if tier == Tier::Village => {
            to(&mut next, if genuine { S::Accepted } else { S::Rejected });
            next.owner = m.asked_by;
        }
        (RequestVoid, S::Accepted) if center => {
            next.resumes_to = S::Accepted;
            to(&mut next, S::VoidRequested);
        }
        (DecideVoid(approve), S::VoidRequested) if center => {
            to(&mut next, if approve { S::Void } else { m.resumes_to });
        }
        (DecideReturn(approve), S::ReturnRequested) if center => {
            to(&mut next, if approve { S::Accepted } else { m.resumes_to });
        }
        (RequestDelay, S::InProgress) => {
            next.resumes_to = S::InProgress;
            to(&mut next, S::DelayRequested);
        }
        (DecideDelay(_), S::DelayRequested) if center => to(&mut next, S::InProgress),
        (RequestHang, S::InProgress) => {
            next.resumes_to = S::InProgress;
            to(&mut next, S::HangRequested);
        }
        (DecideHang(approve), S::HangRequested) if center => {
            to(&mut next, if approve { S::Hung } else { S::InProgress });
        }
        (Resume, S::Hung) if center => to(&mut next, S::InProgress),
        (Reopen, S::Closed) if center => {
            to(&mut next, S::Accepted);
            next.check = None;
        }
        (Archive, S::Reported | S::Escalated | S::Closed) if center => to(&mut next, S::Archived),
        (Merge, S::Reported | S::Escalated | S::Accepted) if center => to(&mut next, S::Merged),
        (
            Supervise,
            S::Reported
            | S::Verifying
            | S::Escalated
            | S::Accepted
            | S::VoidRequested
            | S::ReturnRequested
            | S::Dispatched
            | S::InProgress
            | S::DelayRequested
            | S::HangRequested
            | S::Hung
            | S::Handled
            | S::Checking,
        ) => {}
        (ApproveSelfHandled, S::SelfHandled) if tier == Tier::Village => to(&mut next, S::Closed),
        (RejectSelfHandled, S::SelfHandled) if tier == Tier::Village => {
            to(&mut next, S::Reported);
            next.owner = Tier::Street;
        }
        _ => return None,
    }
    if !matches!(
        next.state,
        S::VoidRequested | S::ReturnRequested | S::DelayRequested | S::HangRequested
    ) {
        next.resumes_to = S::Unspecified;
    }
    Some(next)
}

fn model_of(case: &pb::Case) -> Model {
    let check = match case.check_outcome() {
        pb::CheckOutcome::Unspecified => None,
        pb::CheckOutcome::Pending => Some(None),
        pb::CheckOutcome::Passed => Some(Some(true)),
        pb::CheckOutcome::Failed => Some(Some(false)),
    };
    Model {
        state: case.state(),
        owner: case.owner.as_ref().map(|o| o.tier()).unwrap_or_default(),
        check,
        asked_by: case.check_requested_by(),
        resumes_to: case.resumes_to(),
    }
}

fn kind(command: Command, case: &pb::Case) -> Kind {
    use Command::*;
    let reason = || "因为".to_owned();
    let department = || DEPARTMENT.to_owned();
    let day = pb::TimeLimit {
        amount: 1,
        unit: pb::TimeUnit::WorkingDays as i32,
    };
    match command {
        Accept => Kind::Accepted(pb::Accepted {}),
        Reject => Kind::Rejected(pb::Rejected { reason: reason() }),
        Dispatch => Kind::Dispatched(pb::Dispatched {
            department_code: department(),
        }),
        Sign => Kind::Signed(pb::Signed {
            department_code: department(),
        }),
        SignAsAnotherDepartment => Kind::Signed(pb::Signed {
            department_code: "350205002-sz".into(),
        }),
        Return => Kind::ReturnRequested(pb::ReturnRequested {
            department_code: department(),
            reason: reason(),
        }),
        Handle => Kind::Handled(pb::Handled {
            department_code: department(),
            result: "done".into(),
        }),
        RequestCheck => Kind::CheckRequested(pb::CheckRequested::default()),
        ConfirmCheck(passed) => Kind::Checked(pb::Checked { passed }),
        Close => Kind::Closed(pb::Closed {}),
        Rework => Kind::Reworked(pb::Reworked {
            department_code: department(),
        }),
        Escalate => Kind::Escalated(pb::Escalated { reason: reason() }),
        RequestVerification => Kind::VerifyRequested(pb::VerifyRequested::default()),
        ConfirmVerification(genuine) => Kind::Verified(pb::Verified { genuine }),
        RequestVoid => Kind::VoidRequested(pb::VoidRequested { reason: reason() }),
        DecideVoid(true) => Kind::VoidApproved(pb::VoidApproved {}),
        DecideVoid(false) => Kind::VoidDenied(pb::VoidDenied { reason: reason() }),
        DecideReturn(true) => Kind::ReturnApproved(pb::ReturnApproved {}),
        DecideReturn(false) => Kind::ReturnDenied(pb::ReturnDenied { reason: reason() }),
        RequestDelay => Kind::DelayRequested(pb::DelayRequested {
            department_code: department(),
            extension: Some(day),
            reason: reason(),
        }),
        DecideDelay(true) => Kind::DelayApproved(pb::DelayApproved {
            extension: case.requested_extension,
        }),
        DecideDelay(false) => Kind::DelayDenied(pb::DelayDenied { reason: reason() }),
        RequestHang => Kind::HangRequested(pb::HangRequested {
            department_code: department(),
            reason: reason(),
        }),
        DecideHang(true) => Kind::HangApproved(pb::HangApproved {}),
        DecideHang(false) => Kind::HangDenied(pb::HangDenied { reason: reason() }),
        Resume => Kind::Resumed(pb::Resumed {}),
        Reopen => Kind::Reopened(pb::Reopened { reason: reason() }),
        Archive => Kind::Archived(pb::Archived { reason: reason() }),
        Merge => Kind::Merged(pb::Merged {
            into_case_id: "another".into(),
            into_number: "n".into(),
        }),
        Supervise => Kind::Supervised(pb::Supervised {
            level: pb::SupervisionLevel::Yellow as i32,
            stage: wangge_domain::limits::Stage::of_state(case.state())
                .map_or(pb::Stage::Unspecified, wangge_domain::case::stage_of)
                as i32,
            automatic: false,
            stage_started_at: case.stage_started_at,
        }),
        ApproveSelfHandled => Kind::SelfHandleApproved(pb::SelfHandleApproved {}),
        RejectSelfHandled => Kind::SelfHandleRejected(pb::SelfHandleRejected { reason: reason() }),
    }
}

fn event(seq: u64, tier: Tier, role: Role, kind: Kind) -> pb::CaseEvent {
    let grid: wangge_domain::GridCode = GRID.parse().unwrap_or_else(|_| unreachable!());
    pb::CaseEvent {
        event_id: format!("e{seq}"),
        case_id: "c1".into(),
        seq,
        at: Some(prost_types::Timestamp {
            seconds: 1_790_000_000 + seq as i64 * 600,
            nanos: 0,
        }),
        tier: tier as i32,
        org_code: wangge_domain::case::owner_for(tier, &grid).org_code,
        actor: Some(pb::Actor {
            id: "someone".into(),
            role: role as i32,
        }),
        kind: Some(kind),
        ..Default::default()
    }
}

/// One step of a sequence: a command, and either who asks for it (any role, any tier) or, when
/// `guided`, a role the model allows at the tier that holds the case, so that sequences get deep
/// into the lifecycle instead of being refused at its start.
#[derive(Debug, Clone)]
struct Step {
    command: Command,
    role: Role,
    tier: Tier,
    guided: bool,
    pick: usize,
}

fn step() -> impl Strategy<Value = Step> {
    (
        command(),
        role(),
        tier(),
        prop::bool::weighted(0.8),
        any::<usize>(),
    )
        .prop_map(|(command, role, tier, guided, pick)| Step {
            command,
            role,
            tier,
            guided,
            pick,
        })
}

/// Runs `steps` on a fresh case; returns the states it went through.
fn drive(self_handled: bool, steps: Vec<Step>) -> Result<Vec<S>, TestCaseError> {
    let report = pb::Reported {
        grid_code: GRID.into(),
        self_handling: self_handled.then(|| pb::SelfHandling {
            resolution: "swept".into(),
        }),
        ..Default::default()
    };
    let mut first = event(1, Tier::Village, Role::GridWorker, Kind::Reported(report));
    let mut case = apply(None, &first).map_err(|e| TestCaseError::fail(e.to_string()))?;
    seal(&mut first, &case);
    let mut history = vec![first];
    let mut states = vec![case.state()];
    for step in steps {
        let command = step.command;
        let (role, tier) = if step.guided {
            let roles = model_roles(command);
            let owner = case.owner.as_ref().map(|o| o.tier()).unwrap_or_default();
            (roles[step.pick % roles.len()], owner)
        } else {
            (step.role, step.tier)
        };
        // The policy: the handler refuses a role without the right before the case is read.
        let permitted = roles_for(right_of(command)).contains(&role);
        prop_assert_eq!(
            permitted,
            model_roles(command).contains(&role),
            "{:?} by {:?}",
            command,
            role
        );
        if !permitted {
            continue;
        }
        let expected = match command {
            Command::SignAsAnotherDepartment => None,
            _ => model_step(&model_of(&case), command, tier),
        };
        let mut next_event = event(case.version + 1, tier, role, kind(command, &case));
        match (apply(Some(&case), &next_event), expected) {
            (Ok(next), Some(model)) => {
                prop_assert_eq!(
                    model_of(&next),
                    model,
                    "{:?} at {:?} from {:?}",
                    command,
                    tier,
                    case.state()
                );
                seal(&mut next_event, &next);
                history.push(next_event);
                case = next;
                states.push(case.state());
            }
            (Err(_), None) => {}
            (Ok(next), None) => prop_assert!(
                false,
                "illegal {:?} at {:?} accepted: {:?} -> {:?}",
                command,
                tier,
                case.state(),
                next.state()
            ),
            (Err(refusal), Some(_)) => prop_assert!(
                false,
                "legal {:?} at {:?} from {:?} refused: {}",
                command,
                tier,
                case.state(),
                refusal
            ),
        }
    }
    // Replaying the history (as a receiving tier does) gives the same case.
    let mut replayed: Option<pb::Case> = None;
    for event in &history {
        replayed =
            Some(replay(replayed.as_ref(), event).map_err(|e| TestCaseError::fail(e.to_string()))?);
    }
    prop_assert_eq!(replayed.as_ref(), Some(&case));
    Ok(states)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    #[test]
    fn no_illegal_step_is_accepted_and_the_history_replays_to_the_same_case(
        self_handled in any::<bool>(),
        steps in prop::collection::vec(step(), 1..80),
    ) {
        drive(self_handled, steps)?;
    }
}

/// The sequences reach every state of the lifecycle (else the property above proves little).
#[test]
fn random_sequences_reach_every_state() {
    use proptest::strategy::ValueTree as _;
    use proptest::test_runner::TestRunner;

    let mut runner = TestRunner::deterministic();
    let strategy = (any::<bool>(), prop::collection::vec(step(), 1..80));
    let mut reached = std::collections::BTreeSet::new();
    for _ in 0..2_000 {
        let (self_handled, steps) = strategy
            .new_tree(&mut runner)
            .unwrap_or_else(|e| panic!("{e}"))
            .current();
        for state in drive(self_handled, steps).unwrap_or_else(|e| panic!("{e}")) {
            reached.insert(state as i32);
        }
    }
    let missing: Vec<&str> = (S::Reported as i32..=S::VoidRequested as i32)
        .filter(|s| *s != S::Draft as i32 && !reached.contains(s))
        .filter_map(|s| S::try_from(s).ok().map(|s| s.as_str_name()))
        .collect();
    assert!(missing.is_empty(), "never reached: {missing:?}");
}
