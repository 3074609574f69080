//! The buffer's unit tests: appends and keys, commit and rollback, the journal and snapshots,
//! recovery of what a previous run left, and records kept whole.

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

mod record_tests {
    use super::store;
    use crate::buffer::*;

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
