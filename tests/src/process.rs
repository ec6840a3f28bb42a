//! The tier binaries as child processes, for what only a real process shows: SIGKILL, SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::process::{Child, Command};
use tonic::transport::Channel;
use wangge_proto::Tier;

use crate::{eventually, free_port};

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
        // target/debug/deps/cluster-<hash> -> target/debug
        Err(_) => std::env::current_exe()
            .unwrap()
            .parent()
            .unwrap()
            .parent()
            .unwrap()
            .to_path_buf(),
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
    child: Option<Child>,
}

impl TierProcess {
    pub async fn start(tier: Tier, scope: &str, database_url: &str, nats_url: &str) -> TierProcess {
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let mut process = TierProcess {
            tier,
            addr,
            scope: scope.to_owned(),
            database_url: database_url.to_owned(),
            nats_url: nats_url.to_owned(),
            child: None,
        };
        process.spawn().await;
        process
    }

    async fn spawn(&mut self) {
        let child = Command::new(binary(self.tier))
            .args(["--scope", &self.scope, "--listen", &self.addr.to_string()])
            .env("WANGGE_DATABASE_URL", &self.database_url)
            .env("WANGGE_NATS_URL", &self.nats_url)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("start tier binary");
        self.child = Some(child);
        let addr = self.addr;
        eventually("the tier process to serve", Duration::from_secs(30), || {
            crate::serving(addr)
        })
        .await;
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

    pub async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.addr))
            .unwrap()
            .connect()
            .await
            .unwrap()
    }
}
