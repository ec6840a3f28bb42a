//! When each case first showed at the street console: a `WatchCases` stream on the street, opened
//! again whenever it breaks, noting the first sighting of every case. Against the instant the
//! village acknowledged the report this gives the report→street latency a console operator sees.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::Channel;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use wangge_proto as pb;

use super::workload::CALL_TIMEOUT;
use crate::cluster::{ConsoleClient, as_actor};
use crate::fixtures::STREET_OPERATOR;

/// First sightings of cases on the street's console watch.
pub struct StreetWatch {
    seen: Arc<Mutex<HashMap<String, Instant>>>,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl StreetWatch {
    pub fn start(street: Channel) -> StreetWatch {
        let seen = Arc::new(Mutex::new(HashMap::new()));
        let stop = CancellationToken::new();
        let task = tokio::spawn(watch(
            ConsoleClient::new(street),
            seen.clone(),
            stop.clone(),
        ));
        StreetWatch { seen, stop, task }
    }

    /// When the case first showed, if it did while the watch was open.
    pub fn first_seen(&self, case_id: &str) -> Option<Instant> {
        self.seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(case_id)
            .copied()
    }

    pub async fn stop(mut self) {
        self.stop.cancel();
        let _ = (&mut self.task).await;
    }
}

impl Drop for StreetWatch {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn watch(
    mut console: ConsoleClient,
    seen: Arc<Mutex<HashMap<String, Instant>>>,
    stop: CancellationToken,
) {
    while !stop.is_cancelled() {
        let request = as_actor(STREET_OPERATOR, pb::WatchCasesRequest::default());
        if let Ok(Ok(stream)) =
            tokio::time::timeout(CALL_TIMEOUT, console.watch_cases(request)).await
        {
            let mut stream = stream.into_inner();
            loop {
                let update = tokio::select! {
                    _ = stop.cancelled() => return,
                    update = stream.message() => update,
                };
                // The stream ended or broke (the street restarted, or the watcher lagged): reopen.
                let Ok(Some(update)) = update else { break };
                if let Some(case) = update.case {
                    let now = Instant::now();
                    seen.lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .entry(case.id)
                        .or_insert(now);
                }
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
    }
}

/// Percentiles of a set of latencies, in milliseconds.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct Percentiles {
    pub count: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl Percentiles {
    pub fn of(mut latencies: Vec<Duration>) -> Percentiles {
        latencies.sort();
        let at = |p: f64| {
            if latencies.is_empty() {
                return 0.0;
            }
            let index = ((latencies.len() as f64 - 1.0) * p).round() as usize;
            latencies[index].as_secs_f64() * 1000.0
        };
        Percentiles {
            count: latencies.len(),
            p50_ms: at(0.50),
            p99_ms: at(0.99),
            max_ms: at(1.0),
        }
    }
}
