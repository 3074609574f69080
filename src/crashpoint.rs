//! Deterministic crash points for tests of invariant 4 (a crash at any instant loses nothing).
//!
//! Random `kill -9` rarely lands in the few microseconds between, say, a chunk write and the
//! commit that covers it. With `LOGSHIP_CRASH_AT=<point>:<n>` in the environment, the process
//! aborts (no destructors, no flushing: as abrupt as SIGKILL) the n-th time it reaches `<point>`.
//! Unset, each point costs one relaxed atomic load.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

/// The named places a test can crash at.
pub const POINTS: &[&str] = &[
    "chunk-written",
    "before-state-write",
    "after-state-write",
    "file-sink-before-rename",
    "delivered-before-ack",
];

struct Spec {
    point: String,
    remaining: AtomicU64,
}

fn spec() -> Option<&'static Spec> {
    static SPEC: OnceLock<Option<Spec>> = OnceLock::new();
    SPEC.get_or_init(|| {
        let v = std::env::var("LOGSHIP_CRASH_AT").ok()?;
        let (point, n) = v.split_once(':')?;
        Some(Spec {
            point: point.to_string(),
            remaining: AtomicU64::new(n.parse().ok()?),
        })
    })
    .as_ref()
}

/// Aborts the process if this is the configured point and its count has run out.
pub fn hit(point: &str) {
    if let Some(s) = spec()
        && s.point == point
        && s.remaining.fetch_sub(1, Ordering::SeqCst) == 1
    {
        eprintln!("logship: crash point {point} reached; aborting (test hook)");
        std::process::abort();
    }
}
