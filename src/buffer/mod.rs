//! Chunks by time key, in files, committed atomically with the read positions that filled them.
//!
//! The [`ChunkStore`] is owned by the pipeline thread. Reading appends bytes to open chunks;
//! [`ChunkStore::commit`] makes them durable (fsync of the chunk files, then an atomic rewrite of
//! `state.json` that records chunk lengths *and* the tail checkpoints) and returns the chunks
//! sealed since the last commit, which may then be delivered. Anything that fails between two
//! commits is undone with [`ChunkStore::rollback`]: chunk files are cut back to their committed
//! length and the reader goes back to its committed positions, so a failed write (full disk)
//! neither loses nor repeats data.
//!
//! On open, chunk files are cut to the length the state records (bytes written after the last
//! commit are re-read from the source), files the state does not know are removed, and every
//! recovered chunk is sealed and delivered again under its recorded key.

pub mod siblings;
pub mod state;

use std::collections::{HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use crate::config::key::{KeyTemplate, KeyValues};
use crate::fsutil::{sync_parent, write_atomic, write_atomic_hooked};
use crate::record::RecordRule;
pub use state::{ChunkMeta, IndexCounter, KeyAlternatives, MarkerRecord, SourceCheckpoint, StateFile};

/// Why the buffer could not do what was asked; every variant names the path involved.
#[derive(Debug, thiserror::Error)]
pub enum BufferError {
    /// The buffer directory cannot be created or written.
    #[error("buffer directory {path} is not usable: {source}")]
    Dir {
        /// The directory.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// Another process uses this buffer directory.
    #[error("buffer directory {0} is in use by another logship process (lock held on its .lock file)")]
    Locked(PathBuf),
    /// The buffer holds chunks bound for a destination that the output of the same name no
    /// longer delivers to: delivering them to the new one would hand one run's data to another.
    #[error(
        "buffer directory {dir} holds {chunks} undelivered chunk(s) of output {output:?} bound for {recorded}, but that output now delivers to {now}; run once more with the configuration that wrote them to deliver them, or use another buffer directory"
    )]
    OtherDestination {
        /// The buffer directory.
        dir: PathBuf,
        /// The output's name.
        output: String,
        /// Where its chunks were bound when they were written.
        recorded: String,
        /// Where the output delivers now.
        now: String,
        /// How many chunks are waiting.
        chunks: usize,
    },
    /// The state file could not be read.
    #[error(transparent)]
    State(#[from] state::StateError),
    /// Reading a file to snapshot it failed.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// Writing a chunk or the state failed (e.g. the disk is full).
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
}

/// How chunk keys are made for one output.
#[derive(Debug, Clone)]
pub struct OutputKeying {
    /// Output name (as in the state file).
    pub name: String,
    /// The key template.
    pub template: KeyTemplate,
    /// Value of `%{path}`.
    pub path: String,
    /// strftime format of `%{time_slice}`.
    pub time_slice_format: String,
    /// `%{file_extension}` for the output's codec (`txt`, `gz`, `zst`).
    pub file_extension: String,
    /// First `%{index}` of each prefix.
    pub index_start: u64,
    /// Where the output delivers (a directory, bucket, log group; no secrets). Recorded with the
    /// chunks, so a buffer directory reused by another configuration never sends one run's
    /// chunks to another run's destination.
    pub destination: String,
}

/// A chunk that recovery found damaged: its file is gone, or shorter than its committed length
/// (a host crash with `fsync = false`, or someone else's hand). What is left of it is delivered;
/// the rest is reported, and the run does not exit 0.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DamagedChunk {
    /// The chunk file.
    pub path: PathBuf,
    /// The key it is (or was) bound for.
    pub key: String,
    /// Bytes the state recorded.
    pub committed: u64,
    /// Bytes that are missing from the file.
    pub missing: u64,
}

/// Chunk-cutting parameters shared by all outputs.
#[derive(Debug, Clone, Copy)]
pub struct ChunkLimits {
    /// Time-key width in seconds.
    pub timekey_secs: i64,
    /// A chunk is never larger than this.
    pub chunk_limit: u64,
    /// fsync at commit.
    pub fsync: bool,
}

/// A sealed, committed chunk ready for delivery.
#[derive(Debug, Clone)]
pub struct SealedChunk {
    /// Its sequence number.
    pub seq: u64,
    /// Index of the output it is for.
    pub output: usize,
    /// Its tag: the key's `%{tag}`, and the CloudWatch stream's.
    pub tag: String,
    /// Its object key.
    pub key: String,
    /// The chunk file.
    pub path: PathBuf,
    /// Its length.
    pub len: u64,
    /// Start of its time-key window (seconds since the epoch).
    pub timekey: i64,
    /// Keys to delete after it is delivered.
    pub delete_after: Vec<String>,
    /// When it was opened (ms since the epoch): the read time of its lines.
    pub created_ms: i64,
    /// Never replace an object at `key` that this chunk did not write (tailed data).
    pub no_replace: bool,
    /// Where to go when `key` is taken.
    pub alternatives: Option<KeyAlternatives>,
}

/// How many other keys an output tries when a chunk's key is taken by someone else's object.
pub const KEY_ALTERNATIVES_MAX: u64 = 1000;

impl SealedChunk {
    /// The keys this chunk may be delivered to, in order: its own, then (for tailed data with an
    /// index) the same key with the index moved on.
    pub fn candidate_keys(&self) -> impl Iterator<Item = String> + '_ {
        let alts = self
            .alternatives
            .iter()
            .flat_map(|a| (1..=KEY_ALTERNATIVES_MAX).map(move |n| a.nth(n)));
        std::iter::once(self.key.clone()).chain(alts)
    }
}

/// How many counter-less hours an index counter of a timed key survives.
const TIMED_COUNTER_TTL_SECS: i64 = 3600;

/// Where a chunk that fills up may end.
#[derive(Debug, Clone, Copy)]
pub enum Cut<'a> {
    /// At any byte (`format = "raw"`).
    Anywhere,
    /// After a newline.
    LineEnd,
    /// Before a line that starts a record by this rule (else after a newline, when one record
    /// is larger than what is left of the chunk).
    RecordStart(&'a RecordRule),
}

/// The chunks of all outputs, and the state that makes them crash-safe.
pub struct ChunkStore {
    dir: PathBuf,
    chunk_dir: PathBuf,
    state_path: PathBuf,
    limits: ChunkLimits,
    outputs: Vec<OutputKeying>,
    hostname: String,
    /// The live state (includes uncommitted changes).
    state: StateFile,
    /// The state as last committed.
    committed: StateFile,
    /// Open chunk per (output, tag, timekey).
    open: HashMap<(usize, String, i64), u64>,
    /// Write handles of open chunks.
    handles: HashMap<u64, File>,
    /// Chunks written since the last commit (to fsync).
    dirty: HashSet<u64>,
    /// Chunks sealed since the last commit (to dispatch after it).
    newly_sealed: Vec<u64>,
    /// Chunk files to delete after the next commit (delivered or moved to the secondary).
    to_delete: Vec<u64>,
    /// What recovery found damaged (reported at exit).
    damaged: Vec<DamagedChunk>,
    /// Size of the last state written, and of the reserve held for the next one.
    state_len: u64,
    reserve_len: u64,
    _lock: File,
}

impl ChunkStore {
    /// Opens (creating if needed) the buffer at `dir` and recovers what a previous run left.
    pub fn open(dir: &Path, limits: ChunkLimits, outputs: Vec<OutputKeying>) -> Result<ChunkStore, BufferError> {
        let dir_err = |source| BufferError::Dir {
            path: dir.to_path_buf(),
            source,
        };
        let chunk_dir = dir.join("chunks");
        // Private (0700, ours, not writable by others): buffered logs are nobody else's to read,
        // and no one else can plant links in it.
        crate::fsutil::private_dir(dir).map_err(dir_err)?;
        let lock_path = dir.join(".lock");
        let lock = crate::fsutil::private_file()
            .truncate(false)
            .open(&lock_path)
            .map_err(dir_err)?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => return Err(BufferError::Locked(dir.to_path_buf())),
            Err(fs::TryLockError::Error(e)) => return Err(dir_err(e)),
        }
        // Prove the directory is writable now, with a clear error, rather than at the first chunk.
        let probe = dir.join(".write-probe");
        let _ = fs::remove_file(&probe);
        crate::fsutil::private_file()
            .create_new(true)
            .open(&probe)
            .and_then(|mut f| f.write_all(b"ok"))
            .map_err(dir_err)?;
        let _ = fs::remove_file(&probe);
        crate::fsutil::private_dir(&chunk_dir).map_err(|source| BufferError::Dir {
            path: chunk_dir.clone(),
            source,
        })?;

        let state_path = dir.join("state.json");
        let mut state = StateFile::load(&state_path)?;
        // Chunks go only where they were bound: refuse to start rather than deliver them to
        // another destination under the same output name.
        for o in &outputs {
            if let Some(recorded) = state.destinations.get(&o.name)
                && *recorded != o.destination
            {
                let chunks = state.chunks.iter().filter(|c| c.output == o.name).count();
                if chunks > 0 {
                    return Err(BufferError::OtherDestination {
                        dir: dir.to_path_buf(),
                        output: o.name.clone(),
                        recorded: recorded.clone(),
                        now: o.destination.clone(),
                        chunks,
                    });
                }
            }
        }
        // Drop chunks of outputs that no longer exist? No: keep them, they are undelivered data.
        // They are reported at exit and delivered again if the output comes back.
        let known: HashSet<u64> = state.chunks.iter().map(|c| c.seq).collect();
        for entry in fs::read_dir(&chunk_dir).map_err(dir_err)? {
            let entry = entry.map_err(dir_err)?;
            let name = entry.file_name();
            // A chunk file, or the delivered-prefix record of one (CloudWatch).
            let seq = name
                .to_str()
                .map(|n| n.strip_suffix(".progress").unwrap_or(n))
                .and_then(|n| n.strip_suffix(".chunk"))
                .and_then(|n| n.parse().ok());
            if !seq.is_some_and(|s| known.contains(&s)) {
                // Written after the last commit: its bytes will be read again from the source.
                let _ = fs::remove_file(entry.path());
            }
        }
        let loaded = state.clone();
        let mut damaged = Vec::new();
        state.chunks.retain_mut(|c| {
            let path = chunk_dir.join(format!("{}.chunk", c.seq));
            let on_disk = fs::symlink_metadata(&path)
                .ok()
                .filter(|m| m.is_file())
                .map(|m| m.len());
            let missing = c.len - on_disk.unwrap_or(0).min(c.len);
            if missing > 0 {
                tracing::error!(
                    path = %path.display(), key = %c.key, committed = c.len, missing,
                    "chunk file is {}; delivering what is left of it",
                    if on_disk.is_some() { "shorter than its committed length" } else { "missing" }
                );
                damaged.push(DamagedChunk {
                    path: path.clone(),
                    key: c.key.clone(),
                    committed: c.len,
                    missing,
                });
                c.len -= missing;
            }
            c.sealed = true;
            // Nothing left of it: nothing to deliver. (An empty chunk, a marker, stays.)
            c.len > 0 || missing == 0
        });
        for c in &state.chunks {
            // Bytes written after the last commit are cut off; they are read again from the source.
            let path = chunk_dir.join(format!("{}.chunk", c.seq));
            let f = crate::fsutil::private_file()
                .truncate(false)
                .open(&path)
                .map_err(|source| BufferError::Write {
                    path: path.clone(),
                    source,
                })?;
            f.set_len(c.len).map_err(|source| BufferError::Write { path, source })?;
            crate::crashpoint::hit("recovery-chunk-cut");
        }
        for o in &outputs {
            state.destinations.insert(o.name.clone(), o.destination.clone());
        }
        if !damaged.is_empty() {
            // Record the repair now: a later rollback must never grow a file back with zeros.
            write_atomic(&state_path, &state.to_bytes(), limits.fsync).map_err(|source| BufferError::Write {
                path: state_path.clone(),
                source,
            })?;
        }
        let committed = if damaged.is_empty() { loaded } else { state.clone() };
        let state_len = fs::metadata(&state_path).map_or(0, |m| m.len());
        let recovered = state.chunks.iter().map(|c| c.seq).collect();
        Ok(ChunkStore {
            dir: dir.to_path_buf(),
            chunk_dir,
            state_path,
            limits,
            outputs,
            hostname: crate::config::key::hostname(),
            committed,
            state,
            open: HashMap::new(),
            handles: HashMap::new(),
            dirty: HashSet::new(),
            newly_sealed: recovered,
            to_delete: Vec::new(),
            damaged,
            state_len,
            reserve_len: 0,
            _lock: lock,
        })
    }

    /// The file that holds back room for the state file on a full disk.
    fn reserve_path(&self) -> PathBuf {
        self.dir.join(".reserve")
    }

    /// Makes sure the reserve exists and is large enough for twice the state file (a new state
    /// is written beside the old one before the rename). Best effort: on a full disk it is
    /// simply not there until deliveries free space.
    fn ensure_reserve(&mut self) {
        let want = (2 * self.state_len + (64 << 10)).next_multiple_of(64 << 10);
        if self.reserve_len >= want && self.reserve_path().exists() {
            return;
        }
        let path = self.reserve_path();
        let ok = crate::fsutil::private_file()
            .truncate(false)
            .open(&path)
            .is_ok_and(|f| {
                use std::os::fd::AsRawFd;
                // SAFETY: fallocate on a file descriptor we own; real blocks, not a sparse file.
                unsafe { libc::posix_fallocate(f.as_raw_fd(), 0, want as libc::off_t) == 0 }
            });
        self.reserve_len = if ok { want } else { 0 };
    }

    /// Chunks that recovery found shorter than committed, or missing.
    pub fn damaged(&self) -> &[DamagedChunk] {
        &self.damaged
    }

    /// The buffer directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The tail checkpoints as last committed.
    pub fn checkpoints(&self) -> &[SourceCheckpoint] {
        &self.committed.sources
    }

    /// Bytes in chunks on disk (committed or not).
    pub fn total_bytes(&self) -> u64 {
        self.state.chunks.iter().map(|c| c.len).sum()
    }

    /// Chunks still held (open, sealed or in delivery).
    pub fn chunks(&self) -> &[ChunkMeta] {
        &self.state.chunks
    }

    /// The file of a chunk.
    pub fn chunk_path(&self, seq: u64) -> PathBuf {
        self.chunk_dir.join(format!("{seq}.chunk"))
    }

    fn index_of(&self, seq: u64) -> Option<usize> {
        self.state.chunks.iter().position(|c| c.seq == seq)
    }

    fn timekey_of(&self, now_ms: i64) -> i64 {
        let secs = now_ms.div_euclid(1000);
        secs - secs.rem_euclid(self.limits.timekey_secs)
    }

    /// The open chunk for (output, tag) in the current time key, opened if there is none.
    fn open_chunk(&mut self, output: usize, tag: &str, now_ms: i64) -> Result<u64, BufferError> {
        let timekey = self.timekey_of(now_ms);
        let map_key = (output, tag.to_string(), timekey);
        if let Some(&seq) = self.open.get(&map_key) {
            return Ok(seq);
        }
        let seq = self.state.next_seq;
        let ok = &self.outputs[output];
        let time_slice = crate::config::key::format_time_slice(&ok.time_slice_format, timekey);
        // Per chunk, and different in every process: two runs that start in the same instant
        // must not draw the same %{hex_random} / %{uuid_flush}. Fixed in the key once drawn.
        let random = fastrand::u64(..);
        let values = KeyValues {
            tag,
            path: &ok.path,
            time_slice: &time_slice,
            file_extension: &ok.file_extension,
            random,
            hostname: &self.hostname,
        };
        let timed = ok.template.to_string().contains("%{time_slice}");
        let mut alternatives = None;
        let key = if ok.template.has_index() {
            let prefix = ok.template.prefix(&values);
            let counter = match self
                .state
                .indices
                .iter_mut()
                .find(|c| c.output == ok.name && c.prefix == prefix)
            {
                Some(c) => c,
                None => {
                    self.state.indices.push(IndexCounter {
                        output: ok.name.clone(),
                        prefix,
                        next: ok.index_start,
                        timekey,
                        timed,
                    });
                    self.state.indices.last_mut().expect("just pushed")
                }
            };
            let index = counter.next;
            counter.next += 1;
            counter.timekey = counter.timekey.max(timekey);
            alternatives = ok
                .template
                .render_around_index(&values)
                .map(|(before, after)| KeyAlternatives { before, index, after });
            ok.template.render(&values, index)
        } else {
            ok.template.render(&values, 0)
        };
        let path = self.chunk_path(seq);
        let file = crate::fsutil::private_file()
            .truncate(true)
            .open(&path)
            .map_err(|source| BufferError::Write { path, source })?;
        self.state.next_seq += 1;
        self.state.chunks.push(ChunkMeta {
            seq,
            output: ok.name.clone(),
            tag: tag.to_string(),
            timekey,
            key,
            len: 0,
            created_ms: now_ms,
            last_write_ms: now_ms,
            sealed: false,
            delete_after: Vec::new(),
            no_replace: true,
            alternatives,
        });
        self.handles.insert(seq, file);
        self.open.insert(map_key, seq);
        Ok(seq)
    }

    fn write_to(&mut self, seq: u64, bytes: &[u8], now_ms: i64) -> Result<(), BufferError> {
        let i = self.index_of(seq).expect("open chunk has metadata");
        let path = self.chunk_path(seq);
        let f = self.handles.get_mut(&seq).expect("open chunk has a handle");
        f.write_all(bytes)
            .map_err(|source| BufferError::Write { path, source })?;
        crate::crashpoint::hit("chunk-written");
        let c = &mut self.state.chunks[i];
        c.len += bytes.len() as u64;
        c.last_write_ms = now_ms;
        self.dirty.insert(seq);
        Ok(())
    }

    fn room(&self, seq: u64) -> u64 {
        let i = self.index_of(seq).expect("chunk exists");
        self.limits.chunk_limit.saturating_sub(self.state.chunks[i].len)
    }

    /// Appends `piece` (whole records or lines, or any bytes with [`Cut::Anywhere`]) to the
    /// open chunk of (output, tag), sealing chunks that fill up; a full chunk ends where `cut`
    /// allows, so a line (or a record) is never split between chunks unless it alone is larger
    /// than a chunk.
    pub fn append(
        &mut self,
        output: usize,
        tag: &str,
        cut: Cut<'_>,
        piece: &[u8],
        now_ms: i64,
    ) -> Result<(), BufferError> {
        let mut rest = piece;
        while !rest.is_empty() {
            let seq = self.open_chunk(output, tag, now_ms)?;
            let room = self.room(seq) as usize;
            if rest.len() <= room {
                self.write_to(seq, rest, now_ms)?;
                if self.room(seq) == 0 {
                    self.seal(seq);
                }
                return Ok(());
            }
            let empty = self.state.chunks[self.index_of(seq).expect("exists")].len == 0;
            let line_end = || memchr::memrchr(b'\n', &rest[..room]).map_or(0, |i| i + 1);
            let cut = match cut {
                Cut::Anywhere => room,
                Cut::LineEnd => line_end(),
                Cut::RecordStart(rule) => match rule.last_start_within(rest, room) {
                    Some(at) => at,
                    // One record larger than a whole chunk: cut it at a line end.
                    None if empty => line_end(),
                    // The record goes whole into the next chunk.
                    None => 0,
                },
            };
            let cut = if cut == 0 && empty {
                // One line longer than a whole chunk (only possible with max_line_size >
                // chunk_limit, which config validation refuses): cut it at the limit.
                room
            } else {
                cut
            };
            if cut > 0 {
                self.write_to(seq, &rest[..cut], now_ms)?;
                rest = &rest[cut..];
            }
            self.seal(seq);
        }
        Ok(())
    }

    /// Makes sure the open chunk of (output, tag) has room for `len` more bytes, so a long line
    /// streamed in several writes with [`ChunkStore::append_reserved`] stays in one chunk.
    pub fn reserve(&mut self, output: usize, tag: &str, len: u64, now_ms: i64) -> Result<u64, BufferError> {
        let seq = self.open_chunk(output, tag, now_ms)?;
        if self.room(seq) >= len {
            return Ok(seq);
        }
        self.seal(seq);
        self.open_chunk(output, tag, now_ms)
    }

    /// Writes part of a reserved long line.
    pub fn append_reserved(&mut self, seq: u64, bytes: &[u8], now_ms: i64) -> Result<(), BufferError> {
        self.write_to(seq, bytes, now_ms)
    }

    /// Seals one chunk: it takes no more data and will be dispatched after the next commit.
    fn seal(&mut self, seq: u64) {
        let Some(i) = self.index_of(seq) else { return };
        let c = &mut self.state.chunks[i];
        if c.sealed {
            return;
        }
        c.sealed = true;
        let (output, tag, timekey) = (c.output.clone(), c.tag.clone(), c.timekey);
        let key = (self.outputs_index(&output), tag, timekey);
        self.open.remove(&key);
        self.newly_sealed.push(seq);
    }

    fn outputs_index(&self, name: &str) -> usize {
        self.outputs.iter().position(|o| o.name == name).unwrap_or(usize::MAX)
    }

    /// Seals the open chunks that `is_due(chunk)` says are ready; returns how many.
    pub fn seal_where(&mut self, mut is_due: impl FnMut(&ChunkMeta) -> bool) -> usize {
        let due: Vec<u64> = self
            .state
            .chunks
            .iter()
            .filter(|c| !c.sealed && c.len > 0 && is_due(c))
            .map(|c| c.seq)
            .collect();
        for &seq in &due {
            self.seal(seq);
        }
        due.len()
    }

    /// The open chunks (for computing when the next one is due).
    pub fn open_chunks(&self) -> impl Iterator<Item = &ChunkMeta> {
        self.state.chunks.iter().filter(|c| !c.sealed)
    }

    /// Whether anything changed since the last commit.
    pub fn is_dirty(&self) -> bool {
        self.state != self.committed || !self.newly_sealed.is_empty()
    }

    /// Makes everything appended so far durable together with the given checkpoints, and returns
    /// the chunks that may now be delivered. On error nothing changed on disk: call
    /// [`ChunkStore::rollback`].
    pub fn commit(&mut self, checkpoints: Vec<SourceCheckpoint>, now_ms: i64) -> Result<Vec<SealedChunk>, BufferError> {
        if self.limits.fsync {
            for &seq in &self.dirty {
                if let Some(f) = self.handles.get(&seq) {
                    f.sync_data().map_err(|source| BufferError::Write {
                        path: self.chunk_dir.join(format!("{seq}.chunk")),
                        source,
                    })?;
                }
            }
        }
        self.state.sources = checkpoints;
        let horizon = self.timekey_of(now_ms) - TIMED_COUNTER_TTL_SECS;
        self.state.indices.retain(|c| !c.timed || c.timekey >= horizon);
        if self.state != self.committed {
            crate::crashpoint::hit("before-state-write");
            let bytes = self.state.to_bytes();
            let state_written = || crate::crashpoint::hit("state-temp-written");
            let mut written = write_atomic_hooked(&self.state_path, &bytes, self.limits.fsync, &state_written);
            if written.as_ref().is_err_and(|e| e.raw_os_error() == Some(libc::ENOSPC))
                && fs::remove_file(self.reserve_path()).is_ok()
            {
                // The disk is full of chunks, some of them delivered: only a state write lets
                // their files go. The reserve makes room for that one write.
                written = write_atomic_hooked(&self.state_path, &bytes, self.limits.fsync, &state_written);
            }
            written.map_err(|source| BufferError::Write {
                path: self.state_path.clone(),
                source,
            })?;
            self.state_len = bytes.len() as u64;
            self.committed = self.state.clone();
            crate::crashpoint::hit("after-state-write");
        }
        self.dirty.clear();
        for seq in std::mem::take(&mut self.to_delete) {
            let path = self.chunk_path(seq);
            let _ = fs::remove_file(siblings::progress_path(&path));
            let _ = fs::remove_file(path);
        }
        self.ensure_reserve();
        let mut out = Vec::new();
        for seq in std::mem::take(&mut self.newly_sealed) {
            self.handles.remove(&seq);
            if let Some(c) = self.state.chunks.iter().find(|c| c.seq == seq) {
                out.push(SealedChunk {
                    seq,
                    output: self.outputs_index(&c.output),
                    tag: c.tag.clone(),
                    key: c.key.clone(),
                    path: self.chunk_path(seq),
                    len: c.len,
                    timekey: c.timekey,
                    delete_after: c.delete_after.clone(),
                    created_ms: c.created_ms,
                    no_replace: c.no_replace,
                    alternatives: c.alternatives.clone(),
                });
            }
        }
        Ok(out)
    }

    /// Undoes everything since the last commit: chunk files go back to their committed length,
    /// chunks opened since are removed. The caller rewinds its read positions to the committed
    /// checkpoints.
    pub fn rollback(&mut self) {
        for c in &self.state.chunks {
            let path = self.chunk_path(c.seq);
            match self.committed.chunks.iter().find(|k| k.seq == c.seq) {
                Some(k) => {
                    // Always cut back, even when the recorded length did not move: a write that
                    // failed part-way (a full disk) left bytes that no length counts.
                    if (!k.sealed || k.len != c.len)
                        && let Ok(f) = OpenOptions::new().write(true).open(&path)
                    {
                        let _ = f.set_len(k.len);
                    }
                }
                None => {
                    let _ = fs::remove_file(&path);
                }
            }
        }
        // Delivered chunks stay delivered: keep them out of the restored state.
        let gone: HashSet<u64> = self.to_delete.iter().copied().collect();
        self.state = self.committed.clone();
        self.state.chunks.retain(|c| !gone.contains(&c.seq));
        self.open.clear();
        self.handles.clear();
        self.dirty.clear();
        // Chunks sealed since the commit are open again; seal them (they stay with their keys).
        let mut resealed = Vec::new();
        for c in &mut self.state.chunks {
            if !c.sealed {
                c.sealed = true;
                resealed.push(c.seq);
            }
        }
        self.newly_sealed
            .retain(|s| self.state.chunks.iter().any(|c| c.seq == *s));
        self.newly_sealed.extend(resealed);
    }

    /// Forgets a chunk that was delivered (or written to the secondary directory). The chunk file
    /// is deleted after the next commit.
    pub fn remove(&mut self, seq: u64) {
        self.state.chunks.retain(|c| c.seq != seq);
        self.handles.remove(&seq);
        self.open.retain(|_, s| *s != seq);
        self.dirty.remove(&seq);
        self.to_delete.push(seq);
    }

    /// Adds a sealed chunk with a fixed key holding `content` followed by the first `len` bytes
    /// of `src` (a snapshot of a file, or an empty marker object), delivered in order after the
    /// chunks sealed before it. The output deletes `delete_after` once it is delivered.
    #[allow(clippy::too_many_arguments)]
    pub fn add_whole(
        &mut self,
        output: usize,
        tag: &str,
        key: String,
        content: &[u8],
        src: Option<(&File, &Path, u64)>,
        delete_after: Vec<String>,
        now_ms: i64,
    ) -> Result<u64, BufferError> {
        let seq = self.state.next_seq;
        let path = self.chunk_path(seq);
        let werr = |path: &Path, source| BufferError::Write {
            path: path.to_path_buf(),
            source,
        };
        let mut file = crate::fsutil::private_file()
            .truncate(true)
            .open(&path)
            .map_err(|e| werr(&path, e))?;
        self.state.next_seq += 1;
        self.state.chunks.push(ChunkMeta {
            seq,
            output: self.outputs[output].name.clone(),
            tag: tag.to_string(),
            timekey: self.timekey_of(now_ms),
            key,
            len: 0,
            created_ms: now_ms,
            last_write_ms: now_ms,
            sealed: true,
            delete_after,
            no_replace: false,
            alternatives: None,
        });
        let mut len = 0u64;
        file.write_all(content).map_err(|e| werr(&path, e))?;
        len += content.len() as u64;
        if let Some((src, src_path, n)) = src {
            let copied = crate::fsutil::copy_range(src, &mut file, n).map_err(|source| BufferError::Read {
                path: src_path.to_path_buf(),
                source,
            })?;
            len += copied;
        }
        let i = self.index_of(seq).expect("just added");
        self.state.chunks[i].len = len;
        self.handles.insert(seq, file);
        self.dirty.insert(seq);
        self.newly_sealed.push(seq);
        Ok(seq)
    }

    /// Seals the open chunks of `tag` for `output` now, so what is added next is delivered after
    /// them.
    pub fn seal_tag(&mut self, output: usize, tag: &str) {
        let name = self.outputs[output].name.clone();
        self.seal_where(|c| c.output == name && c.tag == tag);
    }

    /// Whether a marker with this key was already queued for `output` (now or in an earlier run).
    pub fn marker_queued(&self, output: usize, key: &str) -> bool {
        let name = &self.outputs[output].name;
        self.state.markers.iter().any(|m| &m.output == name && m.key == key)
    }

    /// Queues an empty-or-small marker object (`content`) for `output`, once: a marker already
    /// queued is not queued again. Returns whether it was queued now.
    pub fn add_marker(
        &mut self,
        output: usize,
        tag: &str,
        key: String,
        content: &[u8],
        delete_after: Vec<String>,
        now_ms: i64,
    ) -> Result<bool, BufferError> {
        if self.marker_queued(output, &key) {
            return Ok(false);
        }
        self.state.markers.push(MarkerRecord {
            output: self.outputs[output].name.clone(),
            key: key.clone(),
        });
        self.add_whole(output, tag, key, content, None, delete_after, now_ms)?;
        Ok(true)
    }

    /// Whether a chunk with this key is waiting for delivery to `output`.
    pub fn has_pending_key(&self, output: usize, key: &str) -> bool {
        let name = &self.outputs[output].name;
        self.state.chunks.iter().any(|c| &c.output == name && c.key == key)
    }

    /// The `%{path}` of an output (the prefix that Spark's own file names go under).
    pub fn output_path(&self, output: usize) -> &str {
        &self.outputs[output].path
    }

    /// Seals every open chunk (drain).
    pub fn seal_all(&mut self) {
        self.seal_where(|_| true);
    }

    /// fsyncs the chunk directory (after deletions at exit).
    pub fn sync_dir(&self) {
        let _ = sync_parent(&self.chunk_path(0));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(dir: &Path, limit: u64) -> ChunkStore {
        let keying = OutputKeying {
            name: "out".into(),
            template: KeyTemplate::parse("%{tag}/%{index}").unwrap(),
            path: String::new(),
            time_slice_format: "%Y".into(),
            file_extension: "txt".into(),
            index_start: 1,
            destination: "file:///out".into(),
        };
        let limits = ChunkLimits {
            timekey_secs: 30,
            chunk_limit: limit,
            fsync: false,
        };
        ChunkStore::open(dir, limits, vec![keying]).unwrap()
    }

    #[test]
    fn append_cuts_at_line_ends_and_numbers_keys() {
        let d = tempfile::tempdir().unwrap();
        let mut s = store(d.path(), 10);
        s.append(0, "t", Cut::LineEnd, b"aaaa\nbbbb\ncccc\n", 1_000).unwrap();
        let sealed = s.commit(vec![], 1_000).unwrap();
        assert_eq!(sealed.len(), 1);
        assert_eq!(fs::read(&sealed[0].path).unwrap(), b"aaaa\nbbbb\n");
        assert_eq!(sealed[0].key, "t/1");
        let open: Vec<_> = s.open_chunks().collect();
        assert_eq!(open.len(), 1);
        assert_eq!(open[0].key, "t/2");
        assert_eq!(fs::read(s.chunk_path(open[0].seq)).unwrap(), b"cccc\n");
    }

    #[test]
    fn a_new_time_key_opens_a_new_chunk() {
        let d = tempfile::tempdir().unwrap();
        let mut s = store(d.path(), 1000);
        s.append(0, "t", Cut::LineEnd, b"a\n", 1_000).unwrap();
        s.append(0, "t", Cut::LineEnd, b"b\n", 31_000).unwrap();
        assert_eq!(s.open_chunks().count(), 2);
    }

    #[test]
    fn rollback_restores_committed_lengths_and_recovery_truncates() {
        let d = tempfile::tempdir().unwrap();
        {
            let mut s = store(d.path(), 1000);
            s.append(0, "t", Cut::LineEnd, b"committed\n", 1_000).unwrap();
            s.commit(vec![], 1_000).unwrap();
            s.append(0, "t", Cut::LineEnd, b"lost\n", 1_000).unwrap();
            s.append(0, "u", Cut::LineEnd, b"other\n", 1_000).unwrap();
            s.rollback();
            assert_eq!(s.chunks().len(), 1);
            assert_eq!(fs::read(s.chunk_path(0)).unwrap(), b"committed\n");
            assert!(!s.chunk_path(1).exists());
            s.append(0, "t", Cut::LineEnd, b"uncommitted\n", 1_000).unwrap();
            // Dropped without commit: as if killed.
        }
        let mut s = store(d.path(), 1000);
        let sealed = s.commit(vec![], 2_000).unwrap();
        assert_eq!(sealed.len(), 1, "the recovered chunk is sealed and dispatched");
        assert_eq!(fs::read(&sealed[0].path).unwrap(), b"committed\n");
        assert_eq!(sealed[0].key, "t/1");
        // The index counter was persisted: the next chunk gets 2, never 1 again.
        s.append(0, "t", Cut::LineEnd, b"next\n", 3_000).unwrap();
        assert_eq!(s.open_chunks().next().unwrap().key, "t/2");
    }

    #[test]
    fn second_store_on_same_dir_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let _a = store(d.path(), 1000);
        let keying = OutputKeying {
            name: "out".into(),
            template: KeyTemplate::parse("x").unwrap(),
            path: String::new(),
            time_slice_format: "%Y".into(),
            file_extension: String::new(),
            index_start: 0,
            destination: "file:///out".into(),
        };
        let limits = ChunkLimits {
            timekey_secs: 30,
            chunk_limit: 1000,
            fsync: false,
        };
        let e = ChunkStore::open(d.path(), limits, vec![keying]).err().unwrap();
        assert!(matches!(e, BufferError::Locked(_)), "{e}");
    }
}
