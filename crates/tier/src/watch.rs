//! Server-streaming watches: the initial matching cases, then every matching change, until the
//! service stops.

use std::pin::Pin;

use futures::{Stream, StreamExt, stream};
use tokio::sync::broadcast;
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;
use tonic::Status;
use wangge_proto as pb;

use crate::Shared;

pub type UpdateStream = Pin<Box<dyn Stream<Item = Result<pb::CaseUpdate, Status>> + Send>>;

/// `initial`, then the live updates from `live` that pass `keep`. Subscribe (`Engine::subscribe`)
/// before listing `initial`, so that no change falls between the two; a change may then show up in
/// both, and its version tells them apart.
pub fn watch(
    shared: &Shared,
    live: broadcast::Receiver<pb::CaseUpdate>,
    initial: Vec<pb::CaseUpdate>,
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
    Box::pin(
        stream::iter(initial.into_iter().map(Ok))
            .chain(live)
            .take_until(stopping),
    )
}

/// True when `states` is empty or holds the case's state.
pub fn state_matches(states: &[i32], case: &pb::Case) -> bool {
    states.is_empty() || states.contains(&case.state)
}
