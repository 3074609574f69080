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
    /// FNV-1a of them: what checkpoints store (the state's format), checked once per file at
    /// start-up.
    pub(super) hash: u64,
    /// A hash of the same bytes that is several times faster to compute (eight bytes per step,
    /// four independent lanes): what is compared each time a followed file grows. FNV-1a takes
    /// one byte per multiply, and with 10,000 files growing it was 7 % of the CPU. Never stored.
    pub(super) quick: u64,
}

impl Fingerprint {
    /// The fingerprint of no bytes (a file read from its start again).
    pub(super) fn empty() -> Fingerprint {
        Fingerprint {
            len: 0,
            hash: fnv1a(b""),
            quick: quick_hash(b""),
        }
    }
}

/// Reads up to `len` (at most [`FINGERPRINT_MAX`]) leading bytes of `file` into `buf`; returns
/// how many there were.
fn leading_bytes(file: &File, len: u64, buf: &mut [u8; FINGERPRINT_MAX as usize]) -> std::io::Result<usize> {
    let len = len.min(FINGERPRINT_MAX) as usize;
    let mut got = 0;
    while got < len {
        let n = file.read_at(&mut buf[got..len], got as u64)?;
        if n == 0 {
            break;
        }
        got += n;
    }
    Ok(got)
}

pub(super) fn fingerprint(file: &File, len: u64) -> std::io::Result<Fingerprint> {
    let mut buf = [0u8; FINGERPRINT_MAX as usize];
    let got = leading_bytes(file, len, &mut buf)?;
    Ok(Fingerprint {
        len: got as u32,
        hash: fnv1a(&buf[..got]),
        quick: quick_hash(&buf[..got]),
    })
}

/// Whether `file` still starts with the bytes `fp` was taken of (compares the quick hash).
pub(super) fn starts_as(file: &File, fp: &Fingerprint) -> std::io::Result<bool> {
    let mut buf = [0u8; FINGERPRINT_MAX as usize];
    let got = leading_bytes(file, fp.len as u64, &mut buf)?;
    Ok(got == fp.len as usize && quick_hash(&buf[..got]) == fp.quick)
}

/// Whether `file` (of `size` bytes) is still the file checkpoint `c` was taken of: long enough
/// for its position, with the same leading bytes. (The caller has matched device and inode.)
pub(super) fn holds_checkpoint(file: &File, size: u64, c: &SourceCheckpoint) -> bool {
    c.pos <= size
        && (c.fp_len as u64) <= size
        && fingerprint(file, c.fp_len as u64).is_ok_and(|fp| fp.len == c.fp_len && fp.hash == c.fp)
}

/// A 64-bit hash of `bytes`: four lanes of 8-byte words (each step a xor, a multiply and a
/// rotation, so a changed byte changes its lane), folded together with the length and the tail.
/// Not for adversaries (neither is FNV-1a): it tells a rewritten start from the old one.
fn quick_hash(bytes: &[u8]) -> u64 {
    const K: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut lanes: [u64; 4] = [
        0x243f_6a88_85a3_08d3,
        0x1319_8a2e_0370_7344,
        0xa409_3822_299f_31d0,
        0x082e_fa98_ec4e_6c89,
    ];
    let word = |b: &[u8], i: usize| {
        u64::from_le_bytes([
            b[i],
            b[i + 1],
            b[i + 2],
            b[i + 3],
            b[i + 4],
            b[i + 5],
            b[i + 6],
            b[i + 7],
        ])
    };
    let mut blocks = bytes.chunks_exact(32);
    for block in &mut blocks {
        let block: &[u8; 32] = block.try_into().expect("32 bytes");
        lanes[0] = (lanes[0] ^ word(block, 0)).wrapping_mul(K).rotate_left(29);
        lanes[1] = (lanes[1] ^ word(block, 8)).wrapping_mul(K).rotate_left(29);
        lanes[2] = (lanes[2] ^ word(block, 16)).wrapping_mul(K).rotate_left(29);
        lanes[3] = (lanes[3] ^ word(block, 24)).wrapping_mul(K).rotate_left(29);
    }
    let mut h = bytes.len() as u64;
    for lane in lanes {
        h = (h ^ lane).wrapping_mul(K).rotate_left(29);
    }
    for &b in blocks.remainder() {
        h = (h ^ b as u64).wrapping_mul(K).rotate_left(29);
    }
    h ^ (h >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_quick_hash_changes_with_any_byte_and_with_the_length() {
        let base: Vec<u8> = (0..1024u32).map(|i| (i * 7 + 3) as u8).collect();
        for len in [0, 1, 7, 8, 31, 32, 33, 100, 1023, 1024] {
            let h = quick_hash(&base[..len]);
            if len > 0 {
                assert_ne!(h, quick_hash(&base[..len - 1]), "length {len}");
            }
            for i in 0..len {
                for bit in [0x01u8, 0x80] {
                    let mut v = base[..len].to_vec();
                    v[i] ^= bit;
                    assert_ne!(quick_hash(&v), h, "byte {i} of {len}, bit {bit:#x}");
                }
            }
        }
        // Two files that start alike but are not the same.
        assert_ne!(quick_hash(&[0u8; 64]), quick_hash(&[0u8; 65]));
    }

    #[test]
    fn a_file_starts_as_its_fingerprint_until_its_first_bytes_change() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, vec![b'a'; 2000]).unwrap();
        let file = File::open(&path).unwrap();
        let fp = fingerprint(&file, 2000).unwrap();
        assert_eq!((fp.len, fp.hash), (1024, fnv1a(&[b'a'; 1024])));
        assert!(starts_as(&file, &fp).unwrap());
        // Rewritten in place at byte 1000 (copytruncate, then new writes past the old length).
        let mut v = vec![b'a'; 3000];
        v[1000] = b'b';
        std::fs::write(&path, &v).unwrap();
        assert!(!starts_as(&file, &fp).unwrap());
        // Shorter than the fingerprint.
        std::fs::write(&path, [b'a'; 10]).unwrap();
        assert!(!starts_as(&file, &fp).unwrap());
    }
}
