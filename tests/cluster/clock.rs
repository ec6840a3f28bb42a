//! The command clock from outside, on virtual time: every tier reads one injected clock that the
//! test moves forward, so days of deadlines pass in milliseconds. Lights turn yellow and red and
//! raise 督办 once per threshold per stage, at the tier that owns the case, also when its only
//! instance, or one of two, is killed in the middle of a scan and started again; the street's and
//! the district's live watches show the lights changing, with or without an event; an approved
//! extension adds to the limit; a hung case's clock stops; work lists come most urgent first.

use std::time::Duration;

use chrono::{Datelike, Duration as Span, TimeZone, Utc, Weekday};
use futures::StreamExt;
use tonic::Code;
use wangge_proto as pb;
use wangge_proto::Tier;
use wangge_tests::cluster::TierHandle;
use wangge_tests::cluster::as_actor;
use wangge_tests::db::TestDb;
use wangge_tests::fixtures::*;
use wangge_tests::nats::NatsServer;
use wangge_tests::process::TierProcess;
use wangge_tests::{Cluster, TierClients, eventually};
use wangge_tier::time::{ShiftedTime, TimeSource as _};

const DEPARTMENT: &str = "350205002-cgzd";
const HANDLER: &str = "dh-350205002-cgzd";
const LEADER: &str = "ld-350205002000";

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

/// The street console's live watch of its whole scope.
async fn street_watch(clients: &TierClients) -> tonic::Streaming<pb::CaseUpdate> {
    clients
        .street_console()
        .watch_cases(as_actor(STREET_OPERATOR, pb::WatchCasesRequest::default()))
        .await
        .unwrap()
        .into_inner()
}

async fn accept_dispatch_sign(clients: &TierClients, case: &pb::Case) -> pb::Case {
    accept_and_dispatch(clients, case).await;
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
    let cluster = Cluster::start_on_time(&time).await;
    let clients = cluster.clients().await;
    let mut watch = street_watch(&clients).await;

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

/// The next update of `case` on `watch` that `wanted` picks, within 20 seconds.
async fn next_update(
    watch: &mut tonic::Streaming<pb::CaseUpdate>,
    case: &pb::Case,
    what: &str,
    wanted: impl Fn(&pb::CaseUpdate) -> bool,
) -> pb::CaseUpdate {
    tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(update) = watch.next().await {
            let update = update.unwrap();
            let of_case = update.case.as_ref().is_some_and(|c| c.id == case.id);
            if of_case && wanted(&update) {
                return update;
            }
        }
        panic!("the watch ended");
    })
    .await
    .unwrap_or_else(|_| panic!("the watcher to see {what}"))
}

fn supervised_level(update: &pb::CaseUpdate) -> Option<pb::SupervisionLevel> {
    match update.event.as_ref().and_then(|e| e.kind.as_ref()) {
        Some(pb::case_event::Kind::Supervised(s)) => Some(s.level()),
        _ => None,
    }
}

fn case_clock(case: &pb::Case) -> pb::ClockStanding {
    case.clocks
        .as_ref()
        .and_then(|c| c.case)
        .unwrap_or_else(|| panic!("case {} has no whole-case clock: {case:?}", case.number))
}

#[tokio::test]
async fn the_districts_watch_shows_a_street_case_turning_yellow_then_red() {
    let time = ShiftedTime::new();
    to_next_monday_morning(&time);
    let cluster = Cluster::start_on_time(&time).await;
    let clients = cluster.clients().await;
    let mut watch = clients
        .district_console()
        .watch_cases(as_actor(
            DISTRICT_OPERATOR,
            pb::WatchCasesRequest::default(),
        ))
        .await
        .unwrap()
        .into_inner();
    let case = report_case(&clients, GRID).await;
    clients.converged(&case.id, 1).await;

    // 受理 takes 20 minutes at the street: 17 on, yellow; 21 on, red. The street raises each
    // 督办, the district receives it and sends it on with the case's light as it stands there.
    for (minutes, level, light) in [
        (17, pb::SupervisionLevel::Yellow, pb::Light::Yellow),
        (4, pb::SupervisionLevel::Red, pb::Light::Red),
    ] {
        time.advance(Span::minutes(minutes));
        let update = next_update(&mut watch, &case, level.as_str_name(), |u| {
            supervised_level(u) == Some(level)
        })
        .await;
        let event = update.event.unwrap();
        assert_eq!(
            event.tier(),
            Tier::Street,
            "raised by the owner, replicated"
        );
        let seen = update.case.unwrap();
        assert_eq!(seen.owner.as_ref().unwrap().tier(), Tier::Street);
        let clock = stage_clock(&seen);
        assert_eq!((clock.stage(), clock.light()), (pb::Stage::Accept, light));
        assert_eq!(seen.supervision(), level);
    }
    cluster.stop().await;
}

#[tokio::test]
async fn a_watch_is_sent_a_light_that_changes_without_an_event() {
    let time = ShiftedTime::new();
    to_next_monday_morning(&time);
    let cluster = Cluster::start_on_time(&time).await;
    let clients = cluster.clients().await;
    let mut watch = street_watch(&clients).await;
    let case = report_case(&clients, GRID).await;
    clients.converged(&case.id, 1).await;
    next_update(&mut watch, &case, "the report", |u| u.event.is_some()).await;

    // The accept stage runs out (20 minutes) and raises its two 督办; the whole case (7 working
    // days) is still green.
    time.advance(Span::minutes(21));
    let history = supervisions(&clients, &case, 2).await;
    let street = get(&clients, Tier::Street, &case).await;
    assert_eq!(stage_clock(&street).light(), pb::Light::Red);
    assert_eq!(case_clock(&street).light(), pb::Light::Green);

    // Day after day with nothing done, until the whole-case clock has used 80 %: nothing raises
    // an event for that (督办 follows the stage's clock), and yet the watcher is told.
    let mut days = 0;
    let light = loop {
        time.advance(Span::days(1));
        days += 1;
        let light = case_clock(&get(&clients, Tier::Street, &case).await).light();
        if light != pb::Light::Green {
            break light;
        }
        assert!(
            days < 30,
            "the whole-case clock stays green after {days} days"
        );
    };
    let update = next_update(&mut watch, &case, "the whole-case light", |u| {
        u.case.as_ref().map(|c| case_clock(c).light()) == Some(light)
    })
    .await;
    assert!(update.event.is_none(), "{update:?}");
    assert_eq!(
        clients.history(Tier::Street, &case.id).await.len(),
        history.len(),
        "no event changed the light"
    );
    cluster.stop().await;
}

#[tokio::test]
async fn an_extension_adds_to_the_limit_and_a_hung_case_stops_its_clock() {
    let time = ShiftedTime::new();
    to_next_monday_morning(&time);
    let cluster = Cluster::start_on_time(&time).await;
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

/// Cases reported at once for the kill tests: enough that one scan raising their 督办 (a locked
/// write each) takes long, so that a kill can land in the middle of it; more than the scan's page
/// of 500, so it also resumes past a page.
const MANY: usize = 600;

/// The street as its binary, on virtual time, scanning every second: only a real process dies with
/// its scan (a killed in-process tier's background tasks would keep running).
async fn street_process(db: &TestDb, nats: &NatsServer) -> TierProcess {
    let env = [
        ("WANGGE_CLOCK__VIRTUAL_TIME", "true"),
        ("WANGGE_CLOCK__SUPERVISE_EVERY_SECS", "1"),
        // One test subject reads every case's history.
        ("WANGGE_AUTH__CALLS_PER_SECOND", "10000"),
        ("WANGGE_AUTH__BURST", "10000"),
    ]
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .to_vec();
    TierProcess::start_with_env(
        Tier::Street,
        wangge_tests::cluster::STREET_SCOPE,
        &db.url,
        &nats.url(),
        None,
        env,
    )
    .await
}

/// Moves a street process's virtual clock forward `by`. A restarted process starts on the
/// machine's clock again (as a restarted tier would in production), to be moved ahead anew.
async fn advance_street(street: &TierProcess, by: Span) {
    pb::admin_service_client::AdminServiceClient::new(street.channel().await)
        .advance_clock(as_actor(
            "admin-350205000000",
            pb::AdvanceClockRequest {
                seconds: by.num_seconds(),
            },
        ))
        .await
        .unwrap();
}

/// The supervision events in the street's database.
async fn supervised_count(pool: &sqlx::PgPool) -> usize {
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM case_events WHERE kind = 'supervised'")
        .fetch_one(pool)
        .await
        .unwrap();
    n as usize
}

/// Waits until the scan has raised more than `from` and fewer than `to` supervisions, and kills
/// `street` (SIGKILL) there; returns how many the dead instance left, checked to lie strictly
/// between (the kill landed in the middle of the scan).
async fn kill_mid_scan(
    street: &mut TierProcess,
    pool: &sqlx::PgPool,
    from: usize,
    to: usize,
) -> usize {
    eventually(
        "the scan to be under way",
        Duration::from_secs(60),
        || async {
            let n = supervised_count(pool).await;
            assert!(
                n < to,
                "the scan raised all {n} before the test could kill it: report more cases"
            );
            (n > from).then_some(())
        },
    )
    .await;
    street.kill().await;
    let left = supervised_count(pool).await;
    assert!(
        from < left && left < to,
        "killed in the middle of the scan: {left} of {from}..{to} raised"
    );
    left
}

/// Reports `MANY` cases at once and leaves them REPORTED: their accept stage (20 minutes) runs at
/// the street, which holds them. Waits until the street has them all.
async fn report_many(clients: &TierClients, street_db: &sqlx::PgPool) -> Vec<pb::Case> {
    let cases: Vec<pb::Case> = futures::stream::iter(0..MANY)
        .map(|_| report_case(clients, GRID))
        .buffer_unordered(16)
        .collect()
        .await;
    eventually(
        "the street to hold every report",
        Duration::from_secs(120),
        || async {
            let n: i64 = sqlx::query_scalar("SELECT count(*) FROM cases")
                .fetch_one(street_db)
                .await
                .unwrap();
            (n as usize == MANY).then_some(())
        },
    )
    .await;
    cases
}

/// `instances` street processes on one database (the first is killed in the middle of each
/// scan and started again) raise the yellow and the red 督办 of every case exactly once.
async fn supervision_survives_kills_in_the_middle_of_the_scan(instances: usize) {
    wangge_tests::init_logs();
    let nats = NatsServer::start().await;
    let (vdb, sdb, ddb) = tokio::join!(
        TestDb::seeded("village"),
        TestDb::seeded("street"),
        TestDb::seeded("district")
    );
    let street_db = sdb.pool().await;
    let mut village = TierHandle::start(
        Tier::Village,
        wangge_tests::cluster::VILLAGE_SCOPE,
        &nats.url(),
        vdb,
    )
    .await;
    let mut district = TierHandle::start(
        Tier::District,
        wangge_tests::cluster::DISTRICT_SCOPE,
        &nats.url(),
        ddb,
    )
    .await;
    let mut streets = Vec::new();
    for _ in 0..instances {
        streets.push(street_process(&sdb, &nats).await);
    }
    nats.case_stream_with_consumers(3).await;
    let lazy = |addr| {
        wangge_tests::identity::observed(
            tonic::transport::Channel::from_shared(format!("http://{addr}"))
                .unwrap()
                .connect_lazy(),
        )
    };
    let clients = TierClients {
        village: village.channel().await,
        street: lazy(streets[0].addr),
        district: district.channel().await,
    };
    let cases = report_many(&clients, &street_db).await;

    // 受理 takes 20 minutes: 16.5 on, every case is yellow (80 % is 16), none red yet. Then 5
    // more: every case is red.
    let mut ahead = Span::zero();
    for (step, raised_before) in [(Span::seconds(990), 0), (Span::minutes(5), MANY)] {
        ahead += step;
        for street in &streets {
            advance_street(street, step).await;
        }
        let raised_after = raised_before + MANY;
        let left = kill_mid_scan(&mut streets[0], &street_db, raised_before, raised_after).await;
        eprintln!("street killed in the middle of its scan: {left} of {raised_after} raised");
        streets[0].restart().await;
        advance_street(&streets[0], ahead).await;
        eventually(
            "every supervision of the step",
            Duration::from_secs(120),
            || async { (supervised_count(&street_db).await >= raised_after).then_some(()) },
        )
        .await;
        // Several more scans by every instance raise nothing more.
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert_eq!(supervised_count(&street_db).await, raised_after);
    }
    for case in &cases {
        let history = clients.converged(&case.id, 3).await;
        assert_eq!(
            automatic(&history),
            vec![
                (pb::Stage::Accept, pb::SupervisionLevel::Yellow),
                (pb::Stage::Accept, pb::SupervisionLevel::Red),
            ],
            "case {}",
            case.number
        );
    }
    for street in &mut streets {
        street.kill().await;
    }
    village.stop().await.unwrap();
    district.stop().await.unwrap();
}

#[tokio::test]
async fn supervision_is_raised_once_when_the_only_instance_is_killed_in_the_middle_of_its_scan() {
    supervision_survives_kills_in_the_middle_of_the_scan(1).await;
}

#[tokio::test]
async fn supervision_is_raised_once_with_two_instances_when_one_is_killed_in_the_middle_of_the_scan()
 {
    supervision_survives_kills_in_the_middle_of_the_scan(2).await;
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
    let cluster = Cluster::start_on_time(&time).await;
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
                ..Default::default()
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

/// Reports a case of `category` at `urgency` as the grid worker.
async fn report_as(clients: &TierClients, category: &str, urgency: pb::Urgency) -> pb::Case {
    let mut request = report(&client_id(), GRID);
    request.category_code = category.to_owned();
    request.urgency = urgency as i32;
    clients
        .field()
        .report_case(as_actor(GRID_WORKER, request))
        .await
        .unwrap()
        .into_inner()
}

async fn accept_and_dispatch(clients: &TierClients, case: &pb::Case) {
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
}

#[tokio::test]
async fn a_departments_work_list_is_ordered_over_all_its_open_cases_then_cut_into_pages() {
    let time = ShiftedTime::new();
    to_next_monday_morning(&time);
    // Scans of a thousand cases every second would only slow the test down.
    let cluster = Cluster::start_on_time_scanning_every(&time, 30).await;
    let clients = cluster.clients().await;
    // More open cases than a work list used to read (the first 1 000 by id, then ordered): a
    // thousand waiting to be signed for (1 working day), then, reported last, a 道路不洁 signed
    // for (2 working hours to handle) and an urgent one.
    const WAITING: usize = 1000;
    let waiting: Vec<pb::Case> = futures::stream::iter(0..WAITING)
        .map(|_| report_case(&clients, GRID))
        .buffered(16)
        .collect()
        .await;
    let short = report_as(&clients, "szcg-01-02", pb::Urgency::Normal).await;
    let urgent = report_as(&clients, CATEGORY, pb::Urgency::Urgent).await;
    let pool = cluster.street.db.pool().await;
    eventually(
        "the street to hold every report",
        Duration::from_secs(120),
        || async {
            let n: i64 = sqlx::query_scalar("SELECT count(*) FROM cases")
                .fetch_one(&pool)
                .await
                .unwrap();
            (n as usize == WAITING + 2).then_some(())
        },
    )
    .await;
    futures::stream::iter(waiting.iter().chain([&short, &urgent]))
        .for_each_concurrent(16, |case| accept_and_dispatch(&clients, case))
        .await;
    clients
        .street_departments()
        .sign_case(as_actor(
            HANDLER,
            pb::DepartmentActionRequest {
                case_id: short.id.clone(),
                department_code: DEPARTMENT.into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap();

    // Read page by page, 500 at a time.
    let mut listed: Vec<pb::Case> = Vec::new();
    let mut page_token = String::new();
    let mut pages = 0;
    loop {
        let page = clients
            .street_departments()
            .list_assigned(as_actor(
                HANDLER,
                pb::ListAssignedRequest {
                    department_code: DEPARTMENT.into(),
                    page_size: 500,
                    page_token,
                },
            ))
            .await
            .unwrap()
            .into_inner();
        pages += 1;
        listed.extend(page.cases);
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    assert_eq!(pages, 3);
    assert_eq!(listed.len(), WAITING + 2);
    let ids: std::collections::HashSet<&str> = listed.iter().map(|c| c.id.as_str()).collect();
    assert_eq!(ids.len(), WAITING + 2, "each case once");
    assert_eq!(
        (listed[0].id.as_str(), listed[1].id.as_str()),
        (urgent.id.as_str(), short.id.as_str()),
        "the urgent case first, then the one with the least time left, though reported last"
    );
    // The rest in the order of their time left, across the pages: by deadline, which does not
    // move while the clocks run (the pages are read, and each case's clock worked out, at
    // moments a second or so apart, so time left may tick between two neighbours).
    let deadlines: Vec<i64> = listed[1..]
        .iter()
        .map(|c| stage_clock(c).deadline.unwrap().seconds)
        .collect();
    assert!(
        deadlines.windows(2).all(|w| w[0] <= w[1] + 2),
        "least time left first: {deadlines:?}"
    );
    assert!(
        deadlines[0] + 3600 < deadlines[1],
        "the short limit well ahead"
    );
    // The default page is 100.
    let first = clients
        .street_departments()
        .list_assigned(as_actor(
            HANDLER,
            pb::ListAssignedRequest {
                department_code: DEPARTMENT.into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.cases.len(), 100);
    assert_eq!(first.cases[0].id, urgent.id);
    // A list is read whole up to a bound, in pages of 500 from the oldest: asked for at most 600,
    // it stops after the second page, and what it left out are the newest.
    let filter = wangge_store::cases::Filter {
        states: vec!["dispatched".into(), "in_progress".into()],
        grid_prefixes: vec![wangge_tests::cluster::STREET_SCOPE.into()],
        department: Some(DEPARTMENT.into()),
        ..Default::default()
    };
    let bounded = wangge_tier::worklist::read_up_to(&pool, filter.clone(), 600)
        .await
        .unwrap();
    let whole = wangge_tier::worklist::read_up_to(&pool, filter, usize::MAX)
        .await
        .unwrap();
    assert_eq!((bounded.len(), whole.len()), (1000, WAITING + 2));
    assert_eq!(bounded[..], whole[..1000]);
    cluster.stop().await;
}

#[tokio::test]
async fn the_field_apps_tasks_come_most_urgent_first_then_least_time_left() {
    let time = ShiftedTime::new();
    to_next_monday_morning(&time);
    let cluster = Cluster::start_on_time(&time).await;
    let clients = cluster.clients().await;
    // 受理 takes 20 minutes, 突发事件 (自来水管破裂) 5. Each case goes back to the grid worker for a
    // field check (核实) while its clock runs.
    let first = report_as(&clients, CATEGORY, pb::Urgency::Normal).await;
    time.advance(Span::minutes(2));
    let burst_pipe = report_as(&clients, "szcg-04-02", pb::Urgency::Normal).await;
    let urgent = report_as(&clients, CATEGORY, pb::Urgency::Urgent).await;
    for case in [&first, &burst_pipe, &urgent] {
        clients.converged(&case.id, 1).await;
        clients
            .street_console()
            .request_verification(as_actor(STREET_OPERATOR, action(case, "请核实")))
            .await
            .unwrap();
        clients.converged(&case.id, 2).await;
    }
    let request = || {
        as_actor(
            GRID_WORKER,
            pb::ListTasksRequest {
                org_codes: vec![GRID.into()],
            },
        )
    };
    let listed = clients
        .field()
        .list_tasks(request())
        .await
        .unwrap()
        .into_inner()
        .cases;
    let ids: Vec<&str> = listed.iter().map(|c| c.id.as_str()).collect();
    // 18 minutes left of 20, 5 of 5: the pipe, reported later, before the first.
    assert_eq!(
        ids,
        vec![
            urgent.id.as_str(),
            burst_pipe.id.as_str(),
            first.id.as_str()
        ],
        "{:?}",
        listed.iter().map(stage_clock).collect::<Vec<_>>()
    );
    // The live list starts in the same order.
    let mut watch = clients
        .field()
        .watch_tasks(request())
        .await
        .unwrap()
        .into_inner();
    let mut watched = Vec::new();
    for _ in 0..3 {
        let update = tokio::time::timeout(Duration::from_secs(10), watch.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        watched.push(update.case.unwrap().id);
    }
    assert_eq!(watched, ids);
    cluster.stop().await;
}

#[tokio::test]
async fn reseeded_limits_apply_after_a_reload_without_a_restart() {
    let time = ShiftedTime::new();
    to_next_monday_morning(&time);
    let cluster = Cluster::start_on_time(&time).await;
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
