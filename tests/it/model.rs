//! The model test: generated sequences of what happens to log files and to logship, run against
//! the real pipeline, tail source and buffer in this process, and checked against a model of the
//! files that knows which lines a pass could have read.
//!
//! Operations, in any order: whole lines, multiline records (a Java stack trace growing a few
//! frames at a time, a Python traceback inside a log4j message, JSON lines) and half-written
//! lines appended to any of four files; rotation by rename with the writer still writing to the
//! old file for a moment; copytruncate; delete (and recreate by the next write); a pass of the
//! pipeline (scan, read, seal, commit, dispatch); deliveries of the chunks dispatched so far, or
//! their failure (to the secondary directory); time passing; a crash at a named crash point
//! (`logship::crashpoint`, unwound in-process: everything the pipeline held is dropped, as by
//! `kill -9`), or a kill between two passes, then a restart from the buffer directory, sometimes
//! after damage to the state files (a flipped bit, a snapshot cut short, a file deleted); a
//! SIGHUP-style reload to a configuration that renames a source, splits one in two, or drops one
//! and brings it back; a write that fails (disk full, no file descriptor left); and, at the end,
//! the drain.
//!
//! The oracle, per output: every line that a pass could have read (it was whole in a followed
//! file when a pass read and committed) arrives exactly once, whole, in its file's order; a line
//! may be missing only if no such pass ran while it was there (written and truncated, or written
//! while its file was followed by no source, between two passes); at the drain, everything still
//! in a followed file is read, half-written last lines included. The CloudWatch output's records
//! stay whole (one record of the file is one group of lines by the output's rule, in one chunk)
//! unless something the model names split them: a crash, a reload, a write error, or a record
//! that went quiet longer than `multiline_flush` while it was written. After damage to the state,
//! the run either refuses to start with an error that names the state file, or delivers exactly,
//! or says at exit that it did not (a non-zero exit code).
//!
//! `LOGSHIP_MODEL_CASES` sets how many sequences run (default 200, a minute or so);
//! `LOGSHIP_MODEL_SEED` replays one. A failure prints its seed and the shrunk sequence, and
//! proptest keeps it in `tests/it/model.proptest-regressions`, which is committed: those cases
//! run first every time.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use logship::buffer::{ChunkLimits, ChunkStore, SealedChunk};
use logship::clock::{Clock, ManualClock};
use logship::config::Config;
use logship::crashpoint::{self, Crash};
use logship::lifecycle::EndReason;
use logship::pipeline::{Control, Next, Pipeline, WakeFlags};
use logship::record::RecordRule;
use logship::summary::Summary;
use proptest::prelude::*;
use proptest::test_runner::{Config as RunnerConfig, FileFailurePersistence, TestCaseError, TestRunner};

/// The followed paths: sources follow `a*.log` and `b*.log` under the input directory.
const SLOTS: [&str; 4] = ["a0.log", "a1.log", "b0.log", "b1.log"];
/// The configurations a reload moves between.
const CONFIGS: usize = 4;
/// `rotate_wait` and `multiline_flush` of the model's sources (ms).
const ROTATE_WAIT_MS: i64 = 5_000;
const FLUSH_MS: i64 = 2_000;
/// The outputs: bytes (shared chunks) and CloudWatch (records kept whole).
const OUTPUTS: [&str; 2] = ["bytes", "cw"];
/// Crash points a pass reaches in this process (the delivery ones belong to the sinks).
const CRASH_POINTS: [&str; 7] = [
    "chunk-written",
    "before-state-write",
    "state-temp-written",
    "journal-record-half-written",
    "after-state-write",
    "secondary-written",
    "recovery-chunk-cut",
];

#[derive(Debug, Clone)]
enum Piece {
    /// Records of one line each.
    Lines(u8),
    /// A stack trace's first line and some frames; it stays open for more frames.
    Trace(u8),
    /// More frames for the file's open record (or a line, if none is open).
    Frames(u8),
    /// A log4j record whose message ends in a Python traceback.
    Traceback,
    /// JSON lines (Spark's structured logging).
    Json(u8),
    /// A record's first line, without its end (the next write finishes it).
    Half,
}

#[derive(Debug, Clone)]
enum Damage {
    FlipJournal(usize, u8),
    FlipSnapshot(usize, u8),
    /// The snapshot cut short. (The journal's last record cut short is not damage: it is what a
    /// crash in the middle of an append leaves, indistinguishable from one, and recovery
    /// rightly takes it for one; the crash point `journal-record-half-written` makes it.)
    CutSnapshot(u8),
    DeleteSnapshot,
    DeleteJournal,
}

#[derive(Debug, Clone)]
enum Op {
    /// Appends to the file at a path (created if there is none).
    Write(usize, Piece),
    /// Appends to the file last renamed away from a path (its writer has not reopened yet).
    WriteOld(usize, Piece),
    /// Rotation by rename: the file moves to `<name>.1`.
    Rename(usize),
    /// logrotate's copytruncate.
    CopyTruncate(usize),
    Delete(usize),
    /// One pass of the pipeline.
    Step,
    /// Delivers (or fails) up to n of an output's dispatched chunks, in order.
    Deliver {
        output: usize,
        n: usize,
        fail: bool,
    },
    Tick(u16),
    /// A crash at a crash point (its n-th pass; none: a kill between two passes), then a
    /// restart, after damage to the state files.
    Crash {
        point: Option<usize>,
        n: u8,
        damage: Option<Damage>,
        before_ack: bool,
    },
    Reload(usize),
    /// The n-th write at a fault place fails (disk full, or no file descriptor left).
    Fault {
        place: usize,
        n: u8,
        emfile: bool,
    },
}

fn piece() -> impl Strategy<Value = Piece> {
    prop_oneof![
        4 => (1u8..4).prop_map(Piece::Lines),
        2 => (0u8..4).prop_map(Piece::Trace),
        3 => (1u8..4).prop_map(Piece::Frames),
        1 => Just(Piece::Traceback),
        1 => (1u8..3).prop_map(Piece::Json),
        1 => Just(Piece::Half),
    ]
}

fn damage() -> impl Strategy<Value = Damage> {
    prop_oneof![
        (any::<usize>(), 0u8..8).prop_map(|(i, b)| Damage::FlipJournal(i, b)),
        (any::<usize>(), 0u8..8).prop_map(|(i, b)| Damage::FlipSnapshot(i, b)),
        (1u8..20).prop_map(Damage::CutSnapshot),
        Just(Damage::DeleteSnapshot),
        Just(Damage::DeleteJournal),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    let slot = 0..SLOTS.len();
    prop_oneof![
        14 => (slot.clone(), piece()).prop_map(|(s, p)| Op::Write(s, p)),
        2 => (slot.clone(), piece()).prop_map(|(s, p)| Op::WriteOld(s, p)),
        2 => slot.clone().prop_map(Op::Rename),
        2 => slot.clone().prop_map(Op::CopyTruncate),
        1 => slot.prop_map(Op::Delete),
        12 => Just(Op::Step),
        6 => (0..OUTPUTS.len(), 1usize..4, prop::bool::weighted(0.1))
            .prop_map(|(output, n, fail)| Op::Deliver { output, n, fail }),
        5 => (1u16..3000).prop_map(Op::Tick),
        2 => (
            prop::option::weighted(0.8, 0..CRASH_POINTS.len()),
            1u8..4,
            prop::option::weighted(0.2, damage()),
            prop::bool::weighted(0.2)
        )
            .prop_map(|(point, n, damage, before_ack)| Op::Crash {
                point,
                n,
                damage,
                before_ack
            }),
        2 => (0..CONFIGS).prop_map(Op::Reload),
        1 => (0..crashpoint::FAULTS.len(), 1u8..3, any::<bool>())
            .prop_map(|(place, n, emfile)| Op::Fault { place, n, emfile }),
    ]
}

/// How chunks are flushed, and how large they may grow: the case's settings.
#[derive(Debug, Clone)]
struct Settings {
    flush_mode: &'static str,
    chunk_limit: u64,
}

fn settings() -> impl Strategy<Value = Settings> {
    (
        prop_oneof![Just("immediate"), Just("interval"), Just("lazy")],
        0usize..3,
    )
        .prop_map(|(flush_mode, l)| Settings {
            flush_mode,
            chunk_limit: [2048, 8192, 65536][l],
        })
}

/// One line the model wrote.
#[derive(Debug, Clone)]
struct MLine {
    /// Its bytes so far (with its newline once it is whole).
    text: Vec<u8>,
    /// Whether it is still in its file (not truncated away).
    present: bool,
    /// Whether a pass that read and committed ran while it was whole in a followed file: it
    /// must arrive.
    seen: bool,
}

impl MLine {
    fn whole(&self) -> bool {
        self.text.ends_with(b"\n")
    }
}

/// One record the model wrote (the lines of one file that the rule groups).
#[derive(Debug, Clone, Default)]
struct MRecord {
    /// Its lines.
    lines: u32,
    /// Something the model names may have split it between chunks.
    may_split: bool,
    /// When its last line was written (model ms).
    last_write: i64,
    /// When it was first written.
    first_write: i64,
}

/// One file the model wrote (one inode).
#[derive(Debug)]
struct MFile {
    uid: u32,
    /// Its path slot while it is at its path.
    slot: Option<usize>,
    /// The path slot it was made at.
    home: usize,
    /// Where it is on disk (its path, the name it was renamed to, or none once deleted).
    path: Option<PathBuf>,
    /// When it left its path (model ms).
    gone_at: Option<i64>,
    /// Whether the running pipeline has found it (a pass ran while it was at a followed path).
    found: bool,
    /// Every line, by record and line number.
    lines: Vec<((u32, u32), MLine)>,
    /// Records, by number.
    records: Vec<MRecord>,
    /// The record that more frames continue.
    open_record: Option<u32>,
    /// A line without its end yet (index in `lines`).
    half: Option<usize>,
}

/// What the destinations hold: objects by key, in the order they first arrived.
#[derive(Debug, Default)]
struct Destination {
    objects: Vec<(String, Vec<u8>)>,
    keys: HashMap<String, usize>,
}

struct World {
    dir: tempfile::TempDir,
    input: PathBuf,
    buffer: PathBuf,
    settings: Settings,
    clock: Arc<ManualClock>,
    files: Vec<MFile>,
    next_uid: u32,
    config: usize,
    pipeline: Option<Pipeline>,
    wake: Arc<WakeFlags>,
    queues: Vec<VecDeque<SealedChunk>>,
    receivers: Vec<tokio::sync::mpsc::UnboundedReceiver<SealedChunk>>,
    dest: Vec<Destination>,
    /// The state files were damaged and the run went on: exact, or a non-zero exit.
    damaged: bool,
    /// A fault is armed and has not fired yet.
    fault_armed: bool,
    /// Chunks failed on purpose (so secondary files are expected).
    failed_any: bool,
    /// What the runs before the current one said (carried as the engine carries it).
    summaries: Vec<Summary>,
    /// The log of what happened, for a failure's message.
    log: Vec<String>,
    /// The case ended early, as it should (a refusal to start on damaged state).
    refused: Option<String>,
}

/// A line's marker: `<file.record.line>`.
fn marker(uid: u32, rec: u32, line: u32) -> String {
    format!("<{uid}.{rec}.{line}>")
}

fn parse_marker(line: &[u8]) -> Option<(u32, u32, u32)> {
    let start = memchr::memchr(b'<', line)?;
    let end = start + memchr::memchr(b'>', &line[start..])?;
    let s = std::str::from_utf8(&line[start + 1..end]).ok()?;
    let mut it = s.split('.').map(|x| x.parse::<u32>().ok());
    Some((it.next()??, it.next()??, it.next()??))
}

impl World {
    fn new(settings: Settings) -> World {
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("in");
        fs::create_dir_all(&input).unwrap();
        // 2026-12-01T10:00:00Z.
        let clock = ManualClock::new(1_796_119_200_000);
        let mut w = World {
            buffer: dir.path().join("buffer"),
            input,
            dir,
            settings,
            clock,
            files: Vec::new(),
            next_uid: 1,
            config: 0,
            pipeline: None,
            wake: Arc::new(WakeFlags::default()),
            queues: Vec::new(),
            receivers: Vec::new(),
            dest: (0..OUTPUTS.len()).map(|_| Destination::default()).collect(),
            damaged: false,
            fault_armed: false,
            failed_any: false,
            summaries: Vec::new(),
            log: Vec::new(),
            refused: None,
        };
        w.start().expect("a fresh buffer opens");
        w
    }

    fn now(&self) -> i64 {
        Clock::Manual(self.clock.clone()).now_ms()
    }

    /// The configuration `variant`: 0 one source for every file; 1 the same, renamed; 2 one
    /// source for `a*` and one for `b*`; 3 the `a*` one alone (`b*` is followed by none).
    fn config(&self, variant: usize) -> Config {
        let input = self.input.display();
        let source = |name: &str, glob: &str| {
            format!(
                "[[source]]\nname = \"{name}\"\ntype = \"tail\"\npaths = [\"{input}/{glob}\"]\nrotate_wait = \"{ROTATE_WAIT_MS}ms\"\nmultiline_flush = \"{FLUSH_MS}ms\"\n"
            )
        };
        let sources = match variant {
            0 => source("s1", "*.log"),
            1 => source("renamed", "*.log"),
            2 => source("s1", "a*.log") + &source("s2", "b*.log"),
            _ => source("s1", "a*.log"),
        };
        let text = format!(
            r#"[buffer]
dir = "{buffer}"
timekey = "1s"
chunk_limit = "{limit}"
flush_mode = "{mode}"
flush_interval = "1s"
fsync = false
{sources}
[[output]]
name = "bytes"
type = "file"
dir = "{out}"
key_format = "%{{time_slice}}_%{{index}}.log"
[[output]]
name = "cw"
type = "cloudwatch"
[output.cloudwatch]
log_group = "model"
log_stream = "%{{tag}}"
region = "us-east-1"
"#,
            buffer = self.buffer.display(),
            limit = self.settings.chunk_limit,
            mode = self.settings.flush_mode,
            out = self.dir.path().join("out").display(),
        );
        Config::parse(&text, "model").unwrap_or_else(|e| panic!("model config: {e}\n{text}"))
    }

    /// Whether configuration `variant` follows the files at path slot `slot`.
    fn covers(variant: usize, slot: usize) -> bool {
        variant != 3 || SLOTS[slot].starts_with('a')
    }

    /// Opens the buffer and starts a pipeline with the current configuration. Err: the buffer
    /// refused to open (its message).
    fn start(&mut self) -> Result<(), String> {
        let config = Arc::new(self.config(self.config));
        let limits = ChunkLimits {
            timekey_secs: 1,
            chunk_limit: self.settings.chunk_limit,
            fsync: false,
        };
        let store = match guarded(|| ChunkStore::open(&self.buffer, limits, logship::engine::output_keying(&config))) {
            Ok(Ok(store)) => store,
            Ok(Err(e)) => return Err(e.to_string()),
            Err(point) => {
                // A crash during recovery: start again.
                self.log.push(format!("crashed at {point} during recovery"));
                return self.start();
            }
        };
        let (ctl_tx, ctl_rx) = std::sync::mpsc::channel::<Control>();
        // The pipeline is driven by hand; its channel only needs to stay open.
        std::mem::forget(ctl_tx);
        let mut senders = Vec::new();
        self.receivers.clear();
        self.queues.clear();
        for _ in 0..config.outputs.len() {
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
            senders.push(tx);
            self.receivers.push(rx);
            self.queues.push(VecDeque::new());
        }
        self.wake = Arc::new(WakeFlags::default());
        let mut p = Pipeline::new(config, store, senders, ctl_rx, self.wake.clone());
        p.set_clock(Clock::Manual(self.clock.clone()));
        self.pipeline = Some(p);
        for f in &mut self.files {
            f.found = false;
        }
        Ok(())
    }

    /// Every record not yet read whole may be split by what just happened (a crash, a reload,
    /// a write error: the chunks it was in are sealed).
    fn unsettle(&mut self) {
        for f in &mut self.files {
            let mut unseen: HashSet<u32> = f.lines.iter().filter(|(_, l)| !l.seen).map(|((r, _), _)| *r).collect();
            unseen.extend(f.open_record);
            for r in unseen {
                f.records[r as usize].may_split = true;
            }
        }
    }

    fn file_at(&self, slot: usize) -> Option<usize> {
        self.files.iter().position(|f| f.slot == Some(slot))
    }

    /// The file last moved away from `slot` that is still on disk.
    fn old_file(&self, slot: usize) -> Option<usize> {
        let now = self.now();
        self.files.iter().rposition(|f| {
            f.slot.is_none()
                && f.home == slot
                && f.path.is_some()
                // The writer reopens soon after a rotation; later lines would go nowhere.
                && f.gone_at.is_some_and(|g| now < g + ROTATE_WAIT_MS / 2)
        })
    }

    fn write(&mut self, i: usize, piece: &Piece) {
        let now = self.now();
        let f = &mut self.files[i];
        let uid = f.uid;
        let mut bytes = Vec::new();
        // A half-written line is finished first.
        if let Some(h) = f.half.take() {
            let end = b" end\n";
            f.lines[h].1.text.extend_from_slice(end);
            bytes.extend_from_slice(end);
        }
        let new_record = |f: &mut MFile, first: &str, more: &[String]| {
            let r = f.records.len() as u32;
            f.records.push(MRecord {
                lines: 0,
                may_split: false,
                last_write: now,
                first_write: now,
            });
            let mut texts = vec![first.replace("{m}", &marker(uid, r, 0))];
            for (k, m) in more.iter().enumerate() {
                texts.push(m.replace("{m}", &marker(uid, r, k as u32 + 1)));
            }
            for (k, t) in texts.iter().enumerate() {
                f.lines.push((
                    (r, k as u32),
                    MLine {
                        text: t.clone().into_bytes(),
                        present: true,
                        seen: false,
                    },
                ));
            }
            f.records[r as usize].lines = texts.len() as u32;
            texts.concat().into_bytes()
        };
        let date = "26/12/01 10:00:00";
        match piece {
            Piece::Lines(n) => {
                for _ in 0..*n {
                    bytes.extend(new_record(f, &format!("{date} INFO Executor: {{m}} running\n"), &[]));
                }
                f.open_record = None;
            }
            Piece::Trace(k) => {
                let frames: Vec<String> = (0..*k)
                    .map(|_| "\tat org.apache.spark.Task.run({m})\n".to_string())
                    .collect();
                bytes.extend(new_record(
                    f,
                    &format!("{date} ERROR Executor: {{m}} failed\n"),
                    &frames,
                ));
                f.open_record = Some(f.records.len() as u32 - 1);
            }
            Piece::Frames(k) => match f.open_record {
                Some(r) => {
                    for _ in 0..*k {
                        let l = f.records[r as usize].lines;
                        let t = format!("\tat org.apache.spark.Frame.call({})\n", marker(uid, r, l));
                        f.lines.push((
                            (r, l),
                            MLine {
                                text: t.clone().into_bytes(),
                                present: true,
                                seen: false,
                            },
                        ));
                        f.records[r as usize].lines += 1;
                        let rec = &mut f.records[r as usize];
                        // Quiet for longer than multiline_flush, or held for a minute: it may
                        // have been sent without what follows.
                        if now - rec.last_write >= FLUSH_MS || now - rec.first_write >= 59_000 {
                            rec.may_split = true;
                        }
                        f.records[r as usize].last_write = now;
                        bytes.extend_from_slice(t.as_bytes());
                    }
                }
                None => bytes.extend(new_record(f, &format!("{date} INFO Executor: {{m}} alone\n"), &[])),
            },
            Piece::Traceback => {
                let more = [
                    "Traceback (most recent call last): {m}\n".to_string(),
                    "  File \"/job.py\", line 5, in f {m}\n".to_string(),
                    "ValueError: boom {m}\n".to_string(),
                ];
                bytes.extend(new_record(
                    f,
                    &format!("{date} ERROR PythonRunner: {{m}} Please see the stack trace below.\n"),
                    &more,
                ));
                f.open_record = None;
            }
            Piece::Json(n) => {
                for _ in 0..*n {
                    bytes.extend(new_record(
                        f,
                        "{\"ts\":\"2026-12-01T10:00:00.000Z\",\"msg\":\"{m}\"}\n",
                        &[],
                    ));
                }
                f.open_record = None;
            }
            Piece::Half => {
                let b = new_record(f, &format!("{date} WARN Executor: {{m}} half"), &[]);
                f.half = Some(f.lines.len() - 1);
                bytes.extend(b);
                f.open_record = None;
            }
        }
        let path = f.path.clone().expect("written files exist");
        OpenOptions::new()
            .append(true)
            .create(true)
            .open(&path)
            .and_then(|mut h| h.write_all(&bytes))
            .unwrap();
    }

    fn create(&mut self, slot: usize) -> usize {
        let uid = self.next_uid;
        self.next_uid += 1;
        self.files.push(MFile {
            uid,
            slot: Some(slot),
            home: slot,
            path: Some(self.input.join(SLOTS[slot])),
            gone_at: None,
            found: false,
            lines: Vec::new(),
            records: Vec::new(),
            open_record: None,
            half: None,
        });
        self.files.len() - 1
    }

    /// After a pass that read every followed file and committed: what it could read must arrive.
    fn note_read(&mut self) {
        let now = self.now();
        let config = self.config;
        for f in &mut self.files {
            let followed_here = f.slot.is_some_and(|s| Self::covers(config, s));
            // A file that left its path is read through its open descriptor until it has been
            // quiet for rotate_wait (from when logship saw it go, which is no sooner).
            let followed_away = f.slot.is_none() && f.found && f.gone_at.is_some_and(|g| now < g + ROTATE_WAIT_MS);
            if followed_here {
                f.found = true;
            }
            if followed_here || followed_away {
                for (_, l) in &mut f.lines {
                    if l.present && l.whole() {
                        l.seen = true;
                    }
                }
            }
        }
    }

    fn step(&mut self) {
        self.wake.rescan.store(true, std::sync::atomic::Ordering::SeqCst);
        let p = self.pipeline.as_mut().expect("running");
        let faults_before = crashpoint::faults_left();
        match guarded(|| p.step()) {
            Ok(pass) => {
                if pass.read_committed {
                    self.note_read();
                }
                if self.fault_armed && crashpoint::faults_left() < faults_before {
                    self.fault_armed = crashpoint::faults_left() > 0;
                    self.log.push("a write failed".into());
                    self.unsettle();
                }
                self.collect();
            }
            Err(point) => self.crashed(&point),
        }
    }

    /// Takes what the pipeline dispatched into the output queues.
    fn collect(&mut self) {
        for (q, rx) in self.queues.iter_mut().zip(&mut self.receivers) {
            while let Ok(c) = rx.try_recv() {
                q.push_back(c);
            }
        }
    }

    fn deliver(&mut self, output: usize, n: usize, fail: bool, crash_before_ack: bool) {
        self.collect();
        for _ in 0..n {
            let Some(c) = self.queues[output].pop_front() else {
                return;
            };
            let msg = if fail {
                self.failed_any = true;
                Control::Failed(c.seq, "refused by the model".into())
            } else {
                let bytes = fs::read(&c.path).unwrap_or_else(|e| panic!("chunk {} of {}: {e}", c.seq, c.key));
                assert!(
                    bytes.len() as u64 >= c.len,
                    "chunk {} is shorter than its length",
                    c.key
                );
                let bytes = bytes[..c.len as usize].to_vec();
                let d = &mut self.dest[output];
                match d.keys.get(&c.key) {
                    Some(&i) => assert_eq!(
                        d.objects[i].1, bytes,
                        "key {} delivered again with other bytes (an object would be replaced)",
                        c.key
                    ),
                    None => {
                        d.keys.insert(c.key.clone(), d.objects.len());
                        d.objects.push((c.key.clone(), bytes));
                    }
                }
                if crash_before_ack {
                    self.crashed("delivered-before-ack");
                    return;
                }
                Control::Delivered(c.seq, c.len)
            };
            let p = self.pipeline.as_mut().expect("running");
            if let Err(point) = guarded(|| p.handle_message(msg)) {
                return self.crashed(&point);
            }
        }
    }

    /// The pipeline crashed (or was killed): everything it held is gone; restart it.
    fn crashed(&mut self, point: &str) {
        self.log.push(format!("crash at {point}"));
        crashpoint::disarm();
        self.fault_armed = false;
        // Dropped without a word, as by kill -9; what the runs before it said is gone with it.
        self.pipeline = None;
        self.summaries.clear();
        self.unsettle();
        if let Err(e) = self.start() {
            panic!("restart after a crash at {point} failed: {e}");
        }
    }

    fn damage(&mut self, d: &Damage) {
        let journal = self.buffer.join("state.journal");
        let snapshot = self.buffer.join("state.json");
        let flip = |path: &Path, i: usize, bit: u8| {
            if let Ok(mut b) = fs::read(path)
                && !b.is_empty()
            {
                let i = i % b.len();
                b[i] ^= 1 << bit;
                fs::write(path, b).unwrap();
            }
        };
        match d {
            Damage::FlipJournal(i, b) => flip(&journal, *i, *b),
            Damage::FlipSnapshot(i, b) => flip(&snapshot, *i, *b),
            Damage::CutSnapshot(n) => {
                if let Ok(b) = fs::read(&snapshot)
                    && b.len() > *n as usize
                {
                    fs::write(&snapshot, &b[..b.len() - *n as usize]).unwrap();
                }
            }
            Damage::DeleteSnapshot => {
                let _ = fs::remove_file(&snapshot);
            }
            Damage::DeleteJournal => {
                let _ = fs::remove_file(&journal);
            }
        }
    }

    fn apply(&mut self, op: &Op) {
        self.log.push(format!("{op:?}"));
        match op {
            Op::Write(slot, piece) => {
                let i = self.file_at(*slot).unwrap_or_else(|| self.create(*slot));
                self.write(i, piece);
            }
            Op::WriteOld(slot, piece) => {
                if let Some(i) = self.old_file(*slot) {
                    self.write(i, piece);
                }
            }
            Op::Rename(slot) => {
                if let Some(i) = self.file_at(*slot) {
                    let from = self.files[i].path.clone().unwrap();
                    let to = self.input.join(format!("{}.{}", SLOTS[*slot], self.files[i].uid));
                    fs::rename(&from, &to).unwrap();
                    let now = self.now();
                    let f = &mut self.files[i];
                    (f.slot, f.path, f.gone_at) = (None, Some(to), Some(now));
                }
            }
            Op::CopyTruncate(slot) => {
                if let Some(i) = self.file_at(*slot) {
                    let path = self.files[i].path.clone().unwrap();
                    fs::copy(&path, self.input.join(format!("{}.copy", SLOTS[*slot]))).unwrap();
                    OpenOptions::new().write(true).open(&path).unwrap().set_len(0).unwrap();
                    let f = &mut self.files[i];
                    for (_, l) in &mut f.lines {
                        l.present = false;
                    }
                    f.half = None;
                    f.open_record = None;
                }
            }
            Op::Delete(slot) => {
                if let Some(i) = self.file_at(*slot) {
                    fs::remove_file(self.files[i].path.as_ref().unwrap()).unwrap();
                    let now = self.now();
                    let f = &mut self.files[i];
                    (f.slot, f.path, f.gone_at) = (None, None, Some(now));
                    f.half = None;
                    f.open_record = None;
                }
            }
            Op::Step => self.step(),
            Op::Deliver { output, n, fail } => self.deliver(*output, *n, *fail, false),
            Op::Tick(ms) => self.clock.advance(Duration::from_millis(*ms as u64)),
            Op::Crash {
                point,
                n,
                damage,
                before_ack,
            } => {
                if self.damaged {
                    // Once damaged, the run that reports it must be the one that ends.
                    return;
                }
                if *before_ack {
                    for o in 0..OUTPUTS.len() {
                        self.collect();
                        if !self.queues[o].is_empty() {
                            return self.deliver(o, 1, false, true);
                        }
                    }
                }
                match point {
                    None => self.crashed("a kill between two passes"),
                    Some(p) if CRASH_POINTS[*p] == "recovery-chunk-cut" => {
                        crashpoint::arm(CRASH_POINTS[*p], *n as u64);
                        self.crashed("a kill between two passes");
                        crashpoint::disarm();
                    }
                    Some(p) => {
                        crashpoint::arm(CRASH_POINTS[*p], *n as u64);
                        let mut crashes = self.log.len();
                        for i in 0..8 {
                            self.step();
                            if i % 2 == 1 {
                                // Failures lead to the secondary directory's crash point.
                                self.deliver(i % OUTPUTS.len(), 1, CRASH_POINTS[*p] == "secondary-written", false);
                            }
                            if self.log[crashes..].iter().any(|l| l.starts_with("crash at")) {
                                break;
                            }
                            crashes = self.log.len();
                        }
                        crashpoint::disarm();
                    }
                }
                if let Some(d) = damage {
                    // Down again, with the state damaged meanwhile.
                    self.pipeline = None;
                    self.damage(d);
                    self.damaged = true;
                    self.unsettle();
                    if let Err(e) = self.start() {
                        assert!(
                            e.contains("state.json") || e.contains("state.journal"),
                            "a refusal names the state file: {e}"
                        );
                        self.refused = Some(e);
                    }
                }
            }
            Op::Reload(variant) => {
                let mut p = self.pipeline.take().expect("running");
                p.handle_message(Control::Halt);
                let crashed = (0..10).find_map(|_| match guarded(|| p.step()) {
                    Ok(pass) if pass.next == Next::Done => Some(None),
                    Ok(_) => None,
                    Err(point) => Some(Some(point)),
                });
                match crashed {
                    Some(Some(point)) => {
                        drop(p);
                        return self.crashed(&point);
                    }
                    _ => self.summaries.push(p.finish()),
                }
                crashpoint::disarm();
                self.fault_armed = false;
                self.unsettle();
                self.config = *variant;
                self.start().expect("a reload starts");
            }
            Op::Fault { place, n, emfile } => {
                if !self.fault_armed {
                    let errno = if *emfile { libc::EMFILE } else { libc::ENOSPC };
                    crashpoint::arm_fault(crashpoint::FAULTS[*place], *n as u64, errno);
                    self.fault_armed = true;
                }
            }
        }
    }

    /// The drain: every followed file read to its end, everything delivered.
    fn drain(&mut self) -> Summary {
        crashpoint::disarm();
        self.fault_armed = false;
        if self.config == 3 {
            // Every file followed again, so the oracle can ask for every line.
            self.apply(&Op::Reload(0));
        }
        // What the drain reads: everything in a followed file, half lines included.
        let now = self.now();
        let p = self.pipeline.as_mut().unwrap();
        p.handle_message(Control::Drain(EndReason::StopRequested));
        for f in &mut self.files {
            let followed = f.slot.is_some() || (f.found && f.gone_at.is_some_and(|g| now < g + ROTATE_WAIT_MS));
            if followed {
                for (_, l) in &mut f.lines {
                    if l.present {
                        l.seen = true;
                    }
                }
            }
        }
        for round in 0.. {
            assert!(round < 5000, "the drain did not end:\n{}", self.log.join("\n"));
            self.wake.rescan.store(true, std::sync::atomic::Ordering::SeqCst);
            let pass = self.pipeline.as_mut().unwrap().step();
            self.collect();
            for o in 0..OUTPUTS.len() {
                let n = self.queues[o].len();
                self.deliver(o, n, false, false);
            }
            if pass.next == Next::Done {
                break;
            }
            self.clock.advance(Duration::from_millis(100));
        }
        self.pipeline.take().unwrap().finish()
    }
}

/// Runs `f`; a crash point armed in this thread unwinds it with the point's name.
fn guarded<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).map_err(|e| match e.downcast::<Crash>() {
        Ok(c) => c.0,
        Err(e) => std::panic::resume_unwind(e),
    })
}

/// Checks what arrived against the model (see the module doc).
fn check(w: &World, summary: &Summary) -> Result<(), String> {
    let rule = RecordRule::Auto;
    let mut problems = Vec::new();
    let lines_of =
        |bytes: &[u8]| -> Vec<Vec<u8>> { bytes.split_inclusive(|&b| b == b'\n').map(<[u8]>::to_vec).collect() };
    let mut model: HashMap<(u32, u32, u32), &MLine> = HashMap::new();
    let mut records: HashMap<(u32, u32), &MRecord> = HashMap::new();
    for f in &w.files {
        for ((r, l), line) in &f.lines {
            model.insert((f.uid, *r, *l), line);
        }
        for (r, rec) in f.records.iter().enumerate() {
            records.insert((f.uid, r as u32), rec);
        }
    }
    for (o, name) in OUTPUTS.iter().enumerate() {
        // Delivered objects in order, then the secondary directory's files.
        let mut pieces: Vec<(String, Vec<u8>, bool)> = w.dest[o]
            .objects
            .iter()
            .map(|(k, b)| (k.clone(), b.clone(), false))
            .collect();
        let secondary = w.buffer.join("secondary");
        if let Ok(entries) = fs::read_dir(&secondary) {
            let mut names: Vec<PathBuf> = entries
                .flatten()
                .map(|e| e.path())
                .filter(|p| {
                    p.file_name()
                        .unwrap()
                        .to_string_lossy()
                        .starts_with(&format!("{name}.chunk."))
                })
                .collect();
            names.sort();
            for p in names {
                let bytes = fs::read(&p).unwrap();
                // A chunk delivered, acknowledged, and killed before the acknowledgement was
                // committed is delivered again after the restart (to the same key); if that
                // delivery fails for good, a copy goes to the secondary directory. Not a second
                // delivery: the same object.
                if w.dest[o].objects.iter().any(|(_, b)| *b == bytes) {
                    continue;
                }
                pieces.push((p.display().to_string(), bytes, true));
            }
        }
        let mut got: HashMap<(u32, u32, u32), usize> = HashMap::new();
        let mut last: HashMap<u32, (u32, u32)> = HashMap::new();
        let mut record_at: HashMap<(u32, u32), (usize, usize)> = HashMap::new();
        for (pi, (key, bytes, aside)) in pieces.iter().enumerate() {
            let mut prev: Option<Vec<u8>> = None;
            let mut group = 0usize;
            for line in lines_of(bytes) {
                let body = line.strip_suffix(b"\n").unwrap_or(&line);
                let Some(id) = parse_marker(&line) else {
                    problems.push(format!(
                        "{name}: a line the model never wrote in {key}: {:?}",
                        String::from_utf8_lossy(&line)
                    ));
                    continue;
                };
                match model.get(&id) {
                    Some(m) if m.text == line => {}
                    Some(m) => problems.push(format!(
                        "{name}: line {id:?} in {key} is {:?}, written as {:?}",
                        String::from_utf8_lossy(&line),
                        String::from_utf8_lossy(&m.text)
                    )),
                    None => problems.push(format!("{name}: unknown line {id:?} in {key}")),
                }
                *got.entry(id).or_insert(0) += 1;
                if !aside {
                    if let Some(&(r, l)) = last.get(&id.0)
                        && (r, l) >= (id.1, id.2)
                    {
                        problems.push(format!("{name}: line {id:?} arrived after ({r}, {l}) of its file"));
                    }
                    last.insert(id.0, (id.1, id.2));
                }
                if o == 1 && !aside {
                    // Records as the CloudWatch output groups them, chunk by chunk.
                    if rule.starts_record(body, prev.as_deref()) {
                        group += 1;
                    }
                    let at = (pi, group);
                    let split = record_at.get(&(id.0, id.1)).is_some_and(|&was| was != at);
                    if split && !records.get(&(id.0, id.1)).is_some_and(|r| r.may_split) {
                        problems.push(format!(
                            "{name}: record {:?} was split (line {id:?} in {key})",
                            (id.0, id.1)
                        ));
                    }
                    record_at.insert((id.0, id.1), at);
                }
                prev = Some(body.to_vec());
            }
        }
        if o == 1 {
            // No group of lines holds two records.
            let mut groups: HashMap<(usize, usize), HashSet<(u32, u32)>> = HashMap::new();
            for (rec, at) in &record_at {
                groups.entry(*at).or_default().insert(*rec);
            }
            for (at, recs) in groups {
                if recs.len() > 1 {
                    problems.push(format!(
                        "{name}: one event of {} holds records {recs:?}",
                        pieces[at.0].0
                    ));
                }
            }
        }
        for (id, n) in &got {
            if *n > 1 {
                problems.push(format!("{name}: line {id:?} arrived {n} times"));
            }
        }
        for (id, m) in &model {
            if m.seen && !got.contains_key(id) {
                problems.push(format!(
                    "{name}: line {id:?} {:?} was read but never arrived",
                    String::from_utf8_lossy(&m.text)
                ));
            }
        }
    }
    if !w.failed_any && w.buffer.join("secondary").exists() {
        problems.push("secondary files without a failed delivery".into());
    }
    if problems.is_empty() {
        return Ok(());
    }
    if w.damaged && summary.exit_code() != 0 {
        // Damage was reported: the exit code says the run is not whole.
        return Ok(());
    }
    problems.truncate(12);
    Err(problems.join("\n"))
}

fn run_case(settings: Settings, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let mut w = World::new(settings.clone());
    for op in &ops {
        w.apply(op);
        if w.refused.is_some() {
            return Ok(());
        }
    }
    // The process's summary: the engine adds what the runs before a reload did.
    let mut summary = w.drain();
    for earlier in std::mem::take(&mut w.summaries).into_iter().rev() {
        summary.absorb(earlier);
    }
    check(&w, &summary).map_err(|e| {
        TestCaseError::fail(format!(
            "{e}\nsettings {settings:?}\nwhat happened:\n{}",
            w.log.join("\n")
        ))
    })
}

#[test]
fn generated_sequences_of_writes_rotations_crashes_damage_and_reloads_lose_and_repeat_nothing() {
    if std::env::var_os("LOGSHIP_MODEL_LOG").is_some() {
        // What logship says while the cases run (to follow a failing one).
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new("logship=debug"))
            .with_test_writer()
            .try_init();
    }
    let cases = std::env::var("LOGSHIP_MODEL_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let mut config = RunnerConfig {
        cases,
        max_shrink_iters: 2000,
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(
            "tests/it/model.proptest-regressions",
        ))),
        ..RunnerConfig::default()
    };
    if let Ok(seed) = std::env::var("LOGSHIP_MODEL_SEED") {
        config.rng_seed = proptest::test_runner::RngSeed::Fixed(seed.parse().expect("LOGSHIP_MODEL_SEED is a number"));
    }
    let mut runner = TestRunner::new(config);
    let strategy = (settings(), prop::collection::vec(op(), 1..80));
    if let Err(e) = runner.run(&strategy, |(s, ops)| run_case(s, ops)) {
        panic!("{e}");
    }
}
