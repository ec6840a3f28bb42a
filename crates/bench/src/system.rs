//! The system the bench brings up for itself: PostgreSQL databases of its own (created, seeded,
//! dropped at the end whatever happened), a nats-server child process with JetStream, and the three
//! tier binaries as child processes. Children die with the bench: killed at the end, and killed on
//! drop if the bench itself is torn down another way.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::str::FromStr;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Executor, PgConnection};
use tokio::process::{Child, Command};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

/// A port nobody listens on right now.
pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// The databases the bench made on the server of `--database-url`: `wangge_bench_<what>_<run>`.
#[derive(Debug)]
pub struct Databases {
    admin: PgConnectOptions,
    admin_url: String,
    run: String,
    made: Vec<String>,
}

impl Databases {
    pub fn new(admin_url: &str) -> anyhow::Result<Databases> {
        let admin = PgConnectOptions::from_str(admin_url)
            .context("--database-url is not a PostgreSQL URL")?;
        Ok(Databases {
            admin,
            admin_url: admin_url.to_owned(),
            run: uuid::Uuid::new_v4().simple().to_string()[..8].to_owned(),
            made: Vec::new(),
        })
    }

    pub async fn admin(&self) -> anyhow::Result<PgConnection> {
        tokio::time::timeout(Duration::from_secs(10), self.admin.connect())
            .await
            .context("no answer from the PostgreSQL server within 10 s")?
            .context("cannot connect to the PostgreSQL server of --database-url")
    }

    /// Makes `wangge_bench_<what>_<run>`, as a copy of `template` when given; returns its name.
    pub async fn create(&mut self, what: &str, template: Option<&str>) -> anyhow::Result<String> {
        let name = format!("wangge_bench_{what}_{}", self.run);
        // Remembered before it exists, so a half-made one is dropped too.
        self.made.push(name.clone());
        let mut admin = self.admin().await?;
        let sql = match template {
            Some(template) => format!(r#"CREATE DATABASE "{name}" TEMPLATE "{template}""#),
            None => format!(r#"CREATE DATABASE "{name}""#),
        };
        tokio::time::timeout(Duration::from_secs(60), admin.execute(sql.as_str()))
            .await
            .with_context(|| format!("creating database {name} took over 60 s"))?
            .with_context(|| format!("cannot create database {name}"))?;
        Ok(name)
    }

    /// Makes `wangge_bench_<what>_<run>` (again, when it exists) as a copy of `template`, file
    /// by file where the server can (PostgreSQL 15 and later: `STRATEGY FILE_COPY`, which copies
    /// a large database at disk speed instead of writing it all to the WAL), waiting at most
    /// `within`; returns its name. Nobody may be connected to `template`.
    pub async fn copy_of(
        &mut self,
        what: &str,
        template: &str,
        within: Duration,
    ) -> anyhow::Result<String> {
        let name = format!("wangge_bench_{what}_{}", self.run);
        if self.made.contains(&name) {
            self.drop_one(&name).await?;
        }
        self.made.push(name.clone());
        let mut admin = self.admin().await?;
        let version: String = sqlx::query_scalar("SHOW server_version_num")
            .fetch_one(&mut admin)
            .await?;
        let strategy = if version.parse::<u32>().unwrap_or(0) >= 150_000 {
            " STRATEGY FILE_COPY"
        } else {
            ""
        };
        let sql = format!(r#"CREATE DATABASE "{name}" TEMPLATE "{template}"{strategy}"#);
        tokio::time::timeout(within, admin.execute(sql.as_str()))
            .await
            .with_context(|| format!("copying {template} to {name} took over {within:?}"))?
            .with_context(|| format!("cannot copy {template} to {name}"))?;
        Ok(name)
    }

    /// Drops one database made earlier, with its connections.
    pub async fn drop_one(&mut self, name: &str) -> anyhow::Result<()> {
        let mut admin = self.admin().await?;
        let sql = format!(r#"DROP DATABASE IF EXISTS "{name}" WITH (FORCE)"#);
        tokio::time::timeout(Duration::from_secs(60), admin.execute(sql.as_str()))
            .await
            .with_context(|| format!("dropping {name} took over 60 s"))?
            .with_context(|| format!("cannot drop {name}"))?;
        self.made.retain(|made| made != name);
        Ok(())
    }

    /// How the bench itself connects to `name`.
    pub fn options(&self, name: &str) -> PgConnectOptions {
        self.admin.clone().database(name)
    }

    /// The URL of `name` for a tier: the admin URL with its database swapped (and its query kept).
    pub fn url(&self, name: &str) -> String {
        let (base, query) = match self.admin_url.split_once('?') {
            Some((base, query)) => (base, format!("?{query}")),
            None => (self.admin_url.as_str(), String::new()),
        };
        let authority_end = base.find("://").map_or(0, |i| i + 3);
        let server = match base[authority_end..].find('/') {
            Some(slash) => &base[..authority_end + slash],
            None => base,
        };
        format!("{server}/{name}{query}")
    }

    /// Leaves the databases made to whoever wants them: nothing drops them any more. Their names.
    pub fn forget(&mut self) -> Vec<String> {
        std::mem::take(&mut self.made)
    }

    /// Drops every database made, with its connections; the names that could not be dropped.
    pub async fn drop_all(&mut self) -> Vec<String> {
        let mut failed = Vec::new();
        let mut admin = match self.admin().await {
            Ok(admin) => admin,
            Err(error) => {
                failed.extend(self.made.drain(..).map(|n| format!("{n} ({error:#})")));
                return failed;
            }
        };
        for name in std::mem::take(&mut self.made) {
            let sql = format!(r#"DROP DATABASE IF EXISTS "{name}" WITH (FORCE)"#);
            match tokio::time::timeout(Duration::from_secs(30), admin.execute(sql.as_str())).await {
                Ok(Ok(_)) => {}
                Ok(Err(error)) => failed.push(format!("{name} ({error})")),
                Err(_) => failed.push(format!("{name} (no answer within 30 s)")),
            }
        }
        failed
    }
}

impl Drop for Databases {
    /// The last resort (a panic, a path that skipped the teardown): drop them from a thread of
    /// its own, since this may run inside the runtime.
    fn drop(&mut self) {
        if self.made.is_empty() {
            return;
        }
        let mut databases = Databases {
            admin: self.admin.clone(),
            admin_url: self.admin_url.clone(),
            run: self.run.clone(),
            made: std::mem::take(&mut self.made),
        };
        let _ = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            for failed in runtime.block_on(databases.drop_all()) {
                eprintln!("wangge bench: could not drop database {failed}");
            }
        })
        .join();
    }
}

/// Migrates and seeds database `name` with the importer, as `wangge-seed` does.
pub async fn seed(databases: &Databases, name: &str, seeds: &Path) -> anyhow::Result<usize> {
    let pool = wangge_store::connect(databases.options(name), 2)
        .await
        .with_context(|| format!("cannot connect to or migrate {name}"))?;
    let report = wangge_seed::import(&pool, seeds, &mut |_| {})
        .await
        .with_context(|| format!("seeding {name} from {}", seeds.display()));
    pool.close().await;
    Ok(report?.imported())
}

/// The nats-server binary: `WANGGE_NATS_SERVER`, else the one on PATH, else Debian's.
pub fn nats_binary() -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os("WANGGE_NATS_SERVER") {
        return Ok(path.into());
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join("nats-server"))
        .chain([PathBuf::from("/usr/sbin/nats-server")])
        .find(|candidate| candidate.is_file())
        .context(
            "nats-server not found: install it (apt-get install nats-server) or set \
             WANGGE_NATS_SERVER",
        )
}

/// What `nats-server --version` says.
pub fn nats_version(binary: &Path) -> String {
    std::process::Command::new(binary)
        .arg("--version")
        .output()
        .ok()
        .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_owned())
        .unwrap_or_else(|| "unknown".into())
}

/// Waits until `child` listens on `port`; a child that exits first fails with `log`'s tail.
async fn listening(
    child: &mut Child,
    what: &str,
    port: u16,
    log: &Path,
    within: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait()? {
            bail!(
                "{what} exited ({status}) before listening:\n{}",
                tail(log, 20)
            );
        }
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "{what} did not listen on port {port} within {within:?}:\n{}",
                tail(log, 20)
            );
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The last `lines` lines of a log file.
pub fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..]
        .iter()
        .map(|line| format!("    {line}"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn log_file(path: &Path) -> anyhow::Result<(Stdio, Stdio)> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    Ok((Stdio::from(file.try_clone()?), Stdio::from(file)))
}

/// A nats-server with JetStream, its store in the work directory.
#[derive(Debug)]
pub struct Nats {
    child: Child,
    pub port: u16,
}

impl Nats {
    pub async fn start(binary: &Path, work: &Path) -> anyhow::Result<Nats> {
        let log = work.join("nats-server.log");
        let mut attempt = 0;
        loop {
            attempt += 1;
            let port = free_port()?;
            let (stdout, stderr) = log_file(&log)?;
            let mut child = Command::new(binary)
                .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
                .arg(work.join("nats-store"))
                .stdout(stdout)
                .stderr(stderr)
                .kill_on_drop(true)
                .spawn()
                .with_context(|| format!("cannot start {}", binary.display()))?;
            match listening(
                &mut child,
                "nats-server",
                port,
                &log,
                Duration::from_secs(10),
            )
            .await
            {
                Ok(()) => return Ok(Nats { child, port }),
                // A free port is only free until somebody binds it: choose again.
                Err(error)
                    if attempt < 3 && format!("{error}").contains("address already in use") =>
                {
                    let _ = child.kill().await;
                }
                Err(error) => {
                    let _ = child.kill().await;
                    return Err(error);
                }
            }
        }
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    pub async fn stop(&mut self) {
        let _ = self.child.kill().await;
    }
}

/// One tier binary running as a child process.
#[derive(Debug)]
pub struct TierProcess {
    pub name: &'static str,
    pub addr: SocketAddr,
    pub log: PathBuf,
    child: Child,
    paused: bool,
}

/// How a tier is started.
#[derive(Debug, Clone)]
pub struct Launch<'a> {
    pub bin_dir: &'a Path,
    pub work: &'a Path,
    pub scope: &'a str,
    pub database_url: String,
    pub nats_url: String,
    pub public_key: &'a Path,
}

impl TierProcess {
    /// Starts `wangge-<name>` and waits until its health check says SERVING; returns the time
    /// from spawn to SERVING too.
    pub async fn start(
        name: &'static str,
        launch: Launch<'_>,
    ) -> anyhow::Result<(TierProcess, Duration)> {
        let binary = launch.bin_dir.join(format!("wangge-{name}"));
        anyhow::ensure!(
            binary.is_file(),
            "{} is missing: build the release binaries first (cargo build --release --workspace \
             --bins, or run deploy/bench)",
            binary.display()
        );
        let log = launch.work.join(format!("{name}.log"));
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()?));
        let (stdout, stderr) = log_file(&log)?;
        let mut command = Command::new(&binary);
        // Nothing of the caller's environment (a RUST_LOG, a WANGGE_CONFIG) leaks in: the tiers
        // run with their defaults and what is set here, as deploy/up sets it.
        command.env_clear();
        for kept in ["PATH", "HOME", "TZ"] {
            if let Some(value) = std::env::var_os(kept) {
                command.env(kept, value);
            }
        }
        command
            .arg("--listen")
            .arg(addr.to_string())
            .env("WANGGE_SCOPE", launch.scope)
            .env("WANGGE_DATABASE_URL", &launch.database_url)
            .env("WANGGE_NATS_URL", &launch.nats_url)
            .env(
                "WANGGE_AUTH__PUBLIC_KEYS",
                format!("[{:?}]", launch.public_key.display().to_string()),
            )
            // The bench's field apps are few and fast: the per-caller limit must not be what it
            // measures.
            .env("WANGGE_AUTH__CALLS_PER_SECOND", "1000000")
            .env("WANGGE_AUTH__BURST", "1000000")
            .stdout(stdout)
            .stderr(stderr)
            .kill_on_drop(true);
        let spawned = Instant::now();
        let mut child = command
            .spawn()
            .with_context(|| format!("cannot start {}", binary.display()))?;
        let serving = wait_serving(&mut child, name, addr, &log, Duration::from_secs(30)).await;
        let took = spawned.elapsed();
        let mut tier = TierProcess {
            name,
            addr,
            log,
            child,
            paused: false,
        };
        if let Err(error) = serving {
            tier.stop().await;
            return Err(error);
        }
        Ok((tier, took))
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    async fn signal(&self, signal: &str) -> anyhow::Result<()> {
        let pid = self.pid().context("the tier has exited")?.to_string();
        let status = tokio::time::timeout(
            Duration::from_secs(5),
            Command::new("kill").args([signal, &pid]).status(),
        )
        .await
        .context("kill did not return within 5 s")??;
        anyhow::ensure!(status.success(), "kill {signal} {pid} failed ({status})");
        Ok(())
    }

    /// SIGSTOP: the process freezes with its connections open.
    pub async fn pause(&mut self) -> anyhow::Result<()> {
        self.signal("-STOP").await?;
        self.paused = true;
        Ok(())
    }

    pub fn is_paused(&self) -> bool {
        self.paused
    }

    /// SIGCONT after [`TierProcess::pause`].
    pub async fn resume(&mut self) -> anyhow::Result<()> {
        self.signal("-CONT").await?;
        self.paused = false;
        Ok(())
    }

    /// Whether it still runs; an exit is an error naming the log's tail.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!(
                "the {} tier exited ({status}); its log ends:\n{}",
                self.name,
                tail(&self.log, 20)
            );
        }
        Ok(())
    }

    /// SIGKILL (a paused process dies too) and reap.
    pub async fn stop(&mut self) {
        if self.paused {
            let _ = self.resume().await;
        }
        let _ = self.child.kill().await;
    }
}

/// Polls the health check of the tier at `addr` until SERVING.
async fn wait_serving(
    child: &mut Child,
    name: &str,
    addr: SocketAddr,
    log: &Path,
    within: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + within;
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
        .connect_timeout(Duration::from_millis(500))
        .timeout(Duration::from_secs(1))
        .tcp_nodelay(true);
    loop {
        if let Some(status) = child.try_wait()? {
            bail!(
                "the {name} tier exited ({status}) before serving; its log ends:\n{}",
                tail(log, 20)
            );
        }
        let last = match endpoint.connect().await {
            Ok(channel) => {
                match HealthClient::new(channel)
                    .check(HealthCheckRequest::default())
                    .await
                {
                    Ok(answer) if answer.get_ref().status == ServingStatus::Serving as i32 => {
                        return Ok(());
                    }
                    Ok(answer) => format!("health says {:?}", answer.get_ref().status()),
                    Err(status) => format!("health check failed: {}", status.message()),
                }
            }
            Err(error) => format!("cannot connect: {error}"),
        };
        if Instant::now() > deadline {
            bail!(
                "the {name} tier was not SERVING within {within:?} ({last}); its log ends:\n{}",
                tail(log, 20)
            );
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_database_url_keeps_its_server_and_query() {
        let databases =
            Databases::new("postgres://u:p@db.example:5433/postgres?sslmode=disable").expect("url");
        assert_eq!(
            databases.url("wangge_bench_x"),
            "postgres://u:p@db.example:5433/wangge_bench_x?sslmode=disable"
        );
        let databases = Databases::new("postgres://postgres@127.0.0.1:5432").expect("url");
        assert_eq!(databases.url("b"), "postgres://postgres@127.0.0.1:5432/b");
    }
}
