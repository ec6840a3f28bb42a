//! Receipts: a receiving tier tells the author tier which of its events it now holds (applied,
//! already had, or kept as a dead letter), so the author can let go of its outbox rows.
//!
//! Receipts travel on core NATS, best effort: one lost (the author down, a slow subscriber) costs
//! nothing but time, because reconciliation later finds the event at the peer and confirms it.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use async_nats::Client;
use futures::{FutureExt, StreamExt};
use prost::Message as _;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};
use uuid::Uuid;
use wangge_domain::{OrgCode, Scope};
use wangge_proto as pb;
use wangge_proto::Tier;

use crate::{Error, receipt_filter, receipt_subject};

/// Most event ids in one receipt message.
const MAX_IDS: usize = 1000;

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
            for chunk in ids.chunks(MAX_IDS) {
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
/// scope (queue group `queue`) takes each. `confirm` gets the confirming tier and the event ids.
pub async fn receive<F, Fut>(
    client: Client,
    author: Tier,
    scope: Scope,
    queue: String,
    confirm: F,
    shutdown: CancellationToken,
) -> Result<(), Error>
where
    F: Fn(Tier, Vec<Uuid>) -> Fut,
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
        let mut by_tier: BTreeMap<i32, Vec<Uuid>> = BTreeMap::new();
        let mut next = Some(first);
        let mut taken = 0;
        while let Some(message) = next.take() {
            match decode(message.payload.as_ref()) {
                Ok((tier, ids)) => by_tier.entry(tier as i32).or_default().extend(ids),
                Err(error) => warn!(subject = %message.subject, %error, "not a receipt, ignored"),
            }
            taken += 1;
            if taken < MAX_BATCH {
                next = receipts.next().now_or_never().flatten();
            }
        }
        for (tier, ids) in by_tier {
            let tier = Tier::try_from(tier).unwrap_or_default();
            // A database away for a moment should not cost the receipts: try a few times. After
            // that the outbox keeps the rows, and reconciliation confirms them later.
            let mut pause = Duration::from_millis(250);
            for attempt in 1..=5 {
                match confirm(tier, ids.clone()).await {
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

/// Why a message on a receipt subject was ignored.
#[derive(Debug, thiserror::Error)]
pub enum NotAReceipt {
    #[error("does not decode: {0}")]
    Undecodable(#[from] prost::DecodeError),
    #[error("an envelope without a receipt")]
    OtherBody,
    #[error("from an unknown tier {0}")]
    UnknownTier(i32),
}

/// The confirming tier and the event ids of a receipt message. Ids that are not UUIDs name no
/// event of ours and are left out.
pub fn decode(payload: &[u8]) -> Result<(Tier, Vec<Uuid>), NotAReceipt> {
    let receipt = match pb::Envelope::decode(payload)? {
        pb::Envelope {
            body: Some(pb::envelope::Body::Receipt(receipt)),
            ..
        } => receipt,
        _ => return Err(NotAReceipt::OtherBody),
    };
    let tier = match Tier::try_from(receipt.tier) {
        Ok(tier) if tier != Tier::Unspecified => tier,
        _ => return Err(NotAReceipt::UnknownTier(receipt.tier)),
    };
    let ids = receipt
        .event_ids
        .iter()
        .filter_map(|id| Uuid::parse_str(id).ok())
        .collect();
    Ok((tier, ids))
}
