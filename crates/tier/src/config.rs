//! Typed, layered configuration: defaults, a TOML file, `WANGGE_` environment variables, flags.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;
use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize, Serializer};
use wangge_proto::Tier;

/// How a tier service is configured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Config {
    /// The org code (or its 6/9/12-digit prefix) this instance serves.
    #[serde(deserialize_with = "digits")]
    pub scope: String,
    /// Where gRPC (and grpc-web) is served.
    pub listen: SocketAddr,
    /// The tier's own PostgreSQL database.
    #[serde(serialize_with = "redacted_url")]
    pub database_url: SecretString,
    pub database_max_connections: u32,
    /// Comma-separated NATS server URLs.
    pub nats_url: String,
    /// The JetStream domain of the district hub (e.g. `haicang`), for a tier connected to a leaf
    /// nats-server: a leaf forwards JetStream requests only when they name the hub's domain.
    /// Unset, the JetStream of the server the tier connects to is used. See deploy/nats/README.md.
    pub jetstream_domain: Option<String>,
    /// Consumer names are `<tier>-<scope>` unless set: instances sharing one share the work.
    pub consumer_name: Option<String>,
    /// How long an applied event's id stays in the inbox. The per-case sequence already refuses
    /// old copies; the inbox guards the window in which a copy can still arrive.
    pub inbox_retention_hours: u64,
    /// How often old inbox entries are removed.
    pub inbox_prune_every_secs: u64,
    /// The tiers that must confirm every event this tier writes before it leaves the outbox, and
    /// that reconciliation compares with. Unset: the two other tiers.
    pub peers: Option<Vec<TierName>>,
    pub delivery: DeliveryConfig,
    pub auth: AuthConfig,
    pub log: LogConfig,
    /// How this instance proves itself to NATS; unset, it connects anonymously.
    pub nats_auth: NatsAuthConfig,
    /// gRPC over TLS and NATS over TLS; plain text only on loopback unless allowed.
    pub tls: TlsConfig,
    /// What the village looks for when it takes a report.
    pub intake: IntakeConfig,
    /// The command clock: how often the automatic 督办 scan runs.
    pub clock: ClockConfig,
}

/// The command clock (时限, 督办).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct ClockConfig {
    /// How often the tier looks for cases whose stage crossed yellow or red (automatic 督办).
    pub supervise_every_secs: u64,
    /// Lets an admin move this tier's clock forward (`AdminService/AdvanceClock`), so a demo
    /// shows days of deadlines in seconds. For demos and tests only: never in production.
    pub virtual_time: bool,
    /// Where the tier reads the time; unset, the machine's clock. Not configurable from a file:
    /// tests inject a clock they can move.
    #[serde(skip)]
    pub time: Option<crate::time::Time>,
}

impl Default for ClockConfig {
    fn default() -> Self {
        ClockConfig {
            supervise_every_secs: 30,
            virtual_time: false,
            time: None,
        }
    }
}

/// Intake: the duplicates (疑似重复) a new report is checked against.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(default)]
pub struct IntakeConfig {
    /// Open cases of the same category within this many metres are candidates.
    pub duplicate_radius_m: u32,
    /// … reported within this many hours before.
    pub duplicate_window_hours: u32,
}

impl Default for IntakeConfig {
    fn default() -> Self {
        IntakeConfig {
            duplicate_radius_m: 50,
            duplicate_window_hours: 72,
        }
    }
}

/// The NATS credential of one tier instance: a user and password, an NKey seed file or a `.creds`
/// file, as the server's configuration expects (deploy/nats/README.md, "Users and permissions").
/// With any of them set, the instance's reply subjects are `_INBOX.<tier>-<scope>.>`, so the
/// server can let each user receive only its own replies.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct NatsAuthConfig {
    /// The user, by convention `<tier>-<scope>` (e.g. `village-350205002006`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// The user's password (`WANGGE_NATS_AUTH__PASSWORD`); never logged, `***` in dumps.
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "redacted_secret"
    )]
    pub password: Option<SecretString>,
    /// A file holding the NKey seed (`SU…`) of the instance, instead of user and password.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nkey_seed_file: Option<PathBuf>,
    /// A `.creds` file (user JWT and NKey seed) for a server in operator mode.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credentials_file: Option<PathBuf>,
}

impl NatsAuthConfig {
    /// Whether any credential is configured.
    pub fn is_set(&self) -> bool {
        self.user.is_some() || self.nkey_seed_file.is_some() || self.credentials_file.is_some()
    }
}

/// Who may call: the keys caller tokens are verified with, and each caller's limits.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AuthConfig {
    /// `<key id>.pub.pem` files (Ed25519 or P-256) tokens may be signed with. Several at once, so
    /// a key rotates without downtime: add the new one, move issuing to it, drop the old one.
    pub public_keys: Vec<PathBuf>,
    /// A JWKS document of an identity provider (its `/.well-known/jwks.json`, saved).
    pub jwks_file: Option<PathBuf>,
    /// When set, tokens must name this issuer.
    pub issuer: Option<String>,
    /// How far the clocks of issuer and tier may differ.
    pub leeway_secs: u64,
    /// Calls a second one caller (token subject) may make on average, and at once.
    pub calls_per_second: u32,
    pub burst: u32,
    /// The largest request message a call may send.
    pub max_request_bytes: usize,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            public_keys: Vec::new(),
            jwks_file: None,
            issuer: None,
            leeway_secs: 30,
            calls_per_second: 50,
            burst: 100,
            max_request_bytes: 2 * 1024 * 1024,
        }
    }
}

/// A tier, by name, as configuration spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TierName {
    Village,
    Street,
    District,
}

impl From<TierName> for Tier {
    fn from(name: TierName) -> Tier {
        match name {
            TierName::Village => Tier::Village,
            TierName::Street => Tier::Street,
            TierName::District => Tier::District,
        }
    }
}

/// End-to-end delivery: confirmations, resends, poison, parking and reconciliation.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeliveryConfig {
    /// How long peers have to confirm an event before the relay looks for it in the stream.
    pub confirm_within_secs: u64,
    /// Failed sends that are an event's own fault before it is set aside as a dead letter.
    pub max_publish_failures: i32,
    /// The largest encoded event a step may produce; a step whose event would be larger is refused
    /// before anything is stored. Kept below NATS's max_payload (1 MiB by default) with room for
    /// headers; lowered further to the server's own limit when it announces a smaller one.
    pub max_event_bytes: usize,
    /// How often the tier compares what it holds with its peers.
    pub reconcile_every_secs: u64,
    /// Reconciliation compares cases changed in this many days (plus the unconfirmed outbox).
    pub reconcile_window_days: u64,
    /// How long a peer has to answer one reconciliation request.
    pub sync_timeout_ms: u64,
    /// How often parked events and outbox confirmations are looked after.
    pub sweep_every_secs: u64,
    /// How long an event may wait for its predecessor before it is set aside as a dead letter.
    pub park_expiry_hours: u64,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        DeliveryConfig {
            confirm_within_secs: 15,
            max_publish_failures: 5,
            max_event_bytes: 1_000_000,
            reconcile_every_secs: 300,
            reconcile_window_days: 30,
            sync_timeout_ms: 3000,
            sweep_every_secs: 2,
            park_expiry_hours: 24,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LogConfig {
    /// `text` or `json`.
    pub format: String,
    /// An env-filter directive, e.g. `info,wangge=debug`.
    pub filter: String,
}

/// Transport security. Files are PEM; only their paths are configured, so no key is ever logged or
/// dumped. A tier refuses to start when it would serve gRPC in plain text on an address other than
/// loopback, or reach a NATS server other than on loopback without requiring TLS, unless
/// `allow_plaintext` says that is meant (see `crate::tls::check`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct TlsConfig {
    /// The certificate chain the gRPC server presents; with `grpc_key`, gRPC is served over TLS.
    pub grpc_cert: Option<PathBuf>,
    /// The private key of `grpc_cert`.
    pub grpc_key: Option<PathBuf>,
    /// CA certificates of the gRPC clients: when set, every client must present a certificate one
    /// of them signed (mutual TLS).
    pub grpc_client_ca: Option<PathBuf>,
    /// The CA that signed the NATS servers' certificates; unset, the system's roots are trusted.
    pub nats_ca: Option<PathBuf>,
    /// A client certificate for NATS servers that verify their clients (`verify: true`).
    pub nats_client_cert: Option<PathBuf>,
    /// The private key of `nats_client_cert`.
    pub nats_client_key: Option<PathBuf>,
    /// Talk to NATS only over TLS (a `tls://` URL requires it for that server alone).
    pub nats_require: bool,
    /// Serve gRPC or reach NATS in plain text on addresses other than loopback, on purpose (a
    /// private network, TLS ended by a proxy in front).
    pub allow_plaintext: bool,
}

/// Codes are digits, so `WANGGE_SCOPE=350205` reaches us as a number: take it as the string it is.
fn digits<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Code {
        Text(String),
        Number(u64),
    }
    Ok(match Code::deserialize(d)? {
        Code::Text(text) => text,
        Code::Number(number) => number.to_string(),
    })
}

fn redacted_secret<S: Serializer>(secret: &Option<SecretString>, s: S) -> Result<S::Ok, S::Error> {
    match secret {
        Some(_) => s.serialize_str("***"),
        None => s.serialize_none(),
    }
}

fn redacted_url<S: Serializer>(url: &SecretString, s: S) -> Result<S::Ok, S::Error> {
    let url = url.expose_secret();
    // Hide a password between "user:" and "@".
    let shown = match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme + 3 && url[scheme + 3..at].contains(':') => {
            let user_end = scheme + 3 + url[scheme + 3..at].find(':').unwrap_or(0);
            format!("{}:***{}", &url[..user_end], &url[at..])
        }
        _ => url.to_owned(),
    };
    s.serialize_str(&shown)
}

impl Config {
    /// The peer tiers of `tier`: as configured, else the two others.
    pub fn peers_of(&self, tier: Tier) -> Vec<Tier> {
        match &self.peers {
            Some(peers) => peers
                .iter()
                .map(|&p| Tier::from(p))
                .filter(|&p| p != tier)
                .collect(),
            None => [Tier::Village, Tier::Street, Tier::District]
                .into_iter()
                .filter(|&p| p != tier)
                .collect(),
        }
    }

    /// Defaults for a laptop: everything on 127.0.0.1, one database per tier, Haicang as scope.
    pub fn defaults(tier: Tier) -> Config {
        let (name, port) = match tier {
            Tier::Village => ("village", 50051),
            Tier::Street => ("street", 50052),
            Tier::District | Tier::Unspecified => ("district", 50053),
        };
        Config {
            scope: "350205".into(),
            listen: SocketAddr::from(([127, 0, 0, 1], port)),
            database_url: format!("postgres://postgres@127.0.0.1:5432/wangge_{name}").into(),
            database_max_connections: 16,
            nats_url: "nats://127.0.0.1:4222".into(),
            jetstream_domain: None,
            consumer_name: None,
            inbox_retention_hours: 24 * 7,
            inbox_prune_every_secs: 600,
            peers: None,
            delivery: DeliveryConfig::default(),
            auth: AuthConfig::default(),
            log: LogConfig {
                format: "text".into(),
                filter: "info".into(),
            },
            nats_auth: NatsAuthConfig::default(),
            tls: TlsConfig::default(),
            intake: IntakeConfig::default(),
            clock: ClockConfig::default(),
        }
    }
}

/// Command-line flags of a tier service; they win over the file and the environment.
#[derive(Debug, Parser)]
pub struct Cli {
    /// A TOML configuration file.
    #[arg(long, short, env = "WANGGE_CONFIG")]
    pub config: Option<PathBuf>,
    /// Org code or prefix to serve (e.g. 350205 for Haicang, 350205002 for 新阳街道).
    #[arg(long)]
    pub scope: Option<String>,
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    #[arg(long)]
    pub database_url: Option<String>,
    #[arg(long)]
    pub nats_url: Option<String>,
    /// Print the effective configuration (secrets redacted) and exit.
    #[arg(long)]
    pub dump_config: bool,
}

#[derive(Serialize)]
struct Overrides<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    scope: Option<&'a String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    listen: Option<SocketAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    database_url: Option<&'a String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    nats_url: Option<&'a String>,
}

impl Cli {
    /// Layers defaults, the file, `WANGGE_*` variables and these flags.
    pub fn load(&self, tier: Tier) -> anyhow::Result<Config> {
        let mut figment = Figment::from(Serialized::defaults(Config::defaults(tier)));
        if let Some(path) = &self.config {
            anyhow::ensure!(
                path.exists(),
                "configuration file {} does not exist",
                path.display()
            );
            figment = figment.merge(Toml::file(path));
        }
        let overrides = Overrides {
            scope: self.scope.as_ref(),
            listen: self.listen,
            database_url: self.database_url.as_ref(),
            nats_url: self.nats_url.as_ref(),
        };
        let config: Config = figment
            .merge(Env::prefixed("WANGGE_").split("__").ignore(&["config"]))
            .merge(Serialized::defaults(overrides))
            .extract()?;
        config
            .scope
            .parse::<wangge_domain::Scope>()
            .map_err(|e| anyhow::anyhow!("scope: {e}"))?;
        Ok(config)
    }
}

/// The configuration as TOML, secrets redacted.
pub fn dump(config: &Config) -> anyhow::Result<String> {
    Ok(toml::to_string(config)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dump_hides_the_database_password() {
        let mut config = Config::defaults(Tier::Street);
        config.database_url = "postgres://wangge:hunter2@db:5432/street".to_owned().into();
        let text = dump(&config).unwrap();
        assert!(
            text.contains("postgres://wangge:***@db:5432/street"),
            "{text}"
        );
        assert!(!text.contains("hunter2"));
        assert!(text.contains("[log]"));
        config.nats_auth.user = Some("street-350205002".into());
        config.nats_auth.password = Some("s3cr3t-nats".to_owned().into());
        let text = dump(&config).unwrap();
        assert!(text.contains("user = \"street-350205002\""), "{text}");
        assert!(text.contains("password = \"***\""), "{text}");
        assert!(!text.contains("s3cr3t-nats"), "{text}");
        assert!(!format!("{config:?}").contains("s3cr3t-nats"));
        // Odd URLs are shown as they are, never a panic.
        for odd in ["a@b://c", "postgres://", "@", "x://y@"] {
            config.database_url = odd.to_owned().into();
            dump(&config).unwrap();
        }
    }

    #[test]
    fn flags_win_over_defaults_and_bad_scopes_are_refused() {
        let cli = Cli::parse_from(["x", "--scope", "350205002", "--listen", "127.0.0.1:1"]);
        let config = cli.load(Tier::Street).unwrap();
        assert_eq!(config.scope, "350205002");
        assert_eq!(config.listen.port(), 1);
        let cli = Cli::parse_from(["x", "--scope", "35"]);
        assert!(cli.load(Tier::Street).is_err());
    }

    #[test]
    fn a_nats_credential_comes_from_the_file() {
        let path = std::env::temp_dir().join(format!("wangge-config-{}.toml", std::process::id()));
        std::fs::write(
            &path,
            "[nats_auth]\nuser = \"village-350205002006\"\npassword = \"pw\"\n",
        )
        .unwrap();
        let cli = Cli::parse_from(["x", "--config", path.to_str().unwrap()]);
        let config = cli.load(Tier::Village);
        std::fs::remove_file(&path).unwrap();
        let auth = config.unwrap().nats_auth;
        assert!(auth.is_set());
        assert_eq!(auth.user.as_deref(), Some("village-350205002006"));
        assert_eq!(
            auth.password
                .map(|p| p.expose_secret().to_owned())
                .as_deref(),
            Some("pw")
        );
        assert!(!Config::defaults(Tier::Village).nats_auth.is_set());
    }
}
