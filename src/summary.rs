//! What a run did, reported at exit: on stderr for people, as one JSON line for machines, and
//! as the exit code.
//!
//! Exit codes: 0 everything read was delivered; 3 some chunks went to a secondary directory;
//! 4 data was left undelivered (still in the buffer directory, never read, missing from a
//! damaged chunk file, or a path that was asked for could not be shipped at all). 1 is a fatal
//! error before or outside the pipeline, 2 a usage error.

use std::path::PathBuf;

use serde::Serialize;

use crate::config::Config;
use crate::source::tail::TailStats;

/// Exit code: everything was delivered.
pub const EXIT_OK: i32 = 0;
/// Exit code: a usage error (a bad flag or flag value, as clap reports its own).
pub const EXIT_USAGE: i32 = 2;
/// Exit code: some data is in a secondary directory instead of its output.
pub const EXIT_SECONDARY: i32 = 3;
/// Exit code: some data was not delivered anywhere (left in the buffer, or not read).
pub const EXIT_UNDELIVERED: i32 = 4;

/// Adds `text` to `s` as one line: a line feed, carriage return or other control character
/// inside it (a file name can hold any) is escaped, so it cannot split the line or forge
/// another.
fn line(s: &mut String, text: String) {
    crate::log_writer::escape_controls(&text, false, s);
    s.push('\n');
}

/// One chunk written to a secondary directory.
#[derive(Debug, Clone, Serialize)]
pub struct SecondaryFile {
    /// The file it was written to.
    pub file: PathBuf,
    /// The key it was meant for.
    pub key: String,
    /// Its size.
    pub bytes: u64,
    /// Why it was not delivered.
    pub reason: String,
}

/// Per-output results.
#[derive(Debug, Clone, Serialize)]
pub struct OutputSummary {
    /// Output name.
    pub name: String,
    /// Where it delivers (no secrets).
    pub destination: String,
    /// Chunks delivered in this run (a recovered chunk counts in the run that delivers it).
    pub chunks_delivered: u64,
    /// Bytes delivered in this run, as read (before compression).
    pub bytes_delivered: u64,
    /// What the destination stores of them (after compression).
    pub bytes_stored: u64,
    /// The key of the first chunk delivered.
    pub first_key: Option<String>,
    /// The key of the last chunk delivered.
    pub last_key: Option<String>,
    /// Chunks written to the secondary directory.
    pub secondary: Vec<SecondaryFile>,
    /// A CloudWatch output's record counters (see `metrics::EventCounters`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub events: Option<std::collections::BTreeMap<&'static str, u64>>,
}

impl OutputSummary {
    /// Events CloudWatch refused one by one: not delivered, and not in the secondary directory.
    pub fn events_rejected(&self) -> u64 {
        self.events
            .as_ref()
            .and_then(|e| e.get("events_rejected").copied())
            .unwrap_or(0)
    }
}

/// Per-source results.
#[derive(Debug, Clone, Serialize)]
pub struct SourceSummary {
    /// Source name.
    pub name: String,
    /// Its counters.
    #[serde(flatten)]
    pub stats: TailStats,
}

/// What a run did.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Summary {
    /// Why the drain started.
    pub drain_reason: Option<String>,
    /// Why following ended before the main container was ever seen (its heartbeat never
    /// appeared), when it did: lines it writes later are not shipped.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub main_never_seen: Option<String>,
    /// Whether the drain deadline passed.
    pub deadline_passed: bool,
    /// Per output.
    pub outputs: Vec<OutputSummary>,
    /// Per source.
    pub sources: Vec<SourceSummary>,
    /// Files with bytes that were never read: (path, bytes).
    pub unread: Vec<(PathBuf, u64)>,
    /// Chunks still in the buffer: (chunk file, key, bytes).
    pub left_in_buffer: Vec<(PathBuf, String, u64)>,
    /// The buffer directory.
    pub buffer_dir: PathBuf,
    /// Failed writes to the buffer (each retried).
    pub write_errors: u64,
    /// Paths the run was asked to ship but did not (missing, matching nothing, not a regular
    /// file, unreadable), with the reason.
    pub not_shipped: Vec<crate::source::tail::NotShipped>,
    /// Chunks that recovery found shorter than committed or missing: what was left of them was
    /// delivered, the rest is lost.
    pub damaged_chunks: Vec<crate::buffer::DamagedChunk>,
    /// Files in the buffer's `chunks/` directory that recovery could not account for: kept
    /// where they are, never delivered.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub unaccounted: Vec<PathBuf>,
    /// What recovery had to undo in the buffer's state that a crash alone does not explain:
    /// lines may have been lost or repeated.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub state_doubts: Vec<String>,
}

impl Summary {
    /// An empty summary with one entry per configured output.
    pub fn new(config: &Config) -> Summary {
        Summary {
            outputs: config
                .outputs
                .iter()
                .map(|o| OutputSummary {
                    name: o.name.clone(),
                    destination: crate::sink::Sink::written_to(o),
                    chunks_delivered: 0,
                    bytes_delivered: 0,
                    bytes_stored: 0,
                    first_key: None,
                    last_key: None,
                    secondary: Vec::new(),
                    events: None,
                })
                .collect(),
            ..Default::default()
        }
    }

    /// Adds what an earlier run of the same process did (before a configuration reload): its
    /// deliveries, secondary files, counters and what its recovery found. What is left (unread,
    /// in the buffer) is this run's to say.
    pub fn absorb(&mut self, earlier: Summary) {
        for e in earlier.outputs {
            match self.outputs.iter_mut().find(|o| o.name == e.name) {
                Some(o) => {
                    o.chunks_delivered += e.chunks_delivered;
                    o.bytes_delivered += e.bytes_delivered;
                    o.bytes_stored += e.bytes_stored;
                    o.first_key = e.first_key.or(o.first_key.take());
                    o.last_key = o.last_key.take().or(e.last_key);
                    let mut secondary = e.secondary;
                    secondary.append(&mut o.secondary);
                    o.secondary = secondary;
                    match (&mut o.events, e.events) {
                        (Some(now), Some(then)) => {
                            for (k, v) in then {
                                *now.entry(k).or_insert(0) += v;
                            }
                        }
                        (now @ None, then) => *now = then,
                        (Some(_), None) => {}
                    }
                }
                // An output the reload removed: what it did still happened.
                None => self.outputs.push(e),
            }
        }
        for e in earlier.sources {
            match self.sources.iter_mut().find(|s| s.name == e.name) {
                Some(s) => s.stats.add(&e.stats),
                None => self.sources.push(e),
            }
        }
        self.write_errors += earlier.write_errors;
        let mut damaged = earlier.damaged_chunks;
        damaged.retain(|d| !self.damaged_chunks.iter().any(|x| x.path == d.path));
        damaged.append(&mut self.damaged_chunks);
        self.damaged_chunks = damaged;
        for d in earlier.state_doubts {
            if !self.state_doubts.contains(&d) {
                self.state_doubts.push(d);
            }
        }
        for p in earlier.unaccounted {
            if !self.unaccounted.contains(&p) {
                self.unaccounted.push(p);
            }
        }
    }

    pub(crate) fn output_mut(&mut self, name: &str) -> Option<&mut OutputSummary> {
        self.outputs.iter_mut().find(|o| o.name == name)
    }

    /// The process exit code for this result.
    pub fn exit_code(&self) -> i32 {
        if !self.unread.is_empty()
            || !self.left_in_buffer.is_empty()
            || !self.damaged_chunks.is_empty()
            || !self.unaccounted.is_empty()
            || !self.state_doubts.is_empty()
            || !self.not_shipped.is_empty()
            || self.main_never_seen.is_some()
            || self.outputs.iter().any(|o| o.events_rejected() > 0)
        {
            EXIT_UNDELIVERED
        } else if self.outputs.iter().any(|o| !o.secondary.is_empty()) {
            EXIT_SECONDARY
        } else {
            EXIT_OK
        }
    }

    /// A few lines for people.
    pub fn human(&self) -> String {
        let mut s = String::new();
        for o in &self.outputs {
            let stored = if o.bytes_stored == o.bytes_delivered {
                String::new()
            } else {
                format!(", {} bytes stored", o.bytes_stored)
            };
            let keys = match (&o.first_key, &o.last_key) {
                (Some(a), Some(b)) if a != b => format!(": keys {a} to {b}"),
                (_, Some(b)) => format!(": key {b}"),
                _ => String::new(),
            };
            line(
                &mut s,
                format!(
                    "logship: {}: delivered {} chunks ({} bytes read{stored}) to {}{keys}",
                    o.name, o.chunks_delivered, o.bytes_delivered, o.destination
                ),
            );
            if o.events_rejected() > 0 {
                line(
                    &mut s,
                    format!(
                        "logship: {}: NOT DELIVERED: CloudWatch rejected {} events (outside the time range it accepts; see the log)",
                        o.name,
                        o.events_rejected()
                    ),
                );
            }
            if let Some(e) = &o.events {
                let parts: Vec<String> = e.iter().map(|(k, v)| format!("{k} {v}")).collect();
                line(&mut s, format!("logship: {}: {}", o.name, parts.join(", ")));
            }
            for f in &o.secondary {
                line(
                    &mut s,
                    format!(
                        "logship: {}: NOT DELIVERED: {} bytes for key {} are in {} ({})",
                        o.name,
                        f.bytes,
                        f.key,
                        f.file.display(),
                        f.reason
                    ),
                );
            }
        }
        if self.outputs.iter().any(|o| !o.secondary.is_empty()) && !self.buffer_dir.as_os_str().is_empty() {
            line(
                &mut s,
                format!(
                    "logship: once the cause is fixed, `logship resend {}` sends them to their keys",
                    self.buffer_dir.display()
                ),
            );
        }
        for (path, key, bytes) in &self.left_in_buffer {
            line(
                &mut s,
                format!(
                    "logship: NOT DELIVERED: {bytes} bytes for key {key} are still in {}",
                    path.display()
                ),
            );
        }
        for d in &self.damaged_chunks {
            line(
                &mut s,
                format!(
                    "logship: LOST: {} of {} bytes for key {} were missing from {} when the buffer was recovered",
                    d.missing,
                    d.committed,
                    d.key,
                    d.path.display()
                ),
            );
        }
        for d in &self.state_doubts {
            line(&mut s, format!("logship: STATE: {d}"));
        }
        for p in &self.unaccounted {
            line(
                &mut s,
                format!(
                    "logship: KEPT: {} is in the buffer but logship did not make it (or cannot account for it); it was not delivered",
                    p.display()
                ),
            );
        }
        for n in &self.not_shipped {
            line(&mut s, format!("logship: NOT SHIPPED: {}: {}", n.path, n.reason));
        }
        if let Some(why) = &self.main_never_seen {
            line(&mut s, format!("logship: NOT FOLLOWED: {why}"));
        }
        for (path, bytes) in &self.unread {
            line(
                &mut s,
                format!("logship: NOT READ: {bytes} bytes at the end of {}", path.display()),
            );
        }
        s
    }

    /// One JSON line for machines.
    pub fn json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}
