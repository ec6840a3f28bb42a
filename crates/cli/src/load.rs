//! `wangge load`: a burst of reports against running tiers, with the figures an operator asks for:
//! intake rate and latency at the village, and how long until every report reached the district.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use tonic::transport::Channel;
use wangge_proto as pb;

use crate::credentials::{Credentials, with_token};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    village: String,
    #[arg(long, default_value = "http://127.0.0.1:50052")]
    street: String,
    #[arg(long, default_value = "http://127.0.0.1:50053")]
    district: String,
    #[arg(long, default_value = "seeds")]
    seeds: PathBuf,
    /// How many reports to send.
    #[arg(long, default_value_t = 2000)]
    reports: usize,
    /// How many field apps send at once.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Report only in grids under this org prefix (it must lie in the village's scope).
    #[arg(long, default_value = "350205")]
    grid_prefix: String,
    /// Only send: do not wait for the reports to reach the street and the district (to build a backlog).
    #[arg(long)]
    no_wait: bool,
    #[command(flatten)]
    credentials: Credentials,
    #[command(flatten)]
    tls: crate::tls::Tls,
}

pub(crate) async fn status(channel: &Channel, token: &str) -> anyhow::Result<pb::TierStatus> {
    let mut admin = pb::admin_service_client::AdminServiceClient::new(channel.clone());
    Ok(admin
        .get_status(with_token(token, pb::GetStatusRequest {})?)
        .await?
        .into_inner())
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index].as_secs_f64() * 1000.0
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let points: Vec<(f64, f64)> = wangge_seed::load_grids(&args.seeds)
        .context("reading the seed grids")?
        .iter()
        .filter(|g| g.code.as_str().starts_with(&args.grid_prefix))
        .map(wangge_seed::interior_point)
        .collect();
    anyhow::ensure!(
        !points.is_empty(),
        "no seeded grid under {}",
        args.grid_prefix
    );
    let connect = |url: &str| args.tls.endpoint(url).map(|e| e.connect_lazy());
    let (village, street, district) = (
        connect(&args.village)?,
        connect(&args.street)?,
        connect(&args.district)?,
    );
    let observer = args.credentials.token_for("observer")?;
    // Cases already at the street and district, to know when the burst has arrived.
    let before = if args.no_wait {
        [0, 0]
    } else {
        [
            status(&street, &observer).await?.cases,
            status(&district, &observer).await?.cases,
        ]
    };

    println!(
        "  sending {} reports from {} field apps over {} grids",
        args.reports,
        args.concurrency,
        points.len()
    );
    let points = Arc::new(points);
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for app in 0..args.concurrency {
        let (points, next, channel) = (points.clone(), next.clone(), village.clone());
        let total = args.reports;
        // Each field app is its own grid worker (each has its own rate limit), covering the grids
        // of the burst.
        let token = args.credentials.sign(&wangge_auth::Claims::new(
            &format!("gw-load-{app}"),
            &["grid_worker"],
            &[args.grid_prefix.as_str()],
            &[],
            wangge_auth::dev::now(),
            3600,
        ))?;
        tasks.push(tokio::spawn(async move {
            let mut field = pb::field_app_service_client::FieldAppServiceClient::new(channel);
            let mut latencies = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    return Ok::<_, anyhow::Error>(latencies);
                }
                let (longitude, latitude) = points[i % points.len()];
                let request = with_token(
                    &token,
                    pb::ReportCaseRequest {
                        client_id: uuid::Uuid::now_v7().to_string(),
                        category_code: "szcg-01-01".into(),
                        description: format!("负载测试 {i}"),
                        location: Some(pb::GeoPoint {
                            longitude,
                            latitude,
                        }),
                        ..Default::default()
                    },
                )?;
                let sent = Instant::now();
                field.report_case(request).await?;
                latencies.push(sent.elapsed());
            }
        }));
    }
    let mut latencies = Vec::with_capacity(args.reports);
    for task in tasks {
        latencies.extend(task.await??);
    }
    let intake = started.elapsed();
    latencies.sort();
    let n = args.reports as f64;
    println!(
        "  intake at the village: {:.0} reports/s ({:.2} s)",
        n / intake.as_secs_f64(),
        intake.as_secs_f64()
    );
    println!(
        "  ReportCase latency: p50 {:.1} ms, p95 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        percentile(&latencies, 0.50),
        percentile(&latencies, 0.95),
        percentile(&latencies, 0.99),
        percentile(&latencies, 1.0)
    );
    if args.no_wait {
        return Ok(());
    }

    // Every report travels village -> NATS -> street and district.
    let mut arrived = [Duration::ZERO; 2];
    for (slot, (channel, base)) in [(&street, before[0]), (&district, before[1])]
        .into_iter()
        .enumerate()
    {
        let deadline = Instant::now() + Duration::from_secs(600);
        loop {
            let now = status(channel, &observer).await?;
            if now.cases >= base + args.reports as u64 {
                arrived[slot] = started.elapsed();
                break;
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "reports did not all arrive within 10 minutes"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let village_after = status(&village, &observer).await?;

    println!(
        "  all at the street after {:.2} s, at the district after {:.2} s ({:.0} reports/s end to end)",
        arrived[0].as_secs_f64(),
        arrived[1].as_secs_f64(),
        n / arrived[1].as_secs_f64()
    );
    println!(
        "  village outbox now {} (dead letters: village {}, street {}, district {})",
        village_after.outbox_depth,
        village_after.dead_letters,
        status(&street, &observer).await?.dead_letters,
        status(&district, &observer).await?.dead_letters
    );
    Ok(())
}
