//! Reading followed files into the buffer: big blocks, cut at the last newline, long lines
//! streamed, truncation and rewrites detected, the drain point respected.

use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::Instant;

use super::identity::{FINGERPRINT_MAX, Fingerprint, fingerprint, starts_as};
use super::{TailError, TailSource, TailedFile};
use crate::buffer::{ChunkStore, Cut};
use crate::config::Framing;

impl TailSource {
    /// The followed files with their tags, and whether each has been read to its current end
    /// and that end is a line end (so every chunk made from it holds whole lines).
    pub fn read_to_line_end(&self) -> Vec<(&Path, &str, bool)> {
        self.files
            .iter()
            .map(|f| {
                let size = f.file.metadata().map(|m| m.len()).unwrap_or(u64::MAX);
                let done = f.pos == size && crate::fsutil::ends_with_newline(&f.file, size);
                (&*f.path, &*f.tag, done)
            })
            .collect()
    }

    /// Reads new data of every file into `store`, at most about `budget` bytes in all.
    /// With `drain`, unterminated last lines are delivered as they are. Returns bytes read.
    pub(super) fn read_files(
        &mut self,
        store: &mut ChunkStore,
        budget: u64,
        drain: bool,
        now: Instant,
        now_ms: i64,
        targets: Option<&crate::source::Targets>,
    ) -> Result<u64, TailError> {
        let mut total = 0;
        // Every file, or only those events named (found by path, in discovery order).
        let order: Vec<usize> = match targets {
            None => (0..self.files.len()).collect(),
            Some(t) => {
                if self.by_path_stale {
                    self.by_path = self
                        .files
                        .iter()
                        .enumerate()
                        .map(|(i, f)| (crate::watch::path_hash(f.path.as_os_str()), i))
                        .collect();
                    self.by_path_stale = false;
                }
                let mut v: Vec<usize> = t
                    .path_hashes
                    .iter()
                    .filter_map(|h| self.by_path.get(h).copied())
                    .collect();
                v.sort_unstable();
                t.matched.set(t.matched.get() + v.len());
                v
            }
        };
        for i in order {
            if total >= budget {
                break;
            }
            let flush_partial = drain
                || self.files[i]
                    .gone_since
                    .is_some_and(|g| now >= g.max(self.files[i].last_growth) + self.config.rotate_wait.get());
            total += self.read_file(i, store, budget - total, flush_partial, targets.is_some(), now, now_ms)?;
        }
        // Close files that are gone, quiet for rotate_wait, and read to their end.
        if !self.any_gone {
            return Ok(total);
        }
        let wait = self.config.rotate_wait.get();
        let before = self.files.len();
        let forgotten = &mut self.forgotten;
        let name = &self.name;
        self.files.retain(|f| {
            let done = f.gone_since.is_some_and(|g| now >= g.max(f.last_growth) + wait) && f.pos >= f.last_size;
            if done {
                tracing::info!(path = %f.path.display(), "closed file that was renamed away or deleted");
                forgotten.push((name.clone(), f.id, f.tag.clone()));
            }
            !done
        });
        if self.files.len() != before {
            self.by_path_stale = true;
            self.index_flags();
        }
        Ok(total)
    }

    /// Reads file `i`'s new bytes into `store`. `named`: an event named the file, so it has most
    /// likely grown: its new bytes are read first and their length gives its size (a short read
    /// ends at the end of the file), which saves the `fstat` a look costs otherwise (15 % of a
    /// busy node forwarder's reading). A read that finds nothing, or fills the whole block, asks
    /// `fstat` as every other look does (a file that shrank reads as empty at the old position).
    #[allow(clippy::too_many_arguments)]
    fn read_file(
        &mut self,
        i: usize,
        store: &mut ChunkStore,
        budget: u64,
        flush_partial: bool,
        named: bool,
        now: Instant,
        now_ms: i64,
    ) -> Result<u64, TailError> {
        let framing = self.config.format;
        let cut = if self.rule.is_multiline() {
            Cut::RecordStart(&self.rule)
        } else {
            Cut::LineEnd
        };
        let max_line = self.config.max_line();
        let block = self.buf.len();
        let f = &mut self.files[i];
        let read_err = |path: &Path, source| TailError::Read {
            path: path.to_path_buf(),
            source,
        };
        // Bytes already in `buf`, read from `f.pos` (valid while `f.pos` does not move).
        let mut ahead = 0;
        let mut size = None;
        if named && f.drain_size.is_none() && budget > 0 {
            let n = f
                .file
                .read_at(&mut self.buf[..], f.pos)
                .map_err(|e| read_err(&f.path, e))?;
            if n > 0 {
                ahead = n;
                if n < block {
                    size = Some(f.pos + n as u64);
                }
            }
        }
        // The modification time, when the size came from `fstat`: a file truncated and written
        // again to the very size it had between two looks changed only that.
        let mut touched = false;
        let mut size = match size {
            Some(s) => s,
            None => {
                let m = f.file.metadata().map_err(|e| read_err(&f.path, e))?;
                let mtime = m.modified().ok();
                touched = mtime != f.last_mtime;
                f.last_mtime = mtime;
                m.len()
            }
        };
        if let Some(d) = f.drain_size {
            size = size.min(d);
        }
        let changed = size != f.last_size;
        let starts_otherwise = |f: &TailedFile| -> Result<bool, TailError> {
            Ok(f.fp.len > 0
                && (size < f.fp.len as u64 || !starts_as(&f.file, &f.fp).map_err(|e| read_err(&f.path, e))?))
        };
        if changed {
            f.last_growth = now;
        } else if size == f.pos && !(touched && starts_otherwise(f)?) {
            return Ok(0);
        }
        f.last_size = size;
        if !f.unsaved {
            f.unsaved = true;
            self.unsaved.push(i);
        }
        // Shrunk, or first bytes rewritten (copytruncate then new writes, to any size): start
        // again.
        let rewritten = size < f.pos || ((changed || touched) && starts_otherwise(f)?);
        if rewritten {
            tracing::warn!(path = %f.path.display(), old_pos = f.pos, size, "file was truncated or rewritten; reading it from the start");
            self.stats.truncations += 1;
            f.pos = 0;
            f.scan_hint = 0;
            f.fp = Fingerprint::empty();
            ahead = 0;
        }
        if (f.fp.len as u64) < FINGERPRINT_MAX && size > f.fp.len as u64 {
            f.fp = fingerprint(&f.file, size.min(FINGERPRINT_MAX)).map_err(|e| read_err(&f.path, e))?;
        }
        let start = f.pos;
        while f.pos < size && f.pos - start < budget {
            let want = (size - f.pos).min(block as u64) as usize;
            let n = if ahead > 0 && f.pos == start {
                // The bytes read ahead (the file may have grown past them since the `fstat`
                // or the read: the size seen bounds what this pass takes).
                std::mem::take(&mut ahead).min(want)
            } else {
                f.file
                    .read_at(&mut self.buf[..want], f.pos)
                    .map_err(|e| read_err(&f.path, e))?
            };
            if n == 0 {
                break;
            }
            let data = &self.buf[..n];
            if framing == Framing::Raw {
                for &o in &self.routes {
                    store.append(o, &f.tag, Some(f.id), Cut::Anywhere, data, now_ms)?;
                }
                f.pos += n as u64;
                continue;
            }
            if let Some(last_nl) = memchr::memrchr(b'\n', data) {
                // Every whole line goes into the buffer now, a record's last line included:
                // a line that stayed only in the file could be lost to a truncation. Keeping a
                // record whole for an output that joins its lines is the buffer's part
                // (`OutputKeying::hold_ms`).
                let lines = &data[..=last_nl];
                for &o in &self.routes {
                    store.append(o, &f.tag, Some(f.id), cut, lines, now_ms)?;
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
                    store.append(o, &f.tag, Some(f.id), Cut::Anywhere, data, now_ms)?;
                }
                f.pos += n as u64;
                self.stats.lines_split += 1;
                continue;
            }
            if n < block {
                // Reached the end inside a line: wait for its newline (or flush at drain).
                if flush_partial {
                    let len = size - f.pos;
                    Self::copy_ahead(&self.routes, &mut self.buf, store, f, len, true, now_ms)?;
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
                    Self::copy_ahead(&self.routes, &mut self.buf, store, f, len, false, now_ms)?;
                }
                None => {
                    f.scan_hint = scanned;
                    if flush_partial {
                        let len = size - f.pos;
                        Self::copy_ahead(&self.routes, &mut self.buf, store, f, len, true, now_ms)?;
                        self.stats.partial_lines_flushed += 1;
                    }
                    break;
                }
            }
        }
        let read = f.pos.saturating_sub(start);
        self.stats.bytes_read += read;
        self.stats.records_split += store.take_records_split();
        Ok(read)
    }

    /// Streams the next `len` bytes of `f` into one chunk per route (so a long line stays whole),
    /// in pieces of at most the read block, and moves `f` past them. `partial`: they end without
    /// a newline (an unterminated last line, at the drain or after rotation), so the chunks they
    /// went to are sealed: nothing of another file may run on into that line.
    #[allow(clippy::too_many_arguments)]
    fn copy_ahead(
        routes: &[usize],
        buf: &mut [u8],
        store: &mut ChunkStore,
        f: &mut TailedFile,
        len: u64,
        partial: bool,
        now_ms: i64,
    ) -> Result<(), TailError> {
        let mut seqs = Vec::with_capacity(routes.len());
        for &o in routes {
            seqs.push(store.reserve(o, &f.tag, Some(f.id), len, now_ms)?);
        }
        let mut done = 0;
        while done < len {
            let want = (len - done).min(buf.len() as u64) as usize;
            let m = f
                .file
                .read_at(&mut buf[..want], f.pos + done)
                .map_err(|source| TailError::Read {
                    path: f.path.to_path_buf(),
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
        if partial {
            for seq in seqs {
                store.end_chunk(seq);
            }
        }
        Ok(())
    }
}
