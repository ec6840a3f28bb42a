//! The case lifecycle against a model: random command sequences, by random roles at random tiers,
//! are run through the policy (who may ask for what) and the state machine (what may follow what,
//! at which tier). The model is independent of `wangge_domain::case`: [`TABLE`] transcribes the
//! state table of the domain brief (section 3) row by row, [`BEYOND_THE_TABLE`] lists the few
//! transitions the state machine keeps beyond it, each with its reason, and [`allowed`] says who
//! may take a step where (the holding tier, a center, the village, a department). Checked: no step
//! the model calls illegal is accepted, every legal one is, each lands in the model's state, and
//! replaying the accepted history from nothing gives the same case.

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
    /// 交办 to the lower tier's center.
    Assign,
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
        Just(Assign),
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
        Dispatch | Assign => Right::Dispatch,
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
        | Merge | Dispatch | Assign => &[
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
    /// Dispatched to a department (not only handed down to a lower tier's center).
    department: bool,
    /// None: no check asked; Some(None): pending; Some(Some(passed)).
    check: Option<Option<bool>>,
    /// Who asked for the running check or verification.
    asked_by: Tier,
    /// Where a denied request goes back to.
    resumes_to: S,
}

/// The state table of the domain brief (section 3), row by row: from, command, to. The table's
/// "Exits" column, with the "Entered by" column where it names the step (VERIFYING: the center
/// asks a field check before filing), and the approval practice below the table for the request
/// states (a void, a return, a delay, a hang: approved or denied; a denied return goes back to
/// the department).
const TABLE: &[(S, Command, S)] = {
    use Command::*;
    &[
        // REPORTED 待受理 → ACCEPTED, REJECTED 不予受理, MERGED (duplicate); VERIFYING 待核实.
        (S::Reported, Accept, S::Accepted),
        (S::Reported, Reject, S::Rejected),
        (S::Reported, Merge, S::Merged),
        (S::Reported, RequestVerification, S::Verifying),
        // SELF_HANDLED 自处置: the grid worker fixed it on the spot, awaits review.
        (S::SelfHandled, ApproveSelfHandled, S::Closed),
        (S::SelfHandled, RejectSelfHandled, S::Reported),
        // VERIFYING 待核实 → ACCEPTED / REJECTED.
        (S::Verifying, ConfirmVerification(true), S::Accepted),
        (S::Verifying, ConfirmVerification(false), S::Rejected),
        // ACCEPTED 立案 → DISPATCHED (派遣 to a department, 交办 to a lower tier), ESCALATED 上报,
        // VOID 作废 (needs duty-chief approval).
        (S::Accepted, Dispatch, S::Dispatched),
        (S::Accepted, Assign, S::Dispatched),
        (S::Accepted, Escalate, S::Escalated),
        (S::Accepted, RequestVoid, S::VoidRequested),
        (S::VoidRequested, DecideVoid(true), S::Void),
        (S::VoidRequested, DecideVoid(false), S::Accepted),
        // DISPATCHED 派遣/交办 → IN_PROGRESS 签收, RETURN_REQUESTED 回退申请. A case handed down
        // to a lower tier is dispatched on by that tier's center to one of its departments.
        (S::Dispatched, Dispatch, S::Dispatched),
        (S::Dispatched, Sign, S::InProgress),
        (S::Dispatched, Return, S::ReturnRequested),
        // 回退: approved, back to the center for re-dispatch; denied, back to the department.
        (S::ReturnRequested, DecideReturn(true), S::Accepted),
        (S::ReturnRequested, DecideReturn(false), S::Dispatched),
        // IN_PROGRESS 办理中 → HANDLED, DELAY_REQUESTED 延期, HANG_REQUESTED 挂账, ESCALATED.
        (S::InProgress, Handle, S::Handled),
        (S::InProgress, RequestDelay, S::DelayRequested),
        (S::DelayRequested, DecideDelay(true), S::InProgress),
        (S::DelayRequested, DecideDelay(false), S::InProgress),
        (S::InProgress, RequestHang, S::HangRequested),
        (S::HangRequested, DecideHang(true), S::Hung),
        (S::HangRequested, DecideHang(false), S::InProgress),
        (S::InProgress, Escalate, S::Escalated),
        // HANDLED 处理反馈 → CHECKING.
        (S::Handled, RequestCheck, S::Checking),
        // CHECKING 核查: the grid worker checks on site → CLOSED 结案, REWORK 返工 (back to
        // DISPATCHED, same department).
        (S::Checking, ConfirmCheck(true), S::Checking),
        (S::Checking, ConfirmCheck(false), S::Checking),
        (S::Checking, Close, S::Closed),
        (S::Checking, Rework, S::Dispatched),
        // HUNG 挂账 → IN_PROGRESS 挂账恢复.
        (S::Hung, Resume, S::InProgress),
    ]
};

/// Where the state machine goes beyond the table, on purpose (see `wangge_domain::case`): each
/// row says why. Kept apart so the table above stays the brief's.
const BEYOND_THE_TABLE: &[(S, Command, S)] = {
    use Command::*;
    &[
        // CLOSED → REOPENED: the state set has no REOPENED; a reopened case is filed again.
        (S::Closed, Reopen, S::Accepted),
        // ESCALATED is the upper center's 待受理: it does with it what a center does with a
        // fresh report.
        (S::Escalated, Accept, S::Accepted),
        (S::Escalated, Reject, S::Rejected),
        (S::Escalated, Merge, S::Merged),
        (S::Escalated, RequestVerification, S::Verifying),
        // 上报 of a report outside the street's remit, without filing it.
        (S::Reported, Escalate, S::Escalated),
        // ARCHIVED 备案 is terminal, entered from where the table does not say: a report filed
        // for the record without handling, or a closed case put on record.
        (S::Reported, Archive, S::Archived),
        (S::Escalated, Archive, S::Archived),
        (S::Closed, Archive, S::Archived),
    ]
};

fn is_center(tier: Tier) -> bool {
    matches!(tier, Tier::Street | Tier::District)
}

/// Who may take a step where, beyond its row: the tier holding the case, a command center for the
/// center's steps, the village for the field's answers; the upper tier exists for 上报 and a lower
/// center for 交办; a check's outcome for closing and rework; a department for its steps.
fn allowed(m: &Model, command: Command, tier: Tier) -> bool {
    use Command::*;
    if tier != m.owner {
        return false;
    }
    match command {
        Sign | SignAsAnotherDepartment | Return | Handle | RequestDelay | RequestHang => {
            m.department
        }
        ConfirmCheck(_) => tier == Tier::Village && m.check == Some(None),
        ConfirmVerification(_) | ApproveSelfHandled | RejectSelfHandled => tier == Tier::Village,
        Escalate => tier == Tier::Street,
        Assign => tier == Tier::District,
        // A dispatch of a handed-down case only while no department has it.
        Dispatch => is_center(tier) && (m.state == S::Accepted || !m.department),
        Close => is_center(tier) && m.check == Some(Some(true)),
        Rework => is_center(tier) && m.check == Some(Some(false)),
        Accept | Reject | RequestCheck | RequestVerification | RequestVoid | DecideVoid(_)
        | DecideReturn(_) | DecideDelay(_) | DecideHang(_) | Resume | Reopen | Archive | Merge => {
            is_center(tier)
        }
        Supervise => true,
    }
}

/// The model's next case, or None when the step is illegal at `tier`.
fn model_step(m: &Model, command: Command, tier: Tier) -> Option<Model> {
    use Command::*;
    if !allowed(m, command, tier) {
        return None;
    }
    let mut next = m.clone();
    if command == Supervise {
        // 督办 is a flag of the case, not a transition: any open stage.
        return (!matches!(
            m.state,
            S::SelfHandled | S::Closed | S::Rejected | S::Void | S::Merged | S::Archived
        ))
        .then_some(next);
    }
    let (_, _, to) = TABLE
        .iter()
        .chain(BEYOND_THE_TABLE)
        .find(|(from, c, _)| *from == m.state && *c == command)?;
    next.state = *to;
    match command {
        Dispatch => {
            next.department = true;
            next.check = None;
        }
        Assign => {
            next.owner = Tier::Street;
            next.department = false;
            next.check = None;
        }
        Escalate => {
            next.owner = Tier::District;
            next.department = false;
        }
        RequestCheck => {
            next.check = Some(None);
            next.asked_by = tier;
            next.owner = Tier::Village;
        }
        ConfirmCheck(passed) => {
            next.check = Some(Some(passed));
            next.owner = m.asked_by;
        }
        RequestVerification => {
            next.asked_by = tier;
            next.owner = Tier::Village;
        }
        ConfirmVerification(_) => next.owner = m.asked_by,
        RejectSelfHandled => next.owner = Tier::Street,
        Rework => next.check = None,
        Reopen => {
            next.check = None;
            next.department = false;
        }
        DecideReturn(true) => next.department = false,
        _ => {}
    }
    // A request waits for its decision and goes back to where it was asked.
    if matches!(
        next.state,
        S::VoidRequested | S::ReturnRequested | S::DelayRequested | S::HangRequested
    ) {
        next.resumes_to = m.state;
    } else {
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
        department: !case.department_code.is_empty(),
        check,
        asked_by: case.check_requested_by(),
        resumes_to: case.resumes_to(),
    }
}

fn kind(command: Command, case: &pb::Case, tier: Tier) -> Kind {
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
            ..Default::default()
        }),
        // As the console asks for it: to the tier below the one acting.
        Assign => Kind::Dispatched(pb::Dispatched {
            department_code: String::new(),
            to_tier: wangge_domain::case::lower_tier(tier).unwrap_or_default() as i32,
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
        let mut next_event = event(case.version + 1, tier, role, kind(command, &case, tier));
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
