//! Certificates made for one test with `rcgen`: a CA, a certificate for the servers (gRPC tiers and
//! nats-server, valid for `localhost` and `127.0.0.1`) and one for the clients, written as PEM
//! files into a temporary directory that lives as long as the value.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use tonic::transport::{Certificate, ClientTlsConfig, Identity};
use wangge_tier::config::TlsConfig;

/// A test's public key infrastructure. Tiers and NATS clients read the files while they run (a
/// NATS client on every reconnect): keep it alive until they stopped.
pub struct TestPki {
    dir: tempfile::TempDir,
}

impl TestPki {
    pub fn generate() -> TestPki {
        let dir = tempfile::tempdir().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, "wangge test CA");
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_key = KeyPair::generate().unwrap();
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca, ca_key);

        let leaf = |name: &str, purpose: ExtendedKeyUsagePurpose, file: &str| {
            let mut params =
                CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
                    .unwrap();
            params.distinguished_name.push(DnType::CommonName, name);
            params.use_authority_key_identifier_extension = true;
            params.key_usages = vec![
                KeyUsagePurpose::DigitalSignature,
                KeyUsagePurpose::KeyEncipherment,
            ];
            params.extended_key_usages = vec![purpose];
            let key = KeyPair::generate().unwrap();
            let cert = params.signed_by(&key, &issuer).unwrap();
            std::fs::write(dir.path().join(format!("{file}.pem")), cert.pem()).unwrap();
            std::fs::write(
                dir.path().join(format!("{file}-key.pem")),
                key.serialize_pem(),
            )
            .unwrap();
        };
        leaf(
            "wangge test server",
            ExtendedKeyUsagePurpose::ServerAuth,
            "server",
        );
        leaf(
            "wangge test client",
            ExtendedKeyUsagePurpose::ClientAuth,
            "client",
        );
        std::fs::write(dir.path().join("ca.pem"), ca_cert.pem()).unwrap();
        TestPki { dir }
    }

    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.path().join(file)
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn read(&self, file: &str) -> Vec<u8> {
        std::fs::read(self.path(file)).unwrap()
    }

    /// What a tier needs to serve gRPC over TLS with client certificates required, and to reach
    /// NATS over TLS only, presenting its client certificate.
    pub fn tier_tls(&self) -> TlsConfig {
        TlsConfig {
            grpc_cert: Some(self.path("server.pem")),
            grpc_key: Some(self.path("server-key.pem")),
            grpc_client_ca: Some(self.path("ca.pem")),
            ..self.nats_client_tls()
        }
    }

    /// A NATS client that trusts the CA, presents the client certificate and requires TLS.
    pub fn nats_client_tls(&self) -> TlsConfig {
        TlsConfig {
            nats_ca: Some(self.path("ca.pem")),
            nats_client_cert: Some(self.path("client.pem")),
            nats_client_key: Some(self.path("client-key.pem")),
            nats_require: true,
            ..TlsConfig::default()
        }
    }

    /// A gRPC client that trusts the CA and presents the client certificate.
    pub fn grpc_client(&self) -> ClientTlsConfig {
        self.grpc_client_without_certificate()
            .identity(Identity::from_pem(
                self.read("client.pem"),
                self.read("client-key.pem"),
            ))
    }

    /// A gRPC client that trusts the CA and has no certificate of its own.
    pub fn grpc_client_without_certificate(&self) -> ClientTlsConfig {
        ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(self.read("ca.pem")))
            .domain_name("localhost")
    }
}
