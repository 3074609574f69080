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
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::buffer::{BufferError, ChunkStore, SourceCheckpoint};
use crate::config::{Framing, ReadFrom, SourceConfig};
use crate::fsutil::{FileId, fnv1a};

/// How many leading bytes identify a file's content (against inode reuse and rewrites).
const FINGERPRINT_MAX: u64 = 1024;
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
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Fingerprint {
    len: u32,
    hash: u64,
}

/// One followed file.
#[derive(Debug)]
pub struct TailedFile {
    /// Device and inode.
    pub id: FileId,
    /// Where it was last seen.
    pub path: PathBuf,
    /// Tag of its records.
    pub tag: String,
    file: File,
    /// Bytes before this are in chunks.
    pub pos: u64,
    /// Newlines read from it in this run (for metrics).
    pub lines: u64,
    committed_pos: u64,
    fp: Fingerprint,
    /// Bytes after `pos` already known to hold no newline (saves rescanning a growing long line).
    scan_hint: u64,
    /// When it stopped matching any path (renamed away or deleted).
    gone_since: Option<Instant>,
    /// When it last grew (or was found).
    last_growth: Instant,
    /// Size at the last look.
    last_size: u64,
    /// Size when the drain started: the drain reads up to here (a writer that keeps going does
    /// not keep the drain going), and only bytes before it count as not delivered.
    drain_size: Option<u64>,
}

struct Pattern {
    glob: String,
    /// The literal directory the pattern starts from; tags are paths relative to it.
    base: PathBuf,
    /// Whether any scan found a file for it.
    matched: bool,
    /// A plain path, no glob: what it names was asked for by name.
    literal: bool,
}

/// Whether a path component (or pattern) holds glob syntax.
fn is_glob(s: &str) -> bool {
    s.contains(['*', '?', '['])
}

/// A source of type `tail`.
pub struct TailSource {
    /// Its configuration.
    pub config: SourceConfig,
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

/// The literal leading directories of a glob (`/var/log/*/stdout` → `/var/log`), and whether
/// matches may lie deeper than one level below it.
pub fn glob_base(pattern: &str) -> (PathBuf, bool) {
    let path = Path::new(pattern);
    let mut base = PathBuf::new();
    let comps: Vec<_> = path.components().collect();
    for (i, c) in comps.iter().enumerate() {
        let s = c.as_os_str().to_string_lossy();
        if is_glob(&s) {
            let deep = comps.len() - i > 1 || s.contains("**");
            return (base, deep);
        }
        if i == comps.len() - 1 {
            // A plain path: its directory is the base.
            return (base, false);
        }
        base.push(c.as_os_str());
    }
    (base, false)
}

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
        TailSource {
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
        }
    }

    /// What this source was asked to ship but could not: matches that are not regular files
    /// or cannot be opened, and (with `once`, where nothing can appear later) patterns that
    /// match nothing.
    pub fn not_shipped(&self, once: bool) -> Vec<NotShipped> {
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

    /// Follows only the matches `tagger` gives a tag to, with that tag.
    pub fn with_tagger(mut self, tagger: Tagger) -> TailSource {
        self.tagger = Some(tagger);
        self
    }

    /// Directories to watch for events, and whether recursively.
    pub fn watch_dirs(&self) -> Vec<(PathBuf, bool)> {
        self.config.paths.iter().map(|p| glob_base(p)).collect()
    }

    /// When the next periodic scan for new files is due.
    pub fn next_scan(&self) -> Option<Instant> {
        self.last_scan.map(|t| t + self.config.refresh_interval.get())
    }

    /// When a file that went away will have waited `rotate_wait`.
    pub fn next_rotate_deadline(&self) -> Option<Instant> {
        let wait = self.config.rotate_wait.get();
        self.files
            .iter()
            .filter_map(|f| f.gone_since.map(|g| g.max(f.last_growth) + wait))
            .min()
    }

    /// Looks for files matching the patterns: new ones are opened (resuming from `checkpoints`
    /// when the fingerprint matches), known ones get their current path, missing ones are marked
    /// gone.
    pub fn scan(&mut self, checkpoints: &[SourceCheckpoint], now: Instant) {
        let initial = !self.scanned_once;
        self.scanned_once = true;
        self.last_scan = Some(now);
        let mut seen = Vec::new();
        // Rebuilt at every scan: what is skipped is what is there now.
        let before = std::mem::take(&mut self.skipped);
        for pi in 0..self.patterns.len() {
            let entries = match glob::glob(&self.patterns[pi].glob) {
                Ok(e) => e,
                Err(e) => {
                    tracing::warn!(pattern = %self.patterns[pi].glob, error = %e, "bad glob pattern");
                    continue;
                }
            };
            let literal = self.patterns[pi].literal;
            for path in entries.flatten() {
                let meta = match std::fs::metadata(&path) {
                    Ok(m) => m,
                    Err(e) => {
                        self.skipped.insert(path, format!("cannot use it: {e}"));
                        continue;
                    }
                };
                if self.tagger.as_ref().is_some_and(|t| t(&path).is_none()) {
                    continue;
                }
                if !meta.is_file() {
                    // A directory that a glob happens to match is not what was asked for; one
                    // named on its own is. Anything else (a FIFO, a socket, a device) would
                    // block or never end: named, never read.
                    if !meta.is_dir() || literal {
                        self.skipped
                            .insert(path, format!("not a regular file ({})", file_kind(&meta)));
                    }
                    continue;
                }
                self.patterns[pi].matched = true;
                let id = FileId::of(&meta);
                if seen.contains(&id) {
                    continue;
                }
                seen.push(id);
                if let Some(f) = self.files.iter_mut().find(|f| f.id == id) {
                    if f.path != path {
                        tracing::info!(from = %f.path.display(), to = %path.display(), "file renamed; following it");
                        f.path = path;
                    }
                    f.gone_since = None;
                    continue;
                }
                let base = self.patterns[pi].base.clone();
                match self.open_file(&path, &base, checkpoints, initial, now) {
                    Ok(Some(f)) => {
                        self.skipped.remove(&f.path);
                        seen.push(f.id);
                        tracing::info!(path = %f.path.display(), pos = f.pos, tag = %f.tag, "following file");
                        self.stats.files_found += 1;
                        self.files.push(f);
                    }
                    Ok(None) => {}
                    Err(e) => {
                        if !before.contains_key(&path) {
                            tracing::warn!(path = %path.display(), error = %e, "cannot open file; will retry");
                        }
                        self.skipped.insert(path, format!("cannot open it: {e}"));
                    }
                }
            }
        }
        if initial {
            // Files renamed while logship was not running (rotation with nobody watching): a
            // checkpointed file that no pattern matches any more is looked for beside its old
            // path by identity and content, and its unread tail is read, as runtime rotation
            // does with a file it still holds open.
            for c in checkpoints.iter().filter(|c| c.source == self.config.name) {
                if self.files.iter().any(|f| f.id == c.id) {
                    continue;
                }
                if let Some(f) = moved_file(c, now) {
                    tracing::info!(from = %c.path.display(), to = %f.path.display(), unread = f.last_size - f.pos, "file moved while logship was not running; reading its tail");
                    self.stats.files_found += 1;
                    self.files.push(f);
                }
            }
        }
        for f in &mut self.files {
            if !seen.contains(&f.id) && f.gone_since.is_none() {
                tracing::info!(path = %f.path.display(), "file is gone from its path; reading it to its end");
                f.gone_since = Some(now);
            }
        }
    }

    fn open_file(
        &self,
        path: &Path,
        base: &Path,
        checkpoints: &[SourceCheckpoint],
        initial: bool,
        now: Instant,
    ) -> std::io::Result<Option<TailedFile>> {
        let file = File::open(path)?;
        let meta = file.metadata()?;
        let id = FileId::of(&meta);
        if self.files.iter().any(|f| f.id == id) {
            return Ok(None);
        }
        let size = meta.len();
        let resume = checkpoints.iter().find(|c| c.id == id && c.source == self.config.name).and_then(|c| {
            let same = c.pos <= size
                && (c.fp_len as u64) <= size
                && fingerprint(&file, c.fp_len as u64).ok() == Some(Fingerprint { len: c.fp_len, hash: c.fp });
            if !same {
                tracing::info!(path = %path.display(), "checkpoint does not match the file's content (new file with a reused inode, or rewritten); reading from the start");
            }
            same.then(|| (c.pos, c.tag.clone()))
        });
        let (pos, tag) = match resume {
            Some((pos, tag)) => (pos, tag),
            None => {
                let pos = if initial && self.config.read_from == ReadFrom::End {
                    size
                } else {
                    0
                };
                (pos, self.tag_for(path, base))
            }
        };
        let fp = fingerprint(&file, size.min(FINGERPRINT_MAX))?;
        Ok(Some(TailedFile {
            id,
            path: path.to_path_buf(),
            tag,
            file,
            pos,
            lines: 0,
            committed_pos: pos,
            fp,
            scan_hint: 0,
            gone_since: None,
            last_growth: now,
            last_size: size,
            drain_size: None,
        }))
    }

    fn tag_for(&self, path: &Path, base: &Path) -> String {
        if let Some(t) = &self.config.tag {
            return t.clone();
        }
        if let Some(tag) = self.tagger.as_ref().and_then(|t| t(path)) {
            return tag;
        }
        let rel = path.strip_prefix(base).unwrap_or(path);
        let s = rel.to_string_lossy().trim_start_matches('/').to_string();
        if s.is_empty() { self.config.name.clone() } else { s }
    }

    /// What the metrics endpoint shows per file.
    pub fn file_metrics(&self) -> Vec<crate::metrics::FileMetrics> {
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

    /// The followed files with their tags, and whether each has been read to its current end
    /// and that end is a line end (so every chunk made from it holds whole lines).
    pub fn read_to_line_end(&self) -> Vec<(&Path, &str, bool)> {
        self.files
            .iter()
            .map(|f| {
                let size = f.file.metadata().map(|m| m.len()).unwrap_or(u64::MAX);
                let done = f.pos == size && crate::fsutil::ends_with_newline(&f.file, size);
                (f.path.as_path(), f.tag.as_str(), done)
            })
            .collect()
    }

    /// Checkpoints of the files being followed (their current, uncommitted positions).
    pub fn checkpoints(&self) -> impl Iterator<Item = SourceCheckpoint> + '_ {
        self.files.iter().map(|f| SourceCheckpoint {
            id: f.id,
            fp_len: f.fp.len,
            fp: f.fp.hash,
            pos: f.pos,
            path: f.path.clone(),
            tag: f.tag.clone(),
            source: self.config.name.clone(),
        })
    }

    /// After a successful commit: the current positions are the committed ones.
    pub fn committed(&mut self) {
        for f in &mut self.files {
            f.committed_pos = f.pos;
        }
    }

    /// After a rollback: go back to the committed positions.
    pub fn rewind(&mut self) {
        for f in &mut self.files {
            f.pos = f.committed_pos;
            f.scan_hint = 0;
        }
    }

    /// Records the drain point: every file's current size.
    pub fn mark_drain_point(&mut self) {
        for f in &mut self.files {
            let size = f.file.metadata().map(|m| m.len()).unwrap_or(f.last_size);
            f.drain_size = Some(size);
        }
    }

    /// Bytes written before the drain point but not read into chunks, per file (for the exit
    /// summary).
    pub fn unread(&self) -> Vec<(PathBuf, u64)> {
        self.files
            .iter()
            .filter_map(|f| {
                let size = f.file.metadata().map(|m| m.len()).unwrap_or(f.last_size);
                let size = f.drain_size.map_or(size, |d| d.min(size));
                (size > f.pos).then(|| (f.path.clone(), size - f.pos))
            })
            .collect()
    }

    /// Reads new data of every file into `store`, at most about `budget` bytes in all.
    /// With `drain`, unterminated last lines are delivered as they are. Returns bytes read.
    pub fn read(
        &mut self,
        store: &mut ChunkStore,
        budget: u64,
        drain: bool,
        now: Instant,
        now_ms: i64,
    ) -> Result<u64, TailError> {
        let mut total = 0;
        for i in 0..self.files.len() {
            if total >= budget {
                break;
            }
            let flush_partial = drain
                || self.files[i]
                    .gone_since
                    .is_some_and(|g| now >= g.max(self.files[i].last_growth) + self.config.rotate_wait.get());
            total += self.read_file(i, store, budget - total, flush_partial, now, now_ms)?;
        }
        // Close files that are gone, quiet for rotate_wait, and read to their end.
        let wait = self.config.rotate_wait.get();
        self.files.retain(|f| {
            let done = f.gone_since.is_some_and(|g| now >= g.max(f.last_growth) + wait) && f.pos >= f.last_size;
            if done {
                tracing::info!(path = %f.path.display(), "closed file that was renamed away or deleted");
            }
            !done
        });
        Ok(total)
    }

    fn read_file(
        &mut self,
        i: usize,
        store: &mut ChunkStore,
        budget: u64,
        flush_partial: bool,
        now: Instant,
        now_ms: i64,
    ) -> Result<u64, TailError> {
        let framing = self.config.format;
        let max_line = self.config.max_line();
        let block = self.buf.len();
        let f = &mut self.files[i];
        let read_err = |path: &Path, source| TailError::Read {
            path: path.to_path_buf(),
            source,
        };
        let mut size = f.file.metadata().map_err(|e| read_err(&f.path, e))?.len();
        if let Some(d) = f.drain_size {
            size = size.min(d);
        }
        let changed = size != f.last_size;
        if changed {
            f.last_growth = now;
        } else if size == f.pos {
            return Ok(0);
        }
        f.last_size = size;
        // Shrunk, or first bytes rewritten (copytruncate then new writes): start again.
        let rewritten = size < f.pos
            || (changed
                && f.fp.len > 0
                && (size < f.fp.len as u64
                    || fingerprint(&f.file, f.fp.len as u64).map_err(|e| read_err(&f.path, e))? != f.fp));
        if rewritten {
            tracing::warn!(path = %f.path.display(), old_pos = f.pos, size, "file was truncated or rewritten; reading it from the start");
            self.stats.truncations += 1;
            f.pos = 0;
            f.scan_hint = 0;
            f.fp = Fingerprint {
                len: 0,
                hash: fnv1a(b""),
            };
        }
        if (f.fp.len as u64) < FINGERPRINT_MAX && size > f.fp.len as u64 {
            f.fp = fingerprint(&f.file, size.min(FINGERPRINT_MAX)).map_err(|e| read_err(&f.path, e))?;
        }
        let start = f.pos;
        while f.pos < size && f.pos - start < budget {
            let want = (size - f.pos).min(block as u64) as usize;
            let n = f
                .file
                .read_at(&mut self.buf[..want], f.pos)
                .map_err(|e| read_err(&f.path, e))?;
            if n == 0 {
                break;
            }
            let data = &self.buf[..n];
            if framing == Framing::Raw {
                for &o in &self.routes {
                    store.append(o, &f.tag, framing, data, now_ms)?;
                }
                f.pos += n as u64;
                continue;
            }
            if let Some(last_nl) = memchr::memrchr(b'\n', data) {
                let lines = &data[..=last_nl];
                for &o in &self.routes {
                    store.append(o, &f.tag, framing, lines, now_ms)?;
                }
                f.pos += lines.len() as u64;
                f.lines += memchr::memchr_iter(b'\n', lines).count() as u64;
                f.scan_hint = 0;
                continue;
            }
            // No newline in this block.
            if n as u64 >= max_line {
                // The block is exactly max_line_size long: split here.
                for &o in &self.routes {
                    store.append(o, &f.tag, Framing::Raw, data, now_ms)?;
                }
                f.pos += n as u64;
                self.stats.lines_split += 1;
                continue;
            }
            if n < block {
                // Reached the end inside a line: wait for its newline (or flush at drain).
                if flush_partial {
                    let len = size - f.pos;
                    Self::copy_ahead(&self.routes, &mut self.buf, store, f, len, now_ms)?;
                    self.stats.partial_lines_flushed += 1;
                }
                break;
            }
            // A line longer than the block: find its end with a forward scan.
            let mut scanned = f.scan_hint.max(n as u64);
            let line_len = loop {
                if scanned >= max_line {
                    self.stats.lines_split += 1;
                    break Some(max_line);
                }
                let off = f.pos + scanned;
                if off >= size {
                    break None;
                }
                let want = (block as u64).min(max_line - scanned).min(size - off) as usize;
                let m = f
                    .file
                    .read_at(&mut self.buf[..want], off)
                    .map_err(|e| read_err(&f.path, e))?;
                if m == 0 {
                    break None;
                }
                if let Some(j) = memchr::memchr(b'\n', &self.buf[..m]) {
                    break Some(scanned + j as u64 + 1);
                }
                scanned += m as u64;
            };
            match line_len {
                Some(len) => {
                    Self::copy_ahead(&self.routes, &mut self.buf, store, f, len, now_ms)?;
                }
                None => {
                    f.scan_hint = scanned;
                    if flush_partial {
                        let len = size - f.pos;
                        Self::copy_ahead(&self.routes, &mut self.buf, store, f, len, now_ms)?;
                        self.stats.partial_lines_flushed += 1;
                    }
                    break;
                }
            }
        }
        let read = f.pos.saturating_sub(start);
        self.stats.bytes_read += read;
        Ok(read)
    }

    /// Streams the next `len` bytes of `f` into one chunk per route (so a long line stays whole),
    /// in pieces of at most the read block, and moves `f` past them.
    fn copy_ahead(
        routes: &[usize],
        buf: &mut [u8],
        store: &mut ChunkStore,
        f: &mut TailedFile,
        len: u64,
        now_ms: i64,
    ) -> Result<(), TailError> {
        let mut seqs = Vec::with_capacity(routes.len());
        for &o in routes {
            seqs.push(store.reserve(o, &f.tag, len, now_ms)?);
        }
        let mut done = 0;
        while done < len {
            let want = (len - done).min(buf.len() as u64) as usize;
            let m = f
                .file
                .read_at(&mut buf[..want], f.pos + done)
                .map_err(|source| TailError::Read {
                    path: f.path.clone(),
                    source,
                })?;
            if m == 0 {
                break;
            }
            for &seq in &seqs {
                store.append_reserved(seq, &buf[..m], now_ms)?;
            }
            done += m as u64;
        }
        f.pos += done;
        f.scan_hint = 0;
        Ok(())
    }

    /// How often followed files are looked at for growth: `poll_interval` with `watch = "poll"`,
    /// else a 5 s safety poll behind inotify (files may grow without an event, e.g. over NFS).
    pub fn poll_interval(&self) -> Duration {
        match self.config.watch {
            crate::config::WatchMode::Poll => self.config.poll_interval.get(),
            crate::config::WatchMode::Notify => Duration::from_secs(5),
        }
    }
}

/// The file of checkpoint `c` if it is still in the directory of its last path under another
/// name (same device, inode and leading bytes) with bytes after the checkpoint: opened at the
/// checkpoint, already "gone" from its path, so it is read to its end and then let go.
fn moved_file(c: &SourceCheckpoint, now: Instant) -> Option<TailedFile> {
    use std::os::unix::fs::DirEntryExt;
    let dir = c.path.parent()?;
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        // The inode from the directory entry: no stat for the other names.
        if entry.ino() != c.id.ino {
            continue;
        }
        let path = entry.path();
        let Ok(file) = File::open(&path) else { continue };
        let Ok(meta) = file.metadata() else { continue };
        let size = meta.len();
        let same = FileId::of(&meta) == c.id
            && meta.is_file()
            && c.pos < size
            && (c.fp_len as u64) <= size
            && fingerprint(&file, c.fp_len as u64).ok()
                == Some(Fingerprint {
                    len: c.fp_len,
                    hash: c.fp,
                });
        if !same {
            continue;
        }
        let fp = fingerprint(&file, size.min(FINGERPRINT_MAX)).ok()?;
        return Some(TailedFile {
            id: c.id,
            path,
            tag: c.tag.clone(),
            file,
            pos: c.pos,
            lines: 0,
            committed_pos: c.pos,
            fp,
            scan_hint: 0,
            gone_since: Some(now),
            last_growth: now,
            last_size: size,
            drain_size: None,
        });
    }
    None
}

/// What kind of file `meta` describes, for messages.
fn file_kind(meta: &std::fs::Metadata) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    let t = meta.file_type();
    if t.is_dir() {
        "a directory"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_block_device() || t.is_char_device() {
        "a device"
    } else {
        "not a file"
    }
}

fn fingerprint(file: &File, len: u64) -> std::io::Result<Fingerprint> {
    let mut buf = [0u8; FINGERPRINT_MAX as usize];
    let len = len.min(FINGERPRINT_MAX) as usize;
    let mut got = 0;
    while got < len {
        let n = file.read_at(&mut buf[got..len], got as u64)?;
        if n == 0 {
            break;
        }
        got += n;
    }
    Ok(Fingerprint {
        len: got as u32,
        hash: fnv1a(&buf[..got]),
    })
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
}
