//! Sealing: when open chunks take no more data and go to delivery. A stream's chunks are sealed in
//! the order they were opened; in an output that keeps records whole, a chunk whose last record may
//! still continue waits for it (see [`ChunkStore::seal_due`]).

use super::*;

impl ChunkStore {
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
    pub(super) fn held_until(&self, c: &ChunkMeta) -> Option<i64> {
        let t = self.tails.get(&c.seq)?;
        let output = self.outputs_index(&c.output);
        let hold = self.outputs.get(output)?.hold_ms?;
        (self.last_chunk.get(&(output, t.file)) == Some(&c.seq)).then_some(c.last_write_ms + hold)
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
    pub(super) fn seal(&mut self, seq: u64) {
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

    /// Seals every open chunk (drain).
    pub fn seal_all(&mut self) {
        self.seal_where(|_| true);
    }
}
