//! The backlog: the street pauses while the village takes reports, then resumes, and the bench
//! measures how fast it catches up and how live reports fare meanwhile.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::Plan;
use crate::load::{self, Field, Log, Side, Tracker, Until, closed_loop, open_loop};
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
    tracker: &Tracker,
    meter: &mut Meter,
    report: &mut Report,
) -> anyhow::Result<()> {
    world.tier("street")?.pause().await?;
    let result = drain_paused(plan, world, setup, field, tracker, meter, report).await;
    let street = world.tier("street")?;
    if street.is_paused() {
        street.resume().await?;
    }
    result
}

async fn drain_paused(
    plan: &Plan,
    world: &mut World,
    setup: &Setup,
    field: &Arc<Field>,
    tracker: &Tracker,
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

    let js = async_nats::jetstream::new(
        tokio::time::timeout(
            Duration::from_secs(10),
            async_nats::connect(&setup.nats_url),
        )
        .await
        .context("no connection to nats-server within 10 s")??,
    );
    let durable = format!("street-{}", load::SCOPE);

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

    // Caught up when the street's watch has shown every backlog report. The street's durable
    // consumer with nothing pending is the second witness, for a watch that broke on the way.
    // The drain is watched for at most `plan.drain_window`: a street that has not caught up by
    // then is reported with the rate it reached, not waited for.
    let window_end = resumed + plan.drain_window;
    let breaks_before = tracker.breaks_of(Side::Street);
    let mut consumer_idle: Option<Instant> = None;
    let mut next_look = Instant::now();
    let (end, caught_up) = loop {
        if backlog.arrivals(Side::Street) >= taken {
            break (backlog.last_arrival(Side::Street).unwrap_or(resumed), true);
        }
        if Instant::now() >= next_look {
            next_look = Instant::now() + Duration::from_millis(200);
            if consumer_idle.is_none() && street_consumer_idle(&js, &durable).await {
                consumer_idle = Some(Instant::now());
            }
        }
        if let Some(idle) = consumer_idle
            && tracker.breaks_of(Side::Street) > breaks_before
            && idle.elapsed() > Duration::from_secs(5)
        {
            report.note(
                "the street's watch broke during the drain: caught up is when its consumer had \
                 nothing pending"
                    .into(),
            );
            break (idle, true);
        }
        if Instant::now() > window_end {
            break (Instant::now(), false);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let after = meter.snapshot().await;
    stop.store(true, Ordering::Relaxed);
    let applied = if caught_up {
        taken
    } else {
        backlog.arrivals(Side::Street)
    };
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
    if let Some(idle) = consumer_idle {
        report.value(
            "system.drain.consumer_idle_s",
            "… until the street's consumer had nothing pending",
            idle.saturating_duration_since(resumed).as_secs_f64(),
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

/// Whether the street's durable consumer has nothing left to deliver or to be acknowledged.
async fn street_consumer_idle(js: &async_nats::jetstream::Context, durable: &str) -> bool {
    let ask = async {
        let stream = js.get_stream("WANGGE_CASES").await.ok()?;
        let info = stream.consumer_info(durable).await.ok()?;
        Some(info.num_pending == 0 && info.num_ack_pending == 0)
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(2), ask).await,
        Ok(Some(true))
    )
}
