//! The outbox relay: publishes committed events to JetStream and removes them once acknowledged.
//!
//! PostgreSQL is the system of record. A row leaves the outbox only after JetStream acknowledged
//! it; a failed publish leaves the row for the next round, re-sent with the same message id.

use std::sync::Arc;
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream;
use futures::future::try_join_all;
use sqlx::PgPool;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};
use wangge_store::outbox;

use crate::Error;

/// Wakes the relay when a transaction has queued something.
#[derive(Debug, Clone, Default)]
pub struct RelayHandle {
    wake: Arc<Notify>,
}

impl RelayHandle {
    pub fn wake(&self) {
        self.wake.notify_one();
    }
}

/// The outbox relay of one database.
#[derive(Debug)]
pub struct Relay {
    pool: PgPool,
    js: jetstream::Context,
    handle: RelayHandle,
    batch: i64,
    /// Polling is the safety net behind the in-process wake-up (another instance may have written).
    poll: Duration,
}

impl Relay {
    pub fn new(pool: PgPool, js: jetstream::Context) -> Relay {
        Relay {
            pool,
            js,
            handle: RelayHandle::default(),
            batch: 256,
            poll: Duration::from_millis(500),
        }
    }

    pub fn handle(&self) -> RelayHandle {
        self.handle.clone()
    }

    /// Publishes until `shutdown`; the batch in flight is finished first.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut backoff = Duration::from_millis(100);
        loop {
            match self.publish_batch().await {
                Ok(n) if n as i64 == self.batch => continue,
                Ok(_) => backoff = Duration::from_millis(100),
                Err(error) => {
                    warn!(%error, retry_in_ms = backoff.as_millis() as u64, "outbox publish failed");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = shutdown.cancelled() => break,
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    continue;
                }
            }
            tokio::select! {
                _ = self.handle.wake.notified() => {}
                _ = tokio::time::sleep(self.poll) => {}
                _ = shutdown.cancelled() => break,
            }
        }
        debug!("outbox relay stopped");
    }

    /// Publishes one batch; returns how many rows left the outbox.
    async fn publish_batch(&self) -> Result<usize, Error> {
        let mut tx = self.pool.begin().await.map_err(wangge_store::Error::from)?;
        let pending = outbox::claim(&mut tx, self.batch).await?;
        if pending.is_empty() {
            return Ok(0);
        }
        // Publish the whole batch, then await the acknowledgements together: order is kept by the
        // connection, and the round trips overlap.
        let mut acks = Vec::with_capacity(pending.len());
        for message in &pending {
            let mut headers = HeaderMap::new();
            headers.insert(
                async_nats::header::NATS_MESSAGE_ID,
                message.event_id.to_string().as_str(),
            );
            let ack = self
                .js
                .publish_with_headers(
                    message.subject.clone(),
                    headers,
                    message.body.clone().into(),
                )
                .await
                .map_err(Error::nats)?;
            acks.push(ack.into_future());
        }
        tokio::time::timeout(Duration::from_secs(10), try_join_all(acks))
            .await
            .map_err(|_| Error::Nats("publish acknowledgements timed out".into()))?
            .map_err(Error::nats)?;
        let ids: Vec<_> = pending.iter().map(|m| m.event_id).collect();
        outbox::remove(&mut tx, &ids).await?;
        tx.commit().await.map_err(wangge_store::Error::from)?;
        debug!(published = ids.len(), "outbox batch published");
        Ok(ids.len())
    }
}
