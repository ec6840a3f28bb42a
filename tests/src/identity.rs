//! Who the tests call as: one development key pair per test process, tokens for the fixtures'
//! people (named by convention, see [`claims_for`]), and channels that carry an observer's token
//! on every call that names nobody else.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use tonic::Request;
use tonic::metadata::MetadataValue;
use tonic::service::interceptor::InterceptedService;
use wangge_auth::{Claims, SigningKey};

pub use wangge_auth::dev::now;

/// A channel to a tier whose calls carry [`OBSERVER`]'s token unless they carry their own.
pub type Channel = InterceptedService<tonic::transport::Channel, Observer>;

/// The identity of calls that name nobody: an auditor (reads) and admin (status) of Haicang.
pub const OBSERVER: &str = "observer";

/// The key id of the tests' key pair.
pub const KEY_ID: &str = "wangge-tests";

struct Keys {
    _dir: tempfile::TempDir,
    public: PathBuf,
    private: PathBuf,
    signing: SigningKey,
}

fn keys() -> &'static Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let (private, public) = wangge_auth::keys::generate(dir.path(), KEY_ID).unwrap();
        let signing = SigningKey::load(&private).unwrap();
        Keys {
            _dir: dir,
            public,
            private,
            signing,
        }
    })
}

/// The public key file the tiers under test trust.
pub fn public_key() -> &'static Path {
    &keys().public
}

/// The private key file of the tests' key pair, for the command line (`wangge demo --signing-key`).
pub fn private_key() -> &'static Path {
    &keys().private
}

/// Signs `claims` with the tests' key.
pub fn sign(claims: &Claims) -> String {
    keys().signing.issue(claims).unwrap()
}

/// The claims of a fixture person, by the naming convention of [`wangge_auth::dev::persona`].
pub fn claims_for(name: &str) -> Claims {
    wangge_auth::dev::persona(name, now(), 3600).unwrap()
}

/// The bearer token of a fixture person.
pub fn token_for(name: &str) -> String {
    sign(&claims_for(name))
}

/// `request` carrying `token`.
pub fn with_token<T>(token: &str, message: T) -> Request<T> {
    let mut request = Request::new(message);
    request.metadata_mut().insert(
        "authorization",
        MetadataValue::try_from(format!("Bearer {token}")).unwrap(),
    );
    request
}

/// Adds the observer's token to calls that carry none.
#[derive(Clone)]
pub struct Observer(MetadataValue<tonic::metadata::Ascii>);

impl tonic::service::Interceptor for Observer {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, tonic::Status> {
        if !request.metadata().contains_key("authorization") {
            request
                .metadata_mut()
                .insert("authorization", self.0.clone());
        }
        Ok(request)
    }
}

/// `channel`, with the observer's token on calls that name nobody.
pub fn observed(channel: tonic::transport::Channel) -> Channel {
    static OBSERVER_TOKEN: OnceLock<MetadataValue<tonic::metadata::Ascii>> = OnceLock::new();
    let token = OBSERVER_TOKEN
        .get_or_init(|| MetadataValue::try_from(format!("Bearer {}", token_for(OBSERVER))).unwrap())
        .clone();
    InterceptedService::new(channel, Observer(token))
}
