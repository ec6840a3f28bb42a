//! Errors a client can act on: a request that does not decode or does not validate is
//! INVALID_ARGUMENT naming the field, a reused client_id with another report is ALREADY_EXISTS, a
//! database that drops its connections is UNAVAILABLE (never INTERNAL), and arbitrary reports leave
//! exactly the cases that were answered OK.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::StreamExt;
use proptest::prelude::*;
use proptest::strategy::ValueTree as _;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};

use sqlx::{Connection, PgConnection};
use tokio::sync::Mutex;
use tonic::{Code, Status};
use wangge_proto as pb;
use wangge_proto::Tier;
use wangge_tests::Cluster;
use wangge_tests::cluster::{FieldClient, as_actor};
use wangge_tests::db::admin_url;
use wangge_tests::fixtures::*;
use wangge_tests::raw::RawCodec;

/// Calls `method` with `bytes` as the encoded request; returns the status it failed with.
async fn raw_call(
    channel: wangge_tests::Channel,
    method: &'static str,
    actor: &str,
    bytes: Vec<u8>,
) -> Status {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    grpc.unary(
        as_actor(actor, bytes),
        tonic::codegen::http::uri::PathAndQuery::from_static(method),
        RawCodec,
    )
    .await
    .expect_err("an undecodable request must fail")
}

/// `(field number << 3) | 2` then the length: a length-delimited field.
fn field(number: u8, bytes: &[u8]) -> Vec<u8> {
    let mut encoded = vec![(number << 3) | 2, bytes.len() as u8];
    encoded.extend_from_slice(bytes);
    encoded
}

#[tokio::test]
async fn undecodable_requests_are_invalid_argument_naming_message_and_field() {
    let cluster = Cluster::start().await;
    let village = cluster.village.channel().await;
    let street = cluster.street.channel().await;
    let report = "/wangge.v1.FieldAppService/ReportCase";
    let cases = [
        // A description that is not UTF-8.
        (
            village.clone(),
            report,
            [field(1, b"app-1"), field(3, &[0xe8, 0xb7, 0xff, 0xfe])].concat(),
            "ReportCaseRequest.description: ",
        ),
        // A client id cut in the middle of a UTF-8 sequence.
        (
            village.clone(),
            report,
            field(1, &[b'a', 0xe8, 0xb7]),
            "ReportCaseRequest.client_id: ",
        ),
        // A description that claims more bytes than the message has.
        (
            village.clone(),
            report,
            vec![0x1a, 0x7f, b'x'],
            "ReportCaseRequest.description: ",
        ),
        // A note of a console step, on the street.
        (
            street.clone(),
            "/wangge.v1.CommandConsoleService/AcceptCase",
            [field(1, b"x"), field(2, &[0xc0, 0x80])].concat(),
            "CaseActionRequest.note: ",
        ),
        // An attachment caption inside a department step.
        (
            street,
            "/wangge.v1.DepartmentService/ReportHandled",
            field(4, &field(5, &[0xff])),
            // prost names the innermost field first.
            "Attachment.caption: DepartmentActionRequest.attachments: ",
        ),
    ];
    for (channel, method, bytes, prefix) in cases {
        let status = raw_call(channel, method, GRID_WORKER, bytes).await;
        assert_eq!(status.code(), Code::InvalidArgument, "{method}: {status:?}");
        assert!(status.message().starts_with(prefix), "{method}: {status:?}");
    }
    cluster.stop().await;
}

/// Asserts that `result` failed with INVALID_ARGUMENT naming `field` first.
#[track_caller]
fn refused<T: std::fmt::Debug>(result: Result<tonic::Response<T>, Status>, field: &str) {
    let status = result.expect_err(field);
    assert_eq!(status.code(), Code::InvalidArgument, "{field}: {status:?}");
    assert!(
        status.message().starts_with(&format!("{field}: ")),
        "{field}: {status:?}"
    );
}

/// Makes one field of a good report bad.
type Spoil = fn(&mut pb::ReportCaseRequest);

fn photo() -> pb::Attachment {
    pb::Attachment {
        id: "photo-1".into(),
        content_type: "image/jpeg".into(),
        size_bytes: 2_000_000,
        sha256: "0f".repeat(32),
        caption: "现场照片".into(),
    }
}

#[tokio::test]
async fn every_service_refuses_bad_text_and_structured_fields_by_name() {
    let cluster = Cluster::start().await;
    let clients = cluster.clients().await;
    let mut field_app = clients.field();
    let now = chrono::Utc::now().timestamp();
    let bad_reports: Vec<(&str, Spoil)> = vec![
        ("client_id", |r| r.client_id = "app\u{0}1".into()),
        ("description", |r| {
            r.description = "\u{200B}\u{FEFF}\u{2060}".into()
        }),
        ("description", |r| r.description = "路灯\u{0}坏了".into()),
        ("description", |r| r.description = "\u{1b}[31m红色".into()),
        ("description", |r| r.description = "长".repeat(2001)),
        ("category_code", |r| r.category_code = "szcg\u{7}".into()),
        ("captured_at", |r| {
            r.captured_at = Some(prost_types::Timestamp {
                seconds: 946_684_799,
                nanos: 0,
            })
        }),
        ("attachments[0].sha256", |r| {
            r.attachments = vec![pb::Attachment {
                sha256: "0F".repeat(32),
                ..photo()
            }]
        }),
        ("attachments[0].size_bytes", |r| {
            r.attachments = vec![pb::Attachment {
                size_bytes: 0,
                ..photo()
            }]
        }),
        ("attachments[0].content_type", |r| {
            r.attachments = vec![pb::Attachment {
                content_type: "text/html\r\nx-injected: 1".into(),
                ..photo()
            }]
        }),
        ("attachments[1].id", |r| {
            r.attachments = vec![photo(), photo()]
        }),
        ("attachments[0].caption", |r| {
            r.attachments = vec![pb::Attachment {
                caption: "a\nb".into(),
                ..photo()
            }]
        }),
        ("self_handling.resolution", |r| {
            r.self_handling = Some(pb::SelfHandling {
                resolution: "\u{200D}".into(),
            })
        }),
    ];
    for (name, change) in bad_reports {
        let mut request = report(&client_id(), GRID);
        change(&mut request);
        refused(
            field_app.report_case(as_actor(GRID_WORKER, request)).await,
            name,
        );
    }
    let mut request = report(&client_id(), GRID);
    request.captured_at = Some(prost_types::Timestamp {
        seconds: now + 3600,
        nanos: 0,
    });
    refused(
        field_app.report_case(as_actor(GRID_WORKER, request)).await,
        "captured_at",
    );
    let mut request = report(&client_id(), GRID);
    request.captured_at = Some(prost_types::Timestamp {
        seconds: now,
        nanos: -1,
    });
    refused(
        field_app.report_case(as_actor(GRID_WORKER, request)).await,
        "captured_at",
    );
    // Free text keeps its line breaks and tabs.
    let mut request = report(&client_id(), GRID);
    request.description = "路边垃圾\r\n\t已拍照".into();
    request.attachments = vec![photo()];
    let case = field_app
        .report_case(as_actor(GRID_WORKER, request))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(case.description, "路边垃圾\n\t已拍照");
    let some_case = uuid::Uuid::now_v7().to_string();

    refused(
        field_app
            .confirm_check(as_actor(
                GRID_WORKER,
                pb::ConfirmCheckRequest {
                    case_id: some_case.clone(),
                    passed: true,
                    note: "ok\u{0}".into(),
                    ..Default::default()
                },
            ))
            .await,
        "note",
    );
    refused(
        field_app
            .list_tasks(as_actor(
                GRID_WORKER,
                pb::ListTasksRequest {
                    org_codes: vec![GRID.into(), "35020500200\u{0}".into()],
                },
            ))
            .await,
        "org_codes[1]",
    );
    refused(
        clients
            .community()
            .reject_self_handled(as_actor(
                COMMUNITY_STAFF,
                pb::ReviewRequest {
                    case_id: case.id.clone(),
                    note: "\u{200B} \u{3000}".into(),
                },
            ))
            .await,
        "note",
    );

    let mut console = clients.street_console();
    let step = |note: &str| pb::CaseActionRequest {
        case_id: some_case.clone(),
        note: note.into(),
        attachments: Vec::new(),
    };
    refused(
        console
            .reject_case(as_actor(STREET_CHIEF, step("\u{FEFF}")))
            .await,
        "note",
    );
    refused(
        console
            .escalate_case(as_actor(STREET_OPERATOR, step("")))
            .await,
        "note",
    );
    refused(
        console
            .accept_case(as_actor(
                STREET_OPERATOR,
                pb::CaseActionRequest {
                    attachments: vec![pb::Attachment {
                        sha256: "xyz".into(),
                        ..photo()
                    }],
                    ..step("")
                },
            ))
            .await,
        "attachments[0].sha256",
    );
    refused(
        console
            .dispatch_case(as_actor(
                STREET_OPERATOR,
                pb::DispatchCaseRequest {
                    case_id: some_case.clone(),
                    department_code: "cgzd\u{0}".into(),
                    note: String::new(),
                },
            ))
            .await,
        "department_code",
    );
    refused(
        console
            .watch_cases(as_actor(
                STREET_OPERATOR,
                pb::WatchCasesRequest {
                    states: vec![pb::CaseState::Accepted as i32, 99],
                    include_existing: false,
                },
            ))
            .await,
        "states[1]",
    );
    let mut departments = clients.street_departments();
    let department_step = |note: &str| pb::DepartmentActionRequest {
        case_id: some_case.clone(),
        department_code: "350205002-cgzd".into(),
        note: note.into(),
        attachments: Vec::new(),
    };
    refused(
        departments
            .return_case(as_actor("dh-350205002-cgzd", department_step("  \t")))
            .await,
        "note",
    );
    refused(
        departments
            .report_handled(as_actor("dh-350205002-cgzd", department_step("\u{2060}")))
            .await,
        "note",
    );
    refused(
        departments
            .list_assigned(as_actor(
                "dh-350205002-cgzd",
                pb::ListAssignedRequest {
                    department_code: String::new(),
                    ..Default::default()
                },
            ))
            .await,
        "department_code",
    );

    let mut cases = clients.cases(Tier::Street);
    refused(
        cases
            .get_case(pb::GetCaseRequest {
                case_id: "\u{0}".into(),
            })
            .await,
        "case_id",
    );
    refused(
        cases
            .list_cases(pb::ListCasesRequest {
                page_token: "not-a-token".into(),
                ..Default::default()
            })
            .await,
        "page_token",
    );
    let mut registry = clients.registry(Tier::Street);
    refused(
        registry
            .get_org(pb::GetOrgRequest {
                code: "3502050\u{0}".into(),
            })
            .await,
        "code",
    );
    refused(
        registry
            .list_orgs(pb::ListOrgsRequest {
                parent_code: "abc".into(),
            })
            .await,
        "parent_code",
    );
    refused(
        registry
            .locate_grid(pb::LocateGridRequest {
                location: Some(pb::GeoPoint {
                    longitude: f64::NAN,
                    latitude: 24.5,
                }),
            })
            .await,
        "location",
    );
    refused(
        registry
            .list_categories(pb::ListCategoriesRequest {
                scheme: "sz cg".into(),
            })
            .await,
        "scheme",
    );
    refused(
        registry
            .list_workers(pb::ListWorkersRequest {
                org_code: "35020500\u{200B}".into(),
            })
            .await,
        "org_code",
    );

    // Of all the reports above, only the good one left a case.
    let village_db = cluster.village.db.pool().await;
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM cases")
        .fetch_one(&village_db)
        .await
        .unwrap();
    assert_eq!(stored, 1);
    cluster.stop().await;
}

#[tokio::test]
async fn a_client_id_is_unique_per_reporter_and_reusing_it_for_another_report_is_already_exists() {
    let cluster = Cluster::start().await;
    let clients = cluster.clients().await;
    let mut field_app = clients.field();
    // A worker of the whole community, so the same report is theirs to make too.
    let other_worker = "gw-350205002006";
    let shared_id = client_id();
    let request = report(&shared_id, GRID);
    let first = field_app
        .report_case(as_actor(GRID_WORKER, request.clone()))
        .await
        .unwrap()
        .into_inner();

    // The same report again, with the whitespace an app may add: the same case.
    let mut padded = request.clone();
    padded.description = format!(" {}\u{200B}\n", request.description);
    let again = field_app
        .report_case(as_actor(GRID_WORKER, padded))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.id, first.id);

    // The same client_id with another report: refused, naming the field, nothing written.
    let mut different = request.clone();
    different.description = "另一处井盖缺失".into();
    let status = field_app
        .report_case(as_actor(GRID_WORKER, different))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::AlreadyExists, "{status:?}");
    assert!(status.message().starts_with("client_id: "), "{status:?}");

    // Another worker's app drafted the same id: that is another report, and another case.
    let theirs = field_app
        .report_case(as_actor(other_worker, request.clone()))
        .await
        .unwrap()
        .into_inner();
    assert_ne!(theirs.id, first.id);
    assert_eq!(theirs.client_id, shared_id);

    // Copies racing each other get one case between them.
    let racing = report(&client_id(), OTHER_GRID);
    let copies = futures::future::join_all((0..4).map(|_| {
        let mut client = clients.field();
        let racing = racing.clone();
        async move { client.report_case(as_actor(STREET_WORKER, racing)).await }
    }))
    .await;
    let ids: BTreeSet<String> = copies
        .into_iter()
        .map(|copy| copy.unwrap().into_inner().id)
        .collect();
    assert_eq!(ids.len(), 1, "{ids:?}");

    // Both cases with the shared client_id reach the street and the district side by side.
    clients.converged(&first.id, 1).await;
    clients.converged(&theirs.id, 1).await;
    for tier in [Tier::Village, Tier::Street, Tier::District] {
        let listed = clients
            .cases(tier)
            .list_cases(pb::ListCasesRequest::default())
            .await
            .unwrap()
            .into_inner()
            .cases;
        let with_shared_id = listed.iter().filter(|c| c.client_id == shared_id).count();
        assert_eq!(with_shared_id, 2, "at {tier:?}");
    }
    cluster.stop().await;
}

/// Terminates every connection to `database` but the caller's, every `every`, until `stop`.
async fn terminate_connections(database: String, every: Duration, stop: Arc<AtomicBool>) -> u64 {
    let mut admin = PgConnection::connect(&admin_url()).await.unwrap();
    let mut terminated = 0;
    while !stop.load(Ordering::Relaxed) {
        let count: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity
             WHERE datname = $1 AND pid <> pg_backend_pid()) AS t",
        )
        .bind(&database)
        .fetch_one(&mut admin)
        .await
        .unwrap();
        terminated += count as u64;
        tokio::time::sleep(every).await;
    }
    terminated
}

/// A call's outcome while the database drops connections: OK or UNAVAILABLE, nothing else.
#[track_caller]
fn ok_or_unavailable<T>(result: Result<T, Status>) -> Option<T> {
    match result {
        Ok(value) => Some(value),
        Err(status) if status.code() == Code::Unavailable => None,
        Err(status) => panic!("expected OK or UNAVAILABLE, got {status:?}"),
    }
}

#[tokio::test]
async fn a_database_that_drops_its_connections_gives_unavailable_never_internal() {
    let cluster = Cluster::start().await;
    let clients = cluster.clients().await;
    let stop = Arc::new(AtomicBool::new(false));
    let killer = tokio::spawn(terminate_connections(
        cluster.village.db.name.clone(),
        Duration::from_millis(100),
        stop.clone(),
    ));
    // client_id -> case id, for every report answered OK.
    let accepted = Arc::new(Mutex::new(BTreeMap::<String, String>::new()));
    let mut workers = Vec::new();
    for worker in 0..3 {
        let mut field_app: FieldClient = clients.field();
        let accepted = accepted.clone();
        let stop = stop.clone();
        workers.push(tokio::spawn(async move {
            let mut unavailable = 0;
            while !stop.load(Ordering::Relaxed) {
                let request = report(
                    &client_id(),
                    if worker % 2 == 0 { GRID } else { OTHER_GRID },
                );
                // As a field app does: the same report again until it is taken.
                loop {
                    let answer = field_app
                        .report_case(as_actor(STREET_WORKER, request.clone()))
                        .await;
                    match ok_or_unavailable(answer) {
                        Some(case) => {
                            let case = case.into_inner();
                            let earlier = accepted
                                .lock()
                                .await
                                .insert(request.client_id.clone(), case.id.clone());
                            assert!(earlier.is_none_or(|id| id == case.id));
                            // A steady stream, not a flood: the machine is shared with other tests.
                            tokio::time::sleep(Duration::from_millis(10)).await;
                            break;
                        }
                        None => {
                            unavailable += 1;
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                    }
                }
            }
            unavailable
        }));
    }
    let reader = {
        let clients = clients.clone();
        let accepted = accepted.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut cases = clients.cases(Tier::Village);
            let mut unavailable = 0;
            while !stop.load(Ordering::Relaxed) {
                let known = accepted.lock().await.values().last().cloned();
                if let Some(case_id) = known {
                    let answer = cases.get_case(pb::GetCaseRequest { case_id }).await;
                    unavailable += u32::from(ok_or_unavailable(answer).is_none());
                }
                let answer = cases
                    .list_cases(pb::ListCasesRequest {
                        page_size: 50,
                        ..Default::default()
                    })
                    .await;
                unavailable += u32::from(ok_or_unavailable(answer).is_none());
                let answer = clients
                    .registry(Tier::Village)
                    .list_categories(pb::ListCategoriesRequest::default())
                    .await;
                unavailable += u32::from(ok_or_unavailable(answer).is_none());
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            unavailable
        })
    };
    tokio::time::sleep(Duration::from_secs(6)).await;
    stop.store(true, Ordering::Relaxed);
    let terminated = killer.await.unwrap();
    let mut unavailable = reader.await.unwrap();
    for worker in workers {
        unavailable += worker.await.unwrap();
    }
    assert!(terminated > 0, "no connection was terminated");
    assert!(unavailable > 0, "no call met a terminated connection");

    // Every report answered OK is there exactly once, and nothing else is.
    let accepted = accepted.lock().await.clone();
    assert!(accepted.len() > 10, "only {} reports taken", accepted.len());
    let village_db = cluster.village.db.pool().await;
    let stored: Vec<(String, uuid::Uuid)> = sqlx::query_as("SELECT client_id, id FROM cases")
        .fetch_all(&village_db)
        .await
        .unwrap();
    let stored: BTreeMap<String, String> = stored
        .into_iter()
        .map(|(client_id, id)| (client_id, id.to_string()))
        .collect();
    assert_eq!(stored, accepted);
    cluster.stop().await;
}

/// Characters that break things: controls, line breaks, zero-width and invisible characters.
const NASTY: &[char] = &[
    '\0', '\u{1}', '\u{1b}', '\t', '\n', '\r', '\u{7f}', '\u{85}', ' ', '\u{a0}', '\u{200b}',
    '\u{200d}', '\u{2028}', '\u{202e}', '\u{2060}', '\u{3000}', '\u{feff}', 'a', '-', '路', '👨',
];

fn nasty_text() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::collection::vec(prop::sample::select(NASTY), 0..12)
            .prop_map(|chars| chars.into_iter().collect::<String>()),
        1 => any::<String>(),
        1 => (1_995usize..2_010).prop_map(|n| "长".repeat(n)),
    ]
}

/// Mostly `good`, now and then `bad`.
fn mostly<T: std::fmt::Debug>(
    good: impl Strategy<Value = T> + 'static,
    bad: impl Strategy<Value = T> + 'static,
) -> BoxedStrategy<T> {
    prop_oneof![6 => good, 1 => bad].boxed()
}

/// Reports with now and then a bad field: control characters, blank text, huge values, points
/// outside every grid, implausible times, broken attachments, unknown urgencies; some reuse a few
/// client ids so that resubmissions and conflicting reuses happen too.
fn arbitrary_report() -> impl Strategy<Value = (bool, pb::ReportCaseRequest)> {
    let now = chrono::Utc::now().timestamp();
    let points = vec![point_in(GRID), point_in(OTHER_GRID), point_in(SIMING_GRID)];
    let client_id = prop_oneof![
        4 => "[a-z0-9]{12}",
        1 => prop::sample::select(vec!["dup-1".to_owned(), "dup-2".to_owned()]),
        1 => nasty_text(),
    ];
    let location = mostly(
        prop::sample::select(points).prop_map(Some),
        (any::<f64>(), any::<f64>()).prop_map(|(longitude, latitude)| {
            Some(pb::GeoPoint {
                longitude,
                latitude,
            })
        }),
    );
    let captured_at = mostly(
        prop::option::of(
            ((now - 86_400)..now).prop_map(|seconds| prost_types::Timestamp { seconds, nanos: 0 }),
        ),
        (any::<i64>(), any::<i32>())
            .prop_map(|(seconds, nanos)| Some(prost_types::Timestamp { seconds, nanos })),
    );
    let attachment = (
        mostly("[a-z0-9]{1,8}", nasty_text()),
        mostly(Just("image/jpeg".to_owned()), nasty_text()),
        mostly(1u64..10_000_000, any::<u64>()),
        mostly("[0-9a-f]{64}", "[0-9A-F]{64}"),
        mostly(Just(String::new()), nasty_text()),
    )
        .prop_map(
            |(id, content_type, size_bytes, sha256, caption)| pb::Attachment {
                id,
                content_type,
                size_bytes,
                sha256,
                caption,
            },
        );
    (
        (
            any::<bool>(),
            client_id,
            mostly(Just(CATEGORY.to_owned()), nasty_text()),
            mostly("路边垃圾[a-z]{0,3}", nasty_text()),
        ),
        (
            location,
            captured_at,
            mostly(0..4i32, any::<i32>()),
            mostly(Just(Vec::new()), prop::collection::vec(attachment, 0..3)),
            mostly(Just(None), prop::option::of(nasty_text())),
        ),
    )
        .prop_map(
            |(
                (other_worker, client_id, category_code, description),
                (location, captured_at, urgency, attachments, resolution),
            )| {
                let request = pb::ReportCaseRequest {
                    client_id,
                    category_code,
                    description,
                    location,
                    captured_at,
                    urgency,
                    attachments,
                    self_handling: resolution.map(|resolution| pb::SelfHandling { resolution }),
                };
                (other_worker, request)
            },
        )
}

#[tokio::test]
async fn arbitrary_reports_leave_exactly_the_cases_answered_ok() {
    let cluster = Cluster::start().await;
    let clients = cluster.clients().await;
    // Another seed each run, printed so that a failure can be replayed with WANGGE_FUZZ_SEED.
    let seed: u64 = std::env::var("WANGGE_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand_seed);
    eprintln!("WANGGE_FUZZ_SEED={seed}");
    let mut seed_bytes = [0u8; 32];
    seed_bytes[..8].copy_from_slice(&seed.to_le_bytes());
    let mut runner = TestRunner::new_with_rng(
        Config::default(),
        TestRng::from_seed(RngAlgorithm::ChaCha, &seed_bytes),
    );
    let strategy = arbitrary_report();
    let requests: Vec<(bool, pb::ReportCaseRequest)> = (0..300)
        .map(|_| strategy.new_tree(&mut runner).unwrap().current())
        .collect();

    let answers: Vec<_> = futures::stream::iter(requests)
        .map(|(other_worker, request)| {
            let mut field_app = clients.field();
            async move {
                // Both may report anywhere in the street.
                let actor = if other_worker {
                    "gw-350205"
                } else {
                    STREET_WORKER
                };
                let answer = field_app
                    .report_case(as_actor(actor, request.clone()))
                    .await;
                (request, answer)
            }
        })
        .buffer_unordered(8)
        .collect()
        .await;

    let mut accepted = BTreeSet::new();
    let mut refused = 0;
    for (request, answer) in answers {
        match answer {
            Ok(case) => {
                accepted.insert(case.into_inner().id);
            }
            Err(status) if matches!(status.code(), Code::InvalidArgument | Code::AlreadyExists) => {
                assert!(
                    status.message().split_once(": ").is_some(),
                    "a refusal names the field: {status:?}"
                );
                refused += 1;
            }
            Err(status) => panic!("{request:?} got {status:?} (seed {seed})"),
        }
    }
    assert!(accepted.len() >= 20, "only {} accepted", accepted.len());
    assert!(refused >= 20, "only {refused} refused");

    // No partial write: the cases, their one event each and their intake keys are exactly those
    // of the answers that were OK.
    let village_db = cluster.village.db.pool().await;
    let stored: BTreeSet<String> = sqlx::query_scalar::<_, uuid::Uuid>("SELECT id FROM cases")
        .fetch_all(&village_db)
        .await
        .unwrap()
        .into_iter()
        .map(|id| id.to_string())
        .collect();
    assert_eq!(stored, accepted, "seed {seed}");
    let (events, keys): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM case_events), (SELECT count(*) FROM intake_keys)",
    )
    .fetch_one(&village_db)
    .await
    .unwrap();
    assert_eq!(
        (events as usize, keys as usize),
        (accepted.len(), accepted.len())
    );
    // The village still answers: no handler panicked its connection away.
    assert!(wangge_tests::serving(cluster.village.addr).await.is_some());
    cluster.stop().await;
}

fn rand_seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}
