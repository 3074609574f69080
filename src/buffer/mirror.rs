//! Chunks that event logs add whole: snapshots of a mirrored file and the completion markers, with
//! fixed keys, delivered in order after the chunks sealed before them.

use super::*;

impl ChunkStore {
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
        self.make_room_for_handle()?;
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
}
