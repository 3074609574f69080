//! Recovery: what [`super::ChunkStore::open`] does with what a previous run left, in named steps.
//!
//! What recovery may do, and may not:
//! - It applies the snapshot and then the journal's records in order. A record that does not
//!   check out is the last append, torn by a crash, only when no valid record of the same
//!   snapshot follows it: then it is cut off (that commit did not happen). Anything else (a
//!   damaged record with valid ones after it, a record that does not fit the state, a snapshot
//!   whose checksum fails, a journal without its snapshot or a snapshot without its journal)
//!   is an error that names the file: the state cannot be trusted, and nothing is changed.
//! - It deletes a file under `chunks/` only when the state accounts for it: a chunk (or a file
//!   beside one) whose sequence number no commit reached was written after the last commit, and
//!   its bytes are read again from the source; one below the committed `next_seq` that the
//!   state no longer holds was delivered (its removal was committed, its deletion not done yet);
//!   a compressed copy is made again when needed. Any other file is kept and reported, and the
//!   run does not exit 0.
//! - It cuts each chunk file back to its committed length (bytes written after the last
//!   commit), and reports a chunk file that is shorter than that, or missing, as damaged.

use std::fs::{self, File};
use std::path::{Path, PathBuf};

use super::journal::{Journal, LiveState, ReplayEnd};
use super::state::{self, StateFile};
use super::{BufferError, DamagedChunk};

/// The state as the snapshot and the journal leave it, and the journal ready for appends.
pub(super) struct Recovered {
    /// The state: the snapshot with the journal's good records applied.
    pub state: LiveState,
    /// The journal, cut to its good records.
    pub journal: Journal,
    /// Whether a snapshot of this version exists (otherwise the first commit writes one).
    pub have_snapshot: bool,
    /// What recovery had to undo that a crash alone does not explain (reported at exit).
    pub doubts: Vec<String>,
}

/// Reads the snapshot and applies the journal (see the module doc for what is refused).
pub(super) fn load_state(state_path: &Path, journal_path: &Path) -> Result<Recovered, BufferError> {
    let damaged = |path: &Path, what: String| BufferError::StateDamaged {
        path: path.to_path_buf(),
        what,
    };
    let snapshot_exists = fs::symlink_metadata(state_path).is_ok();
    let journal_existed = fs::symlink_metadata(journal_path).is_ok();
    let snapshot = StateFile::load(state_path)?;
    // A version-1 state had no journal.
    if snapshot_exists && !journal_existed && snapshot.version >= 2 {
        return Err(damaged(
            journal_path,
            "is missing beside state.json: the commits made since that snapshot are lost".into(),
        ));
    }
    let journal_err = |source| BufferError::Write {
        path: journal_path.to_path_buf(),
        source,
    };
    let mut journal = Journal::open(journal_path).map_err(journal_err)?;
    let journal_bytes = journal.file().metadata().map_err(journal_err)?.len();
    if !snapshot_exists && journal_bytes > 0 {
        return Err(damaged(
            state_path,
            format!("is missing, but state.journal beside it holds {journal_bytes} bytes of commits that follow it"),
        ));
    }
    // A snapshot of an older format counts as none: the first commit replaces it, so no record
    // that format does not know follows it (see `STATE_VERSION`).
    let have_snapshot = snapshot_exists && snapshot.version == state::STATE_VERSION;
    let mut state = LiveState::from_snapshot(snapshot);
    let mut doubts = Vec::new();
    let replay = state.replay(journal.file()).map_err(|source| {
        BufferError::State(state::StateError::Read {
            path: journal_path.to_path_buf(),
            source,
        })
    })?;
    match replay.end {
        ReplayEnd::Damaged => {
            return Err(damaged(
                journal_path,
                format!(
                    "is damaged at byte {}: the record there does not check out, and valid records follow it",
                    replay.good
                ),
            ));
        }
        ReplayEnd::Inconsistent => {
            return Err(damaged(
                journal_path,
                format!(
                    "does not fit its snapshot at byte {}: records before it are missing",
                    replay.good
                ),
            ));
        }
        ReplayEnd::Torn => tracing::info!(
            path = %journal_path.display(),
            at = replay.good,
            "the last commit before the previous run stopped was cut short; it did not happen, and what it covered is read again"
        ),
        ReplayEnd::Mismatch => {
            let doubt = format!(
                "the last record of {} (at byte {}) does not check out: a power loss while it was written, or damage. It was undone; if that commit had completed, the lines it recorded are read again if they are still in their files, or lost",
                journal_path.display(),
                replay.good
            );
            tracing::error!("{doubt}");
            doubts.push(doubt);
        }
        ReplayEnd::Clean | ReplayEnd::Stale => {}
    }
    journal.cut(replay.good).map_err(journal_err)?;
    Ok(Recovered {
        state,
        journal,
        have_snapshot,
        doubts,
    })
}

/// What a name under `chunks/` is: a chunk file or a file beside one, of chunk `seq`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChunkFileKind {
    /// `<seq>.chunk`
    Chunk,
    /// `<seq>.chunk.progress`
    Progress,
    /// `<seq>.chunk.<ext>` or its temporary `<seq>.chunk.<ext>.tmp`: a compressed copy.
    Compressed,
}

/// The chunk a file under `chunks/` belongs to, and what it is; `None` for a name logship never
/// makes.
fn parse_chunk_file(name: &str) -> Option<(u64, ChunkFileKind)> {
    let (stem, kind) = if let Some(s) = name.strip_suffix(".chunk") {
        (s, ChunkFileKind::Chunk)
    } else if let Some(s) = name.strip_suffix(".chunk.progress") {
        (s, ChunkFileKind::Progress)
    } else {
        let s = name.strip_suffix(".tmp").unwrap_or(name);
        let s = ["gz", "zst"]
            .iter()
            .find_map(|ext| s.strip_suffix(ext).and_then(|s| s.strip_suffix(".chunk.")))?;
        (s, ChunkFileKind::Compressed)
    };
    let seq = stem.parse().ok().filter(|_| stem.bytes().all(|b| b.is_ascii_digit()))?;
    Some((seq, kind))
}

/// Deletes the files under `chunks/` that the state accounts for and no longer needs (see the
/// module doc); returns the ones it cannot account for, which stay.
pub(super) fn sweep_chunk_dir(chunk_dir: &Path, state: &LiveState) -> Result<Vec<PathBuf>, BufferError> {
    let dir_err = |source| BufferError::Dir {
        path: chunk_dir.to_path_buf(),
        source,
    };
    let mut unknown = Vec::new();
    for entry in fs::read_dir(chunk_dir).map_err(dir_err)? {
        let entry = entry.map_err(dir_err)?;
        let path = entry.path();
        let parsed = entry.file_name().to_str().and_then(parse_chunk_file);
        let is_file = entry.file_type().is_ok_and(|t| t.is_file());
        match parsed {
            Some((seq, kind)) if is_file => {
                let held = state.chunks.get(&seq).is_some();
                if kind == ChunkFileKind::Compressed || !held {
                    // Not held: written after the last commit (seq at or past `next_seq`), or
                    // delivered (its removal was committed). Compressed copies are made again.
                    let _ = fs::remove_file(&path);
                }
            }
            _ => {
                tracing::error!(path = %path.display(), "a file in the buffer that logship did not make (or cannot account for) is kept; move it away once you know what it is");
                unknown.push(path);
            }
        }
    }
    unknown.sort();
    Ok(unknown)
}

/// Checks each chunk the state holds against its file: one that is shorter than its committed
/// length, or missing, is damaged (what is left of it is delivered; the rest is reported). All
/// recovered chunks are sealed.
pub(super) fn check_chunk_files(chunk_dir: &Path, state: &mut LiveState) -> Vec<DamagedChunk> {
    let mut damaged = Vec::new();
    let seqs: Vec<u64> = state.chunks.map().keys().copied().collect();
    for seq in seqs {
        let path = chunk_dir.join(format!("{seq}.chunk"));
        let on_disk = fs::symlink_metadata(&path)
            .ok()
            .filter(|m| m.is_file())
            .map(|m| m.len());
        let c = state.chunks.get_mut(&seq).expect("listed");
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
            // Of bytes that are gone.
            c.crc32 = None;
        }
        c.sealed = true;
        // Nothing left of it: nothing to deliver. (An empty chunk, a marker, stays.)
        if c.len == 0 && missing > 0 {
            state.chunks.remove(&seq);
        }
    }
    damaged
}

/// Cuts each chunk file back to its committed length: bytes written after the last commit are
/// read again from the source.
pub(super) fn cut_chunk_files(chunk_dir: &Path, state: &LiveState) -> Result<(), BufferError> {
    for c in state.chunks.map().values() {
        let path = chunk_dir.join(format!("{}.chunk", c.seq));
        let f: File = crate::fsutil::private_file()
            .truncate(false)
            .open(&path)
            .map_err(|source| BufferError::Write {
                path: path.clone(),
                source,
            })?;
        f.set_len(c.len).map_err(|source| BufferError::Write { path, source })?;
        crate::crashpoint::hit("recovery-chunk-cut");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::tests::store;
    use super::super::{CheckpointChanges, ChunkStore, Cut};
    use super::*;

    /// A buffer with a snapshot and then `commits` journal records, each moving a checkpoint
    /// and appending a line to a chunk; returns the journal's record boundaries.
    fn buffer_with_commits(dir: &Path, commits: u64) -> Vec<u64> {
        let mut s = store(dir, 1 << 20);
        let mut ends = Vec::new();
        for round in 0..commits {
            s.append(0, "t", None, Cut::LineEnd, format!("line {round}\n").as_bytes(), 1_000)
                .unwrap();
            let c = super::super::state::SourceCheckpoint {
                id: crate::fsutil::FileId { dev: 1, ino: 1 },
                fp_len: 0,
                fp: 0,
                pos: round,
                path: Path::new("/in/a.log").into(),
                tag: "t".into(),
                source: "s".into(),
            };
            s.commit(
                CheckpointChanges {
                    set: vec![c],
                    removed: vec![],
                },
                1_000,
            )
            .unwrap();
            ends.push(fs::metadata(dir.join("state.journal")).unwrap().len());
        }
        ends
    }

    fn open_err(dir: &Path) -> String {
        let other = tempfile::tempdir().unwrap();
        let keying = store(other.path(), 10).outputs[0].clone();
        let limits = ChunkLimits {
            timekey_secs: 30,
            chunk_limit: 1 << 20,
            fsync: false,
        };
        match ChunkStore::open(dir, limits, vec![keying]) {
            Ok(_) => panic!("opened"),
            Err(e) => e.to_string(),
        }
    }

    use super::super::ChunkLimits;

    /// Every file of the buffer, with a hash of its bytes.
    fn files(dir: &Path) -> Vec<(PathBuf, u64)> {
        let mut v: Vec<_> = walk(dir)
            .into_iter()
            .map(|p| (p.clone(), crate::fsutil::fnv1a(&fs::read(&p).unwrap())))
            .collect();
        v.sort();
        v
    }

    fn walk(dir: &Path) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for e in fs::read_dir(dir).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else if !p.ends_with(".lock") {
                out.push(p);
            }
        }
        out
    }

    /// A flipped bit in a journal record with good records after it is damage, not a torn end:
    /// recovery refuses with the journal's name and the byte, and changes no file.
    #[test]
    fn a_damaged_record_in_the_middle_of_the_journal_is_refused_and_nothing_changes() {
        let d = tempfile::tempdir().unwrap();
        let ends = buffer_with_commits(d.path(), 4);
        let journal = d.path().join("state.journal");
        let mut bytes = fs::read(&journal).unwrap();
        bytes[ends[1] as usize + 20] ^= 0x08;
        fs::write(&journal, &bytes).unwrap();
        let before = files(d.path());
        let e = open_err(d.path());
        assert!(
            e.contains("state.journal") && e.contains(&format!("byte {}", ends[1])),
            "{e}"
        );
        assert_eq!(files(d.path()), before, "nothing was changed");
    }

    /// The snapshot gone with the journal still there (or the other way round) is an error,
    /// never a fresh start that reads every file again.
    #[test]
    fn a_journal_without_its_snapshot_or_a_snapshot_without_its_journal_is_refused() {
        let d = tempfile::tempdir().unwrap();
        buffer_with_commits(d.path(), 2);
        fs::remove_file(d.path().join("state.json")).unwrap();
        let e = open_err(d.path());
        assert!(e.contains("state.json") && e.contains("is missing"), "{e}");
        let d = tempfile::tempdir().unwrap();
        buffer_with_commits(d.path(), 2);
        fs::remove_file(d.path().join("state.journal")).unwrap();
        let e = open_err(d.path());
        assert!(e.contains("state.journal") && e.contains("is missing"), "{e}");
        // Right after a snapshot the journal still holds its first record.
        let d = tempfile::tempdir().unwrap();
        buffer_with_commits(d.path(), 1);
        assert!(fs::metadata(d.path().join("state.journal")).unwrap().len() > 0);
    }

    /// A file under `chunks/` that logship did not make is kept and reported; chunk files the
    /// state accounts for (uncommitted, delivered, compressed copies) are removed.
    #[test]
    fn files_recovery_cannot_account_for_are_kept_and_reported() {
        let d = tempfile::tempdir().unwrap();
        buffer_with_commits(d.path(), 2);
        let chunks = d.path().join("chunks");
        for name in ["notes.txt", "0.chunk.bak"] {
            fs::write(chunks.join(name), b"someone's").unwrap();
        }
        for name in ["99.chunk", "99.chunk.progress", "0.chunk.gz", "0.chunk.zst.tmp"] {
            fs::write(chunks.join(name), b"ours").unwrap();
        }
        let s = store(d.path(), 1 << 20);
        assert_eq!(s.unaccounted(), [chunks.join("0.chunk.bak"), chunks.join("notes.txt")]);
        let mut left: Vec<String> = fs::read_dir(&chunks)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(left, ["0.chunk", "0.chunk.bak", "notes.txt"]);
    }

    #[test]
    fn names_logship_makes_are_known_and_others_are_not() {
        use ChunkFileKind::*;
        for (name, want) in [
            ("12.chunk", Some((12, Chunk))),
            ("0.chunk.progress", Some((0, Progress))),
            ("7.chunk.gz", Some((7, Compressed))),
            ("7.chunk.zst.tmp", Some((7, Compressed))),
            ("7.chunk.gz.tmp", Some((7, Compressed))),
            ("x.chunk", None),
            ("+7.chunk", None),
            ("7.chunk.bak", None),
            ("notes.txt", None),
            ("7", None),
            (".chunk", None),
        ] {
            assert_eq!(parse_chunk_file(name), want, "{name}");
        }
    }
}
