//! How the command line calls as somebody: a token given as it is (`--token`, `WANGGE_TOKEN`), or,
//! for development and demos, tokens it signs itself for the demo's personas with a development
//! key (`--signing-key`, `WANGGE_SIGNING_KEY`; `wangge keygen` makes one, `deploy/up` too).

use std::path::PathBuf;
use std::sync::OnceLock;

use anyhow::Context;
use tonic::Request;
use tonic::metadata::MetadataValue;
use wangge_auth::{Claims, SigningKey, dev};

/// How long the tokens the command line signs for itself live.
const TTL_SECS: i64 = 3600;

#[derive(Debug, Clone, clap::Args)]
pub struct Credentials {
    /// A bearer token to call with; wins over --signing-key.
    #[arg(long, env = "WANGGE_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// A development signing key (`<key id>.key.pem`): the command line signs its personas'
    /// tokens with it.
    #[arg(
        long = "signing-key",
        env = "WANGGE_SIGNING_KEY",
        default_value = ".wangge/keys/dev.key.pem"
    )]
    signing_key: PathBuf,
    #[arg(skip)]
    loaded: OnceLock<std::sync::Arc<SigningKey>>,
}

impl Credentials {
    fn signing_key(&self) -> anyhow::Result<std::sync::Arc<SigningKey>> {
        if let Some(key) = self.loaded.get() {
            return Ok(key.clone());
        }
        let key = SigningKey::load(&self.signing_key).with_context(|| {
            format!(
                "no token given (--token, WANGGE_TOKEN) and no signing key at {} \
                 (--signing-key, WANGGE_SIGNING_KEY; `wangge keygen` makes one)",
                self.signing_key.display()
            )
        })?;
        Ok(self.loaded.get_or_init(|| std::sync::Arc::new(key)).clone())
    }

    /// A token for `claims`, signed with the development key.
    pub fn sign(&self, claims: &Claims) -> anyhow::Result<String> {
        Ok(self.signing_key()?.issue(claims)?)
    }

    /// The token to call with as `persona` (see [`dev::persona`]): the given token if there is
    /// one, else one signed for the persona.
    pub fn token_for(&self, persona: &str) -> anyhow::Result<String> {
        if let Some(token) = &self.token {
            return Ok(token.clone());
        }
        let claims = dev::persona(persona, dev::now(), TTL_SECS).map_err(anyhow::Error::msg)?;
        self.sign(&claims)
    }

    /// `message` as a request carrying `persona`'s token.
    pub fn request<T>(&self, persona: &str, message: T) -> anyhow::Result<Request<T>> {
        with_token(&self.token_for(persona)?, message)
    }
}

/// `message` as a request carrying `token`.
pub fn with_token<T>(token: &str, message: T) -> anyhow::Result<Request<T>> {
    let mut request = Request::new(message);
    request.metadata_mut().insert(
        "authorization",
        MetadataValue::try_from(format!("Bearer {token}")).context("a token is ASCII")?,
    );
    Ok(request)
}
