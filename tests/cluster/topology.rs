//! The production NATS topology (`deploy/nats/`): the district hub holds JetStream, the village and
//! the street run on leaf nodes of it. The case loop runs across the leaf links, and a cut link
//! loses and doubles nothing: the village's outbox holds what it took, the hub's stream holds
//! what a cut-off street has not read yet.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer::pull, stream};
use futures::StreamExt;
use wangge_proto as pb;
use wangge_proto::{CaseState, Tier};
use wangge_tests::Channel;
use wangge_tests::cluster::{TierClients, as_actor};
use wangge_tests::fixtures::*;
use wangge_tests::topology::{DOMAIN, NatsTopology};
use wangge_tests::{Cluster, eventually};

use crate::case_loop::{action, same_everywhere, sign_and_handle, street_department};

type AdminClient = pb::admin_service_client::AdminServiceClient<Channel>;

/// How long a tier on a cut leaf may take to read again. The pull request its consumer had
/// pending at the hub is lost in the cut, and the consumer only renews it after two missed idle
/// heartbeats (30 s with async-nats' defaults): its own connection to its leaf never dropped, so
/// no reconnect tells it sooner.
const STALE_PULL_RENEWED: Duration = Duration::from_secs(60);

async fn status(channel: &Channel) -> pb::TierStatus {
    AdminClient::new(channel.clone())
        .get_status(pb::GetStatusRequest {})
        .await
        .unwrap()
        .into_inner()
}

/// The cases a tier holds (the tests here make fewer than a page).
async fn cases_at(clients: &TierClients, tier: Tier) -> Vec<pb::Case> {
    clients
        .cases(tier)
        .list_cases(pb::ListCasesRequest::default())
        .await
        .unwrap()
        .into_inner()
        .cases
}

/// Every tier holds each of `expected` once, and nothing else.
async fn each_case_once_everywhere(clients: &TierClients, expected: &[pb::Case]) {
    let ids: HashSet<&str> = expected.iter().map(|c| c.id.as_str()).collect();
    for tier in [Tier::Village, Tier::Street, Tier::District] {
        let held = cases_at(clients, tier).await;
        let held_ids: HashSet<&str> = held.iter().map(|c| c.id.as_str()).collect();
        assert_eq!(held.len(), expected.len(), "{tier:?} holds each case once");
        assert_eq!(held_ids, ids, "{tier:?} holds exactly the cases taken");
    }
}

#[tokio::test]
async fn a_client_on_a_leaf_node_creates_publishes_to_and_pulls_from_the_hubs_jetstream() {
    let topology = NatsTopology::start().await;
    let village = topology.leaves.village.jetstream().await;
    village
        .create_stream(stream::Config {
            name: "PROBE".into(),
            subjects: vec!["probe.>".into()],
            storage: stream::StorageType::File,
            ..Default::default()
        })
        .await
        .unwrap();
    for i in 0..3 {
        village
            .publish(format!("probe.{i}"), "from the village".into())
            .await
            .unwrap()
            .await
            .unwrap();
    }
    // The stream lives at the hub.
    let hub = jetstream::new(topology.hub.client().await);
    let mut probe = hub.get_stream("PROBE").await.unwrap();
    assert_eq!(probe.info().await.unwrap().state.messages, 3);

    // A durable pull consumer, made and read from the other leaf; the acks reach the hub.
    let street = topology.leaves.street.jetstream().await;
    let consumer = street
        .get_stream("PROBE")
        .await
        .unwrap()
        .create_consumer(pull::Config {
            durable_name: Some("street-probe".into()),
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            ..Default::default()
        })
        .await
        .unwrap();
    let mut batch = consumer
        .batch()
        .max_messages(3)
        .expires(Duration::from_secs(5))
        .messages()
        .await
        .unwrap();
    let mut subjects = Vec::new();
    while let Some(message) = batch.next().await {
        let message = message.unwrap();
        subjects.push(message.subject.to_string());
        message.double_ack().await.unwrap();
    }
    assert_eq!(subjects, ["probe.0", "probe.1", "probe.2"]);
    let info = probe
        .get_consumer::<pull::Config>("street-probe")
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .clone();
    assert_eq!(
        (info.num_ack_pending, info.ack_floor.stream_sequence),
        (0, 3)
    );

    // Without the domain a leaf does not forward JetStream requests to the hub: that is why a
    // tier on a leaf is configured with `jetstream_domain`.
    let plain = jetstream::new(topology.leaves.village.server.client().await);
    let answer = tokio::time::timeout(Duration::from_secs(2), plain.get_stream("PROBE")).await;
    assert!(
        !matches!(answer, Ok(Ok(_))),
        "the stream was found through $JS.API on a leaf"
    );

    // The district, on the hub itself, addresses it by the same domain, leaves linked or not.
    let district = jetstream::with_domain(topology.hub.client().await, DOMAIN);
    district.get_stream("PROBE").await.unwrap();
    topology.leaves.village.cut();
    topology.leaves.street.cut();
    tokio::time::sleep(Duration::from_millis(500)).await;
    district.get_stream("PROBE").await.unwrap();
}

#[tokio::test]
async fn the_case_loop_runs_with_the_village_and_the_street_on_leaf_nodes_of_the_hub() {
    let cluster = Cluster::start_on_leaves().await;
    let clients = cluster.clients().await;
    let mut console = clients.street_console();

    let case = report_case(&clients, GRID).await;
    same_everywhere(&clients, &case).await;
    let case = console
        .accept_case(as_actor(STREET_OPERATOR, action(&case, "属实")))
        .await
        .unwrap()
        .into_inner();
    let departments = departments_of(&clients, Tier::Street, "350205002000").await;
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
    let handler_id = format!("dh-{department}");
    let case = sign_and_handle(
        &mut clients.street_departments(),
        &handler_id,
        &case,
        &department,
        "已清运",
    )
    .await;
    same_everywhere(&clients, &case).await;

    // The check goes down to the village, across its leaf link, and its answer comes back up.
    let case = console
        .request_check(as_actor(STREET_OPERATOR, action(&case, "")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(case.owner.as_ref().unwrap().tier(), Tier::Village);
    same_everywhere(&clients, &case).await;
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
    same_everywhere(&clients, &case).await;
    let case = console
        .close_case(as_actor(STREET_CHIEF, action(&case, "结案")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(case.state(), CaseState::Closed);
    let history = same_everywhere(&clients, &case).await;
    assert_eq!(history.len(), 8);
    cluster.stop().await;
}

#[tokio::test]
async fn reports_taken_while_the_village_leaf_is_cut_off_wait_in_its_outbox_and_cross_once_when_the_link_returns()
 {
    let cluster = Cluster::start_on_leaves().await;
    let clients = cluster.clients().await;
    let village_leaf = &cluster.leaves().village;
    village_leaf.cut();

    // The village keeps taking reports: its own leaf server is up, the district is not reachable.
    let mut cases = Vec::new();
    for _ in 0..5 {
        cases.push(report_case(&clients, GRID).await);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    for case in &cases {
        for tier in [Tier::Street, Tier::District] {
            assert!(
                clients.history(tier, &case.id).await.is_empty(),
                "nothing crossed the cut link to the {tier:?} tier"
            );
        }
    }
    let held = status(&clients.village).await;
    assert_eq!(held.outbox_depth, 5, "{held:?}");

    village_leaf.restore();
    let restored = Instant::now();
    for case in &cases {
        clients.converged(&case.id, 1).await;
    }
    eprintln!(
        "village leaf restored: 5 reports on every tier after {:?}",
        restored.elapsed()
    );
    each_case_once_everywhere(&clients, &cases).await;
    let drained = status(&clients.village).await;
    assert_eq!(
        (drained.outbox_depth, drained.dead_letters),
        (0, 0),
        "{drained:?}"
    );

    // The way down works again too: a check request reaches the village after the cut.
    let mut console = clients.street_console();
    let case = console
        .accept_case(as_actor(STREET_OPERATOR, action(&cases[0], "")))
        .await
        .unwrap()
        .into_inner();
    let departments = departments_of(&clients, Tier::Street, "350205002000").await;
    let department = street_department(&departments, "城管");
    let dispatch = pb::DispatchCaseRequest {
        case_id: case.id.clone(),
        department_code: department.clone(),
        note: String::new(),
    };
    console
        .dispatch_case(as_actor(STREET_OPERATOR, dispatch))
        .await
        .unwrap();
    let case = sign_and_handle(
        &mut clients.street_departments(),
        &format!("dh-{department}"),
        &case,
        &department,
        "已清运",
    )
    .await;
    let case = console
        .request_check(as_actor(STREET_OPERATOR, action(&case, "")))
        .await
        .unwrap()
        .into_inner();
    clients
        .converged_within(&case.id, case.version, STALE_PULL_RENEWED)
        .await;
    cluster.stop().await;
}

#[tokio::test]
async fn a_street_cut_off_from_the_hub_catches_up_from_the_stream_and_forwards_what_it_did_meanwhile()
 {
    let cluster = Cluster::start_on_leaves().await;
    let clients = cluster.clients().await;
    let first = report_case(&clients, GRID).await;
    same_everywhere(&clients, &first).await;

    let street_leaf = &cluster.leaves().street;
    street_leaf.cut();
    // The street accepts a case it already holds: the event waits in the street's outbox.
    let accepted = clients
        .street_console()
        .accept_case(as_actor(STREET_OPERATOR, action(&first, "属实")))
        .await
        .unwrap()
        .into_inner();
    // New reports reach the district through the hub; the hub's stream keeps them for the street.
    let mut later = Vec::new();
    for _ in 0..3 {
        later.push(report_case(&clients, OTHER_GRID).await);
    }
    for case in &later {
        eventually(
            "the report at the district while the street is cut off",
            Duration::from_secs(15),
            || async { (clients.history(Tier::District, &case.id).await.len() == 1).then_some(()) },
        )
        .await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    for case in &later {
        assert!(clients.history(Tier::Street, &case.id).await.is_empty());
    }
    assert_eq!(clients.history(Tier::District, &first.id).await.len(), 1);
    let held = status(&clients.street).await;
    assert_eq!(held.outbox_depth, 1, "{held:?}");

    street_leaf.restore();
    let restored = Instant::now();
    // The street's outbox drains as soon as the link is back.
    same_everywhere(&clients, &accepted).await;
    let forwarded = restored.elapsed();
    for case in &later {
        clients
            .converged_within(&case.id, 1, STALE_PULL_RENEWED)
            .await;
    }
    eprintln!(
        "street leaf restored: its step on every tier after {forwarded:?}, the 3 reports kept \
         for it at the street after {:?}",
        restored.elapsed()
    );
    let mut all = later.clone();
    all.push(accepted);
    each_case_once_everywhere(&clients, &all).await;
    for channel in [&clients.village, &clients.street, &clients.district] {
        let drained = status(channel).await;
        assert_eq!(
            (drained.outbox_depth, drained.dead_letters),
            (0, 0),
            "{drained:?}"
        );
    }
    cluster.stop().await;
}
