//! File-system events for the pipeline: which followed files were written to, and when to look
//! for new ones, from one `inotify(7)` instance.
//!
//! A [`DirWatcher`] watches directories (recursively where a pattern reaches into
//! subdirectories: new subdirectories are watched as they appear) and runs one thread that reads
//! events. A write names its file (by [`path_hash`]) in [`WakeFlags::changed`], so the next pass reads that file and
//! not every file; a file or directory created, renamed or removed sets [`WakeFlags::rescan`];
//! events lost to a full kernel queue set [`WakeFlags::full`] as well. A burst of events costs one
//! wake-up of the pipeline (the `pending` flag).
//!
//! Why not the `notify` crate, which logship used before: a node forwarder follows thousands of
//! files, each written to about once a second, so the watcher's cost per event is the cost of
//! following. notify's thread read 1 KiB of events per system call, built a `PathBuf` and an
//! `Event` with a `Vec` for each one, handed each to a callback that took a lock, and asked for
//! events logship ignores (every open and close of a followed file): 28 % of logship's CPU with
//! 10,000 files and 10,000 lines a second. This watcher asks only for what the pipeline uses,
//! reads 64 KiB of events per call, publishes a batch under one lock, and lets a burst gather
//! for a few milliseconds before reading again (the pipeline waits longer than that between
//! passes anyway). It also holds each watched directory's path once (notify held it twice, and
//! the pipeline a third time): 10,000 directories' paths are a megabyte.

use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::hash::Hasher;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use inotify::{EventMask, Inotify, WatchDescriptor, WatchMask, Watches};

/// Flags set by the watcher, so a burst of events costs one wake-up.
#[derive(Debug, Default)]
pub struct WakeFlags {
    /// A wake-up message is already queued.
    pub pending: AtomicBool,
    /// Files were created, renamed or removed: look for new files.
    pub rescan: AtomicBool,
    /// Files that events say were written to since the last pass, by [`path_hash`]: the next
    /// pass reads only them (unless a full pass is due).
    pub changed: Mutex<HashSet<u64>>,
    /// Events were lost (queue overflow) or named too many files: look at every file.
    pub full: AtomicBool,
}

/// A 64-bit hash of a path's bytes: how events name files to the pipeline, and how the tail
/// source finds a followed file from it. An event's path is hashed from its directory and name
/// as they come, without building the path (an allocation, a copy, and a second hash of the
/// whole path per event, with 10,000 lines a second over 10,000 files). Two followed paths
/// with the same hash (about one chance in 10^11 among 10,000 files) only mean that one of
/// them is read at the next poll instead of at its event.
pub fn path_hash(path: &OsStr) -> u64 {
    joined_hash(path, None)
}

/// [`path_hash`] of `dir.join(name)` (the empty `dir` is the current directory, as in
/// `Path::join`), computed without joining them.
fn joined_hash(dir: &OsStr, name: Option<&OsStr>) -> u64 {
    // SipHash with fixed keys: deterministic, and fed in pieces it gives what the whole gives.
    let mut h = std::collections::hash_map::DefaultHasher::new();
    let d = dir.as_encoded_bytes();
    h.write(d);
    if let Some(n) = name {
        if !d.is_empty() && !d.ends_with(b"/") {
            h.write(b"/");
        }
        h.write(n.as_encoded_bytes());
    }
    h.finish()
}

/// More changed paths than this between two passes: a full pass is as cheap.
pub const CHANGED_PATHS_MAX: usize = 100_000;

/// What logship asks inotify for: writes (to read them), and names appearing or going (to look
/// for files). Not opens, closes or attribute changes: the pipeline does nothing with them, and a
/// followed file is opened and closed by its writer as often as it likes.
fn mask() -> WatchMask {
    WatchMask::MODIFY
        | WatchMask::CREATE
        | WatchMask::DELETE
        | WatchMask::MOVED_FROM
        | WatchMask::MOVED_TO
        | WatchMask::DELETE_SELF
        | WatchMask::MOVE_SELF
        | WatchMask::ONLYDIR
}

/// How long the reading thread lets events gather after a batch. A writer that appends to
/// thousands of files in a burst would otherwise wake it for every few events. Short next to the
/// pipeline's own gap between passes, and far too short for the kernel's queue (16,384 events)
/// to fill at any rate a node produces.
const GATHER: Duration = Duration::from_millis(5);

/// Bytes of events read per system call (an event is 16 bytes and its name, rounded up).
const EVENT_BUFFER: usize = 64 * 1024;

/// Why a directory cannot be watched.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    /// inotify itself is unavailable (no instances left: `fs.inotify.max_user_instances`).
    #[error("cannot start inotify: {0}")]
    Init(#[source] io::Error),
    /// `inotify_add_watch` failed for this directory (gone, not readable, or the user's
    /// `fs.inotify.max_user_watches` reached).
    #[error("cannot watch {path}: {source}")]
    Add {
        /// The directory.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
}

/// The directory a path names on disk: the empty path (a pattern without a directory, whose
/// events' paths are bare file names) is the current one.
fn on_disk(dir: &Path) -> &Path {
    if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    }
}

/// One watched directory.
#[derive(Debug)]
struct Watched {
    /// To remove the watch (a directory renamed away).
    wd: WatchDescriptor,
    /// The directory, as the pipeline spells it (events' paths are built on it, so they match
    /// the followed files' paths).
    path: PathBuf,
    /// Whether its new subdirectories are watched too.
    recursive: bool,
    /// Asked for by the pipeline (not found below such a directory).
    root: bool,
}

/// The watched directories by watch descriptor; shared by the pipeline (which adds roots) and
/// the reading thread (which adds subdirectories as they appear and forgets removed ones).
#[derive(Debug)]
struct Table {
    watches: Watches,
    by_wd: HashMap<i32, Watched>,
    /// `fs.inotify.max_user_watches` was reached: said once.
    limit_logged: bool,
}

impl Table {
    /// Watches `dir` and, if `recursive`, every directory below it that is not watched yet.
    /// Errors below `dir` are logged, not returned: what cannot be watched is still found by
    /// scans and the safety poll.
    fn add(&mut self, dir: &Path, recursive: bool, root: bool) -> Result<(), WatchError> {
        let target = on_disk(dir);
        let wd = self.watches.add(target, mask()).map_err(|source| WatchError::Add {
            path: target.to_path_buf(),
            source,
        })?;
        let id = wd.get_watch_descriptor_id();
        let descend = match self.by_wd.get_mut(&id) {
            // The same directory (inotify gives one descriptor per inode), by this or another
            // name: keep the widest ask, and the name it was asked for by (events match it).
            Some(w) => {
                let widened = recursive && !w.recursive;
                w.recursive |= recursive;
                if root && !w.root {
                    w.root = true;
                    w.path = dir.to_path_buf();
                }
                widened
            }
            None => {
                self.by_wd.insert(
                    id,
                    Watched {
                        wd,
                        path: dir.to_path_buf(),
                        recursive,
                        root,
                    },
                );
                recursive
            }
        };
        if descend {
            self.add_below(dir);
        }
        Ok(())
    }

    /// Watches the directories below `dir` (following links to directories; a loop ends where
    /// a directory is already watched).
    fn add_below(&mut self, dir: &Path) {
        let Ok(entries) = std::fs::read_dir(on_disk(dir)) else {
            return;
        };
        for e in entries.flatten() {
            let is_dir = match e.file_type() {
                Ok(t) if t.is_dir() => true,
                Ok(t) if t.is_symlink() => e.path().is_dir(),
                _ => false,
            };
            if !is_dir {
                continue;
            }
            let child = dir.join(e.file_name());
            if let Err(e) = self.add(&child, true, false) {
                self.log_add_error(&e);
            }
        }
    }

    fn log_add_error(&mut self, e: &WatchError) {
        match e {
            WatchError::Add { source, .. } if source.raw_os_error() == Some(libc::ENOSPC) => {
                if !std::mem::replace(&mut self.limit_logged, true) {
                    tracing::warn!(error = %e, "inotify's watch limit (fs.inotify.max_user_watches) is reached; directories not watched are looked at by scans and the 5 s poll");
                }
            }
            _ => tracing::debug!(error = %e, "cannot watch a subdirectory"),
        }
    }

    /// Watches what is below every recursive watch and not watched yet: after the kernel's
    /// queue overflowed, a directory made meanwhile was never announced. One `readdir` per
    /// watched directory; an overflow is rare.
    fn add_missing(&mut self) {
        let recursive: Vec<PathBuf> = self
            .by_wd
            .values()
            .filter(|w| w.recursive)
            .map(|w| w.path.clone())
            .collect();
        for dir in recursive {
            self.add_below(&dir);
        }
    }

    /// Stops watching `dir` and every directory watched below it (renamed away: events there
    /// would carry the old name).
    fn remove_tree(&mut self, dir: &Path) {
        let gone: Vec<i32> = self
            .by_wd
            .iter()
            .filter(|(_, w)| !w.root && w.path.starts_with(dir))
            .map(|(&id, _)| id)
            .collect();
        for id in gone {
            if let Some(w) = self.by_wd.remove(&id) {
                let _ = self.watches.remove(w.wd);
            }
        }
    }
}

/// Watches directories with inotify and tells the pipeline what changed (see the module doc).
/// Dropping it stops its thread and closes the instance.
pub struct DirWatcher {
    table: Arc<Mutex<Table>>,
    /// An eventfd the thread polls beside inotify: written to stop it.
    stop: Arc<OwnedFd>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl DirWatcher {
    /// Starts the instance and its reading thread. `wake` is called (from that thread) when the
    /// flags changed and no wake-up is pending.
    pub fn start(flags: Arc<WakeFlags>, wake: impl Fn() + Send + 'static) -> Result<DirWatcher, WatchError> {
        let inotify = Inotify::init().map_err(WatchError::Init)?;
        // SAFETY: eventfd returns a new descriptor or -1, checked before it is owned.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(WatchError::Init(io::Error::last_os_error()));
        }
        // SAFETY: fd is a fresh descriptor nothing else owns.
        let stop = Arc::new(unsafe { OwnedFd::from_raw_fd(fd) });
        let table = Arc::new(Mutex::new(Table {
            watches: inotify.watches(),
            by_wd: HashMap::new(),
            limit_logged: false,
        }));
        let reader = Reader {
            inotify,
            table: table.clone(),
            flags,
            stop: stop.clone(),
        };
        let thread = std::thread::Builder::new()
            .name("inotify".into())
            .spawn(move || reader.run(wake))
            .map_err(WatchError::Init)?;
        Ok(DirWatcher {
            table,
            stop,
            thread: Some(thread),
        })
    }

    /// Watches `dir` (and, if `recursive`, the directories below it, now and as they appear).
    /// Returns whether it was newly watched: asking again for a directory watched the same way
    /// costs a lookup, so the pipeline asks at every scan (a directory removed and made again
    /// is watched again).
    pub fn watch(&self, dir: &Path, recursive: bool) -> Result<bool, WatchError> {
        let mut t = self.table.lock().expect("watch table lock");
        if t.by_wd
            .values()
            .any(|w| w.root && w.path == dir && (w.recursive || !recursive))
        {
            return Ok(false);
        }
        t.add(dir, recursive, true)?;
        Ok(true)
    }

    /// How many directories are watched (for tests and the debug log).
    pub fn watched(&self) -> usize {
        self.table.lock().expect("watch table lock").by_wd.len()
    }
}

impl Drop for DirWatcher {
    fn drop(&mut self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live u64 to the eventfd this watcher owns.
        unsafe { libc::write(self.stop.as_raw_fd(), (&one as *const u64).cast(), 8) };
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The reading thread's state.
struct Reader {
    inotify: Inotify,
    table: Arc<Mutex<Table>>,
    flags: Arc<WakeFlags>,
    stop: Arc<OwnedFd>,
}

/// What one read of events amounts to.
#[derive(Default)]
struct Batch {
    changed: Vec<u64>,
    rescan: bool,
    full: bool,
    /// Events were lost: look below every recursive watch for directories not watched yet.
    rewalk: bool,
    /// New directories below recursive watches.
    add: Vec<PathBuf>,
    /// Directories renamed away from a watched directory: unwatched with what is below them
    /// (events there would carry the old name; the new name, if watched, is added anew).
    remove: Vec<PathBuf>,
    /// Watched directories that were themselves renamed: unwatched, so that the next scan
    /// watches what is at the name now.
    unwatch: Vec<i32>,
    /// Watches the kernel ended (the directory is gone): forgotten.
    forget: Vec<i32>,
}

impl Reader {
    fn run(mut self, wake: impl Fn()) {
        let mut buf = vec![0u8; EVENT_BUFFER];
        loop {
            let mut fds = [
                libc::pollfd {
                    fd: self.inotify.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
                libc::pollfd {
                    fd: self.stop.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
            ];
            // SAFETY: polls two live descriptors described by a live array of two.
            let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
            if n < 0 {
                if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return;
            }
            if fds[1].revents != 0 {
                return;
            }
            let mut batch = Batch::default();
            loop {
                match self.inotify.read_events(&mut buf) {
                    Ok(events) => {
                        let table = self.table.lock().expect("watch table lock");
                        for e in events {
                            classify(&table, e.wd.get_watch_descriptor_id(), e.mask, e.name, &mut batch);
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        tracing::warn!(error = %e, "reading file-system events failed; looking at every file");
                        batch.full = true;
                        batch.rescan = true;
                        break;
                    }
                }
            }
            if self.publish(batch) {
                wake();
            }
            std::thread::sleep(GATHER);
        }
    }

    /// Applies a batch: watches and forgets directories, sets the flags. Returns whether the
    /// pipeline needs waking.
    fn publish(&self, b: Batch) -> bool {
        if b.rewalk || !b.add.is_empty() || !b.remove.is_empty() || !b.unwatch.is_empty() || !b.forget.is_empty() {
            let mut t = self.table.lock().expect("watch table lock");
            for id in &b.forget {
                t.by_wd.remove(id);
            }
            for id in &b.unwatch {
                if let Some(w) = t.by_wd.remove(id) {
                    let _ = t.watches.remove(w.wd);
                }
            }
            for dir in &b.remove {
                t.remove_tree(dir);
            }
            for dir in &b.add {
                if let Err(e) = t.add(dir, true, false) {
                    t.log_add_error(&e);
                }
            }
            if b.rewalk {
                t.add_missing();
            }
        }
        let mut any = b.rescan || b.full;
        if !b.changed.is_empty() {
            let mut changed = self.flags.changed.lock().expect("changed paths lock");
            if changed.len() + b.changed.len() > CHANGED_PATHS_MAX {
                changed.clear();
                self.flags.full.store(true, Ordering::SeqCst);
            } else {
                changed.extend(b.changed);
            }
            any = true;
        }
        if b.rescan {
            self.flags.rescan.store(true, Ordering::SeqCst);
        }
        if b.full {
            self.flags.full.store(true, Ordering::SeqCst);
        }
        any && !self.flags.pending.swap(true, Ordering::SeqCst)
    }
}

/// Sorts one event into the batch.
fn classify(table: &Table, wd: i32, mask: EventMask, name: Option<&std::ffi::OsStr>, b: &mut Batch) {
    if mask.contains(EventMask::Q_OVERFLOW) {
        // Events were lost: every file is looked at, files in directories made meanwhile are
        // found by the scan, and those directories are watched (asking for a root again does
        // not walk it: the batch walks every recursive watch).
        b.full = true;
        b.rescan = true;
        b.rewalk = true;
        return;
    }
    let Some(dir) = table.by_wd.get(&wd) else {
        return;
    };
    if mask.contains(EventMask::IGNORED) {
        // The directory is gone (or was unwatched): forget it; a scan looks for what replaced
        // it and watches that.
        b.rescan = true;
        b.forget.push(wd);
        return;
    }
    if mask.contains(EventMask::MOVE_SELF) {
        b.rescan = true;
        b.unwatch.push(wd);
        return;
    }
    let path = || match name {
        Some(n) => dir.path.join(n),
        None => dir.path.clone(),
    };
    if mask.intersects(
        EventMask::CREATE
            | EventMask::DELETE
            | EventMask::MOVED_FROM
            | EventMask::MOVED_TO
            | EventMask::DELETE_SELF
            | EventMask::MOVE_SELF,
    ) {
        b.rescan = true;
        if mask.contains(EventMask::ISDIR) && name.is_some() {
            if mask.intersects(EventMask::CREATE | EventMask::MOVED_TO) && dir.recursive {
                b.add.push(path());
            } else if mask.contains(EventMask::MOVED_FROM) {
                b.remove.push(path());
            }
        }
        return;
    }
    if mask.contains(EventMask::MODIFY) {
        b.changed.push(joined_hash(dir.path.as_os_str(), name));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::sync::mpsc::{Receiver, channel};
    use std::time::Instant;

    fn start() -> (DirWatcher, Arc<WakeFlags>, Receiver<()>) {
        let flags = Arc::new(WakeFlags::default());
        let (tx, rx) = channel();
        let w = DirWatcher::start(flags.clone(), move || {
            let _ = tx.send(());
        })
        .unwrap();
        (w, flags, rx)
    }

    fn wait(what: &str, mut cond: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !cond() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn append(p: &Path, line: &str) {
        let mut f = std::fs::OpenOptions::new().create(true).append(true).open(p).unwrap();
        f.write_all(line.as_bytes()).unwrap();
    }

    /// Whether the flags name `path` as written to.
    fn named(flags: &WakeFlags, path: &Path) -> bool {
        flags.changed.lock().unwrap().contains(&path_hash(path.as_os_str()))
    }

    #[test]
    fn a_path_hashed_from_its_directory_and_name_hashes_as_the_joined_path() {
        for (dir, name) in [
            ("/var/log/pods/ns_pod_uid/c", "0.log"),
            ("/var/log/", "x.log"),
            ("/", "top.log"),
            ("", "bare.log"),
            ("relative/dir", "a b.log"),
        ] {
            let joined = Path::new(dir).join(name);
            assert_eq!(
                joined_hash(OsStr::new(dir), Some(OsStr::new(name))),
                path_hash(joined.as_os_str()),
                "{joined:?}"
            );
        }
        assert_ne!(path_hash(OsStr::new("/a/b.log")), path_hash(OsStr::new("/a/c.log")));
        assert_eq!(joined_hash(OsStr::new("/a"), None), path_hash(OsStr::new("/a")));
    }

    #[test]
    fn writes_name_their_files_and_a_burst_wakes_the_pipeline_once() {
        let dir = tempfile::tempdir().unwrap();
        let paths: Vec<PathBuf> = (0..200).map(|i| dir.path().join(format!("{i}.log"))).collect();
        for p in &paths {
            append(p, "first\n");
        }
        let (w, flags, rx) = start();
        assert!(w.watch(dir.path(), false).unwrap());
        assert!(!w.watch(dir.path(), false).unwrap(), "asking again is a lookup");
        for p in &paths {
            append(p, "more\n");
        }
        let want: HashSet<u64> = paths.iter().map(|p| path_hash(p.as_os_str())).collect();
        wait("every written file named", || *flags.changed.lock().unwrap() == want);
        assert_eq!(rx.try_iter().count(), 1, "one wake-up while one is pending");
        assert!(flags.pending.load(Ordering::SeqCst));
        assert!(!flags.rescan.load(Ordering::SeqCst), "appends are not new files");
        assert!(!flags.full.load(Ordering::SeqCst));
        // Once the pipeline has taken the wake-up, the next write wakes it again.
        flags.pending.store(false, Ordering::SeqCst);
        flags.changed.lock().unwrap().clear();
        append(&paths[7], "again\n");
        wait("the next write named", || named(&flags, &paths[7]));
        rx.recv_timeout(Duration::from_secs(20)).expect("woken again");
    }

    #[test]
    fn new_subdirectories_of_a_recursive_watch_are_watched_and_a_plain_watch_stays_shallow() {
        let root = tempfile::tempdir().unwrap();
        let deep = root.path().join("deep");
        let flat = root.path().join("flat");
        std::fs::create_dir_all(flat.join("sub")).unwrap();
        std::fs::create_dir(&deep).unwrap();
        let (w, flags, _rx) = start();
        w.watch(&deep, true).unwrap();
        w.watch(&flat, false).unwrap();
        assert_eq!(w.watched(), 2);
        // Made after the watch, several levels at once.
        let leaf = deep.join("ns_pod_uid/container/x");
        std::fs::create_dir_all(&leaf).unwrap();
        wait("the new directories seen", || flags.rescan.load(Ordering::SeqCst));
        wait("the new directories watched", || w.watched() == 5);
        let file = leaf.join("0.log");
        append(&file, "a\n");
        wait("the file created in the new directory seen", || {
            flags.rescan.load(Ordering::SeqCst)
        });
        append(&file, "b\n");
        wait("a write in the new directory named", || named(&flags, &file));
        // The plain watch: its own files only.
        let below = flat.join("sub/y.log");
        let own = flat.join("z.log");
        append(&below, "y\n");
        append(&own, "z\n");
        append(&own, "z\n");
        wait("the plain watch's own file named", || named(&flags, &own));
        assert!(!named(&flags, &below), "a subdirectory of a plain watch");
        assert_eq!(w.watched(), 5, "no watch below the plain one");
    }

    #[test]
    fn a_watched_directory_removed_and_made_again_is_watched_again() {
        let root = tempfile::tempdir().unwrap();
        let d = root.path().join("logs");
        std::fs::create_dir_all(d.join("inner")).unwrap();
        let (w, flags, _rx) = start();
        w.watch(&d, true).unwrap();
        assert_eq!(w.watched(), 2);
        std::fs::remove_dir_all(&d).unwrap();
        wait("the removed directories forgotten", || w.watched() == 0);
        assert!(flags.rescan.load(Ordering::SeqCst));
        assert!(
            matches!(w.watch(&d, true), Err(WatchError::Add { .. })),
            "nothing there"
        );
        std::fs::create_dir(&d).unwrap();
        assert!(w.watch(&d, true).unwrap(), "watched again");
        let f = d.join("app.log");
        append(&f, "x\n");
        append(&f, "y\n");
        wait("a write in the new directory named", || named(&flags, &f));
    }

    #[test]
    fn a_directory_renamed_within_the_tree_is_reported_under_its_new_name_only() {
        let root = tempfile::tempdir().unwrap();
        let old = root.path().join("old");
        let new = root.path().join("new");
        std::fs::create_dir_all(old.join("inner")).unwrap();
        let (w, flags, _rx) = start();
        w.watch(root.path(), true).unwrap();
        assert_eq!(w.watched(), 3);
        std::fs::rename(&old, &new).unwrap();
        // Renamed: the old names' watches are dropped, the new names watched.
        wait("the renamed tree watched under its new name", || {
            let t = w.table.lock().unwrap();
            let mut paths: Vec<PathBuf> = t.by_wd.values().map(|w| w.path.clone()).collect();
            paths.sort();
            paths == vec![root.path().to_path_buf(), new.clone(), new.join("inner")]
        });
        let f = new.join("inner/app.log");
        append(&f, "x\n");
        append(&f, "y\n");
        wait("the write named by the new path", || named(&flags, &f));
        let stale = old.join("inner/app.log");
        assert!(!named(&flags, &stale));
    }

    #[test]
    fn after_events_are_lost_directories_made_meanwhile_are_watched() {
        let root = tempfile::tempdir().unwrap();
        let (a, b) = (root.path().join("a.log"), root.path().join("b.log"));
        let (w, flags, _rx) = start();
        w.watch(root.path(), true).unwrap();
        let mut fa = std::fs::OpenOptions::new().create(true).append(true).open(&a).unwrap();
        let mut fb = std::fs::OpenOptions::new().create(true).append(true).open(&b).unwrap();
        wait("the files' creation seen", || flags.rescan.load(Ordering::SeqCst));
        let leaf = root.path().join("pod/container");
        {
            // Holding the table stalls the reading thread at its next batch, so the kernel's
            // queue (fs.inotify.max_queued_events, 16,384 by default) fills: writes to two
            // files in turn are not merged.
            let _stall = w.table.lock().unwrap();
            let limit: usize = std::fs::read_to_string("/proc/sys/fs/inotify/max_queued_events")
                .map_or(16_384, |s| s.trim().parse().unwrap());
            for _ in 0..limit + 4096 {
                fa.write_all(b"x").unwrap();
                fb.write_all(b"y").unwrap();
            }
            // Made once the queue is full: its creation is lost.
            std::fs::create_dir_all(&leaf).unwrap();
        }
        wait("the overflow seen", || flags.full.load(Ordering::SeqCst));
        wait("the directories made meanwhile watched", || w.watched() == 3);
        flags.changed.lock().unwrap().clear();
        let f = leaf.join("0.log");
        append(&f, "a\n");
        append(&f, "b\n");
        wait("a write in a directory made meanwhile named", || named(&flags, &f));
    }

    #[test]
    fn dropping_the_watcher_stops_its_thread() {
        let dir = tempfile::tempdir().unwrap();
        let (w, _flags, rx) = start();
        w.watch(dir.path(), false).unwrap();
        drop(w);
        // Drop waited for the thread: the wake-up callback it owned is gone with it.
        assert_eq!(rx.try_recv(), Err(std::sync::mpsc::TryRecvError::Disconnected));
    }
}
