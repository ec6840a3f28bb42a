//! Keys: public keys a tier trusts (PEM files or a JWKS file from an identity provider), and the
//! signing key of the development issuer.
//!
//! A PEM key's id is its file name without `.pub.pem` / `.key.pem` (`dev-2026.pub.pem` is key
//! `dev-2026`), so rotating is: make a new pair, add its public file to every tier, sign with it,
//! remove the old public file when the old tokens have expired.

use std::fmt;
use std::path::{Path, PathBuf};

use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::{EncodePrivateKey, EncodePublicKey};
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header};

use crate::Claims;

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not an Ed25519 or P-256 {what} key in PEM")]
    NotAKey { path: PathBuf, what: &'static str },
    #[error("{path}: the file name must end in {suffix} (its key id is the part before)")]
    Name { path: PathBuf, suffix: &'static str },
    #[error("{path}: {message}")]
    Jwks { path: PathBuf, message: String },
    #[error("{0} already exists: pick another key name or remove it")]
    Exists(PathBuf),
    #[error("no randomness from the operating system: {0}")]
    Random(String),
    #[error("cannot sign: {0}")]
    Sign(String),
}

fn read(path: &Path) -> Result<Vec<u8>, KeyError> {
    std::fs::read(path).map_err(|source| KeyError::Io {
        path: path.to_owned(),
        source,
    })
}

fn kid_of(path: &Path, suffix: &'static str) -> Result<String, KeyError> {
    path.file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_suffix(suffix))
        .filter(|kid| !kid.is_empty())
        .map(str::to_owned)
        .ok_or_else(|| KeyError::Name {
            path: path.to_owned(),
            suffix,
        })
}

/// A `<kid><suffix>` PEM file read as an Ed25519 key, else as a P-256 one: its kid, key and
/// algorithm.
fn load_pem<K, E>(
    path: &Path,
    suffix: &'static str,
    what: &'static str,
    ed: impl Fn(&[u8]) -> Result<K, E>,
    ec: impl Fn(&[u8]) -> Result<K, E>,
) -> Result<(String, K, Algorithm), KeyError> {
    let kid = kid_of(path, suffix)?;
    let pem = read(path)?;
    if let Ok(key) = ed(&pem) {
        Ok((kid, key, Algorithm::EdDSA))
    } else if let Ok(key) = ec(&pem) {
        Ok((kid, key, Algorithm::ES256))
    } else {
        Err(KeyError::NotAKey {
            path: path.to_owned(),
            what,
        })
    }
}

/// A key tokens may be signed with, by its id.
pub struct PublicKey {
    pub kid: String,
    pub key: DecodingKey,
    pub algorithm: Algorithm,
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PublicKey")
            .field("kid", &self.kid)
            .field("algorithm", &self.algorithm)
            .finish()
    }
}

impl PublicKey {
    /// `<kid>.pub.pem`: an Ed25519 (EdDSA) or P-256 (ES256) public key.
    pub fn load(path: &Path) -> Result<PublicKey, KeyError> {
        let (kid, key, algorithm) = load_pem(
            path,
            ".pub.pem",
            "public",
            DecodingKey::from_ed_pem,
            DecodingKey::from_ec_pem,
        )?;
        Ok(PublicKey {
            kid,
            key,
            algorithm,
        })
    }

    /// The Ed25519 and P-256 keys of a JWKS document (what identity providers publish at
    /// `/.well-known/jwks.json`); every key needs a `kid`.
    pub fn load_jwks(path: &Path) -> Result<Vec<PublicKey>, KeyError> {
        let bad = |message: String| KeyError::Jwks {
            path: path.to_owned(),
            message,
        };
        let set: JwkSet =
            serde_json::from_slice(&read(path)?).map_err(|e| bad(format!("not a JWKS: {e}")))?;
        let mut keys = Vec::new();
        for jwk in &set.keys {
            let kid = jwk
                .common
                .key_id
                .clone()
                .ok_or_else(|| bad("a key has no kid".into()))?;
            let algorithm = match &jwk.algorithm {
                AlgorithmParameters::OctetKeyPair(_) => Algorithm::EdDSA,
                AlgorithmParameters::EllipticCurve(ec) if ec.curve == EllipticCurve::P256 => {
                    Algorithm::ES256
                }
                // RSA and HMAC keys are not accepted: tokens must be EdDSA or ES256.
                _ => continue,
            };
            let key = DecodingKey::from_jwk(jwk).map_err(|e| bad(format!("key {kid}: {e}")))?;
            keys.push(PublicKey {
                kid,
                key,
                algorithm,
            });
        }
        Ok(keys)
    }
}

/// The private key of the development issuer.
pub struct SigningKey {
    kid: String,
    key: EncodingKey,
    algorithm: Algorithm,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .field("algorithm", &self.algorithm)
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    /// `<kid>.key.pem`: an Ed25519 or P-256 private key in PKCS#8 PEM.
    pub fn load(path: &Path) -> Result<SigningKey, KeyError> {
        let (kid, key, algorithm) = load_pem(
            path,
            ".key.pem",
            "private",
            EncodingKey::from_ed_pem,
            EncodingKey::from_ec_pem,
        )?;
        Ok(SigningKey {
            kid,
            key,
            algorithm,
        })
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The same key under another id (tests use it to forge a signature).
    pub fn with_kid(self, kid: &str) -> SigningKey {
        SigningKey {
            kid: kid.to_owned(),
            ..self
        }
    }

    /// A signed token with these claims (and the key's id in its header).
    pub fn issue(&self, claims: &Claims) -> Result<String, KeyError> {
        let mut header = Header::new(self.algorithm);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.key).map_err(|e| KeyError::Sign(e.to_string()))
    }
}

/// Makes an Ed25519 key pair in `dir`: `<name>.key.pem` (readable by the owner only) and
/// `<name>.pub.pem`. Refuses to overwrite either.
pub fn generate(dir: &Path, name: &str) -> Result<(PathBuf, PathBuf), KeyError> {
    let private = dir.join(format!("{name}.key.pem"));
    let public = dir.join(format!("{name}.pub.pem"));
    for path in [&private, &public] {
        if path.exists() {
            return Err(KeyError::Exists(path.clone()));
        }
    }
    let mut seed = [0u8; 32];
    getrandom::getrandom(&mut seed).map_err(|e| KeyError::Random(e.to_string()))?;
    let key = ed25519_dalek::SigningKey::from_bytes(&seed);
    let private_pem = key
        .to_pkcs8_pem(LineEnding::LF)
        .map_err(|e| KeyError::Sign(e.to_string()))?;
    let public_pem = key
        .verifying_key()
        .to_public_key_pem(LineEnding::LF)
        .map_err(|e| KeyError::Sign(e.to_string()))?;
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| KeyError::Io { path, source }
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    write_private(&private, private_pem.as_bytes()).map_err(io(&private))?;
    std::fs::write(&public, public_pem).map_err(io(&public))?;
    Ok((private, public))
}

#[cfg(unix)]
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?
        .write_all(bytes)
}

#[cfg(not(unix))]
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    std::fs::write(path, bytes)
}
