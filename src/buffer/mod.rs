//! Chunks by time key, in files, committed atomically with the read positions that filled them.
//!
//! The [`ChunkStore`] is owned by the pipeline thread. Reading appends bytes to open chunks;
//! [`ChunkStore::commit`] makes them durable (fsync of the chunk files, then one atomic write of
//! what changed in the chunk lengths *and* the tail checkpoints: a journal record, or a new
//! `state.json` snapshot now and then; see [`journal`]) and returns the chunks sealed since the
//! last commit, which may then be delivered. Anything that fails between two
//! commits is undone with [`ChunkStore::rollback`]: chunk files are cut back to their committed
//! length and the reader goes back to its committed positions, so a failed write (full disk)
//! neither loses nor repeats data.
//!
//! On open, chunk files are cut to the length the state records (bytes written after the last
//! commit are re-read from the source), files the state does not know are removed, and every
//! recovered chunk is sealed and delivered again under its recorded key.

pub mod journal;
mod recovery;
pub mod siblings;
pub mod state;

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

/// The record at the end of an open chunk, when the last bytes written to it were whole lines of
/// one followed file cut into records ([`Cut::RecordStart`]): lines of that file that continue
/// it can then stay with it, in this chunk or, moved with it, in the next (see
/// [`ChunkStore::append`]).
#[derive(Debug, Clone, Copy)]
struct TailRecord {
    /// The file its lines come from.
    file: FileId,
    /// Where it starts in the chunk.
    start: u64,
    /// What the record rule needs of its last line.
    last: PrevLine,
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
    /// Write handles of open chunks.
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

    fn timekey_of(&self, now_ms: i64) -> i64 {
        let secs = now_ms.div_euclid(1000);
        secs - secs.rem_euclid(self.limits.timekey_secs)
    }

    /// The key of the open-chunk map: the tag only where the output keeps tags apart, the file
    /// only where it keeps records whole.
    fn open_key(&self, output: usize, tag: &str, timekey: i64, from: Option<FileId>) -> OpenKey {
        let o = self.outputs.get(output);
        let by_tag = o.is_none_or(|o| o.by_tag);
        let by_file = o.is_some_and(|o| o.hold_ms.is_some());
        (
            output,
            if by_tag { tag.to_string() } else { String::new() },
            timekey,
            from.filter(|_| by_file),
        )
    }

    /// The open chunk for (output, tag, file) in the current time key, opened if there is none.
    fn open_chunk(&mut self, output: usize, tag: &str, from: Option<FileId>, now_ms: i64) -> Result<u64, BufferError> {
        let timekey = self.timekey_of(now_ms);
        let map_key = self.open_key(output, tag, timekey, from);
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
            let ikey = (ok.name.clone(), prefix);
            if self.state.indices.get(&ikey).is_none() {
                self.state.indices.insert(
                    ikey.clone(),
                    IndexCounter {
                        output: ok.name.clone(),
                        prefix: ikey.1.clone(),
                        next: ok.index_start,
                        timekey,
                        timed,
                    },
                );
            }
            let counter = self.state.indices.get_mut(&ikey).expect("just added");
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
        let file = crate::crashpoint::fail("chunk-open")
            .and_then(|()| crate::fsutil::private_file().truncate(true).open(&path))
            .map_err(|source| BufferError::Write { path, source })?;
        self.state.next_seq += 1;
        let meta = ChunkMeta {
            no_replace: true,
            alternatives,
            crc32: ok.crc32.then_some(0),
            file: map_key.3,
            ..ChunkMeta::empty(seq, ok.name.clone(), tag, timekey, key, now_ms)
        };
        self.state.chunks.insert(seq, meta);
        self.handles.insert(seq, file);
        self.streams
            .entry((map_key.0, map_key.1.clone(), map_key.3))
            .or_default()
            .insert(seq);
        self.open.insert(map_key, seq);
        Ok(seq)
    }

    fn write_to(&mut self, seq: u64, bytes: &[u8], now_ms: i64) -> Result<(), BufferError> {
        let direct = bytes.len() >= GATHER_MAX / 2;
        if direct || self.gathered_seq.is_some_and(|g| g != seq) || self.gathered.len() + bytes.len() > GATHER_MAX {
            // In order: what was gathered before these bytes is written before them.
            self.write_gathered()?;
        }
        if direct {
            self.write_out(seq, bytes)?;
        } else {
            if self.gathered.capacity() == 0 {
                self.gathered.reserve_exact(GATHER_MAX);
            }
            self.gathered.extend_from_slice(bytes);
            self.gathered_seq = Some(seq);
        }
        let c = self.state.chunks.get_mut(&seq).expect("open chunk has metadata");
        if let Some(crc) = c.crc32 {
            let mut h = crc32fast::Hasher::new_with_initial(crc);
            h.update(bytes);
            c.crc32 = Some(h.finalize());
        }
        c.len += bytes.len() as u64;
        c.last_write_ms = now_ms;
        self.total += bytes.len() as u64;
        self.dirty.insert(seq);
        Ok(())
    }

    /// Writes the gathered bytes to their chunk.
    fn write_gathered(&mut self) -> Result<(), BufferError> {
        let Some(seq) = self.gathered_seq.take() else {
            return Ok(());
        };
        let bytes = std::mem::take(&mut self.gathered);
        let r = self.write_out(seq, &bytes);
        self.gathered = bytes;
        self.gathered.clear();
        r
    }

    /// Appends `bytes` to the chunk file of `seq`. A write that fails part-way leaves bytes that
    /// a rollback cuts off (it cuts every open chunk back to its committed length).
    fn write_out(&mut self, seq: u64, bytes: &[u8]) -> Result<(), BufferError> {
        // Noted as changed before the write (`get_mut` records it for the rollback): a first
        // write since the commit that fails part-way must still be cut off.
        let _ = self.state.chunks.get_mut(&seq);
        let f = self.handles.get_mut(&seq).expect("open chunk has a handle");
        let written = match crate::crashpoint::fail("chunk-write") {
            // A full disk takes part of a write, then refuses the rest.
            Err(e) => f.write_all(&bytes[..bytes.len() / 2]).and(Err(e)),
            Ok(()) => f.write_all(bytes),
        };
        if let Err(source) = written {
            return Err(BufferError::Write {
                path: self.chunk_dir.join(format!("{seq}.chunk")),
                source,
            });
        }
        crate::crashpoint::hit("chunk-written");
        Ok(())
    }

    fn room(&self, seq: u64) -> u64 {
        let len = self.state.chunks.get(&seq).expect("chunk exists").len;
        self.limits.chunk_limit.saturating_sub(len)
    }

    /// Appends `piece` (whole lines, or any bytes with [`Cut::Anywhere`]) from the followed file
    /// `from` to the open chunk of (output, tag), sealing chunks that fill up. A full chunk ends
    /// where `cut` allows: with [`Cut::RecordStart`], before a line that starts a record, and
    /// when the lines that do not fit continue the record at the chunk's end (same file), that
    /// record moves to the next chunk with them. So a record is split between chunks only when
    /// it alone is larger than a chunk (counted, [`ChunkStore::take_records_split`]).
    ///
    /// In an output that keeps records whole ([`OutputKeying::hold_ms`]), lines that continue
    /// the file's last record go to the chunk the record is in, even one of an earlier time key.
    pub fn append(
        &mut self,
        output: usize,
        tag: &str,
        from: Option<FileId>,
        cut: Cut<'_>,
        piece: &[u8],
        now_ms: i64,
    ) -> Result<(), BufferError> {
        let (Cut::RecordStart(rule), Some(file)) = (cut, from) else {
            return self.append_cut(output, tag, from, cut, piece, now_ms);
        };
        let mut rest = piece;
        if self.outputs[output].hold_ms.is_some()
            && let Some(&held) = self.last_chunk.get(&(output, file))
            && let Some(t) = self.tail_of(held, file)
        {
            let lead = rule.continuation_len(rest, t.last);
            if lead > 0 {
                self.continue_record(held, output, tag, file, rule, &rest[..lead], now_ms)?;
                rest = &rest[lead..];
            }
        }
        self.append_cut(output, tag, from, cut, rest, now_ms)
    }

    /// The record at the end of open chunk `seq`, if its lines came from `file`.
    fn tail_of(&self, seq: u64, file: FileId) -> Option<TailRecord> {
        self.tails.get(&seq).filter(|t| t.file == file).copied()
    }

    /// Appends `lines`, which all continue the record at the end of open chunk `seq`, there;
    /// when they do not fit, the record moves to a new chunk with them (when it then fits in
    /// one), or else is split (counted).
    #[allow(clippy::too_many_arguments)]
    fn continue_record(
        &mut self,
        seq: u64,
        output: usize,
        tag: &str,
        file: FileId,
        rule: &RecordRule,
        lines: &[u8],
        now_ms: i64,
    ) -> Result<(), BufferError> {
        let cut = Cut::RecordStart(rule);
        if lines.len() as u64 <= self.room(seq) {
            self.put(seq, Some(file), cut, lines, now_ms)?;
        } else if self.movable(seq, lines.len()) {
            let to = self.move_record(seq, now_ms)?;
            return self.continue_record(to, output, tag, file, rule, lines, now_ms);
        } else {
            self.records_split += 1;
            self.seal(seq);
            return self.append_cut(output, tag, Some(file), cut, lines, now_ms);
        }
        if self.room(seq) == 0 {
            self.seal(seq);
        }
        Ok(())
    }

    /// Whether the record at the end of chunk `seq` can move to a chunk of its own with `more`
    /// bytes of it: it does not start the chunk, and it then fits in one.
    fn movable(&self, seq: u64, more: usize) -> bool {
        let (Some(t), Some(c)) = (self.tails.get(&seq), self.state.chunks.get(&seq)) else {
            return false;
        };
        t.start > 0 && c.len - t.start + more as u64 <= self.limits.chunk_limit
    }

    /// Moves the record at the end of open chunk `seq` (from its [`TailRecord::start`]) into the
    /// open chunk of the same output, tag and file in the current time key (a new one: `seq` is
    /// sealed first), and seals `seq` without it; returns the chunk it went to. The old chunk's
    /// length goes back to where the record started; its file keeps the bytes until they are
    /// cut off (by recovery, or when the chunk is delivered), so a rollback to a committed
    /// length that still held them finds them there.
    fn move_record(&mut self, seq: u64, now_ms: i64) -> Result<u64, BufferError> {
        use std::os::unix::fs::FileExt;
        self.write_gathered()?;
        let t = self.tails[&seq];
        let c = self.state.chunks.get(&seq).expect("open chunk exists");
        let (len, output, tag) = (c.len, self.outputs_index(&c.output), c.tag.clone());
        self.seal(seq);
        let to = self.open_chunk(output, &tag, Some(t.file), now_ms)?;
        let start = self.state.chunks.get(&to).expect("open").len;
        let path = self.chunk_path(seq);
        let read_err = |source| BufferError::Read {
            path: path.clone(),
            source,
        };
        let src = File::open(&path).map_err(read_err)?;
        let mut block = vec![0u8; GATHER_MAX.min((len - t.start) as usize)];
        let mut at = t.start;
        while at < len {
            let n = ((len - at) as usize).min(block.len());
            src.read_exact_at(&mut block[..n], at).map_err(read_err)?;
            self.write_to(to, &block[..n], now_ms)?;
            at += n as u64;
        }
        let old = self.state.chunks.get_mut(&seq).expect("sealed chunk exists");
        old.len = t.start;
        // Its kept CRC32 covered the record too: the upload computes it again.
        old.crc32 = None;
        self.total -= len - t.start;
        self.set_tail(to, output, TailRecord { start, ..t });
        Ok(to)
    }

    /// Records the record at the end of chunk `seq`.
    fn set_tail(&mut self, seq: u64, output: usize, t: TailRecord) {
        if self.outputs[output].hold_ms.is_some() {
            self.last_chunk.insert((output, t.file), seq);
        }
        self.tails.insert(seq, t);
    }

    /// Writes `bytes` to open chunk `seq` and keeps track of the record at its end.
    fn put(
        &mut self,
        seq: u64,
        from: Option<FileId>,
        cut: Cut<'_>,
        bytes: &[u8],
        now_ms: i64,
    ) -> Result<(), BufferError> {
        let before = self.state.chunks.get(&seq).expect("open chunk exists").len;
        self.write_to(seq, bytes, now_ms)?;
        match (cut, from) {
            (Cut::RecordStart(rule), Some(file)) => {
                let was = self.tail_of(seq, file);
                let lead = was.map_or(0, |t| rule.continuation_len(bytes, t.last));
                let start = match was {
                    Some(t) if lead == bytes.len() => t.start,
                    _ => before + (lead + rule.complete_prefix(&bytes[lead..])) as u64,
                };
                let last = PrevLine::of(crate::record::last_line(bytes));
                let output = self.outputs_index(&self.state.chunks.get(&seq).expect("open").output);
                self.set_tail(seq, output, TailRecord { file, start, last });
            }
            _ => self.forget_tail(seq, from),
        }
        Ok(())
    }

    /// Bytes not cut into records went to chunk `seq` from `from`: it no longer ends with a
    /// known record, and it is that file's last chunk (so an earlier one holds nothing back).
    fn forget_tail(&mut self, seq: u64, from: Option<FileId>) {
        if !self.tails.is_empty() {
            self.tails.remove(&seq);
        }
        if let Some(file) = from
            && let Some(c) = self.state.chunks.get(&seq)
        {
            let output = self.outputs_index(&c.output);
            if self.outputs.get(output).is_some_and(|o| o.hold_ms.is_some()) {
                self.last_chunk.insert((output, file), seq);
            }
        }
    }

    /// Records that could not be kept in one chunk since the last call (a record larger than a
    /// chunk), for the source's counters.
    pub fn take_records_split(&mut self) -> u64 {
        std::mem::take(&mut self.records_split)
    }

    /// Appends `piece` cutting full chunks where `cut` allows (see [`ChunkStore::append`]).
    fn append_cut(
        &mut self,
        output: usize,
        tag: &str,
        from: Option<FileId>,
        cut: Cut<'_>,
        piece: &[u8],
        now_ms: i64,
    ) -> Result<(), BufferError> {
        let mut rest = piece;
        while !rest.is_empty() {
            let seq = self.open_chunk(output, tag, from, now_ms)?;
            let room = self.room(seq) as usize;
            if rest.len() <= room {
                self.put(seq, from, cut, rest, now_ms)?;
                if self.room(seq) == 0 {
                    self.seal(seq);
                }
                return Ok(());
            }
            let empty = self.state.chunks.get(&seq).expect("exists").len == 0;
            let line_end = || memchr::memrchr(b'\n', &rest[..room]).map_or(0, |i| i + 1);
            let at = match cut {
                Cut::Anywhere => room,
                Cut::LineEnd => line_end(),
                Cut::RecordStart(rule) => match rule.last_start_within(rest, room) {
                    Some(at) => at,
                    None => {
                        // The lines that fit continue the record at the chunk's end, or one
                        // that starts here: it moves on whole when it then fits in a chunk.
                        let lead = from
                            .and_then(|f| self.tail_of(seq, f))
                            .map_or(0, |t| rule.continuation_len(rest, t.last));
                        if lead > 0 && self.movable(seq, lead) {
                            self.move_record(seq, now_ms)?;
                            continue;
                        }
                        if lead > 0 || empty {
                            // One record larger than a chunk: cut at a line end.
                            self.records_split += 1;
                            line_end()
                        } else {
                            0
                        }
                    }
                },
            };
            // One line longer than a whole chunk (only possible with max_line_size >
            // chunk_limit, which config validation refuses): cut it at the limit.
            let at = if at == 0 && empty { room } else { at };
            if at > 0 {
                self.put(seq, from, cut, &rest[..at], now_ms)?;
                rest = &rest[at..];
            }
            self.seal(seq);
        }
        Ok(())
    }

    /// Makes sure the open chunk of (output, tag, file) has room for `len` more bytes, so a long
    /// line streamed in several writes with [`ChunkStore::append_reserved`] stays in one chunk.
    pub fn reserve(
        &mut self,
        output: usize,
        tag: &str,
        from: Option<FileId>,
        len: u64,
        now_ms: i64,
    ) -> Result<u64, BufferError> {
        let mut seq = self.open_chunk(output, tag, from, now_ms)?;
        if self.room(seq) < len {
            self.seal(seq);
            seq = self.open_chunk(output, tag, from, now_ms)?;
        }
        // What ends the chunk now is not known line by line.
        self.forget_tail(seq, from);
        Ok(seq)
    }

    /// Seals the open chunks that are due: `due_ms` says when each one is (ms since the epoch).
    /// In an output that keeps records whole, a chunk whose last record may still continue (its
    /// file wrote to it less than `hold_ms` ago) is sealed without that record, which moves
    /// to a chunk of its own and waits there; a chunk that holds nothing else waits, at most
    /// [`HOLD_MAX_MS`] past its due time. Returns how many chunks were sealed.
    pub fn seal_due(&mut self, now_ms: i64, due_ms: impl Fn(&ChunkMeta) -> i64) -> Result<usize, BufferError> {
        let mut due: Vec<(u64, bool)> = Vec::new();
        for c in self.open.values().filter_map(|seq| self.state.chunks.get(seq)) {
            let at = due_ms(c);
            if c.sealed || c.len == 0 || now_ms < at {
                continue;
            }
            let holding = self
                .held_until(c)
                .is_some_and(|h| now_ms < h && now_ms < at + HOLD_MAX_MS);
            due.push((c.seq, holding));
        }
        // Sealed (and so delivered) in the order they were opened.
        due.sort_unstable();
        let mut sealed = 0;
        for (seq, holding) in due {
            if !holding {
                self.seal(seq);
                sealed += 1;
            } else if self.tails.get(&seq).is_some_and(|t| t.start > 0) {
                self.move_record(seq, now_ms)?;
                sealed += 1;
            }
        }
        Ok(sealed)
    }

    /// When the next open chunk is due to be sealed (ms since the epoch), by `due_ms` and the
    /// records it waits for (see [`ChunkStore::seal_due`]).
    pub fn next_due(&self, due_ms: impl Fn(&ChunkMeta) -> i64) -> Option<i64> {
        self.open_chunks()
            .filter(|c| c.len > 0)
            .map(|c| {
                let at = due_ms(c);
                match self.held_until(c) {
                    Some(h) if self.tails.get(&c.seq).is_some_and(|t| t.start == 0) => at.max(h.min(at + HOLD_MAX_MS)),
                    _ => at,
                }
            })
            .min()
    }

    /// Until when chunk `c` waits for more of its last record (ms since the epoch): in an
    /// output that keeps records whole, `hold_ms` after the last write of the file whose last
    /// record it holds.
    fn held_until(&self, c: &ChunkMeta) -> Option<i64> {
        let t = self.tails.get(&c.seq)?;
        let output = self.outputs_index(&c.output);
        let hold = self.outputs.get(output)?.hold_ms?;
        (self.last_chunk.get(&(output, t.file)) == Some(&c.seq)).then_some(c.last_write_ms + hold)
    }

    /// Writes part of a reserved long line.
    pub fn append_reserved(&mut self, seq: u64, bytes: &[u8], now_ms: i64) -> Result<(), BufferError> {
        self.write_to(seq, bytes, now_ms)
    }

    /// Ends an open chunk: nothing more is added to it (it ends with a line without a newline,
    /// which no other line may run on into).
    pub fn end_chunk(&mut self, seq: u64) {
        self.seal(seq);
    }

    /// Seals one chunk: it takes no more data and will be dispatched after the next commit.
    /// Older open chunks of the same stream (output, tag, file) are sealed first: a stream's
    /// chunks are delivered in the order they were opened, so a file's lines arrive in order even
    /// when a younger chunk fills up (or ends with a half line) before an older one is due.
    fn seal(&mut self, seq: u64) {
        if self.state.chunks.get(&seq).is_none_or(|c| c.sealed) {
            return;
        }
        let c = self.state.chunks.get(&seq).expect("exists");
        let (output, tag, timekey, file) = (c.output.clone(), c.tag.clone(), c.timekey, c.file);
        let output = self.outputs_index(&output);
        let key = self.open_key(output, &tag, timekey, file);
        let stream = (key.0, key.1.clone(), key.3);
        if let Some(open) = self.streams.get_mut(&stream) {
            open.remove(&seq);
            let older: Vec<u64> = open.range(..seq).copied().collect();
            for s in older {
                self.seal(s);
            }
            if self.streams.get(&stream).is_some_and(|o| o.is_empty()) {
                self.streams.remove(&stream);
            }
        }
        self.state.chunks.get_mut(&seq).expect("exists").sealed = true;
        self.open.remove(&key);
        self.tails.remove(&seq);
        if let Some(f) = file
            && self.last_chunk.get(&(output, f)) == Some(&seq)
        {
            self.last_chunk.remove(&(output, f));
        }
        self.newly_sealed.push(seq);
    }

    fn outputs_index(&self, name: &str) -> usize {
        self.outputs.iter().position(|o| o.name == name).unwrap_or(usize::MAX)
    }

    /// Seals the open chunks that `is_due(chunk)` says are ready; returns how many.
    pub fn seal_where(&mut self, mut is_due: impl FnMut(&ChunkMeta) -> bool) -> usize {
        let due: Vec<u64> = self
            .open
            .values()
            .filter_map(|seq| self.state.chunks.get(seq))
            .filter(|c| !c.sealed && c.len > 0 && is_due(c))
            .map(|c| c.seq)
            .collect();
        // Sealed (and so delivered) in the order they were opened.
        let mut due = due;
        due.sort_unstable();
        for &seq in &due {
            self.seal(seq);
        }
        due.len()
    }

    /// The open chunks (for computing when the next one is due).
    pub fn open_chunks(&self) -> impl Iterator<Item = &ChunkMeta> {
        self.open.values().filter_map(|seq| self.state.chunks.get(seq))
    }

    /// Whether anything changed since the last commit.
    pub fn is_dirty(&self) -> bool {
        !self.newly_sealed.is_empty() || self.state.is_dirty()
    }

    /// Makes everything appended so far durable together with the checkpoint changes (new or
    /// moved positions, and files no longer followed), and returns the chunks that may now be
    /// delivered. On error nothing changed on disk: call [`ChunkStore::rollback`].
    pub fn commit(&mut self, changes: CheckpointChanges, now_ms: i64) -> Result<Vec<SealedChunk>, BufferError> {
        self.write_gathered()?;
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
        for k in &changes.removed {
            self.state.sources.remove(k);
        }
        for c in changes.set {
            self.state.sources.insert(source_key(&c), c);
        }
        let horizon = self.timekey_of(now_ms) - TIMED_COUNTER_TTL_SECS;
        let expired: Vec<journal::IndexKey> = self
            .state
            .indices
            .map()
            .iter()
            .filter(|(_, c)| c.timed && c.timekey < horizon)
            .map(|(k, _)| k.clone())
            .collect();
        for k in &expired {
            self.state.indices.remove(k);
        }
        if self.state.is_dirty() {
            crate::crashpoint::hit("before-state-write");
            self.write_state()?;
            self.state.settle();
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
        // In the order they were opened (a stream's older chunks are sealed first, see `seal`).
        let mut sealed = std::mem::take(&mut self.newly_sealed);
        sealed.sort_unstable();
        sealed.dedup();
        for seq in sealed {
            self.handles.remove(&seq);
            if let Some(c) = self.state.chunks.get(&seq) {
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
                    crc32: c.crc32,
                    secondary: c.secondary.clone(),
                });
            }
        }
        Ok(out)
    }

    /// Writes what changed: one journal record, or a new snapshot when there is none yet or
    /// the journal has grown past the snapshot's size. On a full disk the reserve is given up
    /// for this one write.
    fn write_state(&mut self) -> Result<(), BufferError> {
        crate::crashpoint::fail("state-write").map_err(|source| BufferError::Write {
            path: self.state_path.clone(),
            source,
        })?;
        let compact =
            !self.have_snapshot || self.journal.broken || self.journal.len >= self.snapshot_len.max(COMPACT_MIN_BYTES);
        if compact {
            let generation = self.state.generation + 1;
            let bytes = self.state.snapshot_bytes(generation);
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
            self.state.generation = generation;
            self.have_snapshot = true;
            self.snapshot_len = bytes.len() as u64;
            // The records left in the journal belong to the previous generation: ignored from
            // now on, and replaced here by the new generation's first record (a failure only
            // means the next snapshot comes sooner).
            let first = self.state.empty_record(generation);
            self.journal.broken = self.journal.reset(&first, self.limits.fsync).is_err();
        } else {
            let record = self.state.delta_record();
            let halfway = || crate::crashpoint::hit("journal-record-half-written");
            let mut written = self.journal.append(&record, self.limits.fsync, &halfway);
            if written.as_ref().is_err_and(|e| e.raw_os_error() == Some(libc::ENOSPC))
                && !self.journal.broken
                && fs::remove_file(self.reserve_path()).is_ok()
            {
                written = self.journal.append(&record, self.limits.fsync, &halfway);
            }
            written.map_err(|source| BufferError::Write {
                path: self.dir.join("state.journal"),
                source,
            })?;
        }
        self.state_len = self.snapshot_len + self.journal.len;
        Ok(())
    }

    /// Undoes everything since the last commit: chunk files go back to their committed length,
    /// chunks opened since are removed. The caller rewinds its read positions to the committed
    /// checkpoints.
    pub fn rollback(&mut self) {
        // Not written, not committed: the sources read it again from their checkpoints.
        self.gathered.clear();
        self.gathered_seq = None;
        for (seq, live, committed) in self.state.undo() {
            let path = self.chunk_path(seq);
            match (live, committed) {
                (_, Some(k)) => {
                    // Always cut back an open chunk, even when its recorded length did not
                    // move: a write that failed part-way (a full disk) left bytes that no
                    // length counts. Through the handle it was written with (opening it again
                    // can fail for want of a file descriptor). A cut that fails anyway leaves
                    // bytes that nothing reads: the chunk is sealed below, every output reads
                    // its first `len` bytes, and recovery cuts it.
                    let cut = crate::crashpoint::fail("chunk-cut").and_then(|()| match self.handles.get(&seq) {
                        Some(f) => f.set_len(k.len),
                        None => OpenOptions::new().write(true).open(&path)?.set_len(k.len),
                    });
                    if let Err(e) = cut {
                        tracing::warn!(path = %path.display(), error = %e, "cannot cut the chunk back to its committed length; the bytes after it are never delivered");
                    }
                }
                (Some(_), None) => {
                    let _ = fs::remove_file(&path);
                }
                (None, None) => {}
            }
        }
        // Delivered chunks stay delivered: keep them out of the restored state.
        for seq in &self.to_delete {
            self.state.chunks.remove(seq);
        }
        self.open.clear();
        self.streams.clear();
        self.tails.clear();
        self.last_chunk.clear();
        self.handles.clear();
        self.dirty.clear();
        // Chunks sealed since the commit are open again; seal them (they stay with their keys).
        let reopened: Vec<u64> = self
            .state
            .chunks
            .map()
            .values()
            .filter(|c| !c.sealed)
            .map(|c| c.seq)
            .collect();
        for &seq in &reopened {
            if let Some(c) = self.state.chunks.get_mut(&seq) {
                c.sealed = true;
            }
        }
        self.newly_sealed.retain(|s| self.state.chunks.get(s).is_some());
        self.newly_sealed.extend(reopened);
        self.total = self.state.chunks.map().values().map(|c| c.len).sum();
    }

    /// Records that chunk `seq` goes to the secondary file `file` (committed with the next
    /// commit, before the file is written).
    pub fn send_to_secondary(&mut self, seq: u64, file: PathBuf) {
        if let Some(c) = self.state.chunks.get_mut(&seq) {
            c.secondary = Some(file);
        }
    }

    /// Forgets a chunk that was delivered (or written to the secondary directory). The chunk file
    /// is deleted after the next commit.
    pub fn remove(&mut self, seq: u64) {
        if let Some(c) = self.state.chunks.remove(&seq) {
            self.total -= c.len;
            if !c.sealed {
                let key = self.open_key(self.outputs_index(&c.output), &c.tag, c.timekey, c.file);
                let stream = (key.0, key.1.clone(), key.3);
                if let Some(open) = self.streams.get_mut(&stream) {
                    open.remove(&seq);
                    if open.is_empty() {
                        self.streams.remove(&stream);
                    }
                }
                self.open.remove(&key);
            }
        }
        if self.gathered_seq == Some(seq) {
            self.gathered.clear();
            self.gathered_seq = None;
        }
        self.handles.remove(&seq);
        self.dirty.remove(&seq);
        self.tails.remove(&seq);
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
        let timekey = self.timekey_of(now_ms);
        let meta = ChunkMeta {
            sealed: true,
            delete_after,
            ..ChunkMeta::empty(seq, self.outputs[output].name.clone(), tag, timekey, key, now_ms)
        };
        self.state.chunks.insert(seq, meta);
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
        crate::crashpoint::hit("chunk-written");
        self.state.chunks.get_mut(&seq).expect("just added").len = len;
        self.total += len;
        self.handles.insert(seq, file);
        self.dirty.insert(seq);
        self.newly_sealed.push(seq);
        Ok(seq)
    }

    /// Seals the open chunks of `tag` for `output` now, so what is added next is delivered after
    /// them.
    pub fn seal_tag(&mut self, output: usize, tag: &str) {
        let mut seqs: Vec<u64> = self
            .open
            .iter()
            .filter(|((o, _, _, _), seq)| *o == output && self.state.chunks.get(seq).is_some_and(|c| c.tag == tag))
            .map(|(_, seq)| *seq)
            .collect();
        seqs.sort_unstable();
        for seq in seqs {
            if self.state.chunks.get(&seq).is_some_and(|c| c.len > 0) {
                self.seal(seq);
            }
        }
    }

    /// Whether a marker with this key was already queued for `output` (now or in an earlier run).
    pub fn marker_queued(&self, output: usize, key: &str) -> bool {
        let name = self.outputs[output].name.clone();
        self.state.markers.get(&(name, key.to_string())).is_some()
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
        let name = self.outputs[output].name.clone();
        self.state.markers.insert(
            (name.clone(), key.clone()),
            MarkerRecord {
                output: name,
                key: key.clone(),
            },
        );
        self.add_whole(output, tag, key, content, None, delete_after, now_ms)?;
        Ok(true)
    }

    /// Whether a chunk with this key is waiting for delivery to `output`.
    pub fn has_pending_key(&self, output: usize, key: &str) -> bool {
        let name = &self.outputs[output].name;
        self.state
            .chunks
            .map()
            .values()
            .any(|c| &c.output == name && c.key == key)
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

/// A store with one output keyed by tag, for tests of what reads into it.
#[cfg(test)]
pub(crate) fn test_store(dir: &Path, limit: u64) -> ChunkStore {
    tests::store(dir, limit)
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn store(dir: &Path, limit: u64) -> ChunkStore {
        let keying = OutputKeying {
            name: "out".into(),
            template: KeyTemplate::parse("%{tag}/%{index}").unwrap(),
            path: String::new(),
            time_slice_format: "%Y".into(),
            file_extension: "txt".into(),
            index_start: 1,
            by_tag: true,
            destination: "file:///out".into(),
            crc32: true,
            hold_ms: None,
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
        s.append(0, "t", None, Cut::LineEnd, b"aaaa\nbbbb\ncccc\n", 1_000)
            .unwrap();
        let sealed = s.commit(CheckpointChanges::none(), 1_000).unwrap();
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
        s.append(0, "t", None, Cut::LineEnd, b"a\n", 1_000).unwrap();
        s.append(0, "t", None, Cut::LineEnd, b"b\n", 31_000).unwrap();
        assert_eq!(s.open_chunks().count(), 2);
    }

    #[test]
    fn rollback_restores_committed_lengths_and_recovery_truncates() {
        let d = tempfile::tempdir().unwrap();
        {
            let mut s = store(d.path(), 1000);
            s.append(0, "t", None, Cut::LineEnd, b"committed\n", 1_000).unwrap();
            s.commit(CheckpointChanges::none(), 1_000).unwrap();
            s.append(0, "t", None, Cut::LineEnd, b"lost\n", 1_000).unwrap();
            s.append(0, "u", None, Cut::LineEnd, b"other\n", 1_000).unwrap();
            s.rollback();
            assert_eq!(s.chunks().len(), 1);
            assert_eq!(fs::read(s.chunk_path(0)).unwrap(), b"committed\n");
            assert!(!s.chunk_path(1).exists());
            s.append(0, "t", None, Cut::LineEnd, b"uncommitted\n", 1_000).unwrap();
            // Dropped without commit: as if killed.
        }
        let mut s = store(d.path(), 1000);
        let sealed = s.commit(CheckpointChanges::none(), 2_000).unwrap();
        assert_eq!(sealed.len(), 1, "the recovered chunk is sealed and dispatched");
        assert_eq!(fs::read(&sealed[0].path).unwrap(), b"committed\n");
        assert_eq!(sealed[0].key, "t/1");
        // The index counter was persisted: the next chunk gets 2, never 1 again.
        s.append(0, "t", None, Cut::LineEnd, b"next\n", 3_000).unwrap();
        assert_eq!(s.open_chunks().next().unwrap().key, "t/2");
    }

    /// The CRC32 kept while writing is the CRC32 of the chunk's bytes: over gathered and direct
    /// writes, after a rollback, after a restart cut back uncommitted bytes, and gone (`None`)
    /// when recovery finds the file shorter than its committed length.
    #[test]
    fn the_kept_crc32_is_the_crc32_of_the_chunk_bytes() {
        let crc = |p: &Path| crc32fast::hash(&fs::read(p).unwrap());
        let d = tempfile::tempdir().unwrap();
        let big = vec![b'x'; GATHER_MAX];
        {
            let mut s = store(d.path(), 1 << 20);
            s.append(0, "t", None, Cut::LineEnd, b"small\n", 1_000).unwrap();
            s.append(0, "t", None, Cut::Anywhere, &big, 1_000).unwrap();
            s.append(0, "t", None, Cut::LineEnd, b"line\n", 1_000).unwrap();
            s.commit(CheckpointChanges::none(), 1_000).unwrap();
            let c = &s.state.chunks.map()[&0];
            assert_eq!(c.len, 11 + GATHER_MAX as u64);
            assert_eq!(c.crc32, Some(crc(&s.chunk_path(0))));
            let committed = c.crc32;
            s.append(0, "t", None, Cut::LineEnd, b"lost\n", 1_000).unwrap();
            assert_ne!(s.state.chunks.map()[&0].crc32, committed);
            s.rollback();
            assert_eq!(s.state.chunks.map()[&0].crc32, committed);
            s.append(0, "t", None, Cut::LineEnd, b"kept\n", 1_000).unwrap();
            s.commit(CheckpointChanges::none(), 1_000).unwrap();
            s.append(0, "t", None, Cut::Anywhere, &big, 1_000).unwrap();
            s.append(0, "u", None, Cut::LineEnd, b"other\n", 1_000).unwrap();
            // Dropped without commit: as if killed.
        }
        let mut s = store(d.path(), 1 << 20);
        let sealed = s.commit(CheckpointChanges::none(), 2_000).unwrap();
        // A rollback closes the open chunks: "kept" went into a second one, cut back to it.
        let lens: Vec<u64> = sealed.iter().map(|c| fs::metadata(&c.path).unwrap().len()).collect();
        assert_eq!(lens, [11 + GATHER_MAX as u64, 5]);
        for c in &sealed {
            assert_eq!(c.crc32, Some(crc(&c.path)), "{}", c.key);
        }
        // A file shorter than its committed length: what is left has no kept CRC32.
        fs::OpenOptions::new()
            .write(true)
            .open(&sealed[0].path)
            .unwrap()
            .set_len(5)
            .unwrap();
        drop(s);
        let mut s = store(d.path(), 1 << 20);
        let sealed = s.commit(CheckpointChanges::none(), 3_000).unwrap();
        assert_eq!((sealed[0].len, sealed[0].crc32), (5, None));
        // Outputs that do not send it keep none.
        let d = tempfile::tempdir().unwrap();
        let mut keying = s.outputs[0].clone();
        keying.crc32 = false;
        let limits = s.limits;
        drop(s);
        let mut s = ChunkStore::open(d.path(), limits, vec![keying]).unwrap();
        s.append(0, "t", None, Cut::LineEnd, b"a\n", 1_000).unwrap();
        s.seal_tag(0, "t");
        assert_eq!(s.commit(CheckpointChanges::none(), 1_000).unwrap()[0].crc32, None);
    }

    /// A rollback that cannot cut a chunk back (no file descriptor left) leaves bytes after its
    /// committed length that nothing ever delivers: the chunk is sealed with its committed length
    /// and CRC32, and what an output reads of it is exactly the committed bytes. (A run following
    /// 10,000 files once sent such a chunk, longer than committed, to the secondary directory.)
    #[test]
    fn a_rollback_that_cannot_cut_a_chunk_leaves_bytes_that_are_never_delivered() {
        let d = tempfile::tempdir().unwrap();
        let mut s = store(d.path(), 1 << 20);
        s.append(0, "t", None, Cut::LineEnd, b"committed\n", 1_000).unwrap();
        s.commit(CheckpointChanges::none(), 1_000).unwrap();
        s.append(0, "t", None, Cut::LineEnd, &b"undone\n".repeat(10_000), 1_000)
            .unwrap();
        crate::crashpoint::arm_fault("chunk-cut", 1, libc::EMFILE);
        s.rollback();
        crate::crashpoint::disarm();
        let sealed = s.commit(CheckpointChanges::none(), 2_000).unwrap();
        let c = sealed.iter().find(|c| c.seq == 0).expect("sealed by the rollback");
        assert_eq!(c.len, 10);
        assert!(fs::metadata(&c.path).unwrap().len() > 10, "the cut failed");
        assert_eq!(c.crc32, Some(crc32fast::hash(b"committed\n")));
        let (file, len) = crate::sink::compress::prepare(&c.path, c.len, crate::config::StoreAs::Text, None).unwrap();
        assert_eq!(fs::read(file).unwrap()[..len as usize], *b"committed\n");
        let (gz, _) = crate::sink::compress::prepare(&c.path, c.len, crate::config::StoreAs::Gzip, None).unwrap();
        let mut out = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(fs::File::open(gz).unwrap()), &mut out).unwrap();
        assert_eq!(out, b"committed\n");
        // A restart cuts it.
        drop(s);
        let _s = store(d.path(), 1 << 20);
        assert_eq!(fs::metadata(d.path().join("chunks/0.chunk")).unwrap().len(), 10);
    }

    /// Small appends wait in memory for one write (before the commit, before an append to
    /// another chunk, or before a large append, which is written directly and after them); what
    /// a rollback undoes was never written.
    #[test]
    fn small_appends_are_gathered_written_in_order_and_dropped_by_a_rollback() {
        let d = tempfile::tempdir().unwrap();
        let mut s = store(d.path(), 1 << 20);
        let big: Vec<u8> = b"0123456789abcde\n".repeat(GATHER_MAX / 16 / 2 + 1);
        s.append(0, "t", None, Cut::LineEnd, b"a1\n", 1_000).unwrap();
        s.append(0, "u", None, Cut::LineEnd, b"b1\n", 1_000).unwrap();
        s.append(0, "t", None, Cut::LineEnd, b"a2\n", 1_000).unwrap();
        s.append(0, "t", None, Cut::LineEnd, &big, 1_000).unwrap();
        s.append(0, "t", None, Cut::LineEnd, b"a3\n", 1_000).unwrap();
        let (t, u) = (s.chunk_path(0), s.chunk_path(1));
        let expected_t = [b"a1\na2\n".as_slice(), &big, b"a3\n"].concat();
        // Before the commit: the last small append is still gathered.
        assert_eq!(fs::read(&t).unwrap(), &expected_t[..expected_t.len() - 3]);
        assert_eq!(fs::read(&u).unwrap(), b"b1\n");
        assert_eq!(s.chunk(0).unwrap().len, expected_t.len() as u64);
        s.commit(CheckpointChanges::none(), 1_000).unwrap();
        assert_eq!(fs::read(&t).unwrap(), expected_t);
        // Gathered, then rolled back: never written; what follows lands after the committed bytes.
        s.append(0, "t", None, Cut::LineEnd, b"undone\n", 1_000).unwrap();
        s.rollback();
        assert_eq!(fs::read(&t).unwrap(), expected_t);
        s.append(0, "t", None, Cut::LineEnd, b"after\n", 2_000).unwrap();
        let sealed = s.commit(CheckpointChanges::none(), 2_000).unwrap();
        let t_sealed = sealed
            .iter()
            .find(|c| c.seq == 0)
            .expect("the rollback sealed t's chunk");
        assert_eq!(fs::read(&t_sealed.path).unwrap(), expected_t);
        let open = s.open_chunks().next().unwrap().seq;
        assert_eq!(fs::read(s.chunk_path(open)).unwrap(), b"after\n");
    }

    fn checkpoint(ino: u64, pos: u64) -> SourceCheckpoint {
        SourceCheckpoint {
            id: crate::fsutil::FileId { dev: 1, ino },
            fp_len: 0,
            fp: 0,
            pos,
            path: Path::new(&format!("/var/log/pods/ns_pod-{ino}_uid/c/0.log")).into(),
            tag: format!("pod-{ino}").into(),
            source: "pods".into(),
        }
    }

    fn journal_len(dir: &Path) -> u64 {
        fs::metadata(dir.join("state.journal")).unwrap().len()
    }

    /// With thousands of files followed, a commit that moves one position writes a record of
    /// about one checkpoint, not the whole state; and a restart sees exactly what was committed.
    #[test]
    fn a_commit_writes_what_changed_and_a_restart_reads_it_back() {
        let d = tempfile::tempdir().unwrap();
        let all: Vec<SourceCheckpoint> = (0..5000).map(|i| checkpoint(i, 100)).collect();
        {
            let mut s = store(d.path(), 1000);
            s.commit(
                CheckpointChanges {
                    set: all.clone(),
                    removed: vec![],
                },
                1_000,
            )
            .unwrap();
            let snapshot = fs::metadata(d.path().join("state.json")).unwrap().len();
            assert!(
                snapshot > 500_000,
                "the snapshot holds every checkpoint ({snapshot} bytes)"
            );
            assert!(journal_len(d.path()) < 200, "only the snapshot's first record");
            for round in 1..=50u64 {
                let before = journal_len(d.path());
                s.append(0, "pod-7", None, Cut::LineEnd, b"line\n", 1_000).unwrap();
                let moved = CheckpointChanges {
                    set: vec![checkpoint(7, 100 + 5 * round)],
                    removed: if round == 50 {
                        vec![source_key(&checkpoint(9, 100))]
                    } else {
                        vec![]
                    },
                };
                s.commit(moved, 1_000).unwrap();
                let record = journal_len(d.path()) - before;
                assert!(
                    record < 1024,
                    "round {round}: a record of {record} bytes for one checkpoint"
                );
            }
            // Nothing changed: nothing written.
            let before = journal_len(d.path());
            s.commit(CheckpointChanges::none(), 1_000).unwrap();
            assert_eq!(journal_len(d.path()), before);
        }
        let s = store(d.path(), 1000);
        let cps = s.checkpoints();
        assert_eq!(cps.len(), 4999);
        assert_eq!(cps[&source_key(&checkpoint(7, 0))].pos, 350);
        assert_eq!(cps[&source_key(&checkpoint(8, 0))].pos, 100);
        assert!(!cps.contains_key(&source_key(&checkpoint(9, 100))));
        let chunk = s.chunks().next().unwrap();
        assert_eq!(fs::read(s.chunk_path(chunk.seq)).unwrap(), b"line\n".repeat(50));
    }

    /// A journal that outgrows the snapshot is folded into a new snapshot; records left from
    /// before it (a crash between the snapshot's rename and the journal's truncation) are not
    /// applied again, and a torn record at the end is cut off.
    #[test]
    fn the_journal_is_folded_into_a_snapshot_and_old_or_torn_records_are_ignored() {
        let d = tempfile::tempdir().unwrap();
        let (old_journal, positions) = {
            let mut s = store(d.path(), 1 << 20);
            s.commit(
                CheckpointChanges {
                    set: vec![checkpoint(1, 0)],
                    removed: vec![],
                },
                1_000,
            )
            .unwrap();
            let mut old_journal = Vec::new();
            let mut snapshots = 0;
            let mut last_len = 0;
            for round in 1..=2000u64 {
                s.append(0, "pod-1", None, Cut::LineEnd, b"x\n", 1_000).unwrap();
                let moved = CheckpointChanges {
                    set: vec![checkpoint(1, 2 * round)],
                    removed: vec![],
                };
                s.commit(moved, 1_000).unwrap();
                let len = journal_len(d.path());
                if len < last_len {
                    snapshots += 1;
                    if old_journal.is_empty() {
                        // Keep the first generation's records, to put back later.
                        old_journal = fs::read(d.path().join("state.journal.old")).unwrap_or_default();
                    }
                }
                if snapshots == 0 {
                    fs::copy(d.path().join("state.journal"), d.path().join("state.journal.old")).unwrap();
                }
                last_len = len;
            }
            assert!(snapshots >= 2, "the journal was folded {snapshots} times");
            assert!(last_len < COMPACT_MIN_BYTES + 1024);
            (old_journal, 4000)
        };
        assert!(!old_journal.is_empty());
        let current = fs::read(d.path().join("state.journal")).unwrap();
        // The current records with a torn record after them: all current ones apply.
        let mut torn = current.clone();
        torn.extend_from_slice(&current[..current.len().min(20)]);
        fs::write(d.path().join("state.journal"), &torn).unwrap();
        let s = store(d.path(), 1 << 20);
        assert_eq!(s.checkpoints()[&source_key(&checkpoint(1, 0))].pos, positions);
        assert_eq!(
            journal_len(d.path()),
            current.len() as u64,
            "the torn record was cut off"
        );
        let chunk = s.chunks().next().unwrap();
        assert_eq!(fs::read(s.chunk_path(chunk.seq)).unwrap(), b"x\n".repeat(2000));
        drop(s);
        // A crash between the snapshot's rename and the journal's truncation: the journal
        // still holds the previous generation's records. They must not be applied.
        fs::write(d.path().join("state.journal"), &old_journal).unwrap();
        let snapshot = StateFile::load(&d.path().join("state.json")).unwrap();
        let s = store(d.path(), 1 << 20);
        assert_eq!(
            s.checkpoints()[&source_key(&checkpoint(1, 0))].pos,
            snapshot.sources[0].pos,
            "only the snapshot counts"
        );
        assert_eq!(journal_len(d.path()), 0);
    }

    /// A buffer left by a logship that writes version 2 (whole checkpoints in its records) is
    /// read, journal and all; the first commit replaces its snapshot with a version-3 one, so
    /// the records in the new form (positions alone) never follow a snapshot that a version-2
    /// logship would read without them.
    #[test]
    fn a_version_2_state_is_read_and_its_first_commit_writes_a_version_3_snapshot() {
        let d = tempfile::tempdir().unwrap();
        let old = StateFile {
            version: 2,
            generation: 4,
            sources: vec![checkpoint(1, 10), checkpoint(2, 10)],
            ..Default::default()
        };
        fs::write(d.path().join("state.json"), serde_json::to_vec(&old).unwrap()).unwrap();
        let payload = serde_json::to_vec(&serde_json::json!({
            "generation": 4,
            "next_seq": 0,
            "sources": [checkpoint(1, 20)],
            "destinations": {},
        }))
        .unwrap();
        let mut record = (payload.len() as u32).to_le_bytes().to_vec();
        record.extend_from_slice(&crate::fsutil::fnv1a(&payload).to_le_bytes());
        record.extend_from_slice(&payload);
        fs::write(d.path().join("state.journal"), &record).unwrap();
        let version = |d: &Path| StateFile::load(&d.join("state.json")).unwrap().version;
        {
            let mut s = store(d.path(), 1000);
            assert_eq!(s.checkpoints()[&source_key(&checkpoint(1, 0))].pos, 20);
            assert_eq!(version(d.path()), 2, "read as it is");
            let moved = |pos| CheckpointChanges {
                set: vec![checkpoint(1, pos)],
                removed: vec![],
            };
            s.commit(moved(30), 1_000).unwrap();
            assert_eq!(version(d.path()), state::STATE_VERSION);
            let journal = fs::read(d.path().join("state.journal")).unwrap();
            assert!(
                journal.len() < 120 && !journal.windows(9).any(|w| w == b"\"sources\""),
                "folded into the new snapshot: only its first record follows"
            );
            s.commit(moved(40), 1_000).unwrap();
            let journal = fs::read(d.path().join("state.journal")).unwrap();
            assert!(journal.windows(7).any(|w| w == b"\"moved\""), "the new form follows");
        }
        let s = store(d.path(), 1000);
        assert_eq!(s.checkpoints()[&source_key(&checkpoint(1, 0))].pos, 40);
        assert_eq!(s.checkpoints()[&source_key(&checkpoint(2, 0))].pos, 10);
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
            by_tag: true,
            destination: "file:///out".into(),
            crc32: false,
            hold_ms: None,
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

#[cfg(test)]
mod record_tests {
    use super::tests::store;
    use super::*;

    /// Appends `text` from one file in pieces of whole lines (as reads of `block` bytes cut at
    /// their last newline give them), committing now and then; returns the sealed chunks'
    /// contents in delivery order.
    fn chunks_of(text: &[u8], block: usize, limit: u64, rule: &RecordRule, seed: u64) -> Vec<Vec<u8>> {
        let d = tempfile::tempdir().unwrap();
        let mut s = store(d.path(), limit);
        let file = FileId { dev: 1, ino: 7 };
        let mut rng = fastrand::Rng::with_seed(seed);
        let mut pos = 0;
        let mut out: Vec<(u64, Vec<u8>)> = Vec::new();
        let mut take = |s: &mut ChunkStore, sealed: Vec<SealedChunk>| {
            for c in sealed {
                let mut bytes = fs::read(&c.path).unwrap();
                bytes.truncate(c.len as usize);
                out.push((c.seq, bytes));
                s.remove(c.seq);
            }
        };
        while pos < text.len() {
            let end = (pos + rng.usize(1..=block)).min(text.len());
            let Some(nl) = memchr::memrchr(b'\n', &text[pos..end]) else {
                // A line longer than the block: take it whole.
                let nl = memchr::memchr(b'\n', &text[pos..]).unwrap();
                s.append(0, "t", Some(file), Cut::RecordStart(rule), &text[pos..=pos + nl], 1_000)
                    .unwrap();
                pos += nl + 1;
                continue;
            };
            s.append(0, "t", Some(file), Cut::RecordStart(rule), &text[pos..=pos + nl], 1_000)
                .unwrap();
            pos += nl + 1;
            if rng.u8(..4) == 0 {
                let sealed = s.commit(CheckpointChanges::none(), 1_000).unwrap();
                take(&mut s, sealed);
            }
        }
        s.seal_all();
        let sealed = s.commit(CheckpointChanges::none(), 1_000).unwrap();
        take(&mut s, sealed);
        out.sort_by_key(|(seq, _)| *seq);
        out.into_iter().map(|(_, b)| b).collect()
    }

    /// Full chunks end between records: lines that continue the record at a full chunk's end
    /// take the record with them into the next chunk, and the bytes are the file's, in order.
    #[test]
    fn full_chunks_end_between_records_and_keep_the_bytes() {
        let rule = RecordRule::Auto;
        let mut text = Vec::new();
        for i in 0..400 {
            text.extend_from_slice(format!("26/12/01 10:00:00 INFO line {i}\n").as_bytes());
            if i % 3 == 0 {
                for j in 0..(i % 7) {
                    text.extend_from_slice(format!("\tat frame {j} of {i}\n").as_bytes());
                }
            }
        }
        for seed in 0..50 {
            let chunks = chunks_of(&text, 300, 1000, &rule, seed);
            assert_eq!(chunks.concat(), text, "seed {seed}");
            for (n, c) in chunks.iter().enumerate() {
                assert!(
                    c.starts_with(b"26/"),
                    "seed {seed}: chunk {n} starts inside a record: {:?}",
                    String::from_utf8_lossy(&c[..c.len().min(40)])
                );
            }
        }
    }
}
