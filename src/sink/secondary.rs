//! The secondary (error) directory: where a chunk goes when its output has failed for good.
//!
//! As fluentd's `secondary_file`, each chunk is written whole to `<directory>/<basename>.<n>`,
//! n the first unused number from 0. The file holds exactly the chunk's bytes, so it can be
//! shipped again later (`logship ship --once`).

use std::fs::{self, OpenOptions};
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

/// Copies the chunk file `chunk` to the first unused `<dir>/<basename>.<n>`; returns that path.
pub fn write_secondary(
    chunk: &Path,
    len: u64,
    dir: &Path,
    basename: &str,
    durable: bool,
) -> Result<PathBuf, SecondaryError> {
    let err = |source| SecondaryError {
        dir: dir.to_path_buf(),
        source,
    };
    fs::create_dir_all(dir).map_err(err)?;
    let mut src = fs::File::open(chunk).map_err(err)?;
    // Only what was not delivered yet (an output that delivers a chunk in parts records how far
    // it got; see `buffer::siblings`).
    let delivered = crate::buffer::siblings::read_progress(chunk).min(len);
    io::Seek::seek(&mut src, io::SeekFrom::Start(delivered)).map_err(err)?;
    // Its first `len` bytes: the file may hold more that were never committed.
    let mut src = io::Read::take(src, len - delivered);
    for n in 0u64.. {
        let path = dir.join(format!("{basename}.{n}"));
        match OpenOptions::new().write(true).create_new(true).open(&path) {
            Ok(mut f) => {
                let r = crate::fsutil::copy_stream(&mut src, &mut f, &mut vec![0u8; 256 * 1024])
                    .and_then(|_| if durable { f.sync_all() } else { Ok(()) });
                if let Err(e) = r {
                    let _ = fs::remove_file(&path);
                    return Err(err(e));
                }
                return Ok(path);
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(err(e)),
        }
    }
    unreachable!("u64 numbers run out")
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
        let a = write_secondary(&chunk, 14, &dir, "s3.log", false).unwrap();
        let b = write_secondary(&chunk, 14, &dir, "s3.log", false).unwrap();
        assert_eq!(a, dir.join("s3.log.0"));
        assert_eq!(b, dir.join("s3.log.1"));
        assert_eq!(fs::read(&b).unwrap(), b"line 1\nline 2\n");
    }
}
