//! The secondary (error) directory: where a chunk goes when its output has failed for good.
//!
//! As fluentd's `secondary_file`, each chunk is written whole to `<directory>/<basename>.<n>`,
//! n the first unused number from 0. The file holds exactly the chunk's bytes, so it can be
//! shipped again later (`logship ship --once`). It is written in three steps: the name is taken
//! (an empty file), the buffer records that the chunk goes there (`ChunkMeta::secondary`, one
//! commit), then the bytes are written and the chunk is forgotten. A crash after the name was
//! recorded is finished by the next run, which writes the same file again; it never delivers the
//! chunk as well.
//!
//! Beside each file, `<directory>/.logship/<file name>.json` records what it was made for (a
//! [`SecondaryRecord`]: the output, its destination, the chunk's key and tag), so that
//! `logship resend` can send it later to that destination and key. The record is written after
//! the file; a file without one (a crash in between, an older logship) is listed by `resend`
//! and left alone.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// Why a chunk could not be put in the secondary directory.
#[derive(Debug, thiserror::Error)]
#[error("cannot write secondary file in {dir}: {source}")]
pub struct SecondaryError {
    /// The directory.
    pub dir: PathBuf,
    /// The error.
    pub source: io::Error,
}

/// What a secondary file was made for: enough to send it later to the same destination and
/// key, with the same no-overwrite rule (`logship resend`).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct SecondaryRecord {
    /// The chunk as the buffer knew it (output name, tag, key, key alternatives, length).
    pub chunk: crate::buffer::ChunkMeta,
    /// The output's destination ([`crate::sink::Sink::destination`]): a resend to another one is
    /// refused.
    pub destination: String,
    /// Why it was not delivered.
    pub reason: String,
}

/// Where the record of the secondary file `file` is.
pub fn record_path(file: &Path) -> PathBuf {
    let name = file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    file.parent()
        .unwrap_or(Path::new("."))
        .join(".logship")
        .join(format!("{name}.json"))
}

/// Writes the record of `file` (private, replaced atomically).
pub fn write_record(file: &Path, record: &SecondaryRecord) -> Result<(), SecondaryError> {
    let path = record_path(file);
    let dir = path.parent().unwrap_or(Path::new(".")).to_path_buf();
    let err = |source| SecondaryError {
        dir: dir.clone(),
        source,
    };
    crate::fsutil::private_dir(&dir).map_err(err)?;
    let text = serde_json::to_vec_pretty(record).map_err(|e| err(io::Error::other(e)))?;
    crate::fsutil::write_atomic(&path, &text, false).map_err(err)
}

/// Reads the record of `file`: `None` when it has none.
pub fn read_record(file: &Path) -> Result<Option<SecondaryRecord>, String> {
    let path = record_path(file);
    match fs::read(&path) {
        Ok(b) => serde_json::from_slice(&b)
            .map(Some)
            .map_err(|e| format!("{}: {e}", path.display())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

/// Takes the first unused `<dir>/<basename>.<n>` by creating it, empty (another logship writing
/// to the same directory takes another number); returns its path. The chunk's bytes are written
/// into it by [`fill_secondary`] once the buffer has recorded that the chunk goes there, so that
/// a crash between the two is finished by the next run, not repeated by a delivery.
pub fn reserve_secondary(dir: &Path, basename: &str) -> Result<PathBuf, SecondaryError> {
    let err = |source| SecondaryError {
        dir: dir.to_path_buf(),
        source,
    };
    // Private, as the buffer: what is in it is undelivered logs (0700, ours, 0600 files).
    crate::fsutil::private_dir(dir).map_err(err)?;
    for n in 0u64.. {
        let path = dir.join(format!("{basename}.{n}"));
        match crate::fsutil::private_file().create_new(true).open(&path) {
            Ok(_) => return Ok(path),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(err(e)),
        }
    }
    unreachable!("u64 numbers run out")
}

/// Writes the first `len` bytes of the chunk file `chunk` (less what an output that delivers in
/// parts already delivered) into `dest`, a file [`reserve_secondary`] made, replacing whatever
/// a run that crashed half-way left in it; syncs it with `durable`.
pub fn fill_secondary(chunk: &Path, len: u64, dest: &Path, durable: bool) -> Result<(), SecondaryError> {
    let err = |source| SecondaryError {
        dir: dest.parent().unwrap_or(dest).to_path_buf(),
        source,
    };
    let mut src = fs::File::open(chunk).map_err(err)?;
    // Only what was not delivered yet (an output that delivers a chunk in parts records how far
    // it got; see `buffer::siblings`).
    let delivered = crate::buffer::siblings::read_progress(chunk).min(len);
    io::Seek::seek(&mut src, io::SeekFrom::Start(delivered)).map_err(err)?;
    // Its first `len` bytes: the file may hold more that were never committed.
    let mut src = io::Read::take(src, len - delivered);
    let mut f = crate::fsutil::private_file()
        .truncate(true)
        .create(false)
        .open(dest)
        .map_err(err)?;
    crate::fsutil::copy_stream(&mut src, &mut f, &mut vec![0u8; 256 * 1024])
        .and_then(|_| if durable { f.sync_all() } else { Ok(()) })
        .map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn takes_the_first_unused_number_and_copies_exact_bytes() {
        let d = tempfile::tempdir().unwrap();
        let chunk = d.path().join("1.chunk");
        // Bytes after the chunk's length were never committed: not copied.
        fs::write(&chunk, b"line 1\nline 2\nuncommitted\n").unwrap();
        let dir = d.path().join("error");
        let a = reserve_secondary(&dir, "s3.log").unwrap();
        let b = reserve_secondary(&dir, "s3.log").unwrap();
        assert_eq!(a, dir.join("s3.log.0"));
        assert_eq!(b, dir.join("s3.log.1"));
        assert_eq!(fs::read(&b).unwrap(), b"");
        // Filled (again, as a run that finishes a crashed one's write does): exactly the bytes.
        fs::write(&b, b"half written by a run that crashed, and longer").unwrap();
        fill_secondary(&chunk, 14, &b, false).unwrap();
        assert_eq!(fs::read(&b).unwrap(), b"line 1\nline 2\n");
    }
}
