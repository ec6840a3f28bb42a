//! Group commit of new reports (批量入库): the reports that arrive while one transaction is being
//! written wait for it, then go together in the next, which claims their keys, draws their numbers
//! and stores their cases, events and outbox rows in three statements and one commit
//! (`Engine::write_reports`). A report alone is written at once: nothing waits for company.
//!
//! Each report's caller gets its own answer when the transaction holding it has committed, so an
//! accepted report is still durable before its reply. The batch is written by a task of its own:
//! a caller that goes away (a cancelled request) does not take its batch down with it.

use std::sync::{Arc, Mutex, MutexGuard};

use chrono::NaiveDate;
use tokio::sync::oneshot;
use tracing::{debug, error, warn};
use wangge_proto as pb;

use crate::Error;
use crate::engine::Engine;

/// A report ready to be written: checked, located, its event built but for its daily number,
/// which is drawn in the batch's transaction.
#[derive(Debug)]
pub(crate) struct NewCase {
    pub reporter_id: String,
    pub client_id: String,
    /// SHA-256 of the normalized report, stored with its key.
    pub digest: [u8; 32],
    /// The community whose daily numbers it draws from, and the day (China time).
    pub community: String,
    pub day: NaiveDate,
    /// The 上报 event, its `number` still blank.
    pub event: pb::CaseEvent,
    /// About the bytes it stores (its envelope's size).
    pub bytes: usize,
}

/// What became of a report in its batch.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// The case it created, as stored.
    Reported(Box<pb::Case>),
    /// Its key was taken (a resubmission, or a copy earlier in the same batch): no case made.
    Taken,
}

/// Why a batch did not commit.
#[derive(Debug)]
pub(crate) enum BatchError {
    /// One report of the batch cannot be taken (its event, numbered, is too large to travel, say):
    /// it is answered alone, and the others are written again without it.
    Report(usize, Error),
    /// The transaction failed as a whole (the database is away): every report gets the error.
    All(Error),
}

/// At most this many reports go in one transaction, and (but for a first report that is larger
/// alone) this many bytes of them; more wait for the next.
const MAX_BATCH: usize = 256;
const MAX_BATCH_BYTES: usize = 4 * 1024 * 1024;

/// The reports waiting for the next transaction, and whoever writes one.
#[derive(Debug, Default)]
pub(crate) struct IntakeQueue {
    waiting: Mutex<Vec<Queued>>,
    /// Held while a batch is written: whoever takes it writes what waits.
    writer: Arc<tokio::sync::Mutex<()>>,
}

#[derive(Debug)]
struct Queued {
    case: NewCase,
    answer: oneshot::Sender<Result<Outcome, Error>>,
}

impl IntakeQueue {
    /// Queues `case` and returns once the transaction holding it has committed, or failed.
    pub(crate) async fn submit(
        &self,
        engine: &Arc<Engine>,
        case: NewCase,
    ) -> Result<Outcome, Error> {
        let (answer, mut answered) = oneshot::channel();
        self.waiting().push(Queued { case, answer });
        loop {
            let writer = tokio::select! {
                biased;
                outcome = &mut answered => {
                    return outcome.unwrap_or_else(|_| {
                        Err(Error::Internal("the intake batch ended without an answer".into()))
                    });
                }
                writer = self.writer.clone().lock_owned() => writer,
            };
            let batch = self.next_batch();
            if batch.is_empty() {
                // Ours went with an earlier batch, whose answers are out before its writer lets go.
                continue;
            }
            let engine = engine.clone();
            tokio::spawn(async move {
                write(&engine, batch).await;
                drop(writer);
            });
        }
    }

    /// The oldest waiting reports, as many as one transaction takes.
    fn next_batch(&self) -> Vec<Queued> {
        let mut waiting = self.waiting();
        let mut bytes = 0;
        let taken = waiting
            .iter()
            .take(MAX_BATCH)
            .take_while(|queued| {
                bytes += queued.case.bytes;
                bytes <= MAX_BATCH_BYTES
            })
            .count()
            .max(1)
            .min(waiting.len());
        waiting.drain(..taken).collect()
    }

    fn waiting(&self) -> MutexGuard<'_, Vec<Queued>> {
        // A poisoned queue still holds whole entries: pushes and drains do not panic midway.
        self.waiting.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Writes `batch` and answers each of its reports.
async fn write(engine: &Engine, mut batch: Vec<Queued>) {
    loop {
        let cases: Vec<&NewCase> = batch.iter().map(|q| &q.case).collect();
        match engine.write_reports(&cases).await {
            Ok(outcomes) => {
                debug!(reports = batch.len(), "intake batch written");
                for (queued, outcome) in batch.into_iter().zip(outcomes) {
                    // A caller that went away leaves its answer unread; its report stays taken.
                    let _ = queued.answer.send(Ok(outcome));
                }
                return;
            }
            Err(BatchError::Report(index, error)) if index < batch.len() => {
                let refused = batch.remove(index);
                let _ = refused.answer.send(Err(error));
                if batch.is_empty() {
                    return;
                }
            }
            Err(BatchError::Report(index, error)) => {
                error!(index, size = batch.len(), %error, "a batch refused a report it does not hold");
                answer_all(batch, &Error::Internal(format!("intake batch: {error}")));
                return;
            }
            Err(BatchError::All(error)) => {
                warn!(reports = batch.len(), %error, "intake batch failed");
                answer_all(batch, &error);
                return;
            }
        }
    }
}

fn answer_all(batch: Vec<Queued>, error: &Error) {
    for queued in batch {
        let _ = queued.answer.send(Err(error.for_each_caller()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queue_of(sizes: &[usize]) -> IntakeQueue {
        let queue = IntakeQueue::default();
        for &bytes in sizes {
            let (answer, _) = oneshot::channel();
            let case = NewCase {
                reporter_id: "gw-1".into(),
                client_id: format!("c-{bytes}"),
                digest: [0; 32],
                community: "350205002006".into(),
                day: NaiveDate::default(),
                event: pb::CaseEvent::default(),
                bytes,
            };
            queue.waiting().push(Queued { case, answer });
        }
        queue
    }

    #[test]
    fn a_batch_takes_the_oldest_reports_up_to_its_count_and_bytes() {
        assert!(queue_of(&[]).next_batch().is_empty());
        // By count: 256, then the rest.
        let many = queue_of(&[1_000; 300]);
        assert_eq!(many.next_batch().len(), MAX_BATCH);
        assert_eq!(many.next_batch().len(), 300 - MAX_BATCH);
        // By bytes: three of 1.5 MiB fill 4 MiB with two.
        let large = queue_of(&[1_536 * 1024; 3]);
        assert_eq!(large.next_batch().len(), 2);
        assert_eq!(large.next_batch().len(), 1);
        // A report larger than a batch's bytes still goes, alone.
        let huge = queue_of(&[MAX_BATCH_BYTES + 1, 10]);
        assert_eq!(huge.next_batch().len(), 1);
        assert_eq!(huge.next_batch().len(), 1);
    }
}
