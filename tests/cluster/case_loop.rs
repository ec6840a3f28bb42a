//! The closed case loop across the three tiers, and the steps it must refuse.

use std::time::Duration;

use futures::StreamExt;
use tonic::Code;
use wangge_proto as pb;
use wangge_proto::{CaseState, Tier};
use wangge_tests::Cluster;
use wangge_tests::cluster::{DepartmentClient, TierClients, as_actor};
use wangge_tests::fixtures::*;

pub(crate) fn action(case: &pb::Case, note: &str) -> pb::CaseActionRequest {
    pb::CaseActionRequest {
        case_id: case.id.clone(),
        note: note.to_owned(),
        ..Default::default()
    }
}

fn department_action(case: &pb::Case, department: &str, note: &str) -> pb::DepartmentActionRequest {
    pb::DepartmentActionRequest {
        case_id: case.id.clone(),
        department_code: department.to_owned(),
        note: note.to_owned(),
        ..Default::default()
    }
}

/// The department signs for the case (签收) and reports it handled (处理反馈).
pub(crate) async fn sign_and_handle(
    handler: &mut DepartmentClient,
    handler_id: &str,
    case: &pb::Case,
    department: &str,
    result: &str,
) -> pb::Case {
    let signed = handler
        .sign_case(as_actor(
            handler_id,
            department_action(case, department, ""),
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(signed.state(), CaseState::InProgress);
    handler
        .report_handled(as_actor(
            handler_id,
            department_action(case, department, result),
        ))
        .await
        .unwrap()
        .into_inner()
}

/// Every tier holds the same history with `version` events; checks who did what where.
pub(crate) async fn same_everywhere(clients: &TierClients, case: &pb::Case) -> Vec<pb::CaseEvent> {
    let history = clients.converged(&case.id, case.version).await;
    for (i, event) in history.iter().enumerate() {
        assert_eq!(event.seq, i as u64 + 1);
        assert!(
            event.actor.as_ref().is_some_and(|a| !a.id.is_empty()),
            "event {} has an actor",
            event.seq
        );
        assert!(event.at.is_some(), "event {} has a time", event.seq);
        assert_ne!(event.tier(), Tier::Unspecified);
    }
    assert_eq!(history.last().map(|e| e.state_after), Some(case.state));
    history
}

pub(crate) fn street_department(departments: &[pb::Department], kind: &str) -> String {
    departments
        .iter()
        .find(|d| d.kind == kind)
        .unwrap_or_else(|| panic!("no {kind} department"))
        .code
        .clone()
}

/// One case round the whole loop at the street, every step seen by every tier: the village's
/// report, 立案, 派遣 to the street's 城管 unit, the department signs and handles, the check goes
/// down to the village and its answer comes back up, the duty chief closes. Returns the closed
/// case. For the tests that run the loop over another setup (NATS users, leaf nodes).
pub(crate) async fn close_round_the_loop(clients: &TierClients) -> pb::Case {
    let case = report_case(clients, GRID).await;
    let case = file_handle_and_close(clients, &case).await;
    assert_eq!(same_everywhere(clients, &case).await.len(), 8);
    case
}

/// The street's loop for a case reported in `GRID` and held by the street: 立案, 派遣 to its 城管
/// unit, signed and handled, checked on site by the grid worker, closed by the duty chief.
pub(crate) async fn file_handle_and_close(clients: &TierClients, case: &pb::Case) -> pb::Case {
    let mut console = clients.street_console();
    same_everywhere(clients, case).await;
    let case = console
        .accept_case(as_actor(STREET_OPERATOR, action(case, "属实")))
        .await
        .unwrap()
        .into_inner();
    let departments = departments_of(clients, Tier::Street, "350205002000").await;
    let department = street_department(&departments, "城管");
    let dispatch = pb::DispatchCaseRequest {
        case_id: case.id.clone(),
        department_code: department.clone(),
        note: "请尽快清理".into(),
    };
    let case = console
        .dispatch_case(as_actor(STREET_OPERATOR, dispatch))
        .await
        .unwrap()
        .into_inner();
    let case = sign_and_handle(
        &mut clients.street_departments(),
        &format!("dh-{department}"),
        &case,
        &department,
        "已清运",
    )
    .await;
    same_everywhere(clients, &case).await;
    let case = console
        .request_check(as_actor(STREET_OPERATOR, action(&case, "")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(case.owner.as_ref().unwrap().tier(), Tier::Village);
    same_everywhere(clients, &case).await;
    let confirm = pb::ConfirmCheckRequest {
        case_id: case.id.clone(),
        passed: true,
        note: "现场已清理".into(),
        ..Default::default()
    };
    let case = clients
        .field()
        .confirm_check(as_actor(GRID_WORKER, confirm))
        .await
        .unwrap()
        .into_inner();
    same_everywhere(clients, &case).await;
    let case = console
        .close_case(as_actor(STREET_CHIEF, action(&case, "结案")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(case.state(), CaseState::Closed);
    same_everywhere(clients, &case).await;
    case
}

#[tokio::test]
async fn a_report_travels_the_whole_loop_and_every_tier_holds_the_same_history() {
    let cluster = Cluster::start().await;
    let clients = cluster.clients().await;
    let mut console = clients.street_console();
    let mut watch = console
        .watch_cases(as_actor(STREET_OPERATOR, pb::WatchCasesRequest::default()))
        .await
        .unwrap()
        .into_inner();

    // 上报: the location resolves to its grid, community, street and district.
    let reported_at = std::time::Instant::now();
    let case = report_case(&clients, GRID).await;
    assert_eq!(case.grid_code, GRID);
    assert_eq!(case.community_code, "350205002006");
    assert_eq!(case.street_code, "350205002000");
    assert_eq!(case.district_code, "350205000000");
    assert_eq!(case.state(), CaseState::Reported);
    assert!(case.number.starts_with("350205002006-"), "{}", case.number);

    // The street console sees it live within a second, and in its queue.
    let update = tokio::time::timeout(Duration::from_secs(1), watch.next())
        .await
        .expect("the street watch saw the report within a second")
        .unwrap()
        .unwrap();
    assert!(reported_at.elapsed() < Duration::from_secs(1));
    assert_eq!(update.case.unwrap().id, case.id);
    let queue = clients
        .cases(Tier::Street)
        .list_cases(pb::ListCasesRequest {
            states: vec![CaseState::Reported as i32],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(queue.cases.iter().any(|c| c.id == case.id));
    // A console opened later starts with what is already waiting.
    let mut late = console
        .watch_cases(as_actor(
            STREET_OPERATOR,
            pb::WatchCasesRequest {
                states: vec![CaseState::Reported as i32],
                include_existing: true,
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let first = late.next().await.unwrap().unwrap();
    assert_eq!(first.case.unwrap().id, case.id);
    same_everywhere(&clients, &case).await;

    // 立案, 派遣.
    let departments = departments_of(&clients, Tier::Street, "350205002000").await;
    let department = street_department(&departments, "城管");
    let case = console
        .accept_case(as_actor(STREET_OPERATOR, action(&case, "属实")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(case.state(), CaseState::Accepted);
    same_everywhere(&clients, &case).await;
    let dispatch = pb::DispatchCaseRequest {
        case_id: case.id.clone(),
        department_code: department.clone(),
        note: "请尽快清理".into(),
    };
    let case = console
        .dispatch_case(as_actor(STREET_OPERATOR, dispatch))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(case.state(), CaseState::Dispatched);
    same_everywhere(&clients, &case).await;

    // The department signs, handles and reports back.
    let mut handler = clients.street_departments();
    let handler_id = format!("dh-{department}");
    let assigned = handler
        .list_assigned(as_actor(
            &handler_id,
            pb::ListAssignedRequest {
                department_code: department.clone(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(assigned.cases.iter().any(|c| c.id == case.id));
    let case = handler
        .sign_case(as_actor(
            &handler_id,
            department_action(&case, &department, ""),
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(case.state(), CaseState::InProgress);
    same_everywhere(&clients, &case).await;
    let case = handler
        .report_handled(as_actor(
            &handler_id,
            department_action(&case, &department, "已清运"),
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(case.state(), CaseState::Handled);
    same_everywhere(&clients, &case).await;

    // 核查: the grid worker gets the task, live and in the list, and confirms.
    let mut field = clients.field();
    let mut tasks = field
        .watch_tasks(as_actor(
            GRID_WORKER,
            pb::ListTasksRequest {
                org_codes: vec![GRID.into()],
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let case = console
        .request_check(as_actor(STREET_OPERATOR, action(&case, "")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(case.state(), CaseState::Checking);
    assert_eq!(case.owner.as_ref().unwrap().tier(), Tier::Village);
    let task = tokio::time::timeout(Duration::from_secs(5), tasks.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(task.case.unwrap().id, case.id);
    let listed = field
        .list_tasks(as_actor(
            GRID_WORKER,
            pb::ListTasksRequest {
                org_codes: vec![GRID.into()],
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(listed.cases.iter().any(|c| c.id == case.id));
    let confirm = pb::ConfirmCheckRequest {
        case_id: case.id.clone(),
        passed: true,
        note: "现场已清理".into(),
        ..Default::default()
    };
    let case = field
        .confirm_check(as_actor(GRID_WORKER, confirm))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(case.check_outcome(), pb::CheckOutcome::Passed);
    same_everywhere(&clients, &case).await;

    // 结案 by the street once the check is back.
    let case = console
        .close_case(as_actor(STREET_CHIEF, action(&case, "结案")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(case.state(), CaseState::Closed);
    let history = same_everywhere(&clients, &case).await;
    let kinds: Vec<_> = history
        .iter()
        .map(|e| (e.tier(), e.actor.clone().unwrap().id))
        .collect();
    assert_eq!(history.len(), 8);
    assert_eq!(kinds[0], (Tier::Village, GRID_WORKER.to_owned()));
    assert_eq!(kinds[3], (Tier::Street, handler_id));
    assert_eq!(kinds[6], (Tier::Village, GRID_WORKER.to_owned()));
    assert_eq!(kinds[7], (Tier::Street, STREET_CHIEF.to_owned()));
    cluster.stop().await;
}

#[tokio::test]
async fn a_self_handled_case_is_closed_by_the_community() {
    let cluster = Cluster::start().await;
    let clients = cluster.clients().await;
    let mut request = report(&client_id(), GRID);
    request.self_handling = Some(pb::SelfHandling {
        resolution: "当场清理".into(),
    });
    let case = clients
        .field()
        .report_case(as_actor(GRID_WORKER, request))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(case.state(), CaseState::SelfHandled);
    same_everywhere(&clients, &case).await;

    // The street may not accept what the community holds.
    let refused = clients
        .street_console()
        .accept_case(as_actor(STREET_OPERATOR, action(&case, "")))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");

    let review = pb::ReviewRequest {
        case_id: case.id.clone(),
        note: "核实无误".into(),
    };
    let case = clients
        .community()
        .approve_self_handled(as_actor(COMMUNITY_STAFF, review))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(case.state(), CaseState::Closed);
    let history = same_everywhere(&clients, &case).await;
    assert_eq!(history.len(), 2);
    assert_eq!(
        history[1].actor.as_ref().unwrap().role(),
        pb::Role::CommunityStaff
    );
    cluster.stop().await;
}

#[tokio::test]
async fn an_escalated_case_closes_at_the_district_through_the_same_loop() {
    let cluster = Cluster::start().await;
    let clients = cluster.clients().await;
    let case = report_case(&clients, OTHER_GRID).await;
    // The street acts once the report has reached it.
    same_everywhere(&clients, &case).await;
    let mut street = clients.street_console();
    let case = street
        .accept_case(as_actor(STREET_OPERATOR, action(&case, "")))
        .await
        .unwrap()
        .into_inner();
    let case = street
        .escalate_case(as_actor(
            STREET_OPERATOR,
            action(&case, "涉及多部门，街道无法处置"),
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(case.state(), CaseState::Escalated);
    assert_eq!(case.owner.as_ref().unwrap().tier(), Tier::District);
    same_everywhere(&clients, &case).await;

    let mut district = clients.district_console();
    let departments = departments_of(&clients, Tier::District, "350205000000").await;
    let department = street_department(&departments, "城管");
    // The street cannot dispatch it any more; the district can.
    let refused = street
        .dispatch_case(as_actor(
            STREET_OPERATOR,
            pb::DispatchCaseRequest {
                case_id: case.id.clone(),
                department_code: department.clone(),
                note: String::new(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    let case = district
        .accept_case(as_actor(DISTRICT_OPERATOR, action(&case, "")))
        .await
        .unwrap()
        .into_inner();
    let dispatch = pb::DispatchCaseRequest {
        case_id: case.id.clone(),
        department_code: department.clone(),
        note: String::new(),
    };
    let case = district
        .dispatch_case(as_actor(DISTRICT_OPERATOR, dispatch))
        .await
        .unwrap()
        .into_inner();
    let mut handler = clients.district_departments();
    let handler_id = format!("dh-{department}");
    let case = sign_and_handle(&mut handler, &handler_id, &case, &department, "已整治").await;
    let case = district
        .request_check(as_actor(DISTRICT_OPERATOR, action(&case, "")))
        .await
        .unwrap()
        .into_inner();
    same_everywhere(&clients, &case).await;
    let confirm = pb::ConfirmCheckRequest {
        case_id: case.id.clone(),
        passed: true,
        ..Default::default()
    };
    let case = clients
        .field()
        .confirm_check(as_actor(&format!("gw-{OTHER_GRID}"), confirm))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        case.owner.as_ref().unwrap().tier(),
        Tier::District,
        "the check goes back to who asked"
    );
    // The district acts once the check has reached it.
    same_everywhere(&clients, &case).await;
    let case = district
        .close_case(as_actor(DISTRICT_CHIEF, action(&case, "")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(case.state(), CaseState::Closed);
    let history = same_everywhere(&clients, &case).await;
    assert_eq!(history.len(), 10);
    assert!(
        history[3..]
            .iter()
            .filter(|e| e.tier() != Tier::Village)
            .all(|e| e.tier() == Tier::District)
    );
    cluster.stop().await;
}

#[tokio::test]
async fn a_returned_case_is_dispatched_again() {
    let cluster = Cluster::start().await;
    let clients = cluster.clients().await;
    let departments = departments_of(&clients, Tier::Street, "350205002000").await;
    let right = street_department(&departments, "城管");
    let wrong = departments
        .iter()
        .find(|d| d.code != right)
        .unwrap()
        .code
        .clone();
    let mut console = clients.street_console();
    let case = report_case(&clients, GRID).await;
    // The street acts once the report has reached it.
    same_everywhere(&clients, &case).await;
    console
        .accept_case(as_actor(STREET_OPERATOR, action(&case, "")))
        .await
        .unwrap();
    let dispatch = |department: &str| pb::DispatchCaseRequest {
        case_id: case.id.clone(),
        department_code: department.to_owned(),
        note: String::new(),
    };
    console
        .dispatch_case(as_actor(STREET_OPERATOR, dispatch(&wrong)))
        .await
        .unwrap();

    let mut handler = clients.street_departments();
    let wrong_handler = format!("dh-{wrong}");
    // A return needs a reason.
    let refused = handler
        .return_case(as_actor(
            &wrong_handler,
            department_action(&case, &wrong, ""),
        ))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    assert!(refused.message().contains("reason"), "{refused:?}");
    // Another department cannot act on it.
    let refused = handler
        .sign_case(as_actor(
            &format!("dh-{right}"),
            department_action(&case, &right, ""),
        ))
        .await
        .unwrap_err();
    // The case is dispatched to another department: not this handler's to act on.
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    let returned = handler
        .return_case(as_actor(
            &wrong_handler,
            department_action(&case, &wrong, "非本部门职责，应由城管处置"),
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(returned.state(), CaseState::ReturnRequested);
    same_everywhere(&clients, &returned).await;
    // 回退 needs the duty chief: no re-dispatch before that, and an operator cannot decide it.
    let refused = console
        .dispatch_case(as_actor(STREET_OPERATOR, dispatch(&right)))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    let decision = pb::DecisionRequest {
        case_id: case.id.clone(),
        approve: true,
        note: String::new(),
    };
    let refused = console
        .decide_return(as_actor(STREET_OPERATOR, decision.clone()))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    let approved = console
        .decide_return(as_actor(STREET_CHIEF, decision))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(approved.state(), CaseState::Accepted);
    assert_eq!(approved.department_code, "");

    let case = console
        .dispatch_case(as_actor(STREET_OPERATOR, dispatch(&right)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(case.state(), CaseState::Dispatched);
    assert_eq!(case.department_code, right);
    let case = handler
        .sign_case(as_actor(
            &format!("dh-{right}"),
            department_action(&case, &right, ""),
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(case.state(), CaseState::InProgress);
    let history = same_everywhere(&clients, &case).await;
    let reason = history.iter().find_map(|e| match &e.kind {
        Some(pb::case_event::Kind::ReturnRequested(r)) => Some(r.reason.clone()),
        _ => None,
    });
    assert_eq!(reason.as_deref(), Some("非本部门职责，应由城管处置"));
    cluster.stop().await;
}

#[tokio::test]
async fn illegal_steps_are_refused_and_change_nothing() {
    let cluster = Cluster::start().await;
    let clients = cluster.clients().await;
    let departments = departments_of(&clients, Tier::Street, "350205002000").await;
    let department = street_department(&departments, "城管");
    let mut console = clients.street_console();
    let case = report_case(&clients, GRID).await;
    // The street acts once the report has reached it.
    same_everywhere(&clients, &case).await;

    // Dispatching before filing, checking before handling, closing what was never checked.
    let dispatch = pb::DispatchCaseRequest {
        case_id: case.id.clone(),
        department_code: department.clone(),
        note: String::new(),
    };
    let refused = console
        .dispatch_case(as_actor(STREET_OPERATOR, dispatch.clone()))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    console
        .accept_case(as_actor(STREET_OPERATOR, action(&case, "")))
        .await
        .unwrap();
    console
        .dispatch_case(as_actor(STREET_OPERATOR, dispatch))
        .await
        .unwrap();
    let handler_id = format!("dh-{department}");
    let mut handler = clients.street_departments();
    let case = sign_and_handle(&mut handler, &handler_id, &case, &department, "done").await;
    let before = same_everywhere(&clients, &case).await;

    let refused = console
        .close_case(as_actor(STREET_CHIEF, action(&case, "")))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    assert!(refused.message().contains("check"), "{refused:?}");
    // The grid worker cannot confirm a check nobody asked for.
    let confirm = pb::ConfirmCheckRequest {
        case_id: case.id.clone(),
        passed: true,
        ..Default::default()
    };
    let refused = clients
        .field()
        .confirm_check(as_actor(GRID_WORKER, confirm.clone()))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    // The district cannot act on the street's case.
    let refused = clients
        .district_console()
        .accept_case(as_actor(DISTRICT_OPERATOR, action(&case, "")))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    let refused = clients
        .district_console()
        .close_case(as_actor(DISTRICT_CHIEF, action(&case, "")))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");

    // While the village holds the check, the street cannot close; after a failed check neither.
    let case = console
        .request_check(as_actor(STREET_OPERATOR, action(&case, "")))
        .await
        .unwrap()
        .into_inner();
    let refused = console
        .close_case(as_actor(STREET_CHIEF, action(&case, "")))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    // The grid worker answers once the request has reached the village.
    same_everywhere(&clients, &case).await;
    let failed = pb::ConfirmCheckRequest {
        case_id: case.id.clone(),
        passed: false,
        note: "仍有垃圾".into(),
        ..Default::default()
    };
    let case = clients
        .field()
        .confirm_check(as_actor(GRID_WORKER, failed))
        .await
        .unwrap()
        .into_inner();
    // Once the failed check is back at the street, closing is still refused: it did not pass.
    same_everywhere(&clients, &case).await;
    let refused = console
        .close_case(as_actor(STREET_CHIEF, action(&case, "")))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    assert!(refused.message().contains("failed"), "{refused:?}");
    let history = same_everywhere(&clients, &case).await;
    assert_eq!(
        history.len(),
        before.len() + 2,
        "only the check request and the check were added"
    );
    assert_eq!(&history[..before.len()], &before[..]);

    // 返工: back to the same department.
    let case = console
        .rework_case(as_actor(STREET_OPERATOR, action(&case, "返工")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(case.state(), CaseState::Dispatched);
    assert_eq!(case.department_code, department);
    same_everywhere(&clients, &case).await;
    cluster.stop().await;
}
