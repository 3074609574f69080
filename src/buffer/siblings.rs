//! The files beside a chunk file, named after it. The buffer owns these names: it removes the
//! files with their chunk, and recovery keeps only the progress records of chunks it knows.
//!
//! - `<seq>.chunk.progress`: how many of the chunk's bytes an output that delivers in parts
//!   (CloudWatch, batch by batch) has delivered; the secondary directory gets only the rest.
//! - `<seq>.chunk.<ext>`: the chunk compressed for upload (`gz`, `zst`), reused by a retry.

use std::path::{Path, PathBuf};

/// The delivered-prefix record of a chunk.
pub fn progress_path(chunk: &Path) -> PathBuf {
    let mut p = chunk.as_os_str().to_owned();
    p.push(".progress");
    PathBuf::from(p)
}

/// The delivered prefix of a chunk (0 when none is recorded).
pub fn read_progress(chunk: &Path) -> u64 {
    std::fs::read_to_string(progress_path(chunk))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

/// The compressed form of a chunk, with the file extension of its codec.
pub fn compressed_path(chunk: &Path, extension: &str) -> PathBuf {
    let mut p = chunk.as_os_str().to_owned();
    p.push(".");
    p.push(extension);
    PathBuf::from(p)
}
