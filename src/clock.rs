//! Where the pipeline reads the time: the system's clocks, or a clock a test moves by hand.
//!
//! Every time the pipeline acts on (a chunk's flush time, a rotated file's `rotate_wait`, the
//! pause after a write error, the safety poll) comes from one [`Clock`], so a test that drives
//! the pipeline step by step (`tests/it/model.rs`) decides what time it is, and a run is the same
//! every time it is replayed.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// A source of monotonic and wall-clock time.
#[derive(Debug, Clone, Default)]
pub enum Clock {
    /// The system's clocks.
    #[default]
    System,
    /// A clock that moves only when told to.
    Manual(Arc<ManualClock>),
}

/// A clock that starts at a fixed wall-clock time and moves only by [`ManualClock::advance`].
#[derive(Debug)]
pub struct ManualClock {
    /// The monotonic time it started at.
    start: Instant,
    /// The wall-clock time it started at (ms since the epoch).
    start_ms: i64,
    /// How far it has moved (ms).
    elapsed_ms: AtomicU64,
}

impl ManualClock {
    /// A clock at wall-clock time `start_ms` (ms since the epoch).
    pub fn new(start_ms: i64) -> Arc<ManualClock> {
        Arc::new(ManualClock {
            start: Instant::now(),
            start_ms,
            elapsed_ms: AtomicU64::new(0),
        })
    }

    /// Moves the clock forward.
    pub fn advance(&self, by: Duration) {
        self.elapsed_ms.fetch_add(by.as_millis() as u64, Ordering::SeqCst);
    }

    fn elapsed(&self) -> u64 {
        self.elapsed_ms.load(Ordering::SeqCst)
    }
}

impl Clock {
    /// Monotonic time now.
    pub fn now(&self) -> Instant {
        match self {
            Clock::System => Instant::now(),
            Clock::Manual(m) => m.start + Duration::from_millis(m.elapsed()),
        }
    }

    /// Wall-clock time now, in ms since the epoch.
    pub fn now_ms(&self) -> i64 {
        match self {
            Clock::System => SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_millis() as i64)
                .unwrap_or(0),
            Clock::Manual(m) => m.start_ms + m.elapsed() as i64,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manual_clock_moves_only_when_told_and_both_times_move_together() {
        let m = ManualClock::new(1_000_000);
        let c = Clock::Manual(m.clone());
        let (t0, w0) = (c.now(), c.now_ms());
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!((c.now(), c.now_ms()), (t0, w0));
        m.advance(Duration::from_millis(1500));
        assert_eq!(c.now() - t0, Duration::from_millis(1500));
        assert_eq!(c.now_ms() - w0, 1500);
        let s = Clock::System;
        assert!(s.now_ms() > 1_700_000_000_000);
    }
}
