//! Nothing lost when the bus fails: a broker that lost its store, messages removed from the stream,
//! events whose predecessor never came, poison at either end, and a stream deleted under the tiers.
//! After each fault every tier holds the same history, every outbox is empty (every event was
//! confirmed by its peers) and nothing is left parked.

use std::time::Duration;

use async_nats::jetstream;
use prost::Message as _;
use tonic::Code;
use wangge_proto as pb;
use wangge_proto::Tier;
use wangge_tests::cluster::{
    DISTRICT_SCOPE, STREET_SCOPE, TierClients, TierHandle, VILLAGE_SCOPE, as_actor,
};
use wangge_tests::db::TestDb;
use wangge_tests::fixtures::*;
use wangge_tests::nats::NatsServer;
use wangge_tests::{Cluster, Topology, eventually};

/// Waits until every tier confirmed and applied everything: outboxes empty, nothing parked.
async fn settled(clients: &TierClients) -> [pb::TierStatus; 3] {
    eventually(
        "every outbox empty and nothing parked",
        Duration::from_secs(30),
        || async {
            let mut all = Vec::new();
            for channel in [&clients.village, &clients.street, &clients.district] {
                let status = tier_status(channel).await;
                let parked = status.parked.as_ref().map_or(0, |p| p.events);
                if status.outbox_depth > 0 || parked > 0 {
                    return None;
                }
                all.push(status);
            }
            all.try_into().ok()
        },
    )
    .await
}

fn assert_no_dead_letters(statuses: &[pb::TierStatus]) {
    for status in statuses {
        assert_eq!(
            (status.dead_letters, status.dead_letters_outgoing),
            (0, 0),
            "{:?}: {:?}",
            status.tier(),
            status.problems
        );
    }
}

/// Waits until `tier` holds `version` events of the case.
async fn held_at(clients: &TierClients, tier: Tier, case_id: &str, version: usize) {
    eventually(
        &format!("case {case_id} at version {version} at {tier:?}"),
        Duration::from_secs(15),
        || async { (clients.history(tier, case_id).await.len() == version).then_some(()) },
    )
    .await;
}

/// Every message of the case stream, with its stream sequence.
async fn stream_messages(js: &jetstream::Context) -> Vec<(u64, pb::Envelope)> {
    let mut stream = js.get_stream("WANGGE_CASES").await.unwrap();
    let state = stream.info().await.unwrap().state.clone();
    let mut messages = Vec::new();
    for seq in state.first_sequence..=state.last_sequence {
        if let Ok(message) = stream.get_raw_message(seq).await {
            let payload: Vec<u8> = message.payload.to_vec();
            if let Ok(envelope) = pb::Envelope::decode(payload.as_slice()) {
                messages.push((seq, envelope));
            }
        }
    }
    messages
}

#[tokio::test]
async fn a_broker_that_lost_its_store_loses_no_case() {
    let mut cluster = Cluster::start().await;
    let clients = cluster.clients().await;
    // The district is away while the reports wait in JetStream for it.
    cluster.district.stop().await.unwrap();
    let mut cases = Vec::new();
    for _ in 0..5 {
        cases.push(report_case(&clients, GRID).await);
    }
    for case in &cases {
        held_at(&clients, Tier::Street, &case.id, 1).await;
    }

    // The broker comes back with an empty disk: stream, consumers and the waiting events are gone.
    cluster.nats.restart_empty().await;
    cluster.district.resume().await;
    for _ in 0..5 {
        cases.push(report_case(&clients, OTHER_GRID).await);
    }
    for case in &cases {
        clients.converged(&case.id, 1).await;
    }
    assert_no_dead_letters(&settled(&clients).await);
    cluster.stop().await;
}

#[tokio::test]
async fn messages_removed_from_the_stream_are_delivered_all_the_same() {
    let mut cluster = Cluster::start().await;
    let clients = cluster.clients().await;
    cluster.district.stop().await.unwrap();
    let mut cases = Vec::new();
    for _ in 0..3 {
        cases.push(report_case(&clients, GRID).await);
    }
    for case in &cases {
        held_at(&clients, Tier::Street, &case.id, 1).await;
    }
    // Someone removes the messages before the district read them.
    let js = cluster.nats.case_stream().await;
    let stream = js.get_stream("WANGGE_CASES").await.unwrap();
    for (seq, _) in stream_messages(&js).await {
        assert!(stream.delete_message(seq).await.unwrap());
    }
    cluster.district.resume().await;
    for case in &cases {
        clients.converged(&case.id, 1).await;
    }
    assert_no_dead_letters(&settled(&clients).await);
    cluster.stop().await;
}

#[tokio::test]
async fn an_event_whose_predecessor_was_lost_is_parked_and_repaired_from_its_owner() {
    let mut cluster = Cluster::start().await;
    let clients = cluster.clients().await;
    cluster.district.stop().await.unwrap();
    let case = report_case(&clients, GRID).await;
    held_at(&clients, Tier::Street, &case.id, 1).await;
    clients
        .street_console()
        .accept_case(as_actor(
            STREET_OPERATOR,
            pb::CaseActionRequest {
                case_id: case.id.clone(),
                ..Default::default()
            },
        ))
        .await
        .unwrap();
    held_at(&clients, Tier::Village, &case.id, 2).await;
    // The report's message is lost before the district read it; the acceptance is not.
    let js = cluster.nats.case_stream().await;
    let stream = js.get_stream("WANGGE_CASES").await.unwrap();
    for (seq, envelope) in stream_messages(&js).await {
        if let Some(pb::envelope::Body::CaseEvent(event)) = envelope.body
            && event.case_id == case.id
            && event.seq == 1
        {
            assert!(stream.delete_message(seq).await.unwrap());
        }
    }

    cluster.district.resume().await;
    // Other cases flow while this one waits for its repair.
    let other = report_case(&clients, OTHER_GRID).await;
    clients.converged(&other.id, 1).await;
    let history = clients.converged(&case.id, 2).await;
    assert_eq!(history[0].seq, 1);
    let statuses = settled(&clients).await;
    let repaired = statuses[2].reconciliation.as_ref().unwrap();
    assert!(
        repaired.total_cases_repaired >= 1 && repaired.total_events_fetched >= 1,
        "the district fetched the missing report from a peer: {repaired:?}"
    );
    assert_no_dead_letters(&statuses);
    cluster.stop().await;
}

#[tokio::test]
async fn events_whose_predecessor_never_comes_are_parked_and_never_stop_other_cases() {
    let cluster = Cluster::start().await;
    let clients = cluster.clients().await;
    let js = cluster.nats.case_stream().await;
    // More orphans than the consumer may have unacknowledged: none of them may hold it up.
    const ORPHANS: usize = 4200;
    let mut acks = Vec::with_capacity(ORPHANS);
    for _ in 0..ORPHANS {
        let [_, accepted] = authored_pair().try_into().unwrap();
        let envelope = pb::Envelope {
            event_id: accepted.event_id.clone(),
            trace: Default::default(),
            body: Some(pb::envelope::Body::CaseEvent(accepted)),
        };
        acks.push(
            js.publish(
                "wg.case.350205.002.006.001",
                envelope.encode_to_vec().into(),
            )
            .await
            .unwrap(),
        );
    }
    for ack in acks {
        ack.await.unwrap();
    }
    let case = report_case(&clients, OTHER_GRID).await;
    clients.converged(&case.id, 1).await;

    // Parked events are acknowledged after their transaction commits, so the consumer's count
    // of unacknowledged messages follows the parked count by the last acknowledgements' way.
    let status = eventually(
        "every orphan parked at the street and acknowledged",
        Duration::from_secs(60),
        || async {
            let status = tier_status(&clients.street).await;
            let parked = status.parked.as_ref()?.events == ORPHANS as u64;
            let consumer = status.consumer.as_ref()?;
            (parked && consumer.known && consumer.ack_pending == 0).then_some(status)
        },
    )
    .await;
    let parked = status.parked.unwrap();
    assert_eq!(parked.cases, ORPHANS as u64);
    assert_eq!(parked.sample.len(), 20);
    assert!(parked.sample.iter().all(|c| c.have == 0 && c.waiting == 2));
    cluster.stop().await;
}

#[tokio::test]
async fn a_message_that_fails_in_the_database_is_set_aside_alone() {
    let cluster = Cluster::start().await;
    let clients = cluster.clients().await;
    let existing = report_case(&clients, GRID).await;
    clients.converged(&existing.id, 1).await;
    let js = cluster.nats.case_stream().await;

    // A report under a case number that is taken: the database refuses it (unique number), the
    // state machine would not. Valid events travel with it, in the same batches.
    let mut valid = Vec::new();
    for i in 0..6 {
        let [mut reported, _] = authored_pair().try_into().unwrap();
        if i == 3 {
            if let Some(pb::case_event::Kind::Reported(report)) = &mut reported.kind {
                report.number = existing.number.clone();
            }
            publish_event(&js, GRID, &reported).await;
            continue;
        }
        publish_event(&js, GRID, &reported).await;
        valid.push(reported);
    }
    for event in &valid {
        clients.converged(&event.case_id, 1).await;
    }
    for channel in [&clients.village, &clients.street, &clients.district] {
        one_dead_letter_in_status(channel, Duration::from_secs(15)).await;
    }
    cluster.stop().await;
}

/// Waits `within` for the tier's status to count one dead letter, and checks it lists it as a problem.
async fn one_dead_letter_in_status(channel: &wangge_tests::Channel, within: Duration) {
    let status = eventually("the dead letter", within, || async {
        let status = tier_status(channel).await;
        (status.dead_letters == 1).then_some(status)
    })
    .await;
    assert!(
        status
            .problems
            .iter()
            .any(|p| p.contains("1 incoming dead letters")),
        "{:?}",
        status.problems
    );
}

/// The reasons of the incoming dead letters a tier keeps.
async fn incoming_dead_letters(db: &TestDb) -> Vec<String> {
    let pool = db.pool().await;
    let reasons = sqlx::query_scalar("SELECT error FROM dead_letters WHERE direction = 'incoming'")
        .fetch_all(&pool)
        .await
        .unwrap();
    pool.close().await;
    reasons
}

#[tokio::test]
async fn an_event_id_used_by_two_different_events_is_set_aside_once_and_the_rest_flows_at_once() {
    let cluster = Cluster::start().await;
    let clients = cluster.clients().await;
    let js = cluster.nats.case_stream().await;
    // Two reports of two new cases under one event id (an id reused, or forged): each could be
    // applied on its own, but not both. Good reports of other cases travel around them, in the
    // same batches.
    let first = authored_pair().remove(0);
    let mut second = authored_pair().remove(0);
    second.event_id = first.event_id.clone();
    let good: Vec<pb::CaseEvent> = (0..4).map(|_| authored_pair().remove(0)).collect();
    publish_event(&js, GRID, &good[0]).await;
    publish_event(&js, GRID, &first).await;
    publish_event(&js, GRID, &good[1]).await;
    // Under a message id of its own, or JetStream would drop it as a duplicate of the first.
    publish_event_as(&js, GRID, &second, &uuid::Uuid::now_v7().to_string()).await;
    publish_event(&js, GRID, &good[2]).await;
    publish_event(&js, GRID, &good[3]).await;

    // Promptly: nothing waits for the conflicting copy to be retried.
    for event in good.iter().chain([&first]) {
        clients
            .converged_within(&event.case_id, 1, Duration::from_secs(5))
            .await;
    }
    for (tier, channel, db) in [
        (Tier::Village, &clients.village, &cluster.village.db),
        (Tier::Street, &clients.street, &cluster.street.db),
        (Tier::District, &clients.district, &cluster.district.db),
    ] {
        one_dead_letter_in_status(channel, Duration::from_secs(5)).await;
        let reasons = incoming_dead_letters(db).await;
        assert_eq!(reasons.len(), 1, "{tier:?}: {reasons:?}");
        assert!(
            reasons[0].contains(&first.event_id) && reasons[0].contains(&second.case_id),
            "{tier:?}: {reasons:?}"
        );
        assert!(
            clients.history(tier, &second.case_id).await.is_empty(),
            "{tier:?} applied the second user of the id"
        );
        // Acknowledged, not redelivered over and over.
        let consumer = eventually("nothing unacknowledged", Duration::from_secs(5), || async {
            let consumer = tier_status(channel).await.consumer?;
            (consumer.known && consumer.ack_pending == 0).then_some(consumer)
        })
        .await;
        assert_eq!(consumer.pending, 0, "{tier:?}: {consumer:?}");
    }
    cluster.stop().await;
}

#[tokio::test]
async fn a_receipt_in_another_tiers_or_communitys_name_confirms_nothing() {
    let mut cluster = Cluster::start().await;
    let clients = cluster.clients().await;
    // The district is away: the village's rows wait for its receipts once the street confirmed.
    cluster.district.stop().await.unwrap();
    let pool = cluster.village.db.pool().await;
    let pending = |case: &pb::Case| {
        let (pool, case_id) = (pool.clone(), case.id.parse::<uuid::Uuid>().unwrap());
        async move {
            sqlx::query_as::<_, (uuid::Uuid, Vec<String>)>(
                "SELECT event_id, pending_tiers FROM outbox WHERE case_id = $1",
            )
            .bind(case_id)
            .fetch_optional(&pool)
            .await
            .unwrap()
        }
    };
    let mut rows = Vec::new();
    for _ in 0..2 {
        let case = report_case(&clients, GRID).await;
        let row = eventually(
            "the street's receipt at the village",
            Duration::from_secs(15),
            || async {
                pending(&case)
                    .await
                    .filter(|(_, tiers)| tiers == &["district"])
            },
        )
        .await;
        rows.push((case, row.0));
    }
    let [(forged_for, forged_id), (genuine_for, genuine_id)] = rows.try_into().unwrap();

    let nats = cluster.nats.client().await;
    let receipt = |tier: Tier, org_prefix: &str, id: uuid::Uuid| -> Vec<u8> {
        pb::Envelope {
            event_id: String::new(),
            trace: Default::default(),
            body: Some(pb::envelope::Body::Receipt(pb::Receipt {
                tier: tier as i32,
                org_prefix: org_prefix.into(),
                event_ids: vec![id.to_string()],
            })),
        }
        .encode_to_vec()
    };
    for (subject, payload) in [
        // The street's subject (all a street user may publish on), the district in the payload.
        (
            "wg.receipt.village.350205.002.006.street",
            receipt(Tier::District, "350205", forged_id),
        ),
        // The district's subject for another community than the event's.
        (
            "wg.receipt.village.350205.002.007.district",
            receipt(Tier::District, "350205", forged_id),
        ),
        // A true receipt behind them: once it took effect, so had they.
        (
            "wg.receipt.village.350205.002.006.district",
            receipt(Tier::District, "350205", genuine_id),
        ),
    ] {
        nats.publish(subject, payload.into()).await.unwrap();
    }
    nats.flush().await.unwrap();
    eventually(
        "the true receipt to confirm its event",
        Duration::from_secs(15),
        || async { pending(&genuine_for).await.is_none().then_some(()) },
    )
    .await;
    assert_eq!(
        pending(&forged_for).await,
        Some((forged_id, vec!["district".to_owned()])),
        "a forged receipt let a row go that the district never confirmed"
    );

    // The district, back, gets the case and confirms it itself.
    cluster.district.resume().await;
    clients.converged(&forged_for.id, 1).await;
    assert_no_dead_letters(&settled(&clients).await);
    pool.close().await;
    cluster.stop().await;
}

#[tokio::test]
async fn a_leaf_link_that_returns_starts_a_reconciliation_at_once() {
    // Reconciliation on schedule only once an hour: what repairs the street below is the return
    // of its leaf link, which its own NATS connection (to its leaf) never noticed.
    let cluster = Cluster::start_configured(
        Topology::LeafNodes,
        [VILLAGE_SCOPE, STREET_SCOPE, DISTRICT_SCOPE],
        |config| config.delivery.reconcile_every_secs = 3600,
    )
    .await;
    let clients = cluster.clients().await;
    let runs = |channel: &wangge_tests::Channel| {
        let channel = channel.clone();
        async move {
            tier_status(&channel)
                .await
                .reconciliation
                .map_or(0, |r| r.runs)
        }
    };
    eventually(
        "the street's first reconciliation",
        Duration::from_secs(30),
        || async { (runs(&clients.street).await >= 1).then_some(()) },
    )
    .await;

    let street_leaf = &cluster.leaves().street;
    street_leaf.cut();
    let case = report_case(&clients, GRID).await;
    held_at(&clients, Tier::District, &case.id, 1).await;
    // Lost where only reconciliation finds it: the message gone from the hub's stream before the
    // street read it, and the village's outbox row (which would be sent again) gone as if the
    // street had confirmed it.
    let js = cluster.nats.case_stream().await;
    let stream = js.get_stream("WANGGE_CASES").await.unwrap();
    let mut removed = 0;
    for (seq, envelope) in stream_messages(&js).await {
        if let Some(pb::envelope::Body::CaseEvent(event)) = envelope.body
            && event.case_id == case.id
        {
            assert!(stream.delete_message(seq).await.unwrap());
            removed += 1;
        }
    }
    assert_eq!(removed, 1, "the report's message in the hub's stream");
    let village = cluster.village.db.pool().await;
    sqlx::query("DELETE FROM outbox WHERE case_id = $1")
        .bind(case.id.parse::<uuid::Uuid>().unwrap())
        .execute(&village)
        .await
        .unwrap();
    village.close().await;
    // Cut for longer than the street's consumer takes to find its pull request gone (two missed
    // 2 s heartbeats) plus a few seconds it cannot open again: a cut, not a hiccup.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let runs_before = runs(&clients.street).await;
    assert!(clients.history(Tier::Street, &case.id).await.is_empty());

    street_leaf.restore();
    let restored = std::time::Instant::now();
    held_at(&clients, Tier::Street, &case.id, 1).await;
    let took = restored.elapsed();
    // The status counts a run's repairs when the run ends, after its last case is stored.
    eventually(
        "the street's status to count a run after the link returned, and its repair",
        Duration::from_secs(15),
        || async {
            let reconciliation = tier_status(&clients.street).await.reconciliation?;
            (reconciliation.runs > runs_before && reconciliation.total_cases_repaired >= 1)
                .then_some(())
        },
    )
    .await;
    eprintln!("street leaf restored: the lost case repaired by reconciliation after {took:?}");
    assert_eq!(
        clients.history(Tier::Street, &case.id).await,
        clients.history(Tier::Village, &case.id).await
    );
    cluster.stop().await;
}

#[tokio::test]
async fn an_event_that_cannot_be_published_is_set_aside_and_the_rest_flows() {
    wangge_tests::init_logs();
    let nats = NatsServer::start().await;
    let db = TestDb::seeded("village").await;
    let village = TierHandle::start_with(Tier::Village, VILLAGE_SCOPE, &nats.url(), db, |config| {
        config.delivery.max_publish_failures = 2;
    })
    .await;
    let channel = village.channel().await;
    nats.case_stream().await;
    // Rows an older version (or a changed broker) left behind: one too large for NATS, one on a
    // subject no stream takes.
    let pool = village.db.pool().await;
    for (subject, bytes) in [
        ("wg.case.350205.002.006.001", 2 * 1024 * 1024),
        ("wg.stray.350205", 100),
    ] {
        sqlx::query(
            "INSERT INTO outbox (event_id, case_id, seq, subject, body, pending_tiers)
             VALUES ($1, $2, 1, $3, $4, '{street}')",
        )
        .bind(uuid::Uuid::now_v7())
        .bind(uuid::Uuid::now_v7())
        .bind(subject)
        .bind(vec![0u8; bytes])
        .execute(&pool)
        .await
        .unwrap();
    }
    let mut field = pb::field_app_service_client::FieldAppServiceClient::new(channel.clone());
    let case = field
        .report_case(as_actor(GRID_WORKER, report(&client_id(), GRID)))
        .await
        .unwrap()
        .into_inner();
    let status = eventually("both set aside", Duration::from_secs(20), || async {
        let status = tier_status(&channel).await;
        (status.dead_letters_outgoing == 2 && status.outbox_unpublished == 0).then_some(status)
    })
    .await;
    // The report behind them went out (and waits for the street, which is not running).
    assert_eq!(status.outbox_depth, 1, "{status:?}");
    let reasons: Vec<String> =
        sqlx::query_scalar("SELECT error FROM dead_letters WHERE direction = 'outgoing'")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert!(
        reasons.iter().any(|r| r.contains("max payload")),
        "{reasons:?}"
    );
    let js = nats.case_stream().await;
    let delivered = stream_messages(&js).await;
    assert!(delivered.iter().any(|(_, e)| matches!(
        &e.body,
        Some(pb::envelope::Body::CaseEvent(event)) if event.case_id == case.id
    )));
    pool.close().await;
}

#[tokio::test]
async fn a_step_whose_event_could_not_travel_is_refused_before_anything_is_stored() {
    wangge_tests::init_logs();
    let nats = NatsServer::start().await;
    let db = TestDb::seeded("village").await;
    let village = TierHandle::start_with(Tier::Village, VILLAGE_SCOPE, &nats.url(), db, |config| {
        config.delivery.max_event_bytes = 2000;
    })
    .await;
    let channel = village.channel().await;
    let mut field = pb::field_app_service_client::FieldAppServiceClient::new(channel.clone());
    let mut request = report(&client_id(), GRID);
    request.description = "路边暴露垃圾".repeat(150);
    let status = field
        .report_case(as_actor(GRID_WORKER, request))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().starts_with("description:") && status.message().contains("2000 bytes"),
        "{status:?}"
    );
    let after = tier_status(&channel).await;
    assert_eq!((after.cases, after.outbox_depth), (0, 0), "nothing stored");
    // A report that fits goes through.
    field
        .report_case(as_actor(GRID_WORKER, report(&client_id(), GRID)))
        .await
        .unwrap();
}

#[tokio::test]
async fn a_tier_refuses_a_step_whose_event_its_nats_server_would_not_carry() {
    // Configured for NATS's default 1 MiB; the server carries 4 KiB. The tier connects in the
    // background, so the limit must follow what the server announced, not what was known at start.
    wangge_tests::init_logs();
    let nats = NatsServer::start_with_max_payload(4096).await;
    let db = TestDb::seeded("village").await;
    let village = TierHandle::start(Tier::Village, VILLAGE_SCOPE, &nats.url(), db).await;
    let channel = village.channel().await;
    // The tier made the stream: it is connected and has the server's INFO.
    nats.case_stream().await;
    let mut field = pb::field_app_service_client::FieldAppServiceClient::new(channel.clone());
    let mut request = report(&client_id(), GRID);
    // About 4.5 KB: within the validators' bounds, beyond what this server carries.
    request.description = "路边暴露垃圾".repeat(250);
    let status = field
        .report_case(as_actor(GRID_WORKER, request))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().starts_with("description:")
            && status.message().contains("above the 3072 bytes"),
        "{status:?}"
    );
    let after = tier_status(&channel).await;
    assert_eq!((after.cases, after.outbox_depth), (0, 0), "nothing stored");
    field
        .report_case(as_actor(GRID_WORKER, report(&client_id(), GRID)))
        .await
        .unwrap();
}

#[tokio::test]
async fn a_stream_deleted_under_the_tiers_is_made_again() {
    let cluster = Cluster::start().await;
    let clients = cluster.clients().await;
    let first = report_case(&clients, GRID).await;
    clients.converged(&first.id, 1).await;
    let js = cluster.nats.case_stream().await;
    js.delete_stream("WANGGE_CASES").await.unwrap();
    let second = report_case(&clients, GRID).await;
    clients.converged(&second.id, 1).await;
    eventually(
        "the stream and three consumers again",
        Duration::from_secs(15),
        || async {
            let mut stream = js.get_stream("WANGGE_CASES").await.ok()?;
            (stream.info().await.ok()?.state.consumer_count == 3).then_some(())
        },
    )
    .await;
    assert_no_dead_letters(&settled(&clients).await);
    cluster.stop().await;
}

#[tokio::test]
async fn a_second_street_with_its_own_database_is_filled_by_reconciliation() {
    // A street replica that joins late, after the stream forgot everything: reconciliation alone
    // brings it up to date from its peers.
    // On one server without NATS users: the second instance of a scope runs under its own
    // durable name, which a per-instance NATS user (leaf topology) would not allow it.
    let cluster = Cluster::start_on(
        Topology::SingleServer,
        [VILLAGE_SCOPE, STREET_SCOPE, DISTRICT_SCOPE],
    )
    .await;
    let clients = cluster.clients().await;
    let mut cases = Vec::new();
    for _ in 0..4 {
        cases.push(report_case(&clients, GRID).await);
    }
    for case in &cases {
        clients.converged(&case.id, 1).await;
    }
    // Every receipt in first: an event still awaiting one when the stream forgets it would be
    // sent again by its relay, and reach the late street over the bus instead.
    settled(&clients).await;
    let js = cluster.nats.case_stream().await;
    js.get_stream("WANGGE_CASES")
        .await
        .unwrap()
        .purge()
        .await
        .unwrap();
    let db = TestDb::seeded("street_late").await;
    let late = TierHandle::start_with(
        Tier::Street,
        STREET_SCOPE,
        &cluster.nats.url(),
        db,
        |config| {
            config.consumer_name = Some("street-late".into());
        },
    )
    .await;
    let channel = late.channel().await;
    let mut query = pb::case_query_service_client::CaseQueryServiceClient::new(channel.clone());
    for case in &cases {
        let id = case.id.clone();
        eventually(
            "the late street to hold the case",
            Duration::from_secs(30),
            || {
                let mut query = query.clone();
                let id = id.clone();
                async move {
                    query
                        .list_case_events(pb::ListCaseEventsRequest { case_id: id })
                        .await
                        .ok()
                        .map(|events| events.into_inner().events)
                }
            },
        )
        .await;
        let late_history = query
            .list_case_events(pb::ListCaseEventsRequest {
                case_id: case.id.clone(),
            })
            .await
            .unwrap()
            .into_inner()
            .events;
        assert_eq!(late_history, clients.history(Tier::Village, &case.id).await);
    }
    // The status counts a run's repairs when the run ends, after its last case is stored.
    eventually(
        "the late street's status to count the four cases as repaired by reconciliation",
        Duration::from_secs(30),
        || {
            let channel = channel.clone();
            async move {
                let status = tier_status(&channel).await;
                (status.reconciliation?.total_cases_repaired >= 4).then_some(())
            }
        },
    )
    .await;
    cluster.stop().await;
}

#[tokio::test]
async fn wangge_status_reports_every_tier_even_when_one_hangs_and_one_is_gone() {
    let cluster = Cluster::start().await;
    let clients = cluster.clients().await;
    let case = report_case(&clients, GRID).await;
    clients.converged(&case.id, 1).await;
    settled(&clients).await;
    // A tier that accepts connections and never answers (SIGSTOPped), and one that is gone.
    let paused = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let paused_addr = paused.local_addr().unwrap();
    let holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = paused.accept().await {
            held.push(socket);
        }
    });
    let gone = format!("http://127.0.0.1:{}", wangge_tests::free_port());
    let started = std::time::Instant::now();
    let output = tokio::process::Command::new(wangge_tests::process::workspace_binary("wangge"))
        .args(["status", "--timeout-ms", "1500"])
        .env(
            "WANGGE_TOKEN",
            wangge_tests::identity::token_for("observer"),
        )
        .arg(format!("http://{}", cluster.village.addr))
        .arg(format!("http://{paused_addr}"))
        .arg(&gone)
        .arg(format!("http://{}", cluster.district.addr))
        .output()
        .await
        .unwrap();
    let took = started.elapsed();
    let text = String::from_utf8_lossy(&output.stdout);
    assert_eq!(
        output.status.code(),
        Some(2),
        "a tier did not answer: {text}"
    );
    assert!(
        took < Duration::from_secs(10),
        "bounded by the deadline: {took:?}"
    );
    assert!(text.contains("village 350205002  ok"), "{text}");
    assert!(text.contains("district 350205  ok"), "{text}");
    assert!(
        text.contains(&format!(
            "http://{paused_addr}  DOWN  no answer within 1500 ms"
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!("{gone}  DOWN  unreachable")),
        "{text}"
    );
    assert!(
        text.contains(
            "tasks: answers up, consumer up, pruner up, receipts up, reconciler up, relay up"
        ),
        "{text}"
    );
    holder.abort();
    cluster.stop().await;
}

/// A small deterministic generator (xorshift), so a failing input can be found again.
struct Noise(u64);

impl Noise {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next() as u8).collect()
    }
}

/// Checks that a tier's tables agree: every case's version is its number of events, every stored
/// event and snapshot decodes, every inbox entry is an applied event.
async fn assert_whole(db: &TestDb) {
    let pool = db.pool().await;
    let torn: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM cases c
         WHERE c.version <> (SELECT count(*) FROM case_events e WHERE e.case_id = c.id)
            OR c.version <> (SELECT max(seq) FROM case_events e WHERE e.case_id = c.id)",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(
        torn, 0,
        "{}: cases whose version and events disagree",
        db.name
    );
    let strays: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM inbox i WHERE NOT EXISTS (SELECT 1 FROM case_events e WHERE e.event_id = i.event_id)",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(strays, 0, "{}: inbox entries without their event", db.name);
    let bodies: Vec<Vec<u8>> = sqlx::query_scalar("SELECT body FROM case_events")
        .fetch_all(&pool)
        .await
        .unwrap();
    for body in bodies {
        pb::CaseEvent::decode(body.as_slice()).expect("stored events decode");
    }
    let snapshots: Vec<Vec<u8>> = sqlx::query_scalar("SELECT snapshot FROM cases")
        .fetch_all(&pool)
        .await
        .unwrap();
    for snapshot in snapshots {
        pb::Case::decode(snapshot.as_slice()).expect("stored snapshots decode");
    }
    pool.close().await;
}

#[tokio::test]
async fn arbitrary_messages_on_the_bus_never_break_a_tier() {
    let cluster = Cluster::start().await;
    let clients = cluster.clients().await;
    let js = cluster.nats.case_stream().await;
    let seed = std::env::var("WANGGE_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x9e37_79b9_7f4a_7c15_u64);
    let mut noise = Noise(seed);
    let valid = authored_pair();
    let mut acks = Vec::new();
    for i in 0..600 {
        let payload = match i % 4 {
            // Pure noise.
            0 => {
                let len = noise.below(300) as usize;
                noise.bytes(len)
            }
            // A real envelope, cut short or with bytes flipped.
            1 | 2 => {
                let event = valid[noise.below(2) as usize].clone();
                let mut bytes = pb::Envelope {
                    event_id: event.event_id.clone(),
                    trace: Default::default(),
                    body: Some(pb::envelope::Body::CaseEvent(event)),
                }
                .encode_to_vec();
                if i % 4 == 1 {
                    bytes.truncate(noise.below(bytes.len() as u64) as usize);
                } else {
                    for _ in 0..=noise.below(4) {
                        let at = noise.below(bytes.len() as u64) as usize;
                        bytes[at] ^= noise.next() as u8 | 1;
                    }
                }
                bytes
            }
            // Well-formed events that lie: random sequence numbers, tiers, states and owners.
            _ => {
                let mut event = valid[noise.below(2) as usize].clone();
                event.seq = noise.below(5);
                event.tier = noise.below(5) as i32;
                event.state_after = noise.below(25) as i32;
                if noise.below(2) == 0 {
                    event.case_id =
                        uuid::Uuid::from_u64_pair(noise.next(), noise.next()).to_string();
                }
                if noise.below(3) == 0 {
                    event.event_id = format!("{:x}", noise.next());
                }
                pb::Envelope {
                    event_id: event.event_id.clone(),
                    trace: Default::default(),
                    body: Some(pb::envelope::Body::CaseEvent(event)),
                }
                .encode_to_vec()
            }
        };
        let subject = if noise.below(5) == 0 {
            "wg.case.350205.002.007.001"
        } else {
            "wg.case.350205.002.006.001"
        };
        acks.push(js.publish(subject, payload.into()).await.unwrap());
    }
    for ack in acks {
        ack.await.unwrap();
    }
    let marker = report_case(&clients, GRID).await;
    clients.converged(&marker.id, 1).await;
    for (channel, db) in [
        (&clients.village, &cluster.village.db),
        (&clients.street, &cluster.street.db),
        (&clients.district, &cluster.district.db),
    ] {
        let status = tier_status(channel).await;
        assert!(status.serving, "{:?}", status.problems);
        assert!(
            status.tasks.iter().all(|t| t.running && t.restarts == 0),
            "{:?}",
            status.tasks
        );
        assert_whole(db).await;
    }
    cluster.stop().await;
}
