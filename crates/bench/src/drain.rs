//! The backlog: the street pauses while the village takes reports, then resumes, and the bench
//! measures how fast it catches up and how live reports fare meanwhile.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::Plan;
use crate::load::{self, Field, Log, Side, Until, closed_loop, open_loop};
use crate::meter::Meter;
use crate::phases::{Setup, World, errors};
use crate::report::{Dist, Report};

/// The street pauses (SIGSTOP) while the village takes `plan.backlog` reports (and the district
/// keeps up); once the district holds them all the street resumes, and the bench measures how
/// fast it applies the backlog while a few live reports a second go on.
pub(crate) async fn drain(
    plan: &Plan,
    world: &mut World,
    setup: &Setup,
    field: &Arc<Field>,
    meter: &mut Meter,
    report: &mut Report,
) -> anyhow::Result<()> {
    let street = StreetStatus::connect(world.tier("street")?.url(), &setup.key).await?;
    let before = street
        .cases()
        .await
        .context("the street's GetStatus before the pause")?;
    world.tier("street")?.pause().await?;
    let result = drain_paused(plan, world, (&street, before), field, meter, report).await;
    let street = world.tier("street")?;
    if street.is_paused() {
        street.resume().await?;
    }
    result
}

async fn drain_paused(
    plan: &Plan,
    world: &mut World,
    (street, held_before): (&StreetStatus, usize),
    field: &Arc<Field>,
    meter: &mut Meter,
    report: &mut Report,
) -> anyhow::Result<()> {
    let backlog = Log::new();
    // A village slower than 500 reports/s builds a smaller backlog rather than a longer run.
    let intake_within = Duration::from_secs_f64((plan.backlog as f64 / 500.0).max(20.0));
    closed_loop(
        field,
        plan.clients,
        Until::Sent(plan.backlog, intake_within),
        &backlog,
    )
    .await?;
    let taken = backlog.ok();
    anyhow::ensure!(taken > 0, "the village took no report of the backlog");
    if let (Some(first), Some(last)) = (backlog.first_start(), backlog.last_reply()) {
        report.value(
            "system.drain.intake_street_paused",
            "intake while the street is paused",
            taken as f64 / (last - first).as_secs_f64(),
            "reports/s",
        );
    }
    errors(report, "backlog", &backlog);
    let within = Duration::from_secs_f64((taken as f64 / 300.0).max(60.0));
    backlog
        .wait(
            &[Side::District],
            within,
            "the backlog at the district (before the street resumes)",
        )
        .await?;

    let before = meter.snapshot().await;
    let resumed = Instant::now();
    world.tier("street")?.resume().await?;
    let stop = Arc::new(AtomicBool::new(false));
    let live = Log::new();
    let live_run = {
        let (field, live, stop) = (field.clone(), live.clone(), stop.clone());
        let rate = plan.live_rate;
        let most = plan.drain_window;
        tokio::spawn(async move { open_loop(&field, rate, most, &live, Some(stop)).await })
    };

    // Caught up when the street holds the backlog and every live report answered so far, as its
    // GetStatus tells (a kept count, not a `count(*)`; asked every 100 ms). The street's watch is
    // followed too, but not waited for: a watch that falls behind a fast drain is dropped by the
    // tier and listed again, and what the list shows arrives when the list comes.
    // The drain is watched for at most `plan.drain_window`: a street that has not caught up by
    // then is reported with the rate it reached, not waited for.
    let window_end = resumed + plan.drain_window;
    let mut held_all: Option<Instant> = None;
    let mut held_backlog = 0;
    let mut next_look = Instant::now();
    let (end, caught_up) = loop {
        if held_all.is_none() && Instant::now() >= next_look {
            next_look = Instant::now() + Duration::from_millis(100);
            if let Ok(held) = street.cases().await {
                held_backlog = held.saturating_sub(held_before).min(taken);
                if held >= held_before + taken + live.ok() {
                    held_all = Some(Instant::now());
                }
            }
        }
        if let Some(held) = held_all
            && (backlog.arrivals(Side::Street) >= taken || held.elapsed() > Duration::from_secs(5))
        {
            break (held, true);
        }
        if Instant::now() > window_end {
            break (Instant::now(), false);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let after = meter.snapshot().await;
    stop.store(true, Ordering::Relaxed);
    let applied = if caught_up { taken } else { held_backlog };
    let took = end.saturating_duration_since(resumed);
    report.value(
        "system.drain.backlog",
        "backlog taken by the village",
        taken as f64,
        "reports",
    );
    let window = plan.drain_window.as_secs_f64();
    report.value(
        "system.drain.rate",
        &if caught_up {
            "drain at the street (resume → caught up)".to_owned()
        } else {
            format!("drain at the street (first {window:.0} s, NOT caught up)")
        },
        applied as f64 / took.as_secs_f64(),
        "events/s",
    );
    if caught_up {
        report.value(
            "system.drain.seconds",
            "… time to catch up",
            took.as_secs_f64(),
            "s",
        );
    } else {
        report.note(format!(
            "the street held {applied} of the {taken} backlog reports when the {window:.0} s \
             drain window closed: the drain rate is over that window"
        ));
    }
    report.json_only(
        "system.drain.caught_up",
        "caught up within the drain window (1 yes, 0 no)",
        if caught_up { 1.0 } else { 0.0 },
        "",
    );
    if backlog.arrivals(Side::Street) >= taken
        && let Some(watched) = backlog.last_arrival(Side::Street)
    {
        report.value(
            "system.drain.watch_s",
            "… until the street's watch showed the last of it",
            watched.saturating_duration_since(resumed).as_secs_f64(),
            "s",
        );
    }
    report.parts(
        "system.drain.cpu_per_event",
        "CPU per backlog event applied (during the drain)",
        meter.per_unit(&before, &after, applied as f64),
        "ms",
    );
    tokio::time::timeout(Duration::from_secs(30), live_run)
        .await
        .context("the live reports did not finish within 30 s of the drain's end")???;
    // Live reports still queued behind an unfinished drain are not waited for long.
    let wait = if caught_up { 30 } else { 5 };
    let held = live
        .wait(
            &[Side::Street],
            Duration::from_secs(wait),
            "the live reports at the street",
        )
        .await;
    report.dist(
        "system.drain.live_to_street",
        &format!(
            "live report → street during the drain ({}/s)",
            plan.live_rate
        ),
        Dist::of(&mut live.arrival_latencies(Side::Street)),
    );
    report.value(
        "system.drain.live_held",
        &format!(
            "… live reports held at the street (of {} answered)",
            live.ok()
        ),
        live.arrivals(Side::Street) as f64,
        "reports",
    );
    errors(report, "live during the drain", &live);
    if caught_up {
        held
    } else {
        if let Err(error) = held {
            report.note(format!("{error:#} (the street had not caught up)"));
        }
        Ok(())
    }
}

/// The street's `GetStatus`, as its admin asks it.
struct StreetStatus {
    channel: tonic::transport::Channel,
    token: tonic::metadata::MetadataValue<tonic::metadata::Ascii>,
}

impl StreetStatus {
    async fn connect(url: String, key: &wangge_auth::SigningKey) -> anyhow::Result<StreetStatus> {
        Ok(StreetStatus {
            channel: load::connect(url, Duration::from_secs(2)).await?,
            token: load::persona(key, "admin")?,
        })
    }

    /// The cases the street holds.
    async fn cases(&self) -> anyhow::Result<usize> {
        let status = load::status(&self.channel, &self.token).await?;
        Ok(usize::try_from(status.cases)?)
    }
}
