//! Sources: where records come from. `tail` follows files by path and identity; `spark_events`
//! ships Spark event-log directories in any layout and codec.

pub mod eventlog;
pub mod tail;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::buffer::{ChunkStore, SourceCheckpoint};
use crate::config::{SourceConfig, SourceKind};
use eventlog::EventLogSource;
use tail::{TailError, TailSource, TailStats};

/// One configured source; the pipeline thread drives it.
#[allow(clippy::large_enum_variant)] // one per configured source, never moved after start
pub enum Source {
    /// Files by path and identity.
    Tail(TailSource),
    /// Spark event-log directories.
    SparkEvents(EventLogSource),
}

impl Source {
    /// The source described by `config`, feeding the outputs `routes`.
    pub fn new(config: SourceConfig, routes: Vec<usize>) -> Source {
        match config.kind {
            SourceKind::Tail => Source::Tail(TailSource::new(config, routes)),
            SourceKind::SparkEvents => Source::SparkEvents(EventLogSource::new(config, routes)),
        }
    }

    /// Its configuration.
    pub fn config(&self) -> &SourceConfig {
        match self {
            Source::Tail(t) => &t.config,
            Source::SparkEvents(e) => &e.config,
        }
    }

    /// The outputs it feeds.
    pub fn routes(&self) -> &[usize] {
        match self {
            Source::Tail(t) => &t.routes,
            Source::SparkEvents(e) => &e.routes,
        }
    }

    /// Directories to watch, and whether recursively.
    pub fn watch_dirs(&self) -> Vec<(PathBuf, bool)> {
        match self {
            Source::Tail(t) => t.watch_dirs(),
            Source::SparkEvents(e) => e.watch_dirs(),
        }
    }

    /// When the next scan for new files is due.
    pub fn next_scan(&self) -> Option<Instant> {
        match self {
            Source::Tail(t) => t.next_scan(),
            Source::SparkEvents(e) => e.next_scan(),
        }
    }

    /// When a rotated file's wait ends.
    pub fn next_rotate_deadline(&self) -> Option<Instant> {
        match self {
            Source::Tail(t) => t.next_rotate_deadline(),
            Source::SparkEvents(e) => e.next_rotate_deadline(),
        }
    }

    /// How often to look at files without an event.
    pub fn poll_interval(&self) -> Duration {
        match self {
            Source::Tail(t) => t.poll_interval(),
            Source::SparkEvents(e) => e.poll_interval(),
        }
    }

    /// Looks for new files.
    pub fn scan(&mut self, checkpoints: &[SourceCheckpoint], now: Instant) {
        match self {
            Source::Tail(t) => t.scan(checkpoints, now),
            Source::SparkEvents(e) => e.scan(checkpoints, now),
        }
    }

    /// Reads new data into `store`; returns the bytes read.
    pub fn read(
        &mut self,
        store: &mut ChunkStore,
        budget: u64,
        drain: bool,
        now: Instant,
        now_ms: i64,
    ) -> Result<u64, TailError> {
        match self {
            Source::Tail(t) => t.read(store, budget, drain, now, now_ms),
            Source::SparkEvents(e) => e.read(store, budget, drain, now, now_ms),
        }
    }

    /// Current (uncommitted) checkpoints.
    pub fn checkpoints(&self) -> Vec<SourceCheckpoint> {
        match self {
            Source::Tail(t) => t.checkpoints().collect(),
            Source::SparkEvents(e) => e.checkpoints(),
        }
    }

    /// After a commit.
    pub fn committed(&mut self) {
        match self {
            Source::Tail(t) => t.committed(),
            Source::SparkEvents(e) => e.committed(),
        }
    }

    /// After a rollback.
    pub fn rewind(&mut self) {
        match self {
            Source::Tail(t) => t.rewind(),
            Source::SparkEvents(e) => e.rewind(),
        }
    }

    /// Records the drain point.
    pub fn mark_drain_point(&mut self) {
        match self {
            Source::Tail(t) => t.mark_drain_point(),
            Source::SparkEvents(e) => e.mark_drain_point(),
        }
    }

    /// Bytes not read, per file.
    pub fn unread(&self) -> Vec<(PathBuf, u64)> {
        match self {
            Source::Tail(t) => t.unread(),
            Source::SparkEvents(e) => e.unread(),
        }
    }

    /// What it was asked to ship but could not, and why (see `TailSource::not_shipped`).
    pub fn not_shipped(&self, once: bool) -> Vec<tail::NotShipped> {
        match self {
            Source::Tail(t) => t.not_shipped(once),
            Source::SparkEvents(e) => e.not_shipped(once),
        }
    }

    /// The files it follows, for the metrics endpoint.
    pub fn files(&self) -> Vec<crate::metrics::FileMetrics> {
        match self {
            Source::Tail(t) => t.file_metrics(),
            Source::SparkEvents(e) => e.file_metrics(),
        }
    }

    /// Counters.
    pub fn stats(&self) -> TailStats {
        match self {
            Source::Tail(t) => t.stats.clone(),
            Source::SparkEvents(e) => e.stats(),
        }
    }
}
