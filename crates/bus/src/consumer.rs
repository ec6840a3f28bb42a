//! The inbox side: a durable JetStream pull consumer per tier scope, acknowledging a message only
//! after the handler committed its effect.
//!
//! The stream and the consumer are created again whenever they are found missing (a broker that
//! lost its store comes back empty), so replication resumes without a restart.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, AckKind, consumer::pull};
use futures::{FutureExt, StreamExt};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::{CASE_STREAM, Error, Persisting, ensure_stream};

/// What became of a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    /// Applied, found to be a duplicate, parked, or kept as a dead letter: acknowledge it.
    Done,
    /// Not now (the database is away): deliver it again after the delay.
    Retry(Duration),
}

/// One message handed to a [`Handler`].
#[derive(Debug, Clone, Copy)]
pub struct Message<'a> {
    pub subject: &'a str,
    pub payload: &'a [u8],
    /// How often JetStream has delivered it, this time included.
    pub delivered: i64,
}

/// Applies messages, a batch at a time, returning one disposition per message in order. Must be
/// idempotent: JetStream delivers at least once.
pub trait Handler: Send + Sync + 'static {
    fn handle(&self, messages: &[Message<'_>]) -> impl Future<Output = Vec<Disposition>> + Send;
}

/// Most messages applied in one batch (one database transaction).
const MAX_BATCH: usize = 256;

/// The first wait before opening the consumer again after it could not be opened.
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
/// A stream open this long was flowing: when it fails, it is opened again without a wait.
const FLOWING: Duration = Duration::from_secs(1);
/// A consumer that could not be opened for this long was cut off from JetStream (a leaf link
/// down, the hub away), not interrupted by a hiccup: when it opens again, what the bus may have
/// lost meanwhile is worth a reconciliation.
const CUT_OFF: Duration = Duration::from_secs(3);

/// A durable consumer of the case stream, filtered to one scope.
#[derive(Debug)]
pub struct Consumer {
    js: jetstream::Context,
    durable: String,
    filter: String,
    /// Notified when the consumer opens again after it was cut off for [`CUT_OFF`] or longer.
    resumed: Option<Arc<Notify>>,
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
            resumed: None,
        }
    }

    /// Notifies `resumed` whenever the consumer opens again after it was cut off from JetStream
    /// for a few seconds or longer. A tier on a leaf node keeps its own NATS connection when the
    /// leaf's link to the hub is cut, so no reconnect of its client tells it the link came back;
    /// this does.
    pub fn notify_resumed(mut self, resumed: Arc<Notify>) -> Consumer {
        self.resumed = Some(resumed);
        self
    }

    /// The consumer, with the stream and the consumer created if they are missing.
    async fn open(&self) -> Result<jetstream::consumer::Consumer<pull::Config>, Error> {
        let stream = ensure_stream(&self.js).await?;
        stream
            .get_or_create_consumer(
                &self.durable,
                pull::Config {
                    durable_name: Some(self.durable.clone()),
                    filter_subject: self.filter.clone(),
                    ack_policy: jetstream::consumer::AckPolicy::Explicit,
                    // What a tier that was paused or cut off had in hand comes again after this;
                    // a batch takes well under a second to apply.
                    ack_wait: Duration::from_secs(10),
                    max_ack_pending: 4096,
                    ..Default::default()
                },
            )
            .await
            .map_err(Error::nats)
    }

    /// Consumes until `shutdown`; a batch being handled is finished and acknowledged first.
    /// Interruptions (NATS away, stream or consumer gone) are waited out and repaired.
    pub async fn run<H: Handler + Clone>(self, handler: H, shutdown: CancellationToken) {
        let mut backoff = FIRST_BACKOFF;
        let mut interrupted = Persisting::default();
        while !shutdown.is_cancelled() {
            let mut live = LiveLane::default();
            let mut opened = None;
            let consumed = self
                .consume(
                    &handler,
                    &shutdown,
                    &mut interrupted,
                    &mut live,
                    &mut opened,
                )
                .await;
            live.stop().await;
            match consumed {
                Ok(()) => break,
                Err(error) => {
                    interrupted.failed(&format!("consumer {}", self.durable), &error);
                    // A stream that had been flowing is opened again at once (a tier resumed
                    // after a pause finds its pull request gone, and its live reports must not
                    // wait out a backoff); failures to open it, or a stream that fails as soon as
                    // it is open, back off: 0.2 s doubling up to 5 s.
                    let flowed = opened.is_some_and(|at| at.elapsed() >= FLOWING);
                    let wait = if flowed {
                        backoff = FIRST_BACKOFF;
                        Duration::ZERO
                    } else {
                        let wait = backoff;
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                        wait
                    };
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = shutdown.cancelled() => break,
                    }
                }
            }
        }
        debug!(durable = %self.durable, "consumer stopped");
    }

    async fn consume<H: Handler + Clone>(
        &self,
        handler: &H,
        shutdown: &CancellationToken,
        interrupted: &mut Persisting,
        live: &mut LiveLane,
        opened: &mut Option<Instant>,
    ) -> Result<(), Error> {
        let consumer = self.open().await?;
        // Short pull requests with frequent heartbeats: a request lost with a leaf link (the tier's
        // own connection to its leaf stays up) is noticed in seconds, not after half a minute.
        let mut messages = consumer
            .stream()
            .expires(Duration::from_secs(10))
            .heartbeat(Duration::from_secs(2))
            .messages()
            .await
            .map_err(Error::nats)?;
        info!(durable = %self.durable, filter = %self.filter, "consuming");
        if let Some(cut_off) = interrupted.failing_for().filter(|d| *d >= CUT_OFF)
            && let Some(resumed) = &self.resumed
        {
            info!(durable = %self.durable, cut_off_ms = cut_off.as_millis() as u64, "consumer back after being cut off");
            resumed.notify_one();
        }
        *opened = Some(Instant::now());
        interrupted.succeeded(&format!("consumer {}", self.durable));
        let mut missed_heartbeat = false;
        // Since when messages flow without a stall: where a live lane opened now would start.
        let mut flowing_since = Instant::now();
        loop {
            let first = tokio::select! {
                next = messages.next() => next,
                _ = shutdown.cancelled() => return Ok(()),
            };
            let Some(first) = first else {
                return Err(Error::Nats("message stream ended".into()));
            };
            let first = match first {
                Ok(message) => message,
                // A tier resumed after a pause sees its heartbeat timer run out before it reads
                // what arrived meanwhile: the messages delivered to it then are in its socket, and
                // dropping the stream for a new one would leave them unacknowledged until their
                // ack wait (10 s). One missed heartbeat is read past; a second in a row means the
                // pull request is lost (a cut leaf link), and the stream is opened again.
                Err(error)
                    if error.kind() == pull::MessagesErrorKind::MissingHeartbeat
                        && !missed_heartbeat =>
                {
                    debug!(durable = %self.durable, "missed a heartbeat, reading on");
                    missed_heartbeat = true;
                    continue;
                }
                Err(error) => return Err(Error::nats(error)),
            };
            if missed_heartbeat {
                // The first message after a stall (a pause): what follows it may be a backlog.
                flowing_since = Instant::now();
                missed_heartbeat = false;
            }
            // Whatever else has already arrived joins the batch; nothing waits for more.
            let mut batch = vec![first];
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
            // How far behind the stream this consumer is: a backlog gets a live lane beside it.
            let behind = batch
                .last()
                .and_then(|m| m.info().ok())
                .map_or(0, |info| info.pending);
            if behind > LIVE_LANE_FROM {
                let since = live_since(flowing_since.elapsed());
                live.start(
                    &self.js,
                    &self.durable,
                    &self.filter,
                    handler,
                    shutdown,
                    since,
                );
            } else if behind < LIVE_LANE_UNTIL {
                live.stop().await;
            }
            let inputs: Vec<Message<'_>> = batch
                .iter()
                .map(|m| Message {
                    subject: m.subject.as_str(),
                    payload: &m.payload,
                    delivered: m.info().map_or(1, |info| info.delivered),
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

/// A backlog this long (messages not yet delivered to the durable consumer) opens the live lane;
/// one this short closes it again.
const LIVE_LANE_FROM: u64 = 500;
const LIVE_LANE_UNTIL: u64 = 50;
/// How far back the live lane starts at most: a report sent just before the lane opened is still
/// live, but not the tail of the backlog (ten seconds of it were thousands of old reports the lane
/// had to chew through before the first live one: `wangge bench` saw live reports wait 1.6 s, p50).
const LIVE_LANE_LOOKBACK: Duration = Duration::from_secs(1);
/// How far before the durable consumer (re)opened or stalled the live lane starts: what was
/// published before that is the backlog, but the stream stamps messages with the server's clock, which may be a
/// little behind ours.
const LIVE_LANE_MARGIN: Duration = Duration::from_millis(100);

/// Where the live lane starts in the stream, messages having flowed to the durable consumer for
/// `open_for` since it opened or last stalled: from then (a tier resumed after a pause or a cut
/// finds the backlog published right up to then: a second of it, 1 800 reports in `wangge bench`,
/// held the first live report 160-470 ms), at most [`LIVE_LANE_LOOKBACK`] back (a consumer that
/// fell behind while flowing).
fn live_since(open_for: Duration) -> std::time::SystemTime {
    std::time::SystemTime::now() - (open_for + LIVE_LANE_MARGIN).min(LIVE_LANE_LOOKBACK)
}

/// While the durable consumer drains a backlog (after a cut link, a restart), the live lane applies
/// what is published now, so a live report does not wait behind thousands of old ones: an ephemeral
/// consumer that starts near the stream's end and acknowledges nothing. Everything it applies comes
/// again through the durable consumer, as a duplicate; what it fails to apply, too.
#[derive(Debug, Default)]
struct LiveLane {
    running: Option<(CancellationToken, tokio::task::JoinHandle<()>)>,
}

impl LiveLane {
    fn start<H: Handler + Clone>(
        &mut self,
        js: &jetstream::Context,
        durable: &str,
        filter: &str,
        handler: &H,
        shutdown: &CancellationToken,
        since: std::time::SystemTime,
    ) {
        if self
            .running
            .as_ref()
            .is_some_and(|(_, task)| !task.is_finished())
        {
            return;
        }
        let stop = shutdown.child_token();
        let task = tokio::spawn(live_lane(
            js.clone(),
            live_lane_name(durable),
            filter.to_owned(),
            handler.clone(),
            stop.clone(),
            since,
        ));
        info!(%filter, "backlog: live lane opened beside the consumer");
        self.running = Some((stop, task));
    }

    async fn stop(&mut self) {
        if let Some((stop, task)) = self.running.take() {
            stop.cancel();
            let _ = task.await;
            info!("backlog drained: live lane closed");
        }
    }
}

/// The live lane's consumer is named after the durable one: NATS permissions can then allow a
/// tier exactly its own consumers (deploy/nats/README.md).
pub fn live_lane_name(durable: &str) -> String {
    format!("{durable}-live")
}

async fn live_lane<H: Handler>(
    js: jetstream::Context,
    name: String,
    filter: String,
    handler: H,
    stop: CancellationToken,
    since: std::time::SystemTime,
) {
    let open = async {
        let stream = ensure_stream(&js).await?;
        // A lane of an earlier backlog may linger (until its inactivity threshold) with another
        // start time, and a consumer's start cannot be changed: begin afresh.
        let _ = stream.delete_consumer(&name).await;
        let consumer = stream
            .create_consumer(pull::Config {
                name: Some(name.clone()),
                filter_subject: filter.clone(),
                // From about when the backlog began to drain (`live_since`): what was sent
                // since is live.
                deliver_policy: jetstream::consumer::DeliverPolicy::ByStartTime {
                    start_time: since.into(),
                },
                ack_policy: jetstream::consumer::AckPolicy::None,
                inactive_threshold: Duration::from_secs(30),
                ..Default::default()
            })
            .await
            .map_err(Error::nats)?;
        consumer
            .stream()
            .expires(Duration::from_secs(10))
            .heartbeat(Duration::from_secs(2))
            .messages()
            .await
            .map_err(Error::nats)
    };
    let mut messages = match open.await {
        Ok(messages) => messages,
        Err(error) => {
            warn!(%error, "live lane not opened");
            return;
        }
    };
    loop {
        let first = tokio::select! {
            next = messages.next() => next,
            _ = stop.cancelled() => return,
        };
        let Some(Ok(first)) = first else {
            // The durable consumer delivers everything anyway; the lane only speeds things up.
            return;
        };
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match messages.next().now_or_never() {
                Some(Some(Ok(message))) => batch.push(message),
                _ => break,
            }
        }
        let inputs: Vec<Message<'_>> = batch
            .iter()
            .map(|m| Message {
                subject: m.subject.as_str(),
                payload: &m.payload,
                delivered: 1,
            })
            .collect();
        handler.handle(&inputs).await;
    }
}

/// How far behind a tier's consumer is, as JetStream sees it.
#[derive(Debug, Clone, Copy, Default)]
pub struct ConsumerLag {
    pub pending: u64,
    pub ack_pending: u64,
    pub redelivered: u64,
}

/// Asks JetStream about the durable consumer `durable` (within `timeout`).
pub async fn consumer_lag(
    js: &jetstream::Context,
    durable: &str,
    timeout: Duration,
) -> Result<ConsumerLag, Error> {
    let ask = async {
        let stream = js.get_stream(CASE_STREAM).await.map_err(Error::nats)?;
        let mut consumer: jetstream::consumer::Consumer<pull::Config> =
            stream.get_consumer(durable).await.map_err(Error::nats)?;
        let info = consumer.info().await.map_err(Error::nats)?;
        Ok(ConsumerLag {
            pending: info.num_pending,
            ack_pending: info.num_ack_pending as u64,
            redelivered: info.num_redelivered as u64,
        })
    };
    tokio::time::timeout(timeout, ask)
        .await
        .map_err(|_| Error::Nats("jetstream did not answer in time".into()))?
}

#[cfg(test)]
mod tests {
    use super::*;

    fn back(open_for: Duration) -> Duration {
        let since = live_since(open_for);
        std::time::SystemTime::now()
            .duration_since(since)
            .unwrap_or_default()
    }

    #[test]
    fn the_live_lane_starts_when_the_consumer_opened_and_never_more_than_a_second_back() {
        // Just reopened (a tier resumed with a backlog): from then, with the clock margin.
        let fresh = back(Duration::ZERO);
        assert!(
            fresh >= LIVE_LANE_MARGIN && fresh < LIVE_LANE_MARGIN * 2,
            "{fresh:?}"
        );
        let reopened = back(Duration::from_millis(300));
        assert!(reopened >= Duration::from_millis(400), "{reopened:?}");
        assert!(reopened < Duration::from_millis(500), "{reopened:?}");
        // Open for long and fallen behind: a second back at most.
        let behind = back(Duration::from_secs(3600));
        assert!(behind >= LIVE_LANE_LOOKBACK, "{behind:?}");
        assert!(behind < LIVE_LANE_LOOKBACK + LIVE_LANE_MARGIN, "{behind:?}");
    }
}
