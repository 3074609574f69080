//! The files beside a chunk file, named after it. The buffer owns these names: it removes the
//! files with their chunk, and recovery keeps only the progress records of chunks it knows.
//!
//! - `<seq>.chunk.progress`: how many of the chunk's bytes an output that delivers in parts
//!   (CloudWatch, batch by batch) has delivered; the secondary directory gets only the rest.
//!   One line, `<offset, 20 digits> <CRC32 of the digits, 8 hex digits>`, rewritten in place
//!   ([`ProgressRecord`]); a bare number (what logship wrote before) is read as well.
//! - `<seq>.chunk.<ext>`: the chunk compressed for upload (`gz`, `zst`), reused by a retry.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// The delivered-prefix record of a chunk.
pub fn progress_path(chunk: &Path) -> PathBuf {
    let mut p = chunk.as_os_str().to_owned();
    p.push(".progress");
    PathBuf::from(p)
}

/// The delivered prefix of a chunk: 0 when none is recorded, or when the record does not check
/// out (a write torn by a power loss), so that a doubt resends rather than skips.
pub fn read_progress(chunk: &Path) -> u64 {
    std::fs::read_to_string(progress_path(chunk))
        .ok()
        .and_then(|s| parse_progress(&s))
        .unwrap_or(0)
}

fn parse_progress(s: &str) -> Option<u64> {
    let s = s.trim();
    match s.split_once(' ') {
        Some((digits, crc)) => {
            (u32::from_str_radix(crc, 16).ok()? == crc32fast::hash(digits.as_bytes())).then_some(())?;
            digits.parse().ok()
        }
        // Written whole (temp file and rename) by logship before 2026-12.
        None => s.parse().ok(),
    }
}

/// Length of a progress line: 20 digits, a space, 8 hex digits and a newline.
const PROGRESS_LEN: usize = 30;

fn progress_line(offset: u64) -> [u8; PROGRESS_LEN] {
    let digits = format!("{offset:020}");
    let line = format!("{digits} {:08x}\n", crc32fast::hash(digits.as_bytes()));
    line.as_bytes().try_into().expect("20 + 1 + 8 + 1 bytes")
}

/// A chunk's progress record, open while the chunk is delivered in parts. Each part rewrites the
/// one line in place and `fdatasync`s it. Why not a temporary file and a rename, as for the
/// state: a CloudWatch chunk is about 1,100 batches per GiB, and creating, syncing and renaming a
/// file and syncing the directory for each was 6 % of the output's CPU (an in-place rewrite of
/// one block costs a third of that). The line is the same length every time, so a rewrite changes
/// no metadata but the times; a write torn by a power loss fails its CRC32 and reads as 0, which
/// resends the chunk rather than skipping any of it.
#[derive(Debug)]
pub struct ProgressRecord {
    file: File,
    path: PathBuf,
    /// Whether a line has been written and synced with the file's name (after that, a rewrite
    /// needs only its data synced).
    settled: bool,
}

impl ProgressRecord {
    /// Opens (or creates, 0600, never through a symlink) the progress record of `chunk`.
    pub fn open(chunk: &Path) -> io::Result<ProgressRecord> {
        let path = progress_path(chunk);
        let file = crate::fsutil::private_file().open(&path)?;
        Ok(ProgressRecord {
            file,
            path,
            settled: false,
        })
    }

    /// Records that the chunk's first `offset` bytes are delivered, durably.
    pub fn record(&mut self, offset: u64) -> io::Result<()> {
        self.file.write_all_at(&progress_line(offset), 0)?;
        if self.settled {
            return self.file.sync_data();
        }
        // Whatever a longer file held after the line (it would make the line unreadable).
        self.file.set_len(PROGRESS_LEN as u64)?;
        self.file.sync_all()?;
        crate::fsutil::sync_parent(&self.path)?;
        self.settled = true;
        Ok(())
    }
}

/// The compressed form of a chunk, with the file extension of its codec.
pub fn compressed_path(chunk: &Path, extension: &str) -> PathBuf {
    let mut p = chunk.as_os_str().to_owned();
    p.push(".");
    p.push(extension);
    PathBuf::from(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_progress_record_is_rewritten_in_place_and_a_torn_one_reads_as_nothing() {
        let d = tempfile::tempdir().unwrap();
        let chunk = d.path().join("7.chunk");
        assert_eq!(read_progress(&chunk), 0, "none recorded");
        // What an older logship wrote: a bare number; it is read, then overwritten whole.
        std::fs::write(progress_path(&chunk), "123456789012345678\n").unwrap();
        assert_eq!(read_progress(&chunk), 123_456_789_012_345_678);
        let mut r = ProgressRecord::open(&chunk).unwrap();
        r.record(42).unwrap();
        assert_eq!(read_progress(&chunk), 42);
        r.record(u64::MAX).unwrap();
        assert_eq!(read_progress(&chunk), u64::MAX);
        r.record(1_048_576).unwrap();
        let line = std::fs::read(progress_path(&chunk)).unwrap();
        assert_eq!(line.len(), PROGRESS_LEN);
        assert_eq!(read_progress(&chunk), 1_048_576);
        // A write torn between an old line and a new one: a digit of the new one with the old
        // CRC32 (or the reverse) does not check out, and reads as 0 (resend, never skip).
        let (old, new) = (progress_line(1_048_576), progress_line(9_048_576));
        for cut in 1..PROGRESS_LEN {
            let mut torn = new[..cut].to_vec();
            torn.extend_from_slice(&old[cut..]);
            std::fs::write(progress_path(&chunk), &torn).unwrap();
            let want = match &torn[..] {
                t if t == new => 9_048_576,
                t if t == old => 1_048_576,
                _ => 0,
            };
            assert_eq!(read_progress(&chunk), want, "cut {cut}");
        }
        // A longer file is cut to the line at its first record.
        std::fs::write(progress_path(&chunk), "9".repeat(100)).unwrap();
        ProgressRecord::open(&chunk).unwrap().record(5).unwrap();
        assert_eq!(read_progress(&chunk), 5);
        // Garbage reads as nothing; so does a planted symlink refuse to be written through.
        std::fs::write(progress_path(&chunk), "x y").unwrap();
        assert_eq!(read_progress(&chunk), 0);
        std::fs::remove_file(progress_path(&chunk)).unwrap();
        std::os::unix::fs::symlink(d.path().join("elsewhere"), progress_path(&chunk)).unwrap();
        assert!(ProgressRecord::open(&chunk).is_err());
        assert!(!d.path().join("elsewhere").exists());
    }
}
