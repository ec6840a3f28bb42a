//! The supervisor seen from outside: a real tier binary whose background task fails for good
//! reports NOT_SERVING, logs the task at error level, and exits non-zero once it gives up, so its
//! service manager restarts it (issue 5, point 4).

use std::time::{Duration, Instant};

use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
use wangge_proto::Tier;
use wangge_tests::cluster::STREET_SCOPE;
use wangge_tests::db::TestDb;
use wangge_tests::nats::NatsServer;
use wangge_tests::process::TierProcess;

/// The tier's health as it answers it now; None when it does not answer.
async fn health(tier: &TierProcess) -> Option<i32> {
    let channel = wangge_tests::endpoint(tier.addr, None)
        .connect()
        .await
        .ok()?;
    let answer = HealthClient::new(channel)
        .check(HealthCheckRequest::default())
        .await
        .ok()?;
    Some(answer.into_inner().status)
}

/// The JSON log lines at error level.
fn errors(log: &str) -> Vec<serde_json::Value> {
    log.lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|line| line["level"] == "ERROR")
        .collect()
}

#[tokio::test]
async fn a_background_task_that_keeps_failing_turns_health_not_serving_and_the_tier_exits_non_zero()
{
    wangge_tests::init_logs();
    let nats = NatsServer::start().await;
    let db = TestDb::seeded("supervised").await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("street.log");
    let mut street = TierProcess::start_with_env(
        Tier::Street,
        STREET_SCOPE,
        &db.url,
        &nats.url(),
        Some(log.clone()),
        vec![
            ("WANGGE_LOG__FORMAT".into(), "json".into()),
            // The pruner looks every second, so it meets the fault at once.
            ("WANGGE_INBOX_PRUNE_EVERY_SECS".into(), "1".into()),
        ],
    )
    .await;
    assert_eq!(health(&street).await, Some(ServingStatus::Serving as i32));

    // Schema drift under a running tier: the column only the inbox pruner reads is renamed. Every
    // other task goes on; the pruner's DELETE fails with undefined_column, every time.
    sqlx::query("ALTER TABLE inbox RENAME COLUMN applied_at TO applied_at_drifted")
        .execute(&db.pool().await)
        .await
        .unwrap();

    // While the pruner is down (between its restarts), health says NOT_SERVING.
    let started = Instant::now();
    let mut seen_not_serving = false;
    while started.elapsed() < Duration::from_secs(15) {
        match health(&street).await {
            Some(status) if status == ServingStatus::NotServing as i32 => {
                seen_not_serving = true;
                break;
            }
            _ => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    assert!(
        seen_not_serving,
        "health never NOT_SERVING after the fault:\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );

    // Five restarts within the window (pauses of 1 to 5 s), then the supervisor gives up and the
    // tier stops with a non-zero exit code.
    let exit = street.exited(Duration::from_secs(60)).await;
    assert!(
        !exit.success(),
        "a tier that gave up exits non-zero: {exit:?}"
    );
    assert_eq!(exit.code(), Some(1), "{exit:?}");

    let text = std::fs::read_to_string(&log).unwrap();
    let errors = errors(&text);
    let stopped: Vec<&serde_json::Value> = errors
        .iter()
        .filter(|e| e["message"] == "background task stopped unexpectedly")
        .collect();
    assert!(
        stopped.len() > 5,
        "every failure of the task is logged at error level:\n{text}"
    );
    for line in &stopped {
        assert_eq!(line["task"], "pruner", "only the pruner failed: {line}");
        let reason = line["reason"].as_str().unwrap_or_default();
        assert!(
            reason.contains("inbox pruning failed") && reason.contains("applied_at"),
            "the reason names what failed: {reason}"
        );
    }
    assert!(
        errors.iter().any(|e| {
            e["message"] == "background task keeps failing, stopping the tier"
                && e["task"] == "pruner"
        }),
        "the give-up is logged at error level, naming the task:\n{text}"
    );
}
