//! Bad input gets a clear status naming what was wrong; the binaries serve health, reflection and
//! grpc-web, print their configuration, and stop cleanly on SIGTERM.

use std::time::Duration;

use futures::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::{Code, Request};
use wangge_proto as pb;
use wangge_proto::Tier;
use wangge_tests::Cluster;
use wangge_tests::cluster::{STREET_SCOPE, as_actor};
use wangge_tests::db::TestDb;
use wangge_tests::fixtures::*;
use wangge_tests::nats::NatsServer;
use wangge_tests::process::{TierProcess, binary};

#[tokio::test]
async fn bad_input_is_refused_with_a_status_naming_the_field() {
    let cluster = Cluster::start().await;
    let clients = cluster.clients().await;
    let mut field = clients.field();

    // A location outside every grid of the scope: in Siming, and in the sea off Africa.
    for location in [
        point_in(SIMING_GRID),
        pb::GeoPoint {
            longitude: 0.0,
            latitude: 0.0,
        },
    ] {
        let mut request = report(&client_id(), GRID);
        request.location = Some(location);
        let status = field
            .report_case(as_actor(GRID_WORKER, request))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(status.message().starts_with("location:"), "{status:?}");
    }
    let mut request = report(&client_id(), GRID);
    request.category_code = "szcg-99-99".into();
    let status = field
        .report_case(as_actor(GRID_WORKER, request))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().starts_with("category_code:"), "{status:?}");
    let mut request = report(&client_id(), GRID);
    request.attachments = vec![pb::Attachment {
        id: "../etc/passwd".into(),
        ..Default::default()
    }];
    let status = field
        .report_case(as_actor(GRID_WORKER, request))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().starts_with("attachments[0].id:"),
        "{status:?}"
    );
    // Without a token (a channel that adds none).
    let status = pb::field_app_service_client::FieldAppServiceClient::new(
        tonic::transport::Channel::from_shared(format!("http://{}", cluster.village.addr))
            .unwrap()
            .connect_lazy(),
    )
    .report_case(Request::new(report(&client_id(), GRID)))
    .await
    .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");

    let mut console = clients.street_console();
    let status = console
        .accept_case(as_actor(
            STREET_OPERATOR,
            pb::CaseActionRequest {
                case_id: "nope".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().starts_with("case_id:"), "{status:?}");
    let unknown = uuid::Uuid::now_v7().to_string();
    let status = console
        .accept_case(as_actor(
            STREET_OPERATOR,
            pb::CaseActionRequest {
                case_id: unknown,
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "{status:?}");

    let case = report_case(&clients, GRID).await;
    clients.converged(&case.id, 1).await;
    let status = console
        .reject_case(as_actor(
            STREET_CHIEF,
            pb::CaseActionRequest {
                case_id: case.id.clone(),
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(
        status.code(),
        Code::InvalidArgument,
        "a rejection needs a reason: {status:?}"
    );
    console
        .accept_case(as_actor(
            STREET_OPERATOR,
            pb::CaseActionRequest {
                case_id: case.id.clone(),
                ..Default::default()
            },
        ))
        .await
        .unwrap();
    let dispatch = |department: &str| pb::DispatchCaseRequest {
        case_id: case.id.clone(),
        department_code: department.to_owned(),
        note: String::new(),
    };
    let status = console
        .dispatch_case(as_actor(STREET_OPERATOR, dispatch("no-such-dept")))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().starts_with("department_code:"),
        "{status:?}"
    );
    // A department of the district is not the street's to dispatch to.
    let district_department = departments_of(&clients, Tier::District, "350205000000")
        .await
        .remove(0);
    let status = console
        .dispatch_case(as_actor(
            STREET_OPERATOR,
            dispatch(&district_department.code),
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    let status = clients
        .district_console()
        .escalate_case(as_actor(
            DISTRICT_OPERATOR,
            pb::CaseActionRequest {
                case_id: case.id.clone(),
                note: "x".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    // Nothing of the above left a trace.
    assert_eq!(clients.converged(&case.id, 2).await.len(), 2);

    let status = clients
        .registry(Tier::Street)
        .list_grids(pb::ListGridsRequest {
            org_code: "350203000000".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(
        status.code(),
        Code::InvalidArgument,
        "outside the scope: {status:?}"
    );
    cluster.stop().await;
}

#[tokio::test]
async fn the_registry_answers_from_the_seeds() {
    let cluster = Cluster::start().await;
    let clients = cluster.clients().await;
    let mut registry = clients.registry(Tier::Street);
    let grid = registry
        .locate_grid(pb::LocateGridRequest {
            location: Some(point_in(GRID)),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(grid.code, GRID);
    assert_eq!(grid.community_code, "350205002006");
    let org = registry
        .get_org(pb::GetOrgRequest {
            code: "350205002000".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(org.name, "新阳街道");
    let communities = registry
        .list_orgs(pb::ListOrgsRequest {
            parent_code: "350205002000".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .orgs;
    assert!(communities.iter().any(|o| o.name == "霞阳社区"));
    let categories = registry
        .list_categories(pb::ListCategoriesRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(
        categories
            .categories
            .iter()
            .any(|c| c.code == CATEGORY && c.name == "暴露垃圾")
    );
    let grids = registry
        .list_grids(pb::ListGridsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .grids;
    assert!(grids.iter().all(|g| g.code.starts_with(STREET_SCOPE)));
    let mut admin =
        pb::admin_service_client::AdminServiceClient::new(cluster.street.channel().await);
    let reloaded = admin
        .reload_grids(as_actor("admin", pb::ReloadGridsRequest {}))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reloaded.grids as usize, grids.len());
    let status = admin
        .get_status(pb::GetStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status.grids as usize, grids.len());
    let scope = registry
        .get_scope(pb::GetScopeRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (scope.tier(), scope.org_prefix.as_str()),
        (Tier::Street, STREET_SCOPE)
    );
    cluster.stop().await;
}

async fn grpc_web_get_scope(addr: std::net::SocketAddr) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "POST /wangge.v1.RegistryService/GetScope HTTP/1.1\r\nHost: {addr}\r\n\
         Content-Type: application/grpc-web+proto\r\nX-Grpc-Web: 1\r\nContent-Length: 5\r\n\
         Authorization: Bearer {}\r\nConnection: close\r\n\r\n",
        wangge_tests::identity::token_for("observer")
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    stream.write_all(&[0, 0, 0, 0, 0]).await.unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut response))
        .await
        .unwrap()
        .unwrap();
    String::from_utf8_lossy(&response).into_owned()
}

#[tokio::test]
async fn a_tier_binary_serves_health_reflection_and_grpc_web_and_stops_on_sigterm() {
    wangge_tests::init_logs();
    let nats = NatsServer::start().await;
    let db = TestDb::seeded("street").await;
    let mut street = TierProcess::start(Tier::Street, STREET_SCOPE, &db.url, &nats.url()).await;
    let channel = street.channel().await;

    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    let status = health
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        status.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );

    // Every listed service is described, with every file it depends on, over both protocols, as
    // a client that describes everything (grpcurl describe, Postman) does.
    let listed = describe_everything_v1(channel.clone()).await;
    for expected in [
        "wangge.v1.CommandConsoleService",
        "wangge.v1.DepartmentService",
        "wangge.v1.CaseQueryService",
        "wangge.v1.RegistryService",
        "wangge.v1.AdminService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
    ] {
        assert!(
            listed.iter().any(|n| n == expected),
            "{expected} in {listed:?}"
        );
    }
    assert!(
        !listed.iter().any(|n| n == "wangge.v1.FieldAppService"),
        "the street does not serve the field app: {listed:?}"
    );
    // The older protocol too, which grpcurl before 1.8.8 speaks.
    let listed_alpha = describe_everything_v1alpha(channel).await;
    assert_eq!(listed_alpha, listed);

    let response = grpc_web_get_scope(street.addr).await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.contains("application/grpc-web"), "{response}");
    assert!(response.contains("grpc-status:0"), "{response}");
    assert!(response.contains("350205002"), "{response}");

    let exit = street.terminate(Duration::from_secs(15)).await;
    assert!(exit.success(), "graceful exit after SIGTERM: {exit:?}");
}

/// A function that lists the services over one reflection protocol, describes each listed service
/// (`file_containing_symbol`) and loads every file the answers depend on (`file_by_filename`),
/// failing on any error; returns the listed names.
macro_rules! describe_everything {
    ($name:ident, $protocol:ident) => {
        pub(crate) async fn $name(channel: wangge_tests::Channel) -> Vec<String> {
            use prost::Message as _;
            use tonic_reflection::pb::$protocol::{
                ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
                server_reflection_request::MessageRequest,
                server_reflection_response::MessageResponse,
            };
            let mut client = ServerReflectionClient::new(channel);
            let mut ask = async |request: MessageRequest| {
                let request = ServerReflectionRequest {
                    host: String::new(),
                    message_request: Some(request.clone()),
                };
                let mut responses = client
                    .server_reflection_info(futures::stream::iter([request]))
                    .await
                    .unwrap()
                    .into_inner();
                responses
                    .next()
                    .await
                    .unwrap()
                    .unwrap()
                    .message_response
                    .unwrap()
            };
            let MessageResponse::ListServicesResponse(list) =
                ask(MessageRequest::ListServices(String::new())).await
            else {
                panic!("no service list");
            };
            let mut names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
            names.sort();
            let mut wanted: Vec<MessageRequest> = names
                .iter()
                .map(|n| MessageRequest::FileContainingSymbol(n.clone()))
                .collect();
            let mut loaded = std::collections::BTreeSet::new();
            while let Some(request) = wanted.pop() {
                let MessageResponse::FileDescriptorResponse(files) = ask(request.clone()).await
                else {
                    panic!("{} {request:?}: no file descriptor", stringify!($protocol));
                };
                assert!(!files.file_descriptor_proto.is_empty(), "{request:?}");
                for bytes in files.file_descriptor_proto {
                    let file = prost_types::FileDescriptorProto::decode(bytes.as_slice()).unwrap();
                    loaded.insert(file.name().to_owned());
                    for dependency in file.dependency {
                        if !loaded.contains(&dependency) {
                            wanted.push(MessageRequest::FileByFilename(dependency));
                        }
                    }
                }
            }
            names
        }
    };
}

describe_everything!(describe_everything_v1, v1);
describe_everything!(describe_everything_v1alpha, v1alpha);

/// Runs a tier binary with `--dump-config`, the given flags and only the given environment (a
/// developer's own `WANGGE_*` must not leak in).
async fn dump_config(
    tier: Tier,
    args: &[&std::ffi::OsStr],
    env: &[(&str, &str)],
) -> std::process::Output {
    tokio::process::Command::new(binary(tier))
        .env_clear()
        .arg("--dump-config")
        .args(args)
        .envs(env.iter().copied())
        .output()
        .await
        .unwrap()
}

#[tokio::test]
async fn dump_config_layers_flags_over_environment_and_hides_secrets() {
    let output = dump_config(
        Tier::Village,
        &["--scope".as_ref(), "350205002006".as_ref()],
        &[
            (
                "WANGGE_DATABASE_URL",
                "postgres://wangge:s3cret@db.example:5432/village",
            ),
            ("WANGGE_SCOPE", "350205"),
            ("WANGGE_LOG__FORMAT", "json"),
            ("WANGGE_JETSTREAM_DOMAIN", "haicang"),
        ],
    )
    .await;
    assert!(output.status.success(), "{output:?}");
    let text = String::from_utf8(output.stdout).unwrap();
    assert!(text.contains("scope = \"350205002006\""), "{text}");
    assert!(text.contains("jetstream_domain = \"haicang\""), "{text}");
    assert!(
        text.contains("postgres://wangge:***@db.example:5432/village"),
        "{text}"
    );
    assert!(!text.contains("s3cret"), "{text}");
    assert!(text.contains("format = \"json\""), "{text}");

    let output = dump_config(Tier::Village, &["--scope".as_ref(), "35020".as_ref()], &[]).await;
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("scope"));

    // A file under the environment and the flags.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("street.toml");
    std::fs::write(
        &file,
        "scope = \"350205002\"\nnats_url = \"nats://hub.example:4222\"\n[log]\nfilter = \"debug\"\n",
    )
    .unwrap();
    let output = dump_config(
        Tier::Street,
        &["--config".as_ref(), file.as_os_str()],
        &[("WANGGE_LOG__FILTER", "warn")],
    )
    .await;
    assert!(output.status.success(), "{output:?}");
    let text = String::from_utf8(output.stdout).unwrap();
    assert!(text.contains("scope = \"350205002\""), "{text}");
    assert!(
        text.contains("nats_url = \"nats://hub.example:4222\""),
        "{text}"
    );
    assert!(
        text.contains("filter = \"warn\""),
        "the environment wins over the file: {text}"
    );

    // A scope from the environment alone, which looks like a number to the env parser.
    let output = dump_config(Tier::Village, &[], &[("WANGGE_SCOPE", "350205")]).await;
    assert!(output.status.success(), "{output:?}");
    assert!(String::from_utf8_lossy(&output.stdout).contains("scope = \"350205\""));
}

#[tokio::test]
async fn a_village_instance_serves_only_its_community() {
    // One binary, narrower scope: the village serves 霞阳社区 alone.
    let cluster = Cluster::start_with(["350205002006", STREET_SCOPE, "350205"]).await;
    let clients = cluster.clients().await;
    let case = report_case(&clients, GRID).await;
    clients.converged(&case.id, 1).await;

    let status = clients
        .field()
        .report_case(as_actor(GRID_WORKER, report(&client_id(), OTHER_GRID)))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().contains("scope 350205002006"),
        "{status:?}"
    );
    let grids = clients
        .registry(Tier::Village)
        .list_grids(pb::ListGridsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .grids;
    assert!(!grids.is_empty());
    assert!(grids.iter().all(|g| g.community_code == "350205002006"));
    cluster.stop().await;
}

#[tokio::test]
async fn a_tier_whose_database_hangs_still_reports_its_status_in_time_and_names_the_wait() {
    let cluster = Cluster::start().await;
    let pool = cluster.village.db.pool().await;
    // Another session holds the tables the status counts: every status query waits on the lock,
    // as on a database that hangs.
    let mut lock = pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE outbox, cases IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *lock)
        .await
        .unwrap();
    let mut admin =
        pb::admin_service_client::AdminServiceClient::new(cluster.village.channel().await);
    let started = std::time::Instant::now();
    // `wangge status` gives a tier 3 s: the status must come within that, whatever hangs.
    let status = tokio::time::timeout(
        Duration::from_secs(3),
        admin.get_status(as_actor("observer", pb::GetStatusRequest {})),
    )
    .await
    .expect("the status answers within wangge status's deadline")
    .unwrap()
    .into_inner();
    let took = started.elapsed();
    lock.rollback().await.unwrap();
    assert!(
        status
            .problems
            .iter()
            .any(|p| p.starts_with("database (outbox): no answer within")),
        "{took:?}: {:?}",
        status.problems
    );
    cluster.stop().await;
}
