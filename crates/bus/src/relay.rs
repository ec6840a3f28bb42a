//! The outbox relay: publishes committed events to JetStream and watches over them until every peer
//! tier confirmed it holds them.
//!
//! PostgreSQL is the system of record; JetStream is transport, and its acknowledgement ends no
//! responsibility. Each round:
//! - **publish**: the oldest unpublished rows, sent together, acknowledgements awaited together.
//!   A row whose send failed while others got through is at fault itself: it is retried later
//!   (everything behind it flows on) and set aside as an outgoing dead letter after
//!   `max_failures`; one that can never travel (larger than the broker's payload limit) at once.
//!   When nothing got through, NATS is away: nothing is counted and the relay backs off.
//! - **check** (every `check_every`): published rows still unconfirmed after `confirm_within` are
//!   looked up in the stream. Still there: the peer is behind or down, look again later (backing
//!   off). Gone (the stream was made anew after a broker lost its store, or messages were removed):
//!   sent again, under a new message id so JetStream's duplicate window cannot swallow it.
//!   A peer that holds the event but whose receipt was lost is found by reconciliation.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use async_nats::jetstream::{self, context::PublishErrorKind};
use futures::future::join_all;
use sqlx::PgPool;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};
use uuid::Uuid;
use wangge_store::outbox::{self, Pending, Stored};

use crate::{CASE_STREAM, Error, Persisting, ensure_stream};

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

/// The newest rows of every round: a live report leaves at once, also while a backlog drains.
const LIVE_ROWS: i64 = 32;
/// A backlog is sent no faster than the peers confirm it: at most this many events recently sent
/// and confirmed by no peer yet, so the stream never queues thousands ahead of a live report.
/// Events sent longer than `FLIGHT_TIME` ago (every peer down) no longer count.
const MAX_IN_FLIGHT: i64 = 512;
const FLIGHT_TIME: Duration = Duration::from_secs(10);

/// How long the relay waits for one stream message lookup.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(1);

/// How the relay paces itself.
#[derive(Debug, Clone)]
pub struct RelaySettings {
    /// Most rows sent in one round.
    pub batch: i64,
    /// Polling is the safety net behind the in-process wake-up (another instance may have written).
    pub poll: Duration,
    /// How long a peer has to confirm before the relay looks for the event in the stream.
    pub confirm_within: Duration,
    /// How often unconfirmed rows are checked.
    pub check_every: Duration,
    /// Failed sends that are a row's own fault before it is set aside.
    pub max_failures: i32,
    /// How many peer tiers confirm each event.
    pub peers: usize,
}

impl Default for RelaySettings {
    fn default() -> Self {
        RelaySettings {
            batch: 256,
            poll: Duration::from_millis(500),
            confirm_within: Duration::from_secs(15),
            check_every: Duration::from_secs(5),
            max_failures: 5,
            peers: 2,
        }
    }
}

/// The outbox relay of one database.
#[derive(Debug)]
pub struct Relay {
    pool: PgPool,
    js: jetstream::Context,
    handle: RelayHandle,
    settings: RelaySettings,
    /// The creation time (unix ns) of the stream as last seen: a stream made anew is another one.
    incarnation: Option<i64>,
}

/// What became of one send.
type SendResult = Result<u64, async_nats::jetstream::context::PublishError>;

impl Relay {
    /// A relay woken through `handle` (shared with the writers, and across restarts).
    pub fn new(
        pool: PgPool,
        js: jetstream::Context,
        settings: RelaySettings,
        handle: RelayHandle,
    ) -> Relay {
        Relay {
            pool,
            js,
            handle,
            settings,
            incarnation: None,
        }
    }

    /// Publishes and checks until `shutdown`; the round in flight is finished first.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut backoff = Duration::from_millis(100);
        let mut next_check = Instant::now() + self.settings.check_every;
        let (mut publishing, mut checking) = (Persisting::default(), Persisting::default());
        loop {
            let more = match self.publish_round().await {
                Ok(more) => {
                    publishing.succeeded("outbox publish");
                    backoff = Duration::from_millis(100);
                    more
                }
                Err(error) => {
                    publishing.failed("outbox publish", &error);
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = shutdown.cancelled() => break,
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    continue;
                }
            };
            if Instant::now() >= next_check {
                match self.check_round().await {
                    Ok(_) => checking.succeeded("outbox confirmation check"),
                    Err(error) => checking.failed("outbox confirmation check", &error),
                }
                next_check = Instant::now() + self.settings.check_every;
            }
            if more {
                continue;
            }
            tokio::select! {
                _ = self.handle.wake.notified() => {}
                _ = tokio::time::sleep(self.settings.poll) => {}
                _ = shutdown.cancelled() => break,
            }
        }
        debug!("outbox relay stopped");
    }

    /// The stream's incarnation, creating the stream if it is missing.
    async fn incarnation(&mut self) -> Result<i64, Error> {
        if let Some(created) = self.incarnation {
            return Ok(created);
        }
        let mut stream = ensure_stream(&self.js).await?;
        let created = stream.info().await.map_err(Error::nats)?.created;
        let created = created.unix_timestamp_nanos() as i64;
        self.incarnation = Some(created);
        Ok(created)
    }

    /// Sends the rows together and awaits the acknowledgements together: order is kept by the
    /// connection, and the round trips overlap.
    async fn send(&self, rows: &[Pending]) -> Vec<SendResult> {
        let mut acks = Vec::with_capacity(rows.len());
        for row in rows {
            // A send after the first gets its own message id: the duplicate window still remembers
            // the first, also when the stream lost the message itself.
            let message_id = match row.sends {
                0 => row.event_id.to_string(),
                n => format!("{}.{n}", row.event_id),
            };
            let mut headers = HeaderMap::new();
            headers.insert(async_nats::header::NATS_MESSAGE_ID, message_id.as_str());
            let sent = self
                .js
                .publish_with_headers(row.subject.clone(), headers, row.body.clone().into())
                .await;
            acks.push(async move {
                match sent {
                    Ok(ack) => ack.await.map(|ack| ack.sequence),
                    Err(error) => Err(error),
                }
            });
        }
        join_all(acks).await
    }

    /// Publishes one batch of due rows; returns whether more are due at once (a full batch went,
    /// and the peers keep up).
    async fn publish_round(&mut self) -> Result<bool, Error> {
        let mut tx = self.pool.begin().await.map_err(wangge_store::Error::from)?;
        let mut rows = outbox::claim_newest(&mut tx, LIVE_ROWS).await?;
        if rows.is_empty() {
            return Ok(false);
        }
        // Fewer than the live rows: there is no backlog, and nothing to pace. Only behind a full
        // set of live rows is what is in flight counted (a statement that walks the window of
        // recent sends, which live traffic alone would otherwise pay on every round).
        let mut full = false;
        if rows.len() as i64 == LIVE_ROWS {
            let in_flight =
                outbox::in_flight(&mut tx, FLIGHT_TIME, self.settings.peers, MAX_IN_FLIGHT).await?;
            let room = (MAX_IN_FLIGHT - in_flight).clamp(0, self.settings.batch - LIVE_ROWS);
            let taken: Vec<Uuid> = rows.iter().map(|r| r.event_id).collect();
            let backlog = outbox::claim_oldest(&mut tx, &taken, room).await?;
            full = room > 0 && backlog.len() as i64 == room;
            rows.extend(backlog);
        }
        let created = self.incarnation().await?;
        let results = self.send(&rows).await;
        let any_through = results.iter().any(Result::is_ok);
        // "No stream" for every row: either the stream is gone, or these rows' subjects are bound
        // to none (then they are at fault). Asking JetStream tells which.
        let no_stream = results.iter().any(|r| {
            r.as_ref()
                .is_err_and(|e| e.kind() == PublishErrorKind::StreamNotFound)
        });
        let stream_gone =
            no_stream && !any_through && self.js.get_stream(CASE_STREAM).await.is_err();
        let mut stored = Vec::new();
        let mut first_error = None;
        for (row, result) in rows.iter().zip(results) {
            let error = match result {
                Ok(stream_seq) => {
                    stored.push(Stored {
                        event_id: row.event_id,
                        stream_seq,
                        stream_created: created,
                    });
                    continue;
                }
                Err(error) => error,
            };
            let kind = error.kind();
            let reason = format!("publish failed: {error}");
            if kind == PublishErrorKind::MaxPayloadExceeded {
                self.set_aside(
                    &mut tx,
                    row,
                    &format!("{reason}: the event can never travel"),
                )
                .await?;
                continue;
            }
            // Others got through, or the stream is there but will not take this subject: the row
            // is at fault. Otherwise NATS or the stream is away, which is nobody's fault and is
            // waited out as a whole.
            let own_fault =
                any_through || (kind == PublishErrorKind::StreamNotFound && !stream_gone);
            if own_fault && row.failures + 1 >= self.settings.max_failures {
                self.set_aside(&mut tx, row, &reason).await?;
                continue;
            } else if own_fault {
                warn!(event_id = %row.event_id, failures = row.failures + 1, %error, "event not published, retrying it later");
                let delay = backoff(Duration::from_secs(1), row.failures);
                outbox::failed_send(&mut tx, row.event_id, delay, &reason).await?;
                continue;
            }
            first_error.get_or_insert(reason);
        }
        outbox::published(&mut tx, &stored, self.settings.confirm_within).await?;
        tx.commit().await.map_err(wangge_store::Error::from)?;
        if stream_gone {
            // Made anew on the next round, and everything it held is sent again by the check.
            warn!("the case stream is missing, creating it again");
            self.incarnation = None;
        }
        match first_error {
            Some(error) if !any_through => Err(Error::Nats(error)),
            _ => {
                debug!(published = stored.len(), "outbox batch published");
                Ok(full)
            }
        }
    }

    async fn set_aside(
        &self,
        tx: &mut sqlx::PgConnection,
        row: &Pending,
        reason: &str,
    ) -> Result<(), Error> {
        error!(event_id = %row.event_id, subject = %row.subject, bytes = row.body.len(), reason, "event set aside as an outgoing dead letter");
        outbox::set_aside(tx, row.event_id, reason).await?;
        Ok(())
    }

    /// Looks for published, unconfirmed events whose check is due in the stream; those it lost are
    /// sent again on the next round. Returns how many.
    async fn check_round(&mut self) -> Result<usize, Error> {
        let mut tx = self.pool.begin().await.map_err(wangge_store::Error::from)?;
        let rows = outbox::claim_unconfirmed(&mut tx, 512).await?;
        if rows.is_empty() {
            return Ok(0);
        }
        let mut stream = ensure_stream(&self.js).await?;
        let info = stream.info().await.map_err(Error::nats)?.clone();
        let created = info.created.unix_timestamp_nanos() as i64;
        self.incarnation = Some(created);
        // Messages were removed from the middle of the stream: each is looked up, while lookups
        // work. A tier whose NATS user may not read the stream by sequence (only the district's
        // may) gets no answer: its rows count as held, and reconciliation finds what is missing.
        let mut lookups = info.state.deleted_count.unwrap_or(0) > 0;
        let mut lost: Vec<Uuid> = Vec::new();
        let mut later = Vec::new();
        for row in &rows {
            let seq = row.stream_seq.unwrap_or(0).max(0) as u64;
            let mut held = row.stream_created == Some(created)
                && seq >= info.state.first_sequence
                && seq <= info.state.last_sequence;
            if held && lookups {
                match tokio::time::timeout(LOOKUP_TIMEOUT, stream.get_raw_message(seq)).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(error))
                        if error.kind()
                            == async_nats::jetstream::stream::RawMessageErrorKind::NoMessageFound =>
                    {
                        held = false;
                    }
                    Ok(Err(error)) => {
                        debug!(%error, "stream message lookup failed, looking up no more this round");
                        lookups = false;
                    }
                    Err(_) => {
                        debug!("stream message lookup unanswered, looking up no more this round");
                        lookups = false;
                    }
                }
            }
            if held {
                later.push((
                    row.event_id,
                    backoff(self.settings.confirm_within, row.checks),
                ));
            } else {
                lost.push(row.event_id);
            }
        }
        outbox::check_later(&mut tx, &later).await?;
        outbox::unpublish(&mut tx, &lost, "no longer in the stream: sent again").await?;
        tx.commit().await.map_err(wangge_store::Error::from)?;
        if !lost.is_empty() {
            info!(
                events = lost.len(),
                "events the stream no longer holds are sent again"
            );
            self.handle.wake();
        }
        Ok(lost.len())
    }
}

/// `base` doubled per earlier attempt, at most five minutes.
fn backoff(base: Duration, attempts: i32) -> Duration {
    let doublings = attempts.clamp(0, 10) as u32;
    (base * 2u32.pow(doublings)).min(Duration::from_secs(300))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_five_minutes() {
        let base = Duration::from_secs(15);
        assert_eq!(backoff(base, 0), base);
        assert_eq!(backoff(base, 2), Duration::from_secs(60));
        assert_eq!(backoff(base, 9), Duration::from_secs(300));
        assert_eq!(backoff(base, -1), base);
    }
}
