//! How the command reaches a tier: plain text for `http://`, TLS for `https://`, trusting `--ca`
//! (else the system's roots) and presenting `--cert`/`--key` to a tier that requires client
//! certificates.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

#[derive(Debug, Clone, clap::Args)]
pub struct Tls {
    /// The CA certificate (PEM) that signed the tiers' certificates, for https:// addresses;
    /// unset, the system's roots are trusted.
    #[arg(long, env = "WANGGE_CA")]
    ca: Option<PathBuf>,
    /// A client certificate (PEM) for tiers that require one (`tls.grpc_client_ca`).
    #[arg(long, env = "WANGGE_CLIENT_CERT", requires = "key")]
    cert: Option<PathBuf>,
    /// The private key (PEM) of `--cert`.
    #[arg(long, env = "WANGGE_CLIENT_KEY", requires = "cert")]
    key: Option<PathBuf>,
}

impl Tls {
    /// The endpoint of the tier at `url`, with TLS when the URL says https.
    pub fn endpoint(&self, url: &str) -> anyhow::Result<Endpoint> {
        let endpoint =
            Endpoint::from_shared(url.to_owned()).with_context(|| format!("bad address {url}"))?;
        if !url.starts_with("https://") {
            return Ok(endpoint);
        }
        let mut config = ClientTlsConfig::new();
        config = match &self.ca {
            Some(ca) => config.ca_certificate(Certificate::from_pem(read(ca)?)),
            None => config.with_native_roots(),
        };
        if let (Some(cert), Some(key)) = (&self.cert, &self.key) {
            config = config.identity(Identity::from_pem(read(cert)?, read(key)?));
        }
        endpoint
            .tls_config(config)
            .with_context(|| format!("TLS for {url}"))
    }
}

fn read(path: &Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
}
