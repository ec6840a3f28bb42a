//! NATS users per tier instance (`deploy/nats/gen-users`, `deploy/nats/single.conf`): the case loop
//! runs with every tier on its own user; a village's user can neither publish for another village
//! or the street nor read other scopes' events; and what a privileged user sends on a subject
//! outside its author's scope is set aside by every receiver.

use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull};
use tokio::sync::mpsc::UnboundedReceiver;
use wangge_proto as pb;
use wangge_proto::Tier;
use wangge_tests::cluster::{DISTRICT_SCOPE, STREET_SCOPE, VILLAGE_SCOPE};
use wangge_tests::fixtures::*;
use wangge_tests::nats::{NatsServer, credential_of};
use wangge_tests::{Cluster, eventually};

use crate::case_loop::close_round_the_loop;

/// 霞阳社区 (GRID's community) and 新阳街道's other community (OTHER_GRID's), each with a village
/// instance of its own, beside the cluster's tiers.
const XIAYANG: &str = "350205002006";
const OTHER_COMMUNITY: &str = "350205002007";

/// The users of the server: the cluster's three tiers and the two community villages.
const INSTANCES: [(Tier, &str); 5] = [
    (Tier::Village, VILLAGE_SCOPE),
    (Tier::Street, STREET_SCOPE),
    (Tier::District, DISTRICT_SCOPE),
    (Tier::Village, XIAYANG),
    (Tier::Village, OTHER_COMMUNITY),
];

/// The three tiers, each connected as its own user.
async fn cluster_on_own_users() -> Cluster {
    Cluster::assemble(
        NatsServer::with_users(&INSTANCES).await,
        None,
        [VILLAGE_SCOPE, STREET_SCOPE, DISTRICT_SCOPE],
        None,
        |tier, scope, config| config.nats_auth = credential_of(tier, scope),
    )
    .await
}

/// The server's complaints about what its clients were not allowed to do.
fn violations(nats: &NatsServer) -> Vec<String> {
    nats.log()
        .lines()
        .filter(|line| line.contains("Violation"))
        .map(str::to_owned)
        .collect()
}

/// Waits for the server to refuse `subject` to the client whose errors are `errors`.
async fn refused(errors: &mut UnboundedReceiver<String>, subject: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let error = tokio::time::timeout_at(deadline, errors.recv())
            .await
            .unwrap_or_else(|_| panic!("the server did not refuse {subject}"))
            .expect("the client's error channel is open");
        if error.contains("Permissions Violation") && error.contains(subject) {
            return;
        }
    }
}

/// A JetStream context that gives up on an unanswered request or ack after 2 s.
fn impatient(client: async_nats::Client) -> jetstream::Context {
    let mut js = jetstream::new(client);
    js.set_timeout(Duration::from_secs(2));
    js
}

/// A case event as an envelope on the bus.
fn envelope(event: &pb::CaseEvent) -> Vec<u8> {
    prost::Message::encode_to_vec(&pb::Envelope {
        event_id: event.event_id.clone(),
        trace: Default::default(),
        body: Some(pb::envelope::Body::CaseEvent(event.clone())),
    })
}

#[tokio::test]
async fn every_tier_runs_the_whole_loop_on_its_own_nats_user() {
    let cluster = cluster_on_own_users().await;
    let clients = cluster.clients().await;

    // 上报 at the village, 立案 and 派遣 at the street, the department handles, the village checks
    // (the check request reaches it through its own consumer), the street closes.
    close_round_the_loop(&clients).await;

    // Receipts reached the authors (every outbox empty), and reconciliation and the consumer
    // checks work: no tier sees a problem.
    for channel in [&clients.village, &clients.street, &clients.district] {
        eventually(
            "an empty outbox and no problem",
            Duration::from_secs(20),
            || async {
                let status = tier_status(channel).await;
                (status.outbox_depth == 0 && status.problems.is_empty()).then_some(())
            },
        )
        .await;
    }
    // The users allow every tier all it does: the server refused nothing but the stream's
    // creation to a tier that found it missing before the district had made it.
    let refusals: Vec<String> = violations(&cluster.nats)
        .into_iter()
        .filter(|line| !line.contains("STREAM.CREATE"))
        .collect();
    assert!(refusals.is_empty(), "{refusals:#?}");
    cluster.stop().await;
}

#[tokio::test]
async fn a_village_user_cannot_publish_for_another_village_or_the_street() {
    wangge_tests::init_logs();
    let nats = NatsServer::with_users(&INSTANCES).await;
    let admin = jetstream::new(nats.client().await);
    wangge_bus::ensure_stream(&admin).await.unwrap();
    let (client, mut errors) = nats.client_as(&format!("village-{XIAYANG}")).await;
    let js = impatient(client.clone());
    let [reported, _] = authored_pair().try_into().unwrap();

    // Its own community's subject: stored.
    let own = "wg.case.350205.002.006.001";
    js.publish(own, envelope(&reported).into())
        .await
        .unwrap()
        .await
        .expect("the village's own subject takes its event");

    // Another community's, another street's: refused, no acknowledgement, nothing stored.
    for subject in ["wg.case.350205.002.007.001", "wg.case.350205.003.001.001"] {
        let ack = js
            .publish(subject, envelope(&reported).into())
            .await
            .unwrap()
            .await;
        assert!(ack.is_err(), "{subject} acknowledged: {ack:?}");
        refused(&mut errors, subject).await;
    }
    // Receipts in the street's name, and reconciliation answers the street would give.
    for subject in [
        "wg.receipt.village.350205.002.006.street",
        "wg.receipt.district.350205.002.007.village",
    ] {
        client.publish(subject, "forged".into()).await.unwrap();
        client.flush().await.unwrap();
        refused(&mut errors, subject).await;
    }

    let mut stream = admin.get_stream(wangge_bus::CASE_STREAM).await.unwrap();
    assert_eq!(stream.info().await.unwrap().state.messages, 1);
    let stored = stream.get_last_raw_message_by_subject(own).await.unwrap();
    assert_eq!(stored.sequence, 1);
    for subject in ["wg.case.350205.002.007.001", "wg.case.350205.003.001.001"] {
        assert!(
            stream
                .get_last_raw_message_by_subject(subject)
                .await
                .is_err(),
            "{subject} holds a message"
        );
    }
}

#[tokio::test]
async fn a_village_user_cannot_read_other_scopes_events() {
    wangge_tests::init_logs();
    let nats = NatsServer::with_users(&INSTANCES).await;
    let admin_client = nats.client().await;
    let admin = jetstream::new(admin_client.clone());
    let stream = wangge_bus::ensure_stream(&admin).await.unwrap();
    let [reported, _] = authored_pair().try_into().unwrap();
    // One event of each community in the stream (sequences 1 and 2).
    for subject in ["wg.case.350205.002.006.001", "wg.case.350205.002.007.001"] {
        admin
            .publish(subject, envelope(&reported).into())
            .await
            .unwrap()
            .await
            .unwrap();
    }
    let user = format!("village-{XIAYANG}");
    let (client, mut errors) = nats.client_as(&user).await;
    let js = impatient(client.clone());
    let village_stream = js.get_stream(wangge_bus::CASE_STREAM).await.unwrap();

    // Core subscriptions to other scopes' events, to the stream's subjects, to others' replies.
    let mut snoops = Vec::new();
    for subject in [
        "wg.case.350205.002.007.>",
        "wg.case.>",
        "_INBOX.>",
        "_INBOX.district-350205.>",
        "wg.receipt.street.350205.002.>",
        "wg.sync.street.350205.002.>",
    ] {
        snoops.push(client.subscribe(subject).await.unwrap());
        client.flush().await.unwrap();
        refused(&mut errors, subject).await;
    }
    admin_client
        .publish("wg.case.350205.002.007.002", "live".into())
        .await
        .unwrap();
    admin_client.flush().await.unwrap();
    for mut snoop in snoops {
        let got = tokio::time::timeout(
            Duration::from_millis(500),
            futures::StreamExt::next(&mut snoop),
        )
        .await;
        assert!(
            !matches!(got, Ok(Some(_))),
            "a refused subscription received {got:?}"
        );
    }

    // Consumers: its own name with another scope's filter or the whole stream, and another tier's
    // name (which would take over the district's durable consumer).
    for (name, filter) in [
        (user.as_str(), "wg.case.350205.002.007.>"),
        (user.as_str(), "wg.case.>"),
        ("district-350205", "wg.case.350205.002.006.>"),
    ] {
        let created = village_stream
            .create_consumer(pull::Config {
                durable_name: Some(name.to_owned()),
                filter_subject: filter.to_owned(),
                ..Default::default()
            })
            .await;
        assert!(created.is_err(), "{name} on {filter} was created");
        refused(
            &mut errors,
            &format!("$JS.API.CONSUMER.CREATE.WANGGE_CASES.{name}.{filter}"),
        )
        .await;
    }
    let consumers: Vec<String> = futures::StreamExt::collect::<Vec<_>>(stream.consumer_names())
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert!(consumers.is_empty(), "{consumers:?}");

    // Messages by sequence: the other community's event is sequence 2.
    assert!(village_stream.get_raw_message(2).await.is_err());
    refused(&mut errors, "$JS.API.STREAM.MSG.GET.WANGGE_CASES").await;
    assert!(village_stream.direct_get(2).await.is_err());
    refused(&mut errors, "$JS.API.DIRECT.GET.WANGGE_CASES").await;

    // Reconciliation requests about another community.
    let subject = "wg.sync.street.350205.002.007.events";
    client.publish(subject, "".into()).await.unwrap();
    client.flush().await.unwrap();
    refused(&mut errors, subject).await;

    // Its own consumer on its own scope works, and gets its own community's event only.
    let own = village_stream
        .create_consumer(pull::Config {
            durable_name: Some(user.clone()),
            filter_subject: "wg.case.350205.002.006.>".to_owned(),
            ..Default::default()
        })
        .await
        .expect("the village's own consumer");
    let batch: Vec<_> = futures::StreamExt::collect::<Vec<_>>(
        own.fetch()
            .max_messages(10)
            .expires(Duration::from_secs(1))
            .messages()
            .await
            .unwrap(),
    )
    .await;
    let subjects: Vec<String> = batch
        .into_iter()
        .map(|m| m.unwrap().subject.to_string())
        .collect();
    assert_eq!(subjects, ["wg.case.350205.002.006.001"]);
    // And so does its live lane, as the consumer opens it behind a backlog.
    let lane = wangge_bus::live_lane_name(&user);
    village_stream
        .create_consumer(pull::Config {
            name: Some(lane.clone()),
            filter_subject: "wg.case.350205.002.006.>".to_owned(),
            ack_policy: jetstream::consumer::AckPolicy::None,
            inactive_threshold: Duration::from_secs(30),
            ..Default::default()
        })
        .await
        .expect("the village's live lane");
    village_stream
        .delete_consumer(&lane)
        .await
        .expect("the village's live lane is deleted");
}

#[tokio::test]
async fn an_event_sent_outside_its_authors_scope_is_set_aside_by_every_receiver() {
    let cluster = cluster_on_own_users().await;
    let clients = cluster.clients().await;
    // The privileged user may publish anywhere: what the tiers' users cannot do.
    let admin = cluster.nats.case_stream().await;

    // 霞阳社区's village reports a case in the other community's grid, on its subject.
    let [mut foreign_report, _] = authored_pair().try_into().unwrap();
    if let Some(pb::case_event::Kind::Reported(report)) = &mut foreign_report.kind {
        report.grid_code = OTHER_GRID.to_owned();
        report.location = Some(point_in(OTHER_GRID));
    }
    assert_eq!(foreign_report.org_code, XIAYANG);
    publish_event(&admin, OTHER_GRID, &foreign_report).await;

    // A street that is not 新阳街道 accepts a case of 新阳街道, on that case's own subject.
    let [reported, mut foreign_accept] = authored_pair().try_into().unwrap();
    foreign_accept.org_code = "350205003000".to_owned();
    publish_event(&admin, GRID, &reported).await;
    publish_event(&admin, GRID, &foreign_accept).await;

    // Everything else flows on: the legitimate report, and a report made afterwards.
    clients.converged(&reported.case_id, 1).await;
    let marker = report_case(&clients, GRID).await;
    clients.converged(&marker.id, 1).await;

    for (tier, db) in [
        (Tier::Village, &cluster.village.db),
        (Tier::Street, &cluster.street.db),
        (Tier::District, &cluster.district.db),
    ] {
        assert!(
            clients
                .history(tier, &foreign_report.case_id)
                .await
                .is_empty()
        );
        assert_eq!(clients.history(tier, &reported.case_id).await.len(), 1);
        let pool = db.pool().await;
        let reasons: Vec<(String, String)> =
            eventually("two dead letters", Duration::from_secs(10), || async {
                let rows: Vec<(String, String)> = sqlx::query_as(
                    "SELECT event_id::text, error FROM dead_letters
                     WHERE direction = 'incoming' ORDER BY id",
                )
                .fetch_all(&pool)
                .await
                .unwrap();
                (rows.len() >= 2).then_some(rows)
            })
            .await;
        pool.close().await;
        assert_eq!(
            reasons
                .iter()
                .map(|(id, _)| id.as_str())
                .collect::<Vec<_>>(),
            [&foreign_report.event_id, &foreign_accept.event_id],
            "{tier:?}"
        );
        assert!(
            reasons[0].1.contains("outside its author's scope")
                && reasons[0].1.contains("village 350205002006")
                && reasons[0].1.contains("grid 350205002007001"),
            "{tier:?}: {}",
            reasons[0].1
        );
        assert!(
            reasons[1].1.contains("outside its author's scope")
                && reasons[1].1.contains("street 350205003000"),
            "{tier:?}: {}",
            reasons[1].1
        );
    }
    cluster.stop().await;
}

#[test]
fn the_users_in_deploy_nats_are_what_gen_users_writes_for_them() {
    let dir = wangge_tests::nats::deploy_dir();
    // single.conf's, the hub's (with its leaf links) and the leaf servers', for the example sites.
    for file in [
        "users.conf",
        "hub-users.conf",
        "street-leaf-users.conf",
        "village-leaf-users.conf",
    ] {
        let users = std::fs::read_to_string(dir.join(file)).unwrap();
        let args: Vec<&str> = users
            .lines()
            .next()
            .and_then(|line| line.strip_prefix("# Generated by deploy/nats/gen-users "))
            .unwrap_or_else(|| panic!("{file} names how it was made"))
            .split_whitespace()
            .collect();
        let output = std::process::Command::new(dir.join("gen-users"))
            .args(&args)
            .output()
            .unwrap();
        assert!(output.status.success(), "{file}");
        assert_eq!(
            String::from_utf8(output.stdout).unwrap(),
            users,
            "regenerate deploy/nats/{file} with the command on its first line"
        );
    }
}
