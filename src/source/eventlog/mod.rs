//! Spark event logs: every layout and codec Spark writes, shipped so the History Server reads the
//! copy as it reads the original (facts: `reference-notes.md` §1; design: `docs/event-logs.md`).
//!
//! An [`EventLogSource`] watches one or more event-log directories. It recognises:
//! - a **single file** `<app>[.<codec>][.inprogress]`, renamed without `.inprogress` when Spark
//!   stops;
//! - a **rolling** directory `eventlog_v2_<app>/` with `events_<n>_<app>[.<codec>]` files and the
//!   zero-byte `appstatus_<app>[.inprogress]` marker.
//!
//! Two ways to ship them:
//! - **rechunk** (uncompressed single files; EMR's layout): the file is tailed like any log, cut
//!   at line ends into chunks keyed `eventlog_v2_<app>/events_<n>_<app>`, n = 1, 2, … with no
//!   gaps (the `%{index}` counter is persisted with the buffer);
//! - **mirror** (any layout and codec): each file is copied byte for byte under its own name;
//!   a file that grows is uploaded again (at most every `mirror_interval`) and once more when it
//!   is final. A compressed stream cannot be cut, and a rolling log is already cut by Spark.
//!
//! The completion marker follows [`AppStatusMode`]: by default `appstatus_<app>.inprogress`
//! while the application runs, and `appstatus_<app>` only once Spark has finished the log and
//! every uploaded object ends at a line end. Markers and snapshots are chunks like any other, so
//! they are crash-safe and delivered in order after the data before them.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::buffer::{Checkpoints, ChunkStore, SourceCheckpoint, SourceKey, checkpoints_of_file, source_key};
use crate::config::{AppStatusMode, EventLogMode, Framing, SourceConfig, SourceKind};
use crate::fsutil::{FileId, ends_with_newline};
use crate::source::Source;

use super::tail::{TailError, TailSource, TailStats};

mod markers;
mod mirror;
mod names;

use mirror::MirroredFile;
pub use names::{CODECS, IN_PROGRESS, ROLLING_PREFIX, SingleName, parse_events_file, parse_single, sanitize_app_id};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Layout {
    Single,
    Rolling,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Way {
    Rechunk,
    Mirror,
}

/// What is known of one application.
#[derive(Debug)]
struct App {
    layout: Layout,
    way: Way,
    /// Spark has finished its log (name without `.inprogress`, or the final appstatus).
    complete: bool,
    /// Warned that a log Spark marked complete does not end at a line end.
    warned_torn: bool,
}

/// A `spark_events` source.
pub struct EventLogSource {
    /// Its configuration.
    pub config: SourceConfig,
    /// Indices of the outputs it feeds.
    pub routes: Vec<usize>,
    dirs: Vec<PathBuf>,
    mode: EventLogMode,
    appstatus: AppStatusMode,
    app_filter: Option<String>,
    mirror_interval: Duration,
    /// Uncompressed single files (rechunk), tagged by application id.
    tail: TailSource,
    apps: BTreeMap<String, App>,
    mirrored: Vec<MirroredFile>,
    /// The mirrored files' checkpoints as of the last commit (to drop the ones let go).
    mirrored_committed: Vec<SourceKey>,
    last_scan: Option<Instant>,
    mirror_bytes: u64,
}

fn accepts(filter: &Option<String>, app: &str) -> bool {
    match filter {
        None => true,
        Some(id) => app == id || app.strip_prefix(id.as_str()).is_some_and(|r| r.starts_with('_')),
    }
}

fn join_key(prefix: &str, rel: &str) -> String {
    let p = prefix.trim_end_matches('/');
    if p.is_empty() {
        rel.to_string()
    } else {
        format!("{p}/{rel}")
    }
}

impl EventLogSource {
    /// Checkpoints of the mirrored files uploaded so far: the length and name uploaded.
    fn mirrored_checkpoints(&self) -> Vec<SourceCheckpoint> {
        self.mirrored
            .iter()
            .filter_map(|m| {
                Some(SourceCheckpoint {
                    id: m.id,
                    fp_len: 0,
                    fp: 0,
                    pos: m.uploaded_len,
                    path: m.path.as_path().into(),
                    tag: m.uploaded_rel.as_deref()?.into(),
                    source: self.config.name.as_str().into(),
                })
            })
            .collect()
    }

    /// A source from its config; `routes` are the outputs it feeds.
    pub fn new(config: SourceConfig, routes: Vec<usize>) -> EventLogSource {
        let spark = config.spark.clone().unwrap_or_default();
        let app_filter = spark.app_id.as_deref().map(sanitize_app_id);
        let dirs: Vec<PathBuf> = config.paths.iter().map(PathBuf::from).collect();
        let mut tail_config = config.clone();
        tail_config.kind = SourceKind::Tail;
        tail_config.format = Framing::Lines;
        // Event logs are JSON lines: each line is a record, and none is held back.
        tail_config.multiline = crate::config::Multiline::Off;
        tail_config.tag = None;
        tail_config.paths = dirs
            .iter()
            .map(|d| glob::Pattern::escape(&d.to_string_lossy()) + "/*")
            .collect();
        let mode = spark.mode;
        let filter = app_filter.clone();
        let tagger = Box::new(move |p: &Path| {
            let n = parse_single(p.file_name()?.to_str()?)?;
            (n.codec.is_none() && mode != EventLogMode::Mirror && accepts(&filter, &n.app)).then_some(n.app)
        });
        let tail = TailSource::new(tail_config, routes.clone()).with_tagger(tagger);
        EventLogSource {
            mirror_interval: spark.mirror_interval.map_or(Duration::from_secs(30), |d| d.get()),
            config,
            routes,
            dirs,
            mode,
            appstatus: spark.appstatus,
            app_filter,
            tail,
            apps: BTreeMap::new(),
            mirrored: Vec::new(),
            mirrored_committed: Vec::new(),
            last_scan: None,
            mirror_bytes: 0,
        }
    }

    fn scan_rolling(&mut self, dir: &Path, dir_name: &str, app: &str, checkpoints: &Checkpoints) {
        let Ok(entries) = std::fs::read_dir(dir) else { return };
        let mut status = None;
        let mut files = Vec::new();
        for entry in entries.flatten() {
            let Some(name) = entry.file_name().to_str().map(str::to_string) else {
                continue;
            };
            if let Some(rest) = name.strip_prefix("appstatus_") {
                if rest == app {
                    status = Some(true);
                } else if rest.strip_suffix(IN_PROGRESS) == Some(app) && status.is_none() {
                    status = Some(false);
                }
            } else if let Some((index, codec)) = parse_events_file(&name, app) {
                files.push((entry.path(), name, index, codec.is_some()));
            }
        }
        if status.is_none() && files.is_empty() {
            return;
        }
        if self.mode == EventLogMode::Rechunk && !self.apps.contains_key(app) {
            tracing::warn!(
                app,
                "a rolling event log is already cut by Spark; mirroring it (rechunk applies to single uncompressed files)"
            );
        }
        self.note_app(app, Layout::Rolling, Way::Mirror, status == Some(true));
        for (path, name, index, compressed) in files {
            self.track(&path, format!("{dir_name}/{name}"), app, index, compressed, checkpoints);
        }
    }

    fn note_app(&mut self, app: &str, layout: Layout, way: Way, complete: bool) {
        let a = self.apps.entry(app.to_string()).or_insert_with(|| {
            tracing::info!(app, layout = ?layout, way = ?way, complete, "found Spark event log");
            App {
                layout,
                way,
                complete,
                warned_torn: false,
            }
        });
        if complete && !a.complete {
            tracing::info!(app, "Spark finished the event log");
        }
        a.complete |= complete;
    }
}

impl Source for EventLogSource {
    fn config(&self) -> &SourceConfig {
        &self.config
    }

    fn routes(&self) -> &[usize] {
        &self.routes
    }

    /// Directories to watch (recursively: rolling logs live one level down).
    fn watch_dirs(&self) -> Vec<(PathBuf, bool)> {
        self.dirs.iter().map(|d| (d.clone(), true)).collect()
    }

    /// When the next periodic scan is due.
    fn next_scan(&self) -> Option<Instant> {
        self.last_scan.map(|t| t + self.config.refresh_interval.get())
    }

    /// The rechunked files' (mirrored files are never waited for).
    fn next_deadline(&self) -> Option<Instant> {
        self.tail.next_deadline()
    }

    /// How often files should be looked at without an event: a growing mirrored file is due
    /// again after `mirror_interval`.
    fn poll_interval(&self) -> Duration {
        self.tail
            .poll_interval()
            .min(self.mirror_interval.max(Duration::from_secs(1)))
    }

    fn adoptable(&self) -> bool {
        self.tail.adoptable()
    }

    fn adopt(&mut self, checkpoints: &Checkpoints, held: &std::collections::HashSet<SourceKey>) {
        self.tail.adopt(checkpoints, held);
    }

    /// Looks for applications and their files.
    fn scan(&mut self, checkpoints: &Checkpoints, now: Instant) {
        self.tail.scan(checkpoints, now);
        self.last_scan = Some(now);
        for m in &mut self.mirrored {
            m.seen = false;
        }
        for dir in self.dirs.clone() {
            let Ok(entries) = std::fs::read_dir(&dir) else { continue };
            for entry in entries.flatten() {
                let Some(name) = entry.file_name().to_str().map(str::to_string) else {
                    continue;
                };
                let Ok(ft) = entry.file_type() else { continue };
                if ft.is_dir() {
                    if let Some(app) = name.strip_prefix(ROLLING_PREFIX)
                        && accepts(&self.app_filter, app)
                    {
                        self.scan_rolling(&entry.path(), &name, app, checkpoints);
                    }
                } else if ft.is_file()
                    && let Some(n) = parse_single(&name)
                    && accepts(&self.app_filter, &n.app)
                {
                    let way = if n.codec.is_none() && self.mode != EventLogMode::Mirror {
                        Way::Rechunk
                    } else {
                        Way::Mirror
                    };
                    self.note_app(&n.app, Layout::Single, way, !n.in_progress);
                    if way == Way::Mirror {
                        self.track(&entry.path(), name.clone(), &n.app, 0, n.codec.is_some(), checkpoints);
                    }
                }
            }
        }
        // A mirrored file no longer found was renamed between scans (found under its new name)
        // or deleted: nothing more can be read of it.
        self.mirrored.retain(|m| m.seen);
    }

    /// Reads new data: rechunked files into chunks, mirrored files as snapshots, and queues the
    /// completion markers that are due. Returns the bytes put into chunks.
    fn read(
        &mut self,
        store: &mut ChunkStore,
        budget: u64,
        drain: bool,
        now: Instant,
        now_ms: i64,
        targets: Option<&crate::source::Targets>,
    ) -> Result<u64, TailError> {
        let mut total = self.tail.read(store, budget, drain, now, now_ms, targets)?;
        self.start_markers(store, now_ms)?;
        total += self.snapshots(store, budget.saturating_sub(total), drain, now, now_ms)?;
        self.end_markers(store, now_ms)?;
        Ok(total)
    }

    /// Checkpoints: tailed files' positions and mirrored files' uploaded lengths.
    fn checkpoints(&self) -> Vec<SourceCheckpoint> {
        let mut v: Vec<SourceCheckpoint> = self.tail.checkpoints();
        v.extend(self.mirrored_checkpoints());
        v
    }

    /// The followed files' changes, and every mirrored file's checkpoint (they are few).
    fn checkpoint_changes(&self) -> (Vec<SourceCheckpoint>, Vec<SourceKey>) {
        let (mut set, mut removed) = self.tail.checkpoint_changes();
        let mirrored = self.mirrored_checkpoints();
        let now: std::collections::HashSet<SourceKey> = mirrored.iter().map(source_key).collect();
        removed.extend(self.mirrored_committed.iter().filter(|k| !now.contains(*k)).cloned());
        set.extend(mirrored);
        (set, removed)
    }

    /// After a commit.
    fn committed(&mut self) {
        self.tail.committed();
        self.mirrored_committed = self.mirrored_checkpoints().iter().map(source_key).collect();
        for m in &mut self.mirrored {
            m.committed = (m.uploaded_len, m.uploaded_rel.clone());
        }
    }

    /// After a rollback.
    fn rewind(&mut self) {
        self.tail.rewind();
        for m in &mut self.mirrored {
            (m.uploaded_len, m.uploaded_rel) = m.committed.clone();
        }
    }

    /// The rechunked files' drain point; a mirrored file is snapshotted to its size at the drain.
    fn mark_drain_point(&mut self) {
        self.tail.mark_drain_point();
    }

    /// Event-log directories that are not directories (or, with `once`, do not exist).
    fn not_shipped(&self, once: bool) -> Vec<crate::source::tail::NotShipped> {
        let mut v = Vec::new();
        for dir in &self.dirs {
            let reason = match std::fs::metadata(dir) {
                Ok(m) if m.is_dir() => continue,
                Ok(_) => "not a directory (give the event-log directory, spark.eventLog.dir)".to_string(),
                Err(e) if once => format!("cannot use it: {e}"),
                // Following: Spark may still create it.
                Err(_) => continue,
            };
            v.push(crate::source::tail::NotShipped {
                path: dir.display().to_string(),
                reason,
            });
        }
        v
    }

    /// Bytes not read, per file.
    fn unread(&self) -> Vec<(PathBuf, u64)> {
        let mut v = self.tail.unread();
        for m in &self.mirrored {
            let size = m.file.metadata().map(|x| x.len()).unwrap_or(0);
            if size > m.uploaded_len {
                v.push((m.path.clone(), size - m.uploaded_len));
            }
        }
        v
    }

    /// What the metrics endpoint shows per file (a mirrored file: what was uploaded).
    fn files(&self) -> Vec<crate::metrics::FileMetrics> {
        let mut v = self.tail.files();
        for m in &self.mirrored {
            v.push(crate::metrics::FileMetrics {
                source: self.config.name.clone(),
                path: m.path.display().to_string(),
                bytes_read: m.uploaded_len,
                lines_read: 0,
                size: m.file.metadata().map(|x| x.len()).unwrap_or(0),
            });
        }
        v
    }

    /// Counters (snapshot bytes count as read).
    fn stats(&self) -> TailStats {
        let mut s = self.tail.stats();
        s.bytes_read += self.mirror_bytes;
        s.files_found += self.mirrored.len() as u64;
        s
    }
}

#[cfg(test)]
mod tests {
    use super::mirror::whole_lines_len;
    use super::*;

    #[test]
    fn single_file_names() {
        let n = parse_single("local-1795520670477.inprogress").unwrap();
        assert_eq!(
            (n.app.as_str(), n.codec, n.in_progress),
            ("local-1795520670477", None, true)
        );
        let n = parse_single("spark-abc_1.zstd").unwrap();
        assert_eq!(
            (n.app.as_str(), n.codec.as_deref(), n.in_progress),
            ("spark-abc_1", Some("zstd"), false)
        );
        let n = parse_single("app-1.lz4.inprogress").unwrap();
        assert_eq!(n.codec.as_deref(), Some("lz4"));
        assert_eq!(parse_single(".local-1.inprogress.crc"), None);
        assert_eq!(parse_single("notes.txt"), None);
        assert_eq!(parse_single("eventlog_v2_x"), None);
    }

    #[test]
    fn rolling_file_names() {
        assert_eq!(parse_events_file("events_1_local-1", "local-1"), Some((1, None)));
        assert_eq!(
            parse_events_file("events_12_local-1.zstd", "local-1"),
            Some((12, Some("zstd".into())))
        );
        assert_eq!(parse_events_file("events_1_local-2", "local-1"), None);
        assert_eq!(parse_events_file("events_x_local-1", "local-1"), None);
        assert_eq!(parse_events_file("appstatus_local-1", "local-1"), None);
    }

    #[test]
    fn app_filter_takes_attempts_and_sanitizes() {
        let f = Some(sanitize_app_id("Spark-ABC.1"));
        assert_eq!(f.as_deref(), Some("spark-abc_1"));
        assert!(accepts(&f, "spark-abc_1"));
        assert!(accepts(&f, "spark-abc_1_2"));
        assert!(!accepts(&f, "spark-abc_10"));
        assert!(accepts(&None, "anything"));
    }

    #[test]
    fn whole_lines_stop_at_the_last_newline() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f");
        std::fs::write(&p, b"a\nbb\nccc").unwrap();
        let f = File::open(&p).unwrap();
        assert_eq!(whole_lines_len(&f, 8).unwrap(), 5);
        std::fs::write(&p, b"no newline").unwrap();
        assert_eq!(whole_lines_len(&File::open(&p).unwrap(), 10).unwrap(), 0);
    }
}
