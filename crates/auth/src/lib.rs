//! Who is calling: every gRPC call carries `authorization: Bearer <JWT>`, signed by an identity
//! provider with an asymmetric key (EdDSA or ES256). A tier holds only public keys (several at
//! once, so keys rotate without downtime) and turns a token into a [`Caller`]: subject, roles, org
//! scopes and departments. What a caller may do with that is the tier's policy, not this crate's.
//!
//! For development and demos, `wangge keygen` makes a key pair ([`keys::generate`]) and
//! `wangge token` signs tokens with it ([`keys::SigningKey::issue`]).

pub mod dev;
pub mod keys;

use std::collections::HashMap;
use std::fmt;

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::{Deserialize, Serialize};
use wangge_domain::{GridCode, Scope};
use wangge_proto as pb;

pub use keys::{KeyError, PublicKey, SigningKey};

/// The audience every wangge token names, so a token minted for another system is refused.
pub const AUDIENCE: &str = "wangge";

/// What a token says, as it travels.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The person (or system account), e.g. `gw-350205002006001`.
    pub sub: String,
    /// Role names: `grid_worker`, `community_staff`, `street_operator`, `duty_chief`,
    /// `district_operator`, `department_handler`, `supervisor`, `auditor`, `admin`, `leader`.
    pub roles: Vec<String>,
    /// Org codes the roles apply in: a district (`350205`), street (`350205002`), community
    /// (`350205002006`, or their 12-digit forms) or grid (`350205002006001`).
    #[serde(default)]
    pub orgs: Vec<String>,
    /// Department codes a department handler acts for.
    #[serde(default)]
    pub departments: Vec<String>,
    pub exp: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<i64>,
    #[serde(default)]
    pub iat: i64,
    /// Checked by the verifier from the raw token (a provider may send a list); only written here.
    #[serde(default, skip_deserializing, skip_serializing_if = "Option::is_none")]
    pub aud: Option<String>,
    #[serde(default, skip_deserializing, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
}

impl Claims {
    /// Claims for `sub` in `roles`, `orgs` and `departments`, valid from `now` for `ttl_secs`.
    pub fn new(
        sub: &str,
        roles: &[&str],
        orgs: &[&str],
        departments: &[&str],
        now: i64,
        ttl_secs: i64,
    ) -> Claims {
        let owned = |items: &[&str]| items.iter().map(|s| s.to_string()).collect();
        Claims {
            sub: sub.to_owned(),
            roles: owned(roles),
            orgs: owned(orgs),
            departments: owned(departments),
            exp: now + ttl_secs,
            nbf: None,
            iat: now,
            aud: Some(AUDIENCE.to_owned()),
            iss: None,
        }
    }
}

/// The level of an org a caller's scope names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    District,
    Street,
    Community,
    Grid,
}

/// One org a caller's roles apply in, as the grid-code prefix it covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrgScope {
    prefix: String,
    level: Level,
}

impl OrgScope {
    /// Every grid and org inside starts with this.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn level(&self) -> Level {
        self.level
    }

    /// Whether the grid (or org, or narrower prefix) `code` lies inside this scope.
    pub fn covers(&self, code: &str) -> bool {
        code.starts_with(&self.prefix)
    }
}

impl std::str::FromStr for OrgScope {
    type Err = String;

    fn from_str(s: &str) -> Result<OrgScope, String> {
        if s.len() == 15 {
            let grid: GridCode = s.parse().map_err(|e| format!("{s:?}: {e}"))?;
            return Ok(OrgScope {
                prefix: grid.to_string(),
                level: Level::Grid,
            });
        }
        let scope: Scope = s.parse().map_err(|e| format!("{s:?}: {e}"))?;
        let prefix = scope.prefix().to_owned();
        let level = match prefix.len() {
            6 => Level::District,
            9 => Level::Street,
            _ => Level::Community,
        };
        Ok(OrgScope { prefix, level })
    }
}

impl fmt::Display for OrgScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.prefix)
    }
}

/// A caller whose token verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub subject: String,
    pub roles: Vec<pb::Role>,
    pub orgs: Vec<OrgScope>,
    pub departments: Vec<String>,
}

impl Caller {
    pub fn has(&self, role: pb::Role) -> bool {
        self.roles.contains(&role)
    }
}

/// The name a role has in tokens.
pub fn role_name(role: pb::Role) -> &'static str {
    match role {
        pb::Role::Unspecified => "unspecified",
        pb::Role::GridWorker => "grid_worker",
        pb::Role::CommunityStaff => "community_staff",
        pb::Role::StreetOperator => "street_operator",
        pb::Role::DutyChief => "duty_chief",
        pb::Role::DistrictOperator => "district_operator",
        pb::Role::DepartmentHandler => "department_handler",
        pb::Role::Supervisor => "supervisor",
        pb::Role::Auditor => "auditor",
        pb::Role::Admin => "admin",
        pb::Role::System => "system",
        pb::Role::Leader => "leader",
    }
}

/// The roles a token may carry (the platform's own `system` role never comes from a token).
pub const ROLES: [pb::Role; 10] = [
    pb::Role::GridWorker,
    pb::Role::CommunityStaff,
    pb::Role::StreetOperator,
    pb::Role::DutyChief,
    pb::Role::DistrictOperator,
    pb::Role::DepartmentHandler,
    pb::Role::Supervisor,
    pb::Role::Auditor,
    pb::Role::Admin,
    pb::Role::Leader,
];

pub fn parse_role(name: &str) -> Option<pb::Role> {
    ROLES.into_iter().find(|&role| role_name(role) == name)
}

fn valid_subject(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'@'))
}

fn valid_department(code: &str) -> bool {
    !code.is_empty()
        && code.len() <= 64
        && code
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

impl TryFrom<Claims> for Caller {
    type Error = TokenError;

    fn try_from(claims: Claims) -> Result<Caller, TokenError> {
        let bad = |what: String| TokenError::Claims(what);
        if !valid_subject(&claims.sub) {
            return Err(bad("sub must be 1-64 letters, digits or -_.@".into()));
        }
        if claims.roles.is_empty() {
            return Err(bad("roles is empty".into()));
        }
        let roles = claims
            .roles
            .iter()
            .map(|name| parse_role(name).ok_or_else(|| bad(format!("unknown role {name:?}"))))
            .collect::<Result<Vec<_>, _>>()?;
        let orgs = claims
            .orgs
            .iter()
            .map(|code| code.parse().map_err(|e| bad(format!("orgs: {e}"))))
            .collect::<Result<Vec<OrgScope>, _>>()?;
        if let Some(code) = claims.departments.iter().find(|c| !valid_department(c)) {
            return Err(bad(format!(
                "departments: {code:?} is not a department code"
            )));
        }
        Ok(Caller {
            subject: claims.sub,
            roles,
            orgs,
            departments: claims.departments,
        })
    }
}

/// Why a token was not accepted; each says what to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("missing authorization metadata: send `authorization: Bearer <token>`")]
    Missing,
    #[error("authorization must be `Bearer <token>`")]
    NotBearer,
    #[error("malformed token: {0}")]
    Malformed(String),
    #[error("token has no key id (kid)")]
    NoKeyId,
    #[error("token signed with unknown key id {0:?}")]
    UnknownKey(String),
    #[error("token algorithm {found:?} does not match key {kid:?} ({expected:?})")]
    WrongAlgorithm {
        kid: String,
        found: Algorithm,
        expected: Algorithm,
    },
    #[error("token expired")]
    Expired,
    #[error("token not valid yet")]
    NotYetValid,
    #[error("token signature does not verify")]
    BadSignature,
    #[error("token is not for this audience (expected {AUDIENCE:?})")]
    WrongAudience,
    #[error("token issuer is not accepted")]
    WrongIssuer,
    #[error("token claims: {0}")]
    Claims(String),
}

/// Checks tokens against the public keys a tier trusts.
pub struct Verifier {
    /// By key id: the key, and the checks a token signed with it must pass (made once, not per
    /// call).
    keys: HashMap<String, (DecodingKey, Validation)>,
    issuer: Option<String>,
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut kids: Vec<&String> = self.keys.keys().collect();
        kids.sort();
        f.debug_struct("Verifier")
            .field("kids", &kids)
            .field("issuer", &self.issuer)
            .finish()
    }
}

impl Verifier {
    /// A verifier trusting `keys` (by key id); tokens must name `issuer` when one is given, and
    /// clocks may differ by `leeway_secs`.
    pub fn new(keys: Vec<PublicKey>, issuer: Option<String>, leeway_secs: u64) -> Verifier {
        let validation = |algorithm| {
            let mut validation = Validation::new(algorithm);
            validation.leeway = leeway_secs;
            validation.validate_nbf = true;
            validation.set_audience(&[AUDIENCE]);
            validation.set_required_spec_claims(&["exp", "sub", "aud"]);
            if let Some(issuer) = &issuer {
                validation.set_issuer(&[issuer]);
            }
            validation
        };
        Verifier {
            keys: keys
                .into_iter()
                .map(|k| (k.kid, (k.key, validation(k.algorithm))))
                .collect(),
            issuer,
        }
    }

    pub fn key_ids(&self) -> Vec<&str> {
        let mut kids: Vec<&str> = self.keys.keys().map(String::as_str).collect();
        kids.sort_unstable();
        kids
    }

    /// The caller of an `authorization` metadata value.
    pub fn verify_header(&self, value: Option<&str>) -> Result<Caller, TokenError> {
        let value = value.ok_or(TokenError::Missing)?.trim();
        let token = value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))
            .ok_or(TokenError::NotBearer)?
            .trim();
        self.verify(token)
    }

    /// The caller a token names, once its key, signature, times and claims check out.
    pub fn verify(&self, token: &str) -> Result<Caller, TokenError> {
        use jsonwebtoken::errors::ErrorKind;
        let header =
            jsonwebtoken::decode_header(token).map_err(|e| TokenError::Malformed(e.to_string()))?;
        let kid = header.kid.ok_or(TokenError::NoKeyId)?;
        let (key, validation) = self
            .keys
            .get(&kid)
            .ok_or_else(|| TokenError::UnknownKey(kid.clone()))?;
        let expected = validation.algorithms[0];
        if header.alg != expected {
            return Err(TokenError::WrongAlgorithm {
                kid,
                found: header.alg,
                expected,
            });
        }
        let data =
            jsonwebtoken::decode::<Claims>(token, key, validation).map_err(|e| match e.kind() {
                ErrorKind::ExpiredSignature => TokenError::Expired,
                ErrorKind::ImmatureSignature => TokenError::NotYetValid,
                ErrorKind::InvalidSignature => TokenError::BadSignature,
                ErrorKind::InvalidAudience => TokenError::WrongAudience,
                ErrorKind::InvalidIssuer => TokenError::WrongIssuer,
                ErrorKind::MissingRequiredClaim(claim) => {
                    TokenError::Claims(format!("{claim} is missing"))
                }
                ErrorKind::Json(e) => TokenError::Claims(e.to_string()),
                _ => TokenError::Malformed(e.to_string()),
            })?;
        Caller::try_from(data.claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::dev::now;

    fn claims(roles: &[&str], orgs: &[&str], exp: i64) -> Claims {
        Claims::new("gw-350205002006001", roles, orgs, &[], exp, 0)
    }

    #[test]
    fn a_token_verifies_with_its_key_and_says_who_calls() {
        let dir = tempfile_dir();
        let (private, public) = keys::generate(&dir, "k1").unwrap();
        let signing = SigningKey::load(&private).unwrap();
        let verifier = Verifier::new(vec![PublicKey::load(&public).unwrap()], None, 0);
        let token = signing
            .issue(&claims(&["grid_worker"], &["350205002006001"], now() + 60))
            .unwrap();
        let caller = verifier
            .verify_header(Some(&format!("Bearer {token}")))
            .unwrap();
        assert_eq!(caller.subject, "gw-350205002006001");
        assert_eq!(caller.roles, vec![pb::Role::GridWorker]);
        assert_eq!(caller.orgs[0].level(), Level::Grid);
        assert!(caller.orgs[0].covers("350205002006001"));
    }

    #[test]
    fn every_kind_of_bad_token_is_told_apart() {
        let dir = tempfile_dir();
        let (k1, p1) = keys::generate(&dir, "k1").unwrap();
        let (k2, _) = keys::generate(&dir, "k2").unwrap();
        let (_, p3) = keys::generate(&dir, "k3").unwrap();
        let signing = SigningKey::load(&k1).unwrap();
        let stranger = SigningKey::load(&k2).unwrap();
        // The stranger's key under the trusted key's id: the signature cannot verify.
        let impostor = SigningKey::load(&k2).unwrap().with_kid("k1");
        let verifier = Verifier::new(
            vec![PublicKey::load(&p1).unwrap(), PublicKey::load(&p3).unwrap()],
            None,
            0,
        );
        let good = claims(&["grid_worker"], &["350205002006001"], now() + 60);
        let check = |header: Option<&str>| verifier.verify_header(header).unwrap_err();
        assert_eq!(check(None), TokenError::Missing);
        assert_eq!(check(Some("Basic abc")), TokenError::NotBearer);
        assert!(matches!(
            check(Some("Bearer abc")),
            TokenError::Malformed(_)
        ));
        let unknown = stranger.issue(&good).unwrap();
        assert_eq!(
            check(Some(&format!("Bearer {unknown}"))),
            TokenError::UnknownKey("k2".into())
        );
        let forged = impostor.issue(&good).unwrap();
        assert_eq!(
            check(Some(&format!("Bearer {forged}"))),
            TokenError::BadSignature
        );
        let expired = signing
            .issue(&claims(&["grid_worker"], &[], now() - 60))
            .unwrap();
        assert_eq!(
            check(Some(&format!("Bearer {expired}"))),
            TokenError::Expired
        );
        let mut early = good.clone();
        early.nbf = Some(now() + 600);
        let early = signing.issue(&early).unwrap();
        assert_eq!(
            check(Some(&format!("Bearer {early}"))),
            TokenError::NotYetValid
        );
        let mut elsewhere = good.clone();
        elsewhere.aud = Some("another-system".into());
        let elsewhere = signing.issue(&elsewhere).unwrap();
        assert_eq!(
            check(Some(&format!("Bearer {elsewhere}"))),
            TokenError::WrongAudience
        );
        let unknown_role = signing.issue(&claims(&["mayor"], &[], now() + 60)).unwrap();
        assert!(matches!(
            check(Some(&format!("Bearer {unknown_role}"))),
            TokenError::Claims(m) if m.contains("mayor")
        ));
        let bad_org = signing
            .issue(&claims(&["grid_worker"], &["35020500200600x"], now() + 60))
            .unwrap();
        assert!(matches!(
            check(Some(&format!("Bearer {bad_org}"))),
            TokenError::Claims(m) if m.contains("orgs")
        ));
        // A second trusted key (rotation): its tokens verify too.
        let (k3, _) = (dir.join("k3.key.pem"), ());
        let rotated = SigningKey::load(&k3).unwrap().issue(&good).unwrap();
        assert!(verifier.verify(&rotated).is_ok());
    }

    fn tempfile_dir() -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "wangge-auth-test-{}-{}",
            std::process::id(),
            uuid_like()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn uuid_like() -> u64 {
        let mut bytes = [0u8; 8];
        getrandom::getrandom(&mut bytes).unwrap();
        u64::from_le_bytes(bytes)
    }
}
