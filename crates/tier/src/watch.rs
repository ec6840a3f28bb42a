//! Server-streaming watches: the initial matching cases, then every matching change, until the
//! service stops.

use std::pin::Pin;

use futures::{Stream, StreamExt, TryStreamExt, stream};
use sqlx::PgPool;
use tokio::sync::broadcast;
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;
use tonic::Status;
use wangge_proto as pb;
use wangge_store::cases;

use crate::{Error, Shared};

pub type UpdateStream = Pin<Box<dyn Stream<Item = Result<pb::CaseUpdate, Status>> + Send>>;

/// `initial`, then the live updates from `live` that pass `keep`. Subscribe (`Engine::subscribe`)
/// before listing `initial`, so that no change falls between the two; a change may then show up in
/// both, and its version tells them apart.
pub fn watch(
    shared: &Shared,
    live: broadcast::Receiver<pb::CaseUpdate>,
    initial: UpdateStream,
    keep: impl Fn(&pb::CaseUpdate) -> bool + Send + 'static,
) -> UpdateStream {
    let live = BroadcastStream::new(live).filter_map(move |update| {
        let item = match update {
            Ok(update) if keep(&update) => Some(Ok(update)),
            Ok(_) => None,
            Err(BroadcastStreamRecvError::Lagged(missed)) => Some(Err(Status::aborted(format!(
                "watcher fell behind by {missed} updates: list again and watch anew"
            )))),
        };
        std::future::ready(item)
    });
    let stopping = shared.stopping.clone().cancelled_owned();
    // Every case goes out with its clocks as they stand when it is sent.
    let engine = shared.engine.clone();
    let with_clocks = move |update: Result<pb::CaseUpdate, Status>| {
        update.map(|mut update| {
            update.case = update.case.map(|case| engine.with_clocks(case));
            update
        })
    };
    Box::pin(initial.chain(live).map(with_clocks).take_until(stopping))
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
