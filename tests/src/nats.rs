//! A real nats-server in a child process, on a free port, with its own store dir: started with
//! flags (one server with JetStream) or from one of the configuration files in `deploy/nats/`.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use tokio::process::{Child, Command};
use wangge_domain::case::tier_name;
use wangge_proto::Tier;

use wangge_tier::config::TlsConfig;
use wangge_tier::tls::NatsTls as _;

use crate::tls::TestPki;
use crate::{eventually, free_port};

/// A nats-server child process; killed on drop.
pub struct NatsServer {
    child: Option<Child>,
    launch: Launch,
    /// Started with users (`single.conf`, the topology's files): the test clients connect as
    /// `wangge-admin`.
    users: bool,
    /// Holds the JetStream store (`store/`) and the server's log (`nats-server.log`).
    home: tempfile::TempDir,
    /// How the test's own clients reach a server that requires TLS.
    client_tls: Option<TlsConfig>,
    /// The certificates of a server that speaks TLS, whose files it reads on every connection.
    pki: Option<Arc<TestPki>>,
}

/// How a server is started: its client port, arguments and environment.
struct Launch {
    port: u16,
    args: Vec<OsString>,
    env: Vec<(String, String)>,
}

/// The user of `deploy/nats/gen-users` that may do everything.
pub const ADMIN_USER: &str = "wangge-admin";

/// The password of `user` on a server started [`NatsServer::with_users`].
pub fn password_of(user: &str) -> String {
    format!("pw-{user}")
}

/// The environment variable the files of `deploy/nats/gen-users` read the password of `user`
/// from: `WANGGE_NATS_PASSWORD_<USER>`, in capitals with `-` as `_`; `wangge-admin`'s is `…_ADMIN`.
pub fn password_variable(user: &str) -> String {
    if user == ADMIN_USER {
        return "WANGGE_NATS_PASSWORD_ADMIN".to_owned();
    }
    format!(
        "WANGGE_NATS_PASSWORD_{}",
        user.to_uppercase().replace('-', "_")
    )
}

/// What `deploy/nats/gen-users` writes for `args`.
pub fn gen_users(args: &[String]) -> String {
    let output = std::process::Command::new(deploy_dir().join("gen-users"))
        .args(args)
        .output()
        .expect("run deploy/nats/gen-users");
    assert!(
        output.status.success(),
        "gen-users {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// The `gen-users` arguments of tier instances: `<tier>:<scope>`.
pub fn instance_args(instances: &[(Tier, &str)]) -> Vec<String> {
    instances
        .iter()
        .map(|(tier, scope)| format!("{}:{scope}", tier_name(*tier)))
        .collect()
}

/// The password variables of the users in a file `gen-users` wrote, each set to [`password_of`].
fn passwords_for(users_file: &str) -> Vec<(String, String)> {
    users_file
        .lines()
        .filter_map(|line| line.trim().strip_prefix("user: \""))
        .map(|rest| rest.trim_end_matches('"'))
        .map(|user| (password_variable(user), password_of(user)))
        .collect()
}

/// The credential of a tier instance on a server started [`NatsServer::with_users`].
pub fn credential_of(tier: Tier, scope: &str) -> wangge_tier::NatsAuthConfig {
    let user = format!("{}-{scope}", tier_name(tier));
    wangge_tier::NatsAuthConfig {
        password: Some(password_of(&user).into()),
        user: Some(user),
        ..Default::default()
    }
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

/// The (major, minor) version of [`binary`], asked once.
pub fn version() -> (u32, u32) {
    static VERSION: OnceLock<(u32, u32)> = OnceLock::new();
    *VERSION.get_or_init(|| {
        let output = std::process::Command::new(binary())
            .arg("--version")
            .output()
            .expect("run nats-server --version");
        // "nats-server: v2.9.10"
        let text = String::from_utf8_lossy(&output.stdout);
        let number = text.trim().rsplit('v').next().unwrap_or_default();
        let mut parts = number.split('.').map(|part| part.parse::<u32>());
        match (parts.next(), parts.next()) {
            (Some(Ok(major)), Some(Ok(minor))) => (major, minor),
            _ => panic!("cannot read the nats-server version from {text:?}"),
        }
    })
}

/// The repository's `deploy/nats/` folder: the configuration files operators run.
pub fn deploy_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/nats")
}

impl NatsServer {
    /// One server with JetStream and no configuration file, as development and most tests use.
    pub async fn start() -> NatsServer {
        NatsServer::launch(|home| {
            let port = free_port();
            let args = [
                OsString::from("-a"),
                "127.0.0.1".into(),
                "-p".into(),
                port.to_string().into(),
                "-js".into(),
                "-sd".into(),
                home.join("store").into(),
            ];
            Launch {
                port,
                args: args.into(),
                env: Vec::new(),
            }
        })
        .await
    }

    /// Like [`Self::start`], carrying at most `max_payload` bytes in one message (nats-server's
    /// default is 1 MiB; it has no flag for it, so the server runs from a file of its own).
    pub async fn start_with_max_payload(max_payload: usize) -> NatsServer {
        NatsServer::launch(|home| {
            let port = free_port();
            let file = home.join("limited.conf");
            let config = format!(
                "listen: 127.0.0.1:{port}\n\
                 jetstream {{ store_dir: {store:?} }}\n\
                 max_payload: {max_payload}\n",
                store = home.join("store"),
            );
            std::fs::write(&file, config).unwrap();
            Launch {
                port,
                args: vec![OsString::from("-c"), file.into()],
                env: Vec::new(),
            }
        })
        .await
    }

    /// A server run from `file` in `deploy/nats/`, configured through the environment variables
    /// the file names (`WANGGE_NATS_*`). The configuration files are copied into the server's
    /// home, where `users` (a file name and the `gen-users` arguments) replace the shipped users
    /// files, their passwords set as [`password_of`] gives. `choose`, given the home directory,
    /// returns the client port and the environment setting it; it is asked again when a port was
    /// taken before the server could bind it. With users, the harness's clients are `wangge-admin`.
    pub async fn from_config(
        file: &str,
        users: &[(&str, Vec<String>)],
        mut choose: impl FnMut(&Path) -> (u16, Vec<(String, String)>),
    ) -> NatsServer {
        let generated: Vec<(&str, String)> = users
            .iter()
            .map(|(name, args)| (*name, gen_users(args)))
            .collect();
        let passwords: Vec<(String, String)> = generated
            .iter()
            .flat_map(|(_, text)| passwords_for(text))
            .collect();
        let mut server = NatsServer::launch(|home| {
            // Includes resolve relative to the including file: every file goes beside `file`.
            for entry in std::fs::read_dir(deploy_dir()).unwrap() {
                let path = entry.unwrap().path();
                if path.extension().is_some_and(|ext| ext == "conf") {
                    std::fs::copy(&path, home.join(path.file_name().unwrap())).unwrap();
                }
            }
            for (name, text) in &generated {
                std::fs::write(home.join(name), text).unwrap();
            }
            let (port, mut env) = choose(home);
            env.extend(passwords.iter().cloned());
            Launch {
                port,
                args: vec![OsString::from("-c"), home.join(file).into()],
                env,
            }
        })
        .await;
        server.users = !users.is_empty();
        server
    }

    /// One server with JetStream and a NATS user per tier instance: `deploy/nats/single.conf`
    /// with the users `deploy/nats/gen-users` writes for `instances` (tier and scope), each with
    /// the password [`password_of`] gives. The clients of the harness connect as `wangge-admin`.
    pub async fn with_users(instances: &[(Tier, &str)]) -> NatsServer {
        let users = [("users.conf", instance_args(instances))];
        NatsServer::from_config("single.conf", &users, |home| {
            let port = free_port();
            let env = vec![
                ("WANGGE_NATS_NAME".to_owned(), format!("test-{port}")),
                ("WANGGE_NATS_HOST".to_owned(), "127.0.0.1".to_owned()),
                ("WANGGE_NATS_PORT".to_owned(), port.to_string()),
                (
                    "WANGGE_NATS_STORE".to_owned(),
                    home.join("store").display().to_string(),
                ),
            ];
            (port, env)
        })
        .await
    }

    /// From now on the harness's clients reach this server over TLS with the certificates of
    /// `pki`, which the server keeps alive.
    pub fn speaks_tls(&mut self, pki: Arc<TestPki>) {
        self.client_tls = Some(pki.nats_client_tls());
        self.pki = Some(pki);
    }

    /// What a client needs to reach this server over TLS, if it speaks TLS.
    pub fn client_tls(&self) -> Option<&TlsConfig> {
        self.client_tls.as_ref()
    }

    /// A client connected as `user` with its password (and its own reply subjects, as a tier
    /// connects), and the errors the server sends it (permissions violations among them).
    pub async fn client_as(
        &self,
        user: &str,
    ) -> (
        async_nats::Client,
        tokio::sync::mpsc::UnboundedReceiver<String>,
    ) {
        let (errors_tx, errors) = tokio::sync::mpsc::unbounded_channel();
        let options = async_nats::ConnectOptions::new();
        let options = match &self.client_tls {
            Some(tls) => options.tls(tls),
            None => options,
        };
        let client = options
            .user_and_password(user.to_owned(), password_of(user))
            .custom_inbox_prefix(format!("_INBOX.{user}"))
            .event_callback(move |event| {
                let errors_tx = errors_tx.clone();
                async move {
                    if let async_nats::Event::ServerError(error) = event {
                        let _ = errors_tx.send(error.to_string());
                    }
                }
            })
            .connect(self.url())
            .await
            .unwrap();
        (client, errors)
    }

    /// One server with JetStream that speaks TLS only, with the certificate of `pki`, and
    /// verifies its clients' certificates: every client that gets in came over TLS.
    pub async fn start_tls(pki: &TestPki) -> NatsServer {
        let mut server = NatsServer::launch(|home| {
            let port = free_port();
            let file = home.join("tls.conf");
            // A generous handshake timeout: debug builds on two busy cores.
            let config = format!(
                "listen: 127.0.0.1:{port}\n\
                 jetstream {{ store_dir: {store:?} }}\n\
                 tls {{\n  cert_file: {cert:?}\n  key_file: {key:?}\n  ca_file: {ca:?}\n  \
                 verify: true\n  timeout: 5\n}}\n",
                store = home.join("store"),
                cert = pki.path("server.pem"),
                key = pki.path("server-key.pem"),
                ca = pki.path("ca.pem"),
            );
            std::fs::write(&file, config).unwrap();
            Launch {
                port,
                args: vec![OsString::from("-c"), file.into()],
                env: Vec::new(),
            }
        })
        .await;
        server.client_tls = Some(pki.nats_client_tls());
        server
    }

    async fn launch(mut choose: impl FnMut(&Path) -> Launch) -> NatsServer {
        let home = tempfile::tempdir().unwrap();
        let mut attempt = 1;
        loop {
            let launch = choose(home.path());
            match spawn(&launch, home.path()).await {
                Ok(child) => {
                    return NatsServer {
                        child: Some(child),
                        launch,
                        users: false,
                        home,
                        client_tls: None,
                        pki: None,
                    };
                }
                // A free port is only free until someone binds it: choose again.
                Err(log) if attempt < 3 && log.contains("address already in use") => attempt += 1,
                Err(log) => panic!("nats-server {:?} did not start:\n{log}", launch.args),
            }
        }
    }

    /// The value the server was started with for an environment variable.
    pub fn env(&self, name: &str) -> Option<&str> {
        self.launch
            .env
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }

    /// The store and log directory of this server.
    pub fn home(&self) -> &Path {
        self.home.path()
    }

    /// What the server logged so far, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(log_path(self.home.path())).unwrap_or_default()
    }

    pub fn port(&self) -> u16 {
        self.launch.port
    }

    /// Where the server listens.
    pub fn addr(&self) -> std::net::SocketAddr {
        std::net::SocketAddr::from(([127, 0, 0, 1], self.port()))
    }

    /// Removes everything in the store directory: with the server down, its next start begins with
    /// no stream, no consumer and no message, as after losing its disk.
    pub fn wipe_store(&self) {
        assert!(
            self.child.is_none(),
            "wipe the store of a stopped server only"
        );
        let store = self.home.path().join("store");
        if store.exists() {
            std::fs::remove_dir_all(&store).unwrap();
        }
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.launch.port)
    }

    /// A client that may do everything: anonymous, or `wangge-admin` on a server with users.
    pub async fn client(&self) -> async_nats::Client {
        if self.users {
            return self.client_as(ADMIN_USER).await.0;
        }
        let options = async_nats::ConnectOptions::new();
        match &self.client_tls {
            Some(tls) => options.tls(tls),
            None => options,
        }
        .connect(self.url())
        .await
        .unwrap()
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
        match spawn(&self.launch, self.home.path()).await {
            Ok(child) => self.child = Some(child),
            Err(log) => panic!(
                "nats-server {:?} did not start again:\n{log}",
                self.launch.args
            ),
        }
    }

    /// Kills the server (SIGKILL) and starts it again on the same port with an empty store: the
    /// broker lost its disk.
    pub async fn restart_empty(&mut self) {
        self.kill().await;
        self.wipe_store();
        self.resume().await;
    }

    /// Kills the server (SIGKILL) and starts it again on the same port and store.
    pub async fn restart(&mut self) {
        self.kill().await;
        self.resume().await;
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.start_kill();
        }
    }
}

fn log_path(home: &Path) -> PathBuf {
    home.join("nats-server.log")
}

/// Starts the server and waits until it listens; a server that exits first (a bad file, a port
/// taken) gives what it logged.
async fn spawn(launch: &Launch, home: &Path) -> Result<Child, String> {
    let log_path = log_path(home);
    // Appended, so a restarted server's log follows the one it replaced.
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .unwrap();
    let logged_before = log.metadata().map(|m| m.len() as usize).unwrap_or(0);
    let this_run = || {
        let text = std::fs::read_to_string(&log_path).unwrap_or_default();
        text.get(logged_before..).unwrap_or(&text).to_owned()
    };
    let mut child = Command::new(binary())
        .args(&launch.args)
        .envs(launch.env.iter().map(|(k, v)| (k, v)))
        .stdout(Stdio::null())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .expect("start nats-server");
    let started = Instant::now();
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("exited ({status}):\n{}", this_run()));
        }
        if tokio::net::TcpStream::connect(("127.0.0.1", launch.port))
            .await
            .is_ok()
        {
            return Ok(child);
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "nats-server {:?} did not listen on {}:\n{}",
            launch.args,
            launch.port,
            this_run()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
