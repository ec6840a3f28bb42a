//! Receipts: a receiving tier tells the author tier which of its events it now holds (applied,
//! already had, or kept as a dead letter), so the author can let go of its outbox rows.
//!
//! Receipts travel on core NATS, best effort: one lost (the author down, a slow subscriber) costs
//! nothing but time, because reconciliation later finds the event at the peer and confirms it.
//!
//! Who confirms, and for which community, is read off the subject, which NATS permissions bind to
//! the sender's user (deploy/nats/README.md); the payload only repeats it. A receipt whose payload
//! disagrees with its subject (a village confirming in the district's name) is refused and logged
//! at error level, and confirms nothing.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use async_nats::Client;
use futures::{FutureExt, StreamExt};
use prost::Message as _;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, warn};
use uuid::Uuid;
use wangge_domain::{OrgCode, Scope};
use wangge_proto as pb;
use wangge_proto::Tier;

use crate::{Error, receipt_filter, receipt_of_subject, receipt_subject};

/// Most event ids in one receipt message.
const MAX_IDS: usize = 1000;
/// What an event id costs in a receipt: 36 characters and its field's tag and length.
const BYTES_PER_ID: usize = 40;
/// Room left in a message for the envelope, the subject and the headers.
const ROOM: usize = 1024;

/// How many ids a receipt may carry on a server that takes messages of `max_payload` bytes: a
/// server configured below NATS's default 1 MiB must not see its receipts refused (1 000 ids are
/// some 40 KB).
fn ids_per_receipt(max_payload: usize) -> usize {
    (max_payload.saturating_sub(ROOM) / BYTES_PER_ID).clamp(1, MAX_IDS)
}

/// An event this tier holds, to confirm to its author.
#[derive(Debug, Clone)]
pub struct Held {
    pub author: Tier,
    pub community: OrgCode,
    pub event_id: String,
}

/// Sends this tier's receipts.
#[derive(Debug, Clone)]
pub struct ReceiptSender {
    client: Client,
    tier: Tier,
    org_prefix: String,
}

impl ReceiptSender {
    pub fn new(client: Client, tier: Tier, scope: &Scope) -> ReceiptSender {
        ReceiptSender {
            client,
            tier,
            org_prefix: scope.prefix().to_owned(),
        }
    }

    /// Confirms `held` to their authors, one message per author and community. Events this tier
    /// wrote itself need no receipt.
    pub async fn send(&self, held: &[Held]) {
        let mut groups: BTreeMap<(i32, OrgCode), Vec<String>> = BTreeMap::new();
        for event in held.iter().filter(|e| e.author != self.tier) {
            groups
                .entry((event.author as i32, event.community))
                .or_default()
                .push(event.event_id.clone());
        }
        for ((author, community), ids) in groups {
            let author = Tier::try_from(author).unwrap_or_default();
            let subject = receipt_subject(author, &community, self.tier);
            for chunk in ids.chunks(ids_per_receipt(self.client.max_payload())) {
                let envelope = pb::Envelope {
                    event_id: String::new(),
                    trace: Default::default(),
                    body: Some(pb::envelope::Body::Receipt(pb::Receipt {
                        tier: self.tier as i32,
                        org_prefix: self.org_prefix.clone(),
                        event_ids: chunk.to_vec(),
                    })),
                };
                if let Err(error) = self
                    .client
                    .publish(subject.clone(), envelope.encode_to_vec().into())
                    .await
                {
                    // Reconciliation confirms what a lost receipt would have.
                    warn!(%error, %subject, "receipt not sent");
                }
            }
        }
    }
}

/// Takes the receipts for events `author` wrote in `scope` until `shutdown`; one instance of a tier
/// scope (queue group `queue`) takes each. `confirm` gets the confirming tier, the community the
/// receipt is for (both as its subject says) and the event ids; it must confirm only events of that
/// community.
pub async fn receive<F, Fut>(
    client: Client,
    author: Tier,
    scope: Scope,
    queue: String,
    confirm: F,
    shutdown: CancellationToken,
) -> Result<(), Error>
where
    F: Fn(Tier, OrgCode, Vec<Uuid>) -> Fut,
    Fut: Future<Output = Result<u64, Error>>,
{
    let filter = receipt_filter(author, &scope);
    let mut receipts = client
        .queue_subscribe(filter.clone(), queue)
        .await
        .map_err(Error::nats)?;
    debug!(%filter, "taking receipts");
    loop {
        let first = tokio::select! {
            message = receipts.next() => message,
            _ = shutdown.cancelled() => return Ok(()),
        };
        let Some(first) = first else {
            return Err(Error::Nats("receipt subscription ended".into()));
        };
        // Whatever else has arrived is confirmed with it: one transaction per tier, not per message.
        let mut by_tier: BTreeMap<(i32, OrgCode), Vec<Uuid>> = BTreeMap::new();
        let mut next = Some(first);
        let mut taken = 0;
        while let Some(message) = next.take() {
            match decode(&message.subject, &message.payload) {
                Ok(Receipt {
                    tier,
                    community,
                    event_ids,
                }) => by_tier
                    .entry((tier as i32, community))
                    .or_default()
                    .extend(event_ids),
                Err(error @ NotAReceipt::Forged(_)) => {
                    error!(subject = %message.subject, %error, "receipt disagrees with its subject, refused")
                }
                Err(error) => warn!(subject = %message.subject, %error, "not a receipt, ignored"),
            }
            taken += 1;
            if taken < MAX_BATCH {
                next = receipts.next().now_or_never().flatten();
            }
        }
        for ((tier, community), ids) in by_tier {
            let tier = Tier::try_from(tier).unwrap_or_default();
            // A database away for a moment should not cost the receipts: try a few times. After
            // that the outbox keeps the rows, and reconciliation confirms them later.
            let mut pause = Duration::from_millis(250);
            for attempt in 1..=5 {
                match confirm(tier, community, ids.clone()).await {
                    Ok(gone) => {
                        debug!(?tier, gone, "receipts applied");
                        break;
                    }
                    Err(error) if attempt == 5 => warn!(%error, ?tier, "receipts not applied"),
                    Err(_) => {
                        tokio::select! {
                            _ = tokio::time::sleep(pause) => {}
                            _ = shutdown.cancelled() => return Ok(()),
                        }
                        pause *= 2;
                    }
                }
            }
        }
    }
}

/// Most receipt messages confirmed together.
const MAX_BATCH: usize = 512;

/// A receipt, as its subject and payload agree on it.
#[derive(Debug, PartialEq, Eq)]
pub struct Receipt {
    /// The confirming tier.
    pub tier: Tier,
    /// The community of the events confirmed.
    pub community: OrgCode,
    /// The ids it confirms; ids that are not UUIDs name no event of ours and are left out.
    pub event_ids: Vec<Uuid>,
}

/// Why a message on a receipt subject confirms nothing.
#[derive(Debug, thiserror::Error)]
pub enum NotAReceipt {
    #[error("not a receipt subject")]
    Subject,
    #[error("does not decode: {0}")]
    Undecodable(#[from] prost::DecodeError),
    #[error("an envelope without a receipt")]
    OtherBody,
    /// A receipt whose payload claims another tier or scope than its subject: someone confirming
    /// in another's name.
    #[error("{0}")]
    Forged(String),
}

/// The receipt a message on `subject` carries, the confirming tier and the community taken from
/// the subject.
pub fn decode(subject: &str, payload: &[u8]) -> Result<Receipt, NotAReceipt> {
    let Some((community, tier)) = receipt_of_subject(subject) else {
        return Err(NotAReceipt::Subject);
    };
    let receipt = match pb::Envelope::decode(payload)? {
        pb::Envelope {
            body: Some(pb::envelope::Body::Receipt(receipt)),
            ..
        } => receipt,
        _ => return Err(NotAReceipt::OtherBody),
    };
    if receipt.tier != tier as i32 {
        return Err(NotAReceipt::Forged(format!(
            "the payload names tier {} but the subject {}",
            receipt.tier, tier as i32
        )));
    }
    if !community.as_str().starts_with(&receipt.org_prefix) {
        return Err(NotAReceipt::Forged(format!(
            "the payload names scope {:?}, which does not hold community {community}",
            receipt.org_prefix
        )));
    }
    let event_ids = receipt
        .event_ids
        .iter()
        .filter_map(|id| Uuid::parse_str(id).ok())
        .collect();
    Ok(Receipt {
        tier,
        community,
        event_ids,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn receipt(tier: Tier, org_prefix: &str, ids: &[Uuid]) -> Vec<u8> {
        pb::Envelope {
            event_id: String::new(),
            trace: Default::default(),
            body: Some(pb::envelope::Body::Receipt(pb::Receipt {
                tier: tier as i32,
                org_prefix: org_prefix.into(),
                event_ids: ids.iter().map(Uuid::to_string).collect(),
            })),
        }
        .encode_to_vec()
    }

    #[test]
    fn the_confirming_tier_and_community_are_the_subjects() {
        let id = Uuid::now_v7();
        let community: OrgCode = "350205002006".parse().unwrap();
        let subject = receipt_subject(Tier::Village, &community, Tier::District);
        assert_eq!(subject, "wg.receipt.village.350205.002.006.district");
        assert_eq!(
            decode(&subject, &receipt(Tier::District, "350205", &[id])).unwrap(),
            Receipt {
                tier: Tier::District,
                community,
                event_ids: vec![id],
            }
        );
    }

    #[test]
    fn a_receipt_in_another_tiers_or_scopes_name_is_refused() {
        let id = Uuid::now_v7();
        // A village (its user may publish only `...village`) confirming as the district.
        let as_village = "wg.receipt.street.350205.002.006.village";
        assert!(matches!(
            decode(as_village, &receipt(Tier::District, "350205", &[id])),
            Err(NotAReceipt::Forged(_))
        ));
        // A street scope naming a community outside it.
        let other_street = "wg.receipt.village.350205.003.001.street";
        assert!(matches!(
            decode(other_street, &receipt(Tier::Street, "350205002", &[id])),
            Err(NotAReceipt::Forged(_))
        ));
    }

    #[test]
    fn a_receipt_fits_the_servers_payload_limit() {
        let ids: Vec<String> = (0..MAX_IDS).map(|_| Uuid::now_v7().to_string()).collect();
        for max_payload in [4 * 1024, 16 * 1024, 64 * 1024, 1024 * 1024] {
            let per = ids_per_receipt(max_payload);
            let envelope = pb::Envelope {
                event_id: String::new(),
                trace: Default::default(),
                body: Some(pb::envelope::Body::Receipt(pb::Receipt {
                    tier: Tier::District as i32,
                    org_prefix: "350205".into(),
                    event_ids: ids[..per].to_vec(),
                })),
            };
            assert!(
                envelope.encoded_len() + ROOM / 2 <= max_payload,
                "{per} ids in {max_payload} bytes"
            );
        }
        assert_eq!(ids_per_receipt(1024 * 1024), MAX_IDS);
        assert_eq!(ids_per_receipt(0), 1);
    }

    #[test]
    fn what_is_no_receipt_is_ignored() {
        let good = receipt(Tier::Street, "350205002", &[]);
        for (subject, payload) in [
            ("wg.receipt.village.350205.002.006", good.clone()),
            ("wg.receipt.village.350205.002.006.mayor", good.clone()),
            ("wg.receipt.village.350205.002.006.street.x", good.clone()),
            ("wg.receipt.village.350205002006.x.y.street", good.clone()),
            ("wg.receipt.village.350205.002.006.street", b"\xff".to_vec()),
        ] {
            assert!(
                matches!(
                    decode(subject, &payload),
                    Err(NotAReceipt::Subject | NotAReceipt::Undecodable(_))
                ),
                "{subject}"
            );
        }
    }
}
