//! The guided demo: one case from a grid worker's report to its close, across the three tiers.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures::StreamExt;
use tonic::transport::Channel;
use wangge_domain::case::kind_name;
use wangge_proto as pb;
use wangge_proto::{CaseState, Tier};

use crate::credentials::Credentials;

/// Who reads back what the tiers hold (an auditor of the demo district).
const OBSERVER: &str = "observer";

#[derive(Debug, clap::Args)]
pub struct Args {
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    village: String,
    #[arg(long, default_value = "http://127.0.0.1:50052")]
    street: String,
    #[arg(long, default_value = "http://127.0.0.1:50053")]
    district: String,
    /// The seeds folder, to find a point inside the demo grid.
    #[arg(long, default_value = "seeds")]
    seeds: PathBuf,
    /// The grid to report in.
    #[arg(long, default_value = "350205002006001")]
    grid: String,
    #[command(flatten)]
    credentials: Credentials,
    #[command(flatten)]
    tls: crate::tls::Tls,
}

async fn connect(
    tls: &crate::tls::Tls,
    url: &str,
    credentials: &Credentials,
) -> anyhow::Result<Channel> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let endpoint = tls.endpoint(url)?;
    loop {
        match endpoint.connect().await {
            Ok(channel) => {
                let mut health =
                    pb::registry_service_client::RegistryServiceClient::new(channel.clone());
                if health
                    .get_scope(credentials.request(OBSERVER, pb::GetScopeRequest {})?)
                    .await
                    .is_ok()
                {
                    return Ok(channel);
                }
            }
            Err(e) if Instant::now() > deadline => {
                return Err(e).context(format!("cannot reach {url}"));
            }
            Err(_) => {}
        }
        if Instant::now() > deadline {
            bail!("{url} does not answer");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn step(n: u32, text: String) {
    println!("  {n:>2}. {text}");
}

async fn history(
    channel: &Channel,
    credentials: &Credentials,
    case_id: &str,
) -> anyhow::Result<Vec<pb::CaseEvent>> {
    let mut client = pb::case_query_service_client::CaseQueryServiceClient::new(channel.clone());
    let request = pb::ListCaseEventsRequest {
        case_id: case_id.to_owned(),
    };
    match client
        .list_case_events(credentials.request(OBSERVER, request)?)
        .await
    {
        Ok(response) => Ok(response.into_inner().events),
        Err(status) if status.code() == tonic::Code::NotFound => Ok(Vec::new()),
        Err(status) => Err(status.into()),
    }
}

/// Waits until the three tiers hold the same `version` events.
async fn converge(
    channels: &[(&str, Channel)],
    credentials: &Credentials,
    case: &pb::Case,
) -> anyhow::Result<Vec<pb::CaseEvent>> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let mut histories = Vec::new();
        for (_, channel) in channels {
            histories.push(history(channel, credentials, &case.id).await?);
        }
        if histories
            .iter()
            .all(|h| h.len() as u64 == case.version && *h == histories[0])
        {
            return Ok(histories.swap_remove(0));
        }
        if Instant::now() > deadline {
            bail!(
                "the tiers did not converge on case {} at version {}",
                case.id,
                case.version
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn state(case: &pb::Case) -> &'static str {
    case.state().as_str_name().trim_start_matches("CASE_STATE_")
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let grids = wangge_seed::load_grids(&args.seeds).context("reading the seed grids")?;
    let grid = grids
        .iter()
        .find(|g| g.code.to_string() == args.grid)
        .context("grid not in the seeds")?;
    let (longitude, latitude) = wangge_seed::interior_point(grid);
    let credentials = &args.credentials;
    let village = connect(&args.tls, &args.village, credentials).await?;
    let street = connect(&args.tls, &args.street, credentials).await?;
    let district = connect(&args.tls, &args.district, credentials).await?;
    let tiers = [
        ("village", village.clone()),
        ("street", street.clone()),
        ("district", district.clone()),
    ];

    let community = &args.grid[..12];
    let street_code = format!("{}000", &args.grid[..9]);
    let worker = format!("gw-{}", args.grid);
    let operator = format!("op-{street_code}");
    let chief = format!("dc-{street_code}");

    let mut console =
        pb::command_console_service_client::CommandConsoleServiceClient::new(street.clone());
    let mut watch = console
        .watch_cases(credentials.request(&operator, pb::WatchCasesRequest::default())?)
        .await?
        .into_inner();
    let mut field = pb::field_app_service_client::FieldAppServiceClient::new(village.clone());

    println!("\n  The case loop, through the gRPC APIs of the three tiers:\n");
    let started = Instant::now();
    let report = pb::ReportCaseRequest {
        client_id: uuid::Uuid::now_v7().to_string(),
        category_code: "szcg-01-01".into(),
        description: "路边暴露垃圾一堆（演示）".into(),
        location: Some(pb::GeoPoint {
            longitude,
            latitude,
        }),
        ..Default::default()
    };
    let case = field
        .report_case(credentials.request(&worker, report)?)
        .await?
        .into_inner();
    step(
        1,
        format!(
            "网格员 {worker} reports 暴露垃圾 at ({longitude:.5}, {latitude:.5}) -> case {} in grid {}, community {community}",
            case.number, case.grid_code
        ),
    );
    let seen = tokio::time::timeout(Duration::from_secs(5), watch.next())
        .await
        .context("street watch")?;
    if seen.is_some() {
        step(
            2,
            format!(
                "the street console's live watch shows it after {} ms",
                started.elapsed().as_millis()
            ),
        );
    }
    converge(&tiers, credentials, &case).await?;

    let action = |case: &pb::Case, note: &str| pb::CaseActionRequest {
        case_id: case.id.clone(),
        note: note.to_owned(),
        ..Default::default()
    };
    let case = console
        .accept_case(credentials.request(&operator, action(&case, "属实，立案"))?)
        .await?
        .into_inner();
    step(
        3,
        format!("the street center accepts it (立案): {}", state(&case)),
    );

    let mut registry = pb::registry_service_client::RegistryServiceClient::new(street.clone());
    let departments = registry
        .list_departments(credentials.request(
            &operator,
            pb::ListDepartmentsRequest {
                org_code: street_code.clone(),
            },
        )?)
        .await?
        .into_inner()
        .departments;
    let department = departments
        .iter()
        .find(|d| d.org_code == street_code && d.kind == "城管")
        .context("no 城管 department in the street")?;
    let dispatch = pb::DispatchCaseRequest {
        case_id: case.id.clone(),
        department_code: department.code.clone(),
        note: "请于4个工作小时内清理".into(),
    };
    let case = console
        .dispatch_case(credentials.request(&operator, dispatch)?)
        .await?
        .into_inner();
    step(
        4,
        format!(
            "and dispatches it to {} {} (派遣): {}",
            department.code,
            department.name,
            state(&case)
        ),
    );

    let handler = format!("dh-{}", department.code);
    let mut departments =
        pb::department_service_client::DepartmentServiceClient::new(street.clone());
    let act = |note: &str| pb::DepartmentActionRequest {
        case_id: case.id.clone(),
        department_code: department.code.clone(),
        note: note.to_owned(),
        ..Default::default()
    };
    let signed = departments
        .sign_case(credentials.request(&handler, act(""))?)
        .await?
        .into_inner();
    step(
        5,
        format!("the department signs for it (签收): {}", state(&signed)),
    );
    let case = departments
        .report_handled(credentials.request(&handler, act("已清运"))?)
        .await?
        .into_inner();
    step(
        6,
        format!("handles it and reports back (处理反馈): {}", state(&case)),
    );

    let case = console
        .request_check(credentials.request(&operator, action(&case, "请现场核查"))?)
        .await?
        .into_inner();
    step(
        7,
        format!(
            "the street asks the community for an on-site check (核查): {}, held by the village",
            state(&case)
        ),
    );
    converge(&tiers, credentials, &case).await?;
    let tasks = field
        .list_tasks(credentials.request(
            &worker,
            pb::ListTasksRequest {
                org_codes: vec![args.grid.clone()],
            },
        )?)
        .await?
        .into_inner();
    let confirm = pb::ConfirmCheckRequest {
        case_id: case.id.clone(),
        passed: true,
        note: "现场已清理".into(),
        ..Default::default()
    };
    let case = field
        .confirm_check(credentials.request(&worker, confirm)?)
        .await?
        .into_inner();
    step(
        8,
        format!(
            "the grid worker finds it among {} task(s) and confirms on site",
            tasks.cases.len()
        ),
    );
    converge(&tiers, credentials, &case).await?;
    let case = console
        .close_case(credentials.request(&chief, action(&case, "结案"))?)
        .await?
        .into_inner();
    if case.state() != CaseState::Closed {
        bail!("the case did not close");
    }
    step(
        9,
        format!("the duty chief closes it (结案): {}", state(&case)),
    );

    let history = converge(&tiers, credentials, &case).await?;
    println!(
        "\n  Its history, identical at the village, street and district tiers ({} events):\n",
        history.len()
    );
    let china = chrono::FixedOffset::east_opt(8 * 3600).context("UTC+8")?;
    for event in &history {
        let actor = event.actor.clone().unwrap_or_default();
        let at = event
            .at
            .and_then(|t| chrono::DateTime::from_timestamp(t.seconds, t.nanos.max(0) as u32))
            .map(|t| t.with_timezone(&china).format("%H:%M:%S%.3f").to_string())
            .unwrap_or_default();
        let tier = match event.tier() {
            Tier::Village => "village",
            Tier::Street => "street",
            Tier::District => "district",
            Tier::Unspecified => "?",
        };
        let kind = event.kind.as_ref().map(kind_name).unwrap_or("?");
        println!(
            "    #{} {at} {tier:<8} {kind:<16} {:<26} {:<16} {}",
            event.seq,
            actor.id,
            event
                .state_after()
                .as_str_name()
                .trim_start_matches("CASE_STATE_"),
            event.note
        );
    }
    clock(
        &args,
        &tiers,
        &worker,
        &operator,
        &chief,
        department,
        (longitude, latitude),
    )
    .await?;
    println!("\n  Done in {} ms.", started.elapsed().as_millis());
    Ok(())
}

/// Who moves the tiers' virtual clocks.
const ADMIN: &str = "admin";
/// The center's leader persona of a street.
fn leader_of(street_code: &str) -> String {
    format!("ld-{street_code}")
}

/// Moves every tier's clock forward by `by`; false when the tiers run on the machine's clock.
async fn advance(
    tiers: &[(&str, Channel)],
    credentials: &Credentials,
    by: chrono::Duration,
) -> anyhow::Result<bool> {
    for (name, channel) in tiers {
        let mut admin = pb::admin_service_client::AdminServiceClient::new(channel.clone());
        let request = pb::AdvanceClockRequest {
            seconds: by.num_seconds(),
        };
        match admin
            .advance_clock(credentials.request(ADMIN, request)?)
            .await
        {
            Ok(_) => {}
            Err(status) if status.code() == tonic::Code::FailedPrecondition => return Ok(false),
            Err(status) => return Err(anyhow::Error::from(status).context(format!("{name} clock"))),
        }
    }
    Ok(true)
}

/// Waits until the street holds `count` automatic supervisions of `case`; returns the last.
async fn automatic_supervision(
    street: &Channel,
    credentials: &Credentials,
    case: &pb::Case,
    count: usize,
) -> anyhow::Result<pb::CaseEvent> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let raised: Vec<pb::CaseEvent> = history(street, credentials, &case.id)
            .await?
            .into_iter()
            .filter(|e| matches!(&e.kind, Some(pb::case_event::Kind::Supervised(s)) if s.automatic))
            .collect();
        if raised.len() >= count {
            return raised.last().cloned().context("a supervision");
        }
        if Instant::now() > deadline {
            bail!(
                "no automatic supervision of case {} within 20 s",
                case.number
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// How the current stage's clock of a case stands, in words.
fn standing(case: &pb::Case) -> String {
    let Some(clock) = case.clocks.as_ref().and_then(|c| c.stage) else {
        return "no stage clock".into();
    };
    let limit = clock.limit.unwrap_or_default();
    let unit = match limit.unit() {
        pb::TimeUnit::Minutes => "min",
        pb::TimeUnit::WorkingMinutes => "working min",
        pb::TimeUnit::WorkingHours => "working h",
        pb::TimeUnit::WorkingDays => "working days",
        pb::TimeUnit::Unspecified => "?",
    };
    let left = clock.left_seconds;
    let left = if left >= 0 {
        format!("{}h{:02}m left", left / 3600, (left % 3600) / 60)
    } else {
        format!("{}h{:02}m overdue", -left / 3600, (-left % 3600) / 60)
    };
    let this_round = case
        .extensions
        .len()
        .saturating_sub(case.round_extensions_from as usize);
    let extended = match this_round {
        0 => String::new(),
        1 => " + 1 extension".into(),
        n => format!(" + {n} extensions"),
    };
    format!(
        "{} stage, limit {} {unit}{extended}, {:.1} % used, {left}, light {}",
        clock
            .stage()
            .as_str_name()
            .trim_start_matches("STAGE_")
            .to_lowercase(),
        limit.amount,
        f64::from(clock.used_permille) / 10.0,
        clock.light().as_str_name().trim_start_matches("LIGHT_"),
    )
}

async fn get_case(
    channel: &Channel,
    credentials: &Credentials,
    case: &pb::Case,
) -> anyhow::Result<pb::Case> {
    let mut client = pb::case_query_service_client::CaseQueryServiceClient::new(channel.clone());
    let request = pb::GetCaseRequest {
        case_id: case.id.clone(),
    };
    Ok(client
        .get_case(credentials.request(OBSERVER, request)?)
        .await?
        .into_inner())
}

/// The command clock, on the tiers' virtual time: a report left unfiled goes yellow, then red,
/// each with its automatic 督办; the department then asks for more time and the duty chief grants it.
async fn clock(
    args: &Args,
    tiers: &[(&str, Channel)],
    worker: &str,
    operator: &str,
    chief: &str,
    department: &pb::Department,
    (longitude, latitude): (f64, f64),
) -> anyhow::Result<()> {
    let credentials = &args.credentials;
    let (village, street) = (&tiers[0].1, &tiers[1].1);
    println!("\n  The command clock (时限, 督办), on virtual time the demo moves forward:\n");
    let mut field = pb::field_app_service_client::FieldAppServiceClient::new(village.clone());
    let report = pb::ReportCaseRequest {
        client_id: uuid::Uuid::now_v7().to_string(),
        category_code: "szcg-01-01".into(),
        description: "又一处暴露垃圾（演示：受理超时）".into(),
        location: Some(pb::GeoPoint {
            longitude,
            latitude,
        }),
        ..Default::default()
    };
    let case = field
        .report_case(credentials.request(worker, report)?)
        .await?
        .into_inner();
    step(
        10,
        format!("another report, case {}: {}", case.number, standing(&case)),
    );
    converge(tiers, credentials, &case).await?;
    if !advance(tiers, credentials, chrono::Duration::minutes(17)).await? {
        println!(
            "      (skipped: the tiers run on the machine's clock; deploy/up starts them with \
             clock.virtual_time)"
        );
        return Ok(());
    }
    let yellow = automatic_supervision(street, credentials, &case, 1).await?;
    let case = get_case(street, credentials, &case).await?;
    step(
        11,
        format!(
            "17 minutes later, still not filed: {}; the street raised 督办 #{} ({})",
            standing(&case),
            yellow.seq,
            yellow.note
        ),
    );
    advance(tiers, credentials, chrono::Duration::minutes(4)).await?;
    let red = automatic_supervision(street, credentials, &case, 2).await?;
    let case = get_case(street, credentials, &case).await?;
    step(
        12,
        format!(
            "4 minutes more: {}; red 督办 #{} ({})",
            standing(&case),
            red.seq,
            red.note
        ),
    );

    let mut console =
        pb::command_console_service_client::CommandConsoleServiceClient::new(street.clone());
    let action = pb::CaseActionRequest {
        case_id: case.id.clone(),
        note: "迟到的立案".into(),
        ..Default::default()
    };
    console
        .accept_case(credentials.request(operator, action)?)
        .await?;
    let dispatch = pb::DispatchCaseRequest {
        case_id: case.id.clone(),
        department_code: department.code.clone(),
        note: String::new(),
    };
    console
        .dispatch_case(credentials.request(operator, dispatch)?)
        .await?;
    let handler = format!("dh-{}", department.code);
    let mut departments =
        pb::department_service_client::DepartmentServiceClient::new(street.clone());
    let sign = pb::DepartmentActionRequest {
        case_id: case.id.clone(),
        department_code: department.code.clone(),
        ..Default::default()
    };
    let signed = departments
        .sign_case(credentials.request(&handler, sign)?)
        .await?
        .into_inner();
    step(
        13,
        format!("filed, dispatched and signed for: {}", standing(&signed)),
    );
    let delay = pb::DelayRequest {
        case_id: case.id.clone(),
        department_code: department.code.clone(),
        extension: Some(pb::TimeLimit {
            amount: 4,
            unit: pb::TimeUnit::WorkingHours as i32,
        }),
        reason: "清运车辆故障".into(),
    };
    departments
        .request_delay(credentials.request(&handler, delay)?)
        .await?;
    let decision = pb::DecisionRequest {
        case_id: case.id.clone(),
        approve: true,
        note: "同意延期一次".into(),
    };
    let extended = console
        .decide_delay(credentials.request(chief, decision)?)
        .await?
        .into_inner();
    step(
        14,
        format!(
            "the department asks for 4 more working hours (延期) and the duty chief grants them: {}",
            standing(&extended)
        ),
    );
    let street_code = format!("{}000", &args.grid[..9]);
    let hang = pb::DepartmentActionRequest {
        case_id: case.id.clone(),
        department_code: department.code.clone(),
        note: "需等待环卫车辆维修".into(),
        ..Default::default()
    };
    departments
        .request_hang(credentials.request(&handler, hang)?)
        .await?;
    let decision = pb::DecisionRequest {
        case_id: case.id.clone(),
        approve: true,
        note: String::new(),
    };
    let hung = console
        .decide_hang(credentials.request(&leader_of(&street_code), decision)?)
        .await?
        .into_inner();
    advance(tiers, credentials, chrono::Duration::days(3)).await?;
    let still = get_case(street, credentials, &hung).await?;
    step(
        15,
        format!(
            "挂账 approved by the center's leader; three days later the clock has not moved: {}",
            standing(&still)
        ),
    );
    converge(tiers, credentials, &still).await?;

    // 综合评价 of the street, from this morning to the tiers' (virtual) now.
    let mut evaluation =
        pb::evaluation_service_client::EvaluationServiceClient::new(street.clone());
    let later = prost_types::Timestamp {
        seconds: chrono::Utc::now().timestamp() + 5 * 24 * 3600,
        nanos: 0,
    };
    let request = pb::EvaluateRequest {
        org_code: street_code.clone(),
        from: Some(crate::eval::start_of_today()?),
        to: Some(later),
    };
    let response = evaluation
        .evaluate(credentials.request(OBSERVER, request)?)
        .await
        .context("evaluation")?
        .into_inner();
    step(
        16,
        "the street's evaluation (综合评价) of today, as `wangge eval` prints it (or --csv for Excel):"
            .into(),
    );
    println!();
    for line in crate::eval::as_text(&response).lines() {
        println!("      {line}");
    }
    Ok(())
}
