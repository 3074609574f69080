//! Following files by path and identity.
//!
//! A [`TailSource`] finds files matching its globs and follows each one by device and inode, so
//! a rename (rotation, Spark's `.inprogress` → final name) keeps its position, and a new file at
//! an old path is a new file. A followed file that disappears from its paths (renamed away,
//! deleted) keeps being read through its open descriptor until it has been quiet for
//! `rotate_wait`, then it is closed. A file that shrinks, or whose first bytes change (copytruncate
//! followed by new writes), is read again from the start.
//!
//! Reading copies large blocks into the buffer and cuts at the last newline found with one
//! backward search (`memrchr`); the bytes after it (a partial line) are read again next time, so a
//! chunk never ends inside a line. Lines longer than the block are found with a forward scan and
//! streamed into one chunk; lines longer than `max_line_size` are split (and counted). At drain,
//! an unterminated last line is delivered as it is.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::buffer::{BufferError, Checkpoints, ChunkStore, SourceCheckpoint, SourceKey};
use crate::config::SourceConfig;
use crate::fsutil::FileId;
use crate::record::RecordRule;
use crate::source::Source;

mod discovery;
mod identity;
mod reading;

pub use discovery::{glob_base, gone_checkpoints};

use discovery::is_glob;
use identity::Fingerprint;

/// Largest block read at once. Bounds the memory a source uses.
pub const READ_BLOCK: usize = 256 * 1024;

/// What went wrong reading a file; the pipeline logs it and carries on.
#[derive(Debug, thiserror::Error)]
pub enum TailError {
    /// Appending to the buffer failed (the pipeline rolls back and retries later).
    #[error(transparent)]
    Buffer(#[from] BufferError),
    /// Reading the file failed.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

/// Counters of one source, for the summary and metrics.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct TailStats {
    /// Bytes copied into chunks.
    pub bytes_read: u64,
    /// Files that shrank or were rewritten and were read again from the start.
    pub truncations: u64,
    /// Lines longer than `max_line_size` that were split.
    pub lines_split: u64,
    /// Unterminated last lines delivered as they were (at drain or after rotation).
    pub partial_lines_flushed: u64,
    /// Files discovered.
    pub files_found: u64,
    /// Records that an output keeping records whole could not keep in one chunk (a record
    /// larger than a chunk).
    pub records_split: u64,
}

impl TailStats {
    /// Adds another run's counters.
    pub fn add(&mut self, o: &TailStats) {
        // Every field, by name: a new counter does not compile until it is added here too.
        let TailStats {
            bytes_read,
            truncations,
            lines_split,
            partial_lines_flushed,
            files_found,
            records_split,
        } = o;
        self.bytes_read += bytes_read;
        self.truncations += truncations;
        self.lines_split += lines_split;
        self.partial_lines_flushed += partial_lines_flushed;
        self.files_found += files_found;
        self.records_split += records_split;
    }
}

/// One followed file.
#[derive(Debug)]
pub struct TailedFile {
    /// Its place among the followed files that hold a descriptor (see [`followed_budget`]).
    _slot: DescriptorSlot,
    /// Device and inode.
    pub id: FileId,
    /// Where it was last seen. (Shared with its checkpoints: see [`SourceKey`].)
    pub path: Arc<Path>,
    /// Tag of its records.
    pub tag: Arc<str>,
    file: File,
    /// Bytes before this are in chunks.
    pub pos: u64,
    /// Newlines read from it in this run (for metrics).
    pub lines: u64,
    committed_pos: u64,
    fp: Fingerprint,
    /// The fingerprint as of the last commit (a rollback puts it back with the position: a
    /// truncation seen in the batch that was undone must be seen again).
    committed_fp: Fingerprint,
    /// Bytes after `pos` already known to hold no newline (saves rescanning a growing long line).
    scan_hint: u64,
    /// When it stopped matching any path (renamed away or deleted).
    gone_since: Option<Instant>,
    /// When it last grew (or was found).
    last_growth: Instant,
    /// Size at the last look.
    last_size: u64,
    /// Modification time at the last `fstat` (a rewrite to the same size changes only it).
    last_mtime: Option<std::time::SystemTime>,
    /// Size when the drain started: the drain reads up to here (a writer that keeps going does
    /// not keep the drain going), and only bytes before it count as not delivered.
    drain_size: Option<u64>,
    /// Its checkpoint may differ from the committed one (read, renamed, new).
    unsaved: bool,
    /// Opened in the last scan without a checkpoint of this source: it may take another
    /// source's checkpoint of the same file ([`Source::adopt`]).
    adoptable: bool,
}

/// How many followed files hold a descriptor, in the whole process.
static OPEN_FOLLOWED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// What the buffer, the outputs and the runtime keep for themselves of the open-file limit:
/// followed files never take the descriptors a chunk file needs (without one, writing chunks
/// fails and reading pauses for good).
const DESCRIPTOR_RESERVE: u64 = 128;

/// How many followed files may be open at once: the open-file limit (`ulimit -n`, raised to
/// its hard limit at start) less [`DESCRIPTOR_RESERVE`]. Files found beyond it are not opened
/// yet: named as waiting, tried again at the next scan (a `--once` run lists them as not
/// shipped and does not exit 0).
pub fn followed_budget() -> usize {
    static BUDGET: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *BUDGET.get_or_init(|| match crate::fsutil::open_file_limit() {
        0 => usize::MAX,
        limit => limit.saturating_sub(DESCRIPTOR_RESERVE).max(16) as usize,
    })
}

/// One followed file's descriptor, counted while it is held.
#[derive(Debug)]
struct DescriptorSlot;

impl DescriptorSlot {
    fn take() -> DescriptorSlot {
        OPEN_FOLLOWED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        DescriptorSlot
    }

    /// Whether another followed file may be opened.
    fn available() -> bool {
        OPEN_FOLLOWED.load(std::sync::atomic::Ordering::Relaxed) < followed_budget()
    }
}

impl Drop for DescriptorSlot {
    fn drop(&mut self) {
        OPEN_FOLLOWED.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

impl TailedFile {
    fn checkpoint(&self, source: &Arc<str>) -> SourceCheckpoint {
        SourceCheckpoint {
            id: self.id,
            fp_len: self.fp.len,
            fp: self.fp.hash,
            pos: self.pos,
            path: self.path.clone(),
            tag: self.tag.clone(),
            source: source.clone(),
        }
    }
}

pub(crate) struct Pattern {
    glob: String,
    /// The literal directory the pattern starts from; tags are paths relative to it.
    base: PathBuf,
    /// Whether any scan found a file for it.
    matched: bool,
    /// A plain path, no glob: what it names was asked for by name.
    literal: bool,
}

/// A source of type `tail`.
pub struct TailSource {
    /// Its configuration.
    pub config: SourceConfig,
    /// `config.name`, shared with its checkpoints (see [`SourceKey`]).
    name: Arc<str>,
    /// Indices of the outputs it feeds.
    pub routes: Vec<usize>,
    patterns: Vec<Pattern>,
    /// The files being followed, in discovery order.
    pub files: Vec<TailedFile>,
    scanned_once: bool,
    last_scan: Option<Instant>,
    /// Counters.
    pub stats: TailStats,
    buf: Vec<u8>,
    /// Which matching files to follow and their tags (event logs: the application id);
    /// `None` from it skips the file. Without it every match is followed, tagged by its path.
    tagger: Option<Tagger>,
    /// Matches that cannot be shipped, and why (not a regular file, cannot be opened), as of
    /// the last scan: reported at exit, so a run that skipped one never looks complete.
    skipped: std::collections::BTreeMap<PathBuf, String>,
    /// Which lines form one record (chunks end only between records).
    rule: RecordRule,
    /// Checkpoints of files let go since the last commit (to drop from the state).
    forgotten: Vec<SourceKey>,
    /// `files` by a hash of their path, for a pass over the files events named; rebuilt when
    /// stale. A hash ([`crate::watch::path_hash`], what events name files by), not a copy of
    /// each path: 10,000 paths are most of a megabyte. Two followed paths with one hash (about
    /// one chance in 10^11 among 10,000) only mean that one of them is read at the next poll.
    by_path: std::collections::HashMap<u64, usize>,
    by_path_stale: bool,
    /// Indices of the files whose `unsaved` is set, so that a commit costs the files that
    /// changed, not a walk over all of them (10,000 files are 2 MB of state: each walk missed
    /// the cache, and a busy node forwarder commits tens of times a second). Rebuilt from the
    /// flags whenever `files` is reordered (a scan, files let go).
    unsaved: Vec<usize>,
    /// Whether any file is gone from its path (so the pass looks for files to let go, and for
    /// their `rotate_wait` deadlines); set from the flags with `unsaved`.
    any_gone: bool,
}

/// A path a run was asked to ship but did not, and why (for the exit summary).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct NotShipped {
    /// The path or pattern.
    pub path: String,
    /// Why it was not shipped.
    pub reason: String,
}

/// Chooses the files a source follows and tags them (see [`TailSource::with_tagger`]).
pub type Tagger = Box<dyn Fn(&Path) -> Option<String> + Send>;

impl TailSource {
    /// A source from its config; `routes` are the outputs it feeds.
    pub fn new(config: SourceConfig, routes: Vec<usize>) -> TailSource {
        let patterns = config
            .paths
            .iter()
            .map(|p| Pattern {
                glob: p.clone(),
                base: glob_base(p).0,
                matched: false,
                literal: !is_glob(p),
            })
            .collect();
        let block = READ_BLOCK.min(config.max_line() as usize).max(1);
        let config_records = config.records();
        TailSource {
            name: config.name.as_str().into(),
            config,
            routes,
            patterns,
            files: Vec::new(),
            scanned_once: false,
            last_scan: None,
            stats: TailStats::default(),
            buf: vec![0; block],
            tagger: None,
            skipped: Default::default(),
            rule: RecordRule::new(&config_records),
            forgotten: Vec::new(),
            by_path: Default::default(),
            by_path_stale: true,
            unsaved: Vec::new(),
            any_gone: false,
        }
    }

    /// Rebuilds `unsaved` and `any_gone` from the files' flags (after `files` changed order).
    fn index_flags(&mut self) {
        self.unsaved = (0..self.files.len()).filter(|&i| self.files[i].unsaved).collect();
        self.any_gone = self.files.iter().any(|f| f.gone_since.is_some());
    }

    /// Follows only the matches `tagger` gives a tag to, with that tag.
    pub fn with_tagger(mut self, tagger: Tagger) -> TailSource {
        self.tagger = Some(tagger);
        self
    }
}

impl Source for TailSource {
    fn config(&self) -> &SourceConfig {
        &self.config
    }

    fn routes(&self) -> &[usize] {
        &self.routes
    }

    /// How often followed files are looked at for growth: `poll_interval` with `watch = "poll"`,
    /// else a 5 s safety poll behind inotify (files may grow without an event, e.g. over NFS).
    fn poll_interval(&self) -> Duration {
        match self.config.watch {
            crate::config::WatchMode::Poll => self.config.poll_interval.get(),
            crate::config::WatchMode::Notify => Duration::from_secs(5),
        }
    }

    fn scan(&mut self, checkpoints: &Checkpoints, now: Instant) {
        self.discover(checkpoints, now);
        self.by_path_stale = true;
    }

    fn adoptable(&self) -> bool {
        self.files.iter().any(|f| f.adoptable)
    }

    /// A file this source found without a checkpoint of its own resumes from another source's
    /// checkpoint of the same file (same identity and leading bytes) that no source holds now:
    /// the source was renamed, or another one followed the file before a reload. Of several,
    /// the furthest. That checkpoint is removed at the next commit, which records this one.
    fn adopt(&mut self, checkpoints: &Checkpoints, held: &std::collections::HashSet<SourceKey>) {
        let mut by_id: std::collections::HashMap<FileId, Vec<(&SourceKey, &SourceCheckpoint)>> = Default::default();
        if self.files.iter().any(|f| f.adoptable) {
            for (k, c) in checkpoints {
                if *k.0 != *self.name && !held.contains(k) {
                    by_id.entry(c.id).or_default().push((k, c));
                }
            }
        }
        for i in 0..self.files.len() {
            let f = &mut self.files[i];
            if !std::mem::take(&mut f.adoptable) {
                continue;
            }
            let Some(candidates) = by_id.get(&f.id) else { continue };
            let size = f.file.metadata().map_or(0, |m| m.len());
            let best = candidates
                .iter()
                .filter(|(_, c)| identity::holds_checkpoint(&f.file, size, c))
                .max_by_key(|(_, c)| c.pos);
            if let Some((k, c)) = best {
                tracing::info!(path = %f.path.display(), from = %k.0, pos = c.pos, "resuming where another source's checkpoint of this file left it");
                f.pos = c.pos;
                f.committed_pos = c.pos;
                f.scan_hint = 0;
                if !f.unsaved {
                    f.unsaved = true;
                    self.unsaved.push(i);
                }
                self.forgotten.push((*k).clone());
                // Taken: no other file or source takes it too.
                let taken = (*k).clone();
                for v in by_id.values_mut() {
                    v.retain(|(k, _)| **k != taken);
                }
            }
        }
    }

    fn read(
        &mut self,
        store: &mut ChunkStore,
        budget: u64,
        drain: bool,
        now: Instant,
        now_ms: i64,
        targets: Option<&crate::source::Targets>,
    ) -> Result<u64, TailError> {
        self.read_files(store, budget, drain, now, now_ms, targets)
    }

    fn stats(&self) -> TailStats {
        self.stats.clone()
    }

    /// What this source was asked to ship but could not: matches that are not regular files
    /// or cannot be opened, and (with `once`, where nothing can appear later) patterns that
    /// match nothing.
    fn not_shipped(&self, once: bool) -> Vec<NotShipped> {
        let mut v: Vec<NotShipped> = self
            .skipped
            .iter()
            .map(|(p, r)| NotShipped {
                path: p.display().to_string(),
                reason: r.clone(),
            })
            .collect();
        if once {
            for p in self.patterns.iter().filter(|p| !p.matched) {
                let reason = if !p.literal {
                    "no file matches this pattern".to_string()
                } else {
                    match std::fs::metadata(&p.glob) {
                        Err(e) => format!("cannot use it: {e}"),
                        Ok(_) => "nothing was read from it".to_string(),
                    }
                };
                if !self.skipped.contains_key(Path::new(&p.glob)) {
                    v.push(NotShipped {
                        path: p.glob.clone(),
                        reason,
                    });
                }
            }
        }
        v
    }

    /// Directories to watch for events, and whether recursively.
    fn watch_dirs(&self) -> Vec<(PathBuf, bool)> {
        self.config.paths.iter().map(|p| glob_base(p)).collect()
    }

    /// When the next periodic scan for new files is due.
    fn next_scan(&self) -> Option<Instant> {
        self.last_scan.map(|t| t + self.config.refresh_interval.get())
    }

    /// When a file that went away will have waited `rotate_wait`.
    fn next_deadline(&self) -> Option<Instant> {
        if !self.any_gone {
            return None;
        }
        let wait = self.config.rotate_wait.get();
        self.files
            .iter()
            .filter_map(|f| f.gone_since.map(|g| g.max(f.last_growth) + wait))
            .min()
    }

    /// What the metrics endpoint shows per file.
    fn files(&self) -> Vec<crate::metrics::FileMetrics> {
        self.files
            .iter()
            .map(|f| crate::metrics::FileMetrics {
                source: self.config.name.clone(),
                path: f.path.display().to_string(),
                bytes_read: f.pos,
                lines_read: f.lines,
                size: f.last_size,
            })
            .collect()
    }

    /// Checkpoints of the files being followed (their current, uncommitted positions).
    fn checkpoints(&self) -> Vec<SourceCheckpoint> {
        self.files.iter().map(|f| f.checkpoint(&self.name)).collect()
    }

    /// Checkpoints of files read, renamed or found since the last commit, and of files let go.
    fn checkpoint_changes(&self) -> (Vec<SourceCheckpoint>, Vec<SourceKey>) {
        let set = self
            .unsaved
            .iter()
            .map(|&i| self.files[i].checkpoint(&self.name))
            .collect();
        (set, self.forgotten.clone())
    }

    /// After a successful commit: the current positions are the committed ones.
    fn committed(&mut self) {
        // Only a file marked unsaved has moved since the last commit (every read marks it).
        for i in std::mem::take(&mut self.unsaved) {
            let f = &mut self.files[i];
            f.committed_pos = f.pos;
            f.committed_fp = f.fp;
            f.unsaved = false;
        }
        self.forgotten.clear();
    }

    /// After a rollback: go back to the committed positions.
    fn rewind(&mut self) {
        for f in &mut self.files {
            f.pos = f.committed_pos;
            f.fp = f.committed_fp;
            f.scan_hint = 0;
            // Looked at afresh: what the undone batch saw (a truncation, a rewrite) is seen again.
            f.last_mtime = None;
        }
    }

    /// Records the drain point: every file's current size.
    fn mark_drain_point(&mut self) {
        for f in &mut self.files {
            let size = f.file.metadata().map(|m| m.len()).unwrap_or(f.last_size);
            f.drain_size = Some(size);
        }
    }

    /// Bytes written before the drain point but not read into chunks, per file (for the exit
    /// summary).
    fn unread(&self) -> Vec<(PathBuf, u64)> {
        self.files
            .iter()
            .filter_map(|f| {
                let size = f.file.metadata().map(|m| m.len()).unwrap_or(f.last_size);
                let size = f.drain_size.map_or(size, |d| d.min(size));
                (size > f.pos).then(|| (f.path.to_path_buf(), size - f.pos))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_base_finds_the_literal_directory() {
        assert_eq!(
            glob_base("/var/log/spark/user/*/stdout"),
            (PathBuf::from("/var/log/spark/user"), true)
        );
        assert_eq!(glob_base("/var/log/app.log"), (PathBuf::from("/var/log"), false));
        assert_eq!(glob_base("/var/log/*.log"), (PathBuf::from("/var/log"), false));
        assert_eq!(glob_base("/var/log/**/x"), (PathBuf::from("/var/log"), true));
        assert_eq!(glob_base("rel.log"), (PathBuf::from(""), false));
    }

    /// What a source put in the store's chunks, in order.
    fn stored(store: &mut ChunkStore) -> Vec<u8> {
        store.commit(crate::buffer::CheckpointChanges::none(), 1_000).unwrap();
        let mut seqs: Vec<u64> = store.chunks().map(|c| c.seq).collect();
        seqs.sort();
        seqs.iter()
            .flat_map(|&s| std::fs::read(store.chunk_path(s)).unwrap())
            .collect()
    }

    fn lines(word: &str, n: usize) -> Vec<u8> {
        (0..n).flat_map(|i| format!("{word} {i:05}\n").into_bytes()).collect()
    }

    /// A pass over the files events named reads a grown file's new bytes before it knows the
    /// file's size (saving an `fstat`): growth, a truncation below the position, and a
    /// copytruncate that regrew past the position between two looks all read as they do
    /// with the size asked first.
    #[test]
    fn a_named_file_is_read_from_where_it_grew_and_truncations_are_still_caught() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("app.log");
        let mut store = crate::buffer::test_store(&d.path().join("buffer"), 64 << 20);
        let mut config = SourceConfig::new("s", crate::config::SourceKind::Tail, vec![p.display().to_string()]);
        config.multiline = crate::config::Multiline::Off;
        let mut src = TailSource::new(config, vec![0]);
        let mut want = lines("first", 300);
        std::fs::write(&p, &want).unwrap();
        let now = Instant::now();
        src.scan(&Default::default(), now);
        assert_eq!(
            src.read(&mut store, u64::MAX, false, now, 1_000, None).unwrap(),
            want.len() as u64
        );
        let named = crate::source::Targets {
            path_hashes: [crate::watch::path_hash(p.as_os_str())].into(),
            matched: Default::default(),
        };
        let read_named = |src: &mut TailSource, store: &mut ChunkStore| {
            src.read(store, u64::MAX, false, now, 1_000, Some(&named)).unwrap()
        };
        let append = |b: &[u8]| {
            use std::io::Write;
            std::fs::OpenOptions::new()
                .append(true)
                .open(&p)
                .unwrap()
                .write_all(b)
                .unwrap();
        };
        // Grown.
        let more = lines("grown", 10);
        append(&more);
        assert_eq!(read_named(&mut src, &mut store), more.len() as u64);
        want.extend_from_slice(&more);
        // Nothing new: nothing read.
        assert_eq!(read_named(&mut src, &mut store), 0);
        // Truncated and rewritten with more than before, between two looks.
        let bigger = lines("bigger", 500);
        std::fs::write(&p, &bigger).unwrap();
        assert_eq!(read_named(&mut src, &mut store), bigger.len() as u64);
        want.extend_from_slice(&bigger);
        assert_eq!(src.stats.truncations, 1);
        // Truncated to less than the position.
        let small = lines("small", 3);
        std::fs::write(&p, &small).unwrap();
        assert_eq!(read_named(&mut src, &mut store), small.len() as u64);
        want.extend_from_slice(&small);
        assert_eq!(src.stats.truncations, 2);
        // A half line waits for its end.
        append(b"half");
        assert_eq!(read_named(&mut src, &mut store), 0);
        append(b" done\n");
        assert_eq!(read_named(&mut src, &mut store), 10);
        want.extend_from_slice(b"half done\n");
        assert_eq!(named.matched.get(), 6);
        assert_eq!(stored(&mut store), want);
    }
}
