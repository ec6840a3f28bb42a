//! Intake: a report comes back with the open cases of its category reported near it within the
//! window (疑似重复, 50 m and 72 h by default), nearest first, and every tier holds them with the
//! case, so the center sees them in its console.

use chrono::Duration as Span;
use wangge_proto as pb;
use wangge_proto::Tier;
use wangge_tests::Cluster;
use wangge_tests::cluster::{
    DISTRICT_SCOPE, FieldClient, STREET_SCOPE, Topology, VILLAGE_SCOPE, as_actor,
};
use wangge_tests::fixtures::*;
use wangge_tier::time::ShiftedTime;

async fn report_at(field: &FieldClient, grid: &str, category: &str) -> pb::Case {
    let mut request = report(&client_id(), grid);
    request.category_code = category.to_owned();
    field
        .clone()
        .report_case(as_actor(&format!("gw-{grid}"), request))
        .await
        .unwrap()
        .into_inner()
}

fn candidates(case: &pb::Case) -> Vec<(&str, u32)> {
    case.possible_duplicates
        .iter()
        .map(|d| (d.case_id.as_str(), d.distance_m))
        .collect()
}

/// Metres between two points on a sphere of the Earth's mean radius.
fn metres(a: &pb::GeoPoint, b: &pb::GeoPoint) -> f64 {
    let (la1, la2) = (a.latitude.to_radians(), b.latitude.to_radians());
    let d_la = la2 - la1;
    let d_lo = (b.longitude - a.longitude).to_radians();
    let h = (d_la / 2.0).sin().powi(2) + la1.cos() * la2.cos() * (d_lo / 2.0).sin().powi(2);
    2.0 * 6_371_000.0 * h.sqrt().asin()
}

#[tokio::test]
async fn a_report_names_the_open_cases_of_its_category_nearby_as_possible_duplicates() {
    let cluster = Cluster::start().await;
    let clients = cluster.clients().await;
    let field = clients.field();
    let radius = cluster.village.config.intake.duplicate_radius_m;

    let first = report_at(&field, GRID, CATEGORY).await;
    assert!(candidates(&first).is_empty(), "nothing before it");

    // The same thing at the same place: the first is a candidate, 0 m away.
    let second = report_at(&field, GRID, CATEGORY).await;
    assert_eq!(candidates(&second), vec![(first.id.as_str(), 0)]);

    // Another category at the same place is not a duplicate.
    let other_category = report_at(&field, GRID, "szcg-01-02").await;
    assert!(candidates(&other_category).is_empty());

    // Another grid's point, farther than the radius, is not either.
    let (here, there) = (point_in(GRID), point_in(OTHER_GRID));
    assert!(
        metres(&here, &there) > f64::from(radius),
        "the test's two points are too close"
    );
    let far = report_at(&field, OTHER_GRID, CATEGORY).await;
    assert!(candidates(&far).is_empty(), "{:?}", candidates(&far));

    // A case the street rejected (不予受理) needs no more work: no longer a candidate once the
    // village holds the rejection.
    clients.converged(&first.id, 1).await;
    clients
        .street_console()
        .reject_case(as_actor(
            STREET_CHIEF,
            pb::CaseActionRequest {
                case_id: first.id.clone(),
                note: "重复上报".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap();
    clients.converged(&first.id, 2).await;
    let third = report_at(&field, GRID, CATEGORY).await;
    assert_eq!(candidates(&third), vec![(second.id.as_str(), 0)]);

    // The street's console sees the candidates with the case.
    clients.converged(&third.id, 1).await;
    let at_street = clients
        .cases(Tier::Street)
        .get_case(pb::GetCaseRequest {
            case_id: third.id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(at_street.possible_duplicates, third.possible_duplicates);
    assert_eq!(at_street.possible_duplicates[0].number, second.number);
    cluster.stop().await;
}

/// Reports arriving together are written together (group commit): each still gets its own case,
/// durable before its reply, and each community's daily numbers run 1, 2, 3 … without a gap or a
/// repeat, whatever batches they were drawn in.
#[tokio::test]
async fn reports_sent_at_once_each_get_a_case_and_the_next_number_of_their_community() {
    use std::collections::{BTreeMap, BTreeSet};

    let cluster = Cluster::start().await;
    let clients = cluster.clients().await;
    let field = clients.field();
    let sent = 60;
    let taken: Vec<pb::Case> = futures::future::join_all((0..sent).map(|n| {
        let field = field.clone();
        let grid = if n % 3 == 0 { OTHER_GRID } else { GRID };
        async move { report_at(&field, grid, CATEGORY).await }
    }))
    .await;

    let ids: BTreeSet<&str> = taken.iter().map(|c| c.id.as_str()).collect();
    assert_eq!(ids.len(), sent, "one case per report");
    // 350205002006-20261127-0042: the community and day, then the sequence.
    let mut sequences: BTreeMap<&str, Vec<u32>> = BTreeMap::new();
    for case in &taken {
        let (prefix, sequence) = case.number.rsplit_once('-').unwrap();
        sequences
            .entry(prefix)
            .or_default()
            .push(sequence.parse().unwrap());
    }
    for (prefix, mut numbers) in sequences {
        numbers.sort_unstable();
        let expected: Vec<u32> = (1..=numbers.len() as u32).collect();
        assert_eq!(numbers, expected, "the numbers of {prefix}");
    }
    // Every answered report is held, and crosses to the other tiers.
    let held = clients
        .cases(Tier::Village)
        .list_cases(pb::ListCasesRequest {
            page_size: 100,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .cases;
    let held: BTreeSet<&str> = held.iter().map(|c| c.id.as_str()).collect();
    assert_eq!(held, ids);
    for case in &taken {
        clients.converged(&case.id, 1).await;
    }
    cluster.stop().await;
}

/// The window of 疑似重复: an open case reported just inside it (72 hours by default) before a new
/// report of the same category at the same place is a candidate; one reported just outside it is
/// not, though still open. Every tier reads one clock the test moves forward.
#[tokio::test]
async fn only_open_cases_reported_within_the_window_are_candidates() {
    let time = ShiftedTime::new();
    let clock = time.clone();
    let cluster = Cluster::start_configured(
        Topology::from_env(),
        [VILLAGE_SCOPE, STREET_SCOPE, DISTRICT_SCOPE],
        move |config| config.clock.time = Some(clock.clone()),
    )
    .await;
    let clients = cluster.clients().await;
    let field = clients.field();
    let window = i64::from(cluster.village.config.intake.duplicate_window_hours);
    assert_eq!(window, 72, "the default window");

    let old = report_at(&field, GRID, CATEGORY).await;
    // An hour short of the window: still a candidate.
    time.advance(Span::hours(window - 1));
    let inside = report_at(&field, GRID, CATEGORY).await;
    assert_eq!(candidates(&inside), vec![(old.id.as_str(), 0)]);
    // Two hours on, the first lies an hour beyond the window: only the second is a candidate.
    time.advance(Span::hours(2));
    let later = report_at(&field, GRID, CATEGORY).await;
    assert_eq!(candidates(&later), vec![(inside.id.as_str(), 0)]);
    // Left out for its age alone: the first is still open.
    let first = clients
        .cases(Tier::Village)
        .get_case(pb::GetCaseRequest {
            case_id: old.id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.state(), pb::CaseState::Reported);
    cluster.stop().await;
}
