//! The tier binaries as child processes, for what only a real process shows: SIGKILL, SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use crate::Channel;
use tokio::process::{Child, Command};
use wangge_proto::Tier;

use crate::free_port;

/// Where the tier binaries are: `WANGGE_BIN_DIR`, else the target dir this test runs from.
pub fn binary(tier: Tier) -> PathBuf {
    let name = match tier {
        Tier::Village => "wangge-village",
        Tier::Street => "wangge-street",
        _ => "wangge-district",
    };
    workspace_binary(name)
}

/// A binary of the workspace (`wangge`, `wangge-seed`, a tier), as `cargo build --bins` left it.
pub fn workspace_binary(name: &str) -> PathBuf {
    let dir = match std::env::var("WANGGE_BIN_DIR") {
        Ok(dir) => PathBuf::from(dir),
        // target/debug/deps/cluster-<hash> or target/debug/wangge-chaos -> target/debug
        Err(_) => {
            let exe = std::env::current_exe().unwrap();
            let dir = exe.parent().unwrap();
            if dir.ends_with("deps") {
                dir.parent().unwrap().to_path_buf()
            } else {
                dir.to_path_buf()
            }
        }
    };
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --workspace --bins` first",
        path.display()
    );
    path
}

/// A tier binary running as a child process.
pub struct TierProcess {
    pub tier: Tier,
    pub addr: SocketAddr,
    scope: String,
    database_url: String,
    nats_url: String,
    /// Where the tier's output goes (appended across restarts); nowhere (logs) and the test's stderr
    /// (panics) when unset.
    log: Option<PathBuf>,
    /// More environment, over the defaults (`RUST_LOG` too).
    env: Vec<(String, String)>,
    child: Option<Child>,
}

impl TierProcess {
    pub async fn start(tier: Tier, scope: &str, database_url: &str, nats_url: &str) -> TierProcess {
        TierProcess::start_logging(tier, scope, database_url, nats_url, None).await
    }

    /// Like [`Self::start`], with the tier's log appended to `log` when given.
    pub async fn start_logging(
        tier: Tier,
        scope: &str,
        database_url: &str,
        nats_url: &str,
        log: Option<PathBuf>,
    ) -> TierProcess {
        TierProcess::start_with_env(tier, scope, database_url, nats_url, log, Vec::new()).await
    }

    /// Like [`Self::start_logging`], with `env` set over the defaults.
    pub async fn start_with_env(
        tier: Tier,
        scope: &str,
        database_url: &str,
        nats_url: &str,
        log: Option<PathBuf>,
        env: Vec<(String, String)>,
    ) -> TierProcess {
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let mut process = TierProcess {
            tier,
            addr,
            scope: scope.to_owned(),
            database_url: database_url.to_owned(),
            nats_url: nats_url.to_owned(),
            log,
            env,
            child: None,
        };
        process.spawn().await;
        process
    }

    async fn spawn(&mut self) {
        // The tiers log to stdout.
        let (stdout, stderr) = match &self.log {
            Some(path) => {
                let file = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
                (Stdio::from(file.try_clone().unwrap()), Stdio::from(file))
            }
            None => (Stdio::null(), Stdio::inherit()),
        };
        let child = Command::new(binary(self.tier))
            .args(["--scope", &self.scope, "--listen", &self.addr.to_string()])
            .env("WANGGE_DATABASE_URL", &self.database_url)
            .env("WANGGE_NATS_URL", &self.nats_url)
            .env(
                "WANGGE_AUTH__PUBLIC_KEYS",
                format!(
                    "[{:?}]",
                    crate::identity::public_key().display().to_string()
                ),
            )
            // Three systems of three tiers run at once in the fault suite, each with a checker
            // reading every tier: 6 connections a tier (54, and 18 for the checkers) keep them well
            // under PostgreSQL's default max_connections (100), also while every pool refills
            // after its connections were terminated and a finished system's backends still exit.
            .env("WANGGE_DATABASE_MAX_CONNECTIONS", "6")
            .env("RUST_LOG", "warn")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(stdout)
            .stderr(stderr)
            .kill_on_drop(true)
            .spawn()
            .expect("start tier binary");
        self.child = Some(child);
        self.until_serving(Duration::from_secs(30)).await;
    }

    /// Waits for SERVING; a process that exits or never serves fails the test with its log's end.
    async fn until_serving(&mut self, within: Duration) {
        let started = std::time::Instant::now();
        loop {
            if crate::serving(self.addr).await.is_some() {
                return;
            }
            let exited = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            if let Some(status) = exited {
                panic!(
                    "{:?} tier on {} exited before serving ({status}){}",
                    self.tier,
                    self.addr,
                    self.log_tail()
                );
            }
            assert!(
                started.elapsed() < within,
                "timed out after {within:?} waiting for the {:?} tier on {} to serve{}",
                self.tier,
                self.addr,
                self.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The last lines of the tier's log, for a failure message; empty when it has none.
    fn log_tail(&self) -> String {
        let Some(text) = self
            .log
            .as_ref()
            .and_then(|p| std::fs::read_to_string(p).ok())
        else {
            return String::new();
        };
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(20)..].join("\n");
        format!("; the end of its log:\n{tail}")
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(Child::id)
    }

    /// SIGKILL: no chance to clean up.
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().await.unwrap();
        }
    }

    /// SIGSTOP: the process freezes with its connections open, as a machine that hangs does.
    pub async fn pause(&self) {
        self.signal("-STOP").await;
    }

    /// SIGCONT after [`Self::pause`].
    pub async fn resume(&self) {
        self.signal("-CONT").await;
    }

    async fn signal(&self, signal: &str) {
        let pid = self.pid().expect("running").to_string();
        let sent = Command::new("kill")
            .args([signal, &pid])
            .status()
            .await
            .unwrap();
        assert!(sent.success(), "kill {signal} {pid}");
    }

    /// Starts the binary again on the same port, database and NATS.
    pub async fn restart(&mut self) {
        self.kill().await;
        self.spawn().await;
    }

    /// SIGTERM, then waits for the exit.
    pub async fn terminate(&mut self, within: Duration) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        let pid = child.id().expect("pid").to_string();
        let sent = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .await
            .unwrap();
        assert!(sent.success(), "kill -TERM {pid}");
        tokio::time::timeout(within, child.wait())
            .await
            .expect("exit after SIGTERM")
            .unwrap()
    }

    /// Waits for the process to exit by itself (no signal sent); fails the test with its log's end
    /// when it is still running after `within`.
    pub async fn exited(&mut self, within: Duration) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        match tokio::time::timeout(within, child.wait()).await {
            Ok(status) => status.unwrap(),
            Err(_) => panic!(
                "the {:?} tier on {} still runs after {within:?}{}",
                self.tier,
                self.addr,
                self.log_tail()
            ),
        }
    }

    pub async fn channel(&self) -> Channel {
        crate::identity::observed(
            tonic::transport::Channel::from_shared(format!("http://{}", self.addr))
                .unwrap()
                .connect()
                .await
                .unwrap(),
        )
    }
}
