//! Where a tier reads the time: the clock is injected, so tests (and the demo) can move it and run
//! days of deadlines in milliseconds instead of waiting for them.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use chrono::{DateTime, Duration, Utc};

/// A source of the current time.
pub trait TimeSource: Send + Sync + fmt::Debug {
    fn now(&self) -> DateTime<Utc>;

    /// Moves this time forward by `by`, where it can be moved (false: it cannot).
    fn advance_by(&self, by: Duration) -> bool {
        let _ = by;
        false
    }
}

/// The tier's time, shared by its engine, its scans and its handlers.
pub type Time = Arc<dyn TimeSource>;

/// The machine's clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemTime;

impl TimeSource for SystemTime {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// The machine's clock moved by an offset that only grows: time keeps flowing, and a test jumps
/// it forward (never back, so event times keep their order).
#[derive(Debug, Default)]
pub struct ShiftedTime {
    offset_ms: AtomicI64,
}

impl ShiftedTime {
    pub fn new() -> Arc<ShiftedTime> {
        Arc::new(ShiftedTime::default())
    }

    /// Moves the time forward by `by` (a negative duration is ignored).
    pub fn advance(&self, by: Duration) {
        let ms = by.num_milliseconds().max(0);
        self.offset_ms.fetch_add(ms, Ordering::SeqCst);
    }

    /// Moves the time forward to `at`, if it lies ahead.
    pub fn advance_to(&self, at: DateTime<Utc>) {
        // Whole milliseconds, rounded up: never short of `at`.
        let ahead = at - self.now() + Duration::milliseconds(1);
        if ahead > Duration::zero() {
            self.advance(ahead);
        }
    }
}

impl TimeSource for ShiftedTime {
    fn now(&self) -> DateTime<Utc> {
        Utc::now() + Duration::milliseconds(self.offset_ms.load(Ordering::SeqCst))
    }

    fn advance_by(&self, by: Duration) -> bool {
        self.advance(by);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shifted_time_only_moves_forward() {
        let time = ShiftedTime::new();
        let start = time.now();
        time.advance(Duration::days(3));
        assert!(time.now() - start >= Duration::days(3));
        time.advance(Duration::days(-10));
        assert!(time.now() - start >= Duration::days(3));
        let target = start + Duration::days(10);
        time.advance_to(target);
        assert!(time.now() >= target);
    }
}
