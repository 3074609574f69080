//! Deterministic crash points for tests of invariant 4 (a crash at any instant loses nothing).
//!
//! Random `kill -9` rarely lands in the few microseconds between, say, a chunk write and the
//! commit that covers it. With `LOGSHIP_CRASH_AT=<point>:<n>` in the environment, the process
//! aborts (no destructors, no flushing: as abrupt as SIGKILL) the n-th time it reaches `<point>`.
//! Unset, each point costs one relaxed atomic load.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

/// Every named place a test can crash at (a unit test checks that the code uses exactly these),
/// with the output that reaches it (`None`: every output). `tests/it/crash.rs` crashes at the
/// ones the directory output reaches, `tests/it/s3.rs` and `tests/it/cloudwatch.rs` at theirs.
pub const POINTS: &[(&str, Option<&str>)] = &[
    ("chunk-written", None),
    ("before-state-write", None),
    ("state-temp-written", None),
    // Half of a journal record written (a commit between snapshots).
    ("journal-record-half-written", None),
    ("after-state-write", None),
    // Reached only when a restart finds a chunk to cut back to its committed length.
    ("recovery-chunk-cut", None),
    ("file-sink-before-rename", Some("file")),
    ("delivered-before-ack", None),
    ("request-body-partly-sent", Some("s3")),
    ("multipart-part-uploaded", Some("s3")),
    ("cloudwatch-batch-recorded", Some("cloudwatch")),
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

#[cfg(test)]
mod tests {
    /// `POINTS` names every `hit("…")` in the source, and nothing else: a point missing from the
    /// list would never be crashed at by the tests that walk it.
    #[test]
    fn points_lists_exactly_the_points_the_code_uses() {
        fn walk(dir: &std::path::Path, found: &mut std::collections::BTreeSet<String>) {
            for e in std::fs::read_dir(dir).unwrap().flatten() {
                let p = e.path();
                if p.is_dir() {
                    walk(&p, found);
                } else if p.extension().is_some_and(|x| x == "rs") && !p.ends_with("crashpoint.rs") {
                    let text = std::fs::read_to_string(&p).unwrap();
                    for part in text.split("crashpoint::hit(\"").skip(1) {
                        found.insert(part.split('"').next().unwrap().to_string());
                    }
                }
            }
        }
        let mut found = std::collections::BTreeSet::new();
        walk(
            &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
            &mut found,
        );
        let listed: std::collections::BTreeSet<String> = super::POINTS.iter().map(|(s, _)| s.to_string()).collect();
        assert_eq!(found, listed);
    }
}
