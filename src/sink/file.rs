//! The directory output (`file://DIR`): each chunk becomes the file `DIR/<key>`.
//!
//! The chunk is hard-linked (or, across file systems, copied) to a hidden temporary name next to
//! its destination, fsynced, and renamed to the destination, so a reader never sees a partial
//! file. A chunk of tailed data never replaces a file it did not write (the rename refuses an
//! existing name; a file with the chunk's exact bytes is its own earlier delivery); snapshots
//! and markers replace their earlier versions on purpose. Linking is safe because a sealed
//! chunk is never written again; the buffer only removes its own name for it after delivery.

use std::path::{Component, Path, PathBuf};

use super::DeliveryError;
use crate::buffer::SealedChunk;
use crate::fsutil::{sync_parent, temp_path_for};

/// Writes chunks as files under a directory.
#[derive(Debug, Clone)]
pub struct FileSink {
    dir: PathBuf,
}

impl FileSink {
    /// An output writing under `dir` (created when needed).
    pub fn new(dir: PathBuf) -> FileSink {
        FileSink { dir }
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The destination of a key, refusing keys that would leave the directory.
    pub fn destination(&self, key: &str) -> Result<PathBuf, DeliveryError> {
        let rel = Path::new(key);
        let ok = !key.is_empty() && rel.components().all(|c| matches!(c, Component::Normal(_)));
        if !ok {
            return Err(DeliveryError::Permanent(format!(
                "key {key:?} is not a relative path inside {}",
                self.dir.display()
            )));
        }
        Ok(self.dir.join(rel))
    }

    /// Copies the chunk file to its destination atomically. A chunk of tailed data never
    /// replaces a file it did not write: when its key holds other bytes (another run, another
    /// file of the same name), the next free index is taken, as fluent-plugin-s3 does.
    pub async fn deliver(&self, chunk: &SealedChunk) -> Result<(), DeliveryError> {
        // The first key is checked here (a bad key fails before any work); the others (the
        // index moved on) are made one at a time, only when the ones before are taken.
        self.destination(&chunk.key)?;
        let sink = self.clone();
        let chunk = chunk.clone();
        tokio::task::spawn_blocking(move || {
            let keys: Box<dyn Iterator<Item = String>> = if chunk.no_replace {
                Box::new(chunk.candidate_keys())
            } else {
                Box::new(std::iter::once(chunk.key.clone()))
            };
            let mut last = None;
            for key in keys {
                let dest = sink.destination(&key)?;
                match copy_atomic(&chunk.path, &dest, chunk.len, chunk.no_replace)? {
                    Placed::Done => return Ok(()),
                    Placed::Taken => {
                        tracing::warn!(file = %dest.display(), "a file that this chunk did not write is at its key; trying the next index")
                    }
                }
                last = Some(dest);
            }
            Err(super::every_key_taken(
                &last.map(|k| k.display().to_string()).unwrap_or_default(),
            ))
        })
        .await
        .map_err(|e| DeliveryError::Retryable(format!("delivery task failed: {e}")))?
    }
}

/// What became of one attempt to place a chunk at a key.
enum Placed {
    /// It is there (now, or already from an earlier attempt).
    Done,
    /// Other bytes are there.
    Taken,
}

impl FileSink {
    /// Removes the file at `key` (gone already is fine).
    pub fn delete(&self, key: &str) -> Result<(), DeliveryError> {
        let path = self.destination(key)?;
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(retry("cannot remove", &path, e)),
        }
    }
}

/// A failed file operation, classified: what retrying cannot fix (a path through a file, no
/// permission, a read-only file system, a name too long) is permanent and says so at once.
fn retry(what: &str, p: &Path, e: std::io::Error) -> DeliveryError {
    use std::io::ErrorKind as K;
    let message = format!("{what} {}: {e}", p.display());
    match e.kind() {
        K::NotADirectory | K::PermissionDenied | K::ReadOnlyFilesystem | K::IsADirectory | K::InvalidFilename => {
            DeliveryError::Permanent(format!("{message} (fix the output directory; retrying cannot help)"))
        }
        _ => DeliveryError::Retryable(message),
    }
}

/// Whether the file at `dest` holds exactly the bytes of `src` (an earlier delivery of the same
/// chunk, whose acknowledgement a crash lost).
fn same_content(src: &Path, dest: &Path) -> std::io::Result<bool> {
    use std::io::Read;
    let (mut a, mut b) = (std::fs::File::open(src)?, std::fs::File::open(dest)?);
    if a.metadata()?.len() != b.metadata()?.len() {
        return Ok(false);
    }
    let (mut x, mut y) = (vec![0u8; 64 << 10], vec![0u8; 64 << 10]);
    loop {
        let n = a.read(&mut x)?;
        if n == 0 {
            return Ok(true);
        }
        b.read_exact(&mut y[..n])?;
        if x[..n] != y[..n] {
            return Ok(false);
        }
    }
}

/// Renames `from` to `to` unless `to` exists (renameat2 RENAME_NOREPLACE; where the file
/// system cannot, a hard link, which also fails on an existing name, then an unlink).
fn rename_noreplace(from: &Path, to: &Path) -> std::io::Result<()> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let c = |p: &Path| CString::new(p.as_os_str().as_bytes()).map_err(std::io::Error::other);
    let (f, t) = (c(from)?, c(to)?);
    // The system call, not libc's wrapper: the static (musl) build's libc has none.
    // SAFETY: two valid NUL-terminated paths relative to the working directory.
    let r = unsafe {
        libc::syscall(
            libc::SYS_renameat2,
            libc::AT_FDCWD,
            f.as_ptr(),
            libc::AT_FDCWD,
            t.as_ptr(),
            libc::RENAME_NOREPLACE,
        )
    };
    if r == 0 {
        return Ok(());
    }
    let e = std::io::Error::last_os_error();
    if e.raw_os_error() != Some(libc::EINVAL) && e.raw_os_error() != Some(libc::ENOSYS) {
        return Err(e);
    }
    std::fs::hard_link(from, to)?;
    std::fs::remove_file(from)
}

fn copy_atomic(src: &Path, dest: &Path, expected: u64, no_replace: bool) -> Result<Placed, DeliveryError> {
    if no_replace && dest.exists() {
        return match same_content(src, dest) {
            Ok(true) => Ok(Placed::Done),
            Ok(false) => Ok(Placed::Taken),
            Err(e) => Err(retry("cannot compare with", dest, e)),
        };
    }
    if let Some(parent) = dest.parent() {
        std::fs::create_dir_all(parent).map_err(|e| retry("cannot create directory", parent, e))?;
    }
    let tmp = temp_path_for(dest);
    let _ = std::fs::remove_file(&tmp);
    // A sealed chunk never changes, so on the same file system the destination can simply be
    // another name for it: no byte is copied. Elsewhere, a plain buffered copy.
    if std::fs::hard_link(src, &tmp).is_err() {
        copy_plain(src, &tmp).map_err(|e| retry("cannot write", &tmp, e))?;
    }
    let len = std::fs::metadata(&tmp)
        .map_err(|e| retry("cannot stat", &tmp, e))?
        .len();
    if len != expected {
        let _ = std::fs::remove_file(&tmp);
        return Err(DeliveryError::Retryable(format!(
            "chunk file {} has {len} bytes, expected {expected}",
            src.display()
        )));
    }
    std::fs::File::open(&tmp)
        .and_then(|f| f.sync_all())
        .map_err(|e| retry("cannot fsync", &tmp, e))?;
    crate::crashpoint::hit("file-sink-before-rename");
    if no_replace {
        match rename_noreplace(&tmp, dest) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                // Someone else's file appeared since we looked.
                let _ = std::fs::remove_file(&tmp);
                return copy_atomic(src, dest, expected, true);
            }
            Err(e) => return Err(retry("cannot rename into", dest, e)),
        }
    } else {
        std::fs::rename(&tmp, dest).map_err(|e| retry("cannot rename into", dest, e))?;
    }
    sync_parent(dest).map_err(|e| retry("cannot fsync directory of", dest, e))?;
    Ok(Placed::Done)
}

/// Copies with read/write in 256 KiB blocks.
fn copy_plain(src: &Path, dest: &Path) -> std::io::Result<()> {
    let mut from = std::fs::File::open(src)?;
    let mut to = std::fs::File::create(dest)?;
    crate::fsutil::copy_stream(&mut from, &mut to, &mut vec![0u8; 256 * 1024]).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_must_stay_inside_the_directory() {
        let s = FileSink::new("/out".into());
        assert_eq!(s.destination("a/b.txt").unwrap(), PathBuf::from("/out/a/b.txt"));
        assert!(s.destination("../x").is_err());
        assert!(s.destination("/etc/passwd").is_err());
        assert!(s.destination("a/./b").is_ok());
        assert!(s.destination("").is_err());
    }
}
