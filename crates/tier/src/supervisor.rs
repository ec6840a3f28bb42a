//! The supervisor of a tier's background work (relay, consumer, receipts, reconciler, answers,
//! pruner): nothing is spawned and forgotten.
//!
//! A task that ends or panics before shutdown is logged at error level and started again after a
//! pause; while it is down the tier reports NOT_SERVING. A task that keeps failing (more than
//! `max_restarts` within `window`) makes the supervisor give up: the tier stops and exits non-zero,
//! so its service manager restarts the whole process.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info};

/// When to give up on a task.
#[derive(Debug, Clone)]
pub struct RestartPolicy {
    pub max_restarts: usize,
    pub window: Duration,
    /// The pause before a restart, times the restarts within the window.
    pub pause: Duration,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        RestartPolicy {
            max_restarts: 5,
            window: Duration::from_secs(600),
            pause: Duration::from_secs(1),
        }
    }
}

/// A supervised task as the operator sees it.
#[derive(Debug, Clone, Default)]
pub struct TaskState {
    pub running: bool,
    pub restarts: u32,
    pub last_error: Option<String>,
    recent: Vec<Instant>,
}

#[derive(Debug)]
struct Inner {
    policy: RestartPolicy,
    stop: CancellationToken,
    tracker: TaskTracker,
    tasks: Mutex<BTreeMap<&'static str, TaskState>>,
    /// Set when a task failed too often: what failed.
    gave_up: Mutex<Option<String>>,
    failed: CancellationToken,
    healthy: watch::Sender<bool>,
}

/// Runs and watches the background tasks of one tier.
#[derive(Debug, Clone)]
pub struct Supervisor {
    inner: Arc<Inner>,
}

impl Supervisor {
    pub fn new(policy: RestartPolicy) -> Supervisor {
        Supervisor {
            inner: Arc::new(Inner {
                policy,
                stop: CancellationToken::new(),
                tracker: TaskTracker::new(),
                tasks: Mutex::new(BTreeMap::new()),
                gave_up: Mutex::new(None),
                failed: CancellationToken::new(),
                healthy: watch::Sender::new(true),
            }),
        }
    }

    fn tasks(&self) -> std::sync::MutexGuard<'_, BTreeMap<&'static str, TaskState>> {
        self.inner.tasks.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts `task` (again after each unexpected end) until shutdown; it gets a token that is
    /// cancelled when the tier stops.
    pub fn spawn<F, Fut>(&self, name: &'static str, task: F)
    where
        F: Fn(CancellationToken) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        self.tasks().insert(name, TaskState::default());
        let supervisor = self.clone();
        self.inner.tracker.spawn(async move {
            let stop = supervisor.inner.stop.clone();
            loop {
                supervisor.update(name, |state| state.running = true);
                let outcome = tokio::spawn(task(stop.child_token())).await;
                if stop.is_cancelled() {
                    supervisor.update(name, |state| state.running = false);
                    return;
                }
                let why = match outcome {
                    Ok(Ok(())) => "ended".to_owned(),
                    Ok(Err(error)) => format!("failed: {error:#}"),
                    Err(join) if join.is_panic() => {
                        format!("panicked: {}", panic_message(join.into_panic()))
                    }
                    Err(_) => "was cancelled".to_owned(),
                };
                error!(task = name, reason = %why, "background task stopped unexpectedly");
                let restarts = supervisor.failed_once(name, &why);
                if restarts > supervisor.inner.policy.max_restarts {
                    error!(
                        task = name,
                        restarts, "background task keeps failing, stopping the tier"
                    );
                    *supervisor
                        .inner
                        .gave_up
                        .lock()
                        .unwrap_or_else(|e| e.into_inner()) = Some(format!("{name} {why}"));
                    supervisor.inner.failed.cancel();
                    return;
                }
                let pause = supervisor.inner.policy.pause * restarts as u32;
                tokio::select! {
                    _ = tokio::time::sleep(pause) => {}
                    _ = stop.cancelled() => return,
                }
                info!(task = name, "background task restarting");
            }
        });
    }

    fn update(&self, name: &'static str, change: impl FnOnce(&mut TaskState)) {
        let all_running = {
            let mut tasks = self.tasks();
            if let Some(state) = tasks.get_mut(name) {
                change(state);
            }
            tasks.values().all(|t| t.running)
        };
        if !self.inner.stop.is_cancelled() {
            self.inner.healthy.send_replace(all_running);
        }
    }

    /// Records an unexpected end; returns the restarts within the window.
    fn failed_once(&self, name: &'static str, why: &str) -> usize {
        let window = self.inner.policy.window;
        let mut recent = 0;
        self.update(name, |state| {
            state.running = false;
            state.restarts += 1;
            state.last_error = Some(why.to_owned());
            state.recent.retain(|at| at.elapsed() < window);
            state.recent.push(Instant::now());
            recent = state.recent.len();
        });
        recent
    }

    /// Every task's state, by name.
    pub fn states(&self) -> Vec<(&'static str, TaskState)> {
        self.tasks().iter().map(|(n, s)| (*n, s.clone())).collect()
    }

    /// True while every task runs.
    pub fn healthy(&self) -> watch::Receiver<bool> {
        self.inner.healthy.subscribe()
    }

    /// Resolves when a task failed too often; then [`Self::gave_up`] says which.
    pub async fn failed(&self) {
        self.inner.failed.cancelled().await;
    }

    pub fn gave_up(&self) -> Option<String> {
        self.inner
            .gave_up
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Stops every task and waits until they have finished what they were doing.
    pub async fn shutdown(&self) {
        self.inner.stop.cancel();
        self.inner.tracker.close();
        self.inner.tracker.wait().await;
    }
}

fn panic_message(panic: Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".to_owned())
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    fn quick() -> RestartPolicy {
        RestartPolicy {
            max_restarts: 3,
            window: Duration::from_secs(60),
            pause: Duration::from_millis(10),
        }
    }

    #[tokio::test]
    async fn a_panicking_task_is_restarted_and_reported() {
        let supervisor = Supervisor::new(quick());
        let starts = Arc::new(AtomicUsize::new(0));
        let counted = starts.clone();
        supervisor.spawn("flaky", move |stop| {
            let counted = counted.clone();
            async move {
                if counted.fetch_add(1, Ordering::SeqCst) == 0 {
                    panic!("first run breaks");
                }
                stop.cancelled().await;
                Ok(())
            }
        });
        let mut healthy = supervisor.healthy();
        tokio::time::timeout(Duration::from_secs(5), async {
            while starts.load(Ordering::SeqCst) < 2 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .unwrap();
        healthy.wait_for(|h| *h).await.unwrap();
        let states = supervisor.states();
        assert_eq!(states.len(), 1);
        let (name, state) = &states[0];
        assert_eq!(*name, "flaky");
        assert!(state.running);
        assert_eq!(state.restarts, 1);
        assert!(
            state
                .last_error
                .as_deref()
                .unwrap()
                .contains("first run breaks"),
            "{state:?}"
        );
        assert!(supervisor.gave_up().is_none());
        supervisor.shutdown().await;
        assert!(!supervisor.states()[0].1.running);
    }

    #[tokio::test]
    async fn a_task_that_keeps_failing_makes_the_supervisor_give_up() {
        let supervisor = Supervisor::new(quick());
        supervisor.spawn("steady", |stop| async move {
            stop.cancelled().await;
            Ok(())
        });
        supervisor.spawn("broken", |_stop| async {
            anyhow::bail!("database schema drifted")
        });
        tokio::time::timeout(Duration::from_secs(5), supervisor.failed())
            .await
            .expect("gives up");
        let why = supervisor.gave_up().unwrap();
        assert!(
            why.contains("broken") && why.contains("schema drifted"),
            "{why}"
        );
        assert!(
            !*supervisor.healthy().borrow(),
            "not serving with a task down"
        );
        supervisor.shutdown().await;
    }

    #[tokio::test]
    async fn a_task_that_ends_early_counts_as_a_failure() {
        let supervisor = Supervisor::new(quick());
        supervisor.spawn("short", |_stop| async { Ok(()) });
        tokio::time::timeout(Duration::from_secs(5), supervisor.failed())
            .await
            .expect("gives up");
        assert!(supervisor.gave_up().unwrap().contains("ended"));
        supervisor.shutdown().await;
    }
}
