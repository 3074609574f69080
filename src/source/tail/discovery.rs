//! Finding the files: glob patterns, new files opened at their checkpoint, renames followed,
//! files gone from their paths, and files moved while logship was not running.

use std::path::{Path, PathBuf};
use std::time::Instant;

use super::identity::{FINGERPRINT_MAX, fingerprint, holds_checkpoint};
use super::{TailSource, TailedFile};
use crate::buffer::{Checkpoints, SourceCheckpoint, checkpoints_of_file, checkpoints_of_source};
use crate::config::ReadFrom;
use crate::fsutil::FileId;

/// Whether a path component (or pattern) holds glob syntax.
pub(super) fn is_glob(s: &str) -> bool {
    s.contains(['*', '?', '['])
}

/// The literal leading directories of a glob (`/var/log/*/stdout` → `/var/log`), and whether
/// matches may lie deeper than one level below it.
pub fn glob_base(pattern: &str) -> (PathBuf, bool) {
    let path = Path::new(pattern);
    let mut base = PathBuf::new();
    let comps: Vec<_> = path.components().collect();
    for (i, c) in comps.iter().enumerate() {
        let s = c.as_os_str().to_string_lossy();
        if is_glob(&s) {
            let deep = comps.len() - i > 1 || s.contains("**");
            return (base, deep);
        }
        if i == comps.len() - 1 {
            // A plain path: its directory is the base.
            return (base, false);
        }
        base.push(c.as_os_str());
    }
    (base, false)
}

/// Most directories one `**` walk looks into (a tree that large is a mistake, not a log dir).
const WALK_MAX_DIRS: usize = 100_000;

/// The paths `pattern` matches, by the link policy: a symbolic link is followed only to a
/// file inside the pattern's own directory (its literal start) or inside one of `roots`
/// (`follow_links_into`); one pointing elsewhere is named in `skipped` (`in/evil.log ->
/// /etc/shadow` is not shipped). Under `**`, the walk does not descend into linked directories
/// (`in/sub/etc -> /etc`, `d/up -> ..`), and never visits a directory twice. A path named
/// without a glob is what was asked for: followed wherever it points.
fn matching_paths(
    pattern: &super::Pattern,
    roots: &[PathBuf],
    skipped: &mut std::collections::BTreeMap<PathBuf, String>,
) -> Result<Vec<PathBuf>, glob::PatternError> {
    let found: Vec<PathBuf> = if pattern.glob.contains("**") {
        walk(pattern)?
    } else {
        glob::glob(&pattern.glob)?.flatten().collect()
    };
    if pattern.literal {
        return Ok(found);
    }
    let inside: Vec<PathBuf> = std::iter::once(&pattern.base)
        .chain(roots)
        .filter_map(|r| std::fs::canonicalize(r).ok())
        .collect();
    Ok(found
        .into_iter()
        .filter(|p| {
            // Only paths that pass through a link can lead outside.
            let Ok(real) = std::fs::canonicalize(p) else {
                return true;
            };
            if inside.iter().any(|r| real.starts_with(r)) {
                return true;
            }
            skipped.insert(
                p.clone(),
                format!(
                    "a link to {}, outside {}: not followed (allow its directory with follow_links_into)",
                    real.display(),
                    pattern.base.display()
                ),
            );
            false
        })
        .collect())
}

/// The files under `pattern.base` that a `**` pattern matches: a walk that does not follow
/// linked directories and visits each directory once.
fn walk(pattern: &super::Pattern) -> Result<Vec<PathBuf>, glob::PatternError> {
    use std::os::unix::fs::MetadataExt;
    let glob = glob::Pattern::new(&pattern.glob)?;
    let options = glob::MatchOptions {
        require_literal_separator: true,
        ..glob::MatchOptions::new()
    };
    let mut out = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let mut todo = vec![pattern.base.clone()];
    while let Some(dir) = todo.pop() {
        let Ok(meta) = std::fs::metadata(&dir) else { continue };
        if !seen.insert((meta.dev(), meta.ino())) || seen.len() > WALK_MAX_DIRS {
            continue;
        }
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for e in entries.flatten() {
            let path = e.path();
            let Ok(ft) = e.file_type() else { continue };
            if ft.is_dir() {
                todo.push(path.clone());
            }
            if glob.matches_path_with(&path, options) {
                out.push(path);
            }
        }
    }
    out.sort();
    Ok(out)
}

impl TailSource {
    /// Looks for files matching the patterns: new ones are opened (resuming from `checkpoints`
    /// when the fingerprint matches), known ones get their current path, missing ones are marked
    /// gone.
    pub(super) fn discover(&mut self, checkpoints: &Checkpoints, now: Instant) {
        let initial = !self.scanned_once;
        self.scanned_once = true;
        self.last_scan = Some(now);
        // Sets and an index by identity: a scan costs what the files are, not their square.
        let mut seen = std::collections::HashSet::new();
        let mut by_id: std::collections::HashMap<FileId, usize> =
            self.files.iter().enumerate().map(|(i, f)| (f.id, i)).collect();
        // Rebuilt at every scan: what is skipped is what is there now.
        let before = std::mem::take(&mut self.skipped);
        for pi in 0..self.patterns.len() {
            let literal = self.patterns[pi].literal;
            let entries = match matching_paths(&self.patterns[pi], &self.config.follow_links_into, &mut self.skipped) {
                Ok(e) => e,
                Err(e) => {
                    tracing::warn!(pattern = %self.patterns[pi].glob, error = %e, "bad glob pattern");
                    continue;
                }
            };
            for path in entries {
                let meta = match std::fs::metadata(&path) {
                    Ok(m) => m,
                    Err(e) => {
                        self.skipped.insert(path, format!("cannot use it: {e}"));
                        continue;
                    }
                };
                if self.tagger.as_ref().is_some_and(|t| t(&path).is_none()) {
                    continue;
                }
                if !meta.is_file() {
                    // A directory that a glob happens to match is not what was asked for; one
                    // named on its own is. Anything else (a FIFO, a socket, a device) would
                    // block or never end: named, never read.
                    if !meta.is_dir() || literal {
                        self.skipped
                            .insert(path, format!("not a regular file ({})", file_kind(&meta)));
                    }
                    continue;
                }
                self.patterns[pi].matched = true;
                let id = FileId::of(&meta);
                if !seen.insert(id) {
                    continue;
                }
                if let Some(&i) = by_id.get(&id) {
                    let f = &mut self.files[i];
                    if *f.path != *path {
                        tracing::info!(from = %f.path.display(), to = %path.display(), "file renamed; following it");
                        f.path = path.into();
                        f.unsaved = true;
                    }
                    f.gone_since = None;
                    continue;
                }
                if !super::DescriptorSlot::available() {
                    static SAID: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
                    let limit = crate::fsutil::open_file_limit();
                    if !SAID.swap(true, std::sync::atomic::Ordering::Relaxed) {
                        tracing::warn!(
                            open = super::followed_budget(),
                            limit,
                            "as many files are open as the open-file limit allows (less what chunks need); more wait until followed files are let go: raise `ulimit -n`"
                        );
                    }
                    self.skipped.insert(
                        path,
                        format!(
                            "not opened: {} followed files hold descriptors, as many as the open-file limit ({limit}) allows; raise ulimit -n",
                            super::followed_budget()
                        ),
                    );
                    continue;
                }
                let base = self.patterns[pi].base.clone();
                match self.open_file(&path, &base, checkpoints, initial, now) {
                    Ok(Some(f)) if by_id.contains_key(&f.id) => {
                        // Replaced between the look and the open by a file already followed.
                        seen.insert(f.id);
                    }
                    Ok(Some(f)) => {
                        self.skipped.remove(&*f.path);
                        seen.insert(f.id);
                        tracing::info!(path = %f.path.display(), pos = f.pos, tag = %f.tag, "following file");
                        self.stats.files_found += 1;
                        by_id.insert(f.id, self.files.len());
                        self.files.push(f);
                    }
                    Ok(None) => {}
                    Err(e) => {
                        if !before.contains_key(&path) {
                            tracing::warn!(path = %path.display(), error = %e, "cannot open file; will retry");
                        }
                        self.skipped.insert(path, format!("cannot open it: {e}"));
                    }
                }
            }
        }
        if initial {
            // Files renamed while logship was not running (rotation with nobody watching): a
            // checkpointed file that no pattern matches any more is looked for beside its old
            // path by identity and content, and its unread tail is read, as runtime rotation
            // does with a file it still holds open.
            for c in checkpoints_of_source(checkpoints, &self.config.name) {
                if by_id.contains_key(&c.id) {
                    continue;
                }
                if let Some(f) = moved_file(c, now) {
                    tracing::info!(from = %c.path.display(), to = %f.path.display(), unread = f.last_size - f.pos, "file moved while logship was not running; reading its tail");
                    self.stats.files_found += 1;
                    by_id.insert(f.id, self.files.len());
                    self.files.push(f);
                }
            }
        }
        for (path, why) in &self.skipped {
            if why.starts_with("a link to") && !before.contains_key(path) {
                tracing::warn!(path = %path.display(), reason = %why, "not followed");
            }
        }
        for f in &mut self.files {
            if !seen.contains(&f.id) && f.gone_since.is_none() {
                tracing::info!(path = %f.path.display(), "file is gone from its path; reading it to its end");
                f.gone_since = Some(now);
            }
        }
        self.index_flags();
    }

    pub(super) fn open_file(
        &self,
        path: &Path,
        base: &Path,
        checkpoints: &Checkpoints,
        initial: bool,
        now: Instant,
    ) -> std::io::Result<Option<TailedFile>> {
        let file = crate::fsutil::open_for_reading(path)?;
        let meta = file.metadata()?;
        let id = FileId::of(&meta);
        let size = meta.len();
        // Of this source's checkpoints of this identity (a file deleted and another that took
        // its inode number may both have one), the one whose leading bytes the file still has.
        let mut stale = false;
        let resume = checkpoints_of_file(checkpoints, &self.config.name, id)
            .find(|c| {
                let same = holds_checkpoint(&file, size, c);
                stale |= !same;
                same
            })
            .map(|c| (c.pos, c.tag.clone()));
        if resume.is_none() && stale {
            tracing::info!(path = %path.display(), "checkpoint does not match the file's content (new file with a reused inode, or rewritten); reading from the start");
        }
        let adoptable = resume.is_none();
        let (pos, tag) = match resume {
            Some((pos, tag)) => (pos, tag),
            None => {
                let pos = if initial && self.config.read_from == ReadFrom::End {
                    size
                } else {
                    0
                };
                (pos, self.tag_for(path, base).into())
            }
        };
        let fp = fingerprint(&file, size.min(FINGERPRINT_MAX))?;
        Ok(Some(TailedFile {
            _slot: super::DescriptorSlot::take(),
            id,
            path: path.into(),
            tag,
            file,
            pos,
            lines: 0,
            committed_pos: pos,
            fp,
            committed_fp: fp,
            scan_hint: 0,
            gone_since: None,
            last_growth: now,
            last_size: size,
            last_mtime: meta.modified().ok(),
            drain_size: None,
            unsaved: true,
            adoptable,
        }))
    }

    fn tag_for(&self, path: &Path, base: &Path) -> String {
        if let Some(t) = &self.config.tag {
            return t.clone();
        }
        if let Some(tag) = self.tagger.as_ref().and_then(|t| t(path)) {
            return tag;
        }
        let rel = path.strip_prefix(base).unwrap_or(path);
        let s = rel.to_string_lossy().trim_start_matches('/').to_string();
        if s.is_empty() { self.config.name.clone() } else { s }
    }
}

/// The file of checkpoint `c` if it is still in the directory of its last path under another
/// name (same device, inode and leading bytes) with bytes after the checkpoint: opened at the
/// checkpoint, already "gone" from its path, so it is read to its end and then let go.
fn moved_file(c: &SourceCheckpoint, now: Instant) -> Option<TailedFile> {
    use std::os::unix::fs::DirEntryExt;
    if c.fp_len == 0 {
        // Nothing was known of its content (it was empty): any file that took its inode
        // number would pass for it.
        return None;
    }
    let dir = c.path.parent()?;
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        // The inode from the directory entry: no stat for the other names.
        if entry.ino() != c.id.ino {
            continue;
        }
        let path = entry.path();
        if *path == *c.path {
            // Not moved: still at its path, which this source no longer follows (a reload
            // changed its patterns). Another source may follow it from this checkpoint.
            continue;
        }
        let Ok(file) = crate::fsutil::open_for_reading(&path) else {
            continue;
        };
        let Ok(meta) = file.metadata() else { continue };
        let size = meta.len();
        // Something left to read (a file read to its end needs nothing more).
        let same = FileId::of(&meta) == c.id && meta.is_file() && c.pos < size && holds_checkpoint(&file, size, c);
        if !same {
            continue;
        }
        let fp = fingerprint(&file, size.min(FINGERPRINT_MAX)).ok()?;
        return Some(TailedFile {
            _slot: super::DescriptorSlot::take(),
            id: c.id,
            path: path.into(),
            tag: c.tag.clone(),
            file,
            pos: c.pos,
            lines: 0,
            committed_pos: c.pos,
            fp,
            committed_fp: fp,
            scan_hint: 0,
            gone_since: Some(now),
            last_growth: now,
            last_size: size,
            last_mtime: meta.modified().ok(),
            drain_size: None,
            unsaved: true,
            adoptable: false,
        });
    }
    None
}

/// The checkpoints of `cps` that no source holds (`held`) and whose file is gone: neither at its
/// path nor beside it under another name (same inode). Nothing can read those files again. The
/// others stay: a source that follows the file again resumes from its checkpoint.
pub fn gone_checkpoints(
    cps: &Checkpoints,
    held: &std::collections::HashSet<crate::buffer::SourceKey>,
) -> Vec<crate::buffer::SourceKey> {
    use std::os::unix::fs::DirEntryExt;
    let mut dirs: std::collections::HashMap<&Path, std::collections::HashMap<u64, Vec<PathBuf>>> = Default::default();
    let mut gone = Vec::new();
    for (k, c) in cps {
        if held.contains(k) {
            continue;
        }
        // The same file: same identity and the same leading bytes (another file may have
        // taken the inode number of one that was deleted).
        let holds = |p: &Path| {
            crate::fsutil::open_for_reading(p).is_ok_and(|f| {
                f.metadata()
                    .is_ok_and(|m| FileId::of(&m) == c.id && holds_checkpoint(&f, m.len(), c))
            })
        };
        let here = holds(&c.path);
        let beside = !here
            && c.path.parent().is_some_and(|dir| {
                dirs.entry(dir)
                    .or_insert_with(|| {
                        let mut by_ino: std::collections::HashMap<u64, Vec<PathBuf>> = Default::default();
                        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                            by_ino.entry(e.ino()).or_default().push(e.path());
                        }
                        by_ino
                    })
                    .get(&c.id.ino)
                    .is_some_and(|paths| paths.iter().any(|p| holds(p)))
            });
        if !here && !beside {
            gone.push(k.clone());
        }
    }
    gone
}

/// What kind of file `meta` describes, for messages.
fn file_kind(meta: &std::fs::Metadata) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    let t = meta.file_type();
    if t.is_dir() {
        "a directory"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_block_device() || t.is_char_device() {
        "a device"
    } else {
        "not a file"
    }
}
