//! Appending: bytes written to open chunks (small appends gathered into one write), full chunks
//! cut where the `Cut` allows, and the record at the end of each chunk kept whole
//! ([`TailRecord`]): lines that continue it join it, in its chunk or, moved with it, in the next.

use super::*;

/// The record at the end of an open chunk, when the last bytes written to it were whole lines of
/// one followed file cut into records ([`Cut::RecordStart`]): lines of that file that continue
/// it can then stay with it, in this chunk or, moved with it, in the next (see
/// [`ChunkStore::append`]).
#[derive(Debug, Clone, Copy)]
pub(super) struct TailRecord {
    /// The file its lines come from.
    pub(super) file: FileId,
    /// Where it starts in the chunk.
    pub(super) start: u64,
    /// What the record rule needs of its last line.
    pub(super) last: PrevLine,
}

impl ChunkStore {
    pub(super) fn write_to(&mut self, seq: u64, bytes: &[u8], now_ms: i64) -> Result<(), BufferError> {
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
    pub(super) fn write_gathered(&mut self) -> Result<(), BufferError> {
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
    pub(super) fn write_out(&mut self, seq: u64, bytes: &[u8]) -> Result<(), BufferError> {
        // Noted as changed before the write (`get_mut` records it for the rollback): a first
        // write since the commit that fails part-way must still be cut off.
        let _ = self.state.chunks.get_mut(&seq);
        if !self.handles.contains_key(&seq) {
            // Its handle was let go to stay within the descriptors chunks may hold.
            let path = self.chunk_path(seq);
            self.make_room_for_handle()?;
            let file = {
                use std::os::unix::fs::OpenOptionsExt;
                fs::OpenOptions::new()
                    .append(true)
                    .custom_flags(libc::O_NOFOLLOW)
                    .open(&path)
            }
            .map_err(|source| BufferError::Write { path, source })?;
            self.handles.insert(seq, file);
        }
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

    /// Lets go of chunk handles until one more fits under [`CHUNK_HANDLES_MAX`]: one file per
    /// chunk, and thousands of followed files make thousands of open chunks, which must not take
    /// the descriptors the followed files need. A handle with unsynced writes is synced first
    /// (with `fsync` on), since the commit syncs through the handles it still holds.
    pub(super) fn make_room_for_handle(&mut self) -> Result<(), BufferError> {
        while self.handles.len() >= CHUNK_HANDLES_MAX {
            let Some(&seq) = self.handles.keys().next() else { break };
            let f = self.handles.remove(&seq).expect("just found");
            if self.limits.fsync && self.dirty.contains(&seq) {
                f.sync_data().map_err(|source| BufferError::Write {
                    path: self.chunk_path(seq),
                    source,
                })?;
            }
        }
        Ok(())
    }

    pub(super) fn room(&self, seq: u64) -> u64 {
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
    pub(super) fn tail_of(&self, seq: u64, file: FileId) -> Option<TailRecord> {
        self.tails.get(&seq).filter(|t| t.file == file).copied()
    }

    /// Appends `lines`, which all continue the record at the end of open chunk `seq`, there;
    /// when they do not fit, the record moves to a new chunk with them (when it then fits in
    /// one), or else is split (counted).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn continue_record(
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
    pub(super) fn movable(&self, seq: u64, more: usize) -> bool {
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
    pub(super) fn move_record(&mut self, seq: u64, now_ms: i64) -> Result<u64, BufferError> {
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
    pub(super) fn set_tail(&mut self, seq: u64, output: usize, t: TailRecord) {
        if self.outputs[output].hold_ms.is_some() {
            self.last_chunk.insert((output, t.file), seq);
        }
        self.tails.insert(seq, t);
    }

    /// Writes `bytes` to open chunk `seq` and keeps track of the record at its end.
    pub(super) fn put(
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
    pub(super) fn forget_tail(&mut self, seq: u64, from: Option<FileId>) {
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
    pub(super) fn append_cut(
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

    /// Writes part of a reserved long line.
    pub fn append_reserved(&mut self, seq: u64, bytes: &[u8], now_ms: i64) -> Result<(), BufferError> {
        self.write_to(seq, bytes, now_ms)
    }
}
