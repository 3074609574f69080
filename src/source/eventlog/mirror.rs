//! Mirroring: each event-log file copied byte for byte under its own name; a file that grows is
//! uploaded again (at most every `mirror_interval`, cut at its last line end while Spark writes
//! it) and once more when it is final.

use super::*;

/// A file copied byte for byte.
#[derive(Debug)]
pub(super) struct MirroredFile {
    pub(super) id: FileId,
    pub(super) app: String,
    /// Path relative to the event-log directory, as it is now (also its key below the prefix).
    pub(super) rel: String,
    pub(super) path: PathBuf,
    pub(super) file: File,
    /// Rolling index (0 for a single file).
    pub(super) index: u64,
    pub(super) compressed: bool,
    /// Length and name of the last snapshot queued.
    pub(super) uploaded_len: u64,
    pub(super) uploaded_rel: Option<String>,
    pub(super) committed: (u64, Option<String>),
    pub(super) last_snapshot: Option<Instant>,
    pub(super) seen: bool,
}

impl EventLogSource {
    pub(super) fn track(
        &mut self,
        path: &Path,
        rel: String,
        app: &str,
        index: u64,
        compressed: bool,
        checkpoints: &Checkpoints,
    ) {
        let Ok(file) = File::open(path) else { return };
        let Ok(meta) = file.metadata() else { return };
        let id = FileId::of(&meta);
        if let Some(m) = self.mirrored.iter_mut().find(|m| m.id == id) {
            if m.rel != rel {
                tracing::info!(from = %m.rel, to = %rel, "event log renamed");
                m.rel = rel;
                m.path = path.to_path_buf();
            }
            m.seen = true;
            return;
        }
        let resume = checkpoints_of_file(checkpoints, &self.config.name, id)
            .find(|c| c.pos <= meta.len())
            .map(|c| (c.pos, Some(c.tag.to_string())));
        let (uploaded_len, uploaded_rel) = resume.unwrap_or((0, None));
        self.mirrored.push(MirroredFile {
            id,
            app: app.to_string(),
            rel,
            path: path.to_path_buf(),
            file,
            index,
            compressed,
            uploaded_len,
            committed: (uploaded_len, uploaded_rel.clone()),
            uploaded_rel,
            last_snapshot: None,
            seen: true,
        });
        self.mirrored
            .sort_by(|a, b| (&a.app, a.index, &a.rel).cmp(&(&b.app, b.index, &b.rel)));
    }

    /// Copies mirrored files that changed into snapshot chunks.
    pub(super) fn snapshots(
        &mut self,
        store: &mut ChunkStore,
        budget: u64,
        drain: bool,
        now: Instant,
        now_ms: i64,
    ) -> Result<u64, TailError> {
        let mut total = 0;
        for i in 0..self.mirrored.len() {
            if total >= budget {
                break;
            }
            let m = &self.mirrored[i];
            let complete = self.apps.get(&m.app).is_some_and(|a| a.complete);
            let superseded = self
                .mirrored
                .iter()
                .any(|o| o.app == m.app && o.index > m.index && m.index > 0);
            let is_final = complete || superseded;
            let read_err = |source| TailError::Read {
                path: m.path.clone(),
                source,
            };
            let size = m.file.metadata().map_err(read_err)?.len();
            // While Spark writes an uncompressed file, only whole lines are shipped; at the end
            // (or at the drain) everything, a torn last line included.
            let len = if !m.compressed && !is_final && !drain {
                whole_lines_len(&m.file, size).map_err(read_err)?
            } else {
                size
            };
            if len == 0 || (len == m.uploaded_len && m.uploaded_rel.as_deref() == Some(m.rel.as_str())) {
                continue;
            }
            if !is_final && !drain {
                if m.last_snapshot.is_some_and(|t| now < t + self.mirror_interval) {
                    continue;
                }
                if self
                    .routes
                    .iter()
                    .any(|&o| store.has_pending_key(o, &join_key(store.output_path(o), &m.rel)))
                {
                    continue;
                }
            }
            for &o in &self.routes {
                let prefix = store.output_path(o).to_string();
                let key = join_key(&prefix, &m.rel);
                let delete = match &m.uploaded_rel {
                    Some(old) if *old != m.rel => vec![join_key(&prefix, old)],
                    _ => Vec::new(),
                };
                tracing::debug!(%key, bytes = len, "snapshot of event log");
                store.add_whole(o, &m.app, key, b"", Some((&m.file, &m.path, len)), delete, now_ms)?;
            }
            let m = &mut self.mirrored[i];
            m.uploaded_len = len;
            m.uploaded_rel = Some(m.rel.clone());
            m.last_snapshot = Some(now);
            total += len;
        }
        self.mirror_bytes += total;
        Ok(total)
    }
}

/// The length of the file's prefix that ends at its last newline (0 when it has none).
pub(super) fn whole_lines_len(file: &File, size: u64) -> std::io::Result<u64> {
    let mut buf = vec![0u8; 64 << 10];
    let mut end = size;
    while end > 0 {
        let start = end.saturating_sub(buf.len() as u64);
        let want = (end - start) as usize;
        let n = file.read_at(&mut buf[..want], start)?;
        if n < want {
            // Shorter than it was a moment ago: look again next time.
            return Ok(0);
        }
        if let Some(i) = memchr::memrchr(b'\n', &buf[..want]) {
            return Ok(start + i as u64 + 1);
        }
        end = start;
    }
    Ok(0)
}
