//! Nothing lost, nothing doubled: resubmitted reports, replayed bus messages, tiers killed mid-stream.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_nats::HeaderMap;
use prost::Message;
use tokio::sync::Mutex;
use wangge_proto as pb;
use wangge_tests::Channel;

type AdminClient = pb::admin_service_client::AdminServiceClient<Channel>;
use wangge_proto::Tier;
use wangge_tests::cluster::{
    DISTRICT_SCOPE, FieldClient, STREET_SCOPE, TierClients, VILLAGE_SCOPE, as_actor,
};
use wangge_tests::db::TestDb;
use wangge_tests::fixtures::*;
use wangge_tests::nats::NatsServer;
use wangge_tests::process::TierProcess;
use wangge_tests::{Cluster, Topology, eventually};

#[tokio::test]
async fn a_resubmitted_report_returns_the_same_case() {
    let cluster = Cluster::start().await;
    let clients = cluster.clients().await;
    let request = report(&client_id(), GRID);
    let first = clients
        .field()
        .report_case(as_actor(GRID_WORKER, request.clone()))
        .await
        .unwrap()
        .into_inner();
    // The app did not hear back and sends it again, even twice at once.
    let (mut one, mut two) = (clients.field(), clients.field());
    let (second, third) = tokio::join!(
        one.report_case(as_actor(GRID_WORKER, request.clone())),
        two.report_case(as_actor(GRID_WORKER, request)),
    );
    assert_eq!(second.unwrap().into_inner().id, first.id);
    assert_eq!(third.unwrap().into_inner().id, first.id);
    clients.converged(&first.id, 1).await;
    let listed = clients
        .cases(Tier::District)
        .list_cases(pb::ListCasesRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        listed
            .cases
            .iter()
            .filter(|c| c.client_id == first.client_id)
            .count(),
        1
    );
    cluster.stop().await;
}

async fn dead_letters(db: &TestDb) -> i64 {
    let pool = db.pool().await;
    let count = sqlx::query_scalar("SELECT count(*) FROM dead_letters")
        .fetch_one(&pool)
        .await
        .unwrap();
    pool.close().await;
    count
}

#[tokio::test]
async fn a_replayed_nats_message_has_no_second_effect() {
    let cluster = Cluster::start().await;
    let clients = cluster.clients().await;
    let case = report_case(&clients, GRID).await;
    clients.converged(&case.id, 1).await;
    let case = clients
        .street_console()
        .accept_case(as_actor(
            STREET_OPERATOR,
            pb::CaseActionRequest {
                case_id: case.id.clone(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let history = clients.converged(&case.id, 2).await;

    // Replay both events under new message ids, so JetStream's own de-duplication does not catch them.
    let js = cluster.nats.case_stream().await;
    for event in &history {
        let envelope = pb::Envelope {
            event_id: event.event_id.clone(),
            trace: Default::default(),
            body: Some(pb::envelope::Body::CaseEvent(event.clone())),
        };
        let mut headers = HeaderMap::new();
        headers.insert(
            async_nats::header::NATS_MESSAGE_ID,
            uuid::Uuid::new_v4().to_string().as_str(),
        );
        let subject = "wg.case.350205.002.006.001".to_owned();
        js.publish_with_headers(subject, headers, envelope.encode_to_vec().into())
            .await
            .unwrap()
            .await
            .unwrap();
    }
    // A case reported after the replays converges only after every consumer passed them: the
    // stream is consumed in order.
    let marker = report_case(&clients, GRID).await;
    clients.converged(&marker.id, 1).await;

    assert_eq!(clients.converged(&case.id, 2).await, history);
    for tier in [Tier::Village, Tier::Street, Tier::District] {
        let got = clients
            .cases(tier)
            .get_case(pb::GetCaseRequest {
                case_id: case.id.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(got.version, 2, "{tier:?}");
        let listed = clients
            .cases(tier)
            .list_cases(pb::ListCasesRequest::default())
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            listed.cases.len(),
            2,
            "{tier:?} holds the case and the marker only"
        );
    }
    for db in [
        &cluster.village.db,
        &cluster.street.db,
        &cluster.district.db,
    ] {
        assert_eq!(
            dead_letters(db).await,
            0,
            "a duplicate is not a poison message"
        );
    }
    cluster.stop().await;
}

/// Reports `count` cases with fresh client ids, retrying each until the village takes it, as a
/// field app with a queue of drafts does. Returns the client ids the village accepted.
async fn report_stream(channel: Channel, count: usize, accepted: Arc<Mutex<Vec<String>>>) {
    let mut field = FieldClient::new(channel);
    for _ in 0..count {
        let request = report(
            &client_id(),
            if accepted.lock().await.len() % 2 == 0 {
                GRID
            } else {
                OTHER_GRID
            },
        );
        let mut attempts = 0;
        loop {
            attempts += 1;
            match field
                .report_case(as_actor(STREET_WORKER, request.clone()))
                .await
            {
                Ok(case) => {
                    assert_eq!(case.into_inner().client_id, request.client_id);
                    accepted.lock().await.push(request.client_id.clone());
                    break;
                }
                Err(status) => {
                    assert!(attempts < 600, "report never accepted: {status:?}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
}

async fn all_cases(clients: &TierClients, tier: Tier) -> Vec<pb::Case> {
    let mut cases = Vec::new();
    let mut page_token = String::new();
    loop {
        let request = pb::ListCasesRequest {
            page_size: 500,
            page_token,
            ..Default::default()
        };
        let page = match clients.cases(tier).list_cases(request).await {
            Ok(page) => page.into_inner(),
            Err(_) => return Vec::new(),
        };
        cases.extend(page.cases);
        if page.next_page_token.is_empty() {
            return cases;
        }
        page_token = page.next_page_token;
    }
}

#[tokio::test]
async fn tiers_killed_mid_stream_catch_up_and_every_accepted_report_appears_exactly_once() {
    wangge_tests::init_logs();
    let nats = NatsServer::start().await;
    let (vdb, sdb, ddb) = tokio::join!(
        TestDb::seeded("village"),
        TestDb::seeded("street"),
        TestDb::seeded("district")
    );
    let mut village = TierProcess::start(Tier::Village, VILLAGE_SCOPE, &vdb.url, &nats.url()).await;
    let mut street = TierProcess::start(Tier::Street, STREET_SCOPE, &sdb.url, &nats.url()).await;
    let mut district =
        TierProcess::start(Tier::District, DISTRICT_SCOPE, &ddb.url, &nats.url()).await;
    let lazy = |addr| {
        wangge_tests::identity::observed(
            tonic::transport::Channel::from_shared(format!("http://{addr}"))
                .unwrap()
                .connect_lazy(),
        )
    };
    let clients = TierClients {
        village: lazy(village.addr),
        street: lazy(street.addr),
        district: lazy(district.addr),
    };

    const PER_WRITER: usize = 180;
    const WRITERS: usize = 3;
    let accepted = Arc::new(Mutex::new(Vec::new()));
    let writers: Vec<_> = (0..WRITERS)
        .map(|_| {
            tokio::spawn(report_stream(
                clients.village.clone(),
                PER_WRITER,
                accepted.clone(),
            ))
        })
        .collect();

    // Kill each tier with SIGKILL in the middle of the stream, and start it again.
    let total = PER_WRITER * WRITERS;
    for (i, process) in [&mut street, &mut village, &mut district]
        .into_iter()
        .enumerate()
    {
        let threshold = total * (i + 1) / 4;
        let accepted = accepted.clone();
        eventually("reports to flow", Duration::from_secs(120), || {
            let accepted = accepted.clone();
            async move { (accepted.lock().await.len() >= threshold).then_some(()) }
        })
        .await;
        process.kill().await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        process.restart().await;
    }
    for writer in writers {
        writer.await.unwrap();
    }
    let accepted = accepted.lock().await.clone();
    assert_eq!(accepted.len(), total);

    for tier in [Tier::Village, Tier::Street, Tier::District] {
        let cases = eventually(
            &format!("all {total} reports at the {tier:?} tier"),
            Duration::from_secs(60),
            || async {
                let cases = all_cases(&clients, tier).await;
                (cases.len() >= total).then_some(cases)
            },
        )
        .await;
        let mut seen: HashMap<&str, usize> = HashMap::new();
        for case in &cases {
            *seen.entry(case.client_id.as_str()).or_default() += 1;
        }
        for client_id in &accepted {
            assert_eq!(
                seen.get(client_id.as_str()),
                Some(&1),
                "{client_id} exactly once at {tier:?}"
            );
        }
        assert_eq!(
            cases.len(),
            total,
            "no report the village did not accept appears at {tier:?}"
        );
        assert!(cases.iter().all(|c| c.version == 1));
    }
    for db in [&vdb, &sdb, &ddb] {
        assert_eq!(dead_letters(db).await, 0);
    }

    // A console opened now starts with every waiting case, read page by page (over 500 here).
    let request = pb::WatchCasesRequest {
        states: vec![pb::CaseState::Reported as i32],
        include_existing: true,
    };
    let mut watch = clients
        .street_console()
        .watch_cases(as_actor(STREET_OPERATOR, request))
        .await
        .unwrap()
        .into_inner();
    let mut initial = std::collections::HashSet::new();
    while initial.len() < total {
        let update = tokio::time::timeout(Duration::from_secs(10), watch.message())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert!(initial.insert(update.case.unwrap().id), "each case once");
    }
    for process in [&mut village, &mut street, &mut district] {
        process.kill().await;
    }
}

#[tokio::test]
async fn reports_taken_while_nats_is_down_are_forwarded_when_it_returns() {
    let mut cluster = Cluster::start().await;
    let clients = cluster.clients().await;
    cluster.nats.kill().await;

    // The village takes reports with the bus gone: they wait in its outbox.
    let mut cases = Vec::new();
    for _ in 0..5 {
        cases.push(report_case(&clients, GRID).await);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    for case in &cases {
        assert!(
            clients.history(Tier::Street, &case.id).await.is_empty(),
            "nothing crossed without NATS"
        );
    }
    let mut admin = AdminClient::new(clients.village.clone());
    let status = admin
        .get_status(pb::GetStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status.outbox_depth, 5, "{status:?}");
    assert!(status.outbox_oldest_seconds > 0.5, "{status:?}");

    cluster.nats.resume().await;
    for case in &cases {
        clients.converged(&case.id, 1).await;
    }
    // The outbox row goes when NATS's ack is back, which may be after the street applied it.
    let status = eventually("an empty outbox", Duration::from_secs(10), || {
        let mut admin = admin.clone();
        async move {
            let status = admin
                .get_status(pb::GetStatusRequest {})
                .await
                .unwrap()
                .into_inner();
            (status.outbox_depth == 0).then_some(status)
        }
    })
    .await;
    assert_eq!(
        (status.dead_letters, status.cases),
        (0, 5),
        "the outbox drained: {status:?}"
    );
    cluster.stop().await;
}

#[tokio::test]
async fn events_arriving_before_their_predecessor_wait_for_it() {
    let cluster = Cluster::start().await;
    let clients = cluster.clients().await;
    let events = authored_pair();
    let js = cluster.nats.case_stream().await;
    // The second event first: every tier must hold it back until the first has arrived.
    for event in events.iter().rev() {
        let envelope = pb::Envelope {
            event_id: event.event_id.clone(),
            trace: Default::default(),
            body: Some(pb::envelope::Body::CaseEvent(event.clone())),
        };
        let mut headers = HeaderMap::new();
        headers.insert(async_nats::header::NATS_MESSAGE_ID, event.event_id.as_str());
        js.publish_with_headers(
            "wg.case.350205.002.006.001",
            headers,
            envelope.encode_to_vec().into(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    }
    let history = clients.converged(&events[0].case_id, 2).await;
    assert_eq!(history, events);
    for db in [
        &cluster.village.db,
        &cluster.street.db,
        &cluster.district.db,
    ] {
        assert_eq!(dead_letters(db).await, 0);
    }
    cluster.stop().await;
}

#[tokio::test]
async fn an_undecodable_message_is_kept_as_a_dead_letter_and_does_not_block_the_stream() {
    let cluster = Cluster::start().await;
    let clients = cluster.clients().await;
    let js = cluster.nats.case_stream().await;
    js.publish(
        "wg.case.350205.002.006.001",
        b"\xff\xff not a protobuf".as_slice().into(),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    let case = report_case(&clients, GRID).await;
    clients.converged(&case.id, 1).await;
    for db in [
        &cluster.village.db,
        &cluster.street.db,
        &cluster.district.db,
    ] {
        assert_eq!(dead_letters(db).await, 1, "{}", db.name);
    }
    cluster.stop().await;
}

#[tokio::test]
async fn pruned_inbox_entries_leave_late_copies_without_effect() {
    // On one server without NATS users: the second instance of a scope runs under its own
    // durable name, which a per-instance NATS user (leaf topology) would not allow it.
    let cluster = Cluster::start_on(
        Topology::SingleServer,
        [VILLAGE_SCOPE, STREET_SCOPE, DISTRICT_SCOPE],
    )
    .await;
    let clients = cluster.clients().await;
    // A second street instance that forgets applied event ids at once.
    let db = TestDb::seeded("street_pruning").await;
    let forgetful = wangge_tests::cluster::TierHandle::start_with(
        Tier::Street,
        STREET_SCOPE,
        &cluster.nats.url(),
        db,
        |config| {
            config.consumer_name = Some("street-forgetful".into());
            config.inbox_retention_hours = 0;
            config.inbox_prune_every_secs = 1;
        },
    )
    .await;
    let mut forgetful_cases =
        pb::case_query_service_client::CaseQueryServiceClient::new(forgetful.channel().await);

    let case = report_case(&clients, GRID).await;
    let history = clients.converged(&case.id, 1).await;
    let pool = forgetful.db.pool().await;
    eventually(
        "the inbox entry to be pruned",
        Duration::from_secs(15),
        || async {
            let at: Option<i64> = forgetful_cases
                .clone()
                .get_case(pb::GetCaseRequest {
                    case_id: case.id.clone(),
                })
                .await
                .ok()
                .map(|c| c.into_inner().version as i64);
            let inbox: i64 = sqlx::query_scalar("SELECT count(*) FROM inbox")
                .fetch_one(&pool)
                .await
                .unwrap();
            (at == Some(1) && inbox == 0).then_some(())
        },
    )
    .await;

    // A copy of the event arrives late, under a new message id: the case sequence refuses it.
    let js = cluster.nats.case_stream().await;
    let envelope = pb::Envelope {
        event_id: history[0].event_id.clone(),
        trace: Default::default(),
        body: Some(pb::envelope::Body::CaseEvent(history[0].clone())),
    };
    let mut headers = HeaderMap::new();
    headers.insert(
        async_nats::header::NATS_MESSAGE_ID,
        uuid::Uuid::new_v4().to_string().as_str(),
    );
    js.publish_with_headers(
        "wg.case.350205.002.006.001",
        headers,
        envelope.encode_to_vec().into(),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    let marker = report_case(&clients, GRID).await;
    eventually(
        "the marker at the forgetful street",
        Duration::from_secs(15),
        || async {
            forgetful_cases
                .clone()
                .get_case(pb::GetCaseRequest {
                    case_id: marker.id.clone(),
                })
                .await
                .ok()
                .map(|_| ())
        },
    )
    .await;
    let events = forgetful_cases
        .list_case_events(pb::ListCaseEventsRequest {
            case_id: case.id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .events;
    assert_eq!(events, history);
    assert_eq!(dead_letters(&forgetful.db).await, 0);
    pool.close().await;
    let mut forgetful = forgetful;
    forgetful.stop().await.unwrap();
    cluster.stop().await;
}
