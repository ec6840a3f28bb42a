//! Identity and authority from outside: every RPC of every wangge service, called as every role
//! from inside and from outside its scope, is allowed or refused as the table below says; every
//! RPC refuses a call without a valid token; an RPC missing from the table fails the test.

use std::collections::BTreeSet;

use prost::Message;
use tonic::transport::Channel;
use tonic::{Code, Status};
use wangge_proto as pb;
use wangge_tests::cluster::as_actor;
use wangge_tests::fixtures::*;
use wangge_tests::identity::{self, with_token};
use wangge_tests::raw::RawCodec;
use wangge_tests::{Cluster, TierClients};

/// The department the test case is dispatched to (新阳街道 城管执法中队).
const DEPARTMENT: &str = "350205002-cgzd";

/// A role as the table names it, with a persona inside the test case's scope (霞阳社区 第1网格,
/// 新阳街道, 海沧区) and one of the same role outside it (another street, or 思明区).
struct Role {
    name: &'static str,
    inside: &'static str,
    outside: &'static str,
}

const ROLES: [Role; 10] = [
    Role {
        name: "grid_worker",
        inside: "gw-350205002006001",
        outside: "gw-350205003001001",
    },
    Role {
        name: "community_staff",
        inside: "cs-350205002006",
        outside: "cs-350205003001",
    },
    Role {
        name: "street_operator",
        inside: "op-350205002000",
        outside: "op-350205003000",
    },
    Role {
        name: "duty_chief",
        inside: "dc-350205002000",
        outside: "dc-350205003000",
    },
    Role {
        name: "district_operator",
        inside: "op-350205000000",
        outside: "op-350203000000",
    },
    Role {
        name: "department_handler",
        inside: "dh-350205002-cgzd",
        outside: "dh-350205003-cgzd",
    },
    Role {
        name: "supervisor",
        inside: "sv-350205002000",
        outside: "sv-350205003000",
    },
    Role {
        name: "auditor",
        inside: "au-350205002000",
        outside: "au-350205003000",
    },
    Role {
        name: "admin",
        inside: "admin-350205000000",
        outside: "admin-350203000000",
    },
    Role {
        name: "leader",
        inside: "ld-350205002000",
        outside: "ld-350205003000",
    },
];

/// Readers of cases inside their scope (a handler reads the cases dispatched to them).
const READERS: &[&str] = &[
    "grid_worker",
    "community_staff",
    "street_operator",
    "duty_chief",
    "district_operator",
    "supervisor",
    "auditor",
    "leader",
];
const CASE_READERS: &[&str] = &[
    "grid_worker",
    "community_staff",
    "street_operator",
    "duty_chief",
    "district_operator",
    "department_handler",
    "supervisor",
    "auditor",
    "leader",
];
const CENTER: &[&str] = &["street_operator", "duty_chief"];
/// Who reads the evaluation figures (综合评价) of their scope.
const EVALUATORS: &[&str] = &[
    "street_operator",
    "duty_chief",
    "district_operator",
    "supervisor",
    "auditor",
    "leader",
];
/// Who decides a center's requests (void, return, a first standard extension; reopen, archive).
const APPROVERS: &[&str] = &["duty_chief", "leader"];

#[derive(Clone, Copy, PartialEq, Eq)]
enum Tier {
    Village,
    Street,
    District,
}

/// One RPC: where it is called, with what request, and who may call it.
struct Row {
    method: &'static str,
    tier: Tier,
    streaming: bool,
    body: Vec<u8>,
    /// The roles allowed from inside the scope (from outside, none).
    inside: &'static [&'static str],
    /// Reference data: allowed to every role from anywhere, whatever `inside` says.
    anywhere: bool,
}

fn row(method: &'static str, tier: Tier, body: impl Message, inside: &'static [&str]) -> Row {
    Row {
        method,
        tier,
        streaming: false,
        body: body.encode_to_vec(),
        inside,
        anywhere: false,
    }
}

fn streaming(mut row: Row) -> Row {
    row.streaming = true;
    row
}

/// Reference data, which every role reads from anywhere.
fn anywhere(mut row: Row) -> Row {
    row.anywhere = true;
    row
}

fn table(case_id: &str, other_case_id: &str) -> Vec<Row> {
    use Tier::*;
    let action = |note: &str| pb::CaseActionRequest {
        case_id: case_id.to_owned(),
        note: note.to_owned(),
        ..Default::default()
    };
    let department = |note: &str| pb::DepartmentActionRequest {
        case_id: case_id.to_owned(),
        department_code: DEPARTMENT.to_owned(),
        note: note.to_owned(),
        ..Default::default()
    };
    let case = || pb::GetCaseRequest {
        case_id: case_id.to_owned(),
    };
    let decision = || pb::DecisionRequest {
        case_id: case_id.to_owned(),
        approve: false,
        note: "理由不足".into(),
    };
    vec![
        // The department's steps first: the console rows below may move the case on.
        row(
            "/wangge.v1.DepartmentService/ListAssigned",
            Street,
            pb::ListAssignedRequest {
                department_code: DEPARTMENT.to_owned(),
                ..Default::default()
            },
            &["department_handler"],
        ),
        row(
            "/wangge.v1.CaseQueryService/GetCase",
            Street,
            case(),
            CASE_READERS,
        ),
        row(
            "/wangge.v1.CaseQueryService/ListCaseEvents",
            Street,
            pb::ListCaseEventsRequest {
                case_id: case_id.to_owned(),
            },
            CASE_READERS,
        ),
        row(
            "/wangge.v1.CaseQueryService/ListCases",
            Street,
            pb::ListCasesRequest {
                org_code: GRID.to_owned(),
                ..Default::default()
            },
            READERS,
        ),
        anywhere(row(
            "/wangge.v1.RegistryService/GetOrg",
            Street,
            pb::GetOrgRequest {
                code: "350205002006".into(),
            },
            &[],
        )),
        anywhere(row(
            "/wangge.v1.RegistryService/ListOrgs",
            Street,
            pb::ListOrgsRequest::default(),
            &[],
        )),
        anywhere(row(
            "/wangge.v1.RegistryService/ListGrids",
            Street,
            pb::ListGridsRequest::default(),
            &[],
        )),
        anywhere(row(
            "/wangge.v1.RegistryService/LocateGrid",
            Street,
            pb::LocateGridRequest {
                location: Some(point_in(GRID)),
            },
            &[],
        )),
        anywhere(row(
            "/wangge.v1.RegistryService/ListCategories",
            Street,
            pb::ListCategoriesRequest::default(),
            &[],
        )),
        anywhere(row(
            "/wangge.v1.RegistryService/ListDepartments",
            Street,
            pb::ListDepartmentsRequest::default(),
            &[],
        )),
        anywhere(row(
            "/wangge.v1.RegistryService/GetScope",
            Street,
            pb::GetScopeRequest {},
            &[],
        )),
        row(
            "/wangge.v1.RegistryService/ListWorkers",
            Street,
            pb::ListWorkersRequest {
                org_code: GRID.to_owned(),
            },
            READERS,
        ),
        row(
            "/wangge.v1.AdminService/GetStatus",
            Street,
            pb::GetStatusRequest {},
            &["admin"],
        ),
        row(
            "/wangge.v1.EvaluationService/Evaluate",
            Street,
            pb::EvaluateRequest {
                org_code: GRID.to_owned(),
                // 2025: a valid period in the past, so only the policy can refuse.
                from: Some(prost_types::Timestamp {
                    seconds: 1_735_689_600,
                    nanos: 0,
                }),
                to: Some(prost_types::Timestamp {
                    seconds: 1_767_139_200,
                    nanos: 0,
                }),
            },
            EVALUATORS,
        ),
        row(
            "/wangge.v1.AdminService/AdvanceClock",
            Street,
            pb::AdvanceClockRequest { seconds: 60 },
            &["admin"],
        ),
        row(
            "/wangge.v1.AdminService/ReloadGrids",
            Street,
            pb::ReloadGridsRequest {},
            &["admin"],
        ),
        streaming(row(
            "/wangge.v1.CommandConsoleService/WatchCases",
            Street,
            pb::WatchCasesRequest::default(),
            READERS,
        )),
        row(
            "/wangge.v1.CommandConsoleService/AcceptCase",
            Street,
            action(""),
            CENTER,
        ),
        row(
            "/wangge.v1.CommandConsoleService/RejectCase",
            Street,
            action("重复上报"),
            &["duty_chief"],
        ),
        row(
            "/wangge.v1.CommandConsoleService/DispatchCase",
            Street,
            pb::DispatchCaseRequest {
                case_id: case_id.to_owned(),
                department_code: DEPARTMENT.to_owned(),
                note: String::new(),
            },
            CENTER,
        ),
        // 交办 is the district center's: asked at the district, of the street's case (which the
        // state machine then refuses: the district does not hold it).
        row(
            "/wangge.v1.CommandConsoleService/AssignCase",
            District,
            action("交由街道办理"),
            &["district_operator"],
        ),
        row(
            "/wangge.v1.CommandConsoleService/RequestCheck",
            Street,
            action(""),
            CENTER,
        ),
        row(
            "/wangge.v1.CommandConsoleService/ReworkCase",
            Street,
            action(""),
            CENTER,
        ),
        row(
            "/wangge.v1.CommandConsoleService/CloseCase",
            Street,
            action(""),
            &["duty_chief"],
        ),
        row(
            "/wangge.v1.FieldAppService/ReportCase",
            Village,
            report(&client_id(), GRID),
            &["grid_worker"],
        ),
        row(
            "/wangge.v1.FieldAppService/ListTasks",
            Village,
            pb::ListTasksRequest {
                org_codes: vec![GRID.to_owned()],
            },
            &["grid_worker"],
        ),
        streaming(row(
            "/wangge.v1.FieldAppService/WatchTasks",
            Village,
            pb::ListTasksRequest {
                org_codes: vec![GRID.to_owned()],
            },
            &["grid_worker"],
        )),
        row(
            "/wangge.v1.FieldAppService/ConfirmCheck",
            Village,
            pb::ConfirmCheckRequest {
                case_id: case_id.to_owned(),
                passed: true,
                ..Default::default()
            },
            &["grid_worker"],
        ),
        row(
            "/wangge.v1.CommunityService/ApproveSelfHandled",
            Village,
            pb::ReviewRequest {
                case_id: case_id.to_owned(),
                note: String::new(),
            },
            &["community_staff"],
        ),
        row(
            "/wangge.v1.CommunityService/RejectSelfHandled",
            Village,
            pb::ReviewRequest {
                case_id: case_id.to_owned(),
                note: "需街道处置".into(),
            },
            &["community_staff"],
        ),
        row(
            "/wangge.v1.FieldAppService/ConfirmVerification",
            Village,
            pb::ConfirmVerificationRequest {
                case_id: case_id.to_owned(),
                genuine: true,
                ..Default::default()
            },
            &["grid_worker"],
        ),
        // The standard's further steps; in the case's state (dispatched) the allowed ones are
        // refused by the state machine, which the table tells apart from a denial.
        row(
            "/wangge.v1.CommandConsoleService/RequestVerification",
            Street,
            action(""),
            CENTER,
        ),
        row(
            "/wangge.v1.CommandConsoleService/RequestVoid",
            Street,
            action("误报"),
            CENTER,
        ),
        row(
            "/wangge.v1.CommandConsoleService/DecideVoid",
            Street,
            decision(),
            APPROVERS,
        ),
        row(
            "/wangge.v1.CommandConsoleService/DecideReturn",
            Street,
            decision(),
            APPROVERS,
        ),
        row(
            "/wangge.v1.CommandConsoleService/DecideDelay",
            Street,
            decision(),
            APPROVERS,
        ),
        row(
            "/wangge.v1.CommandConsoleService/DecideHang",
            Street,
            decision(),
            &["leader"],
        ),
        row(
            "/wangge.v1.CommandConsoleService/ResumeCase",
            Street,
            action(""),
            CENTER,
        ),
        row(
            "/wangge.v1.CommandConsoleService/ReopenCase",
            Street,
            action("问题复发"),
            APPROVERS,
        ),
        row(
            "/wangge.v1.CommandConsoleService/ArchiveCase",
            Street,
            action("备案"),
            APPROVERS,
        ),
        row(
            "/wangge.v1.CommandConsoleService/MergeCase",
            Street,
            pb::MergeCaseRequest {
                case_id: case_id.to_owned(),
                into_case_id: other_case_id.to_owned(),
                note: String::new(),
            },
            CENTER,
        ),
        row(
            "/wangge.v1.CommandConsoleService/SuperviseCase",
            Street,
            pb::SuperviseCaseRequest {
                case_id: case_id.to_owned(),
                level: pb::SupervisionLevel::Yellow as i32,
                note: "请加快处置".into(),
            },
            &["duty_chief", "supervisor", "leader"],
        ),
        row(
            "/wangge.v1.DepartmentService/RequestDelay",
            Street,
            pb::DelayRequest {
                case_id: case_id.to_owned(),
                department_code: DEPARTMENT.to_owned(),
                extension: Some(pb::TimeLimit {
                    amount: 1,
                    unit: pb::TimeUnit::WorkingDays as i32,
                }),
                reason: "材料未到".into(),
            },
            &["department_handler"],
        ),
        row(
            "/wangge.v1.DepartmentService/RequestHang",
            Street,
            department("季节性施工"),
            &["department_handler"],
        ),
        // Last: these move the case on (to in progress, handled, and up to the district).
        row(
            "/wangge.v1.DepartmentService/SignCase",
            Street,
            department(""),
            &["department_handler"],
        ),
        row(
            "/wangge.v1.DepartmentService/ReportHandled",
            Street,
            department("已处置"),
            &["department_handler"],
        ),
        row(
            "/wangge.v1.DepartmentService/ReturnCase",
            Street,
            department("非本部门职责"),
            &["department_handler"],
        ),
        row(
            "/wangge.v1.CommandConsoleService/EscalateCase",
            Street,
            action("需区级协调"),
            CENTER,
        ),
    ]
}

/// Calls `row` on `channel` with `token` (none: no authorization metadata at all).
async fn call(channel: &Channel, row: &Row, token: Option<&str>) -> Result<(), Status> {
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready()
        .await
        .map_err(|e| Status::unavailable(e.to_string()))?;
    let request = match token {
        Some(token) => with_token(token, row.body.clone()),
        None => tonic::Request::new(row.body.clone()),
    };
    let path = tonic::codegen::http::uri::PathAndQuery::from_static(row.method);
    if row.streaming {
        grpc.server_streaming(request, path, RawCodec)
            .await
            .map(drop)
    } else {
        grpc.unary(request, path, RawCodec).await.map(drop)
    }
}

/// Every method of every service of the wangge API, from its descriptors.
fn every_rpc() -> BTreeSet<String> {
    let set = prost_types::FileDescriptorSet::decode(wangge_proto::FILE_DESCRIPTOR_SET).unwrap();
    let mut methods = BTreeSet::new();
    for file in set.file {
        let package = file.package().to_owned();
        for service in &file.service {
            for method in &service.method {
                methods.insert(format!("/{package}.{}/{}", service.name(), method.name()));
            }
        }
    }
    methods
}

#[tokio::test]
async fn every_rpc_is_allowed_or_refused_by_role_and_scope_as_the_table_says() {
    let cluster = Cluster::start().await;
    let clients: TierClients = cluster.clients().await;
    // The case every row is about: in 霞阳社区 第1网格, accepted and dispatched to 城管中队.
    let case = report_case(&clients, GRID).await;
    clients.converged(&case.id, 1).await;
    let mut console = clients.street_console();
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
    console
        .dispatch_case(as_actor(
            STREET_OPERATOR,
            pb::DispatchCaseRequest {
                case_id: case.id.clone(),
                department_code: DEPARTMENT.to_owned(),
                note: String::new(),
            },
        ))
        .await
        .unwrap();
    clients.converged(&case.id, 3).await;

    // A second case in the same grid, for the merge row.
    let other = report_case(&clients, GRID).await;
    clients.converged(&other.id, 1).await;
    let table = table(&case.id, &other.id);
    let listed: BTreeSet<String> = table.iter().map(|r| r.method.to_owned()).collect();
    assert_eq!(
        listed.len(),
        table.len(),
        "an RPC has two rows in the table"
    );
    assert_eq!(
        every_rpc(),
        listed,
        "every RPC of the API needs a row in the authority table (and only those)"
    );

    let raw = |addr: std::net::SocketAddr| {
        Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect_lazy()
    };
    let (village, street, district) = (
        raw(cluster.village.addr),
        raw(cluster.street.addr),
        raw(cluster.district.addr),
    );
    let expired = identity::sign(&wangge_auth::Claims {
        exp: identity::now() - 120,
        ..identity::claims_for("op-350205002000")
    });
    let mut wrong = Vec::new();
    for row in &table {
        let channel = match row.tier {
            Tier::Village => &village,
            Tier::Street => &street,
            Tier::District => &district,
        };
        // Nobody gets in without a valid token, whatever the call.
        for (token, what) in [(None, "no token"), (Some(expired.as_str()), "expired")] {
            let answer = call(channel, row, token).await;
            if !matches!(&answer, Err(s) if s.code() == Code::Unauthenticated) {
                wrong.push(format!("{} with {what}: {answer:?}", row.method));
            }
        }
        for role in &ROLES {
            for (persona, inside) in [(role.inside, true), (role.outside, false)] {
                let allowed = row.anywhere || (inside && row.inside.contains(&role.name));
                let answer = call(channel, row, Some(&identity::token_for(persona))).await;
                let ok = match &answer {
                    Err(status) if status.code() == Code::PermissionDenied => !allowed,
                    Err(status) if status.code() == Code::Unauthenticated => false,
                    // Allowed: the policy let it through (the step itself may still be refused
                    // by the case's state, or find nothing).
                    _ => allowed,
                };
                if !ok {
                    let expected = if allowed { "allowed" } else { "denied" };
                    wrong.push(format!(
                        "{} as {persona} ({}, {}): expected {expected}, got {answer:?}",
                        row.method,
                        role.name,
                        if inside { "inside" } else { "outside" },
                    ));
                }
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "{} wrong:\n{}",
        wrong.len(),
        wrong.join("\n")
    );

    // The history names the verified subjects, in the roles that granted their steps.
    let events = clients
        .cases(pb::Tier::Street)
        .list_case_events(pb::ListCaseEventsRequest {
            case_id: case.id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .events;
    let actors: Vec<(String, pb::Role)> = events
        .iter()
        .map(|e| {
            let actor = e.actor.clone().unwrap();
            let role = actor.role();
            (actor.id, role)
        })
        .collect();
    assert_eq!(
        actors[..3],
        [
            (GRID_WORKER.to_owned(), pb::Role::GridWorker),
            (STREET_OPERATOR.to_owned(), pb::Role::StreetOperator),
            (STREET_OPERATOR.to_owned(), pb::Role::StreetOperator),
        ]
    );
    assert!(
        actors
            .iter()
            .any(|a| *a == ("dh-350205002-cgzd".to_owned(), pb::Role::DepartmentHandler)),
        "{actors:?}"
    );
    cluster.stop().await;
}
