//! The NATS side of wangge: subjects, the JetStream stream, the outbox relay, the inbox consumer,
//! receipts and the request/reply of reconciliation.
//!
//! Subjects carry the org path, so a scope is a subject wildcard NATS permissions can enforce:
//! - `wg.case.350205.002.006.001`: a case event in grid 350205002006001 (JetStream, stream
//!   `WANGGE_CASES`); a street scope consumes `wg.case.350205.002.>`.
//! - `wg.receipt.<author tier>.350205.002.006.<receiving tier>`: a peer tier confirms it holds
//!   events of community 350205002006 that `author tier` wrote (core NATS).
//! - `wg.sync.<tier>.350205.002.006.<op>`: reconciliation requests to the tier covering community
//!   350205002006 (core NATS request/reply).

mod consumer;
mod persisting;
#[cfg(test)]
mod proptests;
pub mod receipts;
mod relay;
pub mod sync;

use std::time::Duration;

use async_nats::jetstream::context::GetStreamErrorKind;
use async_nats::jetstream::{self, stream};
use wangge_domain::case::{tier_name, tier_named};
use wangge_domain::{GridCode, OrgCode, Scope};
use wangge_proto::Tier;

pub use consumer::{
    Consumer, ConsumerLag, Disposition, Handler, Message, consumer_lag, live_lane_name,
};
pub use persisting::Persisting;
pub use relay::{Relay, RelayHandle, RelaySettings};

/// The stream holding every case event.
pub const CASE_STREAM: &str = "WANGGE_CASES";
const CASE_SUBJECTS: &str = "wg.case.>";

/// Bus failures.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("nats: {0}")]
    Nats(String),
    #[error(
        "the case stream {CASE_STREAM} is missing and this tier could not create it ({0}); only the district's NATS user may: waiting for it"
    )]
    StreamMissing(String),
    #[error(transparent)]
    Store(#[from] wangge_store::Error),
}

impl Error {
    fn nats(e: impl std::fmt::Display) -> Error {
        Error::Nats(e.to_string())
    }
}

/// The subject of a case event in `grid`.
pub fn case_subject(grid: &GridCode) -> String {
    format!("wg.case.{}", grid.subject_path())
}

/// The wildcard of every case event in `scope`.
pub fn scope_filter(scope: &Scope) -> String {
    format!("wg.case.{}.>", scope.subject_path())
}

/// The grid a case subject names (`wg.case.350205.002.006.001` → 350205002006001).
pub fn grid_of_subject(subject: &str) -> Option<GridCode> {
    let path = subject.strip_prefix("wg.case.")?;
    let digits: String = path.split('.').collect();
    digits.parse().ok()
}

/// `350205.002.006` for community 350205002006.
fn community_path(community: &OrgCode) -> String {
    let s = community.as_str();
    format!("{}.{}.{}", &s[..6], &s[6..9], &s[9..12])
}

/// The subject on which `receiver` confirms events of `community` that `author` wrote.
pub fn receipt_subject(author: Tier, community: &OrgCode, receiver: Tier) -> String {
    format!(
        "wg.receipt.{}.{}.{}",
        tier_name(author),
        community_path(community),
        tier_name(receiver)
    )
}

/// What a receipt's subject says: the community of the events confirmed and the confirming tier.
/// Those are what NATS permissions bind (a tier's user may publish receipts only as itself and
/// only for the communities of its scope), so they, not the payload, say who confirms what.
pub fn receipt_of_subject(subject: &str) -> Option<(OrgCode, Tier)> {
    let mut tokens = subject.strip_prefix("wg.receipt.")?.split('.');
    let (_author, a, b, c, receiver) = (
        tokens.next()?,
        tokens.next()?,
        tokens.next()?,
        tokens.next()?,
        tokens.next()?,
    );
    if tokens.next().is_some() || (a.len(), b.len(), c.len()) != (6, 3, 3) {
        return None;
    }
    let community = format!("{a}{b}{c}").parse().ok()?;
    match tier_named(receiver) {
        Tier::Unspecified => None,
        tier => Some((community, tier)),
    }
}

/// The start every case subject of `community` shares (`wg.case.350205.002.006.`).
pub fn community_subject_prefix(community: &OrgCode) -> String {
    format!("wg.case.{}.", community_path(community))
}

/// The wildcard of every receipt for events `author` wrote in `scope`.
pub fn receipt_filter(author: Tier, scope: &Scope) -> String {
    format!(
        "wg.receipt.{}.{}.>",
        tier_name(author),
        scope.subject_path()
    )
}

/// Creates the case stream unless it exists: every tier runs this at start and whenever it finds
/// the stream gone (a broker that lost its store), in any order. Where NATS users are configured
/// only the district's may create it (deploy/nats/README.md); the others get
/// [`Error::StreamMissing`] and retry, so they resume once the district (or an operator) made it.
pub async fn ensure_stream(js: &jetstream::Context) -> Result<stream::Stream, Error> {
    match js.get_stream(CASE_STREAM).await {
        Ok(stream) => return Ok(stream),
        Err(error) if matches!(error.kind(), GetStreamErrorKind::JetStream(e) if e.code() == 404) =>
            {}
        Err(error) => return Err(Error::nats(error)),
    }
    // A user that may not create it gets no answer at all: waiting long for one only delays the
    // next look, which finds the stream once it is there.
    match tokio::time::timeout(CREATE_TIMEOUT, js.create_stream(stream_config())).await {
        Ok(Ok(stream)) => Ok(stream),
        Ok(Err(error)) => Err(Error::StreamMissing(error.to_string())),
        Err(_) => Err(Error::StreamMissing(format!(
            "no answer within {CREATE_TIMEOUT:?}"
        ))),
    }
}

/// How long a tier waits for JetStream to create the case stream.
const CREATE_TIMEOUT: Duration = Duration::from_secs(3);

/// How the case stream is made.
fn stream_config() -> stream::Config {
    stream::Config {
        name: CASE_STREAM.to_owned(),
        subjects: vec![CASE_SUBJECTS.to_owned()],
        storage: stream::StorageType::File,
        // Relays retry with the same message id; inside this window JetStream drops the copy.
        duplicate_window: Duration::from_secs(120),
        // The stream is transport, not record: outboxes keep every event until the peers confirm
        // it, so a week covers any outage an operator would not see in `wangge status` first.
        max_age: Duration::from_secs(7 * 24 * 3600),
        ..Default::default()
    }
}

/// Why a case event's author could not have sent it on the subject it arrived on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OutOfScope {
    #[error("the author's tier is unknown ({0})")]
    UnknownTier(i32),
    #[error("the author's org {0:?} is not an org code")]
    BadOrg(String),
    #[error(
        "its author ({tier} {org}) may not publish on the subject of grid {grid}, which belongs to the {tier} {expected}"
    )]
    Subject {
        tier: &'static str,
        org: OrgCode,
        grid: GridCode,
        expected: OrgCode,
    },
}

/// Checks that the author of a case event (its `tier` and `org_code`) may publish on the subject
/// of `grid`: a village publishes for its own community's grids, a street for its street's, the
/// district for its district's; an author writes in its own org's name only. NATS permissions
/// keep a tier's credential to its scope's subjects; this check, run by every receiver, also
/// refuses what a credential of a wider scope (or a server without permissions) let through.
pub fn check_author(tier: i32, org_code: &str, grid: &GridCode) -> Result<(), OutOfScope> {
    let tier = match Tier::try_from(tier) {
        Ok(tier @ (Tier::Village | Tier::Street | Tier::District)) => tier,
        _ => return Err(OutOfScope::UnknownTier(tier)),
    };
    let org: OrgCode = org_code
        .parse()
        .map_err(|_| OutOfScope::BadOrg(org_code.to_owned()))?;
    let expected = match tier {
        Tier::Village => grid.community(),
        Tier::Street => grid.street(),
        _ => grid.district(),
    };
    if org == expected {
        Ok(())
    } else {
        Err(OutOfScope::Subject {
            tier: tier_name(tier),
            org,
            grid: *grid,
            expected,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_grid_subject_matches_the_filters_of_its_scopes() {
        let grid: GridCode = "350205002006001".parse().unwrap();
        assert_eq!(case_subject(&grid), "wg.case.350205.002.006.001");
        assert_eq!(grid_of_subject(&case_subject(&grid)), Some(grid));
        assert_eq!(grid_of_subject("wg.case.350205.002.006"), None);
        assert_eq!(grid_of_subject("wg.receipt.x"), None);
        for (scope, filter) in [
            ("350205", "wg.case.350205.>"),
            ("350205002", "wg.case.350205.002.>"),
            ("350205002006", "wg.case.350205.002.006.>"),
        ] {
            assert_eq!(scope_filter(&scope.parse().unwrap()), filter);
        }
    }

    #[test]
    fn an_author_may_publish_only_on_the_subjects_of_its_own_org() {
        let grid: GridCode = "350205002006001".parse().unwrap();
        let (village, street, district) = (
            Tier::Village as i32,
            Tier::Street as i32,
            Tier::District as i32,
        );
        assert_eq!(check_author(village, "350205002006", &grid), Ok(()));
        assert_eq!(check_author(street, "350205002000", &grid), Ok(()));
        assert_eq!(check_author(district, "350205000000", &grid), Ok(()));
        // Another community, another street, another district, or the org of another level.
        for (tier, org) in [
            (village, "350205002007"),
            (village, "350205002000"),
            (street, "350205003000"),
            (street, "350205002006"),
            (district, "350203000000"),
        ] {
            let refused = check_author(tier, org, &grid).unwrap_err();
            assert!(
                matches!(refused, OutOfScope::Subject { .. }),
                "{tier} {org}: {refused}"
            );
        }
        assert_eq!(
            check_author(0, "350205002006", &grid),
            Err(OutOfScope::UnknownTier(0))
        );
        assert_eq!(
            check_author(village, "3502", &grid),
            Err(OutOfScope::BadOrg("3502".into()))
        );
        let message = check_author(village, "350205002007", &grid)
            .unwrap_err()
            .to_string();
        assert!(message.contains("village 350205002007"), "{message}");
        assert!(message.contains("grid 350205002006001"), "{message}");
    }

    #[test]
    fn receipts_reach_the_author_whatever_its_scope() {
        let grid: GridCode = "350205002006001".parse().unwrap();
        let subject = receipt_subject(Tier::Village, &grid.community(), Tier::District);
        assert_eq!(subject, "wg.receipt.village.350205.002.006.district");
        for scope in ["350205", "350205002", "350205002006"] {
            let filter = receipt_filter(Tier::Village, &scope.parse().unwrap());
            let prefix = filter.trim_end_matches('>');
            assert!(subject.starts_with(prefix), "{subject} under {filter}");
        }
    }
}
