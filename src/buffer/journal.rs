//! The buffer state in memory, and how a commit makes it durable at the cost of what changed.
//!
//! [`LiveState`] keeps the state in keyed maps ([`Tracked`]) that remember each entry's value as
//! of the last commit the first time it changes. A commit writes only those entries, as one
//! record appended to `state.journal`: `[payload length: u32 LE][FNV-1a 64 of the payload: u64
//! LE][payload: JSON of a StateDelta]`, then fdatasync. A checkpoint whose position alone moved
//! (what a followed file's growth changes) is written as its key and position (`moved`), not
//! whole: a busy node forwarder moves thousands a second, and the whole checkpoint (its path,
//! fingerprint, field names) was three times the bytes to format, write and, through the
//! snapshots the journal's growth brings, compact. A record is whole or it is not there: a
//! crash in the middle of an append leaves a record whose length or checksum does not hold,
//! which recovery drops (with everything after it) and cuts off, so the commit it carried simply
//! did not happen. A rollback puts the remembered values back.
//!
//! When the journal has grown past the snapshot's size (at least [`COMPACT_MIN_BYTES`]), the
//! commit writes a new snapshot instead (`state.json`: temporary file, fsync, rename) with the
//! next `generation`, and empties the journal. Records carry the generation they follow, so a
//! crash between the snapshot's rename and the journal's truncation leaves records that are
//! ignored, never applied twice. Each commit therefore costs what changed, plus a share of a
//! snapshot that is paid once per snapshot-size of records.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufReader, Read};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::state::{
    ChunkMeta, IndexCounter, MarkerRecord, STATE_VERSION, SourceCheckpoint, SourceKey, StateFile, source_key,
};
use crate::fsutil::{FileId, fnv1a};

/// The journal never waits for a snapshot before it holds this much (small states would
/// otherwise be rewritten whole every few commits).
pub const COMPACT_MIN_BYTES: u64 = 64 << 10;

/// A record header: payload length and checksum.
const HEADER: usize = 12;

/// Largest payload accepted when reading (a length beyond it is a torn or foreign record).
const MAX_RECORD: u32 = 1 << 30;

/// A map that remembers, for every key changed since [`Tracked::settle`], the value it had then.
#[derive(Debug, Clone)]
pub struct Tracked<K: Ord + Clone, V: Clone + PartialEq> {
    map: BTreeMap<K, V>,
    before: BTreeMap<K, Option<V>>,
}

impl<K: Ord + Clone, V: Clone + PartialEq> Tracked<K, V> {
    /// A map whose entries count as committed.
    pub fn new(map: BTreeMap<K, V>) -> Self {
        Tracked {
            map,
            before: BTreeMap::new(),
        }
    }

    fn note(&mut self, k: &K) {
        if !self.before.contains_key(k) {
            self.before.insert(k.clone(), self.map.get(k).cloned());
        }
    }

    /// The entry for `k`.
    pub fn get(&self, k: &K) -> Option<&V> {
        self.map.get(k)
    }

    /// The entry for `k`, to change.
    pub fn get_mut(&mut self, k: &K) -> Option<&mut V> {
        if !self.map.contains_key(k) {
            return None;
        }
        self.note(k);
        self.map.get_mut(k)
    }

    /// Sets the entry for `k`. Two lookups when it replaces an entry, and no copy of the key or
    /// of the value it replaces: a busy node forwarder sets thousands of checkpoints a second
    /// (keys of two strings, values of three).
    pub fn insert(&mut self, k: K, v: V) {
        match self.map.get_mut(&k) {
            Some(cur) if *cur == v => {}
            Some(cur) => match self.before.entry(k) {
                // The value it replaces is the committed one: kept, not copied.
                std::collections::btree_map::Entry::Vacant(e) => {
                    e.insert(Some(std::mem::replace(cur, v)));
                }
                std::collections::btree_map::Entry::Occupied(_) => *cur = v,
            },
            None => {
                self.note(&k);
                self.map.insert(k, v);
            }
        }
    }

    /// Removes the entry for `k`.
    pub fn remove(&mut self, k: &K) -> Option<V> {
        if !self.map.contains_key(k) {
            return None;
        }
        self.note(k);
        self.map.remove(k)
    }

    /// The entries in key order.
    pub fn map(&self) -> &BTreeMap<K, V> {
        &self.map
    }

    /// Entries changed or added since the last settle, each with its value as of then (none
    /// when added), and keys removed.
    pub fn changes_since(&self) -> (Vec<(&V, Option<&V>)>, Vec<&K>) {
        let (mut set, mut gone) = (Vec::new(), Vec::new());
        for (k, old) in &self.before {
            match (self.map.get(k), old) {
                (Some(v), Some(o)) if v == o => {}
                (Some(v), o) => set.push((v, o.as_ref())),
                (None, Some(_)) => gone.push(k),
                (None, None) => {}
            }
        }
        (set, gone)
    }

    /// Entries changed or added since the last settle, and keys removed.
    pub fn changes(&self) -> (Vec<&V>, Vec<&K>) {
        let (set, gone) = self.changes_since();
        (set.into_iter().map(|(v, _)| v).collect(), gone)
    }

    /// Whether anything differs from the last settle.
    pub fn is_dirty(&self) -> bool {
        self.before.iter().any(|(k, old)| self.map.get(k) != old.as_ref())
    }

    /// The current values are the committed ones.
    pub fn settle(&mut self) {
        self.before.clear();
    }

    /// Puts back the values of the last settle; returns, per changed key, the value it had
    /// before the undo and the one it has now.
    pub fn undo(&mut self) -> Vec<(K, Option<V>, Option<V>)> {
        let mut out = Vec::with_capacity(self.before.len());
        for (k, old) in std::mem::take(&mut self.before) {
            let was = match &old {
                Some(v) => self.map.insert(k.clone(), v.clone()),
                None => self.map.remove(&k),
            };
            out.push((k, was, old));
        }
        out
    }
}

/// The index-counter key: output and key prefix.
pub type IndexKey = (String, String);
/// The marker key: output and object key.
pub type MarkerKey = (String, String);

/// The whole buffer state, keyed, with what changed since the last commit.
#[derive(Debug, Clone)]
pub struct LiveState {
    /// The snapshot the journal's records follow.
    pub generation: u64,
    /// The sequence number the next chunk gets.
    pub next_seq: u64,
    committed_next_seq: u64,
    /// Tail checkpoints.
    pub sources: Tracked<SourceKey, SourceCheckpoint>,
    /// Chunks not yet delivered, by sequence number (creation order).
    pub chunks: Tracked<u64, ChunkMeta>,
    /// `%{index}` counters.
    pub indices: Tracked<IndexKey, IndexCounter>,
    /// Markers already queued.
    pub markers: Tracked<MarkerKey, MarkerRecord>,
    /// Each output's destination.
    pub destinations: BTreeMap<String, String>,
    committed_destinations: BTreeMap<String, String>,
}

/// A checkpoint whose position alone changed, as a record reads it: (source, dev, ino, tag, pos).
type MovedRecord = (Arc<str>, u64, u64, Arc<str>, u64);

/// What one commit changed: a journal record's payload (owned, as read back).
#[derive(Debug, Default, Deserialize)]
struct StateDelta {
    generation: u64,
    next_seq: u64,
    #[serde(default)]
    sources: Vec<SourceCheckpoint>,
    #[serde(default)]
    sources_removed: Vec<SourceKey>,
    /// Checkpoints whose position alone changed.
    #[serde(default)]
    moved: Vec<MovedRecord>,
    #[serde(default)]
    chunks: Vec<ChunkMeta>,
    #[serde(default)]
    chunks_removed: Vec<u64>,
    #[serde(default)]
    indices: Vec<IndexCounter>,
    #[serde(default)]
    indices_removed: Vec<IndexKey>,
    #[serde(default)]
    markers: Vec<MarkerRecord>,
    #[serde(default)]
    markers_removed: Vec<MarkerKey>,
    destinations: BTreeMap<String, String>,
}

/// [`StateDelta`] as written: borrowed from the live state.
#[derive(Serialize)]
struct StateDeltaRef<'a> {
    generation: u64,
    next_seq: u64,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    sources: Vec<&'a SourceCheckpoint>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    sources_removed: Vec<&'a SourceKey>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    moved: Vec<Moved<'a>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    chunks: Vec<&'a ChunkMeta>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    chunks_removed: Vec<&'a u64>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    indices: Vec<&'a IndexCounter>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    indices_removed: Vec<&'a IndexKey>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    markers: Vec<&'a MarkerRecord>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    markers_removed: Vec<&'a MarkerKey>,
    destinations: &'a BTreeMap<String, String>,
}

/// A checkpoint whose position alone moved, as a record carries it: (source, dev, ino, tag, pos).
type Moved<'a> = (&'a str, u64, u64, &'a str, u64);

/// Whether `now` differs from `was` (the same key) in its position alone.
fn moved_only(was: &SourceCheckpoint, now: &SourceCheckpoint) -> bool {
    was.fp_len == now.fp_len && was.fp == now.fp && was.path == now.path
}

/// [`StateFile`] as written: borrowed from the live state (same field names).
#[derive(Serialize)]
struct SnapshotRef<'a> {
    version: u32,
    generation: u64,
    next_seq: u64,
    sources: Vec<&'a SourceCheckpoint>,
    chunks: Vec<&'a ChunkMeta>,
    indices: Vec<&'a IndexCounter>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    markers: Vec<&'a MarkerRecord>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    destinations: &'a BTreeMap<String, String>,
}

fn index_key(c: &IndexCounter) -> IndexKey {
    (c.output.clone(), c.prefix.clone())
}

fn marker_key(m: &MarkerRecord) -> MarkerKey {
    (m.output.clone(), m.key.clone())
}

impl LiveState {
    /// The state a snapshot holds, all of it committed.
    pub fn from_snapshot(s: StateFile) -> LiveState {
        LiveState {
            generation: s.generation,
            next_seq: s.next_seq,
            committed_next_seq: s.next_seq,
            sources: Tracked::new(s.sources.into_iter().map(|c| (source_key(&c), c)).collect()),
            chunks: Tracked::new(s.chunks.into_iter().map(|c| (c.seq, c)).collect()),
            indices: Tracked::new(s.indices.into_iter().map(|c| (index_key(&c), c)).collect()),
            markers: Tracked::new(s.markers.into_iter().map(|m| (marker_key(&m), m)).collect()),
            committed_destinations: s.destinations.clone(),
            destinations: s.destinations,
        }
    }

    /// Whether anything changed since the last commit.
    pub fn is_dirty(&self) -> bool {
        self.next_seq != self.committed_next_seq
            || self.destinations != self.committed_destinations
            || self.chunks.is_dirty()
            || self.sources.is_dirty()
            || self.indices.is_dirty()
            || self.markers.is_dirty()
    }

    /// The snapshot of everything, as `state.json` holds it, for generation `generation`.
    pub fn snapshot_bytes(&self, generation: u64) -> Vec<u8> {
        let s = SnapshotRef {
            version: STATE_VERSION,
            generation,
            next_seq: self.next_seq,
            sources: self.sources.map().values().collect(),
            chunks: self.chunks.map().values().collect(),
            indices: self.indices.map().values().collect(),
            markers: self.markers.map().values().collect(),
            destinations: &self.destinations,
        };
        super::state::with_checksum(serde_json::to_vec(&s).expect("state serializes"))
    }

    /// A journal record that changes nothing: the first record after snapshot `generation`, so
    /// that a journal always holds at least one record once there is a snapshot (one without
    /// it is then known to be gone, see [`STATE_VERSION`]).
    pub fn empty_record(&self, generation: u64) -> Vec<u8> {
        let d = StateDeltaRef {
            generation,
            next_seq: self.next_seq,
            sources: Vec::new(),
            sources_removed: Vec::new(),
            moved: Vec::new(),
            chunks: Vec::new(),
            chunks_removed: Vec::new(),
            indices: Vec::new(),
            indices_removed: Vec::new(),
            markers: Vec::new(),
            markers_removed: Vec::new(),
            destinations: &self.destinations,
        };
        frame(&d)
    }

    /// A journal record (header and payload) of what changed since the last commit.
    pub fn delta_record(&self) -> Vec<u8> {
        let (changed, sources_removed) = self.sources.changes_since();
        let (mut sources, mut moved) = (Vec::new(), Vec::new());
        for (v, old) in changed {
            match old {
                Some(o) if moved_only(o, v) => moved.push((&*v.source, v.id.dev, v.id.ino, &*v.tag, v.pos)),
                _ => sources.push(v),
            }
        }
        let (chunks, chunks_removed) = self.chunks.changes();
        let (indices, indices_removed) = self.indices.changes();
        let (markers, markers_removed) = self.markers.changes();
        let d = StateDeltaRef {
            generation: self.generation,
            next_seq: self.next_seq,
            sources,
            sources_removed,
            moved,
            chunks,
            chunks_removed,
            indices,
            indices_removed,
            markers,
            markers_removed,
            destinations: &self.destinations,
        };
        frame(&d)
    }

    /// The current state is the committed one.
    pub fn settle(&mut self) {
        self.committed_next_seq = self.next_seq;
        self.committed_destinations = self.destinations.clone();
        self.sources.settle();
        self.chunks.settle();
        self.indices.settle();
        self.markers.settle();
    }

    /// Back to the last commit; returns the chunks that changed: (seq, live value before the
    /// undo, committed value now).
    pub fn undo(&mut self) -> Vec<(u64, Option<ChunkMeta>, Option<ChunkMeta>)> {
        self.next_seq = self.committed_next_seq;
        self.destinations = self.committed_destinations.clone();
        self.sources.undo();
        self.indices.undo();
        self.markers.undo();
        self.chunks.undo()
    }

    /// Applies one record; false (nothing applied) when it moves a checkpoint the state does not
    /// hold, which no record this state's commits wrote can do.
    fn apply(&mut self, d: StateDelta) -> bool {
        let mut moved = Vec::with_capacity(d.moved.len());
        for (source, dev, ino, tag, pos) in d.moved {
            let k = (source, FileId { dev, ino }, tag);
            if !self.sources.map.contains_key(&k) {
                return false;
            }
            moved.push((k, pos));
        }
        self.next_seq = d.next_seq;
        for c in d.sources {
            self.sources.insert(source_key(&c), c);
        }
        for k in &d.sources_removed {
            self.sources.remove(k);
        }
        for (k, pos) in moved {
            if let Some(c) = self.sources.map.get_mut(&k) {
                c.pos = pos;
            }
        }
        for c in d.chunks {
            self.chunks.insert(c.seq, c);
        }
        for k in &d.chunks_removed {
            self.chunks.remove(k);
        }
        for c in d.indices {
            self.indices.insert(index_key(&c), c);
        }
        for k in &d.indices_removed {
            self.indices.remove(k);
        }
        for m in d.markers {
            self.markers.insert(marker_key(&m), m);
        }
        for k in &d.markers_removed {
            self.markers.remove(k);
        }
        self.destinations = d.destinations;
        self.settle();
        true
    }

    /// Applies the records of `journal` that follow this state's snapshot, in order, up to the
    /// first one that is torn or not valid, and says why it stopped (see [`Replay`]).
    pub fn replay(&mut self, journal: &File) -> io::Result<Replay> {
        let mut r = BufReader::with_capacity(64 << 10, journal);
        let (mut good, mut applied) = (0u64, 0u64);
        let mut header = [0u8; HEADER];
        let mut payload = Vec::new();
        let end = loop {
            if !read_full(&mut r, &mut header)? {
                break if journal.metadata()?.len() == good {
                    ReplayEnd::Clean
                } else {
                    ReplayEnd::Torn
                };
            }
            let len = u32::from_le_bytes(header[..4].try_into().expect("4 bytes"));
            let sum = u64::from_le_bytes(header[4..].try_into().expect("8 bytes"));
            let rest = journal.metadata()?.len() - good - HEADER as u64;
            if u64::from(len) > rest || len > MAX_RECORD {
                // The journal ends inside the record: a torn append, unless its length is what
                // is damaged (the whole record is there, shorter than it says).
                payload.resize(rest as usize, 0);
                let whole = read_full(&mut r, &mut payload)? && checksum_of_a_prefix(&payload, sum);
                break if whole { ReplayEnd::Mismatch } else { ReplayEnd::Torn };
            }
            payload.resize(len as usize, 0);
            if !read_full(&mut r, &mut payload)? {
                break ReplayEnd::Torn;
            }
            if fnv1a(&payload) != sum {
                break ReplayEnd::Mismatch;
            }
            let Ok(d) = serde_json::from_slice::<StateDelta>(&payload) else {
                break ReplayEnd::Mismatch;
            };
            if d.generation != self.generation {
                // At the start: left from before the snapshot (a crash before the journal was
                // emptied). After good records, no commit of this logship writes that.
                break if good == 0 {
                    ReplayEnd::Stale
                } else {
                    ReplayEnd::Inconsistent
                };
            }
            if !self.apply(d) {
                break ReplayEnd::Inconsistent;
            }
            good += (HEADER + payload.len()) as u64;
            applied += 1;
        };
        let end = match end {
            // A record that does not check out is the last append, torn by a crash, only if no
            // good record of this snapshot follows it.
            ReplayEnd::Torn | ReplayEnd::Mismatch if valid_record_after(journal, good + 1, self.generation)? => {
                ReplayEnd::Damaged
            }
            e => e,
        };
        Ok(Replay { good, applied, end })
    }
}

/// What [`LiveState::replay`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Replay {
    /// Bytes of good records: the journal is cut to this length (what follows is a torn append
    /// or records of an earlier snapshot), unless `end` says it is damaged.
    pub good: u64,
    /// How many records were applied.
    pub applied: u64,
    /// Why it stopped.
    pub end: ReplayEnd,
}

/// Why a replay stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplayEnd {
    /// At the end of the journal.
    Clean,
    /// At a record that the journal ends inside (or whose header is incomplete), with nothing
    /// valid after it: the append a crash interrupted. That commit did not happen.
    Torn,
    /// At the last record, whole in length, that does not check out: what a power loss during
    /// its append can leave, but also what damage to a committed record leaves. It is undone as
    /// a torn one is, and reported: if it was committed, what it recorded is lost or repeated.
    Mismatch,
    /// At records of an earlier snapshot (a crash between a snapshot and the journal's reset).
    Stale,
    /// At a record that does not check out, with valid records of this snapshot after it: the
    /// journal was damaged, and the commits after the damage cannot be applied.
    Damaged,
    /// At a valid record that does not fit the state before it (a record of another snapshot
    /// after this one's, or one that moves a checkpoint no earlier record made): records are
    /// missing.
    Inconsistent,
}

/// Whether some prefix of `bytes` has the FNV-1a checksum `sum`: a record whose length field was
/// damaged, not an append cut short (whose bytes hash to it only when they are all there).
fn checksum_of_a_prefix(bytes: &[u8], sum: u64) -> bool {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
        if h == sum {
            return true;
        }
    }
    false
}

/// Whether a record of `generation` that checks out starts anywhere in `journal` at or after
/// `from`. Read only when a record did not check out, to tell a torn last append (nothing
/// follows it) from damage in the middle.
fn valid_record_after(journal: &File, from: u64, generation: u64) -> io::Result<bool> {
    let len = journal.metadata()?.len();
    if from >= len {
        return Ok(false);
    }
    let mut rest = vec![0u8; (len - from) as usize];
    journal.read_exact_at(&mut rest, from)?;
    for at in 0..rest.len().saturating_sub(HEADER) {
        let n = u32::from_le_bytes(rest[at..at + 4].try_into().expect("4 bytes")) as usize;
        let payload = at + HEADER..at + HEADER + n;
        if n == 0 || payload.end > rest.len() {
            continue;
        }
        let sum = u64::from_le_bytes(rest[at + 4..at + HEADER].try_into().expect("8 bytes"));
        if fnv1a(&rest[payload.clone()]) == sum
            && serde_json::from_slice::<StateDelta>(&rest[payload]).is_ok_and(|d| d.generation == generation)
        {
            return Ok(true);
        }
    }
    Ok(false)
}

/// A record: the header (payload length, checksum) and the payload, `d` as JSON.
fn frame(d: &StateDeltaRef<'_>) -> Vec<u8> {
    let mut out = vec![0u8; HEADER];
    serde_json::to_writer(&mut out, d).expect("state serializes");
    let payload_len = (out.len() - HEADER) as u32;
    let sum = fnv1a(&out[HEADER..]);
    out[..4].copy_from_slice(&payload_len.to_le_bytes());
    out[4..HEADER].copy_from_slice(&sum.to_le_bytes());
    out
}

/// Reads exactly `buf.len()` bytes; false at a clean or torn end.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<bool> {
    let mut done = 0;
    while done < buf.len() {
        match r.read(&mut buf[done..]) {
            Ok(0) => return Ok(false),
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

/// The open journal file and how much of it holds good records.
#[derive(Debug)]
pub struct Journal {
    file: File,
    /// Bytes of good records; the next one is written here.
    pub len: u64,
    /// A failed append could not be cut off: the next commit must write a snapshot.
    pub broken: bool,
}

impl Journal {
    /// Opens (creating) the journal at `path`, private to this user.
    pub fn open(path: &Path) -> io::Result<Journal> {
        let file = crate::fsutil::private_file().truncate(false).read(true).open(path)?;
        Ok(Journal {
            file,
            len: 0,
            broken: false,
        })
    }

    /// The file, for replay.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// Keeps the first `len` bytes (good records) and writes after them.
    pub fn cut(&mut self, len: u64) -> io::Result<()> {
        self.file.set_len(len)?;
        self.len = len;
        Ok(())
    }

    /// Empties the journal and writes `first`, the first record after a new snapshot.
    pub fn reset(&mut self, first: &[u8], durable: bool) -> io::Result<()> {
        self.cut(0)?;
        self.append(first, durable, &|| {})
    }

    /// Appends one record (whole, then fdatasync with `durable`). `halfway` runs after the first
    /// half was written (a test's crash point). On error the journal is cut back to its good
    /// length; if even that fails, it is marked broken.
    pub fn append(&mut self, record: &[u8], durable: bool, halfway: &dyn Fn()) -> io::Result<()> {
        let result = (|| {
            let half = record.len() / 2;
            self.file.write_all_at(&record[..half], self.len)?;
            halfway();
            self.file.write_all_at(&record[half..], self.len + half as u64)?;
            if durable {
                self.file.sync_data()?;
            }
            Ok(())
        })();
        match result {
            Ok(()) => {
                self.len += record.len() as u64;
                Ok(())
            }
            Err(e) => {
                if self.file.set_len(self.len).is_err() {
                    self.broken = true;
                }
                Err(e)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checkpoint(ino: u64, pos: u64) -> SourceCheckpoint {
        SourceCheckpoint {
            id: FileId { dev: 1, ino },
            fp_len: 0,
            fp: 0,
            pos,
            path: Path::new(&format!("/logs/{ino}")).into(),
            tag: format!("t{ino}").into(),
            source: "s".into(),
        }
    }

    fn state_with(n: u64) -> LiveState {
        let mut s = LiveState::from_snapshot(StateFile::default());
        for i in 0..n {
            let c = checkpoint(i, 0);
            s.sources.insert(source_key(&c), c);
        }
        s.settle();
        s
    }

    #[test]
    fn a_record_holds_only_what_changed_and_replays_to_the_same_state() {
        let d = tempfile::tempdir().unwrap();
        let mut live = state_with(1000);
        let base = live.clone();
        let mut j = Journal::open(&d.path().join("j")).unwrap();
        for round in 1..=3u64 {
            let c = checkpoint(round, round * 10);
            live.sources.insert(source_key(&c), c);
            live.sources.remove(&source_key(&checkpoint(500 + round, 0)));
            live.next_seq = round;
            let rec = live.delta_record();
            // Two changes, not a thousand checkpoints.
            assert!(rec.len() < 400, "record of {} bytes", rec.len());
            j.append(&rec, true, &|| {}).unwrap();
            live.settle();
        }
        let mut again = base.clone();
        let Replay { good, applied, end } = again.replay(j.file()).unwrap();
        assert_eq!(end, ReplayEnd::Clean);
        assert_eq!((good, applied), (j.len, 3));
        assert_eq!(again.sources.map(), live.sources.map());
        assert_eq!(again.next_seq, 3);
        assert_eq!(again.sources.map().len(), 997);
    }

    #[test]
    fn a_position_that_alone_moved_is_written_as_its_key_and_position() {
        let d = tempfile::tempdir().unwrap();
        let mut live = state_with(1000);
        let base = live.clone();
        let whole = serde_json::to_vec(&checkpoint(999, 6993)).unwrap().len();
        let mut j = Journal::open(&d.path().join("j")).unwrap();
        for i in 0..1000 {
            let mut c = checkpoint(i, 7 * i + 1);
            match i {
                // A reused inode (another fingerprint) and a renamed file: written whole.
                3 => c.fp = 42,
                4 => c.path = Path::new("/logs/renamed").into(),
                _ => {}
            }
            live.sources.insert(source_key(&c), c);
        }
        let rec = live.delta_record();
        let payload: serde_json::Value = serde_json::from_slice(&rec[HEADER..]).unwrap();
        assert_eq!(payload["moved"].as_array().unwrap().len(), 998);
        assert_eq!(payload["moved"][0], serde_json::json!(["s", 1, 0, "t0", 1]));
        let whole_ones: Vec<u64> = payload["sources"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["ino"].as_u64().unwrap())
            .collect();
        assert_eq!(whole_ones, [3, 4]);
        assert!(
            rec.len() < 1000 * whole / 3,
            "a record of {} bytes for 1000 checkpoints of {whole} bytes each",
            rec.len()
        );
        j.append(&rec, true, &|| {}).unwrap();
        live.settle();
        let mut again = base.clone();
        assert_eq!(again.replay(j.file()).unwrap(), replay(j.len, 1, ReplayEnd::Clean));
        assert_eq!(again.sources.map(), live.sources.map());
        assert_eq!(
            *again.sources.map()[&source_key(&checkpoint(4, 0))].path,
            *Path::new("/logs/renamed")
        );
    }

    #[test]
    fn a_record_that_moves_a_checkpoint_the_state_does_not_hold_ends_the_replay() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("j");
        let mut live = state_with(2);
        let mut j = Journal::open(&path).unwrap();
        let mut ends = Vec::new();
        for (round, ino) in [(1, 0), (2, 1)] {
            live.sources.insert(source_key(&checkpoint(ino, 5)), checkpoint(ino, 5));
            live.next_seq = round;
            j.append(&live.delta_record(), false, &|| {}).unwrap();
            live.settle();
            ends.push(j.len);
        }
        let mut all = state_with(2);
        assert_eq!(
            all.replay(&File::open(&path).unwrap()).unwrap(),
            replay(ends[1], 2, ReplayEnd::Clean)
        );
        // Without checkpoint 1, the second record is not valid: nothing of it applies, and the
        // journal is known to miss records.
        let mut base = state_with(2);
        base.sources.remove(&source_key(&checkpoint(1, 0)));
        base.settle();
        assert_eq!(
            base.replay(&File::open(&path).unwrap()).unwrap(),
            replay(ends[0], 1, ReplayEnd::Inconsistent)
        );
        assert_eq!(base.next_seq, 1);
        assert_eq!(base.sources.map()[&source_key(&checkpoint(0, 0))].pos, 5);
    }

    #[test]
    fn a_torn_or_damaged_record_ends_the_replay_there() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("j");
        let mut live = state_with(3);
        let base = live.clone();
        let mut j = Journal::open(&path).unwrap();
        let mut ends = Vec::new();
        for round in 1..=3u64 {
            let c = checkpoint(0, round);
            live.sources.insert(source_key(&c), c);
            j.append(&live.delta_record(), false, &|| {}).unwrap();
            live.settle();
            ends.push(j.len);
        }
        let whole = std::fs::read(&path).unwrap();
        // Torn in the last record, at any byte: the first two apply, the end is a torn append.
        for cut in 1..(ends[2] - ends[1]) as usize {
            std::fs::write(&path, &whole[..whole.len() - cut]).unwrap();
            let mut s = base.clone();
            assert_eq!(
                s.replay(&File::open(&path).unwrap()).unwrap(),
                replay(ends[1], 2, ReplayEnd::Torn),
                "cut by {cut}"
            );
            assert_eq!(s.sources.map()[&source_key(&checkpoint(0, 0))].pos, 2);
        }
        // A flipped bit anywhere in the last record (its length, its checksum, its payload):
        // undone as a torn one (a power loss can leave one so), but told apart from a crash's
        // torn append.
        for i in ends[1] as usize..ends[2] as usize {
            for bit in [0x01u8, 0x40] {
                let mut bad = whole.clone();
                bad[i] ^= bit;
                std::fs::write(&path, &bad).unwrap();
                let mut s = base.clone();
                assert_eq!(
                    s.replay(&File::open(&path).unwrap()).unwrap(),
                    replay(ends[1], 2, ReplayEnd::Mismatch),
                    "byte {i}, bit {bit:#x}"
                );
            }
        }
        // A flipped bit anywhere in the second record, with the third intact after it: damage,
        // not a torn end.
        for i in ends[0] as usize..ends[1] as usize {
            let mut bad = whole.clone();
            bad[i] ^= 0x04;
            std::fs::write(&path, &bad).unwrap();
            let mut s = base.clone();
            assert_eq!(
                s.replay(&File::open(&path).unwrap()).unwrap(),
                replay(ends[0], 1, ReplayEnd::Damaged),
                "byte {i}"
            );
        }
        // Records of another generation (left from before a newer snapshot) are not applied.
        std::fs::write(&path, &whole).unwrap();
        let mut s = base.clone();
        s.generation = 1;
        assert_eq!(
            s.replay(&File::open(&path).unwrap()).unwrap(),
            replay(0, 0, ReplayEnd::Stale)
        );
    }

    fn replay(good: u64, applied: u64, end: ReplayEnd) -> Replay {
        Replay { good, applied, end }
    }

    #[test]
    fn undo_puts_back_the_committed_values() {
        let mut live = state_with(2);
        let before = live.sources.map().clone();
        let c = checkpoint(0, 99);
        live.sources.insert(source_key(&c), c);
        live.sources.remove(&source_key(&checkpoint(1, 0)));
        live.sources.insert(source_key(&checkpoint(7, 1)), checkpoint(7, 1));
        assert!(live.is_dirty());
        live.undo();
        assert_eq!(live.sources.map(), &before);
        assert!(!live.is_dirty());
    }
}
