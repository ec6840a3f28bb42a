//! The command clock from outside, on virtual time: every tier reads one injected clock that the
//! test moves forward, so days of deadlines pass in milliseconds. Lights turn yellow and red and
//! raise 督办 once per threshold per stage, at the tier that owns the case, also with two instances
//! of it and across one killed and started again; an approved extension adds to the limit; a hung
//! case's clock stops.

use std::sync::Arc;
use std::time::Duration;

use chrono::{Datelike, Duration as Span, TimeZone, Utc, Weekday};
use futures::StreamExt;
use tonic::Code;
use wangge_proto as pb;
use wangge_proto::Tier;
use wangge_tests::cluster::TierHandle;
use wangge_tests::cluster::{Topology, as_actor};
use wangge_tests::db::TestDb;
use wangge_tests::fixtures::*;
use wangge_tests::{Cluster, TierClients, eventually};
use wangge_tier::time::{ShiftedTime, TimeSource as _};

const DEPARTMENT: &str = "350205002-cgzd";
const HANDLER: &str = "dh-350205002-cgzd";
const LEADER: &str = "ld-350205002000";

/// A cluster whose tiers all read `time` and scan for due 督办 every second.
async fn cluster_on(time: &Arc<ShiftedTime>) -> Cluster {
    let time = time.clone();
    Cluster::start_configured(
        Topology::from_env(),
        [
            wangge_tests::cluster::VILLAGE_SCOPE,
            wangge_tests::cluster::STREET_SCOPE,
            wangge_tests::cluster::DISTRICT_SCOPE,
        ],
        move |config| {
            config.clock.time = Some(time.clone());
            config.clock.supervise_every_secs = 1;
        },
    )
    .await
}

/// Moves `time` to 09:00 China time of the next Monday, the start of an ordinary working week.
fn to_next_monday_morning(time: &ShiftedTime) {
    let china = chrono::FixedOffset::east_opt(8 * 3600).unwrap();
    let mut day = time.now().with_timezone(&china).date_naive() + Span::days(1);
    while day.weekday() != Weekday::Mon {
        day += Span::days(1);
    }
    let nine = china
        .from_local_datetime(&day.and_hms_opt(9, 0, 0).unwrap())
        .unwrap()
        .with_timezone(&Utc);
    time.advance_to(nine);
}

fn action(case: &pb::Case, note: &str) -> pb::CaseActionRequest {
    pb::CaseActionRequest {
        case_id: case.id.clone(),
        note: note.to_owned(),
        ..Default::default()
    }
}

fn decision(case: &pb::Case, approve: bool) -> pb::DecisionRequest {
    pb::DecisionRequest {
        case_id: case.id.clone(),
        approve,
        note: if approve {
            String::new()
        } else {
            "不同意".into()
        },
    }
}

fn stage_clock(case: &pb::Case) -> pb::ClockStanding {
    case.clocks
        .as_ref()
        .and_then(|c| c.stage)
        .unwrap_or_else(|| panic!("case {} has no stage clock: {case:?}", case.number))
}

/// The automatic supervisions in a history: (stage, level).
fn automatic(history: &[pb::CaseEvent]) -> Vec<(pb::Stage, pb::SupervisionLevel)> {
    history
        .iter()
        .filter_map(|e| match &e.kind {
            Some(pb::case_event::Kind::Supervised(s)) if s.automatic => {
                Some((s.stage(), s.level()))
            }
            _ => None,
        })
        .collect()
}

async fn get(clients: &TierClients, tier: Tier, case: &pb::Case) -> pb::Case {
    clients
        .cases(tier)
        .get_case(as_actor(
            STREET_OPERATOR,
            pb::GetCaseRequest {
                case_id: case.id.clone(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
}

/// Waits until the street's history of `case` holds `count` automatic supervisions.
async fn supervisions(clients: &TierClients, case: &pb::Case, count: usize) -> Vec<pb::CaseEvent> {
    eventually(
        "the automatic supervision",
        Duration::from_secs(20),
        || async {
            let history = clients.history(Tier::Street, &case.id).await;
            (automatic(&history).len() >= count).then_some(history)
        },
    )
    .await
}

async fn accept_dispatch_sign(clients: &TierClients, case: &pb::Case) -> pb::Case {
    let mut console = clients.street_console();
    console
        .accept_case(as_actor(STREET_OPERATOR, action(case, "")))
        .await
        .unwrap();
    console
        .dispatch_case(as_actor(
            STREET_OPERATOR,
            pb::DispatchCaseRequest {
                case_id: case.id.clone(),
                department_code: DEPARTMENT.into(),
                note: String::new(),
            },
        ))
        .await
        .unwrap();
    clients
        .street_departments()
        .sign_case(as_actor(
            HANDLER,
            pb::DepartmentActionRequest {
                case_id: case.id.clone(),
                department_code: DEPARTMENT.into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
}

#[tokio::test]
async fn lights_turn_yellow_then_red_and_raise_one_supervision_each_that_the_console_sees() {
    let time = ShiftedTime::new();
    to_next_monday_morning(&time);
    let cluster = cluster_on(&time).await;
    let clients = cluster.clients().await;
    let mut watch = clients
        .street_console()
        .watch_cases(as_actor(STREET_OPERATOR, pb::WatchCasesRequest::default()))
        .await
        .unwrap()
        .into_inner();

    // 受理: 20 minutes of wall-clock time at the street.
    let case = report_case(&clients, GRID).await;
    clients.converged(&case.id, 1).await;
    let street = get(&clients, Tier::Street, &case).await;
    let clock = stage_clock(&street);
    assert_eq!(
        (clock.stage(), clock.light(), clock.limit.unwrap().amount),
        (pb::Stage::Accept, pb::Light::Green, 20)
    );

    // 17 of 20 minutes: 85 %, yellow, and one automatic 督办 at the street.
    time.advance(Span::minutes(17));
    let history = supervisions(&clients, &case, 1).await;
    assert_eq!(
        automatic(&history),
        vec![(pb::Stage::Accept, pb::SupervisionLevel::Yellow)]
    );
    let supervised = history.last().unwrap();
    assert_eq!(
        supervised.tier(),
        Tier::Street,
        "raised where the case is held"
    );
    assert_eq!(supervised.actor.as_ref().unwrap().role(), pb::Role::System);
    let street = get(&clients, Tier::Street, &case).await;
    assert_eq!(stage_clock(&street).light(), pb::Light::Yellow);
    assert_eq!(street.supervision(), pb::SupervisionLevel::Yellow);

    // The console's live stream showed the light change with the supervision.
    let seen = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(update) = watch.next().await {
            let update = update.unwrap();
            let is_supervision = matches!(
                update.event.as_ref().and_then(|e| e.kind.as_ref()),
                Some(pb::case_event::Kind::Supervised(_))
            );
            if is_supervision {
                return update.case.unwrap();
            }
        }
        panic!("the watch ended");
    })
    .await
    .expect("the console to see the supervision");
    assert_eq!(stage_clock(&seen).light(), pb::Light::Yellow);

    // Several scans later: still one.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let history = clients.history(Tier::Street, &case.id).await;
    assert_eq!(automatic(&history).len(), 1, "yellow is raised once");

    // Past 20 minutes: red, once.
    time.advance(Span::minutes(4));
    let history = supervisions(&clients, &case, 2).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let history_later = clients.history(Tier::Street, &case.id).await;
    assert_eq!(history_later.len(), history.len(), "red is raised once");
    assert_eq!(
        automatic(&history),
        vec![
            (pb::Stage::Accept, pb::SupervisionLevel::Yellow),
            (pb::Stage::Accept, pb::SupervisionLevel::Red),
        ]
    );
    let street = get(&clients, Tier::Street, &case).await;
    let clock = stage_clock(&street);
    assert_eq!(clock.light(), pb::Light::Red);
    assert!(clock.left_seconds < 0, "overdue: {clock:?}");
    // Every tier holds the same supervisions.
    let version = history.len() as u64;
    clients.converged(&case.id, version).await;
    // The operator sees the scan in the street's status.
    let status = tier_status(&cluster.street.channel().await).await;
    let clock = status.clock.unwrap();
    assert_eq!(clock.supervisions_raised, 2, "{clock:?}");
    assert!(
        clock.open_cases >= 1 && clock.last_scan_seconds_ago >= 0.0,
        "{clock:?}"
    );
    assert!(
        clock.last_scan_error.is_empty() && clock.limit_rules > 0,
        "{clock:?}"
    );
    assert!(status.problems.is_empty(), "{:?}", status.problems);

    // Filing starts the next stage: its clock is green and its thresholds are its own.
    let accepted = clients
        .street_console()
        .accept_case(as_actor(STREET_OPERATOR, action(&case, "")))
        .await
        .unwrap()
        .into_inner();
    let clock = stage_clock(&accepted);
    assert_eq!(
        (clock.stage(), clock.light()),
        (pb::Stage::Dispatch, pb::Light::Green)
    );
    assert_eq!(
        accepted.supervision(),
        pb::SupervisionLevel::Red,
        "the card stays on the case"
    );
    cluster.stop().await;
}

#[tokio::test]
async fn an_extension_adds_to_the_limit_and_a_hung_case_stops_its_clock() {
    let time = ShiftedTime::new();
    to_next_monday_morning(&time);
    let cluster = cluster_on(&time).await;
    let clients = cluster.clients().await;
    let mut console = clients.street_console();
    let mut handler = clients.street_departments();
    let case = report_case(&clients, GRID).await;
    clients.converged(&case.id, 1).await;
    // 暴露垃圾: 4 working hours to handle; its standard extension is 4 working hours.
    let signed = accept_dispatch_sign(&clients, &case).await;
    let clock = stage_clock(&signed);
    assert_eq!(clock.stage(), pb::Stage::Handle);
    let four_hours = 4 * 3600;
    assert!(
        (four_hours - 60..=four_hours).contains(&clock.left_seconds),
        "{clock:?}"
    );

    let ask = |amount: u32, unit: pb::TimeUnit| pb::DelayRequest {
        case_id: case.id.clone(),
        department_code: DEPARTMENT.into(),
        extension: Some(pb::TimeLimit {
            amount,
            unit: unit as i32,
        }),
        reason: "清运车辆故障".into(),
    };
    // A first extension within the standard: the duty chief grants it.
    handler
        .request_delay(as_actor(HANDLER, ask(4, pb::TimeUnit::WorkingHours)))
        .await
        .unwrap();
    let extended = console
        .decide_delay(as_actor(STREET_CHIEF, decision(&case, true)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(extended.state(), pb::CaseState::InProgress);
    let left = stage_clock(&extended).left_seconds;
    assert!(
        (2 * four_hours - 120..=2 * four_hours).contains(&left),
        "the extension adds 4 working hours: {left}"
    );

    // A second one needs the leader: the duty chief's decision is refused and changes nothing.
    handler
        .request_delay(as_actor(HANDLER, ask(1, pb::TimeUnit::WorkingHours)))
        .await
        .unwrap();
    let refused = console
        .decide_delay(as_actor(STREET_CHIEF, decision(&case, true)))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    assert!(refused.message().contains("leader"), "{refused:?}");
    let denied = console
        .decide_delay(as_actor(LEADER, decision(&case, false)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        denied.extensions.len(),
        1,
        "a denied extension adds nothing"
    );

    // 挂账: only the leader approves; the clock stops while the case is hung.
    handler
        .request_hang(as_actor(
            HANDLER,
            pb::DepartmentActionRequest {
                case_id: case.id.clone(),
                department_code: DEPARTMENT.into(),
                note: "需等待雨季过后施工".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap();
    let refused = console
        .decide_hang(as_actor(STREET_CHIEF, decision(&case, true)))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    let hung = console
        .decide_hang(as_actor(LEADER, decision(&case, true)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(hung.state(), pb::CaseState::Hung);
    let before = stage_clock(&hung);
    assert!(before.stopped);
    // Nine days on, moved by an admin through the API as the demo does.
    let moved = pb::admin_service_client::AdminServiceClient::new(cluster.street.channel().await)
        .advance_clock(as_actor(
            "admin-350205000000",
            pb::AdvanceClockRequest {
                seconds: 9 * 24 * 3600,
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(moved.now.unwrap().seconds >= (time.now() - Span::seconds(5)).timestamp());
    let still = stage_clock(&get(&clients, Tier::Street, &case).await);
    assert!(still.stopped);
    assert!(
        (still.left_seconds - before.left_seconds).abs() <= 5,
        "nine days hung cost nothing: {before:?} then {still:?}"
    );
    assert_eq!(still.light(), pb::Light::Green);
    let history = clients.history(Tier::Street, &case.id).await;
    assert!(automatic(&history).is_empty(), "no supervision while hung");

    // 挂账恢复: the clock runs again from where it stopped.
    let resumed = console
        .resume_case(as_actor(STREET_OPERATOR, action(&case, "")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resumed.state(), pb::CaseState::InProgress);
    let running = stage_clock(&resumed);
    assert!(!running.stopped);
    assert!((running.left_seconds - before.left_seconds).abs() <= 5);
    cluster.stop().await;
}

#[tokio::test]
async fn supervision_is_raised_once_with_two_instances_of_the_tier_and_across_a_kill() {
    let time = ShiftedTime::new();
    to_next_monday_morning(&time);
    let mut cluster = cluster_on(&time).await;
    let clients = cluster.clients().await;
    // A second instance of the street on the same database and consumer: both scan.
    let shared_db = TestDb {
        name: String::new(),
        url: cluster.street.db.url.clone(),
    };
    let second_time = time.clone();
    let mut second = TierHandle::start_with(
        Tier::Street,
        wangge_tests::cluster::STREET_SCOPE,
        &cluster.street.config.nats_url,
        shared_db,
        move |config| {
            config.clock.time = Some(second_time.clone());
            config.clock.supervise_every_secs = 1;
        },
    )
    .await;

    let mut cases = Vec::new();
    for _ in 0..6 {
        let case = report_case(&clients, GRID).await;
        clients.converged(&case.id, 1).await;
        clients
            .street_console()
            .accept_case(as_actor(STREET_OPERATOR, action(&case, "")))
            .await
            .unwrap();
        cases.push(case);
    }
    // 派遣: 10 minutes. 9 minutes on, every case is yellow; the first instance is killed while
    // both scan, and started again.
    time.advance(Span::minutes(9));
    tokio::time::sleep(Duration::from_millis(600)).await;
    cluster.street.kill().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    cluster.street.resume().await;
    for case in &cases {
        supervisions(&clients, case, 1).await;
    }
    // Past the limit: red.
    time.advance(Span::minutes(2));
    for case in &cases {
        supervisions(&clients, case, 2).await;
    }
    // Let both instances scan a few more times, then count.
    tokio::time::sleep(Duration::from_secs(3)).await;
    for case in &cases {
        let history = clients.history(Tier::Street, &case.id).await;
        assert_eq!(
            automatic(&history),
            vec![
                (pb::Stage::Dispatch, pb::SupervisionLevel::Yellow),
                (pb::Stage::Dispatch, pb::SupervisionLevel::Red),
            ],
            "case {}",
            case.number
        );
        clients.converged(&case.id, history.len() as u64).await;
    }
    second.stop().await.unwrap();
    cluster.stop().await;
}

#[tokio::test]
async fn a_tier_on_the_machines_clock_refuses_to_move_it() {
    let cluster = Cluster::start().await;
    let mut admin =
        pb::admin_service_client::AdminServiceClient::new(cluster.street.channel().await);
    let refused = admin
        .advance_clock(as_actor(
            "admin-350205000000",
            pb::AdvanceClockRequest { seconds: 3600 },
        ))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    let refused = admin
        .advance_clock(as_actor(
            "admin-350205000000",
            pb::AdvanceClockRequest { seconds: -5 },
        ))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    cluster.stop().await;
}

#[tokio::test]
async fn work_lists_come_most_urgent_first_then_least_time_left() {
    let time = ShiftedTime::new();
    to_next_monday_morning(&time);
    let cluster = cluster_on(&time).await;
    let clients = cluster.clients().await;
    let report = |category: &str, urgency: pb::Urgency| {
        let mut request = report(&client_id(), GRID);
        request.category_code = category.to_owned();
        request.urgency = urgency as i32;
        request
    };
    let mut field = clients.field();
    let mut signed = Vec::new();
    // 暴露垃圾 (4 working hours to handle), 道路不洁 (2), and an urgent 暴露垃圾.
    for request in [
        report(CATEGORY, pb::Urgency::Normal),
        report("szcg-01-02", pb::Urgency::Normal),
        report(CATEGORY, pb::Urgency::Urgent),
    ] {
        let case = field
            .report_case(as_actor(GRID_WORKER, request))
            .await
            .unwrap()
            .into_inner();
        clients.converged(&case.id, 1).await;
        signed.push(accept_dispatch_sign(&clients, &case).await);
    }
    let listed: Vec<String> = clients
        .street_departments()
        .list_assigned(as_actor(
            HANDLER,
            pb::ListAssignedRequest {
                department_code: DEPARTMENT.into(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .cases
        .into_iter()
        .map(|c| c.id)
        .collect();
    assert_eq!(
        listed,
        vec![
            signed[2].id.clone(),
            signed[1].id.clone(),
            signed[0].id.clone()
        ],
        "urgent first, then the 2-hour case before the 4-hour one"
    );
    cluster.stop().await;
}

#[tokio::test]
async fn reseeded_limits_apply_after_a_reload_without_a_restart() {
    let time = ShiftedTime::new();
    to_next_monday_morning(&time);
    let cluster = cluster_on(&time).await;
    let clients = cluster.clients().await;
    let case = report_case(&clients, GRID).await;
    clients.converged(&case.id, 1).await;
    let limit = |case: &pb::Case| stage_clock(case).limit.unwrap().amount;
    assert_eq!(limit(&get(&clients, Tier::Street, &case).await), 20);
    // What wangge-seed writes when the city changes its accept limit to 30 minutes.
    let pool = cluster.street.db.pool().await;
    sqlx::query(
        "UPDATE time_limits SET amount = 30
         WHERE stage = 'accept' AND category_code IS NULL AND urgency IS NULL",
    )
    .execute(&pool)
    .await
    .unwrap();
    assert_eq!(limit(&get(&clients, Tier::Street, &case).await), 20);
    let reloaded =
        pb::admin_service_client::AdminServiceClient::new(cluster.street.channel().await)
            .reload_grids(as_actor("admin-350205000000", pb::ReloadGridsRequest {}))
            .await
            .unwrap()
            .into_inner();
    assert!(
        reloaded.limit_rules > 0 && reloaded.calendars > 0,
        "{reloaded:?}"
    );
    assert_eq!(limit(&get(&clients, Tier::Street, &case).await), 30);
    cluster.stop().await;
}
