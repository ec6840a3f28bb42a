//! Reconciliation's transport: request/reply over core NATS, one community at a time, so the
//! request reaches whichever instance of the peer tier covers that community, whatever its scope.
//!
//! `wg.sync.<answering tier>.<district>.<street>.<community>.<digest|marks|events>`; the answering
//! tier's instances share a queue group, so one answers. A failed request is simply tried again on
//! the next run: nothing here must be reliable.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_nats::{Client, HeaderMap, RequestErrorKind};
use futures::StreamExt;
use prost::Message as _;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};
use wangge_domain::case::tier_name;
use wangge_domain::{OrgCode, Scope};
use wangge_proto as pb;
use wangge_proto::Tier;

use crate::{Error, community_path};

/// The header carrying an answering tier's refusal.
const ERROR_HEADER: &str = "Wangge-Sync-Error";
/// Requests answered at once by one instance.
const CONCURRENT_ANSWERS: usize = 4;

/// What is asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Digest,
    Marks,
    Events,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::Digest => "digest",
            Op::Marks => "marks",
            Op::Events => "events",
        }
    }

    fn parse(token: &str) -> Option<Op> {
        match token {
            "digest" => Some(Op::Digest),
            "marks" => Some(Op::Marks),
            "events" => Some(Op::Events),
            _ => None,
        }
    }
}

/// The subject asking `tier` about `community`.
pub fn sync_subject(tier: Tier, community: &OrgCode, op: Op) -> String {
    format!(
        "wg.sync.{}.{}.{}",
        tier_name(tier),
        community_path(community),
        op.name()
    )
}

/// The wildcard of every request `tier` answers for `scope`.
pub fn sync_filter(tier: Tier, scope: &Scope) -> String {
    format!("wg.sync.{}.{}.>", tier_name(tier), scope.subject_path())
}

/// Why a request got no answer.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("no instance of the {0} tier answers for this community")]
    NoResponders(&'static str),
    #[error("the {0} tier did not answer in time")]
    TimedOut(&'static str),
    #[error("the {tier} tier refused: {message}")]
    Refused { tier: &'static str, message: String },
    #[error("the {0} tier's answer does not decode")]
    Undecodable(&'static str),
    #[error("nats: {0}")]
    Nats(String),
}

/// Asks peer tiers.
#[derive(Debug, Clone)]
pub struct SyncClient {
    client: Client,
    timeout: Duration,
}

impl SyncClient {
    pub fn new(client: Client, timeout: Duration) -> SyncClient {
        SyncClient { client, timeout }
    }

    async fn ask<Reply: prost::Message + Default>(
        &self,
        peer: Tier,
        community: &OrgCode,
        op: Op,
        request: &impl prost::Message,
    ) -> Result<Reply, SyncError> {
        let name = tier_name(peer);
        let request = async_nats::Request::new()
            .payload(request.encode_to_vec().into())
            .timeout(Some(self.timeout));
        let reply = self
            .client
            .send_request(sync_subject(peer, community, op), request)
            .await
            .map_err(|error| match error.kind() {
                RequestErrorKind::NoResponders => SyncError::NoResponders(name),
                RequestErrorKind::TimedOut => SyncError::TimedOut(name),
                _ => SyncError::Nats(error.to_string()),
            })?;
        answer_of(name, reply.headers.as_ref(), reply.payload.as_ref())
    }

    pub async fn digest(
        &self,
        peer: Tier,
        community: &OrgCode,
        request: &pb::DigestRequest,
    ) -> Result<pb::DigestReply, SyncError> {
        self.ask(peer, community, Op::Digest, request).await
    }

    pub async fn marks(
        &self,
        peer: Tier,
        community: &OrgCode,
        request: &pb::MarksRequest,
    ) -> Result<pb::MarksReply, SyncError> {
        self.ask(peer, community, Op::Marks, request).await
    }

    pub async fn events(
        &self,
        peer: Tier,
        community: &OrgCode,
        request: &pb::EventsRequest,
    ) -> Result<pb::EventsReply, SyncError> {
        self.ask(peer, community, Op::Events, request).await
    }
}

/// A peer's answer: its refusal when it sent one, else the reply it encodes.
pub(crate) fn answer_of<Reply: prost::Message + Default>(
    name: &'static str,
    headers: Option<&HeaderMap>,
    payload: &[u8],
) -> Result<Reply, SyncError> {
    if let Some(message) = headers.and_then(|h| h.get(ERROR_HEADER)) {
        return Err(SyncError::Refused {
            tier: name,
            message: message.to_string(),
        });
    }
    Reply::decode(payload).map_err(|_| SyncError::Undecodable(name))
}

/// A request as the answering tier reads it.
#[derive(Debug, Clone, PartialEq)]
pub enum Ask {
    Digest(pb::DigestRequest),
    Marks(pb::MarksRequest),
    Events(pb::EventsRequest),
}

/// Why a request gets no answer but a refusal.
#[derive(Debug, thiserror::Error)]
pub enum BadRequest {
    #[error("unexpected subject {0}")]
    Subject(String),
    #[error("subject names no community: {0}")]
    Community(String),
    #[error("unknown request {0:?}")]
    Op(String),
    #[error("request does not decode: {0}")]
    Undecodable(#[from] prost::DecodeError),
}

/// The community and the request a message on `wg.sync.<tier>.<district>.<street>.<community>.<op>`
/// carries.
pub fn request_of(subject: &str, payload: &[u8]) -> Result<(OrgCode, Ask), BadRequest> {
    let tokens: Vec<&str> = subject.split('.').collect();
    let [_, _, _, district, street, community, op] = tokens.as_slice() else {
        return Err(BadRequest::Subject(subject.to_owned()));
    };
    let community = format!("{district}{street}{community}")
        .parse::<OrgCode>()
        .map_err(|e| BadRequest::Community(e.to_string()))?;
    let ask = match Op::parse(op).ok_or_else(|| BadRequest::Op((*op).to_owned()))? {
        Op::Digest => Ask::Digest(pb::DigestRequest::decode(payload)?),
        Op::Marks => Ask::Marks(pb::MarksRequest::decode(payload)?),
        Op::Events => Ask::Events(pb::EventsRequest::decode(payload)?),
    };
    Ok((community, ask))
}

/// What a tier answers from its own database. An `Err` is sent back as a refusal.
pub trait Responder: Send + Sync + 'static {
    fn digest(
        &self,
        community: OrgCode,
        request: pb::DigestRequest,
    ) -> impl Future<Output = Result<pb::DigestReply, String>> + Send;
    fn marks(
        &self,
        community: OrgCode,
        request: pb::MarksRequest,
    ) -> impl Future<Output = Result<pb::MarksReply, String>> + Send;
    fn events(
        &self,
        community: OrgCode,
        request: pb::EventsRequest,
    ) -> impl Future<Output = Result<pb::EventsReply, String>> + Send;
}

/// Answers the requests for `tier` in `scope` until `shutdown`, as one of the queue group `queue`.
pub async fn serve<R: Responder>(
    client: Client,
    tier: Tier,
    scope: Scope,
    queue: String,
    responder: R,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    let filter = sync_filter(tier, &scope);
    let requests = client
        .queue_subscribe(filter.clone(), queue)
        .await
        .map_err(Error::nats)?;
    debug!(%filter, "answering reconciliation requests");
    let responder = Arc::new(responder);
    let answered = requests
        .take_until(shutdown.cancelled_owned())
        .for_each_concurrent(CONCURRENT_ANSWERS, |request| {
            let (client, responder) = (client.clone(), responder.clone());
            async move { answer(&client, responder.as_ref(), request).await }
        });
    answered.await;
    Ok(())
}

async fn answer<R: Responder>(client: &Client, responder: &R, request: async_nats::Message) {
    let Some(reply_to) = request.reply.clone() else {
        return;
    };
    let answer = decide(responder, &request).await;
    let sent = match answer {
        Ok(payload) => client.publish(reply_to, payload.into()).await,
        Err(message) => {
            debug!(subject = %request.subject, %message, "reconciliation request refused");
            let mut headers = HeaderMap::new();
            headers.insert(ERROR_HEADER, message.as_str());
            client
                .publish_with_headers(reply_to, headers, Default::default())
                .await
        }
    };
    if let Err(error) = sent {
        warn!(%error, "reconciliation answer not sent");
    }
}

/// The encoded answer to one request, or why there is none.
async fn decide<R: Responder>(
    responder: &R,
    request: &async_nats::Message,
) -> Result<Vec<u8>, String> {
    let (community, ask) =
        request_of(&request.subject, request.payload.as_ref()).map_err(|e| e.to_string())?;
    Ok(match ask {
        Ask::Digest(ask) => responder.digest(community, ask).await?.encode_to_vec(),
        Ask::Marks(ask) => responder.marks(community, ask).await?.encode_to_vec(),
        Ask::Events(ask) => responder.events(community, ask).await?.encode_to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_for_a_community_reaches_every_scope_covering_it() {
        let community: OrgCode = "350205002006".parse().unwrap();
        let subject = sync_subject(Tier::Street, &community, Op::Marks);
        assert_eq!(subject, "wg.sync.street.350205.002.006.marks");
        for scope in ["350205", "350205002", "350205002006"] {
            let filter = sync_filter(Tier::Street, &scope.parse().unwrap());
            assert!(
                subject.starts_with(filter.trim_end_matches('>')),
                "{filter}"
            );
        }
        assert_eq!(Op::parse("events"), Some(Op::Events));
        assert_eq!(Op::parse("drop"), None);
    }
}
