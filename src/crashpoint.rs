//! Deterministic crash points and injected faults, for tests of the buffer's first invariant (a
//! crash at any instant loses nothing and repeats nothing; see `buffer`) and of write errors.
//!
//! Random `kill -9` rarely lands in the few microseconds between, say, a chunk write and the
//! commit that covers it. With `LOGSHIP_CRASH_AT=<point>:<n>` in the environment, the process
//! aborts (no destructors, no flushing: as abrupt as SIGKILL) the n-th time it reaches `<point>`.
//! A test that drives the pipeline in-process ([`arm`]) has the point unwind its thread instead,
//! with a [`Crash`] payload, and drops everything the thread held, as a crash would. Faults
//! ([`fail`]) make a write return an error (a full disk, no file descriptor left) at named
//! places, for a thread that armed them. Unset, each point costs one relaxed atomic load.

use std::cell::RefCell;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

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
    // CloudWatch accepted a batch; its progress record is not written yet.
    ("cloudwatch-batch-accepted", Some("cloudwatch")),
    ("cloudwatch-batch-recorded", Some("cloudwatch")),
    // A chunk that could not be delivered is in the secondary directory, not yet forgotten.
    ("secondary-written", None),
];

/// Every named place a test can make a write fail at ([`fail`]).
pub const FAULTS: &[&str] = &["chunk-open", "chunk-write", "chunk-cut", "state-write"];

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

/// Whether any thread armed a crash or a fault (the one load an unarmed point costs).
static ARMED: AtomicBool = AtomicBool::new(false);

thread_local! {
    /// This thread's crash: the point and how many more times it is passed before it crashes.
    static CRASH: RefCell<Option<(String, u64)>> = const { RefCell::new(None) };
    /// This thread's faults: the place, how many more times it is passed first, and the error.
    static FAULT: RefCell<Vec<(String, u64, i32)>> = const { RefCell::new(Vec::new()) };
}

/// The payload a crash point unwinds with when a test armed it in-process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Crash(pub String);

/// Makes this thread unwind with [`Crash`] the `n`-th time (from 1) it reaches `point`.
pub fn arm(point: &str, n: u64) {
    ARMED.store(true, Ordering::SeqCst);
    CRASH.with(|c| *c.borrow_mut() = Some((point.to_string(), n)));
}

/// Makes this thread's `n`-th pass (from 1) through fault place `place` fail with the OS error
/// `errno` (`libc::ENOSPC`, `libc::EMFILE`, ...); once.
pub fn arm_fault(place: &str, n: u64, errno: i32) {
    ARMED.store(true, Ordering::SeqCst);
    FAULT.with(|f| f.borrow_mut().push((place.to_string(), n, errno)));
}

/// How many of this thread's faults have not failed a write yet.
pub fn faults_left() -> usize {
    FAULT.with(|f| f.borrow().len())
}

/// Forgets this thread's crash and faults.
pub fn disarm() {
    CRASH.with(|c| *c.borrow_mut() = None);
    FAULT.with(|f| f.borrow_mut().clear());
}

/// Aborts the process if this is the configured point and its count has run out (or unwinds
/// the thread, for a point armed in-process).
pub fn hit(point: &str) {
    if let Some(s) = spec()
        && s.point == point
        && s.remaining.fetch_sub(1, Ordering::SeqCst) == 1
    {
        eprintln!("logship: crash point {point} reached; aborting (test hook)");
        std::process::abort();
    }
    if ARMED.load(Ordering::Relaxed) {
        let crash = CRASH.with(|c| {
            let mut c = c.borrow_mut();
            match c.as_mut() {
                Some((p, n)) if p == point => {
                    *n -= 1;
                    if *n == 0 {
                        *c = None;
                        return true;
                    }
                    false
                }
                _ => false,
            }
        });
        if crash {
            // Not a panic: no hook runs, nothing is printed.
            std::panic::resume_unwind(Box::new(Crash(point.to_string())));
        }
    }
}

/// An injected error for fault place `place`, if this thread armed one that is due.
pub fn fail(place: &str) -> std::io::Result<()> {
    if !ARMED.load(Ordering::Relaxed) {
        return Ok(());
    }
    FAULT.with(|f| {
        let mut f = f.borrow_mut();
        let Some(i) = f.iter().position(|(p, _, _)| p == place) else {
            return Ok(());
        };
        f[i].1 -= 1;
        if f[i].1 > 0 {
            return Ok(());
        }
        let (_, _, errno) = f.remove(i);
        Err(std::io::Error::from_raw_os_error(errno))
    })
}

#[cfg(test)]
mod tests {
    /// `POINTS` names every `hit("…")` in the source, and nothing else: a point missing from the
    /// list would never be crashed at by the tests that walk it.
    #[test]
    fn points_lists_exactly_the_points_the_code_uses() {
        fn walk(dir: &std::path::Path, call: &str, found: &mut std::collections::BTreeSet<String>) {
            for e in std::fs::read_dir(dir).unwrap().flatten() {
                let p = e.path();
                if p.is_dir() {
                    walk(&p, call, found);
                } else if p.extension().is_some_and(|x| x == "rs") && !p.ends_with("crashpoint.rs") {
                    let text = std::fs::read_to_string(&p).unwrap();
                    for part in text.split(call).skip(1) {
                        found.insert(part.split('"').next().unwrap().to_string());
                    }
                }
            }
        }
        let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut found = std::collections::BTreeSet::new();
        walk(&src, "crashpoint::hit(\"", &mut found);
        let listed: std::collections::BTreeSet<String> = super::POINTS.iter().map(|(s, _)| s.to_string()).collect();
        assert_eq!(found, listed);
        let mut found = std::collections::BTreeSet::new();
        walk(&src, "crashpoint::fail(\"", &mut found);
        let listed: std::collections::BTreeSet<String> = super::FAULTS.iter().map(|s| s.to_string()).collect();
        assert_eq!(found, listed);
    }

    /// Armed in-process, a point unwinds the thread that armed it with a `Crash` the n-th time,
    /// once; a fault fails once at its n-th pass; other threads see neither.
    #[test]
    fn an_armed_point_unwinds_its_thread_and_a_fault_fails_once() {
        use super::*;
        arm("chunk-written", 2);
        hit("chunk-written");
        std::thread::spawn(|| {
            hit("chunk-written");
            hit("chunk-written");
            assert!(fail("chunk-write").is_ok());
        })
        .join()
        .unwrap();
        let crash = std::panic::catch_unwind(|| hit("chunk-written")).unwrap_err();
        assert_eq!(crash.downcast_ref::<Crash>(), Some(&Crash("chunk-written".into())));
        hit("chunk-written");
        arm_fault("chunk-write", 2, libc::ENOSPC);
        assert!(fail("chunk-write").is_ok());
        assert_eq!(fail("chunk-write").unwrap_err().raw_os_error(), Some(libc::ENOSPC));
        assert!(fail("chunk-write").is_ok());
        disarm();
    }
}
