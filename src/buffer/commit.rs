//! Commit and rollback: what makes appended bytes durable together with the read positions (the
//! chunk files fsynced, then one journal record or a new snapshot), what undoes everything since
//! the last commit after a failed write, and the chunks that delivery lets go.

use super::*;

impl ChunkStore {
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
    pub(super) fn write_state(&mut self) -> Result<(), BufferError> {
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

    /// The file that holds back room for the state file on a full disk.
    pub(super) fn reserve_path(&self) -> PathBuf {
        self.dir.join(".reserve")
    }

    /// Makes sure the reserve exists and is large enough for twice the state file (a new state
    /// is written beside the old one before the rename). Best effort: on a full disk it is
    /// simply not there until deliveries free space.
    pub(super) fn ensure_reserve(&mut self) {
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

    /// fsyncs the chunk directory (after deletions at exit).
    pub fn sync_dir(&self) {
        let _ = sync_parent(&self.chunk_path(0));
    }
}
