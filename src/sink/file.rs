//! The directory output (`file://DIR`): each chunk becomes the file `DIR/<key>`.
//!
//! The chunk is hard-linked (or, across file systems, copied) to a hidden temporary name next to
//! its destination, fsynced, and renamed over the destination, so a reader never sees a partial
//! file and a re-delivered chunk replaces itself byte for byte. Linking is safe because a sealed
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

    /// Copies the chunk file to its destination atomically.
    pub async fn deliver(&self, chunk: &SealedChunk) -> Result<(), DeliveryError> {
        let dest = self.destination(&chunk.key)?;
        let src = chunk.path.clone();
        let expected = chunk.len;
        tokio::task::spawn_blocking(move || copy_atomic(&src, &dest, expected))
            .await
            .map_err(|e| DeliveryError::Retryable(format!("delivery task failed: {e}")))?
    }
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

fn retry(what: &str, p: &Path, e: std::io::Error) -> DeliveryError {
    DeliveryError::Retryable(format!("{what} {}: {e}", p.display()))
}

fn copy_atomic(src: &Path, dest: &Path, expected: u64) -> Result<(), DeliveryError> {
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
    std::fs::rename(&tmp, dest).map_err(|e| retry("cannot rename into", dest, e))?;
    sync_parent(dest).map_err(|e| retry("cannot fsync directory of", dest, e))?;
    Ok(())
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
