//! The pipeline thread: reads sources into the buffer, commits, dispatches sealed chunks to the
//! outputs, and applies their results. It alone owns the [`ChunkStore`] and the tail sources, so
//! the order "bytes in a chunk file → fsync → state with positions → dispatch" needs no locks.
//!
//! It is driven by [`Control`] messages (file-system events, delivery results, drain and
//! deadline) and otherwise sleeps until the next thing is due: a chunk's time key closing, a scan
//! for new files, a safety poll. Idle, it wakes at most every few seconds.
//!
//! The drain is one ordered sequence: a last scan for files, every file read
//! to its end (unterminated last lines included), every chunk sealed and committed, then
//! delivered; the thread ends when nothing is left, or at the deadline, when what is left goes to
//! the secondary directories.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use tokio::sync::mpsc::UnboundedSender;

use crate::buffer::{CheckpointChanges, ChunkMeta, ChunkStore, SealedChunk, SourceKey, source_key};
use crate::clock::Clock;
use crate::config::{Config, FlushMode};
use crate::lifecycle::EndReason;
use crate::metrics::Metrics;
use crate::sink::secondary::{fill_secondary, reserve_secondary};
use crate::source::{Source, Targets};
use crate::summary::{SecondaryFile, Summary};
use crate::watch::DirWatcher;

/// Messages to the pipeline thread.
#[derive(Debug)]
pub enum Control {
    /// Files may have changed (a file-system event).
    Wake,
    /// Start the drain.
    Drain(EndReason),
    /// The drain deadline passed: stop, and put what is left in the secondary directories.
    Deadline,
    /// Stop reading now (a second SIGTERM, or one during `--once`): deliver what was read; what
    /// was not is reported as not read.
    StopReading,
    /// Stop for a reload: commit what was read and delivered, and return (no drain, nothing
    /// sealed; the next run continues from the committed state).
    Halt,
    /// A chunk was delivered: its sequence number, and the bytes the destination stores
    /// (after compression).
    Delivered(u64, u64),
    /// A chunk could not be delivered (retries exhausted or permanent error).
    Failed(u64, String),
}

pub use crate::watch::{CHANGED_PATHS_MAX, WakeFlags};

/// The least time between two passes that file-system events start. Under a steady stream of
/// writes (a node forwarder with thousands of files growing) each pass would otherwise read
/// what a few events named and commit it: tens of commits (fsyncs, journal records) and walks
/// a second. An event after a quiet spell is read at once; a busy stream is read in batches of
/// this age at most. Draining, budget-limited passes and timers do not wait for it.
const PASS_GAP: Duration = Duration::from_millis(25);

/// How much to read before committing (bounds the work lost to a crash and the commit latency).
const COMMIT_EVERY_BYTES: u64 = 16 << 20;
/// How often the per-file metrics are rebuilt at most.
const FILES_PUBLISH_EVERY: Duration = Duration::from_secs(1);
/// Up to this many files, their metrics are published at every pass.
const FILES_PUBLISH_ALWAYS: usize = 256;
/// The smallest batch after write errors: on a nearly full disk, small batches still fit.
const MIN_BATCH_BYTES: u64 = 64 << 10;

/// What one pass ([`Pipeline::step`]) did, and what comes next.
#[derive(Debug, Clone, Copy)]
pub struct Pass {
    /// What comes next.
    pub next: Next,
    /// Whether the pass read every file to the size it saw and committed what it read (a
    /// write error, a pause after one, the budget or the buffer's limit leave it false).
    pub read_committed: bool,
}

/// What comes after a pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// The run is over: [`Pipeline::finish`] says what it did.
    Done,
    /// Another pass at once (more to read).
    Again,
    /// A wait for a message, or at most this long (the next due time).
    Wait(Duration),
}

/// The pipeline thread's state.
pub struct Pipeline {
    config: Arc<Config>,
    store: ChunkStore,
    sources: Vec<Box<dyn Source>>,
    outputs: Vec<UnboundedSender<SealedChunk>>,
    rx: Receiver<Control>,
    wake: Arc<WakeFlags>,
    summary: Summary,
    in_flight: HashSet<u64>,
    /// Chunks that could not even be written to the secondary: kept, not re-dispatched.
    stuck: HashSet<u64>,
    /// Chunks bound for the secondary directory whose move could not be recorded yet (the buffer
    /// could not be written): tried again after the next commit.
    to_secondary: Vec<(u64, String)>,
    drain_reason: Option<EndReason>,
    /// Reading was told to stop before the drain point.
    stop_reading: bool,
    /// A reload asked the pipeline to commit and stop.
    halt: bool,
    /// After a write error, reading and committing wait until this time (or until a delivery
    /// frees space, whichever comes first).
    write_backoff: Option<Instant>,
    /// Whether the last write to the buffer failed: logged once when it starts failing and
    /// once when it works again, not at every attempt.
    write_failing: bool,
    /// Bytes to read before a commit: shrinks after a write error, grows back after commits.
    batch: u64,
    /// When "buffer is full" was last logged (at most once a minute).
    backpressure_logged: Option<Instant>,
    last_poll: Instant,
    /// When the last pass (read, seal, commit) started: events that come sooner than
    /// [`PASS_GAP`] after it wait for the rest of the gap.
    last_pass: Instant,
    /// inotify, when available; directories are added as they appear.
    watcher: Option<DirWatcher>,
    /// What the metrics endpoint shows.
    metrics: Option<Arc<Metrics>>,
    /// The next pass looks at every file (see `targets`).
    full_next: bool,
    /// When the files' metrics were last published, and whether they changed since.
    files_published: Option<Instant>,
    /// How many files the last published list had.
    files_published_count: usize,
    files_stale: bool,
    /// Whether this run has committed: its first commit records every checkpoint (dropping
    /// those of files gone while it was not running), later ones only what changed.
    committed_once: bool,
    /// The drain deadline passed: the next pass puts what is left aside and ends.
    deadline_hit: bool,
    /// Reading is over (the drain read everything, or reading was told to stop).
    reading_done: bool,
    /// Where the time comes from.
    clock: Clock,
}

/// When open chunk `c` is due to be sealed by the flush mode (ms since the epoch): the one rule
/// that the pass that seals chunks and the sleep that waits for the next one both use (the
/// buffer adds the wait for a record that may still continue, `ChunkStore::seal_due`).
fn flush_due_ms(config: &Config, c: &crate::buffer::ChunkMeta) -> i64 {
    let b = &config.buffer;
    match b.flush_mode {
        FlushMode::Lazy => c.timekey * 1000 + (b.timekey.get() + b.timekey_wait.get()).as_millis() as i64,
        FlushMode::Interval => c.created_ms + b.flush_interval.get().as_millis() as i64,
        // Due from the moment it is opened.
        FlushMode::Immediate => c.created_ms,
    }
}

impl Pipeline {
    /// A pipeline over an opened store; `outputs[i]` receives the chunks of output `i`.
    pub fn new(
        config: Arc<Config>,
        store: ChunkStore,
        outputs: Vec<UnboundedSender<SealedChunk>>,
        rx: Receiver<Control>,
        wake: Arc<WakeFlags>,
    ) -> Pipeline {
        let sources = config
            .sources
            .iter()
            .map(|s| crate::source::build(s.clone(), config.routes(s)))
            .collect();
        let summary = Summary::new(&config);
        Pipeline {
            config,
            store,
            sources,
            outputs,
            rx,
            wake,
            summary,
            in_flight: HashSet::new(),
            stuck: HashSet::new(),
            to_secondary: Vec::new(),
            drain_reason: None,
            stop_reading: false,
            halt: false,
            write_backoff: None,
            write_failing: false,
            batch: COMMIT_EVERY_BYTES,
            backpressure_logged: None,
            last_poll: Instant::now(),
            last_pass: Instant::now(),
            watcher: None,
            metrics: None,
            committed_once: false,
            deadline_hit: false,
            reading_done: false,
            clock: Clock::System,
            files_published: None,
            files_published_count: 0,
            full_next: true,
            files_stale: false,
        }
    }

    /// Makes the pipeline read the time from `clock` (a test's).
    pub fn set_clock(&mut self, clock: Clock) {
        self.last_poll = clock.now();
        self.last_pass = clock.now();
        self.clock = clock;
    }

    /// Gives the pipeline the metrics it keeps up to date.
    pub fn set_metrics(&mut self, metrics: Arc<Metrics>) {
        self.metrics = Some(metrics);
    }

    /// Publishes the buffer's state, and the files': every pass while they are few (so that
    /// "read" in the progress line and `/metrics` never trails what was delivered), else at
    /// most once a second (with thousands of files followed, their list costs more than the
    /// work of a pass); `next_wake` makes sure a list held back is published within that second.
    fn publish(&mut self) {
        let Some(m) = &self.metrics else { return };
        m.buffer_bytes.store(self.store.total_bytes(), Ordering::Relaxed);
        m.buffer_chunks
            .store(self.store.chunks().len() as u64, Ordering::Relaxed);
        let now = self.clock.now();
        if self.files_published_count > FILES_PUBLISH_ALWAYS
            && self.files_published.is_some_and(|t| now < t + FILES_PUBLISH_EVERY)
        {
            self.files_stale = true;
            return;
        }
        let files: Vec<_> = self.sources.iter().flat_map(|s| s.files()).collect();
        self.files_published_count = files.len();
        *m.files.lock().expect("metrics lock") = files;
        self.files_published = Some(now);
        self.files_stale = false;
    }

    fn output_metrics(&self, name: &str) -> Option<&crate::metrics::OutputMetrics> {
        let i = self.config.outputs.iter().position(|o| o.name == name)?;
        self.metrics.as_ref().map(|m| &m.outputs[i])
    }

    /// Gives the pipeline the file-system watcher; it watches the sources' directories, adding
    /// each one when it exists (at start, or at a later scan).
    pub fn set_watcher(&mut self, watcher: Option<DirWatcher>) {
        self.watcher = watcher;
        self.add_watches();
    }

    fn add_watches(&mut self) {
        let Some(w) = self.watcher.as_ref() else { return };
        for s in &self.sources {
            if s.config().watch == crate::config::WatchMode::Poll {
                continue;
            }
            for (dir, recursive) in s.watch_dirs() {
                match w.watch(&dir, recursive) {
                    Ok(true) => tracing::debug!(dir = %dir.display(), recursive, directories = w.watched(), "watching"),
                    Ok(false) => {}
                    // Not there yet: a later scan watches it once it is.
                    Err(_) if !dir.is_dir() && !dir.as_os_str().is_empty() => {}
                    Err(e) => tracing::info!(error = %e, "relying on scans and polls for this directory"),
                }
            }
        }
    }

    /// Runs until the drain is complete or the deadline passes; returns what happened.
    pub fn run(mut self) -> Summary {
        loop {
            let next = self.step().next;
            let timeout = match next {
                Next::Done => break,
                Next::Again => continue,
                Next::Wait(timeout) => timeout,
            };
            // Sleep until something is due or a message arrives.
            match self.rx.recv_timeout(timeout) {
                Ok(m) => {
                    let event = matches!(m, Control::Wake);
                    self.deadline_hit |= self.handle(m);
                    let since = self.clock.now().saturating_duration_since(self.last_pass);
                    if event && self.drain_reason.is_none() && since < PASS_GAP {
                        std::thread::sleep(PASS_GAP - since);
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    self.deadline_hit |= self.handle(Control::Drain(EndReason::ControlClosed));
                }
            }
        }
        self.finish()
    }

    /// One pass: the messages that arrived, then discover, read, seal, commit, dispatch. Says
    /// what comes next (done, another pass at once, or a wait for a message or a due time);
    /// [`Pipeline::run`] loops over it, and a test can drive it pass by pass.
    pub fn step(&mut self) -> Pass {
        // 1. Messages.
        while let Ok(m) = self.rx.try_recv() {
            self.deadline_hit |= self.handle(m);
        }
        let mut pass = Pass {
            next: Next::Done,
            read_committed: false,
        };
        if self.deadline_hit {
            self.deadline();
            return pass;
        }
        if self.halt {
            pass.read_committed = self.commit();
            return pass;
        }
        self.wake.pending.store(false, Ordering::SeqCst);
        let draining = self.drain_reason.is_some();

        // 2. Discover, read, seal, commit, dispatch.
        self.last_pass = self.clock.now();
        if !draining && (self.wake.rescan.swap(false, Ordering::SeqCst) || self.scan_due(self.clock.now())) {
            self.scan_all();
        }
        let mut progressed = false;
        if self.stop_reading && !self.reading_done {
            self.reading_done = true;
            self.store.seal_all();
        }
        let mut read_all = false;
        if !self.reading_done
            && let Ok(n) = self.read_all(draining)
        {
            progressed = n > 0;
            read_all = !self.full_next;
            if draining && n == 0 && !self.over_limit() {
                self.reading_done = true;
                self.store.seal_all();
            }
        }
        self.seal_due();
        if !self.backing_off() {
            pass.read_committed = self.commit() && read_all;
            for (seq, reason) in std::mem::take(&mut self.to_secondary) {
                self.put_in_secondary(seq, &reason);
            }
        }
        self.publish();

        // 3. Done when everything read was delivered (or put aside).
        if self.reading_done && self.store.chunks().all(|c| self.stuck.contains(&c.seq)) {
            return pass;
        }
        // More to read at once: the drain reads to the end; a pass that stopped at its budget
        // goes on. Otherwise the next event (or timer) starts the next pass.
        pass.next = if progressed && (draining || self.full_next) {
            Next::Again
        } else {
            Next::Wait(self.next_wake(self.clock.now(), draining, self.reading_done))
        };
        pass
    }

    /// Hands the pipeline a message, as the engine's channel does (for a test that drives it
    /// with [`Pipeline::step`]; the message is acted on at the next step).
    pub fn handle_message(&mut self, m: Control) {
        self.deadline_hit |= self.handle(m);
    }

    /// Applies one message; true when it is the deadline.
    fn handle(&mut self, m: Control) -> bool {
        match m {
            Control::Wake => {}
            Control::Drain(reason) => {
                if self.drain_reason.is_none() {
                    tracing::info!(%reason, "draining: reading every file to its end, then delivering");
                    self.drain_reason = Some(reason);
                    // The last look for files that appeared since the last scan.
                    self.scan_all();
                    for s in &mut self.sources {
                        s.mark_drain_point();
                    }
                }
            }
            Control::Deadline => return true,
            Control::StopReading => {
                if self.drain_reason.is_none() {
                    self.handle(Control::Drain(EndReason::StopRequested));
                }
                self.stop_reading = true;
            }
            Control::Halt => self.halt = true,
            Control::Delivered(seq, stored) => self.delivered(seq, stored),
            Control::Failed(seq, error) => self.failed(seq, &error),
        }
        false
    }

    fn scan_due(&self, now: Instant) -> bool {
        self.sources.iter().any(|s| s.next_scan().is_none_or(|t| now >= t))
    }

    fn scan_all(&mut self) {
        self.full_next = true;
        self.add_watches();
        let now = self.clock.now();
        let checkpoints = self.store.checkpoints();
        for s in &mut self.sources {
            s.scan(checkpoints, now);
        }
        if self.sources.iter().any(|s| s.adoptable()) {
            let held: HashSet<SourceKey> = self
                .sources
                .iter()
                .flat_map(|s| s.checkpoints())
                .map(|c| source_key(&c))
                .collect();
            for s in &mut self.sources {
                s.adopt(checkpoints, &held);
            }
        }
    }

    fn over_limit(&self) -> bool {
        self.store.total_bytes() >= self.config.buffer.total_limit.bytes()
    }

    /// Whether a write error's pause is still running (it ends by time, or early when a
    /// delivery frees space).
    fn backing_off(&mut self) -> bool {
        match self.write_backoff {
            Some(t) if self.clock.now() < t => true,
            Some(_) => {
                self.write_backoff = None;
                false
            }
            None => false,
        }
    }

    /// The files the next pass may be limited to: the ones events named, when nothing else
    /// asks for a look at every file (the safety poll, a scan, a deadline, the drain, a pass
    /// that stopped at its budget, a rollback, events lost or named under another spelling).
    fn targets(&mut self, now: Instant, draining: bool) -> Option<Targets> {
        let path_hashes = std::mem::take(&mut *self.wake.changed.lock().expect("changed paths lock"));
        let poll = self.sources.iter().map(|s| s.poll_interval()).min();
        let full = std::mem::take(&mut self.full_next) | self.wake.full.swap(false, Ordering::SeqCst)
            || draining
            || self.watcher.is_none()
            || poll.is_none_or(|p| now >= self.last_poll + p)
            || self.sources.iter().any(|s| s.next_deadline().is_some_and(|t| t <= now));
        (!full).then(|| Targets {
            path_hashes,
            matched: Default::default(),
        })
    }

    /// Reads every source once (each file to the size it saw, up to enough for one commit).
    /// Err after a write error (rolled back; reading resumes after a pause).
    fn read_all(&mut self, draining: bool) -> Result<u64, ()> {
        if self.backing_off() {
            return Err(());
        }
        if self.write_failing {
            // Deliveries since the failure free their files only at a commit: commit first,
            // or the disk stays full of delivered chunks and every read fails again.
            self.commit();
            if self.backing_off() {
                return Err(());
            }
        }
        let now = self.clock.now();
        let mut targets = self.targets(now, draining);
        if targets.is_none() {
            self.last_poll = now;
        }
        let mut total = 0;
        let batch = self.batch;
        let limit = self.config.buffer.total_limit.bytes();
        while total < batch {
            if self.over_limit() {
                if self
                    .backpressure_logged
                    .is_none_or(|t| self.clock.now().saturating_duration_since(t) >= Duration::from_secs(60))
                {
                    tracing::warn!(
                        limit = %self.config.buffer.total_limit,
                        "buffer is full; reading pauses until deliveries free space"
                    );
                    self.backpressure_logged = Some(self.clock.now());
                }
                break;
            }
            let mut pass = 0;
            for s in &mut self.sources {
                // Stay under total_limit (to within one read block): each byte read is stored
                // once per output the source feeds.
                let room = limit.saturating_sub(self.store.total_bytes()) / s.routes().len().max(1) as u64;
                let budget = batch.saturating_sub(total + pass).min(room);
                if budget == 0 {
                    continue;
                }
                match s.read(
                    &mut self.store,
                    budget,
                    draining,
                    now,
                    self.clock.now_ms(),
                    targets.as_ref(),
                ) {
                    Ok(n) => pass += n,
                    Err(e) => {
                        self.undo_batch("reading into the buffer failed", &e);
                        return Err(());
                    }
                }
            }
            total += pass;
            if let Some(t) = &targets
                && t.matched.get() < t.path_hashes.len()
            {
                // An event named a path no source follows by that name: look at every file.
                targets = None;
                self.last_poll = now;
                continue;
            }
            // A pass reads each file to the size it saw; what files gained since has its own
            // events and pass (or the next poll, where there are no events), and the drain
            // passes again until one reads nothing. Looking again at once cost a second lookup
            // and `fstat` per file: a third of a busy node forwarder's reading, and a second
            // `fstat` of every file at each 5 s poll.
            break;
        }
        // Stopped at the batch (or the buffer limit) with more to read: the next pass looks
        // at every file again.
        self.full_next |= total >= batch || self.over_limit();
        Ok(total)
    }

    fn seal_due(&mut self) {
        let now = self.clock.now_ms();
        let config = &self.config;
        if let Err(e) = self.store.seal_due(now, |c| flush_due_ms(config, c)) {
            self.undo_batch("sealing chunks failed", &e);
        }
    }

    /// Commits what was read and what changed; false when the commit failed (undone).
    fn commit(&mut self) -> bool {
        let mut changes = CheckpointChanges::none();
        for s in &self.sources {
            let (set, removed) = s.checkpoint_changes();
            if self.committed_once {
                changes.set.extend(set);
            } else {
                // The run's first commit records every checkpoint the sources hold.
                changes.set.extend(s.checkpoints());
            }
            changes.removed.extend(removed);
        }
        if !self.committed_once {
            // And forgets those of files that are gone; the others stay for a source that
            // follows them again (a reload that dropped or renamed a source, then brings it
            // back): checkpoints belong to files, not to the sources' names.
            let held: HashSet<SourceKey> = changes.set.iter().map(source_key).collect();
            changes
                .removed
                .extend(crate::source::tail::gone_checkpoints(self.store.checkpoints(), &held));
        } else if changes.set.is_empty() && changes.removed.is_empty() && !self.store.is_dirty() {
            return true;
        }
        match self.store.commit(changes, self.clock.now_ms()) {
            Ok(sealed) => {
                self.committed_once = true;
                if std::mem::take(&mut self.write_failing) {
                    tracing::info!(dir = %self.store.dir().display(), "the buffer can be written again; reading resumes");
                }
                self.batch = (self.batch * 2).min(COMMIT_EVERY_BYTES);
                for s in &mut self.sources {
                    s.committed();
                }
                for chunk in sealed {
                    self.dispatch(chunk);
                }
                true
            }
            Err(e) => {
                self.undo_batch("cannot commit the buffer", &e);
                false
            }
        }
    }

    /// After a failed write: back to the last commit (chunk files cut back, read positions
    /// rewound), a smaller batch, and a pause before reading again.
    fn undo_batch(&mut self, what: &str, error: &dyn std::fmt::Display) {
        if self.write_failing {
            tracing::debug!(%error, "{what}; still failing");
        } else {
            tracing::error!(%error, "{what}; undoing this batch, reading pauses until deliveries free space (nothing is lost)");
            self.write_failing = true;
        }
        self.summary.write_errors += 1;
        self.batch = (self.batch / 4).max(MIN_BATCH_BYTES);
        self.store.rollback();
        for s in &mut self.sources {
            s.rewind();
        }
        self.full_next = true;
        self.write_backoff = Some(self.clock.now() + Duration::from_secs(1));
    }

    fn dispatch(&mut self, chunk: SealedChunk) {
        if self.in_flight.contains(&chunk.seq) || self.stuck.contains(&chunk.seq) {
            return;
        }
        if chunk.secondary.is_some() {
            // A run that crashed was writing it to the secondary directory: finish that.
            return self.put_in_secondary(
                chunk.seq,
                "its output had failed (the write was finished after a restart)",
            );
        }
        match self.outputs.get(chunk.output) {
            Some(tx) => {
                tracing::debug!(seq = chunk.seq, key = %chunk.key, bytes = chunk.len, "dispatching chunk");
                self.in_flight.insert(chunk.seq);
                if tx.send(chunk.clone()).is_err() {
                    self.in_flight.remove(&chunk.seq);
                    self.stuck.insert(chunk.seq);
                }
            }
            None => {
                tracing::error!(seq = chunk.seq, key = %chunk.key, "chunk belongs to an output that is no longer configured; keeping it in the buffer");
                self.stuck.insert(chunk.seq);
            }
        }
    }

    fn delivered(&mut self, seq: u64, stored: u64) {
        self.in_flight.remove(&seq);
        if let Some(c) = self.store.chunk(seq) {
            tracing::debug!(seq, key = %c.key, bytes = c.len, stored, "delivered");
            if let Some(o) = self.summary.output_mut(&c.output) {
                o.chunks_delivered += 1;
                o.bytes_delivered += c.len;
                o.bytes_stored += stored;
                o.first_key.get_or_insert_with(|| c.key.clone());
                o.last_key = Some(c.key.clone());
            }
            if let Some(m) = self.output_metrics(&c.output) {
                m.chunks_delivered.fetch_add(1, Ordering::Relaxed);
                m.bytes_delivered.fetch_add(c.len, Ordering::Relaxed);
                m.last_success_ms.store(crate::metrics::now_ms(), Ordering::Relaxed);
            }
            self.store.remove(seq);
            // Its file is deleted at the next commit: that may be the room a full disk waits for.
            self.write_backoff = None;
        }
    }

    fn failed(&mut self, seq: u64, error: &str) {
        self.in_flight.remove(&seq);
        let Some(c) = self.store.chunk(seq).cloned() else {
            return;
        };
        tracing::error!(seq, key = %c.key, output = %c.output, %error, "delivery failed for good; writing the chunk to the secondary directory");
        self.put_in_secondary(seq, error);
    }

    /// Writes chunk `seq` to its output's secondary directory and forgets it: the file's name is
    /// taken and recorded in the buffer first (one commit), then the bytes are written, so a
    /// crash in between makes the next run write that same file (see `sink::secondary`).
    fn put_in_secondary(&mut self, seq: u64, reason: &str) {
        let Some(c) = self.store.chunk(seq).cloned() else {
            return;
        };
        let Some(out) = self.config.outputs.iter().find(|o| o.name == c.output) else {
            self.stuck.insert(seq);
            return;
        };
        let destination = crate::sink::Sink::destination(out);
        let file = match &c.secondary {
            Some(f) => f.clone(),
            None => {
                let reserved = reserve_secondary(&out.secondary_dir(self.store.dir()), &out.secondary_basename());
                match reserved {
                    Ok(f) => {
                        self.store.send_to_secondary(seq, f.clone());
                        if !self.commit() {
                            // The buffer cannot be written now (the commit was undone): again
                            // once it can.
                            let _ = std::fs::remove_file(&f);
                            self.to_secondary.push((seq, reason.to_string()));
                            return;
                        }
                        f
                    }
                    Err(e) => {
                        tracing::error!(error = %e, key = %c.key, "cannot write the secondary file; the chunk stays in the buffer");
                        self.stuck.insert(seq);
                        return;
                    }
                }
            }
        };
        let path = self.store.chunk_path(seq);
        match fill_secondary(&path, c.len, &file, self.config.buffer.fsync) {
            Ok(()) => {
                crate::crashpoint::hit("secondary-written");
                tracing::warn!(file = %file.display(), key = %c.key, bytes = c.len, "chunk written to the secondary directory");
                // What it was made for, for `logship resend` (its bytes are safe already: a
                // record that cannot be written is said, and the file is still listed).
                let record = crate::sink::secondary::SecondaryRecord {
                    chunk: ChunkMeta {
                        secondary: None,
                        ..c.clone()
                    },
                    destination,
                    reason: reason.to_string(),
                };
                if let Err(e) = crate::sink::secondary::write_record(&file, &record) {
                    tracing::warn!(file = %file.display(), error = %e, "cannot record what the secondary file was for; `logship resend` will list it without sending it");
                }
                if let Some(m) = self.output_metrics(&c.output) {
                    m.secondary_chunks.fetch_add(1, Ordering::Relaxed);
                    m.secondary_bytes.fetch_add(c.len, Ordering::Relaxed);
                }
                if let Some(o) = self.summary.output_mut(&c.output) {
                    o.secondary.push(SecondaryFile {
                        file,
                        key: c.key.clone(),
                        bytes: c.len,
                        reason: reason.to_string(),
                    });
                }
                self.store.remove(seq);
            }
            Err(e) => {
                tracing::error!(error = %e, key = %c.key, "cannot write the secondary file; the chunk stays in the buffer");
                self.stuck.insert(seq);
            }
        }
    }

    fn deadline(&mut self) {
        tracing::error!("drain deadline passed; moving undelivered chunks to the secondary directories");
        self.summary.deadline_passed = true;
        // Whatever was read stays consistent: commit it first (seal everything).
        self.store.seal_all();
        self.commit();
        let left: Vec<u64> = self.store.chunks().map(|c| c.seq).collect();
        for seq in left {
            self.in_flight.remove(&seq);
            self.put_in_secondary(seq, "not delivered before the drain deadline");
        }
        self.commit();
    }

    /// How long to sleep. Only times the loop acts on count: a time that is already past but
    /// that the loop will not act on (a scan while draining, a poll while reading is paused or
    /// done) would make it spin. Messages (events, deliveries) wake it earlier.
    fn next_wake(&self, now: Instant, draining: bool, reading_done: bool) -> Duration {
        let mut next = now + Duration::from_secs(5);
        if let Some(t) = self.write_backoff {
            // Reading, polling and committing all wait for the pause to end.
            next = next.min(t);
        } else if !reading_done {
            // Over the total limit, reading waits for a delivery (a message), not for a time.
            let paused = self.over_limit();
            for s in &self.sources {
                if !draining && let Some(t) = s.next_scan() {
                    next = next.min(t);
                }
                if !paused && let Some(t) = s.next_deadline() {
                    next = next.min(t);
                }
                next = next.min(self.last_poll + s.poll_interval());
            }
        }
        // The next open chunk to become due.
        let now_wall = self.clock.now_ms();
        if let Some(due) = self.store.next_due(|c| flush_due_ms(&self.config, c)) {
            let wait = Duration::from_millis((due - now_wall).max(0) as u64);
            next = next.min(now + wait);
        }
        if draining && !reading_done && self.write_backoff.is_none() {
            next = next.min(now + Duration::from_millis(200));
        }
        if self.files_stale
            && let Some(t) = self.files_published
        {
            next = next.min(t + FILES_PUBLISH_EVERY);
        }
        // Never less than a millisecond: a due time that is due now is acted on at the next pass.
        next.saturating_duration_since(now).max(Duration::from_millis(1))
    }

    /// What the run did (after the last pass).
    pub fn finish(mut self) -> Summary {
        self.store.sync_dir();
        for s in &self.sources {
            self.summary
                .not_shipped
                .extend(s.not_shipped(self.config.lifecycle.once));
            for (path, bytes) in s.unread() {
                self.summary.unread.push((path, bytes));
            }
            self.summary.sources.push(crate::summary::SourceSummary {
                name: s.config().name.clone(),
                stats: s.stats(),
            });
        }
        for c in self.store.chunks() {
            self.summary
                .left_in_buffer
                .push((self.store.chunk_path(c.seq), c.key.clone(), c.len));
        }
        self.summary.buffer_dir = self.store.dir().to_path_buf();
        self.summary.damaged_chunks = self.store.damaged().to_vec();
        self.summary.unaccounted = self.store.unaccounted().to_vec();
        self.summary.state_doubts = self.store.state_doubts().to_vec();
        if let Some(EndReason::HeartbeatNeverAppeared(p)) = &self.drain_reason {
            // Following ended before the main container was ever seen: what it writes from
            // now on is not shipped. A run like that never exits 0.
            self.summary.main_never_seen = Some(format!(
                "the heartbeat file {} never appeared: logship stopped following before the main container was seen, and what it writes later is not shipped (does its image touch the heartbeat? EMR's do; others need a native sidecar or `logship wrap`)",
                p.display()
            ));
        }
        self.summary.drain_reason = self.drain_reason.take().map(|r| r.to_string());
        self.summary
    }
}
