//! 综合评价 over gRPC: the street and the district answer the same figures for the same cases,
//! only they serve it, and it refuses callers and periods it must.

use std::time::Duration;

use chrono::Utc;
use tonic::Code;
use wangge_proto as pb;
use wangge_tests::Cluster;
use wangge_tests::cluster::as_actor;
use wangge_tests::fixtures::*;

use crate::case_loop::close_round_the_loop;

use pb::evaluation_service_client::EvaluationServiceClient as EvaluationClient;

fn wire(at: chrono::DateTime<Utc>) -> Option<prost_types::Timestamp> {
    Some(prost_types::Timestamp {
        seconds: at.timestamp(),
        nanos: at.timestamp_subsec_nanos() as i32,
    })
}

#[tokio::test]
async fn the_street_and_the_district_evaluate_a_closed_and_an_open_case_alike() {
    let cluster = Cluster::start().await;
    let clients = cluster.clients().await;
    let from = Utc::now() - chrono::Duration::minutes(1);
    let closed = close_round_the_loop(&clients).await;
    let open = report_case(&clients, GRID).await;
    clients.converged(&open.id, 1).await;
    let to = Utc::now();
    // Both tiers' clocks are past `to`: the period is not cut at either one's now.
    tokio::time::sleep(Duration::from_millis(20)).await;

    let ask = |org: &str| pb::EvaluateRequest {
        org_code: org.to_owned(),
        from: wire(from),
        to: wire(to),
    };
    let street = EvaluationClient::new(clients.street.clone())
        .evaluate(as_actor(STREET_CHIEF, ask("")))
        .await
        .unwrap()
        .into_inner();
    let district = EvaluationClient::new(clients.district.clone())
        .evaluate(as_actor(DISTRICT_OPERATOR, ask("350205002000")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(street.prefixes, ["350205002"]);
    assert_eq!(district.prefixes, ["350205002"]);
    assert_eq!(
        (
            &street.workers,
            &street.centers,
            &street.departments,
            &street.areas
        ),
        (
            &district.workers,
            &district.centers,
            &district.departments,
            &district.areas
        )
    );

    // The grid worker reported both, one was filed; they checked the closed one in time.
    let [worker] = &street.workers[..] else {
        panic!("one worker: {:?}", street.workers);
    };
    assert_eq!(worker.worker_id, GRID_WORKER);
    // Named as the registry knows them.
    assert_eq!(worker.name, "林家豪");
    assert_eq!(
        (worker.reports, worker.valid_reports, worker.checked),
        (2, 1, 1)
    );
    assert_eq!(worker.valid_rate, Some(0.5));
    assert_eq!(worker.checked_on_time_rate, Some(1.0));
    assert_eq!(worker.verified_on_time_rate, None);
    // The street center filed and dispatched the closed case, in seconds.
    let [center] = &street.centers[..] else {
        panic!("one center: {:?}", street.centers);
    };
    assert_eq!(center.org_code, "350205002000");
    assert_eq!(center.name, "新阳街道");
    assert_eq!(
        (center.filed, center.filed_on_time, center.voided),
        (1, 1, 0)
    );
    assert_eq!((center.dispatched, center.dispatch_reworked), (1, 0));
    assert_eq!(center.dispatch_accuracy, Some(1.0));
    let [department] = &street.departments[..] else {
        panic!("one department: {:?}", street.departments);
    };
    assert_eq!(department.department_code, "350205002-cgzd");
    assert!(!department.name.is_empty());
    assert_eq!(
        (
            department.dispatched,
            department.dispatched_handled,
            department.handled,
            department.handled_late
        ),
        (1, 1, 1, 0)
    );
    // The street, the community and the grid: two reports, one closed, closed on time.
    assert_eq!(street.areas.len(), 3);
    for area in &street.areas {
        assert!(GRID.starts_with(area.code.trim_end_matches('0')) || area.code == GRID);
        assert_eq!(
            (
                area.reported,
                area.reported_closed,
                area.closed,
                area.closed_on_time
            ),
            (2, 1, 1, 1),
            "{}",
            area.code
        );
        assert_eq!(area.closing_rate, Some(0.5));
    }
    assert_eq!(street.areas[0].level(), pb::AreaLevel::Street);
    assert_eq!(street.areas[2].code, GRID);
    assert_eq!(street.areas[1].name, "霞阳社区");
    assert_eq!(closed.state(), pb::CaseState::Closed);
}

#[tokio::test]
async fn evaluation_refuses_other_roles_other_scopes_bad_periods_and_the_village() {
    let cluster = Cluster::start().await;
    let clients = cluster.clients().await;
    let now = Utc::now();
    let week = |org: &str| pb::EvaluateRequest {
        org_code: org.to_owned(),
        from: wire(now - chrono::Duration::days(7)),
        to: wire(now),
    };
    let mut street = EvaluationClient::new(clients.street.clone());
    let code = |result: Result<tonic::Response<pb::EvaluateResponse>, tonic::Status>| {
        result
            .map(|_| ())
            .map_err(|s| (s.code(), s.message().to_owned()))
    };

    // A grid worker may not evaluate; an auditor of another street may not see this one.
    let refused = code(street.evaluate(as_actor(GRID_WORKER, week(""))).await);
    assert!(
        matches!(refused, Err((Code::PermissionDenied, _))),
        "{refused:?}"
    );
    let other = code(
        street
            .evaluate(as_actor("au-350205003000", week("350205002006")))
            .await,
    );
    assert!(
        matches!(other, Err((Code::PermissionDenied, _))),
        "{other:?}"
    );
    // An org outside the tier's scope, a period backwards or longer than a year: the field says.
    let outside = code(
        street
            .evaluate(as_actor(STREET_CHIEF, week("350205003")))
            .await,
    );
    assert!(
        matches!(&outside, Err((Code::InvalidArgument, m)) if m.starts_with("org_code:")),
        "{outside:?}"
    );
    let backwards = pb::EvaluateRequest {
        from: wire(now),
        to: wire(now - chrono::Duration::days(1)),
        ..week("")
    };
    let backwards = code(street.evaluate(as_actor(STREET_CHIEF, backwards)).await);
    assert!(
        matches!(&backwards, Err((Code::InvalidArgument, m)) if m.starts_with("to:")),
        "{backwards:?}"
    );
    let long = pb::EvaluateRequest {
        from: wire(now - chrono::Duration::days(3_700)),
        ..week("")
    };
    let long = code(street.evaluate(as_actor(STREET_CHIEF, long)).await);
    assert!(
        matches!(&long, Err((Code::InvalidArgument, m)) if m.starts_with("to:")),
        "{long:?}"
    );
    // A period in 1999 (or year 1) is no period of any case: refused by its field, not evaluated.
    let ancient = pb::EvaluateRequest {
        from: Some(prost_types::Timestamp {
            seconds: 915_148_800,
            nanos: 0,
        }),
        to: Some(prost_types::Timestamp {
            seconds: 915_148_800 + 7 * 86_400,
            nanos: 0,
        }),
        ..week("")
    };
    let ancient = code(street.evaluate(as_actor(STREET_CHIEF, ancient)).await);
    assert!(
        matches!(&ancient, Err((Code::InvalidArgument, m)) if m.starts_with("from: before 2000")),
        "{ancient:?}"
    );
    let missing = pb::EvaluateRequest {
        from: None,
        ..week("")
    };
    let missing = code(street.evaluate(as_actor(STREET_CHIEF, missing)).await);
    assert!(
        matches!(&missing, Err((Code::InvalidArgument, m)) if m.starts_with("from:")),
        "{missing:?}"
    );
    // The village does not serve it.
    let village = code(
        EvaluationClient::new(clients.village.clone())
            .evaluate(as_actor(STREET_CHIEF, week("")))
            .await,
    );
    assert!(
        matches!(village, Err((Code::Unimplemented, _))),
        "{village:?}"
    );
    // A leader and a supervisor of the street may; an empty period has no rows.
    for who in ["ld-350205002000", "sv-350205002000"] {
        let empty = street
            .evaluate(as_actor(who, week("")))
            .await
            .unwrap()
            .into_inner();
        assert!(empty.workers.is_empty() && empty.areas.is_empty(), "{who}");
    }
}

/// What a case's history leaves in the database: each event, through the state machine, with
/// the case after it; the first is the report (by the village), the others by the case's owner.
fn history(
    grid: &str,
    steps: &[(chrono::DateTime<Utc>, pb::case_event::Kind)],
) -> Vec<(pb::Case, pb::CaseEvent)> {
    use wangge_domain::case::{apply, seal};
    let case_id = uuid::Uuid::now_v7().to_string();
    let mut case: Option<pb::Case> = None;
    let mut written = Vec::new();
    for (i, (at, kind)) in steps.iter().enumerate() {
        let (tier, org) = match &case {
            None => (pb::Tier::Village, grid[..12].to_owned()),
            Some(case) => {
                let owner = case.owner.clone().unwrap();
                (owner.tier(), owner.org_code)
            }
        };
        let mut event = pb::CaseEvent {
            event_id: uuid::Uuid::now_v7().to_string(),
            case_id: case_id.clone(),
            seq: i as u64 + 1,
            at: wire(*at),
            tier: tier as i32,
            org_code: org,
            actor: Some(pb::Actor {
                id: STREET_OPERATOR.into(),
                role: pb::Role::StreetOperator as i32,
            }),
            kind: Some(kind.clone()),
            ..Default::default()
        };
        let next = apply(case.as_ref(), &event).unwrap();
        seal(&mut event, &next);
        written.push((next.clone(), event));
        case = Some(next);
    }
    written
}

#[tokio::test]
async fn a_period_reads_the_histories_it_touched_and_those_open_at_its_start_up_to_its_end() {
    use pb::case_event::Kind;
    use wangge_store::evaluation::{histories, period_cases};

    let db = wangge_tests::db::TestDb::seeded("evaluation").await;
    let pool = db.pool().await;
    let day = |d: i64| Utc::now() - chrono::Duration::days(30) + chrono::Duration::days(d);
    let (from, to) = (day(10), day(20));
    let report = |n: u32| {
        Kind::Reported(pb::Reported {
            number: format!("T-{n}"),
            category_code: CATEGORY.into(),
            grid_code: GRID.into(),
            urgency: pb::Urgency::Normal as i32,
            ..Default::default()
        })
    };
    let accepted = || Kind::Accepted(pb::Accepted {});
    let rejected = || {
        Kind::Rejected(pb::Rejected {
            reason: "不属实".into(),
        })
    };
    let in_other_grid = Kind::Reported(pb::Reported {
        grid_code: OTHER_GRID.into(),
        ..match report(6) {
            Kind::Reported(r) => r,
            _ => unreachable!(),
        }
    });
    let cases = [
        // Finished before the period: not read.
        history(GRID, &[(day(1), report(1)), (day(2), rejected())]),
        // Open since before the period, nothing in it: read.
        history(GRID, &[(day(1), report(2)), (day(2), accepted())]),
        // Reported in the period, finished after it: read without the later event.
        history(GRID, &[(day(11), report(3)), (day(25), rejected())]),
        // Reported after the period: not read.
        history(GRID, &[(day(21), report(4))]),
        // Reported before the period, rejected in it: read.
        history(GRID, &[(day(1), report(5)), (day(12), rejected())]),
        // In a grid outside the prefix asked for: not read.
        history(OTHER_GRID, &[(day(11), in_other_grid)]),
    ];
    let mut conn = pool.acquire().await.unwrap();
    for case in &cases {
        for (after, event) in case {
            wangge_store::cases::append(&mut conn, after, event, None)
                .await
                .unwrap();
        }
    }
    drop(conn);

    let prefixes = ["350205002006".to_owned()];
    let cases = period_cases(&pool, &prefixes, from, to).await.unwrap();
    let read = histories(&pool, &cases, to).await.unwrap();
    let numbers: Vec<(String, usize)> = read
        .iter()
        .map(|h| match &h[0].kind {
            Some(Kind::Reported(r)) => (r.number.clone(), h.len()),
            other => panic!("{other:?}"),
        })
        .collect();
    // In case-id order: UUIDv7, so the order the cases were made in.
    assert_eq!(
        numbers,
        [
            ("T-2".to_owned(), 2),
            ("T-3".to_owned(), 1),
            ("T-5".to_owned(), 2)
        ]
    );
    // Read a page at a time, the histories are the same, in the same order.
    let mut paged = Vec::new();
    for page in cases.chunks(1) {
        paged.extend(histories(&pool, page, to).await.unwrap());
    }
    assert_eq!(paged, read);
    for h in &read {
        assert!(h.windows(2).all(|w| w[0].seq + 1 == w[1].seq));
    }
}
