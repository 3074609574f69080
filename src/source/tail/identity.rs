//! A file's identity: device and inode say which file it is; a fingerprint of its first bytes
//! tells the same file from a new one that reuses the inode, or one rewritten in place.

use std::fs::File;
use std::os::unix::fs::FileExt;

use crate::buffer::SourceCheckpoint;
use crate::fsutil::fnv1a;

/// How many leading bytes identify a file's content (against inode reuse and rewrites).
pub(super) const FINGERPRINT_MAX: u64 = 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Fingerprint {
    /// How many leading bytes it covers.
    pub(super) len: u32,
    /// FNV-1a of them.
    pub(super) hash: u64,
}

pub(super) fn fingerprint(file: &File, len: u64) -> std::io::Result<Fingerprint> {
    let mut buf = [0u8; FINGERPRINT_MAX as usize];
    let len = len.min(FINGERPRINT_MAX) as usize;
    let mut got = 0;
    while got < len {
        let n = file.read_at(&mut buf[got..len], got as u64)?;
        if n == 0 {
            break;
        }
        got += n;
    }
    Ok(Fingerprint {
        len: got as u32,
        hash: fnv1a(&buf[..got]),
    })
}

/// Whether `file` (of `size` bytes) is still the file checkpoint `c` was taken of: long enough
/// for its position, with the same leading bytes. (The caller has matched device and inode.)
pub(super) fn holds_checkpoint(file: &File, size: u64, c: &SourceCheckpoint) -> bool {
    c.pos <= size
        && (c.fp_len as u64) <= size
        && fingerprint(file, c.fp_len as u64).ok()
            == Some(Fingerprint {
                len: c.fp_len,
                hash: c.fp,
            })
}
