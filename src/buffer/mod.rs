//! Chunks by time key, in files, committed atomically with the read positions that filled them.
//!
//! The [`ChunkStore`] is owned by the pipeline thread. Reading appends bytes to open chunks
//! ([`append`]); [`ChunkStore::commit`] makes them durable together with the read positions
//! ([`commit`]) and returns the chunks sealed since the last commit ([`sealing`]), which may then
//! be delivered; anything that fails between two commits is undone with
//! [`ChunkStore::rollback`]. [`ChunkStore::open`] recovers what a previous run left
//! ([`recovery`]).
//!
//! # On disk
//!
//! ```text
//! <dir>/.lock                  flock: one logship per buffer directory
//! <dir>/state.json             snapshot: every chunk's metadata, every read position, the
//!                              %{index} counters, markers queued, each output's destination;
//!                              format `version` and `generation`, ends with its checksum
//! <dir>/state.journal          the commits since that snapshot: [len u32][FNV-1a 64][JSON delta]
//!                              records, the first one the snapshot's generation, changing nothing
//! <dir>/.reserve               room held back for one state write on a full disk
//! <dir>/chunks/<seq>.chunk     a chunk's bytes (its first `len` are its content)
//! <dir>/chunks/<seq>.chunk.progress   how much of it an output that delivers in parts delivered
//! <dir>/chunks/<seq>.chunk.gz|zst     its compressed copy, made for an upload
//! <dir>/secondary/             where chunks whose output failed for good go (by default)
//! ```
//!
//! # Invariants
//!
//! 1. **A byte is in a chunk and past a read position together, or in neither.** A commit writes
//!    the chunks' bytes (and fsyncs them), then one state change that moves the chunk lengths and
//!    the read positions that produced them: one journal record (whole or torn by its checksum),
//!    or one snapshot (temporary file, fsync, rename). Nothing else records a position.
//! 2. **What a commit did not cover does not exist.** Bytes past a chunk's committed length are
//!    cut off (by a rollback, or by recovery) and never delivered: every output reads a chunk's
//!    first `len` bytes. A chunk no commit recorded is deleted; its bytes are read again.
//! 3. **A chunk is delivered after the commit that sealed it, to the key it got when opened**,
//!    and forgotten by a later commit only after its output confirmed it (or it went to the
//!    secondary directory, whose name is committed before the file is written).
//! 4. **A stream's chunks are delivered in the order they were opened** (a stream: output, tag,
//!    and for an output that keeps records whole, file): sealing one seals its stream's older
//!    ones first, and a commit dispatches by sequence number.
//! 5. **A record is split between chunks only when it alone is larger than one** (or by a crash):
//!    a full chunk ends before a record starts; lines that continue the record at its end move on
//!    with it (see [`append`]).
//! 6. **Recovery changes nothing it cannot account for.** It cuts a torn last journal record;
//!    any other disagreement between the state's files is an error naming the file, and a file
//!    under `chunks/` it does not know is kept and reported (see [`recovery`]).
//! 7. **Nothing in the directory is anyone else's.** It is 0700 and ours, files are 0600 and opened
//!    without following links.
//!
//! `tests/it/model.rs` checks these against generated sequences of appends, commits, crashes,
//! damage and reloads; `tests/it/crash_matrix.rs` crashes the binary at every crash point.

mod append;
mod commit;
pub mod journal;
mod keys;
mod mirror;
mod recovery;
mod sealing;
pub mod siblings;
pub mod state;

use append::TailRecord;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::config::key::{KeyTemplate, KeyValues};
use crate::fsutil::{FileId, sync_parent, write_atomic, write_atomic_hooked};
use crate::record::{PrevLine, RecordRule};
use journal::{COMPACT_MIN_BYTES, Journal, LiveState};
pub use state::{
    ChunkMeta, IndexCounter, KeyAlternatives, MarkerRecord, SourceCheckpoint, SourceKey, StateFile, source_key,
};

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
    /// The state's files do not hold together (a damaged journal record with valid ones after
    /// it, a journal without its snapshot, ...): the state cannot be trusted, and recovery
    /// changes nothing.
    #[error(
        "buffer state {path} {what}. Nothing was changed: the undelivered chunks are in the chunks/ directory beside it. Move the buffer directory aside to start afresh (lines read since its last good commit may then be shipped twice)"
    )]
    StateDamaged {
        /// The file at fault.
        path: PathBuf,
        /// What is wrong with it.
        what: String,
    },
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
    /// Whether each tag gets chunks of its own. Not needed when nothing the output makes of a
    /// chunk depends on its tag (a key without `%{tag}`, no CloudWatch stream, no Spark event
    /// logs): then files share a chunk per time key, as fluentd's `<buffer time>` does, and a
    /// node's thousands of files make one object per time key, not thousands.
    pub by_tag: bool,
    /// Where the output delivers (a directory, bucket, log group; no secrets). Recorded with the
    /// chunks, so a buffer directory reused by another configuration never sends one run's
    /// chunks to another run's destination.
    pub destination: String,
    /// Whether its chunks keep a running CRC32 of their bytes ([`ChunkMeta::crc32`]): S3 API
    /// outputs that upload chunks as they are (text), which send the CRC32 with each object.
    pub crc32: bool,
    /// For an output that joins a record's lines into one event (CloudWatch, with a multiline
    /// rule): how long a file's last record may still continue (`multiline_flush`, in ms). Its
    /// chunks then hold the lines of one file each, lines that continue a record go to the
    /// chunk its first line is in, and that chunk is not sealed before the file has been quiet
    /// this long (see [`ChunkStore::held_until`]). `None`: outputs that store bytes, where a
    /// record split between two chunks is still the same bytes in the same order.
    pub hold_ms: Option<i64>,
}

/// The longest a chunk waits past its due time for a record that keeps growing (a stack trace
/// written a line at a time, see [`ChunkStore::seal_due`]): then it is sealed, and the record
/// goes on in the next chunk.
pub const HOLD_MAX_MS: i64 = 60_000;

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
    /// The CRC32 of its bytes when it was kept while they were written ([`ChunkMeta::crc32`]).
    pub crc32: Option<u32>,
    /// The secondary file a previous run was writing it to ([`ChunkMeta::secondary`]): it goes
    /// there, not to its output.
    pub secondary: Option<PathBuf>,
}

/// The key of an open chunk: output, tag, time key and file (see [`ChunkStore::open_key`]).
type OpenKey = (usize, String, i64, Option<FileId>);

/// How many chunk files are held open for writing at once.
pub const CHUNK_HANDLES_MAX: usize = 64;

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

/// The committed checkpoints, by source, file and tag.
pub type Checkpoints = BTreeMap<SourceKey, SourceCheckpoint>;

/// The checkpoints of `source` for the file `id` (one, unless an event-log source both follows
/// and mirrors files of that identity).
pub fn checkpoints_of_file<'a>(
    cps: &'a Checkpoints,
    source: &'a str,
    id: crate::fsutil::FileId,
) -> impl Iterator<Item = &'a SourceCheckpoint> + 'a {
    cps.range((Arc::from(source), id, Arc::from(""))..)
        .take_while(move |(k, _)| &*k.0 == source && k.1 == id)
        .map(|(_, c)| c)
}

/// The checkpoints of `source`.
pub fn checkpoints_of_source<'a>(
    cps: &'a Checkpoints,
    source: &'a str,
) -> impl Iterator<Item = &'a SourceCheckpoint> + 'a {
    let first = crate::fsutil::FileId { dev: 0, ino: 0 };
    cps.range((Arc::from(source), first, Arc::from(""))..)
        .take_while(move |(k, _)| &*k.0 == source)
        .map(|(_, c)| c)
}

/// The checkpoints a commit records: what changed since the last commit. (The first commit of a
/// run sets every checkpoint the sources hold, and removes those of files that are gone; the
/// checkpoints of files no source follows now stay, so a source that comes back, or is renamed,
/// resumes where its files were.)
#[derive(Debug, Clone, Default)]
pub struct CheckpointChanges {
    /// New or moved checkpoints.
    pub set: Vec<SourceCheckpoint>,
    /// Checkpoints to forget: files let go, gone, or whose checkpoint another source took.
    pub removed: Vec<SourceKey>,
}

impl CheckpointChanges {
    /// No change.
    pub fn none() -> CheckpointChanges {
        CheckpointChanges::default()
    }
}

/// How many counter-less hours an index counter of a timed key survives.
const TIMED_COUNTER_TTL_SECS: i64 = 3600;

/// The most bytes appends gather before one write to their chunk (appends of half of it or
/// more are written directly: a read block of a busy file costs one write either way).
const GATHER_MAX: usize = 64 * 1024;

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
    /// The live state (includes uncommitted changes, and remembers what they replaced).
    state: LiveState,
    /// Where commits go between snapshots.
    journal: Journal,
    /// Length of the last snapshot written (or found).
    snapshot_len: u64,
    /// Whether `state.json` exists (the first commit writes one).
    have_snapshot: bool,
    /// Bytes in chunks (committed or not).
    total: u64,
    /// Open chunk per (output, tag, timekey, file): the tag only where the output keeps tags
    /// apart, the file only where it keeps records whole.
    open: HashMap<OpenKey, u64>,
    /// The open chunks of each stream (output, tag, file: the open-chunk key without its time
    /// key), to seal them in order (see [`ChunkStore::seal`]).
    streams: HashMap<(usize, String, Option<FileId>), std::collections::BTreeSet<u64>>,
    /// The record at the end of each open chunk that ends with one (see [`TailRecord`]).
    tails: HashMap<u64, TailRecord>,
    /// Per output that keeps records whole, the chunk each file's last record is in.
    last_chunk: HashMap<(usize, FileId), u64>,
    /// Records that could not stay in one chunk since the last [`ChunkStore::take_records_split`].
    records_split: u64,
    /// Write handles of open chunks (at most [`CHUNK_HANDLES_MAX`]; a chunk whose handle was
    /// let go is opened again to append).
    handles: HashMap<u64, File>,
    /// Chunks written since the last commit (to fsync).
    dirty: HashSet<u64>,
    /// Small appends to one open chunk, gathered into one `write` (at most [`GATHER_MAX`]
    /// bytes; written before a commit, before an append to another chunk, and when full). A
    /// node forwarder following 10,000 files appends one line per file read: a write each
    /// cost a system call and an inode time update per line. Bytes gathered but not written
    /// are not committed either, so a crash loses nothing the checkpoints do not re-read.
    gathered: Vec<u8>,
    /// The chunk the gathered bytes belong to.
    gathered_seq: Option<u64>,
    /// Chunks sealed since the last commit (to dispatch after it).
    newly_sealed: Vec<u64>,
    /// Chunk files to delete after the next commit (delivered or moved to the secondary).
    to_delete: Vec<u64>,
    /// What recovery found damaged (reported at exit).
    damaged: Vec<DamagedChunk>,
    /// Files under `chunks/` that recovery could not account for, kept (reported at exit).
    unaccounted: Vec<PathBuf>,
    /// What recovery had to undo that a crash alone does not explain (reported at exit).
    doubts: Vec<String>,
    /// Size of the next snapshot, about, and of the reserve held for it.
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
        let journal_path = dir.join("state.journal");
        let recovery::Recovered {
            mut state,
            mut journal,
            have_snapshot,
            doubts,
        } = recovery::load_state(&state_path, &journal_path)?;
        // Chunks go only where they were bound: refuse to start rather than deliver them to
        // another destination under the same output name.
        for o in &outputs {
            if let Some(recorded) = state.destinations.get(&o.name)
                && *recorded != o.destination
            {
                let chunks = state.chunks.map().values().filter(|c| c.output == o.name).count();
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
        // Chunks of outputs that no longer exist are kept: they are undelivered data, reported
        // at exit and delivered again if the output comes back.
        let unaccounted = recovery::sweep_chunk_dir(&chunk_dir, &state)?;
        let damaged = recovery::check_chunk_files(&chunk_dir, &mut state);
        recovery::cut_chunk_files(&chunk_dir, &state)?;
        for o in &outputs {
            state.destinations.insert(o.name.clone(), o.destination.clone());
        }
        let mut snapshot_len = fs::metadata(&state_path).map_or(0, |m| m.len());
        if !damaged.is_empty() {
            // Record the repair now: a later rollback must never grow a file back with zeros.
            let generation = state.generation + 1;
            let bytes = state.snapshot_bytes(generation);
            write_atomic(&state_path, &bytes, limits.fsync).map_err(|source| BufferError::Write {
                path: state_path.clone(),
                source,
            })?;
            state.generation = generation;
            state.settle();
            snapshot_len = bytes.len() as u64;
            journal
                .reset(&state.empty_record(generation), limits.fsync)
                .map_err(|source| BufferError::Write {
                    path: journal_path.clone(),
                    source,
                })?;
        } else {
            // Sealing the recovered chunks is not a change to record.
            state.chunks.settle();
        }
        let total = state.chunks.map().values().map(|c| c.len).sum();
        let recovered = state.chunks.map().keys().copied().collect();
        Ok(ChunkStore {
            dir: dir.to_path_buf(),
            chunk_dir,
            state_path,
            limits,
            outputs,
            hostname: crate::config::key::hostname(),
            state,
            state_len: snapshot_len + journal.len,
            journal,
            snapshot_len,
            have_snapshot: have_snapshot || !damaged.is_empty(),
            total,
            open: HashMap::new(),
            streams: HashMap::new(),
            tails: HashMap::new(),
            last_chunk: HashMap::new(),
            records_split: 0,
            handles: HashMap::new(),
            dirty: HashSet::new(),
            gathered: Vec::new(),
            gathered_seq: None,
            newly_sealed: recovered,
            to_delete: Vec::new(),
            damaged,
            unaccounted,
            doubts,
            reserve_len: 0,
            _lock: lock,
        })
    }

    /// Chunks that recovery found shorter than committed, or missing.
    pub fn damaged(&self) -> &[DamagedChunk] {
        &self.damaged
    }

    /// Files under `chunks/` that recovery could not account for (kept where they are).
    pub fn unaccounted(&self) -> &[PathBuf] {
        &self.unaccounted
    }

    /// What recovery had to undo that a crash alone does not explain.
    pub fn state_doubts(&self) -> &[String] {
        &self.doubts
    }

    /// The buffer directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The tail checkpoints as last committed (they change only at a commit).
    pub fn checkpoints(&self) -> &Checkpoints {
        self.state.sources.map()
    }

    /// Bytes in chunks on disk (committed or not).
    pub fn total_bytes(&self) -> u64 {
        self.total
    }

    /// Chunks still held (open, sealed or in delivery), in creation order.
    pub fn chunks(&self) -> impl ExactSizeIterator<Item = &ChunkMeta> {
        self.state.chunks.map().values()
    }

    /// One chunk still held.
    pub fn chunk(&self, seq: u64) -> Option<&ChunkMeta> {
        self.state.chunks.get(&seq)
    }

    /// The file of a chunk.
    pub fn chunk_path(&self, seq: u64) -> PathBuf {
        self.chunk_dir.join(format!("{seq}.chunk"))
    }
}

/// A store with one output keyed by tag, for tests of what reads into it.
#[cfg(test)]
pub(crate) fn test_store(dir: &Path, limit: u64) -> ChunkStore {
    tests::store(dir, limit)
}

#[cfg(test)]
mod tests;
