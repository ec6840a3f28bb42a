//! The fault suite's short form (`wangge-chaos --short`): under every fault, nothing acknowledged is
//! lost or doubled and the tiers converge without a restart.

use wangge_tests::chaos::{self, Options, report};

/// Runs the short-form faults whose slug contains one of `only` (all when empty) and fails with
/// the table when a row did not pass; the tiers' logs are kept then.
async fn survive(only: &[&str]) {
    let logs = tempfile::tempdir().unwrap();
    let options = Options {
        only: only.iter().map(|s| (*s).to_owned()).collect(),
        logs: logs.path().to_owned(),
        ..Options::short()
    };
    let rows = chaos::run(&options).await;
    let summary = format!("{}\n{}", report::table(&rows), report::findings(&rows));
    println!("{summary}");
    let failed: Vec<&str> = rows
        .iter()
        .filter(|r| !r.passed())
        .map(|r| r.slug.as_str())
        .collect();
    if !failed.is_empty() {
        let logs = logs.keep();
        panic!(
            "faults not survived: {failed:?}\n{summary}\ntier logs in {}",
            logs.display()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_every_fault_of_the_short_suite_nothing_acknowledged_is_lost_or_doubled() {
    survive(&[]).await;
}
