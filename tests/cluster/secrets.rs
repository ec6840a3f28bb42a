//! Logs carry no secrets: the three tier binaries and `wangge demo` run the whole case loop at the
//! most verbose log level, with a database password, NATS passwords and signed tokens in play (and
//! refused tokens besides); then every line they wrote, and every tier's `--dump-config`, is
//! searched for any of them.

use std::path::Path;
use std::process::Stdio;

use tokio::process::Command;
use tonic::Code;
use wangge_proto as pb;
use wangge_proto::Tier;
use wangge_tests::cluster::{DISTRICT_SCOPE, STREET_SCOPE, VILLAGE_SCOPE};
use wangge_tests::db::TestDb;
use wangge_tests::identity;
use wangge_tests::nats::{NatsServer, credential_of, password_of};
use wangge_tests::process::{TierProcess, binary, workspace_binary};

const INSTANCES: [(Tier, &str); 3] = [
    (Tier::Village, VILLAGE_SCOPE),
    (Tier::Street, STREET_SCOPE),
    (Tier::District, DISTRICT_SCOPE),
];

/// The database password the tiers are given (the test server trusts local connections, so any
/// password gets in, and the tiers must still keep it to themselves).
const DATABASE_PASSWORD: &str = "db-secret-9f1c2a";

/// `url` with [`DATABASE_PASSWORD`] for its user.
fn with_password(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap();
    let (user, host) = rest.split_once('@').unwrap();
    format!("{scheme}://{user}:{DATABASE_PASSWORD}@{host}")
}

/// The environment that gives a tier its secrets: database URL and NATS user.
fn secret_env(tier: Tier, scope: &str, database_url: &str) -> Vec<(String, String)> {
    let user = credential_of(tier, scope).user.unwrap();
    vec![
        ("WANGGE_DATABASE_URL".into(), with_password(database_url)),
        ("WANGGE_NATS_AUTH__PASSWORD".into(), password_of(&user)),
        ("WANGGE_NATS_AUTH__USER".into(), user),
        ("RUST_LOG".into(), "trace".into()),
    ]
}

/// Every secret of the run, by what it is.
fn secrets() -> Vec<(String, String)> {
    let mut secrets = vec![("database password".to_owned(), DATABASE_PASSWORD.to_owned())];
    for (tier, scope) in INSTANCES {
        let user = credential_of(tier, scope).user.unwrap();
        secrets.push((format!("nats password of {user}"), password_of(&user)));
    }
    // The private key's body, line by line (a PEM in a log would be split the same way).
    let pem = std::fs::read_to_string(identity::private_key()).unwrap();
    for line in pem.lines().filter(|l| !l.starts_with("-----")) {
        secrets.push(("signing key".to_owned(), line.to_owned()));
    }
    secrets
}

/// Whatever in `text` looks like a bearer token: three base64url parts, the first a JSON header.
fn tokens_in(text: &str) -> Vec<String> {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
        .filter(|word| word.starts_with("eyJ") && word.split('.').count() == 3)
        .map(str::to_owned)
        .collect()
}

/// The lines of `text` holding `secret`, named by `file`.
fn leaks(file: &str, text: &str, what: &str, secret: &str) -> Vec<String> {
    text.lines()
        .filter(|line| line.contains(secret))
        .map(|line| {
            format!(
                "{file}: {what}: {}",
                line.chars().take(200).collect::<String>()
            )
        })
        .collect()
}

/// A call with `token` that the tier must refuse as unauthenticated.
async fn refused_call(addr: std::net::SocketAddr, token: &str) {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let status = pb::registry_service_client::RegistryServiceClient::new(channel)
        .get_scope(identity::with_token(token, pb::GetScopeRequest {}))
        .await
        .expect_err("a bad token is refused");
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_token_key_or_password_reaches_a_log_line_or_a_config_dump() {
    let nats = NatsServer::with_users(&INSTANCES).await;
    let (vdb, sdb, ddb) = tokio::join!(
        TestDb::seeded("village"),
        TestDb::seeded("street"),
        TestDb::seeded("district")
    );
    let logs = tempfile::tempdir().unwrap();
    let log_of = |tier: Tier| logs.path().join(format!("{tier:?}.log"));
    let mut tiers = Vec::new();
    for ((tier, scope), db) in INSTANCES.into_iter().zip([&vdb, &sdb, &ddb]) {
        tiers.push(
            TierProcess::start_with_env(
                tier,
                scope,
                &db.url,
                &nats.url(),
                Some(log_of(tier)),
                secret_env(tier, scope, &db.url),
            )
            .await,
        );
    }

    // Tokens the tiers must refuse: an expired one of ours and a stranger's.
    let mut expired = identity::claims_for("gw-350205002006001");
    expired.exp = identity::now() - 3600;
    let expired = identity::sign(&expired);
    let stranger = {
        let dir = tempfile::tempdir().unwrap();
        let (private, _) = wangge_auth::keys::generate(dir.path(), "wangge-tests").unwrap();
        let claims = identity::claims_for("admin");
        wangge_auth::SigningKey::load(&private)
            .unwrap()
            .issue(&claims)
            .unwrap()
    };
    for tier in &tiers {
        refused_call(tier.addr, &expired).await;
        refused_call(tier.addr, &stranger).await;
    }

    // The whole loop, from the command line, signed with the tests' key.
    let url = |i: usize| format!("http://{}", tiers[i].addr);
    let seeds = Path::new(env!("CARGO_MANIFEST_DIR")).join("../seeds");
    let demo = Command::new(workspace_binary("wangge"))
        .arg("demo")
        .args([
            "--village",
            &url(0),
            "--street",
            &url(1),
            "--district",
            &url(2),
        ])
        .arg("--seeds")
        .arg(&seeds)
        .arg("--signing-key")
        .arg(identity::private_key())
        .env("RUST_LOG", "trace")
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap();
    let demo_output = format!(
        "{}{}",
        String::from_utf8_lossy(&demo.stdout),
        String::from_utf8_lossy(&demo.stderr)
    );
    assert!(demo.status.success(), "wangge demo failed:\n{demo_output}");

    // What each tier would print as its configuration, with the same secrets in its environment.
    let mut dumps = Vec::new();
    for ((tier, scope), db) in INSTANCES.into_iter().zip([&vdb, &sdb, &ddb]) {
        let dump = Command::new(binary(tier))
            .args(["--scope", scope, "--dump-config"])
            .envs(secret_env(tier, scope, &db.url))
            .env(
                "WANGGE_AUTH__PUBLIC_KEYS",
                format!("[{:?}]", identity::public_key()),
            )
            .output()
            .await
            .unwrap();
        assert!(dump.status.success(), "{tier:?} --dump-config failed");
        let text = String::from_utf8_lossy(&dump.stdout).into_owned();
        assert!(
            text.contains("***"),
            "the dump shows where a secret was withheld:\n{text}"
        );
        dumps.push((format!("{tier:?} --dump-config"), text));
    }

    for tier in &mut tiers {
        tier.terminate(std::time::Duration::from_secs(10)).await;
    }
    let mut texts = dumps;
    texts.push(("wangge demo".to_owned(), demo_output));
    for (tier, _) in INSTANCES {
        let log = std::fs::read_to_string(log_of(tier)).unwrap();
        assert!(
            log.lines().count() > 100,
            "the {tier:?} log at trace level is this short:\n{log}"
        );
        texts.push((format!("{tier:?} log"), log));
    }
    // The search must be able to find what it looks for: the tokens used are in the test's hands.
    assert_eq!(tokens_in(&format!("x {expired} y")), vec![expired.clone()]);

    let mut found = Vec::new();
    for (file, text) in &texts {
        for (what, secret) in secrets() {
            found.extend(leaks(file, text, &what, &secret));
        }
        for token in tokens_in(text) {
            found.push(format!("{file}: a token: {token}"));
        }
        found.extend(leaks(file, text, "a bearer header", "Bearer "));
    }
    assert!(
        found.is_empty(),
        "secrets in the output:\n{}",
        found.join("\n")
    );
}
