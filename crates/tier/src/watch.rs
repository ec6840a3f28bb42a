//! Server-streaming watches: the initial matching cases, then every matching change, until the
//! service stops. A watch also follows the lights of the open cases it has sent: a light changes
//! with time alone (the whole-case clock crossing 80 %, a stage re-crossing a threshold whose
//! 督办 was already raised), so such a change is sent too, without an event.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::time::Duration;

use futures::{Stream, StreamExt, TryStreamExt, stream};
use sqlx::PgPool;
use tokio::sync::broadcast;
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;
use tonic::Status;
use tracing::debug;
use wangge_domain::case::is_finished;
use wangge_proto as pb;
use wangge_store::cases;

use crate::{Engine, Error, Shared};

pub type UpdateStream = Pin<Box<dyn Stream<Item = Result<pb::CaseUpdate, Status>> + Send>>;

/// The most open cases one watch follows for light changes. A case costs the watch a copy of it
/// (a few kB); past this many, a case sent later shows its light changing only with its events.
const FOLLOWED: usize = 5_000;

/// What reaches a watch, in order: the initial cases, then live changes and re-reads of the
/// lights.
enum Input {
    /// A case to send.
    Send(Box<Result<pb::CaseUpdate, Status>>),
    /// A case changed in a way this watch does not send (it left the watch's states or scope):
    /// the watcher's copy no longer counts on it.
    Gone(String),
    /// Time to look at the lights of the followed cases again.
    Lights,
    /// No more live changes will come (the tier's engine is gone): the watch ends.
    Closed,
}

/// The open cases a watch has sent, with the lights they went out with: (stage, whole case).
#[derive(Default)]
struct Followed {
    cases: BTreeMap<String, (pb::Case, (i32, i32))>,
}

fn lights(case: &pb::Case) -> (i32, i32) {
    let light = |clock: Option<&pb::ClockStanding>| clock.map_or(0, |c| c.light);
    let clocks = case.clocks.as_ref();
    (
        light(clocks.and_then(|c| c.stage.as_ref())),
        light(clocks.and_then(|c| c.case.as_ref())),
    )
}

impl Followed {
    /// Notes a case on its way out (with its clocks).
    fn sent(&mut self, case: &pb::Case) {
        if is_finished(case.state()) {
            self.cases.remove(&case.id);
        } else if self.cases.len() < FOLLOWED || self.cases.contains_key(&case.id) {
            self.cases
                .insert(case.id.clone(), (case.clone(), lights(case)));
        } else {
            debug!(case_id = %case.id, "watch follows enough cases, not this one's lights");
        }
    }

    /// The followed cases whose light differs now from the one they were sent with, as updates
    /// without an event.
    fn changed(&mut self, engine: &Engine) -> Vec<Result<pb::CaseUpdate, Status>> {
        let mut updates = Vec::new();
        for (case, sent) in self.cases.values_mut() {
            let fresh = engine.with_clocks(case.clone());
            let now = lights(&fresh);
            if now != *sent {
                *sent = now;
                *case = fresh.clone();
                updates.push(Ok(pb::CaseUpdate {
                    case: Some(fresh),
                    event: None,
                }));
            }
        }
        updates
    }
}

/// `initial`, then the live updates from `live` that pass `keep`, and an update without an event
/// whenever the light of an open case already sent changes with time (looked at every
/// `Shared::lights_every`, on the tier's clock). Subscribe (`Engine::subscribe`) before listing
/// `initial`, so that no change falls between the two; a change may then show up in both, and its
/// version tells them apart.
pub fn watch(
    shared: &Shared,
    live: broadcast::Receiver<pb::CaseUpdate>,
    initial: UpdateStream,
    keep: impl Fn(&pb::CaseUpdate) -> bool + Send + 'static,
) -> UpdateStream {
    let live = BroadcastStream::new(live).filter_map(move |update| {
        let input = match update {
            Ok(update) if keep(&update) => Some(Input::Send(Box::new(Ok(update)))),
            Ok(update) => update.case.map(|case| Input::Gone(case.id)),
            Err(BroadcastStreamRecvError::Lagged(missed)) => {
                let status = Status::aborted(format!(
                    "watcher fell behind by {missed} updates: list again and watch anew"
                ));
                Some(Input::Send(Box::new(Err(status))))
            }
        };
        std::future::ready(input)
    });
    let live = live.chain(stream::once(std::future::ready(Input::Closed)));
    let every = shared.lights_every.max(Duration::from_millis(100));
    let ticks = stream::unfold((), move |()| async move {
        tokio::time::sleep(every).await;
        Some((Input::Lights, ()))
    });
    let inputs = initial
        .map(|update| Input::Send(Box::new(update)))
        .chain(stream::select(live, ticks));
    let stopping = shared.stopping.clone().cancelled_owned();
    // Every case goes out with its clocks as they stand when it is sent.
    let engine = shared.engine.clone();
    let updates = inputs
        .scan(Followed::default(), move |followed, input| {
            let out = match input {
                Input::Send(sent) => match *sent {
                    Ok(mut update) => {
                        update.case = update.case.map(|case| {
                            let case = engine.with_clocks(case);
                            followed.sent(&case);
                            case
                        });
                        vec![Ok(update)]
                    }
                    Err(status) => vec![Err(status)],
                },
                Input::Gone(id) => {
                    followed.cases.remove(&id);
                    Vec::new()
                }
                Input::Lights => followed.changed(&engine),
                Input::Closed => return std::future::ready(None),
            };
            std::future::ready(Some(stream::iter(out)))
        })
        .flatten();
    Box::pin(updates.take_until(stopping))
}

/// Updates with no event for given cases: the start of a watch.
pub fn snapshot(cases: Vec<pb::Case>) -> UpdateStream {
    Box::pin(stream::iter(cases.into_iter().map(|case| {
        Ok(pb::CaseUpdate {
            case: Some(case),
            event: None,
        })
    })))
}

/// Every case matching `filter`, oldest first, read a page at a time as the watcher takes them.
pub fn existing(pool: PgPool, filter: cases::Filter) -> UpdateStream {
    const PAGE: i64 = 500;
    let pages = stream::try_unfold(Some(filter), move |filter| {
        let pool = pool.clone();
        async move {
            let Some(mut filter) = filter else {
                return Ok::<_, Status>(None);
            };
            filter.limit = PAGE;
            let page = cases::list(&pool, &filter)
                .await
                .map_err(|e| Status::from(Error::from(e)))?;
            let next = (page.len() as i64 == PAGE).then(|| {
                filter.after = page.last().and_then(|c| uuid::Uuid::parse_str(&c.id).ok());
                filter
            });
            Ok(Some((page, next)))
        }
    });
    Box::pin(pages.map_ok(snapshot).try_flatten())
}

/// True when `states` is empty or holds the case's state.
pub fn state_matches(states: &[i32], case: &pb::Case) -> bool {
    states.is_empty() || states.contains(&case.state)
}

/// Orders a work list the way a handler works it: the most urgent first, then the least time
/// left on the stage's clock (cases without a clock last).
pub fn by_urgency_then_time_left(cases: &mut [pb::Case]) {
    cases.sort_by_key(|case| {
        let left = case
            .clocks
            .as_ref()
            .and_then(|c| c.stage.as_ref())
            .map_or(i64::MAX, |stage| stage.left_seconds);
        (std::cmp::Reverse(case.urgency), left)
    });
}
