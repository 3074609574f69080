//! Small file-system helpers shared by the buffer and the outputs: atomic replacement of a file
//! (temp file, fsync, rename, fsync of the directory), and file identity.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Options that create or truncate a private file (0600) and never follow a symlink at its
/// name: a file planted by someone else in a shared directory is an error, not a target.
pub fn private_file() -> OpenOptions {
    use std::os::unix::fs::OpenOptionsExt;
    let mut o = OpenOptions::new();
    o.write(true).create(true).mode(0o600).custom_flags(libc::O_NOFOLLOW);
    o
}

/// Raises the soft limit of open files to the hard one. Many containers start with a soft limit
/// of 1,024 under a much higher hard one, and every followed file holds a descriptor until it
/// is let go. Returns the soft limit now in force.
pub fn raise_open_file_limit() -> u64 {
    let Some(lim) = open_file_rlimit() else { return 0 };
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: setrlimit reads the struct we own.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            return raised.rlim_cur;
        }
    }
    lim.rlim_cur
}

/// The soft limit of open files now in force (0 when it cannot be read).
pub fn open_file_limit() -> u64 {
    open_file_rlimit().map_or(0, |l| l.rlim_cur)
}

/// `RLIMIT_NOFILE`, soft and hard.
fn open_file_rlimit() -> Option<libc::rlimit> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own.
    (unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0).then_some(lim)
}

/// Opens a file to read without updating its access time (`O_NOATIME`), where the kernel
/// allows that (the file is ours, or we have `CAP_FOWNER`); other files open as usual. A log
/// that is followed is read at every growth, and with `relatime` each of those reads made the
/// kernel write the inode's access time (3.5 % of the CPU following 10,000 growing files).
pub fn open_for_reading(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    match OpenOptions::new().read(true).custom_flags(libc::O_NOATIME).open(path) {
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => File::open(path),
        other => other,
    }
}

/// Creates `dir` (and missing parents) with mode 0700, then checks that it is ours to keep
/// private data in: a directory (not a link to one), owned by this user, and writable by no
/// one else (its group included). A
/// directory that fails the check is refused with the reason: another local user who owns or
/// can write into it could read what is kept there, or plant links that redirect our writes.
pub fn private_dir(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    let refuse = |why: String| Err(io::Error::new(io::ErrorKind::PermissionDenied, why));
    // A link at the name is followed only if it is ours: one planted by someone else
    // (`secondary -> their directory`) is refused, whoever owns its target.
    let link = fs::symlink_metadata(dir)?;
    if link.file_type().is_symlink() && link.uid() != me {
        return refuse(format!(
            "a symbolic link owned by uid {}, not by this user (uid {me})",
            link.uid()
        ));
    }
    let meta = fs::metadata(dir)?;
    if !meta.is_dir() {
        return refuse("not a directory".into());
    }
    if meta.uid() != me {
        return refuse(format!(
            "owned by uid {}, not by this user (uid {me}); another user could read or redirect what is buffered there",
            meta.uid()
        ));
    }
    if meta.mode() & 0o002 != 0 {
        return refuse(format!(
            "writable by every user (mode {:o}); make it private (chmod 700) or use another directory",
            meta.mode() & 0o7777
        ));
    }
    if meta.mode() & 0o020 != 0 {
        return refuse(format!(
            "writable by its group (mode {:o}): a member could plant links that redirect what is written there; make it private (chmod 700) or use another directory",
            meta.mode() & 0o7777
        ));
    }
    Ok(())
}

/// Replaces `path` with `bytes` so that a reader (or a crash) sees either the old or the new
/// content, never a mix. With `durable`, the data and the rename are fsynced. The temporary file
/// is private (0600) and never a symlink's target.
pub fn write_atomic(path: &Path, bytes: &[u8], durable: bool) -> io::Result<()> {
    write_atomic_hooked(path, bytes, durable, &|| {})
}

/// [`write_atomic`], calling `before_rename` once the temporary file is complete (and synced)
/// and not yet renamed: where a test crashes to show that a half-done write is harmless.
pub fn write_atomic_hooked(path: &Path, bytes: &[u8], durable: bool, before_rename: &dyn Fn()) -> io::Result<()> {
    let tmp = temp_path_for(path);
    let result = (|| {
        let mut f = private_file().truncate(true).open(&tmp)?;
        f.write_all(bytes)?;
        if durable {
            f.sync_all()?;
        }
        drop(f);
        before_rename();
        fs::rename(&tmp, path)?;
        if durable {
            sync_parent(path)?;
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// The temporary name used while `path` is being written: hidden, in the same directory (so the
/// rename is atomic), and the same for every attempt, so a retry replaces a leftover.
pub fn temp_path_for(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.logship-tmp"))
}

/// fsyncs the directory holding `path`, so a rename or unlink in it is durable.
pub fn sync_parent(path: &Path) -> io::Result<()> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    File::open(parent)?.sync_all()
}

/// Copies `src` to `dst` through `buf` with plain reads and writes; returns the bytes copied.
/// (`std::io::copy` between files uses copy_file_range, which on ext4 costs about seven times
/// more CPU than this.)
pub fn copy_stream(src: &mut impl io::Read, dst: &mut impl Write, buf: &mut [u8]) -> io::Result<u64> {
    let mut total = 0;
    loop {
        let n = src.read(buf)?;
        if n == 0 {
            return Ok(total);
        }
        dst.write_all(&buf[..n])?;
        total += n as u64;
    }
}

/// Copies the first `len` bytes of `src` (from offset 0, whatever its read position) to `dst`
/// in 256 KiB pieces; returns the bytes copied (fewer if the file is shorter).
pub fn copy_range(src: &fs::File, dst: &mut impl Write, len: u64) -> io::Result<u64> {
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0u8; (256 << 10).min(len.max(1) as usize)];
    let mut done = 0u64;
    while done < len {
        let want = (len - done).min(buf.len() as u64) as usize;
        let n = src.read_at(&mut buf[..want], done)?;
        if n == 0 {
            break;
        }
        dst.write_all(&buf[..n])?;
        done += n as u64;
    }
    Ok(done)
}

/// Whether the first `size` bytes of `file` end with a newline (false when `size` is 0).
pub fn ends_with_newline(file: &fs::File, size: u64) -> bool {
    use std::os::unix::fs::FileExt;
    let mut last = [0u8];
    size > 0 && file.read_at(&mut last, size - 1).is_ok_and(|n| n == 1) && last[0] == b'\n'
}

/// What makes a file the same file across renames: device and inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub struct FileId {
    /// Device number.
    pub dev: u64,
    /// Inode number.
    pub ino: u64,
}

impl FileId {
    /// The identity of an open file or a stat result.
    pub fn of(meta: &fs::Metadata) -> FileId {
        FileId {
            dev: meta.dev(),
            ino: meta.ino(),
        }
    }
}

/// 64-bit FNV-1a: a fast, stable hash for file fingerprints (not for security).
pub fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reading_a_followed_file_leaves_its_access_time_alone() {
        use std::io::Read;
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("app.log");
        fs::write(&path, b"a line\n").unwrap();
        // An access time older than the last write: with relatime, a plain read updates it.
        let old = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000_000);
        File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_times(fs::FileTimes::new().set_accessed(old))
            .unwrap();
        let mut text = String::new();
        open_for_reading(&path).unwrap().read_to_string(&mut text).unwrap();
        assert_eq!(text, "a line\n");
        assert_eq!(fs::metadata(&path).unwrap().accessed().unwrap(), old);
        assert!(open_for_reading(&d.path().join("missing")).is_err());
    }

    #[test]
    fn write_atomic_replaces_and_leaves_no_temp() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("state.json");
        write_atomic(&p, b"one", true).unwrap();
        write_atomic(&p, b"two", false).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        assert_eq!(fs::read_dir(d.path()).unwrap().count(), 1);
    }

    #[test]
    fn fnv_is_stable() {
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_ne!(fnv1a(b"a"), fnv1a(b"b"));
    }
}
