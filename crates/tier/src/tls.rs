//! Transport security: gRPC served over rustls, NATS reached over TLS, and the start-up check that
//! keeps plain text to loopback unless the operator allowed it on purpose.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use async_nats::{ConnectOptions, ServerAddr};
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};

use crate::config::TlsConfig;

/// A client that opened a connection has this long to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a tier refuses its transport settings. Every message names the settings to change.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "listen {listen} is not a loopback address and gRPC has no TLS: set tls.grpc_cert and \
         tls.grpc_key (WANGGE_TLS__GRPC_CERT, WANGGE_TLS__GRPC_KEY), or tls.allow_plaintext = true \
         (WANGGE_TLS__ALLOW_PLAINTEXT) to serve plain text on purpose"
    )]
    PlaintextGrpc { listen: SocketAddr },
    #[error(
        "nats_url names {server}, which is not on loopback, and NATS TLS is not required: set \
         tls.nats_require = true (WANGGE_TLS__NATS_REQUIRE, with tls.nats_ca for a private CA) or \
         use a tls:// URL, or set tls.allow_plaintext = true (WANGGE_TLS__ALLOW_PLAINTEXT) to talk \
         to NATS in plain text on purpose"
    )]
    PlaintextNats { server: String },
    #[error("tls.{given} is set but tls.{missing} is not: they go together")]
    Unpaired {
        given: &'static str,
        missing: &'static str,
    },
    #[error("nats_url: {0}")]
    NatsUrl(std::io::Error),
    #[error("tls.{setting} = {}: {source}", path.display())]
    Unreadable {
        setting: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("tls.{setting} = {}: no PEM block in the file", path.display())]
    NotPem {
        setting: &'static str,
        path: PathBuf,
    },
    #[error("gRPC TLS: {0}")]
    Server(#[from] tonic::transport::Error),
}

/// Refuses what would carry calls or events in plain text beyond this machine, and names files
/// that are missing or hold no PEM, before the tier does anything else. `listen` is the address
/// the listener is bound to.
pub fn check(tls: &TlsConfig, listen: SocketAddr, nats_url: &str) -> Result<(), Error> {
    pair(&tls.grpc_cert, "grpc_cert", &tls.grpc_key, "grpc_key")?;
    pair(
        &tls.nats_client_cert,
        "nats_client_cert",
        &tls.nats_client_key,
        "nats_client_key",
    )?;
    let files = [
        ("grpc_cert", &tls.grpc_cert),
        ("grpc_key", &tls.grpc_key),
        ("grpc_client_ca", &tls.grpc_client_ca),
        ("nats_ca", &tls.nats_ca),
        ("nats_client_cert", &tls.nats_client_cert),
        ("nats_client_key", &tls.nats_client_key),
    ];
    for (setting, path) in files {
        if let Some(path) = path {
            read_pem(setting, path)?;
        }
    }
    if tls.allow_plaintext {
        return Ok(());
    }
    if tls.grpc_cert.is_none() && !listen.ip().is_loopback() {
        return Err(Error::PlaintextGrpc { listen });
    }
    for url in nats_urls(nats_url) {
        let server: ServerAddr = url.parse().map_err(Error::NatsUrl)?;
        let encrypted = tls.nats_require || server.tls_required() || server.scheme() == "wss";
        if !encrypted && !is_loopback(server.host()) {
            // Host and port only: a URL may carry a user and password.
            return Err(Error::PlaintextNats {
                server: format!("{}:{}", server.host(), server.port()),
            });
        }
    }
    Ok(())
}

/// The gRPC server, over TLS when `grpc_cert` and `grpc_key` are set, with client certificates
/// required when `grpc_client_ca` is.
pub fn grpc_server(tls: &TlsConfig) -> Result<Server, Error> {
    let (Some(cert), Some(key)) = (&tls.grpc_cert, &tls.grpc_key) else {
        return Ok(Server::builder());
    };
    let identity = Identity::from_pem(read_pem("grpc_cert", cert)?, read_pem("grpc_key", key)?);
    let mut config = ServerTlsConfig::new()
        .identity(identity)
        .timeout(HANDSHAKE_TIMEOUT);
    if let Some(ca) = &tls.grpc_client_ca {
        config = config.client_ca_root(Certificate::from_pem(read_pem("grpc_client_ca", ca)?));
    }
    Ok(Server::builder().tls_config(config)?)
}

/// NATS over TLS as configured, for the connect options of a tier.
pub trait NatsTls {
    /// Trusts `nats_ca`, presents the client certificate, and requires TLS when asked to.
    fn tls(self, tls: &TlsConfig) -> Self;
}

impl NatsTls for ConnectOptions {
    fn tls(self, tls: &TlsConfig) -> Self {
        let mut options = self;
        if let Some(ca) = &tls.nats_ca {
            options = options.add_root_certificates(ca.clone());
        }
        if let (Some(cert), Some(key)) = (&tls.nats_client_cert, &tls.nats_client_key) {
            options = options.add_client_certificate(cert.clone(), key.clone());
        }
        if tls.nats_require {
            options = options.require_tls(true);
        }
        options
    }
}

/// The servers of a comma-separated `nats_url`.
pub fn nats_urls(nats_url: &str) -> Vec<&str> {
    nats_url.split(',').map(str::trim).collect()
}

/// `localhost` or a loopback address.
fn is_loopback(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

fn pair(
    first: &Option<PathBuf>,
    first_name: &'static str,
    second: &Option<PathBuf>,
    second_name: &'static str,
) -> Result<(), Error> {
    match (first, second) {
        (Some(_), None) => Err(Error::Unpaired {
            given: first_name,
            missing: second_name,
        }),
        (None, Some(_)) => Err(Error::Unpaired {
            given: second_name,
            missing: first_name,
        }),
        _ => Ok(()),
    }
}

/// The file's bytes, if it holds a PEM block. The contents never appear in an error.
fn read_pem(setting: &'static str, path: &Path) -> Result<Vec<u8>, Error> {
    let bytes = std::fs::read(path).map_err(|source| Error::Unreadable {
        setting,
        path: path.to_owned(),
        source,
    })?;
    if !bytes.windows(11).any(|window| window == b"-----BEGIN ") {
        return Err(Error::NotPem {
            setting,
            path: path.to_owned(),
        });
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(text: &str) -> SocketAddr {
        text.parse().unwrap()
    }

    #[test]
    fn plain_text_is_the_default_on_loopback_only() {
        let tls = TlsConfig::default();
        check(&tls, addr("127.0.0.1:50051"), "nats://127.0.0.1:4222").unwrap();
        check(
            &tls,
            addr("[::1]:50051"),
            "nats://localhost:4222, [::1]:4223",
        )
        .unwrap();

        let error = check(&tls, addr("0.0.0.0:50051"), "nats://127.0.0.1:4222").unwrap_err();
        assert!(matches!(error, Error::PlaintextGrpc { .. }), "{error}");
        assert!(error.to_string().contains("tls.allow_plaintext"), "{error}");

        let error = check(
            &tls,
            addr("127.0.0.1:50051"),
            "nats://127.0.0.1:4222,nats://wangge:secret@hub.haicang:4222",
        )
        .unwrap_err();
        let text = error.to_string();
        assert!(text.contains("hub.haicang:4222"), "{text}");
        assert!(text.contains("tls.nats_require"), "{text}");
        assert!(!text.contains("secret"), "{text}");
    }

    #[test]
    fn a_tls_url_or_the_switch_lets_a_remote_nats_through() {
        let mut tls = TlsConfig::default();
        check(&tls, addr("127.0.0.1:1"), "tls://hub.haicang:4222").unwrap();
        tls.nats_require = true;
        check(&tls, addr("127.0.0.1:1"), "nats://hub.haicang:4222").unwrap();
        let tls = TlsConfig {
            allow_plaintext: true,
            ..TlsConfig::default()
        };
        check(&tls, addr("10.0.0.5:1"), "nats://hub.haicang:4222").unwrap();
    }

    #[test]
    fn halves_and_missing_files_are_named() {
        let tls = TlsConfig {
            grpc_cert: Some("/nonexistent/cert.pem".into()),
            ..TlsConfig::default()
        };
        let error = check(&tls, addr("127.0.0.1:1"), "nats://127.0.0.1").unwrap_err();
        assert_eq!(
            error.to_string(),
            "tls.grpc_cert is set but tls.grpc_key is not: they go together"
        );
        let tls = TlsConfig {
            nats_ca: Some("/nonexistent/ca.pem".into()),
            ..TlsConfig::default()
        };
        let error = check(&tls, addr("127.0.0.1:1"), "nats://127.0.0.1").unwrap_err();
        assert!(
            error
                .to_string()
                .starts_with("tls.nats_ca = /nonexistent/ca.pem: "),
            "{error}"
        );
        let not_pem = std::env::temp_dir().join(format!("wangge-not-pem-{}", std::process::id()));
        std::fs::write(&not_pem, "hunter2").unwrap();
        let tls = TlsConfig {
            grpc_client_ca: Some(not_pem.clone()),
            ..TlsConfig::default()
        };
        let error = check(&tls, addr("127.0.0.1:1"), "nats://127.0.0.1").unwrap_err();
        std::fs::remove_file(&not_pem).unwrap();
        assert!(
            error.to_string().ends_with("no PEM block in the file"),
            "{error}"
        );
        assert!(!error.to_string().contains("hunter2"));
    }
}
