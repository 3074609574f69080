//! When to stop: the triggers that start the drain.
//!
//! - **Heartbeat** (EMR's `SIDECAR_SIGNAL_FILE`): the Spark container touches the file every 2 s.
//!   Main has ended when the file, once it has appeared, is not modified for `heartbeat_timeout`
//!   (15 s by default) or is deleted. If it never appears within `heartbeat_appear_timeout`
//!   (120 s by default), logship warns and drains, so a pod whose main container never started
//!   does not keep running (and billing) forever; a file that already exists at start counts as
//!   appeared.
//! - **Signal file**: its appearance means main has ended (written by `logship wrap`).
//! - **SIGTERM / SIGINT**: native sidecars (Kubernetes ≥ 1.29) get SIGTERM after main exits. A
//!   second one during the drain (or the first in `--once`, which drains from the start) stops
//!   reading: what was read is delivered, the rest is reported as not read (exit 4). SIGHUP
//!   reloads the configuration (see `engine`); SIGUSR1 and SIGUSR2 are logged and otherwise
//!   ignored; none of them kills the process.
//! - **Once**: ship what exists and stop (`ship --once`).
//!
//! Watchers poll at most once a second: cheap, and exact enough against a 15 s timeout.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use crate::config::LifecycleConfig;

/// Why the drain started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EndReason {
    /// The heartbeat file was not modified for the timeout.
    HeartbeatStale(PathBuf),
    /// The heartbeat file was deleted.
    HeartbeatDeleted(PathBuf),
    /// The heartbeat file never appeared.
    HeartbeatNeverAppeared(PathBuf),
    /// The signal file appeared.
    SignalFile(PathBuf),
    /// A signal was received.
    Signal(&'static str),
    /// `--once`: everything that exists was to be shipped.
    Once,
    /// A stop during a drain that had not started (reading stops at once).
    StopRequested,
    /// Nothing can send the pipeline messages any more (the engine is gone).
    ControlClosed,
}

impl fmt::Display for EndReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EndReason::HeartbeatStale(p) => write!(f, "heartbeat file {} went stale", p.display()),
            EndReason::HeartbeatDeleted(p) => write!(f, "heartbeat file {} was deleted", p.display()),
            EndReason::HeartbeatNeverAppeared(p) => write!(f, "heartbeat file {} never appeared", p.display()),
            EndReason::SignalFile(p) => write!(f, "signal file {} appeared", p.display()),
            EndReason::Signal(s) => write!(f, "received {s}"),
            EndReason::Once => write!(f, "--once: shipped what exists"),
            EndReason::StopRequested => write!(f, "stop requested"),
            EndReason::ControlClosed => write!(f, "control channel closed"),
        }
    }
}

/// Watches EMR's heartbeat file.
#[derive(Debug, Clone)]
pub struct HeartbeatWatcher {
    /// The file the main container touches.
    pub path: PathBuf,
    /// Stale after this long without a touch.
    pub timeout: Duration,
    /// Give up waiting for the file to appear after this long.
    pub appear_timeout: Duration,
}

/// What one look at the heartbeat file found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeartbeatState {
    /// Not there yet.
    Waiting,
    /// There and fresh.
    Alive,
    /// Ended (stale, deleted, or never appeared): carries which.
    Ended(HeartbeatEnd),
}

/// How the heartbeat ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeartbeatEnd {
    /// Not touched for the timeout.
    Stale,
    /// Deleted after it appeared.
    Deleted,
    /// Never appeared.
    NeverAppeared,
}

impl HeartbeatWatcher {
    /// One look at the file: `appeared` says whether it was seen before, `waited` how long we have
    /// been watching.
    pub fn check(&self, appeared: bool, waited: Duration, now: SystemTime) -> HeartbeatState {
        match std::fs::metadata(&self.path).and_then(|m| m.modified()) {
            Ok(mtime) => {
                let age = now.duration_since(mtime).unwrap_or_default();
                if age > self.timeout {
                    HeartbeatState::Ended(HeartbeatEnd::Stale)
                } else {
                    HeartbeatState::Alive
                }
            }
            Err(_) if appeared => HeartbeatState::Ended(HeartbeatEnd::Deleted),
            Err(_) if waited >= self.appear_timeout => HeartbeatState::Ended(HeartbeatEnd::NeverAppeared),
            Err(_) => HeartbeatState::Waiting,
        }
    }

    /// Resolves when the main container has ended by the heartbeat's rules.
    pub async fn ended(&self) -> EndReason {
        let start = Instant::now();
        let mut appeared = false;
        let period = poll_period(self.timeout);
        loop {
            match self.check(appeared, start.elapsed(), SystemTime::now()) {
                HeartbeatState::Waiting => {}
                HeartbeatState::Alive => {
                    if !appeared {
                        tracing::info!(path = %self.path.display(), "heartbeat file appeared");
                    }
                    appeared = true;
                }
                HeartbeatState::Ended(HeartbeatEnd::Stale) => return EndReason::HeartbeatStale(self.path.clone()),
                HeartbeatState::Ended(HeartbeatEnd::Deleted) => return EndReason::HeartbeatDeleted(self.path.clone()),
                HeartbeatState::Ended(HeartbeatEnd::NeverAppeared) => {
                    tracing::warn!(
                        path = %self.path.display(),
                        waited = ?self.appear_timeout,
                        "heartbeat file never appeared; assuming the main container is not running"
                    );
                    return EndReason::HeartbeatNeverAppeared(self.path.clone());
                }
            }
            tokio::time::sleep(period).await;
        }
    }
}

fn poll_period(timeout: Duration) -> Duration {
    (timeout / 4).clamp(Duration::from_millis(100), Duration::from_secs(1))
}

/// Resolves when `path` exists.
pub async fn signal_file_appeared(path: &Path) -> EndReason {
    loop {
        if path.exists() {
            return EndReason::SignalFile(path.to_path_buf());
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// What a signal asks of the process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignalRequest {
    /// SIGTERM or SIGINT: drain (and, during a drain, stop reading and deliver what was read).
    Stop(&'static str),
    /// SIGHUP: read the configuration again and carry on with it.
    Reload(&'static str),
    /// A signal that must not kill the process (SIGUSR1, SIGUSR2): logged, no action.
    Ignored(&'static str),
}

/// The signals a running logship handles, for the whole run: installed once at start, so no
/// signal that arrives later (during the drain, or in `--once`) falls back to the default
/// action of killing the process without a summary.
pub struct Signals {
    streams: Vec<(SignalRequest, tokio::signal::unix::Signal)>,
}

impl Signals {
    /// Installs the handlers (a signal that cannot be handled is logged and keeps its default).
    pub fn install() -> Signals {
        use tokio::signal::unix::{SignalKind, signal};
        let kinds = [
            (SignalKind::terminate(), SignalRequest::Stop("SIGTERM")),
            (SignalKind::interrupt(), SignalRequest::Stop("SIGINT")),
            (SignalKind::hangup(), SignalRequest::Reload("SIGHUP")),
            (SignalKind::user_defined1(), SignalRequest::Ignored("SIGUSR1")),
            (SignalKind::user_defined2(), SignalRequest::Ignored("SIGUSR2")),
        ];
        let mut streams = Vec::new();
        for (kind, request) in kinds {
            match signal(kind) {
                Ok(s) => streams.push((request, s)),
                Err(e) => tracing::error!(?request, error = %e, "cannot handle a signal; it keeps its default action"),
            }
        }
        Signals { streams }
    }

    /// The next signal received.
    pub async fn recv(&mut self) -> SignalRequest {
        std::future::poll_fn(|cx| {
            for (request, s) in &mut self.streams {
                if s.poll_recv(cx).is_ready() {
                    return std::task::Poll::Ready(*request);
                }
            }
            std::task::Poll::Pending
        })
        .await
    }
}

/// Resolves with the first file trigger that fires among those `config` enables (signals are
/// [`Signals`]'); at once with `once`.
pub async fn wait_for_end(config: &LifecycleConfig) -> EndReason {
    if config.once {
        return EndReason::Once;
    }
    let heartbeat = config.heartbeat_file.clone().map(|path| HeartbeatWatcher {
        path,
        timeout: config.heartbeat_timeout.get(),
        appear_timeout: config.heartbeat_appear_timeout.get(),
    });
    let hb = async {
        match &heartbeat {
            Some(h) => h.ended().await,
            None => std::future::pending().await,
        }
    };
    let sf = async {
        match &config.signal_file {
            Some(p) => signal_file_appeared(p).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        r = hb => r,
        r = sf => r,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heartbeat_states() {
        let d = tempfile::tempdir().unwrap();
        let w = HeartbeatWatcher {
            path: d.path().join("hb"),
            timeout: Duration::from_secs(15),
            appear_timeout: Duration::from_secs(60),
        };
        let now = SystemTime::now();
        assert_eq!(w.check(false, Duration::ZERO, now), HeartbeatState::Waiting);
        assert_eq!(
            w.check(false, Duration::from_secs(61), now),
            HeartbeatState::Ended(HeartbeatEnd::NeverAppeared)
        );
        std::fs::write(&w.path, b"").unwrap();
        assert_eq!(w.check(false, Duration::ZERO, SystemTime::now()), HeartbeatState::Alive);
        assert_eq!(
            w.check(true, Duration::ZERO, SystemTime::now() + Duration::from_secs(16)),
            HeartbeatState::Ended(HeartbeatEnd::Stale)
        );
        std::fs::remove_file(&w.path).unwrap();
        assert_eq!(
            w.check(true, Duration::ZERO, now),
            HeartbeatState::Ended(HeartbeatEnd::Deleted)
        );
    }
}
