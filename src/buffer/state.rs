//! The buffer's on-disk state: a snapshot (`state.json`, versioned) and the records of the commits
//! since it (`state.journal`, see [`super::journal`]).
//!
//! The snapshot holds the chunk metadata, the tail checkpoints and the `%{index}` counters; a
//! journal record holds what one commit changed in them. Keeping them together is deliberate: a
//! chunk's committed length and the read position that produced it are written in one atomic
//! step (one rename, or one checksummed record), so they never disagree after a crash and a
//! restart neither loses nor repeats a byte (see `docs/design.md`, "One state").

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::fsutil::FileId;

/// The format version written by this build. A newer version on disk is refused, not guessed at.
/// Version 2 added the journal (`generation`); a version-1 snapshot is read as generation 0 with
/// no journal. A version-1 logship refuses a version-2 state rather than ignore its journal.
/// Version 3 added journal records' `moved` (a checkpoint whose position alone changed, by its
/// key and new position), which a version-2 logship would ignore: it refuses the state instead.
/// A version-2 state is read, and the first commit writes a version-3 snapshot, so records in
/// the new form only ever follow a version-3 snapshot.
/// Version 4 ends the snapshot with its checksum (`"checksum":"<FNV-1a 64 of the bytes before
/// the field>"`, the last field), so a flipped bit is an error and not a position moved; and a
/// journal emptied for a new snapshot starts with a record of that snapshot's generation, so a
/// journal without its snapshot is never taken for a fresh start. Older snapshots are read, and
/// the first commit replaces them.
pub const STATE_VERSION: u32 = 4;

/// What precedes a version-4 snapshot's checksum (see [`STATE_VERSION`]).
const CHECKSUM_FIELD: &[u8] = b",\"checksum\":\"";

/// `json` (a JSON object, as serde writes it) with its checksum added as the last field.
pub fn with_checksum(mut json: Vec<u8>) -> Vec<u8> {
    debug_assert_eq!(json.last(), Some(&b'}'));
    json.pop();
    let sum = crate::fsutil::fnv1a(&json);
    json.extend_from_slice(CHECKSUM_FIELD);
    json.extend_from_slice(format!("{sum:016x}\"}}").as_bytes());
    json
}

/// Whether `bytes` end with a checksum field that matches what precedes it: `Some(true)` it
/// does, `Some(false)` it is there and does not match, `None` there is none.
fn checksum_holds(bytes: &[u8]) -> Option<bool> {
    let body = bytes.trim_ascii_end();
    let at = memchr::memmem::rfind(body, CHECKSUM_FIELD)?;
    let rest = &body[at + CHECKSUM_FIELD.len()..];
    let hex = rest.strip_suffix(b"\"}")?;
    let sum = std::str::from_utf8(hex)
        .ok()
        .and_then(|h| u64::from_str_radix(h, 16).ok());
    Some(hex.len() == 16 && sum == Some(crate::fsutil::fnv1a(&body[..at])))
}

/// Which checkpoint: the source (config name), the file's device and inode, and its tag (a
/// Spark event-log source may follow a file and mirror another with the same identity).
/// Shared strings (`Arc<str>`): a busy node moves thousands of checkpoints per commit, and each
/// key and checkpoint built by cloning `String`s cost allocations that were a tenth of its CPU.
pub type SourceKey = (Arc<str>, FileId, Arc<str>);

/// The key of checkpoint `c`.
pub fn source_key(c: &SourceCheckpoint) -> SourceKey {
    (c.source.clone(), c.id, c.tag.clone())
}

/// Everything the buffer must remember across a restart.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StateFile {
    /// Format version ([`STATE_VERSION`]).
    pub version: u32,
    /// Which snapshot this is: journal records name the generation they follow, so records left
    /// from before a newer snapshot are never applied to it.
    #[serde(default)]
    pub generation: u64,
    /// The sequence number the next chunk gets; never reused.
    pub next_seq: u64,
    /// Read positions of the files being tailed.
    pub sources: Vec<SourceCheckpoint>,
    /// Chunks not yet delivered, in creation order.
    pub chunks: Vec<ChunkMeta>,
    /// `%{index}` counters per output and key prefix.
    pub indices: Vec<IndexCounter>,
    /// Marker objects (Spark's `appstatus_*`) already queued, so a restart does not queue them
    /// again (an "in progress" marker re-sent after "complete" would flip the app back).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub markers: Vec<MarkerRecord>,
    /// Where each output (by name) delivers: chunks recovered from this directory are delivered
    /// only there (see `BufferError::OtherDestination`).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub destinations: std::collections::BTreeMap<String, String>,
}

/// A marker object that was queued for an output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MarkerRecord {
    /// Output name.
    pub output: String,
    /// The marker's object key.
    pub key: String,
}

/// Where reading of one file stopped; every byte before `pos` is in a chunk (or delivered).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceCheckpoint {
    /// Device and inode of the file.
    #[serde(flatten)]
    pub id: FileId,
    /// How many leading bytes the fingerprint covers (a file shorter than the fingerprint size
    /// when first seen is fingerprinted on what it had).
    pub fp_len: u32,
    /// FNV-1a of the first `fp_len` bytes: tells a reused inode from the same file.
    pub fp: u64,
    /// Byte offset up to which the file has been read into chunks.
    pub pos: u64,
    /// The path it was last seen at (for messages only).
    pub path: Arc<Path>,
    /// The tag its records carry.
    pub tag: Arc<str>,
    /// The source (config `name`) that reads it.
    pub source: Arc<str>,
}

/// One chunk: a file of bytes under `chunks/` bound for one output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkMeta {
    /// Unique, increasing; names the chunk file.
    pub seq: u64,
    /// Name of the output it is for.
    pub output: String,
    /// Tag of the records in it.
    pub tag: String,
    /// Start of its time-key window, seconds since the epoch.
    pub timekey: i64,
    /// The object key it will be delivered to, fixed when the chunk was opened.
    pub key: String,
    /// Committed length in bytes.
    pub len: u64,
    /// When it was opened (ms since the epoch).
    pub created_ms: i64,
    /// When its last bytes were written (ms since the epoch).
    pub last_write_ms: i64,
    /// Sealed chunks take no more data and are (being) delivered.
    pub sealed: bool,
    /// Keys the output deletes once this chunk is delivered (a Spark `.inprogress` object that
    /// the chunk replaces under its final name).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub delete_after: Vec<String>,
    /// Set for chunks of tailed files: an object already at `key` that this chunk did not write
    /// is never replaced. (Snapshots and markers replace their own earlier versions on purpose.)
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub no_replace: bool,
    /// The other keys such a chunk may take when `key` is taken: `key` with its index moved on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alternatives: Option<KeyAlternatives>,
    /// The CRC32 of its first `len` bytes, kept up as they are written, for outputs that send
    /// it (the S3 API's `x-amz-checksum-crc32`): reading each chunk once more before its upload
    /// cost about a sixth of the S3 API's CPU. Committed and rolled back with `len`. `None`:
    /// not kept (other outputs, chunks copied in whole, a chunk that recovery found shorter);
    /// the upload then reads the chunk for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crc32: Option<u32>,
    /// The secondary file it is being written to (its output failed for good): recorded before
    /// the file is written, so a run that crashed in between finishes that write and does not
    /// deliver the chunk as well.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secondary: Option<PathBuf>,
    /// The followed file whose lines it holds, in an output that keeps records whole (its
    /// chunks hold one file's lines each). Not kept across a restart: recovered chunks are
    /// sealed.
    #[serde(skip)]
    pub file: Option<FileId>,
}

impl ChunkMeta {
    /// An open chunk with nothing in it yet (no extra keys, replaces nothing).
    pub fn empty(seq: u64, output: String, tag: &str, timekey: i64, key: String, now_ms: i64) -> ChunkMeta {
        ChunkMeta {
            seq,
            output,
            tag: tag.to_string(),
            timekey,
            key,
            len: 0,
            created_ms: now_ms,
            last_write_ms: now_ms,
            sealed: false,
            delete_after: Vec::new(),
            no_replace: false,
            alternatives: None,
            crc32: None,
            secondary: None,
            file: None,
        }
    }
}

/// `key` = `before` + `index` + `after`: the keys `before` + (index + n) + `after` are the ones
/// to try, in order, when an output finds `key` taken (fluent-plugin-s3's `check_object`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyAlternatives {
    /// The key up to the index.
    pub before: String,
    /// The index in `key`.
    pub index: u64,
    /// The key after the index.
    pub after: String,
}

impl KeyAlternatives {
    /// The n-th key to try after the chunk's own (n from 1).
    pub fn nth(&self, n: u64) -> String {
        format!("{}{}{}", self.before, self.index + n, self.after)
    }
}

/// Next `%{index}` for chunks whose keys share a prefix.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexCounter {
    /// Output name.
    pub output: String,
    /// The key with `%{index}` left out.
    pub prefix: String,
    /// The next index to hand out.
    pub next: u64,
    /// The time key of the last chunk that used it; counters of keys that contain the time
    /// slice are forgotten an hour after their window, since no new chunk can fall into it.
    pub timekey: i64,
    /// Whether the key contains the time slice (otherwise the counter is kept forever).
    pub timed: bool,
}

/// Why the state file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// I/O error reading it.
    #[error("cannot read buffer state {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// Not valid JSON of the expected shape.
    #[error("corrupt buffer state {path}: {source}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// The error.
        source: serde_json::Error,
    },
    /// A version-4 snapshot whose checksum is missing or does not match its bytes (a flipped
    /// bit, a cut, someone else's edit): none of it can be trusted.
    #[error(
        "buffer state {path} is damaged (its checksum does not match its contents); nothing was changed. Its undelivered chunks are in the chunks/ directory beside it: move the buffer directory aside to start afresh"
    )]
    Damaged {
        /// The file.
        path: PathBuf,
    },
    /// Written by a newer logship.
    #[error(
        "buffer state {path} has format version {found}; this logship reads version {STATE_VERSION} (use the newer logship, or another buffer dir)"
    )]
    Version {
        /// The file.
        path: PathBuf,
        /// Its version.
        found: u32,
    },
}

impl StateFile {
    /// Reads the state file, or returns an empty state when there is none.
    pub fn load(path: &Path) -> Result<StateFile, StateError> {
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(StateFile {
                    version: STATE_VERSION,
                    ..Default::default()
                });
            }
            Err(source) => {
                return Err(StateError::Read {
                    path: path.to_path_buf(),
                    source,
                });
            }
        };
        #[derive(Deserialize)]
        struct VersionOnly {
            version: u32,
        }
        let v: VersionOnly = serde_json::from_slice(&bytes).map_err(|source| StateError::Corrupt {
            path: path.to_path_buf(),
            source,
        })?;
        if v.version > STATE_VERSION || v.version == 0 {
            return Err(StateError::Version {
                path: path.to_path_buf(),
                found: v.version,
            });
        }
        match checksum_holds(&bytes) {
            Some(true) => {}
            None if v.version < 4 => {}
            _ => {
                return Err(StateError::Damaged {
                    path: path.to_path_buf(),
                });
            }
        }
        serde_json::from_slice(&bytes).map_err(|source| StateError::Corrupt {
            path: path.to_path_buf(),
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_file_is_empty_state_and_roundtrip_keeps_everything() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("state.json");
        let mut s = StateFile::load(&p).unwrap();
        assert_eq!(s.version, STATE_VERSION);
        s.next_seq = 7;
        s.sources.push(SourceCheckpoint {
            id: FileId { dev: 1, ino: 2 },
            fp_len: 3,
            fp: 4,
            pos: 5,
            path: Path::new("/a").into(),
            tag: "a".into(),
            source: "s".into(),
        });
        std::fs::write(&p, with_checksum(serde_json::to_vec(&s).unwrap())).unwrap();
        assert_eq!(StateFile::load(&p).unwrap(), s);
    }

    #[test]
    fn a_version_1_snapshot_is_read_as_generation_0() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("state.json");
        std::fs::write(
            &p,
            br#"{"version":1,"next_seq":4,"sources":[],"chunks":[],"indices":[]}"#,
        )
        .unwrap();
        let s = StateFile::load(&p).unwrap();
        assert_eq!((s.version, s.generation, s.next_seq), (1, 0, 4));
    }

    /// A version-4 snapshot carries its checksum: any flipped bit, a cut or a missing checksum
    /// is refused with the path, never read as other positions.
    #[test]
    fn a_snapshot_that_does_not_match_its_checksum_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("state.json");
        let s = StateFile {
            version: STATE_VERSION,
            next_seq: 12,
            ..Default::default()
        };
        let bytes = with_checksum(serde_json::to_vec(&s).unwrap());
        std::fs::write(&p, &bytes).unwrap();
        assert_eq!(StateFile::load(&p).unwrap(), s);
        for i in 0..bytes.len() {
            for bit in [0x01u8, 0x10, 0x80] {
                let mut bad = bytes.clone();
                bad[i] ^= bit;
                std::fs::write(&p, &bad).unwrap();
                assert!(
                    StateFile::load(&p).is_err(),
                    "bit {bit:#x} of byte {i} flipped was read"
                );
            }
        }
        for cut in [1, 10, bytes.len() / 2] {
            std::fs::write(&p, &bytes[..bytes.len() - cut]).unwrap();
            assert!(StateFile::load(&p).is_err(), "cut by {cut} was read");
        }
        std::fs::write(&p, serde_json::to_vec(&s).unwrap()).unwrap();
        let e = StateFile::load(&p).unwrap_err().to_string();
        assert!(e.contains("damaged") && e.contains("state.json"), "{e}");
    }

    #[test]
    fn newer_version_is_refused_with_the_path() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("state.json");
        std::fs::write(&p, br#"{"version": 99}"#).unwrap();
        let e = StateFile::load(&p).unwrap_err().to_string();
        assert!(e.contains("version 99") && e.contains("state.json"), "{e}");
    }
}
