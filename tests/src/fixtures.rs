//! Demo data the tests act with: points inside seeded grids, departments, categories, actors.

use std::sync::OnceLock;

use wangge_proto as pb;
use wangge_proto::Tier;

use crate::cluster::{TierClients, as_actor};
use crate::seeds_dir;

/// 霞阳社区 第1网格, 新阳街道, 海沧区.
pub const GRID: &str = "350205002006001";
/// Another community of 新阳街道.
pub const OTHER_GRID: &str = "350205002007001";
/// A grid of 思明区, outside the test scopes.
pub const SIMING_GRID: &str = "350203001001001";
pub const GRID_WORKER: &str = "gw-350205002006001";
/// A grid worker whose scope is every grid of 新阳街道 (a street patrol), for tests that report
/// across grids.
pub const STREET_WORKER: &str = "gw-350205002";
pub const COMMUNITY_STAFF: &str = "cs-350205002006";
pub const STREET_OPERATOR: &str = "op-350205002000";
pub const STREET_CHIEF: &str = "dc-350205002000";
pub const DISTRICT_OPERATOR: &str = "op-350205000000";
pub const DISTRICT_CHIEF: &str = "dc-350205000000";
/// 暴露垃圾 (数字城管, 市容环境).
pub const CATEGORY: &str = "szcg-01-01";

fn points() -> &'static Vec<(String, (f64, f64))> {
    static POINTS: OnceLock<Vec<(String, (f64, f64))>> = OnceLock::new();
    POINTS.get_or_init(|| {
        wangge_seed::load_grids(&seeds_dir())
            .expect("seeds/grids load")
            .iter()
            .map(|grid| (grid.code.to_string(), wangge_seed::interior_point(grid)))
            .collect()
    })
}

/// A point strictly inside a seeded grid.
pub fn point_in(grid: &str) -> pb::GeoPoint {
    let (longitude, latitude) = points()
        .iter()
        .find(|(code, _)| code == grid)
        .unwrap_or_else(|| panic!("grid {grid} is not seeded"))
        .1;
    pb::GeoPoint {
        longitude,
        latitude,
    }
}

/// A report of a rubbish heap in `grid`.
pub fn report(client_id: &str, grid: &str) -> pb::ReportCaseRequest {
    pb::ReportCaseRequest {
        client_id: client_id.to_owned(),
        category_code: CATEGORY.to_owned(),
        description: "路边暴露垃圾一堆".to_owned(),
        location: Some(point_in(grid)),
        ..Default::default()
    }
}

/// A fresh client id, as a field app makes one.
pub fn client_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// The departments of an org (a street or a district code), from the registry of `tier`.
pub async fn departments_of(
    clients: &TierClients,
    tier: pb::Tier,
    org: &str,
) -> Vec<pb::Department> {
    let response = clients
        .registry(tier)
        .list_departments(pb::ListDepartmentsRequest {
            org_code: org.to_owned(),
        })
        .await
        .unwrap();
    response
        .into_inner()
        .departments
        .into_iter()
        .filter(|d| d.org_code == org)
        .collect()
}

/// Reports a case in `grid` as the grid worker.
pub async fn report_case(clients: &TierClients, grid: &str) -> pb::Case {
    clients
        .field()
        .report_case(as_actor(&format!("gw-{grid}"), report(&client_id(), grid)))
        .await
        .unwrap()
        .into_inner()
}

/// A case's first two events, as the village and the street would author them.
pub fn authored_pair() -> Vec<pb::CaseEvent> {
    use wangge_domain::case::{apply, owner_for, seal};
    let grid: wangge_domain::GridCode = GRID.parse().unwrap();
    let case_id = uuid::Uuid::now_v7().to_string();
    let now = prost_types::Timestamp {
        seconds: chrono::Utc::now().timestamp(),
        nanos: 0,
    };
    let mut reported = pb::CaseEvent {
        event_id: uuid::Uuid::now_v7().to_string(),
        case_id: case_id.clone(),
        seq: 1,
        at: Some(now),
        tier: Tier::Village as i32,
        org_code: owner_for(Tier::Village, &grid).org_code,
        actor: Some(pb::Actor {
            id: GRID_WORKER.into(),
            role: pb::Role::GridWorker as i32,
        }),
        kind: Some(pb::case_event::Kind::Reported(pb::Reported {
            client_id: client_id(),
            number: format!("350205002006-20261126-9{}", &case_id[30..33]),
            category_code: CATEGORY.into(),
            description: "out of order".into(),
            location: Some(point_in(GRID)),
            grid_code: GRID.into(),
            captured_at: Some(now),
            urgency: pb::Urgency::Normal as i32,
            self_handling: None,
            possible_duplicates: Vec::new(),
            skip_street: false,
        })),
        ..Default::default()
    };
    let case = apply(None, &reported).unwrap();
    seal(&mut reported, &case);
    let mut accepted = pb::CaseEvent {
        event_id: uuid::Uuid::now_v7().to_string(),
        case_id,
        seq: 2,
        at: Some(now),
        tier: Tier::Street as i32,
        org_code: owner_for(Tier::Street, &grid).org_code,
        actor: Some(pb::Actor {
            id: STREET_OPERATOR.into(),
            role: pb::Role::StreetOperator as i32,
        }),
        kind: Some(pb::case_event::Kind::Accepted(pb::Accepted {})),
        ..Default::default()
    };
    let after = apply(Some(&case), &accepted).unwrap();
    seal(&mut accepted, &after);
    vec![reported, accepted]
}

/// Publishes `event` on the case stream as a tier's relay would (message id = event id).
pub async fn publish_event(js: &async_nats::jetstream::Context, grid: &str, event: &pb::CaseEvent) {
    publish_event_as(js, grid, event, &event.event_id).await;
}

/// Publishes `event` on the case stream under `message_id`: another message id than the event's
/// own gets a copy past JetStream's de-duplication.
pub async fn publish_event_as(
    js: &async_nats::jetstream::Context,
    grid: &str,
    event: &pb::CaseEvent,
    message_id: &str,
) {
    let envelope = pb::Envelope {
        event_id: event.event_id.clone(),
        trace: Default::default(),
        body: Some(pb::envelope::Body::CaseEvent(event.clone())),
    };
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(async_nats::header::NATS_MESSAGE_ID, message_id);
    let grid: wangge_domain::GridCode = grid.parse().unwrap();
    js.publish_with_headers(
        format!("wg.case.{}", grid.subject_path()),
        headers,
        prost::Message::encode_to_vec(&envelope).into(),
    )
    .await
    .unwrap()
    .await
    .unwrap();
}

/// The replication status of a tier.
pub async fn tier_status(channel: &crate::Channel) -> pb::TierStatus {
    pb::admin_service_client::AdminServiceClient::new(channel.clone())
        .get_status(pb::GetStatusRequest {})
        .await
        .unwrap()
        .into_inner()
}
