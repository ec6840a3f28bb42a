//! The production NATS topology (`deploy/nats/`): the district hub holds JetStream, the village and
//! the street run on leaf nodes of it. Every server has its users and the hub's ports speak TLS.
//! The case loop runs across the leaf links with every tier on its own user; a leaf without its
//! link user's password never links; a link carries only its site's scope; and a cut link loses
//! and doubles nothing: the village's outbox holds what it took, the hub's stream holds what a
//! cut-off street has not read yet.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer::pull};
use futures::StreamExt;
use wangge_proto as pb;
use wangge_proto::Tier;
use wangge_tests::Channel;
use wangge_tests::cluster::{TierClients, as_actor};
use wangge_tests::fixtures::*;
use wangge_tests::nats::{NatsServer, password_of};
use wangge_tests::topology::{DOMAIN, NatsTopology, link_user};
use wangge_tests::{Cluster, eventually};

use crate::case_loop::{
    action, close_round_the_loop, same_everywhere, sign_and_handle, street_department,
};

type AdminClient = pb::admin_service_client::AdminServiceClient<Channel>;

/// How long a tier on a cut leaf may take to read again, with a wide margin. The pull request its
/// consumer had pending at the hub is lost in the cut, and the consumer renews it only after two
/// missed idle heartbeats (2 s each, crates/bus consumer.rs) and a reopen backoff of at most 5 s:
/// its own connection to its leaf never dropped, so no reconnect tells it sooner.
const STALE_PULL_RENEWED: Duration = Duration::from_secs(60);

async fn status(channel: &Channel) -> pb::TierStatus {
    AdminClient::new(channel.clone())
        .get_status(pb::GetStatusRequest {})
        .await
        .unwrap()
        .into_inner()
}

/// Waits until a tier's outbox is empty, then checks it dead-lettered nothing. The outbox row
/// goes only when the hub's ack has come back across the leaf link, which can be after the
/// other tiers already applied the event: reading the depth once, right after they converged,
/// races that ack.
async fn drained(channel: &Channel) -> pb::TierStatus {
    let drained = eventually("an empty outbox", Duration::from_secs(10), || async {
        let status = status(channel).await;
        (status.outbox_depth == 0).then_some(status)
    })
    .await;
    assert_eq!(drained.dead_letters, 0, "{drained:?}");
    drained
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

/// What a server refused its clients or leaves, but the stream's creation, which a village or a
/// street asks for when it finds the stream missing before the district made it.
fn refusals(server: &NatsServer) -> Vec<String> {
    server
        .log()
        .lines()
        .filter(|line| line.contains("Violation") && !line.contains("STREAM.CREATE"))
        .map(str::to_owned)
        .collect()
}

/// Waits until the hub's interest in the case stream's subjects reached the leaf of `js`, which
/// takes a moment after the stream was made: one event, `wg.case.350205.002.001.999`, is stored.
async fn stream_reached_from(js: &jetstream::Context) {
    eventually(
        "an event from the leaf in the hub's stream",
        Duration::from_secs(10),
        || async {
            let ack = js
                .publish("wg.case.350205.002.001.999", "first".into())
                .await
                .ok()?;
            ack.await.ok().map(|_| ())
        },
    )
    .await;
}

#[tokio::test]
async fn a_tier_user_on_a_leaf_node_publishes_to_and_pulls_from_the_hubs_jetstream() {
    let topology = NatsTopology::start().await;
    // The district (or an operator) makes the stream; no leaf's user may.
    let hub = jetstream::new(topology.hub.client().await);
    wangge_bus::ensure_stream(&hub).await.unwrap();

    // The village, as its own user, publishes its events to the hub's stream.
    let village = topology.leaves.village.jetstream().await;
    stream_reached_from(&village).await;
    for i in 0..3 {
        village
            .publish(
                format!("wg.case.350205.002.001.00{i}"),
                "from the village".into(),
            )
            .await
            .unwrap()
            .await
            .unwrap();
    }
    let mut cases = hub.get_stream(wangge_bus::CASE_STREAM).await.unwrap();
    assert_eq!(cases.info().await.unwrap().state.messages, 4);

    // The street, as its own user on the other leaf, makes its durable consumer and reads; the
    // acks reach the hub.
    let street = topology.leaves.street.jetstream().await;
    let consumer = street
        .get_stream(wangge_bus::CASE_STREAM)
        .await
        .unwrap()
        .create_consumer(pull::Config {
            durable_name: Some("street-350205002".into()),
            filter_subject: "wg.case.350205.002.>".into(),
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            ..Default::default()
        })
        .await
        .unwrap();
    let mut batch = consumer
        .batch()
        .max_messages(4)
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
    assert_eq!(
        subjects,
        [
            "wg.case.350205.002.001.999",
            "wg.case.350205.002.001.000",
            "wg.case.350205.002.001.001",
            "wg.case.350205.002.001.002"
        ]
    );
    let info = cases
        .get_consumer::<pull::Config>("street-350205002")
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .clone();
    assert_eq!(
        (info.num_ack_pending, info.ack_floor.stream_sequence),
        (0, 4)
    );

    // Without the domain a leaf does not forward JetStream requests to the hub: that is why a
    // tier on a leaf is configured with `jetstream_domain`.
    let plain = jetstream::new(topology.leaves.village.server.client().await);
    let answer = tokio::time::timeout(
        Duration::from_secs(2),
        plain.get_stream(wangge_bus::CASE_STREAM),
    )
    .await;
    assert!(
        !matches!(answer, Ok(Ok(_))),
        "the stream was found through $JS.API on a leaf"
    );

    // The district, on the hub itself, addresses it by the same domain, leaves linked or not.
    let district = jetstream::with_domain(topology.hub.client().await, DOMAIN);
    district.get_stream(wangge_bus::CASE_STREAM).await.unwrap();
    topology.leaves.village.cut();
    topology.leaves.street.cut();
    tokio::time::sleep(Duration::from_millis(500)).await;
    district.get_stream(wangge_bus::CASE_STREAM).await.unwrap();
}

/// How many leaf connections the server refused to log in.
fn leaf_logins_refused(server: &NatsServer) -> usize {
    server
        .log()
        .lines()
        .filter(|line| line.contains(" - lid:") && line.contains("authentication error"))
        .count()
}

#[tokio::test]
async fn the_hub_speaks_only_tls_and_refuses_a_leaf_without_its_link_users_password() {
    let topology = NatsTopology::start().await;
    let village_link = link_user(Tier::Village, wangge_tests::cluster::VILLAGE_SCOPE);

    // A client without TLS is not served by the hub's client port.
    let plain = tokio::time::timeout(
        Duration::from_secs(5),
        async_nats::ConnectOptions::new()
            .user_and_password("wangge-admin".into(), password_of("wangge-admin"))
            .connect(topology.hub.url()),
    )
    .await;
    assert!(
        !matches!(plain, Ok(Ok(_))),
        "a plain text client got into the hub"
    );

    // A wrong password, no credential at all, and a tier's client credential used as a link.
    let tier_password = password_of("village-350205002");
    for link in [
        Some((village_link.as_str(), "not-the-password")),
        None,
        Some(("village-350205002", tier_password.as_str())),
    ] {
        let refused_before = leaf_logins_refused(&topology.hub);
        let intruder = topology.another_village_leaf(link).await;
        assert!(
            !intruder.reaches_hub_within(Duration::from_secs(3)).await,
            "a leaf linked as {link:?}"
        );
        // A leaf without credentials is let in, into the global account, which holds nothing.
        if link.is_some() {
            assert!(
                leaf_logins_refused(&topology.hub) > refused_before,
                "{}",
                topology.hub.log()
            );
        }
    }
    // The right one links.
    let password = password_of(&village_link);
    let rightful = topology
        .another_village_leaf(Some((&village_link, &password)))
        .await;
    rightful.linked().await;
}

#[tokio::test]
async fn a_village_leafs_link_carries_only_its_own_scope() {
    let topology = NatsTopology::start().await;
    let hub_client = topology.hub.client().await;
    let hub = jetstream::new(hub_client.clone());
    wangge_bus::ensure_stream(&hub).await.unwrap();
    let village_leaf = &topology.leaves.village;

    // The village's tier user is refused another street's subject by its own leaf.
    let (client, mut errors) = village_leaf.tier_client().await;
    let js = jetstream::with_domain(client.clone(), DOMAIN);
    stream_reached_from(&js).await;
    let foreign = "wg.case.350205.003.001.001";
    let ack = tokio::time::timeout(Duration::from_secs(3), async {
        js.publish(foreign, "forged".into()).await.unwrap().await
    })
    .await;
    assert!(!matches!(ack, Ok(Ok(_))), "{foreign} acknowledged: {ack:?}");
    let error = tokio::time::timeout(Duration::from_secs(5), errors.recv())
        .await
        .unwrap()
        .unwrap();
    assert!(
        error.contains("Permissions Violation") && error.contains(foreign),
        "{error}"
    );

    // The leaf's wangge-admin may publish anything on the leaf; its link still carries only the
    // village's scope into the hub, and nothing of other scopes out of it.
    let admin = village_leaf.server.client().await;
    let mut own_receipts = admin
        .subscribe("wg.receipt.village.350205.002.>")
        .await
        .unwrap();
    let mut foreign_receipts = admin
        .subscribe("wg.receipt.street.350205.003.>")
        .await
        .unwrap();
    admin.flush().await.unwrap();
    // The leaf tells the hub of its subscriptions asynchronously.
    tokio::time::sleep(Duration::from_millis(500)).await;
    // The other scope's first: the event of its own scope behind it shows the link was up.
    for subject in [foreign, "wg.case.350205.002.001.001"] {
        admin.publish(subject, "via the link".into()).await.unwrap();
    }
    admin.flush().await.unwrap();
    for subject in [
        "wg.receipt.street.350205.003.001.village",
        "wg.receipt.village.350205.002.001.street",
    ] {
        hub_client.publish(subject, "receipt".into()).await.unwrap();
    }
    hub_client.flush().await.unwrap();

    let mut cases = hub.get_stream(wangge_bus::CASE_STREAM).await.unwrap();
    eventually(
        "the village's own event at the hub",
        Duration::from_secs(5),
        || {
            let hub = hub.clone();
            async move {
                let mut cases = hub.get_stream(wangge_bus::CASE_STREAM).await.ok()?;
                (cases.info().await.ok()?.state.messages >= 2).then_some(())
            }
        },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(cases.info().await.unwrap().state.messages, 2);
    assert!(
        cases
            .get_last_raw_message_by_subject(foreign)
            .await
            .is_err(),
        "{foreign} crossed the village's link"
    );
    let received = tokio::time::timeout(Duration::from_secs(5), own_receipts.next())
        .await
        .expect("the village's receipt crosses its link")
        .unwrap();
    assert_eq!(
        received.subject.as_str(),
        "wg.receipt.village.350205.002.001.street"
    );
    let foreign = tokio::time::timeout(Duration::from_millis(500), foreign_receipts.next()).await;
    assert!(
        foreign.is_err(),
        "another scope's receipt crossed the link: {foreign:?}"
    );
}

#[tokio::test]
async fn the_case_loop_runs_with_the_village_and_the_street_on_leaf_nodes_of_the_hub() {
    let cluster = Cluster::start_on_leaves().await;
    let clients = cluster.clients().await;
    // The check goes down to the village, across its leaf link, and its answer comes back up.
    close_round_the_loop(&clients).await;

    // Every tier on its own user, the district over TLS to the hub.
    for (tier, user) in [
        (&cluster.village, "village-350205002"),
        (&cluster.street, "street-350205002"),
        (&cluster.district, "district-350205"),
    ] {
        assert_eq!(tier.config.nats_auth.user.as_deref(), Some(user));
    }
    assert!(cluster.district.config.tls.nats_require);
    // Receipts and reconciliation crossed the links (every outbox empty, no problem), and no
    // server refused a tier or a link anything but the stream's creation.
    for channel in [&clients.village, &clients.street, &clients.district] {
        eventually(
            "an empty outbox and no problem",
            Duration::from_secs(20),
            || async {
                let status = status(channel).await;
                (status.outbox_depth == 0 && status.problems.is_empty()).then_some(())
            },
        )
        .await;
    }
    let leaves = cluster.leaves();
    for server in [&cluster.nats, &leaves.village.server, &leaves.street.server] {
        let refused = refusals(server);
        assert!(refused.is_empty(), "{refused:#?}");
    }
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
    drained(&clients.village).await;

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
        drained(channel).await;
    }
    cluster.stop().await;
}
