//! A real nats-server with JetStream in a child process, on a free port, with its own store dir.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};

use crate::{eventually, free_port};

/// A nats-server child process; killed on drop.
pub struct NatsServer {
    child: Option<Child>,
    port: u16,
    store: tempfile::TempDir,
}

/// The nats-server binary: `WANGGE_NATS_SERVER`, else the one on PATH or Debian's.
pub fn binary() -> PathBuf {
    if let Ok(path) = std::env::var("WANGGE_NATS_SERVER") {
        return path.into();
    }
    for dir in std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .chain(["/usr/sbin", "/usr/local/bin"])
    {
        let candidate = PathBuf::from(dir).join("nats-server");
        if candidate.exists() {
            return candidate;
        }
    }
    panic!(
        "nats-server not found: install it (apt-get install nats-server) or set WANGGE_NATS_SERVER"
    );
}

impl NatsServer {
    pub async fn start() -> NatsServer {
        let mut server = NatsServer {
            child: None,
            port: free_port(),
            store: tempfile::tempdir().unwrap(),
        };
        server.spawn().await;
        server
    }

    async fn spawn(&mut self) {
        let child = Command::new(binary())
            .args([
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-js",
                "-sd",
            ])
            .arg(self.store.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("start nats-server");
        self.child = Some(child);
        let port = self.port;
        eventually(
            "nats-server to listen",
            Duration::from_secs(10),
            || async move {
                tokio::net::TcpStream::connect(("127.0.0.1", port))
                    .await
                    .ok()
            },
        )
        .await;
    }

    /// Where the server listens.
    pub fn addr(&self) -> std::net::SocketAddr {
        std::net::SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// Removes everything in the store directory: with the server down, its next start begins with
    /// no stream, no consumer and no message, as after losing its disk.
    pub fn wipe_store(&self) {
        assert!(
            self.child.is_none(),
            "wipe the store of a stopped server only"
        );
        for entry in std::fs::read_dir(self.store.path()).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                std::fs::remove_dir_all(&path).unwrap();
            } else {
                std::fs::remove_file(&path).unwrap();
            }
        }
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub async fn client(&self) -> async_nats::Client {
        async_nats::connect(self.url()).await.unwrap()
    }

    /// A JetStream context, once the tiers have created the case stream (they do so in the
    /// background after they start serving).
    pub async fn case_stream(&self) -> async_nats::jetstream::Context {
        self.case_stream_with_consumers(0).await
    }

    /// Like [`Self::case_stream`], and waits until `consumers` consumers are attached to it.
    pub async fn case_stream_with_consumers(
        &self,
        consumers: usize,
    ) -> async_nats::jetstream::Context {
        let js = async_nats::jetstream::new(self.client().await);
        let probe = js.clone();
        eventually(
            "the case stream and its consumers",
            Duration::from_secs(10),
            || {
                let probe = probe.clone();
                async move {
                    let mut stream = probe.get_stream("WANGGE_CASES").await.ok()?;
                    let info = stream.info().await.ok()?;
                    (info.state.consumer_count >= consumers).then_some(())
                }
            },
        )
        .await;
        js
    }

    /// Kills the server (SIGKILL): the link is cut.
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
        }
    }

    /// Starts the server again on the same port and store.
    pub async fn resume(&mut self) {
        self.spawn().await;
    }

    /// Kills the server (SIGKILL) and starts it again on the same port and store.
    pub async fn restart(&mut self) {
        self.kill().await;
        self.spawn().await;
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.start_kill();
        }
    }
}
