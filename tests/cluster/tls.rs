//! The production transport: gRPC over rustls and NATS over TLS, with certificates made in the test,
//! and the refusal to talk in plain text beyond loopback unless that is allowed on purpose.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;
use wangge_proto::{CaseState, Tier};
use wangge_tests::cluster::{STREET_SCOPE, as_actor};
use wangge_tests::db::TestDb;
use wangge_tests::fixtures::*;
use wangge_tests::nats::NatsServer;
use wangge_tests::process::{binary, workspace_binary};
use wangge_tests::tls::TestPki;
use wangge_tests::{Cluster, eventually};
use wangge_tier::Config;

use crate::case_loop::{action, same_everywhere};
use crate::edges::describe_everything_v1;

/// Whether a health check through `endpoint` gets an answer (within 10 s).
async fn answers(endpoint: tonic::transport::Endpoint) -> bool {
    let check = async {
        let channel = endpoint.connect().await.ok()?;
        HealthClient::new(channel)
            .check(HealthCheckRequest::default())
            .await
            .ok()
    };
    tokio::time::timeout(Duration::from_secs(10), check)
        .await
        .ok()
        .flatten()
        .is_some()
}

/// A grpc-web call (`GetScope`) over HTTP/1.1 in TLS, as a browser or proxy that does not speak
/// HTTP/2 sends it: no ALPN, the client certificate of `pki`.
async fn grpc_web_get_scope_over_tls(pki: &TestPki, addr: std::net::SocketAddr) -> String {
    let pem = |file: &str| std::fs::read(pki.path(file)).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(&pem("ca.pem")).unwrap())
        .unwrap();
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_client_auth_cert(
            vec![CertificateDer::from_pem_slice(&pem("client.pem")).unwrap()],
            PrivateKeyDer::from_pem_slice(&pem("client-key.pem")).unwrap(),
        )
        .unwrap();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut stream = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    let request = format!(
        "POST /wangge.v1.RegistryService/GetScope HTTP/1.1\r\nHost: localhost:{}\r\n\
         Content-Type: application/grpc-web+proto\r\nX-Grpc-Web: 1\r\nContent-Length: 5\r\n\
         Authorization: Bearer {}\r\nConnection: close\r\n\r\n",
        addr.port(),
        wangge_tests::identity::token_for("observer")
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    stream.write_all(&[0, 0, 0, 0, 0]).await.unwrap();
    let mut response = Vec::new();
    // The server may end the TLS session without close_notify after `Connection: close`.
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut response)).await;
    String::from_utf8_lossy(&response).into_owned()
}

#[tokio::test]
async fn the_case_loop_runs_over_tls_on_grpc_and_nats_and_plain_text_is_refused() {
    let pki = TestPki::generate();
    let cluster = Cluster::start_tls(&pki).await;

    // The broker takes TLS clients with a certificate only: the tiers' events below could only
    // have travelled over TLS. A client without the test CA and certificate is turned away.
    let plain = async_nats::ConnectOptions::new()
        .connect(cluster.nats.url())
        .await;
    assert!(
        plain.is_err(),
        "the test nats-server must refuse clients without TLS"
    );

    // Report at the village; it converges at the street and the district; the street accepts.
    let clients = cluster.clients().await;
    let case = report_case(&clients, GRID).await;
    assert_eq!(case.state(), CaseState::Reported);
    same_everywhere(&clients, &case).await;
    let case = clients
        .street_console()
        .accept_case(as_actor(STREET_OPERATOR, action(&case, "属实")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(case.state(), CaseState::Accepted);
    let history = same_everywhere(&clients, &case).await;
    assert_eq!(history.len(), 2);

    let street = &cluster.street;
    // Plain text gets no answer from a tier serving TLS, nor TLS without a client certificate
    // from a tier that requires one; the test's own client, with both, does.
    assert!(
        !answers(wangge_tests::endpoint(street.addr, None)).await,
        "a plain-text client must be refused"
    );
    let without_certificate =
        wangge_tests::endpoint(street.addr, Some(&pki.grpc_client_without_certificate()));
    assert!(
        !answers(without_certificate).await,
        "a client without a certificate must be refused"
    );
    assert!(answers(street.endpoint()).await);

    // Reflection and grpc-web keep working over TLS.
    let listed = describe_everything_v1(street.channel().await).await;
    assert!(
        listed
            .iter()
            .any(|n| n == "wangge.v1.CommandConsoleService"),
        "{listed:?}"
    );
    let response = grpc_web_get_scope_over_tls(&pki, street.addr).await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.contains("grpc-status:0"), "{response}");
    assert!(response.contains(STREET_SCOPE), "{response}");

    // The command line reaches the tiers over https:// with the CA and a client certificate.
    let output = tokio::process::Command::new(workspace_binary("wangge"))
        .env_clear()
        .env(
            "WANGGE_TOKEN",
            wangge_tests::identity::token_for("observer"),
        )
        .arg("status")
        .args(
            [&cluster.village, &cluster.street, &cluster.district]
                .map(|tier| format!("https://127.0.0.1:{}", tier.addr.port())),
        )
        .arg("--ca")
        .arg(pki.path("ca.pem"))
        .args(["--cert".as_ref(), pki.path("client.pem").as_os_str()])
        .args(["--key".as_ref(), pki.path("client-key.pem").as_os_str()])
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.code().is_some_and(|code| code < 2),
        "every tier answered `wangge status` over TLS: {output:?}"
    );
    assert!(!text.contains("DOWN"), "{text}");

    cluster.stop().await;
}

/// A tier's configuration for `run` on a listener of the test's choosing.
fn config_for(tier: Tier, scope: &str, database_url: &str, nats_url: &str) -> Config {
    let mut config = Config::defaults(tier);
    config.scope = scope.to_owned();
    config.database_url = database_url.to_owned().into();
    config.nats_url = nats_url.to_owned();
    config.auth.public_keys = vec![wangge_tests::identity::public_key().to_owned()];
    config
}

#[tokio::test]
async fn a_tier_refuses_plain_text_beyond_loopback_unless_allowed() {
    wangge_tests::init_logs();
    let nats = NatsServer::start().await;
    let db = TestDb::seeded("street").await;
    let never = std::future::pending::<()>();

    // Listening on every interface without TLS: refused before anything else happens.
    let listener = TcpListener::bind("0.0.0.0:0").await.unwrap();
    let config = config_for(Tier::Street, STREET_SCOPE, &db.url, &nats.url());
    let refused = tokio::time::timeout(
        Duration::from_secs(10),
        wangge_street::run(config.clone(), listener, never),
    )
    .await
    .expect("a refusal, at once")
    .expect_err("a tier listening on 0.0.0.0 in plain text must not start");
    let message = format!("{refused:#}");
    assert!(message.starts_with("listen 0.0.0.0:"), "{message}");
    assert!(message.contains("tls.grpc_cert"), "{message}");
    assert!(message.contains("tls.allow_plaintext"), "{message}");

    // A NATS server elsewhere without TLS required: refused too, naming the server, not the
    // password in its URL.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let elsewhere = config_for(
        Tier::Street,
        STREET_SCOPE,
        &db.url,
        "nats://wangge:hunter2@hub.haicang.example:4222",
    );
    let refused = wangge_street::run(elsewhere, listener, std::future::pending())
        .await
        .expect_err("a tier reaching a remote NATS in plain text must not start");
    let message = format!("{refused:#}");
    assert!(message.contains("hub.haicang.example:4222"), "{message}");
    assert!(message.contains("tls.nats_require"), "{message}");
    assert!(!message.contains("hunter2"), "{message}");

    // Allowed on purpose, the same tier serves on every interface.
    let listener = TcpListener::bind("0.0.0.0:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut allowed = config;
    allowed.tls.allow_plaintext = true;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(wangge_street::run(allowed, listener, async move {
        let _ = stopped.await;
    }));
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    eventually("the allowed tier to serve", Duration::from_secs(20), || {
        wangge_tests::serving(addr)
    })
    .await;
    stop.send(()).unwrap();
    task.await.unwrap().unwrap();
}

#[tokio::test]
async fn the_binaries_take_tls_settings_from_the_environment_and_name_them_when_refusing() {
    let run = |args: &'static [&'static str], env: &'static [(&'static str, &'static str)]| async move {
        tokio::process::Command::new(binary(Tier::Street))
            .env_clear()
            .args(args)
            .envs(env.iter().copied())
            .output()
            .await
            .unwrap()
    };
    let output = run(
        &["--dump-config"],
        &[
            ("WANGGE_TLS__GRPC_CERT", "/etc/wangge/street.pem"),
            ("WANGGE_TLS__GRPC_KEY", "/etc/wangge/street-key.pem"),
            ("WANGGE_TLS__NATS_CA", "/etc/wangge/ca.pem"),
            ("WANGGE_TLS__NATS_REQUIRE", "true"),
        ],
    )
    .await;
    assert!(output.status.success(), "{output:?}");
    let text = String::from_utf8(output.stdout).unwrap();
    assert!(text.contains("[tls]"), "{text}");
    assert!(
        text.contains("grpc_cert = \"/etc/wangge/street.pem\""),
        "{text}"
    );
    assert!(text.contains("nats_require = true"), "{text}");
    assert!(text.contains("allow_plaintext = false"), "{text}");

    // The refusal comes before the database or NATS is touched: neither exists here.
    let output = run(
        &[
            "--listen",
            "0.0.0.0:0",
            "--database-url",
            "postgres://nobody@127.0.0.1:1/none",
        ],
        &[],
    )
    .await;
    assert!(!output.status.success(), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("tls.allow_plaintext"), "{stderr}");
    assert!(stderr.contains("WANGGE_TLS__GRPC_CERT"), "{stderr}");

    // Allowed through the environment, the same start gets past the check (and stops at the
    // database URL, whose port cannot be).
    let output = run(
        &[
            "--listen",
            "0.0.0.0:0",
            "--database-url",
            "postgres://nobody@127.0.0.1:99999/none",
        ],
        &[("WANGGE_TLS__ALLOW_PLAINTEXT", "true")],
    )
    .await;
    assert!(!output.status.success(), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("tls.allow_plaintext"), "{stderr}");
    assert!(stderr.contains("database_url"), "{stderr}");
}
