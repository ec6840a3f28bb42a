//! The phases of a run, in order: set-up, baselines, the tiers' start, warm-up, one report at a
//! time, intake and end to end, the offered loads, the backlog (see `drain`); and what the bench
//! brought up, torn down at the end whatever happened.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::StreamExt;
use serde_json::json;
use wangge_auth::SigningKey;

use crate::load::{self, Field, Log, Side, Tracker, Until, closed_loop, open_loop};
use crate::meter::Meter;
use crate::report::{Dist, Report};
use crate::system::{self, Databases, Launch, Nats, TierProcess};
use crate::{Args, Plan, baseline, procfs};

/// What the bench brought up; torn down at the end whatever happened.
#[derive(Debug)]
pub(crate) struct World {
    pub work: PathBuf,
    pub temp: Option<tempfile::TempDir>,
    pub databases: Databases,
    pub nats: Option<Nats>,
    pub tiers: Vec<TierProcess>,
    pub watches: Vec<tokio::task::JoinHandle<()>>,
}

impl World {
    pub fn tier(&mut self, name: &str) -> anyhow::Result<&mut TierProcess> {
        self.tiers
            .iter_mut()
            .find(|t| t.name == name)
            .with_context(|| format!("the {name} tier is not running"))
    }

    /// Records a failed phase for each tier that is no longer running.
    pub fn note_dead_tiers(&mut self, report: &mut Report) {
        for tier in &mut self.tiers {
            if let Err(error) = tier.check_alive() {
                report.phase(
                    "the tiers ran to the end",
                    Duration::ZERO,
                    Some(format!("{error:#}")),
                );
            }
        }
    }

    pub async fn teardown(&mut self, report: &mut Report, keep: bool, keep_databases: bool) {
        for watch in self.watches.drain(..) {
            watch.abort();
        }
        for tier in &mut self.tiers {
            tier.stop().await;
        }
        if let Some(nats) = self.nats.as_mut() {
            nats.stop().await;
        }
        if keep_databases {
            let kept = self.databases.forget();
            if !kept.is_empty() {
                report.note(format!("databases kept: {}", kept.join(", ")));
            }
        }
        let started = Instant::now();
        let failed = self.databases.drop_all().await;
        if !failed.is_empty() {
            report.phase(
                "drop the bench databases",
                started.elapsed(),
                Some(format!("could not drop {}", failed.join(", "))),
            );
        }
        let keep = keep || !report.failures().is_empty();
        if let Some(temp) = self.temp.take() {
            if keep {
                let kept = temp.keep();
                report.note(format!("logs kept in {}", kept.display()));
            } else if let Err(error) = temp.close() {
                report.note(format!("could not remove {}: {error}", self.work.display()));
            }
        }
    }
}

/// Runs a phase: prints its name, times it, records how it went, and gives its outcome.
macro_rules! phase {
    ($report:expr, $name:expr, $body:expr) => {{
        let name: String = $name.into();
        eprintln!("==> {name}");
        let started = Instant::now();
        let outcome = $body.await;
        let took = started.elapsed();
        let error = outcome
            .as_ref()
            .err()
            .map(|e: &anyhow::Error| format!("{e:#}"));
        match &error {
            None => eprintln!("    ok ({:.1} s)", took.as_secs_f64()),
            Some(error) => eprintln!("    FAILED ({:.1} s): {error}", took.as_secs_f64()),
        }
        $report.phase(&name, took, error);
        outcome
    }};
}
pub(crate) use phase;

/// What the set-up made.
pub(crate) struct Setup {
    pub village_db: String,
    pub street_db: String,
    pub district_db: String,
    pub raw_db: String,
    pub nats_url: String,
    pub key: SigningKey,
    pub public_key: PathBuf,
}

async fn set_up(args: &Args, world: &mut World, report: &mut Report) -> anyhow::Result<Setup> {
    let village_db = seeded(args, world, report, "village").await?;
    // The other tiers' databases are copies of the seeded one: the same schema and registry.
    let street_db = world.databases.create("street", Some(&village_db)).await?;
    let district_db = world
        .databases
        .create("district", Some(&village_db))
        .await?;
    let raw_db = world.databases.create("raw", None).await?;
    let nats_url = start_nats(world, report).await?;
    let (key, public_key) = keys(world)?;
    Ok(Setup {
        village_db,
        street_db,
        district_db,
        raw_db,
        nats_url,
        key,
        public_key,
    })
}

/// Makes the database `what`, migrated and seeded with the importer (and notes the server's
/// version); returns its name.
pub(crate) async fn seeded(
    args: &Args,
    world: &mut World,
    report: &mut Report,
    what: &str,
) -> anyhow::Result<String> {
    let mut admin = world.databases.admin().await?;
    let version: String = sqlx::query_scalar("SELECT version()")
        .fetch_one(&mut admin)
        .await?;
    report.meta("postgres", json!(version));
    let name = world.databases.create(what, None).await?;
    let imported = system::seed(&world.databases, &name, &args.seeds).await?;
    eprintln!("    seeded {name}: {imported} rows");
    Ok(name)
}

/// Starts a nats-server with JetStream in the work directory (and notes its version); its URL.
pub(crate) async fn start_nats(world: &mut World, report: &mut Report) -> anyhow::Result<String> {
    let binary = system::nats_binary()?;
    report.meta("nats_server", json!(system::nats_version(&binary)));
    let nats = Nats::start(&binary, &world.work).await?;
    let url = nats.url();
    world.nats = Some(nats);
    Ok(url)
}

/// The run's key pair: the bench signs its callers' tokens, the tiers trust the public key.
pub(crate) fn keys(world: &World) -> anyhow::Result<(SigningKey, PathBuf)> {
    let (private, public_key) = wangge_auth::keys::generate(&world.work.join("keys"), "bench")?;
    Ok((SigningKey::load(&private)?, public_key))
}

/// Where the tier binaries are: `--bin-dir`, else beside this executable.
pub(crate) fn bin_dir(args: &Args) -> anyhow::Result<PathBuf> {
    match &args.bin_dir {
        Some(dir) => Ok(dir.clone()),
        None => Ok(std::env::current_exe()?
            .parent()
            .context("the executable has no folder")?
            .to_owned()),
    }
}

/// Starts the three tiers on their databases (village, street, district, in that order), all
/// serving the bench's scope; each is in `world.tiers` once SERVING. Returns each one's time from
/// spawn to SERVING, ms.
pub(crate) async fn start_tiers(
    world: &mut World,
    bin_dir: &Path,
    databases: [(&'static str, &str); 3],
    nats_url: &str,
    public_key: &Path,
) -> anyhow::Result<Vec<(String, f64)>> {
    let mut serving = Vec::new();
    for (name, database) in databases {
        let launch = Launch {
            bin_dir,
            work: &world.work,
            scope: load::SCOPE,
            database_url: world.databases.url(database),
            nats_url: nats_url.to_owned(),
            public_key,
        };
        let (tier, took) = TierProcess::start(name, launch).await?;
        world.tiers.push(tier);
        serving.push((name.to_owned(), took.as_secs_f64() * 1000.0));
    }
    Ok(serving)
}

/// Every phase in order; figures go into `report` as they are measured.
pub(crate) async fn all(
    args: &Args,
    plan: &Plan,
    world: &mut World,
    report: &mut Report,
) -> anyhow::Result<()> {
    let setup = phase!(
        report,
        "set up: databases, seeds, nats-server, keys",
        set_up(args, world, report)
    )?;

    report.section("Raw baselines (this machine, this run)");
    baselines(plan, world, &setup, report).await;

    report.section("The system: village, street and district");
    let bin_dir = bin_dir(args)?;
    report.meta("bin_dir", json!(bin_dir.display().to_string()));
    let started = phase!(report, "start the tiers", async {
        let serving = start_tiers(
            world,
            &bin_dir,
            [
                ("village", &setup.village_db),
                ("street", &setup.street_db),
                ("district", &setup.district_db),
            ],
            &setup.nats_url,
            &setup.public_key,
        )
        .await?;
        report.parts(
            "system.start_to_serving",
            "start to SERVING (spawn → health SERVING)",
            serving,
            "ms",
        );
        Ok::<_, anyhow::Error>(())
    });
    if started.is_err() {
        return Ok(());
    }

    let mut processes: Vec<(String, u32)> = world
        .tiers
        .iter()
        .filter_map(|t| Some((t.name.to_owned(), t.pid()?)))
        .collect();
    if let Some(pid) = world.nats.as_ref().and_then(Nats::pid) {
        processes.push(("nats".into(), pid));
    }
    let databases = vec![
        ("pg_village".to_owned(), setup.village_db.clone()),
        ("pg_street".to_owned(), setup.street_db.clone()),
        ("pg_district".to_owned(), setup.district_db.clone()),
    ];
    let mut meter = Meter::new(processes, databases, world.databases.admin().await.ok());

    tokio::time::sleep(plan.settle).await;
    report.parts("system.rss_idle", "RSS idle", memory(world, false), "MiB");
    idle_cpu(
        plan,
        &mut meter,
        report,
        "system.idle_cpu",
        "CPU idle, after start",
    )
    .await;

    let tracker = Arc::new(Tracker::default());
    let field = phase!(
        report,
        "watches and warm-up (one report per grid)",
        warm_up(plan, &args.seeds, world, &setup, &tracker, report)
    );
    let Ok(field) = field else {
        return Ok(());
    };
    let field = Arc::new(field);
    let both = [Side::Street, Side::District];

    let _ = phase!(report, "one report at a time", async {
        let log = Log::new();
        closed_loop(&field, 1, Until::Elapsed(plan.single), &log).await?;
        report.dist(
            "system.single.report_case",
            "ReportCase, one at a time",
            Dist::of(&mut log.reply_latencies()),
        );
        let held = log
            .wait(
                &both,
                Duration::from_secs(30),
                "the reports sent one at a time",
            )
            .await;
        report.dist(
            "system.single.to_street",
            "… report → held at the street",
            Dist::of(&mut log.arrival_latencies(Side::Street)),
        );
        report.dist(
            "system.single.to_district",
            "… report → held at the district",
            Dist::of(&mut log.arrival_latencies(Side::District)),
        );
        errors(report, "one at a time", &log);
        held
    });

    let _ = phase!(
        report,
        format!(
            "intake and end to end: {} field apps, closed loop",
            plan.clients
        ),
        async {
            let before = meter.snapshot().await;
            let log = Log::new();
            closed_loop(&field, plan.clients, Until::Elapsed(plan.intake), &log).await?;
            let ok = log.ok();
            let first = log.first_start().context("no report was sent")?;
            let last = log.last_reply().context("no report was answered")?;
            report.value_against(
                "system.intake",
                &format!("intake at the village ({} field apps)", plan.clients),
                ok as f64 / (last - first).as_secs_f64(),
                "reports/s",
                "baseline.pg_commits_16",
            );
            report.dist(
                "system.intake.report_case",
                "… ReportCase latency",
                Dist::of(&mut log.reply_latencies()),
            );
            errors(report, "intake", &log);
            let within = Duration::from_secs(60) + Duration::from_secs_f64(ok as f64 / 200.0);
            log.wait(&both, within, "the intake's reports").await?;
            let after = meter.snapshot().await;
            let held = log
                .last_arrival(Side::Street)
                .max(log.last_arrival(Side::District))
                .context("nothing arrived")?;
            report.value_against(
                "system.end_to_end",
                "end to end: until held at street and district",
                ok as f64 / (held - first).as_secs_f64(),
                "reports/s",
                "baseline.pg_commits_16",
            );
            report.dist(
                "system.intake.to_street",
                "… report → held at the street",
                Dist::of(&mut log.arrival_latencies(Side::Street)),
            );
            report.dist(
                "system.intake.to_district",
                "… report → held at the district",
                Dist::of(&mut log.arrival_latencies(Side::District)),
            );
            report.parts(
                "system.intake.cpu_per_report",
                "CPU per report (intake until held everywhere)",
                meter.per_unit(&before, &after, ok as f64),
                "ms",
            );
            Ok::<_, anyhow::Error>(())
        }
    );

    for &rate in &plan.rates {
        let _ = phase!(
            report,
            format!("offered load {rate} reports/s, open loop"),
            async {
                let before = meter.snapshot().await;
                let log = Log::new();
                let late = open_loop(&field, f64::from(rate), plan.load, &log, None).await?;
                let ok = log.ok();
                let within = Duration::from_secs(60) + Duration::from_secs_f64(ok as f64 / 200.0);
                let held = log.wait(&both, within, "the offered load's reports").await;
                let after = meter.snapshot().await;
                let key = format!("system.load_{rate}");
                report.dist(
                    &format!("{key}.report_case"),
                    &format!("at {rate}/s offered: ReportCase"),
                    Dist::of(&mut log.reply_latencies()),
                );
                report.dist(
                    &format!("{key}.to_street"),
                    &format!("at {rate}/s offered: report → held at the street"),
                    Dist::of(&mut log.arrival_latencies(Side::Street)),
                );
                report.dist(
                    &format!("{key}.to_district"),
                    &format!("at {rate}/s offered: report → held at the district"),
                    Dist::of(&mut log.arrival_latencies(Side::District)),
                );
                report.parts(
                    &format!("{key}.cpu_per_report"),
                    &format!("at {rate}/s offered: CPU per report"),
                    meter.per_unit(&before, &after, ok as f64),
                    "ms",
                );
                if late > Duration::from_millis(20) {
                    report.note(format!(
                        "at {rate}/s the bench sent up to {:.0} ms after a report was due (its \
                     latency still counts from when it was due)",
                        late.as_secs_f64() * 1000.0
                    ));
                }
                errors(report, &format!("{rate}/s offered"), &log);
                held
            }
        );
    }

    idle_cpu(
        plan,
        &mut meter,
        report,
        "system.idle_cpu_loaded",
        "CPU idle, after the load phases",
    )
    .await;

    let _ = phase!(
        report,
        format!(
            "backlog of {} reports (street paused), then the drain",
            plan.backlog
        ),
        crate::drain::drain(plan, world, &setup, &field, &mut meter, report)
    );

    report.parts(
        "system.rss_peak",
        "RSS peak (VmHWM)",
        memory(world, true),
        "MiB",
    );
    world.note_dead_tiers(report);
    for broke in tracker.breaks() {
        report.note(format!("a watch broke and was opened again: {broke}"));
    }
    Ok(())
}

/// CPU time each process spends while no report is sent, per second (background work).
async fn idle_cpu(plan: &Plan, meter: &mut Meter, report: &mut Report, key: &str, label: &str) {
    let before = meter.snapshot().await;
    tokio::time::sleep(plan.idle).await;
    let after = meter.snapshot().await;
    let per_second = meter.per_unit(&before, &after, plan.idle.as_secs_f64());
    report.parts(key, label, per_second, "ms/s");
}

/// Notes the refusals and failures of a phase.
pub(crate) fn errors(report: &mut Report, phase: &str, log: &Log) {
    for (error, count) in log.errors() {
        report.note(format!("{phase}: {count} report(s) failed with {error}"));
    }
}

/// The resident set (or its peak) of the tiers and nats-server, MiB.
fn memory(world: &World, peak: bool) -> Vec<(String, f64)> {
    let mut processes: Vec<(String, Option<u32>)> = world
        .tiers
        .iter()
        .map(|t| (t.name.to_owned(), t.pid()))
        .collect();
    processes.push(("nats".into(), world.nats.as_ref().and_then(Nats::pid)));
    processes
        .into_iter()
        .filter_map(|(name, pid)| {
            let (rss, hwm) = procfs::memory_mib(pid?)?;
            Some((name, if peak { hwm } else { rss }))
        })
        .collect()
}

async fn baselines(plan: &Plan, world: &World, setup: &Setup, report: &mut Report) {
    let raw = world.databases.options(&setup.raw_db);
    let _ = phase!(report, "baseline: PostgreSQL single-row commits", async {
        baseline::prepare_commits(&raw).await?;
        let conns = baseline::connections(&raw, 1).await?;
        let (one, _) = baseline::commits(conns, plan.baseline).await?;
        report.value(
            "baseline.pg_commits_1",
            "PostgreSQL durable single-row commits, 1 connection",
            one.count as f64 / one.elapsed.as_secs_f64(),
            "commits/s",
        );
        report.dist(
            "baseline.pg_commit_latency_1",
            "… one commit, 1 connection",
            one.latency,
        );
        let mut meter = Meter::new(
            Vec::new(),
            vec![("pg_bench_db".to_owned(), setup.raw_db.clone())],
            world.databases.admin().await.ok(),
        );
        let conns = baseline::connections(&raw, 16).await?;
        let before = meter.snapshot().await;
        let (many, conns) = baseline::commits(conns, plan.baseline).await?;
        let after = meter.snapshot().await;
        drop(conns);
        report.value(
            "baseline.pg_commits_16",
            "PostgreSQL durable single-row commits, 16 connections",
            many.count as f64 / many.elapsed.as_secs_f64(),
            "commits/s",
        );
        report.parts(
            "baseline.cpu_per_commit",
            "CPU per commit, 16 connections",
            meter.per_unit(&before, &after, many.count as f64),
            "ms",
        );
        Ok::<_, anyhow::Error>(())
    });

    let mut js = baseline::JetStream::default();
    let _ = phase!(
        report,
        "baseline: JetStream publish and pull consume",
        baseline::jetstream(&setup.nats_url, plan.baseline, &mut js)
    );
    for (key, label, value) in [
        (
            "baseline.js_publish_each",
            "JetStream publish, each ack awaited",
            js.publish_each,
        ),
        (
            "baseline.js_publish_pipelined",
            "JetStream publish, pipelined (256 acks in flight)",
            js.publish_pipelined,
        ),
        (
            "baseline.js_pull_consume",
            "JetStream pull consume (ack each)",
            js.consume,
        ),
    ] {
        if let Some(value) = value {
            report.value(key, label, value, "msgs/s");
        }
    }

    let _ = phase!(report, "baseline: gRPC unary echo, 64 in flight", async {
        let rate = baseline::echo(plan.baseline, 64).await?;
        report.value(
            "baseline.grpc_echo_64",
            "gRPC unary echo (health Check), 64 in flight",
            rate,
            "calls/s",
        );
        Ok::<_, anyhow::Error>(())
    });
}

/// Opens the watches of every street's console (at the street tier) and of the district's, then
/// sends one report per grid: grids whose report the village refuses as outside every grid (not
/// seeded) are left out from then on.
async fn warm_up(
    plan: &Plan,
    seeds: &Path,
    world: &mut World,
    setup: &Setup,
    tracker: &Arc<Tracker>,
    report: &mut Report,
) -> anyhow::Result<Field> {
    let grids = load::grids(seeds)?;
    let village = world.tier("village")?.url();
    let mut field =
        Field::connect(&village, plan.clients, &setup.key, grids, tracker.clone()).await?;
    let connect = |url: String| async move {
        tonic::transport::Endpoint::from_shared(url.clone())?
            .tcp_nodelay(true)
            .connect_timeout(Duration::from_secs(5))
            .connect()
            .await
            .with_context(|| format!("cannot connect to {url}"))
    };
    let street = connect(world.tier("street")?.url()).await?;
    let district = connect(world.tier("district")?.url()).await?;
    for code in field.streets() {
        let persona = format!("op-{code}000");
        let token = load::persona(&setup.key, &persona)?;
        let handle = load::watch(
            street.clone(),
            token,
            Side::Street,
            persona,
            tracker.clone(),
        )
        .await?;
        world.watches.push(handle);
    }
    let persona = format!("op-{}000000", load::SCOPE);
    let token = load::persona(&setup.key, &persona)?;
    let handle = load::watch(district, token, Side::District, persona, tracker.clone()).await?;
    world.watches.push(handle);

    let log = Log::new();
    let spots: Vec<(u64, String, (f64, f64))> = field
        .grids()
        .iter()
        .enumerate()
        .map(|(n, g)| (n as u64, g.code.clone(), g.spots[0]))
        .collect();
    let outcomes: Vec<(String, Result<(), tonic::Status>)> = futures::stream::iter(spots)
        .map(|(n, code, spot)| {
            let (field, log) = (&field, &log);
            async move { (code, field.report_at(n, spot, Instant::now(), log).await) }
        })
        .buffer_unordered(plan.clients)
        .collect()
        .await;
    let outside: Vec<String> = outcomes
        .iter()
        .filter(|(_, o)| matches!(o, Err(s) if s.code() == tonic::Code::InvalidArgument))
        .map(|(code, _)| code.clone())
        .collect();
    errors(report, "warm-up", &log);
    anyhow::ensure!(
        log.ok() > 0,
        "the village took none of the {} warm-up reports",
        outcomes.len()
    );
    if !outside.is_empty() {
        report.note(format!(
            "{} grid(s) of the seeds are not in the tiers' registry, no reports there: {}",
            outside.len(),
            outside.join(", ")
        ));
        field.keep_grids(|g| !outside.contains(&g.code));
    }
    log.wait(
        &[Side::Street, Side::District],
        Duration::from_secs(60),
        "the warm-up reports",
    )
    .await?;
    Ok(field)
}
