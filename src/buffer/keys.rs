//! Opening chunks: which chunk a piece goes to (the open-chunk key: output, tag where the output
//! keeps tags apart, time key, file where it keeps records whole), and the object key a chunk gets
//! when it is opened, fixed from then on (its `%{index}` taken from the prefix's counter, which
//! moves in the same commit that records the chunk).

use super::*;

impl ChunkStore {
    pub(super) fn timekey_of(&self, now_ms: i64) -> i64 {
        let secs = now_ms.div_euclid(1000);
        secs - secs.rem_euclid(self.limits.timekey_secs)
    }

    /// The key of the open-chunk map: the tag only where the output keeps tags apart, the file
    /// only where it keeps records whole.
    pub(super) fn open_key(&self, output: usize, tag: &str, timekey: i64, from: Option<FileId>) -> OpenKey {
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
    pub(super) fn open_chunk(
        &mut self,
        output: usize,
        tag: &str,
        from: Option<FileId>,
        now_ms: i64,
    ) -> Result<u64, BufferError> {
        let timekey = self.timekey_of(now_ms);
        let map_key = self.open_key(output, tag, timekey, from);
        if let Some(&seq) = self.open.get(&map_key) {
            return Ok(seq);
        }
        let seq = self.state.next_seq;
        self.make_room_for_handle()?;
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

    pub(super) fn outputs_index(&self, name: &str) -> usize {
        self.outputs.iter().position(|o| o.name == name).unwrap_or(usize::MAX)
    }
}
