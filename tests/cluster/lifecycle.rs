//! The standard's further steps from outside, across the tiers: verification before filing (核实),
//! void with approval (作废), merge of a duplicate (合并) whose reporter follows the other case,
//! reopen and archive, and the skip-tier rule (越级上报) that sends an urgent gas leak straight to
//! the district while the street holds a copy.

use tonic::Code;
use wangge_proto as pb;
use wangge_proto::{CaseState, Tier};
use wangge_tests::cluster::as_actor;
use wangge_tests::fixtures::*;
use wangge_tests::identity;
use wangge_tests::{Cluster, TierClients};

use crate::case_loop::{
    close_round_the_loop, file_handle_and_close, same_everywhere, sign_and_handle,
    street_department,
};

fn action(case: &pb::Case, note: &str) -> pb::CaseActionRequest {
    pb::CaseActionRequest {
        case_id: case.id.clone(),
        note: note.to_owned(),
        ..Default::default()
    }
}

fn decision(case: &pb::Case, approve: bool, note: &str) -> pb::DecisionRequest {
    pb::DecisionRequest {
        case_id: case.id.clone(),
        approve,
        note: note.to_owned(),
    }
}

async fn reported(clients: &TierClients) -> pb::Case {
    let case = report_case(clients, GRID).await;
    clients.converged(&case.id, 1).await;
    case
}

#[tokio::test]
async fn a_verification_goes_to_the_grid_worker_whose_answer_files_or_rejects_it() {
    let cluster = Cluster::start().await;
    let clients = cluster.clients().await;
    let mut console = clients.street_console();
    let mut field = clients.field();
    for (genuine, after) in [(true, CaseState::Accepted), (false, CaseState::Rejected)] {
        let case = reported(&clients).await;
        let asked = console
            .request_verification(as_actor(STREET_OPERATOR, action(&case, "请核实")))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(asked.state(), CaseState::Verifying);
        clients.converged(&case.id, 2).await;
        // The grid worker finds it among the field app's tasks.
        let tasks = field
            .list_tasks(as_actor(
                GRID_WORKER,
                pb::ListTasksRequest {
                    org_codes: vec![GRID.into()],
                },
            ))
            .await
            .unwrap()
            .into_inner()
            .cases;
        assert!(tasks.iter().any(|t| t.id == case.id), "a verification task");
        // Another grid's worker may not answer it.
        let refused = field
            .confirm_verification(as_actor(
                &format!("gw-{OTHER_GRID}"),
                pb::ConfirmVerificationRequest {
                    case_id: case.id.clone(),
                    genuine,
                    ..Default::default()
                },
            ))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
        let answered = field
            .confirm_verification(as_actor(
                GRID_WORKER,
                pb::ConfirmVerificationRequest {
                    case_id: case.id.clone(),
                    genuine,
                    note: "现场核实".into(),
                    ..Default::default()
                },
            ))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(answered.state(), after);
        assert_eq!(answered.owner.unwrap().tier(), Tier::Street);
        clients.converged(&case.id, 3).await;
    }
    cluster.stop().await;
}

#[tokio::test]
async fn a_void_needs_the_duty_chief_and_a_denial_changes_nothing_else() {
    let cluster = Cluster::start().await;
    let clients = cluster.clients().await;
    let mut console = clients.street_console();
    let case = reported(&clients).await;
    console
        .accept_case(as_actor(STREET_OPERATOR, action(&case, "")))
        .await
        .unwrap();
    let refused = console
        .request_void(as_actor(STREET_OPERATOR, action(&case, " ")))
        .await
        .unwrap_err();
    assert_eq!(
        refused.code(),
        Code::InvalidArgument,
        "a reason: {refused:?}"
    );
    console
        .request_void(as_actor(STREET_OPERATOR, action(&case, "测试数据")))
        .await
        .unwrap();
    let refused = console
        .decide_void(as_actor(STREET_OPERATOR, decision(&case, true, "")))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    let refused = console
        .decide_void(as_actor(STREET_CHIEF, decision(&case, false, "")))
        .await
        .unwrap_err();
    assert_eq!(
        refused.code(),
        Code::InvalidArgument,
        "a denial says why: {refused:?}"
    );
    let denied = console
        .decide_void(as_actor(STREET_CHIEF, decision(&case, false, "情况属实")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(denied.state(), CaseState::Accepted);
    console
        .request_void(as_actor(STREET_OPERATOR, action(&case, "重复录入")))
        .await
        .unwrap();
    let void = console
        .decide_void(as_actor(STREET_CHIEF, decision(&case, true, "")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(void.state(), CaseState::Void);
    let history = clients.converged(&case.id, void.version).await;
    assert_eq!(history.len(), 6);
    cluster.stop().await;
}

/// A report of the street patrol in `GRID` (another reporter than the grid's own worker).
async fn reported_by_the_patrol(clients: &TierClients) -> pb::Case {
    let case = clients
        .field()
        .report_case(as_actor(STREET_WORKER, report(&client_id(), GRID)))
        .await
        .unwrap()
        .into_inner();
    clients.converged(&case.id, 1).await;
    case
}

#[tokio::test]
async fn a_merged_report_follows_the_case_it_repeats_and_its_reporter_sees_the_outcome() {
    let cluster = Cluster::start().await;
    let clients = cluster.clients().await;
    let mut console = clients.street_console();
    // The case the others end up in, the case the duplicate repeats (both by the street patrol),
    // and the duplicate, by the grid's own worker.
    let last = reported_by_the_patrol(&clients).await;
    let original = reported_by_the_patrol(&clients).await;
    let duplicate = reported(&clients).await;
    assert!(
        duplicate
            .possible_duplicates
            .iter()
            .any(|d| d.case_id == original.id),
        "{:?}",
        duplicate.possible_duplicates
    );

    // Only into an open case of this center, and never into itself.
    let merge = |case: &pb::Case, into: &pb::Case, note: &str| {
        as_actor(
            STREET_OPERATOR,
            pb::MergeCaseRequest {
                case_id: case.id.clone(),
                into_case_id: into.id.clone(),
                note: note.to_owned(),
            },
        )
    };
    let refused = console
        .merge_case(merge(&duplicate, &duplicate, ""))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    let merged = console
        .merge_case(merge(&duplicate, &original, "同一处暴露垃圾"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(merged.state(), CaseState::Merged);
    assert_eq!(merged.merged_into, original.id);
    let history = clients.converged(&original.id, 2).await;
    assert!(matches!(
        history[1].kind,
        Some(pb::case_event::Kind::MergeReceived(_))
    ));
    clients.converged(&duplicate.id, 2).await;

    // The case it follows lists it with its reporter. Its reporter reads it even after moving to
    // another grid (the same person, now scoped elsewhere); another worker there does not.
    let mut moved = identity::claims_for(&format!("gw-{OTHER_GRID}"));
    moved.sub = GRID_WORKER.into();
    let moved = identity::sign(&moved);
    let stranger = identity::token_for(&format!("gw-{OTHER_GRID}"));
    let get = |token: &str, case: &pb::Case| {
        let mut cases = clients.cases(Tier::Village);
        let request = identity::with_token(
            token,
            pb::GetCaseRequest {
                case_id: case.id.clone(),
            },
        );
        async move { cases.get_case(request).await }
    };
    let events = |token: &str, case: &pb::Case| {
        let mut cases = clients.cases(Tier::Village);
        let request = identity::with_token(
            token,
            pb::ListCaseEventsRequest {
                case_id: case.id.clone(),
            },
        );
        async move { cases.list_case_events(request).await }
    };
    let follows = get(&moved, &original).await.unwrap().into_inner();
    assert_eq!(follows.merged.len(), 1);
    assert_eq!(follows.merged[0].case_id, duplicate.id);
    assert_eq!(follows.merged[0].reporter.as_ref().unwrap().id, GRID_WORKER);
    let refused = get(&stranger, &original).await.unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    // A merged case takes no further steps, and a filed one is no longer merged.
    let refused = console
        .accept_case(as_actor(STREET_OPERATOR, action(&merged, "")))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");

    // The case it repeats turns out to repeat another one: the chain ends in `last`, which is
    // handled and closed.
    console
        .merge_case(merge(&original, &last, "同一处，已有在办案件"))
        .await
        .unwrap();
    clients.converged(&original.id, 3).await;
    let last = clients
        .cases(Tier::Street)
        .get_case(as_actor(
            STREET_OPERATOR,
            pb::GetCaseRequest {
                case_id: last.id.clone(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(last.merged.len(), 1);
    let closed = file_handle_and_close(&clients, &last).await;

    // The first reporter, moved elsewhere, finds the way from their report to the outcome and
    // reads it with its history; the stranger still does not.
    let own = get(&moved, &duplicate).await.unwrap().into_inner();
    assert_eq!(own.merged_into, original.id);
    let next = get(&moved, &original).await.unwrap().into_inner();
    assert_eq!(next.merged_into, closed.id);
    let outcome = get(&moved, &closed).await.unwrap().into_inner();
    assert_eq!(outcome.state(), CaseState::Closed);
    let history = events(&moved, &closed).await.unwrap().into_inner().events;
    assert_eq!(history.len() as u64, closed.version);
    assert!(matches!(
        history.last().and_then(|e| e.kind.as_ref()),
        Some(pb::case_event::Kind::Closed(_))
    ));
    for case in [&duplicate, &original, &closed] {
        let refused = events(&stranger, case).await.unwrap_err();
        assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    }
    cluster.stop().await;
}

#[tokio::test]
async fn a_closed_case_can_be_reopened_and_a_report_archived() {
    let cluster = Cluster::start().await;
    let clients = cluster.clients().await;
    let mut console = clients.street_console();
    let closed = close_round_the_loop(&clients).await;
    let refused = console
        .reopen_case(as_actor(STREET_OPERATOR, action(&closed, "问题复发")))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    let reopened = console
        .reopen_case(as_actor(STREET_CHIEF, action(&closed, "问题复发")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reopened.state(), CaseState::Accepted);
    assert_eq!(reopened.department_code, "");

    let report = reported(&clients).await;
    let archived = console
        .archive_case(as_actor(
            STREET_CHIEF,
            action(&report, "已由物业处理，仅备案"),
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(archived.state(), CaseState::Archived);
    clients.converged(&report.id, 2).await;
    cluster.stop().await;
}

#[tokio::test]
async fn an_urgent_gas_leak_skips_the_street_which_still_holds_and_sees_it() {
    let cluster = Cluster::start().await;
    let clients = cluster.clients().await;
    let mut request = report(&client_id(), GRID);
    request.category_code = "szcg-04-04".into(); // 燃气管道泄漏
    request.urgency = pb::Urgency::Urgent as i32;
    let case = clients
        .field()
        .report_case(as_actor(GRID_WORKER, request))
        .await
        .unwrap()
        .into_inner();
    assert!(case.skipped_street);
    assert_eq!(case.owner.as_ref().unwrap().tier(), Tier::District);
    clients.converged(&case.id, 1).await;

    // The street holds it and sees it in its console, but cannot act on it.
    let seen = clients
        .cases(Tier::Street)
        .list_cases(as_actor(
            STREET_OPERATOR,
            pb::ListCasesRequest {
                org_code: GRID.into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .cases;
    assert!(seen.iter().any(|c| c.id == case.id && c.skipped_street));
    let refused = clients
        .street_console()
        .accept_case(as_actor(STREET_OPERATOR, action(&case, "")))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    let accepted = clients
        .district_console()
        .accept_case(as_actor("op-350205000000", action(&case, "")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(accepted.state(), CaseState::Accepted);

    // The same category at normal urgency goes to the street as usual.
    let mut request = report(&client_id(), GRID);
    request.category_code = "szcg-04-04".into();
    let ordinary = clients
        .field()
        .report_case(as_actor(GRID_WORKER, request))
        .await
        .unwrap()
        .into_inner();
    assert!(!ordinary.skipped_street);
    assert_eq!(ordinary.owner.unwrap().tier(), Tier::Street);
    cluster.stop().await;
}

/// The street's 城管 unit and its handler.
async fn street_cgzd(clients: &TierClients) -> (String, String) {
    let departments = departments_of(clients, Tier::Street, "350205002000").await;
    let department = street_department(&departments, "城管");
    let handler = format!("dh-{department}");
    (department, handler)
}

fn department_step(case: &pb::Case, department: &str, note: &str) -> pb::DepartmentActionRequest {
    pb::DepartmentActionRequest {
        case_id: case.id.clone(),
        department_code: department.to_owned(),
        note: note.to_owned(),
        ..Default::default()
    }
}

/// A report in `GRID` filed by the street, dispatched to its 城管 unit and signed for by it.
async fn signed_at_the_street(clients: &TierClients, department: &str, handler: &str) -> pb::Case {
    let mut console = clients.street_console();
    let case = reported(clients).await;
    console
        .accept_case(as_actor(STREET_OPERATOR, action(&case, "")))
        .await
        .unwrap();
    console
        .dispatch_case(as_actor(
            STREET_OPERATOR,
            pb::DispatchCaseRequest {
                case_id: case.id.clone(),
                department_code: department.to_owned(),
                note: String::new(),
            },
        ))
        .await
        .unwrap();
    let signed = clients
        .street_departments()
        .sign_case(as_actor(handler, department_step(&case, department, "")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(signed.state(), CaseState::InProgress);
    signed
}

#[tokio::test]
async fn a_case_its_department_cannot_handle_is_escalated_while_in_progress() {
    let cluster = Cluster::start().await;
    let clients = cluster.clients().await;
    let (department, handler) = street_cgzd(&clients).await;
    let case = signed_at_the_street(&clients, &department, &handler).await;
    let mut departments = clients.street_departments();
    // Signed for, the department no longer sends it back (回退 is before signing).
    let refused = departments
        .return_case(as_actor(
            &handler,
            department_step(&case, &department, "非本部门职责"),
        ))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");

    // 上报: the street center passes it to the district; the department is cleared.
    let escalated = clients
        .street_console()
        .escalate_case(as_actor(
            STREET_OPERATOR,
            action(&case, "需区级多部门联合处置"),
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(escalated.state(), CaseState::Escalated);
    assert_eq!(escalated.owner.as_ref().unwrap().tier(), Tier::District);
    assert_eq!(escalated.department_code, "");
    same_everywhere(&clients, &escalated).await;
    // The street's department has given it up.
    let refused = departments
        .report_handled(as_actor(
            &handler,
            department_step(&case, &department, "已处理"),
        ))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    let filed = clients
        .district_console()
        .accept_case(as_actor(DISTRICT_OPERATOR, action(&case, "")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(filed.state(), CaseState::Accepted);
    let history = same_everywhere(&clients, &filed).await;
    assert_eq!(history.len(), 6, "nothing refused left a trace");
    cluster.stop().await;
}

#[tokio::test]
async fn the_district_hands_a_case_down_to_the_street_which_dispatches_it_to_its_department() {
    let cluster = Cluster::start().await;
    let clients = cluster.clients().await;
    let (department, handler) = street_cgzd(&clients).await;
    let mut district = clients.district_console();
    let mut street = clients.street_console();
    // An urgent gas leak goes to the district (越级上报), which files it.
    let mut request = report(&client_id(), GRID);
    request.category_code = "szcg-04-04".into();
    request.urgency = pb::Urgency::Urgent as i32;
    let case = clients
        .field()
        .report_case(as_actor(GRID_WORKER, request))
        .await
        .unwrap()
        .into_inner();
    clients.converged(&case.id, 1).await;
    // 交办 only of a filed case, and only by the district center's roles.
    let refused = district
        .assign_case(as_actor(DISTRICT_OPERATOR, action(&case, "")))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    district
        .accept_case(as_actor(DISTRICT_OPERATOR, action(&case, "")))
        .await
        .unwrap();
    let refused = district
        .assign_case(as_actor("ld-350205000000", action(&case, "")))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");

    let handed = district
        .assign_case(as_actor(DISTRICT_OPERATOR, action(&case, "请街道组织处置")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(handed.state(), CaseState::Dispatched);
    assert_eq!(handed.owner.as_ref().unwrap().tier(), Tier::Street);
    assert_eq!(handed.department_code, "");
    same_everywhere(&clients, &handed).await;
    // Now the street's: the district no longer dispatches it, no department has it yet, and the
    // street hands nothing further down.
    let refused = district
        .dispatch_case(as_actor(
            DISTRICT_OPERATOR,
            pb::DispatchCaseRequest {
                case_id: case.id.clone(),
                department_code: departments_of(&clients, Tier::District, "350205000000")
                    .await
                    .remove(0)
                    .code,
                note: String::new(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    let refused = clients
        .street_departments()
        .sign_case(as_actor(&handler, department_step(&case, &department, "")))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    let refused = street
        .assign_case(as_actor(STREET_OPERATOR, action(&case, "")))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");

    // The street's center dispatches it to its 城管 unit, which signs and handles; the street has
    // it checked and closes it.
    let dispatched = street
        .dispatch_case(as_actor(
            STREET_OPERATOR,
            pb::DispatchCaseRequest {
                case_id: case.id.clone(),
                department_code: department.clone(),
                note: "燃气公司已到场，请配合处置".into(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (dispatched.state(), dispatched.department_code.as_str()),
        (CaseState::Dispatched, department.as_str())
    );
    let handled = sign_and_handle(
        &mut clients.street_departments(),
        &handler,
        &dispatched,
        &department,
        "已关阀处置",
    )
    .await;
    same_everywhere(&clients, &handled).await;
    let checking = street
        .request_check(as_actor(STREET_OPERATOR, action(&case, "")))
        .await
        .unwrap()
        .into_inner();
    same_everywhere(&clients, &checking).await;
    let checked = clients
        .field()
        .confirm_check(as_actor(
            GRID_WORKER,
            pb::ConfirmCheckRequest {
                case_id: case.id.clone(),
                passed: true,
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(checked.owner.as_ref().unwrap().tier(), Tier::Street);
    same_everywhere(&clients, &checked).await;
    let closed = street
        .close_case(as_actor(STREET_CHIEF, action(&case, "")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(closed.state(), CaseState::Closed);

    let history = same_everywhere(&clients, &closed).await;
    let steps: Vec<(Tier, &str)> = history
        .iter()
        .map(|e| {
            let kind = match &e.kind {
                Some(pb::case_event::Kind::Dispatched(d)) if d.to_tier() == Tier::Street => {
                    "assigned"
                }
                Some(pb::case_event::Kind::Dispatched(_)) => "dispatched",
                Some(pb::case_event::Kind::Reported(_)) => "reported",
                Some(pb::case_event::Kind::Accepted(_)) => "accepted",
                Some(pb::case_event::Kind::Signed(_)) => "signed",
                Some(pb::case_event::Kind::Handled(_)) => "handled",
                Some(pb::case_event::Kind::CheckRequested(_)) => "check_requested",
                Some(pb::case_event::Kind::Checked(_)) => "checked",
                Some(pb::case_event::Kind::Closed(_)) => "closed",
                other => panic!("unexpected {other:?}"),
            };
            (e.tier(), kind)
        })
        .collect();
    assert_eq!(
        steps,
        [
            (Tier::Village, "reported"),
            (Tier::District, "accepted"),
            (Tier::District, "assigned"),
            (Tier::Street, "dispatched"),
            (Tier::Street, "signed"),
            (Tier::Street, "handled"),
            (Tier::Street, "check_requested"),
            (Tier::Village, "checked"),
            (Tier::Street, "closed"),
        ]
    );
    cluster.stop().await;
}

#[tokio::test]
async fn a_second_or_a_longer_extension_needs_the_leader_who_decides_as_such() {
    let cluster = Cluster::start().await;
    let clients = cluster.clients().await;
    let (department, handler) = street_cgzd(&clients).await;
    let mut console = clients.street_console();
    let mut departments = clients.street_departments();
    let ask = |case: &pb::Case, amount: u32| {
        as_actor(
            &handler,
            pb::DelayRequest {
                case_id: case.id.clone(),
                department_code: department.clone(),
                // 暴露垃圾: its standard extension is 4 working hours.
                extension: Some(pb::TimeLimit {
                    amount,
                    unit: pb::TimeUnit::WorkingHours as i32,
                }),
                reason: "清运车辆故障".into(),
            },
        )
    };
    let decider = |case: &pb::Case| {
        let case = case.clone();
        let clients = clients.clone();
        async move {
            let history = same_everywhere(&clients, &case).await;
            let actor = history.last().unwrap().actor.clone().unwrap();
            let role = actor.role();
            (actor.id, role)
        }
    };
    // Someone who is both duty chief and leader, the duty chief listed first.
    let mut both = identity::claims_for(STREET_CHIEF);
    both.sub = "dc-ld-350205002000".into();
    both.roles.push("leader".into());
    let both = identity::sign(&both);

    // A first request longer than the standard: the duty chief may not decide it, neither way.
    let case = signed_at_the_street(&clients, &department, &handler).await;
    departments.request_delay(ask(&case, 8)).await.unwrap();
    for approve in [true, false] {
        let refused = console
            .decide_delay(as_actor(STREET_CHIEF, decision(&case, approve, "理由不足")))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
        assert!(refused.message().contains("leader"), "{refused:?}");
    }
    // Wrong tier first: the district's duty chief is told the district does not hold the case,
    // not that it lacks a role.
    let refused = clients
        .district_console()
        .decide_delay(as_actor(DISTRICT_CHIEF, decision(&case, true, "")))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    // The duty chief who is also the leader decides it as the leader.
    let granted = console
        .decide_delay(identity::with_token(&both, decision(&case, true, "")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(granted.state(), CaseState::InProgress);
    assert_eq!(granted.extensions.len(), 1);
    assert_eq!(
        decider(&granted).await,
        ("dc-ld-350205002000".to_owned(), pb::Role::Leader)
    );

    // A first request within the standard is the duty chief's; the same person decides it as
    // duty chief. Denied, it still counts: the second request needs the leader.
    let case = signed_at_the_street(&clients, &department, &handler).await;
    departments.request_delay(ask(&case, 2)).await.unwrap();
    let denied = console
        .decide_delay(identity::with_token(
            &both,
            decision(&case, false, "可协调其他车辆"),
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (denied.state(), denied.extensions.len()),
        (CaseState::InProgress, 0)
    );
    assert_eq!(
        decider(&denied).await,
        ("dc-ld-350205002000".to_owned(), pb::Role::DutyChief)
    );
    let asked = departments
        .request_delay(ask(&case, 2))
        .await
        .unwrap()
        .into_inner();
    let refused = console
        .decide_delay(as_actor(STREET_CHIEF, decision(&case, true, "")))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    let unchanged = same_everywhere(&clients, &asked).await;
    assert_eq!(
        unchanged.len() as u64,
        asked.version,
        "a refusal changes nothing"
    );
    let granted = console
        .decide_delay(as_actor("ld-350205002000", decision(&case, true, "")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(granted.extensions.len(), 1);
    assert_eq!(
        decider(&granted).await,
        ("ld-350205002000".to_owned(), pb::Role::Leader)
    );
    // Nothing left to decide: the wrong state is FAILED_PRECONDITION, also for a duty chief who
    // could not decide a third request.
    let refused = console
        .decide_delay(as_actor(STREET_CHIEF, decision(&case, true, "")))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    cluster.stop().await;
}
