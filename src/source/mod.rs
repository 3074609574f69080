//! Sources: where records come from. `tail` follows files by path and identity; `spark_events`
//! ships Spark event-log directories in any layout and codec.

pub mod eventlog;
pub mod tail;

use std::cell::Cell;
use std::collections::HashSet;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::buffer::{Checkpoints, ChunkStore, SourceCheckpoint, SourceKey};
use crate::config::{SourceConfig, SourceKind};
use eventlog::EventLogSource;
use tail::{TailError, TailSource, TailStats};

/// A source the pipeline thread drives: it finds its files, reads them into the buffer, and
/// reports where it is (checkpoints) and what it could not do. Implemented by [`TailSource`]
/// and [`EventLogSource`]; a new kind of source implements it and gets a `SourceKind`.
pub trait Source: Send {
    /// Its configuration.
    fn config(&self) -> &SourceConfig;

    /// The outputs it feeds (indices into the configuration's outputs).
    fn routes(&self) -> &[usize];

    /// Directories to watch with inotify, and whether recursively.
    fn watch_dirs(&self) -> Vec<(PathBuf, bool)>;

    /// When the next scan for new files is due (`None`: now).
    fn next_scan(&self) -> Option<Instant>;

    /// When a file's wait ends (a rotated file's `rotate_wait`), so the pipeline wakes to read
    /// it.
    fn next_deadline(&self) -> Option<Instant>;

    /// How often to look at files for growth without an event.
    fn poll_interval(&self) -> Duration;

    /// Looks for new files, resuming known ones from `checkpoints`.
    fn scan(&mut self, checkpoints: &Checkpoints, now: Instant);

    /// Whether the last scan opened files without a checkpoint of this source's own, which may
    /// resume from another's ([`Source::adopt`]).
    fn adoptable(&self) -> bool {
        false
    }

    /// After every source scanned: files opened without a checkpoint of this source resume from
    /// another source's checkpoint of the same file that no source holds (`held`), as when a
    /// source was renamed. Checkpoints belong to files, not to the sources' names.
    fn adopt(&mut self, _checkpoints: &Checkpoints, _held: &HashSet<SourceKey>) {}

    /// Reads new data into `store`, up to `budget` bytes; returns the bytes read. `drain`: read to the drain point, unterminated last lines included.
    /// With `targets`, only the followed files at those paths are looked at (the files that
    /// file-system events named), and each one found is counted in `targets.matched`.
    fn read(
        &mut self,
        store: &mut ChunkStore,
        budget: u64,
        drain: bool,
        now: Instant,
        now_ms: i64,
        targets: Option<&Targets>,
    ) -> Result<u64, TailError>;

    /// Every read position it holds (for the first commit of a run, which drops the rest).
    fn checkpoints(&self) -> Vec<SourceCheckpoint>;

    /// The read positions that changed since the last commit, and the files no longer
    /// followed: what a commit records, so its cost follows what changed, not how many files
    /// are followed. Reporting one that did not change is harmless.
    fn checkpoint_changes(&self) -> (Vec<SourceCheckpoint>, Vec<SourceKey>);

    /// After a commit: what was read is now durable.
    fn committed(&mut self);

    /// After a rollback: back to the committed positions, to read that data again.
    fn rewind(&mut self);

    /// Records the drain point: the drain reads up to each file's size now.
    fn mark_drain_point(&mut self);

    /// Bytes before the drain point not read, per file (for the summary and exit code).
    fn unread(&self) -> Vec<(PathBuf, u64)>;

    /// What it was asked to ship but could not, and why (unmatched or unusable paths).
    fn not_shipped(&self, once: bool) -> Vec<tail::NotShipped>;

    /// The files it follows, for the metrics endpoint.
    fn files(&self) -> Vec<crate::metrics::FileMetrics>;

    /// Its counters, for the summary.
    fn stats(&self) -> TailStats;
}

/// The paths file-system events named since the last pass: a pass over them alone costs what
/// changed, where a pass over every followed file costs a `stat` per file.
#[derive(Debug, Default)]
pub struct Targets {
    /// The paths, by [`crate::watch::path_hash`].
    pub path_hashes: HashSet<u64>,
    /// How many of them a source follows (summed over the sources): fewer than the paths
    /// means some event named a file under another spelling, and a full pass is needed.
    pub matched: Cell<usize>,
}

/// The source described by `config`, feeding the outputs `routes`.
pub fn build(config: SourceConfig, routes: Vec<usize>) -> Box<dyn Source> {
    match config.kind {
        SourceKind::Tail => Box::new(TailSource::new(config, routes)),
        SourceKind::SparkEvents => Box::new(EventLogSource::new(config, routes)),
    }
}
