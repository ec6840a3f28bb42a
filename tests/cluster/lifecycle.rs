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

use crate::case_loop::close_round_the_loop;

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

#[tokio::test]
async fn a_merged_report_follows_the_case_it_repeats_and_its_reporter_sees_the_outcome() {
    let cluster = Cluster::start().await;
    let clients = cluster.clients().await;
    let mut console = clients.street_console();
    let original = reported(&clients).await;
    let duplicate = reported(&clients).await;
    assert_eq!(
        duplicate
            .possible_duplicates
            .first()
            .map(|d| d.case_id.as_str()),
        Some(original.id.as_str())
    );

    // Only into an open case of this center, and never into itself.
    let refused = console
        .merge_case(as_actor(
            STREET_OPERATOR,
            pb::MergeCaseRequest {
                case_id: duplicate.id.clone(),
                into_case_id: duplicate.id.clone(),
                note: String::new(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    let merged = console
        .merge_case(as_actor(
            STREET_OPERATOR,
            pb::MergeCaseRequest {
                case_id: duplicate.id.clone(),
                into_case_id: original.id.clone(),
                note: "同一处暴露垃圾".into(),
            },
        ))
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
    let get = |token: String| {
        let mut cases = clients.cases(Tier::Village);
        let id = original.id.clone();
        async move {
            cases
                .get_case(identity::with_token(
                    &token,
                    pb::GetCaseRequest { case_id: id },
                ))
                .await
        }
    };
    let follows = get(identity::sign(&moved)).await.unwrap().into_inner();
    assert_eq!(follows.merged.len(), 1);
    assert_eq!(follows.merged[0].case_id, duplicate.id);
    assert_eq!(follows.merged[0].reporter.as_ref().unwrap().id, GRID_WORKER);
    let refused = get(identity::token_for(&format!("gw-{OTHER_GRID}")))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    // A merged case takes no further steps.
    let refused = console
        .accept_case(as_actor(STREET_OPERATOR, action(&merged, "")))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
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
