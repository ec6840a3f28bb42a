//! The inbox side: a durable JetStream pull consumer per tier scope, acknowledging a message only
//! after the handler committed its effect.

use std::future::Future;
use std::time::Duration;

use async_nats::jetstream::{self, AckKind, consumer::pull};
use futures::{FutureExt, StreamExt};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::{CASE_STREAM, Error};

/// What became of a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    /// Applied, found to be a duplicate, or kept as a dead letter: acknowledge it.
    Done,
    /// Not now (an earlier event is missing, the database is away): deliver it again later.
    Retry(Duration),
}

/// One message handed to a [`Handler`].
#[derive(Debug, Clone, Copy)]
pub struct Message<'a> {
    pub subject: &'a str,
    pub payload: &'a [u8],
}

/// Applies messages, a batch at a time, returning one disposition per message in order. Must be
/// idempotent: JetStream delivers at least once.
pub trait Handler: Send + Sync + 'static {
    fn handle(&self, messages: &[Message<'_>]) -> impl Future<Output = Vec<Disposition>> + Send;
}

/// Most messages applied in one batch (one database transaction).
const MAX_BATCH: usize = 256;

/// A durable consumer of the case stream, filtered to one scope.
#[derive(Debug)]
pub struct Consumer {
    js: jetstream::Context,
    durable: String,
    filter: String,
}

impl Consumer {
    pub fn new(
        js: jetstream::Context,
        durable: impl Into<String>,
        filter: impl Into<String>,
    ) -> Consumer {
        Consumer {
            js,
            durable: durable.into(),
            filter: filter.into(),
        }
    }

    async fn open(&self) -> Result<jetstream::consumer::Consumer<pull::Config>, Error> {
        let stream = self.js.get_stream(CASE_STREAM).await.map_err(Error::nats)?;
        stream
            .get_or_create_consumer(
                &self.durable,
                pull::Config {
                    durable_name: Some(self.durable.clone()),
                    filter_subject: self.filter.clone(),
                    ack_policy: jetstream::consumer::AckPolicy::Explicit,
                    ack_wait: Duration::from_secs(10),
                    max_ack_pending: 1024,
                    ..Default::default()
                },
            )
            .await
            .map_err(Error::nats)
    }

    /// Creates the consumer unless it exists.
    pub async fn ensure(&self) -> Result<(), Error> {
        self.open().await.map(|_| ())
    }

    /// Consumes until `shutdown`; a message being handled is finished and acknowledged first.
    pub async fn run<H: Handler>(self, handler: H, shutdown: CancellationToken) {
        let mut backoff = Duration::from_millis(200);
        while !shutdown.is_cancelled() {
            match self.consume(&handler, &shutdown).await {
                Ok(()) => break,
                Err(error) => {
                    warn!(%error, durable = %self.durable, "consumer interrupted");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = shutdown.cancelled() => break,
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
        debug!(durable = %self.durable, "consumer stopped");
    }

    async fn consume<H: Handler>(
        &self,
        handler: &H,
        shutdown: &CancellationToken,
    ) -> Result<(), Error> {
        let consumer = self.open().await?;
        let mut messages = consumer.messages().await.map_err(Error::nats)?;
        info!(durable = %self.durable, filter = %self.filter, "consuming");
        loop {
            let first = tokio::select! {
                next = messages.next() => next,
                _ = shutdown.cancelled() => return Ok(()),
            };
            let Some(first) = first else {
                return Err(Error::Nats("message stream ended".into()));
            };
            // Whatever else has already arrived joins the batch; nothing waits for more.
            let mut batch = vec![first.map_err(Error::nats)?];
            while batch.len() < MAX_BATCH {
                match messages.next().now_or_never() {
                    Some(Some(Ok(message))) => batch.push(message),
                    Some(Some(Err(error))) => {
                        warn!(%error, "message stream error");
                        break;
                    }
                    Some(None) | None => break,
                }
            }
            let inputs: Vec<Message<'_>> = batch
                .iter()
                .map(|m| Message {
                    subject: m.subject.as_str(),
                    payload: &m.payload,
                })
                .collect();
            let dispositions = handler.handle(&inputs).await;
            debug_assert_eq!(dispositions.len(), batch.len());
            for (message, disposition) in batch.iter().zip(dispositions) {
                let ack = match disposition {
                    Disposition::Done => AckKind::Ack,
                    Disposition::Retry(delay) => AckKind::Nak(Some(delay)),
                };
                // A lost ack means a redelivery, which the handler absorbs.
                if let Err(error) = message.ack_with(ack).await {
                    warn!(%error, "ack failed");
                }
            }
        }
    }
}
