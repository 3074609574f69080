//! `store_as`: what an object holds. Text uploads the chunk file itself; gzip and zstd stream the
//! chunk through the encoder into a sibling file (`<seq>.chunk.gz`), because an upload (a POST
//! form above all) must know its length before it starts. Memory stays at the encoder's window.
//! The sibling is reused by a retry and removed after delivery (or by buffer recovery).
//!
//! The sibling is not fsynced: only this process reuses it (its rename says it is complete, and
//! the page cache is what this process reads back), while buffer recovery after a crash removes
//! it and compresses the chunk again. Syncing would write every compressed byte to disk for an
//! object that is deleted seconds later.

use std::fs::File;
use std::io::{self, BufWriter};

use crate::fsutil::copy_stream;
use std::path::{Path, PathBuf};

/// Default gzip level: 1. fluentd uses zlib's 6, which costs about four times the CPU (about
/// 50 CPU-s per GiB of event-log JSON here, against 13) for objects about 10% smaller; a sidecar
/// should not spend a core on that. `compression_level = 6` restores fluentd's choice.
pub const DEFAULT_GZIP_LEVEL: i32 = 1;
/// Default zstd level: 1 (zstd's own default is 3: ~35% more CPU for a few percent smaller).
pub const DEFAULT_ZSTD_LEVEL: i32 = 1;

pub use crate::config::StoreAs;

/// The file to upload for `chunk` (its first `len` bytes, the committed ones: the file may hold
/// more, which are never shipped) and the length to upload: the chunk itself, or its compressed
/// sibling (made now unless a previous attempt left it complete).
pub fn prepare(chunk: &Path, len: u64, store_as: StoreAs, level: Option<i32>) -> io::Result<(PathBuf, u64)> {
    if store_as == StoreAs::Text {
        return Ok((chunk.to_path_buf(), len));
    }
    let out = sibling(chunk, store_as);
    if let Ok(m) = std::fs::metadata(&out) {
        return Ok((out, m.len()));
    }
    let tmp = out.with_extension(format!("{}.tmp", store_as.extension()));
    let mut src = io::Read::take(File::open(chunk)?, len);
    let dst = BufWriter::with_capacity(64 * 1024, File::create(&tmp)?);
    let mut buf = vec![0u8; 128 * 1024];
    match store_as {
        StoreAs::Gzip => {
            let level = flate2::Compression::new(level.unwrap_or(DEFAULT_GZIP_LEVEL).clamp(0, 9) as u32);
            let mut enc = flate2::write::GzEncoder::new(dst, level);
            copy_stream(&mut src, &mut enc, &mut buf)?;
            enc.finish()?.into_inner().map_err(|e| e.into_error())?;
        }
        StoreAs::Zstd => {
            let mut enc = zstd::stream::write::Encoder::new(dst, level.unwrap_or(DEFAULT_ZSTD_LEVEL))?;
            copy_stream(&mut src, &mut enc, &mut buf)?;
            enc.finish()?.into_inner().map_err(|e| e.into_error())?;
        }
        StoreAs::Text => unreachable!(),
    }
    std::fs::rename(&tmp, &out)?;
    let len = std::fs::metadata(&out)?.len();
    Ok((out, len))
}

/// Removes the compressed sibling of a delivered chunk, if any.
pub fn cleanup(chunk: &Path, store_as: StoreAs) {
    if store_as != StoreAs::Text {
        let _ = std::fs::remove_file(sibling(chunk, store_as));
    }
}

fn sibling(chunk: &Path, store_as: StoreAs) -> PathBuf {
    crate::buffer::siblings::compressed_path(chunk, store_as.extension())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn gzip_and_zstd_round_trip_and_text_is_the_chunk_itself() {
        let d = tempfile::tempdir().unwrap();
        let chunk = d.path().join("7.chunk");
        let data: Vec<u8> = (0..200_000u32)
            .flat_map(|i| format!("line {i}\n").into_bytes())
            .collect();
        // Bytes past the chunk's length (cut off by a rollback that could not cut the file)
        // are never shipped.
        let mut on_disk = data.clone();
        on_disk.extend_from_slice(b"uncommitted\n");
        std::fs::write(&chunk, &on_disk).unwrap();
        let n = data.len() as u64;
        assert_eq!(
            prepare(&chunk, n, StoreAs::Text, None).unwrap(),
            (chunk.clone(), data.len() as u64)
        );
        let (gz, len) = prepare(&chunk, n, StoreAs::Gzip, None).unwrap();
        assert_eq!(gz, d.path().join("7.chunk.gz"));
        assert_eq!(std::fs::metadata(&gz).unwrap().len(), len);
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(File::open(&gz).unwrap())
            .read_to_end(&mut out)
            .unwrap();
        assert_eq!(out, data);
        let (zst, _) = prepare(&chunk, n, StoreAs::Zstd, None).unwrap();
        assert_eq!(zstd::decode_all(File::open(&zst).unwrap()).unwrap(), data);
        cleanup(&chunk, StoreAs::Gzip);
        assert!(!gz.exists());
    }
}
