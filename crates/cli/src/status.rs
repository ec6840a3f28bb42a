//! `wangge status`: every tier's replication health at a glance, for the operator on call.
//!
//! Each tier is asked at once, with its own deadline, so a paused or unreachable tier is reported
//! as such and never holds up the others. The exit code says whether all is well: 0 when every
//! tier answered with no problem, 1 when a tier reports a problem, 2 when a tier did not answer.

use std::time::Duration;

use wangge_proto as pb;

use crate::credentials::{Credentials, with_token};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The tiers' gRPC addresses.
    #[arg(default_values_t = ["http://127.0.0.1:50051".to_owned(), "http://127.0.0.1:50052".to_owned(), "http://127.0.0.1:50053".to_owned()])]
    tiers: Vec<String>,
    /// How long each tier has to answer, in milliseconds.
    #[arg(long, default_value_t = 3000)]
    timeout_ms: u64,
    /// Whose token asks (an admin of the tiers' scope; without --token, the demo's observer).
    #[arg(long, default_value = "observer")]
    persona: String,
    #[command(flatten)]
    credentials: Credentials,
    #[command(flatten)]
    tls: crate::tls::Tls,
}

/// What one tier said, or why it said nothing.
type Answer = Result<pb::TierStatus, String>;

async fn ask(tls: &crate::tls::Tls, url: &str, token: &str, deadline: Duration) -> Answer {
    let attempt = async {
        let channel = tls
            .endpoint(url)
            .map_err(|e| format!("{e:#}"))?
            .connect_timeout(deadline)
            .connect()
            .await
            .map_err(|e| format!("unreachable: {e}"))?;
        let mut admin = pb::admin_service_client::AdminServiceClient::new(channel);
        admin
            .get_status(with_token(token, pb::GetStatusRequest {}).map_err(|e| e.to_string())?)
            .await
            .map(|r| r.into_inner())
            .map_err(|s| format!("{:?}: {}", s.code(), s.message()))
    };
    tokio::time::timeout(deadline, attempt)
        .await
        .unwrap_or_else(|_| {
            Err(format!(
                "no answer within {} ms (paused or overloaded?)",
                deadline.as_millis()
            ))
        })
}

fn tier(status: &pb::TierStatus) -> &'static str {
    match status.tier() {
        pb::Tier::Village => "village",
        pb::Tier::Street => "street",
        pb::Tier::District => "district",
        pb::Tier::Unspecified => "?",
    }
}

/// The lines printed for one tier.
fn describe(url: &str, answer: &Answer) -> Vec<String> {
    let status = match answer {
        Ok(status) => status,
        Err(why) => return vec![format!("{url}  DOWN  {why}")],
    };
    let verdict = if status.problems.is_empty() {
        "ok"
    } else {
        "ATTENTION"
    };
    let mut lines = vec![format!(
        "{url}  {} {}  {verdict}  serving={} nats={}",
        tier(status),
        status.org_prefix,
        status.serving,
        if status.nats_connected {
            "connected"
        } else {
            "DISCONNECTED"
        },
    )];
    let awaiting: Vec<String> = status
        .awaiting_confirmation
        .iter()
        .map(|p| {
            let name = match p.tier() {
                pb::Tier::Village => "village",
                pb::Tier::Street => "street",
                pb::Tier::District => "district",
                pb::Tier::Unspecified => "?",
            };
            format!("{name} {} (oldest {:.0} s)", p.events, p.oldest_seconds)
        })
        .collect();
    lines.push(format!(
        "  cases {}  outbox {} (oldest {:.1} s; unpublished {}; awaiting {})",
        status.cases,
        status.outbox_depth,
        status.outbox_oldest_seconds,
        status.outbox_unpublished,
        if awaiting.is_empty() {
            "none".to_owned()
        } else {
            awaiting.join(", ")
        },
    ));
    if let Some(consumer) = &status.consumer {
        lines.push(if consumer.known {
            format!(
                "  consumer: pending {}, ack-pending {}, redelivered {}",
                consumer.pending, consumer.ack_pending, consumer.redelivered
            )
        } else {
            format!("  consumer: unknown ({})", consumer.error)
        });
    }
    if let Some(parked) = &status.parked {
        let mut line = format!(
            "  parked: {} events of {} cases",
            parked.events, parked.cases
        );
        if parked.events > 0 {
            line.push_str(&format!(", oldest {:.0} s", parked.oldest_seconds));
            for case in parked.sample.iter().take(5) {
                line.push_str(&format!(
                    "\n    {} holds v{}, waits for v{} ({:.0} s)",
                    case.case_id,
                    case.have,
                    case.have + 1,
                    case.parked_seconds
                ));
            }
        }
        lines.push(line);
    }
    lines.push(format!(
        "  dead letters: {} incoming, {} outgoing",
        status.dead_letters, status.dead_letters_outgoing
    ));
    if let Some(r) = &status.reconciliation {
        lines.push(match &r.last_run {
            Some(at) => format!(
                "  reconciliation: run {} (last {} s ago, {:.2} s): compared {}, repaired {} cases / {} events, confirmed {}; since start {} cases{}",
                r.runs,
                chrono::Utc::now().timestamp() - at.seconds,
                r.last_run_seconds,
                r.compared,
                r.cases_repaired,
                r.events_fetched,
                r.confirmed,
                r.total_cases_repaired,
                if r.unreachable.is_empty() {
                    String::new()
                } else {
                    format!("; no answer from {}", r.unreachable.join(", "))
                },
            ),
            None => "  reconciliation: not run yet".to_owned(),
        });
    }
    let tasks: Vec<String> = status
        .tasks
        .iter()
        .map(|t| {
            let state = if t.running { "up" } else { "DOWN" };
            match t.restarts {
                0 => format!("{} {state}", t.name),
                n => format!("{} {state} ({n} restarts)", t.name),
            }
        })
        .collect();
    lines.push(format!("  tasks: {}", tasks.join(", ")));
    if let Some(clock) = &status.clock {
        let last = if clock.last_scan_seconds_ago < 0.0 {
            "no scan yet".to_owned()
        } else {
            format!("last scan {:.0} s ago", clock.last_scan_seconds_ago)
        };
        lines.push(format!(
            "  clock: {} open cases, {} supervisions raised, {last}, calendar until {}",
            clock.open_cases,
            clock.supervisions_raised,
            if clock.calendar_until.is_empty() {
                "none"
            } else {
                clock.calendar_until.as_str()
            }
        ));
    }
    for problem in &status.problems {
        lines.push(format!("  ! {problem}"));
    }
    for warning in &status.warnings {
        lines.push(format!("  ~ {warning}"));
    }
    lines
}

/// Prints every tier; returns the exit code.
pub async fn run(args: Args) -> i32 {
    let deadline = Duration::from_millis(args.timeout_ms.max(1));
    let token = match args.credentials.token_for(&args.persona) {
        Ok(token) => token,
        Err(error) => {
            eprintln!("wangge status: {error:#}");
            return 2;
        }
    };
    let answers = futures::future::join_all(
        args.tiers
            .iter()
            .map(|url| ask(&args.tls, url, &token, deadline)),
    )
    .await;
    let mut code = 0;
    for (url, answer) in args.tiers.iter().zip(&answers) {
        for line in describe(url, answer) {
            println!("{line}");
        }
        code = code.max(match answer {
            Err(_) => 2,
            Ok(status) if !status.problems.is_empty() => 1,
            Ok(_) => 0,
        });
    }
    code
}
