//! The scale mode (`wangge bench --scale`): does the cost of a call stay flat in the size of the
//! history? A district holds millions of cases after a few years; every call of the console, the
//! field app and `GetStatus`, and the first message of a watch, should take at most twice as long
//! with a million cases as with a thousand.
//!
//! The run loads a synthetic history (`history`) of `--scale-small` cases into a database of its
//! own, copies it into the three tiers' databases (every tier keeps every case of its scope, and
//! here all three serve the district), starts a fresh nats-server and the three release tiers on
//! them, waits until they have settled (a reconciliation and a supervision scan done, nothing in
//! flight), and times each call from outside over gRPC, one at a time, warm. Then it stops the
//! tiers, grows the history to `--scale-cases` (the older years of the same timeline), copies it
//! again and times the same calls. The table shows each call at both sizes and the ratio of the
//! medians against the target; nothing asserts on it.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::json;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::Channel;
use wangge_auth::SigningKey;
use wangge_proto as pb;

use crate::Args;
use crate::history::{self, Loaded, Registry, Timeline};
use crate::load::{self, authorized, status};
use crate::phases::{self, World, phase};
use crate::report::{Comparison, Dist, Report};

type Token = MetadataValue<Ascii>;

/// Untimed calls of each kind before the timed ones.
const WARM: usize = 5;
/// The most a call at the large size may take, as a multiple of its time at the small size.
const TARGET: f64 = 2.0;
/// How long one kind of call is timed at most, per size; it keeps at least `MIN_SAMPLES`. A
/// call that has lost its flatness can take seconds: a few of them show it.
const BUDGET: Duration = Duration::from_secs(60);
const MIN_SAMPLES: usize = 5;
/// How long the untimed calls of one kind may take at most.
const WARM_BUDGET: Duration = Duration::from_secs(10);
/// How long one call, or the first message of a watch, may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the tiers may take to settle after a start.
const SETTLE_WITHIN: Duration = Duration::from_secs(180);
/// The district's command center.
const DISTRICT_CENTER: &str = "350205000000";
/// A page of the field app's lists: what a phone shows at once.
const FIELD_PAGE: u32 = 20;
/// The small history holds every older case changed this long before the run: the evaluations
/// look at the last 24 h, and the large history is timed minutes after the run began.
const WORKING_WINDOW: Duration = Duration::from_secs(25 * 3600);

/// The states further work follows: a console's 待办.
const OPEN_STATES: [pb::CaseState; 14] = [
    pb::CaseState::Reported,
    pb::CaseState::Verifying,
    pb::CaseState::Accepted,
    pb::CaseState::Dispatched,
    pb::CaseState::InProgress,
    pb::CaseState::Handled,
    pb::CaseState::Checking,
    pb::CaseState::Hung,
    pb::CaseState::SelfHandled,
    pb::CaseState::Escalated,
    pb::CaseState::ReturnRequested,
    pb::CaseState::DelayRequested,
    pb::CaseState::HangRequested,
    pb::CaseState::VoidRequested,
];

/// The sizes and the calls of a scale run.
#[derive(Debug, Clone)]
pub(crate) struct Sizes {
    pub small: usize,
    pub large: usize,
    pub calls: usize,
    pub span: Duration,
}

impl Sizes {
    pub fn of(args: &Args) -> anyhow::Result<Sizes> {
        let small = usize::try_from(args.scale_small)?;
        let large = usize::try_from(args.scale_cases)?;
        anyhow::ensure!(small >= 100, "--scale-small must be at least 100 cases");
        anyhow::ensure!(
            large > small,
            "--scale-cases ({large}) must be larger than --scale-small ({small})"
        );
        anyhow::ensure!(
            args.scale_years > 0.0 && args.scale_years <= 20.0,
            "--scale-years must lie between 0 and 20"
        );
        Ok(Sizes {
            small,
            large,
            calls: args.scale_calls.max(MIN_SAMPLES),
            span: Duration::from_secs_f64(args.scale_years * 365.25 * 86_400.0),
        })
    }
}

/// A count for people: 1k, 20k, 1M, 1.5M.
pub(crate) fn human(n: usize) -> String {
    let (value, unit) = if n >= 1_000_000 {
        (n as f64 / 1e6, "M")
    } else if n >= 1_000 {
        (n as f64 / 1e3, "k")
    } else {
        (n as f64, "")
    };
    if value.fract() == 0.0 {
        format!("{value:.0}{unit}")
    } else {
        format!("{value:.1}{unit}")
    }
}

/// One kind of call timed at one size.
#[derive(Debug, Clone)]
struct Timed {
    key: String,
    label: String,
    took: Vec<Duration>,
    /// Items per answer, on average.
    items: f64,
}

/// The calls timed at one size, and those that failed.
#[derive(Debug, Default)]
struct Measured {
    timed: Vec<Timed>,
    failed: Vec<String>,
}

impl Measured {
    fn add(&mut self, key: &str, label: &str, outcome: anyhow::Result<(Vec<Duration>, f64)>) {
        match outcome {
            Ok((took, items)) => self.timed.push(Timed {
                key: key.to_owned(),
                label: label.to_owned(),
                took,
                items,
            }),
            Err(error) => self.failed.push(format!("{label}: {error:#}")),
        }
    }
}

/// Every phase of the scale mode in order; figures go into `report` as they are measured.
pub(crate) async fn all(args: &Args, world: &mut World, report: &mut Report) -> anyhow::Result<()> {
    let sizes = Sizes::of(args)?;
    let (history_db, key, public_key) = phase!(
        report,
        "set up: the history's database (seeded), keys",
        async {
            let history = phases::seeded(args, world, report, "history").await?;
            let (key, public_key) = phases::keys(world)?;
            Ok::<_, anyhow::Error>((history, key, public_key))
        }
    )?;
    let bin_dir = phases::bin_dir(args)?;
    report.meta("bin_dir", json!(bin_dir.display().to_string()));

    // Every event of the history lies before the run began.
    let anchor = chrono::Utc::now() - chrono::Duration::seconds(1);
    let (registry, timeline) = phase!(
        report,
        format!(
            "the timeline: {} reports over {:.1} years",
            sizes.large,
            sizes.span.as_secs_f64() / (365.25 * 86_400.0)
        ),
        async {
            let pool = wangge_store::connect(world.databases.options(&history_db), 2)
                .await
                .context("cannot connect to the history's database")?;
            let registry = Registry::load(&pool, &args.seeds).await;
            pool.close().await;
            let registry = Arc::new(registry?);
            let timeline = {
                let (registry, sizes) = (registry.clone(), sizes.clone());
                tokio::task::spawn_blocking(move || {
                    Timeline::new(&registry, sizes.large, sizes.span, anchor)
                })
                .await
                .context("the timeline panicked")?
            };
            Ok::<_, anyhow::Error>((registry, Arc::new(timeline)))
        }
    )?;
    report.meta(
        "history",
        json!({
            "anchor": timeline.anchor().to_rfc3339(),
            "grids": registry.grids().count(),
        }),
    );

    let total = timeline.len();
    // The small history is the large one's newest cases and its working set: what is still open
    // at the end and what changed in the last day (the evaluations' window). The two sizes then
    // hold the same open work and the same last day, and differ only by the closed, quiet years:
    // the growth a district sees, which the calls must not feel. (The newest cases alone would
    // make the large history's answers bigger: its older open cases, its cases closed today.)
    let newest = total - sizes.small..total;
    let active = phase!(
        report,
        "the working set: the older cases open at the end or changed in its last 25 h",
        {
            let (registry, timeline) = (registry.clone(), timeline.clone());
            let older = 0..newest.start;
            async move {
                tokio::task::spawn_blocking(move || {
                    history::working_set(&registry, &timeline, older, WORKING_WINDOW)
                })
                .await
                .context("the working set's builder panicked")?
            }
        }
    )?;
    let small: Vec<usize> = active.iter().copied().chain(newest.clone()).collect();
    let rest: Vec<usize> = {
        let active: HashSet<usize> = active.iter().copied().collect();
        (0..newest.start).filter(|n| !active.contains(n)).collect()
    };
    report.meta(
        "small_history",
        json!({ "newest": sizes.small, "open_or_changed_in_the_last_25h": active.len() }),
    );
    let steps = [
        (small.len(), small.clone(), small),
        (total, rest, (0..total).collect()),
    ];
    let mut plan: Option<Plan> = None;
    let mut results: Vec<(usize, Measured)> = Vec::new();
    for (size, load, held) in steps {
        let label = human(size);
        report.section(&format!("History of {label} cases"));
        let loaded = phase!(
            report,
            format!(
                "history: build and copy {} cases ({label} in all)",
                load.len()
            ),
            load_history(world, &history_db, &registry, &timeline, load)
        );
        let Ok(loaded) = loaded else {
            break;
        };
        record_load(world, &history_db, &label, &loaded, report).await;
        let plan = match &plan {
            Some(plan) => plan.clone(),
            None => {
                let chosen = Plan::choose(&registry, &loaded.stats)?;
                plan = Some(chosen.clone());
                chosen
            }
        };
        let databases = phase!(
            report,
            format!("copy the {label} history into the tiers' databases"),
            copy_to_tiers(world, &history_db)
        );
        let Ok(databases) = databases else {
            break;
        };
        let started = phase!(
            report,
            format!("start nats-server and the tiers on {label} cases"),
            start(world, &bin_dir, &databases, &public_key, &label, report)
        );
        if started.is_ok() {
            let _ = phase!(
                report,
                format!(
                    "settle: reconciliation and supervision scan done, nothing in flight ({label})"
                ),
                settle(world, &key, &label, report)
            );
            let measured = phase!(
                report,
                format!("time the calls at {label} cases"),
                measure(world, &key, &registry, &timeline, &plan, &held, sizes.calls)
            );
            after_measuring(world, &key, &label, report).await;
            if let Ok(measured) = measured {
                for failed in &measured.failed {
                    report.phase(
                        &format!("a call at {label} cases"),
                        Duration::ZERO,
                        Some(failed.clone()),
                    );
                }
                results.push((size, measured));
            }
        }
        stop_tiers(world, report).await;
        // A size not measured leaves nothing to compare the next with.
        if results.last().map(|(s, _)| *s) != Some(size) {
            break;
        }
    }
    compare(&results, report);
    Ok(())
}

/// Builds and copies `range` of the timeline into the history's database.
async fn load_history(
    world: &World,
    history_db: &str,
    registry: &Arc<Registry>,
    timeline: &Arc<Timeline>,
    indexes: Vec<usize>,
) -> anyhow::Result<Loaded> {
    use sqlx::ConnectOptions;
    let mut conn = tokio::time::timeout(
        Duration::from_secs(10),
        world.databases.options(history_db).connect(),
    )
    .await
    .context("no connection to the history's database within 10 s")??;
    let loaded = history::load(&mut conn, registry.clone(), timeline.clone(), indexes).await;
    // Closed before the database is copied: a template must have no connection.
    let _ = sqlx::Connection::close(conn).await;
    loaded
}

/// The load's figures in the table.
async fn record_load(
    world: &World,
    history_db: &str,
    label: &str,
    loaded: &Loaded,
    report: &mut Report,
) {
    let key = format!("scale.{label}.load");
    let stats = &loaded.stats;
    let copy = loaded.copy.as_secs_f64();
    report.value(
        &format!("{key}.cases"),
        "cases added",
        stats.cases as f64,
        "cases",
    );
    report.value(
        &format!("{key}.events"),
        "… with their events",
        stats.events as f64,
        "events",
    );
    report.value(
        &format!("{key}.open"),
        "… of the cases, open at the end",
        stats.open() as f64,
        "cases",
    );
    report.value(
        &format!("{key}.copy_s"),
        "build and COPY (with the intake keys)",
        copy,
        "s",
    );
    report.value(
        &format!("{key}.rate"),
        "… rate",
        stats.cases as f64 / copy.max(1e-9),
        "cases/s",
    );
    report.value(
        &format!("{key}.mib"),
        "… COPY data sent",
        stats.bytes as f64 / (1024.0 * 1024.0),
        "MiB",
    );
    if !loaded.indexes.is_zero() {
        report.value(
            &format!("{key}.indexes_s"),
            "secondary indexes built again",
            loaded.indexes.as_secs_f64(),
            "s",
        );
    }
    report.value(
        &format!("{key}.vacuum_s"),
        "VACUUM ANALYZE",
        loaded.vacuum.as_secs_f64(),
        "s",
    );
    let states: serde_json::Map<String, serde_json::Value> = stats
        .states
        .iter()
        .map(|(state, n)| ((*state).to_owned(), json!(n)))
        .collect();
    report.meta(&format!("history_{label}_states_added"), json!(states));
    if let Ok(mut admin) = world.databases.admin().await {
        let size: Result<i64, _> = sqlx::query_scalar("SELECT pg_database_size($1)")
            .bind(history_db)
            .fetch_one(&mut admin)
            .await;
        if let Ok(size) = size {
            report.value(
                &format!("{key}.database_mib"),
                "the history's database",
                size as f64 / (1024.0 * 1024.0),
                "MiB",
            );
        }
    }
}

/// Copies the history's database into the three tiers' (made again if they exist); only the
/// village keeps the intake keys. Returns the village's, street's and district's names.
async fn copy_to_tiers(world: &mut World, history_db: &str) -> anyhow::Result<[String; 3]> {
    let within = Duration::from_secs(1800);
    let village = world
        .databases
        .copy_of("village", history_db, within)
        .await?;
    let street = world
        .databases
        .copy_of("street", history_db, within)
        .await?;
    let district = world
        .databases
        .copy_of("district", history_db, within)
        .await?;
    for name in [&street, &district] {
        use sqlx::{ConnectOptions, Executor};
        let mut conn = tokio::time::timeout(
            Duration::from_secs(10),
            world.databases.options(name).connect(),
        )
        .await
        .with_context(|| format!("no connection to {name} within 10 s"))??;
        // The street and the district take no reports: their copies have no intake keys.
        tokio::time::timeout(
            Duration::from_secs(60),
            conn.execute("TRUNCATE intake_keys"),
        )
        .await
        .with_context(|| format!("emptying the intake keys of {name} took over 60 s"))??;
        let _ = sqlx::Connection::close(conn).await;
    }
    Ok([village, street, district])
}

/// A fresh nats-server (an empty stream, no consumers, as the copies have no outbox) and the
/// three tiers on the copies.
async fn start(
    world: &mut World,
    bin_dir: &std::path::Path,
    databases: &[String; 3],
    public_key: &std::path::Path,
    label: &str,
    report: &mut Report,
) -> anyhow::Result<()> {
    if let Some(mut nats) = world.nats.take() {
        nats.stop().await;
    }
    let store = world.work.join("nats-store");
    if store.exists() {
        std::fs::remove_dir_all(&store)
            .with_context(|| format!("cannot remove {}", store.display()))?;
    }
    let nats_url = phases::start_nats(world, report).await?;
    let [village, street, district] = databases;
    let serving = phases::start_tiers(
        world,
        bin_dir,
        [
            ("village", village.as_str()),
            ("street", street.as_str()),
            ("district", district.as_str()),
        ],
        &nats_url,
        public_key,
    )
    .await?;
    report.parts(
        &format!("scale.{label}.start_to_serving"),
        "start to SERVING (spawn → health SERVING)",
        serving,
        "ms",
    );
    Ok(())
}

/// Stops the tiers (noting one that died on the way).
async fn stop_tiers(world: &mut World, report: &mut Report) {
    world.note_dead_tiers(report);
    for tier in &mut world.tiers {
        tier.stop().await;
    }
    world.tiers.clear();
}

/// A channel to a tier, its calls timed out after [`CALL_TIMEOUT`].
async fn connect(url: String) -> anyhow::Result<Channel> {
    load::connect(url, CALL_TIMEOUT).await
}

/// The tiers' addresses by name.
fn urls(world: &World) -> HashMap<&'static str, String> {
    world.tiers.iter().map(|t| (t.name, t.url())).collect()
}

/// Why a tier has not settled yet; none when it has.
fn unsettled(status: &pb::TierStatus) -> Option<String> {
    let reconciled = status.reconciliation.as_ref().map_or(0, |r| r.runs);
    let scanned = status
        .clock
        .as_ref()
        .is_some_and(|c| c.last_scan_seconds_ago >= 0.0);
    let consumer = status.consumer.clone().unwrap_or_default();
    let parked = status.parked.as_ref().map_or(0, |p| p.events);
    let mut why = Vec::new();
    if !status.serving || !status.nats_connected {
        why.push("not serving with NATS".to_owned());
    }
    if reconciled == 0 {
        why.push("no reconciliation run yet".to_owned());
    }
    if !scanned {
        why.push("no supervision scan yet".to_owned());
    }
    if status.outbox_depth > 0 {
        why.push(format!("{} events in its outbox", status.outbox_depth));
    }
    if consumer.pending + consumer.ack_pending > 0 {
        why.push(format!(
            "{} events for it in the stream",
            consumer.pending + consumer.ack_pending
        ));
    }
    if parked > 0 {
        why.push(format!("{parked} parked events"));
    }
    (!why.is_empty()).then(|| why.join(", "))
}

/// Waits until every tier has reconciled with its peers and scanned its open cases once, and
/// nothing is in flight, as `GetStatus` tells an operator; notes what the start did.
async fn settle(
    world: &World,
    key: &SigningKey,
    label: &str,
    report: &mut Report,
) -> anyhow::Result<()> {
    let token = load::persona(key, "admin")?;
    let mut channels = Vec::new();
    for (name, url) in urls(world) {
        channels.push((name, connect(url).await?));
    }
    channels.sort_by_key(|(name, _)| *name);
    let deadline = Instant::now() + SETTLE_WITHIN;
    let statuses = loop {
        let mut waiting = Vec::new();
        let mut statuses = Vec::new();
        for (name, channel) in &channels {
            match status(channel, &token).await {
                Ok(status) => {
                    if let Some(why) = unsettled(&status) {
                        waiting.push(format!("{name}: {why}"));
                    }
                    statuses.push((*name, status));
                }
                Err(error) => waiting.push(format!("{name}: {}", error.message())),
            }
        }
        if waiting.is_empty() {
            break statuses;
        }
        if Instant::now() > deadline {
            bail!(
                "not settled within {SETTLE_WITHIN:?}: {}",
                waiting.join("; ")
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    for (name, status) in statuses {
        let raised = status.clock.as_ref().map_or(0, |c| c.supervisions_raised);
        let repaired = status
            .reconciliation
            .as_ref()
            .map_or(0, |r| r.total_cases_repaired);
        if raised > 0 || repaired > 0 {
            report.note(format!(
                "{label}: on starting, the {name} tier raised {raised} automatic supervision(s) \
                 and repaired {repaired} case(s)"
            ));
        }
        report.json_only(
            &format!("scale.{label}.{name}.cases"),
            &format!("cases the {name} tier holds (GetStatus)"),
            status.cases as f64,
            "cases",
        );
    }
    Ok(())
}

/// Notes the background work the tiers did while they were timed.
async fn after_measuring(world: &World, key: &SigningKey, label: &str, report: &mut Report) {
    let Ok(token) = load::persona(key, "admin") else {
        return;
    };
    for (name, url) in urls(world) {
        let Ok(channel) = connect(url).await else {
            continue;
        };
        if let Ok(status) = status(&channel, &token).await {
            let raised = status.clock.as_ref().map_or(0, |c| c.supervisions_raised);
            report.json_only(
                &format!("scale.{label}.{name}.supervisions_raised"),
                &format!("automatic supervisions the {name} tier raised since its start"),
                raised as f64,
                "events",
            );
            for problem in status.problems {
                report.note(format!("{label}: the {name} tier reports: {problem}"));
            }
        }
    }
}

/// Who and what is timed; chosen from the small history, the same at both sizes.
#[derive(Debug, Clone)]
struct Plan {
    /// The grid worker of the field app: the grid with the most field tasks.
    grid: String,
    /// Whether that grid has tasks (else its task watch would wait for a change).
    tasks: bool,
    community: String,
    /// The 12-digit code of its street: the street console that files the bench's reports.
    street: String,
    /// The department with the most open cases, and the tier it works at.
    department: String,
    department_tier: &'static str,
    /// (category, the street's department of its kind) for the reports the street files.
    reports: Vec<(String, String)>,
}

impl Plan {
    fn choose(registry: &Registry, stats: &history::Stats) -> anyhow::Result<Plan> {
        let busiest = |counts: &HashMap<String, u64>| {
            counts
                .iter()
                .max_by(|a, b| a.1.cmp(b.1).then(b.0.cmp(a.0)))
                .map(|(key, n)| (key.clone(), *n))
        };
        let (grid, tasks) = match busiest(&stats.tasks) {
            Some((grid, n)) => (grid, n > 0),
            None => (
                registry
                    .grids()
                    .next()
                    .context("no grid in the registry")?
                    .to_owned(),
                false,
            ),
        };
        let code: wangge_domain::codes::GridCode = grid
            .parse()
            .map_err(|e| anyhow::anyhow!("grid {grid}: {e}"))?;
        let street = code.street().to_string();
        let (department, _) = busiest(&stats.assigned)
            .context("no department has open cases in the small history")?;
        let department_tier = match registry.department_org(&department) {
            Some(DISTRICT_CENTER) => "district",
            Some(_) => "street",
            None => bail!("department {department} is not in the registry"),
        };
        let reports = registry.street_categories(&street);
        anyhow::ensure!(
            !reports.is_empty(),
            "no category the street {street} files and dispatches itself"
        );
        Ok(Plan {
            community: code.community().to_string(),
            grid,
            tasks,
            street,
            department,
            department_tier,
            reports,
        })
    }
}

/// Times `calls` calls of `call`, one at a time, after up to `WARM` untimed ones (at most
/// `WARM_BUDGET` of them); stops early after `BUDGET` once it has `MIN_SAMPLES`. `call(n)` is
/// the n-th call, warm ones counted, and answers with the items it got.
async fn time<F, Fut>(calls: usize, call: F) -> anyhow::Result<(Vec<Duration>, f64)>
where
    F: FnMut(usize) -> Fut,
    Fut: Future<Output = Result<usize, tonic::Status>>,
{
    time_after(WARM, calls, call).await
}

/// [`time`] with `warm` untimed calls first.
async fn time_after<F, Fut>(
    warm: usize,
    calls: usize,
    mut call: F,
) -> anyhow::Result<(Vec<Duration>, f64)>
where
    F: FnMut(usize) -> Fut,
    Fut: Future<Output = Result<usize, tonic::Status>>,
{
    let failed =
        |status: tonic::Status| anyhow::anyhow!("{:?}: {}", status.code(), status.message());
    let warming = Instant::now();
    let mut n = 0;
    while n < warm {
        call(n).await.map_err(failed)?;
        n += 1;
        if warming.elapsed() > WARM_BUDGET {
            break;
        }
    }
    let started = Instant::now();
    let mut took = Vec::with_capacity(calls);
    let mut items = 0;
    for n in n..n + calls {
        let begun = Instant::now();
        items += call(n).await.map_err(failed)?;
        took.push(begun.elapsed());
        if started.elapsed() > BUDGET && took.len() >= MIN_SAMPLES {
            break;
        }
    }
    let answers = took.len().max(1) as f64;
    Ok((took, items as f64 / answers))
}

async fn list(
    channel: &Channel,
    token: &Token,
    request: pb::ListCasesRequest,
) -> Result<usize, tonic::Status> {
    let mut cases = pb::case_query_service_client::CaseQueryServiceClient::new(channel.clone());
    Ok(cases
        .list_cases(authorized(token, request))
        .await?
        .into_inner()
        .cases
        .len())
}

async fn get_case(
    channel: &Channel,
    token: &Token,
    case_id: String,
) -> Result<usize, tonic::Status> {
    let mut cases = pb::case_query_service_client::CaseQueryServiceClient::new(channel.clone());
    cases
        .get_case(authorized(token, pb::GetCaseRequest { case_id }))
        .await?;
    Ok(1)
}

async fn case_events(
    channel: &Channel,
    token: &Token,
    case_id: String,
) -> Result<usize, tonic::Status> {
    let mut cases = pb::case_query_service_client::CaseQueryServiceClient::new(channel.clone());
    Ok(cases
        .list_case_events(authorized(token, pb::ListCaseEventsRequest { case_id }))
        .await?
        .into_inner()
        .events
        .len())
}

/// Opens a console watch and waits for its first update; the stream is dropped after it.
async fn first_update(
    channel: &Channel,
    token: &Token,
    request: pb::WatchCasesRequest,
) -> Result<usize, tonic::Status> {
    let mut console =
        pb::command_console_service_client::CommandConsoleServiceClient::new(channel.clone());
    let first = async {
        let mut stream = console
            .watch_cases(authorized(token, request))
            .await?
            .into_inner();
        stream.message().await
    };
    first_message(first, "update").await
}

/// Opens the field app's task watch and waits for its first update.
async fn first_task(channel: &Channel, token: &Token) -> Result<usize, tonic::Status> {
    let mut field = pb::field_app_service_client::FieldAppServiceClient::new(channel.clone());
    let first = async {
        let mut stream = field
            .watch_tasks(authorized(token, pb::ListTasksRequest::default()))
            .await?
            .into_inner();
        stream.message().await
    };
    first_message(first, "task").await
}

/// Awaits a watch's first message (`what` names it), within [`CALL_TIMEOUT`]: one item.
async fn first_message<T>(
    first: impl Future<Output = Result<Option<T>, tonic::Status>>,
    what: &str,
) -> Result<usize, tonic::Status> {
    match tokio::time::timeout(CALL_TIMEOUT, first).await {
        Ok(Ok(Some(_))) => Ok(1),
        Ok(Ok(None)) => Err(tonic::Status::unknown(format!(
            "the watch ended before its first {what}"
        ))),
        Ok(Err(status)) => Err(status),
        Err(_) => Err(tonic::Status::deadline_exceeded(format!(
            "no first {what} within {CALL_TIMEOUT:?}"
        ))),
    }
}

async fn tasks(channel: &Channel, token: &Token) -> Result<usize, tonic::Status> {
    let mut field = pb::field_app_service_client::FieldAppServiceClient::new(channel.clone());
    Ok(field
        .list_tasks(authorized(token, pb::ListTasksRequest::default()))
        .await?
        .into_inner()
        .cases
        .len())
}

async fn assigned(
    channel: &Channel,
    token: &Token,
    department_code: String,
) -> Result<usize, tonic::Status> {
    let mut departments =
        pb::department_service_client::DepartmentServiceClient::new(channel.clone());
    Ok(departments
        .list_assigned(authorized(
            token,
            // The largest page: the whole open work of a department, as before pages.
            pb::ListAssignedRequest {
                department_code,
                page_size: 500,
                ..Default::default()
            },
        ))
        .await?
        .into_inner()
        .cases
        .len())
}

/// The last 24 hours' 综合评价 of `org_code` (empty: the caller's whole scope); the rows it has.
async fn evaluate(
    channel: &Channel,
    token: &Token,
    org_code: String,
) -> Result<usize, tonic::Status> {
    let mut evaluations =
        pb::evaluation_service_client::EvaluationServiceClient::new(channel.clone())
            .max_decoding_message_size(64 * 1024 * 1024);
    let now = chrono::Utc::now();
    let wire = |at: chrono::DateTime<chrono::Utc>| prost_types::Timestamp {
        seconds: at.timestamp(),
        nanos: 0,
    };
    let answer = evaluations
        .evaluate(authorized(
            token,
            pb::EvaluateRequest {
                org_code,
                from: Some(wire(now - chrono::Duration::hours(24))),
                to: Some(wire(now)),
            },
        ))
        .await?
        .into_inner();
    Ok(answer.workers.len() + answer.centers.len() + answer.departments.len() + answer.areas.len())
}

/// Ids of `most` cases spread evenly over `indexes`.
fn spread(timeline: &Timeline, indexes: &[usize], most: usize) -> Vec<String> {
    let step = (indexes.len() / most.max(1)).max(1);
    indexes
        .iter()
        .step_by(step)
        .take(most)
        .map(|&n| timeline.case_id(n).to_string())
        .collect()
}

/// Times every read of the console, the field app and `GetStatus`, then the field's report and
/// the street's first steps on it, against the running tiers holding reports `held` of the
/// timeline.
async fn measure(
    world: &World,
    key: &SigningKey,
    registry: &Registry,
    timeline: &Timeline,
    plan: &Plan,
    held: &[usize],
    calls: usize,
) -> anyhow::Result<Measured> {
    let urls = urls(world);
    let tier = |name: &str| {
        urls.get(name)
            .cloned()
            .with_context(|| format!("the {name} tier is not running"))
    };
    let village = connect(tier("village")?).await?;
    let street = connect(tier("street")?).await?;
    let district = connect(tier("district")?).await?;
    let admin = load::persona(key, "admin")?;
    let operator = load::persona(key, &format!("op-{DISTRICT_CENTER}"))?;
    let street_operator = load::persona(key, &format!("op-{}", plan.street))?;
    let worker = load::persona(key, &format!("gw-{}", plan.grid))?;
    let handler = load::persona(key, &format!("dh-{}", plan.department))?;
    let department_channel = if plan.department_tier == "district" {
        &district
    } else {
        &street
    };

    let sample = spread(timeline, held, calls + WARM);
    let mine: Vec<usize> = held
        .iter()
        .copied()
        .filter(|&n| timeline.grid(registry, n) == plan.grid)
        .collect();
    let my_sample = spread(timeline, &mine, calls + WARM);
    let halfway = timeline
        .case_id(held.get(held.len() / 2).copied().unwrap_or_default())
        .to_string();
    let open: Vec<i32> = OPEN_STATES.iter().map(|s| *s as i32).collect();
    let listing = |states: Vec<i32>, org_code: &str, owned_only: bool, page_token: &str| {
        pb::ListCasesRequest {
            states,
            org_code: org_code.to_owned(),
            owned_only,
            page_size: 0,
            page_token: page_token.to_owned(),
        }
    };
    let mut measured = Measured::default();
    let m = &mut measured;
    eprintln!("    GetStatus, lists, cases, events");

    for (name, channel) in [
        ("district", &district),
        ("street", &street),
        ("village", &village),
    ] {
        m.add(
            &format!("status.{name}"),
            &format!("{name}: GetStatus (admin)"),
            time(calls, |_| async {
                status(channel, &admin).await.map(|_| 1)
            })
            .await,
        );
    }
    let lists: [(&str, &str, pb::ListCasesRequest); 10] = [
        (
            "list.first",
            "ListCases, first page (the oldest)",
            listing(Vec::new(), "", false, ""),
        ),
        (
            "list.halfway",
            "ListCases, a page half-way back",
            listing(Vec::new(), "", false, &halfway),
        ),
        (
            "list.open",
            "ListCases, every open state",
            listing(open.clone(), "", false, ""),
        ),
        (
            "list.reported",
            "ListCases, reported",
            listing(vec![pb::CaseState::Reported as i32], "", false, ""),
        ),
        (
            "list.in_progress",
            "ListCases, in progress",
            listing(vec![pb::CaseState::InProgress as i32], "", false, ""),
        ),
        (
            "list.closed_halfway",
            "ListCases, closed, half-way back",
            listing(vec![pb::CaseState::Closed as i32], "", false, &halfway),
        ),
        (
            "list.street",
            "ListCases, one street",
            listing(Vec::new(), &plan.street, false, ""),
        ),
        (
            "list.community_open",
            "ListCases, one community, open states",
            listing(open.clone(), &plan.community, false, ""),
        ),
        (
            "list.owned",
            "ListCases, owned_only",
            listing(Vec::new(), "", true, ""),
        ),
        (
            "list.owned_open",
            "ListCases, owned_only, open states",
            listing(open.clone(), "", true, ""),
        ),
    ];
    for (key, label, request) in lists {
        m.add(
            &format!("console.{key}"),
            &format!("district: {label}"),
            time(calls, |_| list(&district, &operator, request.clone())).await,
        );
    }
    m.add(
        "console.get_case",
        "district: GetCase, cases of every year",
        time(calls, |n| {
            get_case(
                &district,
                &operator,
                sample[n % sample.len().max(1)].clone(),
            )
        })
        .await,
    );
    m.add(
        "console.list_case_events",
        "district: ListCaseEvents, the same cases",
        time(calls, |n| {
            case_events(
                &district,
                &operator,
                sample[n % sample.len().max(1)].clone(),
            )
        })
        .await,
    );

    eprintln!("    watches, work lists, evaluations");
    m.add(
        "console.watch_all.first",
        "district: WatchCases + existing: first update",
        time(calls, |_| {
            first_update(
                &district,
                &operator,
                pb::WatchCasesRequest {
                    states: Vec::new(),
                    include_existing: true,
                },
            )
        })
        .await,
    );
    m.add(
        "console.watch_open.first",
        "district: WatchCases + existing, open: first",
        time(calls, |_| {
            first_update(
                &district,
                &operator,
                pb::WatchCasesRequest {
                    states: open.clone(),
                    include_existing: true,
                },
            )
        })
        .await,
    );
    m.add(
        "department.list_assigned",
        &format!(
            "{}: ListAssigned, {}",
            plan.department_tier, plan.department
        ),
        time(calls, |_| {
            assigned(department_channel, &handler, plan.department.clone())
        })
        .await,
    );
    m.add(
        "evaluation.street",
        "district: Evaluate, one street, last 24 h",
        time(calls, |_| {
            evaluate(&district, &operator, plan.street.clone())
        })
        .await,
    );
    m.add(
        "evaluation.district",
        "district: Evaluate, the district, last 24 h",
        time(calls, |_| evaluate(&district, &operator, String::new())).await,
    );

    eprintln!("    the field app");
    m.add(
        "field.list_tasks",
        "village: ListTasks (grid worker)",
        time(calls, |_| tasks(&village, &worker)).await,
    );
    if plan.tasks {
        m.add(
            "field.watch_tasks.first",
            "village: WatchTasks: first task",
            time(calls, |_| first_task(&village, &worker)).await,
        );
    }
    m.add(
        "field.list_mine",
        "village: ListCases, the worker's grid, 20 a page",
        time(calls, |_| {
            list(
                &village,
                &worker,
                pb::ListCasesRequest {
                    page_size: FIELD_PAGE,
                    ..listing(Vec::new(), "", false, "")
                },
            )
        })
        .await,
    );
    m.add(
        "field.list_mine_open",
        "village: ListCases, the worker's grid, open, 20 a page",
        time(calls, |_| {
            list(
                &village,
                &worker,
                pb::ListCasesRequest {
                    page_size: FIELD_PAGE,
                    ..listing(open.clone(), "", false, "")
                },
            )
        })
        .await,
    );
    if !my_sample.is_empty() {
        m.add(
            "field.get_case",
            "village: GetCase, the worker's cases",
            time(calls, |n| {
                get_case(&village, &worker, my_sample[n % my_sample.len()].clone())
            })
            .await,
        );
    }

    eprintln!("    reports, then the street files, dispatches and signs them");
    writes(
        m,
        key,
        registry,
        plan,
        (&village, &street),
        (&worker, &street_operator),
        calls,
    )
    .await;
    Ok(measured)
}

/// The field's reports at the village (each with its duplicate lookup), then the street's
/// operator files (立案) and dispatches (派遣) each, and its department signs for it (签收).
async fn writes(
    m: &mut Measured,
    key: &SigningKey,
    registry: &Registry,
    plan: &Plan,
    (village, street): (&Channel, &Channel),
    (worker, operator): (&Token, &Token),
    calls: usize,
) {
    let spots = registry.spots(&plan.grid);
    if spots.is_empty() {
        m.failed
            .push(format!("no report points in grid {}", plan.grid));
        return;
    }
    let reported: Mutex<Vec<(String, String)>> = Mutex::new(Vec::new());
    m.add(
        "field.report_case",
        "village: ReportCase (duplicate lookup, intake)",
        time(calls, |n| {
            let (category, department) = plan.reports[n % plan.reports.len()].clone();
            let (longitude, latitude) = spots[n % spots.len()];
            let request = pb::ReportCaseRequest {
                client_id: uuid::Uuid::now_v7().to_string(),
                category_code: category,
                description: format!("规模测试报告 {n}"),
                location: Some(pb::GeoPoint {
                    longitude,
                    latitude,
                }),
                ..Default::default()
            };
            let reported = &reported;
            async move {
                let mut field =
                    pb::field_app_service_client::FieldAppServiceClient::new(village.clone());
                let case = field
                    .report_case(authorized(worker, request))
                    .await?
                    .into_inner();
                reported
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push((case.id, department));
                Ok(1)
            }
        })
        .await,
    );
    let reported = reported.into_inner().unwrap_or_else(|e| e.into_inner());
    if reported.is_empty() {
        return;
    }
    // The street holds them once their events have come over NATS.
    let deadline = Instant::now() + Duration::from_secs(60);
    for (case_id, _) in &reported {
        loop {
            match get_case(street, operator, case_id.clone()).await {
                Ok(_) => break,
                Err(status)
                    if status.code() == tonic::Code::NotFound && Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(status) => {
                    m.failed.push(format!(
                        "the street did not hold the reported case {case_id} within 60 s: {}",
                        status.message()
                    ));
                    return;
                }
            }
        }
    }
    // Each step on the cases the step before took, all of them: the calls before warmed the
    // connections, and a case takes each step once.
    let case = |n: usize| {
        reported
            .get(n)
            .cloned()
            .ok_or_else(|| tonic::Status::internal(format!("no reported case {n}")))
    };
    let done = |outcome: &anyhow::Result<(Vec<Duration>, f64)>| {
        outcome.as_ref().map_or(0, |(took, _)| took.len())
    };
    let console =
        pb::command_console_service_client::CommandConsoleServiceClient::new(street.clone());
    let departments = pb::department_service_client::DepartmentServiceClient::new(street.clone());
    // Each report's department signs with its own handler's token.
    let mut handlers: HashMap<String, Token> = HashMap::new();
    for (_, department) in &reported {
        if handlers.contains_key(department) {
            continue;
        }
        match load::persona(key, &format!("dh-{department}")) {
            Ok(token) => {
                handlers.insert(department.clone(), token);
            }
            Err(error) => {
                m.failed
                    .push(format!("no token for dh-{department}: {error:#}"));
                return;
            }
        }
    }
    let accepted = time_after(0, reported.len(), |n| {
        let case = case(n);
        let mut console = console.clone();
        async move {
            let (case_id, _) = case?;
            console
                .accept_case(authorized(
                    operator,
                    pb::CaseActionRequest {
                        case_id,
                        ..Default::default()
                    },
                ))
                .await?;
            Ok(1)
        }
    })
    .await;
    let filed = done(&accepted);
    m.add("console.accept_case", "street: AcceptCase", accepted);
    let dispatched = time_after(0, filed, |n| {
        let case = case(n);
        let mut console = console.clone();
        async move {
            let (case_id, department_code) = case?;
            console
                .dispatch_case(authorized(
                    operator,
                    pb::DispatchCaseRequest {
                        case_id,
                        department_code,
                        note: String::new(),
                    },
                ))
                .await?;
            Ok(1)
        }
    })
    .await;
    let sent = done(&dispatched);
    m.add("console.dispatch_case", "street: DispatchCase", dispatched);
    let signed = time_after(0, sent, |n| {
        let case = case(n);
        let handlers = &handlers;
        let mut departments = departments.clone();
        async move {
            let (case_id, department_code) = case?;
            let token = handlers
                .get(&department_code)
                .ok_or_else(|| tonic::Status::internal("no handler token"))?;
            departments
                .sign_case(authorized(
                    token,
                    pb::DepartmentActionRequest {
                        case_id,
                        department_code,
                        ..Default::default()
                    },
                ))
                .await?;
            Ok(1)
        }
    })
    .await;
    m.add(
        "department.sign_case",
        "street: SignCase (department)",
        signed,
    );
}

/// Each call at both sizes into the table, with the ratio of the medians against the target.
fn compare(results: &[(usize, Measured)], report: &mut Report) {
    let (Some((small_size, small)), Some((large_size, large))) = (results.first(), results.get(1))
    else {
        report.note("the scale run did not measure both sizes: no comparison".into());
        return;
    };
    let names = (human(*small_size), human(*large_size));
    report.section(&format!(
        "Flat in the size of the history? Each call at {} and at {} cases: p50 · p90, the ratio \
         of the medians (target ≤ {TARGET}x)",
        names.0, names.1
    ));
    for timed in &small.timed {
        let Some(other) = large.timed.iter().find(|t| t.key == timed.key) else {
            report.note(format!("{}: not timed at {} cases", timed.label, names.1));
            continue;
        };
        let (Some(small_dist), Some(large_dist)) = (
            Dist::of(&mut timed.took.clone()),
            Dist::of(&mut other.took.clone()),
        ) else {
            continue;
        };
        report.compare(Comparison {
            key: format!("scale.{}", timed.key),
            label: timed.label.clone(),
            sizes: names.clone(),
            small: small_dist,
            large: large_dist,
            items: (timed.items, other.items),
            target: TARGET,
        });
    }
    let missed = report.missed();
    let compared = small
        .timed
        .iter()
        .filter(|t| large.timed.iter().any(|o| o.key == t.key))
        .count();
    report.note(format!(
        "{} of {compared} calls within {TARGET}x of their time at {} cases{}",
        compared - missed.len(),
        names.0,
        if missed.is_empty() {
            String::new()
        } else {
            format!(
                "; beyond: {}",
                missed
                    .iter()
                    .map(|(label, ratio)| format!("{label} ×{ratio:.2}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        }
    ));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_as_people_say_them() {
        assert_eq!(human(1_000), "1k");
        assert_eq!(human(20_000), "20k");
        assert_eq!(human(1_000_000), "1M");
        assert_eq!(human(1_500_000), "1.5M");
        assert_eq!(human(999), "999");
    }

    #[test]
    fn a_tier_with_work_in_flight_has_not_settled() {
        let settled = pb::TierStatus {
            serving: true,
            nats_connected: true,
            reconciliation: Some(pb::Reconciliation {
                runs: 1,
                ..Default::default()
            }),
            clock: Some(pb::CommandClock {
                last_scan_seconds_ago: 0.5,
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(unsettled(&settled), None);
        let busy = pb::TierStatus {
            outbox_depth: 3,
            ..settled.clone()
        };
        assert_eq!(unsettled(&busy).as_deref(), Some("3 events in its outbox"));
        let fresh = pb::TierStatus {
            clock: None,
            ..settled
        };
        assert_eq!(
            unsettled(&fresh).as_deref(),
            Some("no supervision scan yet")
        );
    }
}
