//! Wires one [`Config`] into a running process: the buffer, the pipeline thread, one delivery
//! task per output, the file-system watcher and the lifecycle triggers; then drives the drain
//! and returns the [`Summary`].
//!
//! SIGHUP reloads the configuration from where it came from ([`Reloader`]). The new one must
//! parse, validate and keep the buffer directory, or it is logged and the running one stays.
//! Then deliveries finish the attempt they are in (no new one starts), the pipeline commits
//! and stops, and the engine starts again on the same buffer with the new configuration: what
//! was read is in the buffer's committed state, nothing is read or delivered twice. A new
//! configuration that cannot start (an output whose destination changed while it has chunks
//! waiting, a metrics address in use) is logged, and the old one starts again.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::Sender;

use tokio::sync::{mpsc, oneshot, watch};

use crate::buffer::{BufferError, ChunkLimits, ChunkStore, OutputKeying, SealedChunk};
use crate::config::key::default_time_slice_format;
use crate::config::{Config, OutputKind, RetryConfig, SourceKind, WatchMode};
use crate::lifecycle;
use crate::metrics::Metrics;
use crate::pipeline::{Control, Pipeline, WakeFlags};
use crate::sink::Sink;
use crate::sink::retry::Deliveries;
use crate::summary::Summary;
use crate::watch::DirWatcher;

/// Why the engine could not start.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The buffer directory is unusable.
    #[error(transparent)]
    Buffer(#[from] BufferError),
    /// An output cannot start (no AWS region, no credentials at all).
    #[error("output {output}: {source}")]
    Output {
        /// The output's name and destination.
        output: String,
        /// Why.
        source: crate::sink::SetupError,
    },
    /// The pipeline thread could not be started or died.
    #[error("pipeline thread failed: {0}")]
    Thread(String),
    /// The metrics listener could not bind its address.
    #[error("cannot listen for metrics on {addr}: {source}")]
    Metrics {
        /// The address.
        addr: String,
        /// The error.
        source: std::io::Error,
    },
}

/// How long deliveries may go on after SIGTERM or SIGINT arrived during a drain.
const STOP_DELIVERY_BOUND: std::time::Duration = std::time::Duration::from_secs(60);

/// Reads the configuration again from where it came from (a file, a fluentd file), checked
/// as at start; the error says what is wrong with it.
pub type ReloadFn = dyn Fn() -> Result<Config, String> + Send + Sync;

/// A [`ReloadFn`] that `main` hands to [`run`].
pub type Reloader = Box<ReloadFn>;

/// How one configuration's run ended.
enum Outcome {
    /// The drain completed (or its deadline passed).
    Finished(Box<Summary>),
    /// SIGHUP brought a valid new configuration; everything was committed and stopped. What
    /// this configuration's run did is carried into the next one's summary.
    Reload(Box<Config>, Box<Summary>),
}

/// Runs `config` until the drain completes (or its deadline passes), reloading it on SIGHUP
/// when `reload` says how.
pub async fn run(config: Config, reload: Option<Reloader>) -> Result<Summary, EngineError> {
    let mut signals = lifecycle::Signals::install();
    let mut running = config;
    let mut next: Option<Config> = None;
    // What the runs before the last reload did: the summary counts the whole process.
    let mut earlier: Option<Summary> = None;
    loop {
        let trying_new = next.is_some();
        let attempt = next.take().unwrap_or_else(|| running.clone());
        match run_config(attempt.clone(), &mut signals, reload.as_deref(), trying_new).await {
            Ok(Outcome::Finished(mut summary)) => {
                if let Some(e) = earlier {
                    summary.absorb(e);
                }
                return Ok(*summary);
            }
            Ok(Outcome::Reload(new, mut done)) => {
                if let Some(e) = earlier.take() {
                    done.absorb(e);
                }
                earlier = Some(*done);
                running = attempt;
                next = Some(*new);
            }
            Err(e) if trying_new => {
                tracing::error!(error = %e, "the reloaded configuration cannot start; going back to the one that ran");
            }
            Err(e) => return Err(e),
        }
    }
}

/// Runs one configuration until it finishes or a reload stops it.
async fn run_config(
    config: Config,
    signals: &mut lifecycle::Signals,
    reload: Option<&ReloadFn>,
    reloaded: bool,
) -> Result<Outcome, EngineError> {
    let config = Arc::new(config);
    let mut sinks = Vec::new();
    for (i, o) in config.outputs.iter().enumerate() {
        let sink = Sink::build(o, &config.records_for_output(i))
            .await
            .map_err(|source| EngineError::Output {
                output: format!("{} ({})", o.name, Sink::describe(o)),
                source,
            })?;
        sinks.push(sink);
    }
    let keying = output_keying(&config);
    let limits = ChunkLimits {
        timekey_secs: config.buffer.timekey.get().as_secs().max(1) as i64,
        chunk_limit: config.buffer.chunk_limit.bytes(),
        fsync: config.buffer.fsync,
    };
    let store = ChunkStore::open(&config.buffer.dir, limits, keying)?;
    if !config.sources.is_empty() {
        // (Not `resend`'s own run over the buffer, which reads nothing.)
        save_config(&config);
    }
    if store.chunks().len() > 0 {
        tracing::info!(
            chunks = store.chunks().len(),
            bytes = store.total_bytes(),
            "recovered undelivered chunks from the buffer"
        );
    }

    let event_counters: Vec<_> = sinks.iter().map(Sink::event_counters).collect();
    let metrics = Arc::new(Metrics::new(
        config
            .outputs
            .iter()
            .map(|o| o.name.clone())
            .zip(event_counters.iter().cloned()),
    ));
    let metrics_server = match &config.metrics.listen {
        Some(addr) => {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|source| EngineError::Metrics {
                    addr: addr.clone(),
                    source,
                })?;
            tracing::info!(%addr, "serving /metrics and /healthz");
            Some(AbortOnDrop(Some(tokio::spawn(crate::metrics::serve(
                listener,
                metrics.clone(),
                config.metrics.stall_timeout.get(),
            )))))
        }
        None => None,
    };
    let (ctl_tx, ctl_rx) = std::sync::mpsc::channel::<Control>();
    let (deliveries_tx, deliveries_rx) = watch::channel(Deliveries::Run);
    let mut senders = Vec::new();
    let mut deliverers = Vec::new();
    for (i, (sink, out)) in sinks.into_iter().zip(&config.outputs).enumerate() {
        let (tx, rx) = mpsc::unbounded_channel::<SealedChunk>();
        senders.push(tx);
        deliverers.push(tokio::spawn(deliver_loop(
            sink,
            rx,
            ctl_tx.clone(),
            out.retry.clone(),
            deliveries_rx.clone(),
            (metrics.clone(), i),
        )));
    }

    let wake = Arc::new(WakeFlags::default());
    let mut pipeline = Pipeline::new(config.clone(), store, senders, ctl_rx, wake.clone());
    if config.metrics.listen.is_some() || config.lifecycle.once {
        pipeline.set_metrics(metrics.clone());
    }
    // A backfill (--once) shows how far it got: a bar on a terminal, plain lines otherwise.
    let _progress = config
        .lifecycle
        .once
        .then(|| AbortOnDrop(Some(tokio::spawn(progress(metrics.clone())))));
    pipeline.set_watcher(start_watcher(&config, ctl_tx.clone(), wake));

    let (done_tx, mut done_rx) = oneshot::channel::<Summary>();
    let thread = std::thread::Builder::new()
        .name("pipeline".into())
        .spawn(move || {
            let _ = done_tx.send(pipeline.run());
        })
        .map_err(|e| EngineError::Thread(e.to_string()))?;
    if reloaded {
        tracing::info!("configuration reloaded; running with it");
    }

    // A follower settles into a steady state: once start-up is well behind, its binary's
    // start-up code leaves the resident set (crate::memory).
    let _trim = (!config.lifecycle.once).then(|| {
        AbortOnDrop(Some(tokio::spawn(async {
            tokio::time::sleep(std::time::Duration::from_secs(5)).await;
            let bytes = tokio::task::spawn_blocking(crate::memory::trim_code_pages)
                .await
                .unwrap_or(0);
            tracing::debug!(bytes, "start-up code pages released");
        })))
    });
    let end = lifecycle::wait_for_end(&config.lifecycle);
    tokio::pin!(end);
    let mut shutdown = Shutdown::new(ctl_tx.clone(), deliveries_tx, config.lifecycle.drain_deadline());
    let mut reload_to = None;
    // A drain in which nothing is read or delivered for `stall_timeout` (a destination down,
    // retried on a 24 h schedule) ends as if its deadline had passed: a stuck `--once` gives up
    // in minutes, with what is left in the secondary directory, not after a day.
    let stall_after = config.metrics.stall_timeout.get();
    let mut stall_check = tokio::time::interval(
        (stall_after / 4).clamp(std::time::Duration::from_millis(100), std::time::Duration::from_secs(5)),
    );
    let mut last_move = (metrics.progress_mark(), tokio::time::Instant::now());
    let summary = loop {
        tokio::select! {
            s = &mut done_rx => break s.ok(),
            _ = stall_check.tick(), if shutdown.is_draining() => {
                let mark = metrics.progress_mark();
                if mark != last_move.0 {
                    last_move = (mark, tokio::time::Instant::now());
                } else if last_move.1.elapsed() >= stall_after {
                    tracing::warn!(stalled_for = ?stall_after, "nothing was read or delivered during the drain for stall_timeout: ending it (what is left goes to the secondary directory)");
                    shutdown.cancel();
                    break (&mut done_rx).await.ok();
                }
            }
            reason = &mut end, if !shutdown.is_draining() => shutdown.drain(reason),
            request = signals.recv() => match request {
                lifecycle::SignalRequest::Stop(name) => shutdown.stop_signal(name),
                lifecycle::SignalRequest::Reload(name) if shutdown.is_draining() => {
                    tracing::info!(signal = name, "ignored during the drain (the configuration is not reloaded)");
                }
                lifecycle::SignalRequest::Reload(name) => match reload.map(|f| f()) {
                    None => tracing::info!(signal = name, "nothing to reload: quick mode's settings are its flags"),
                    Some(Err(e)) => tracing::error!(signal = name, error = %e, "the new configuration is invalid; the running one stays"),
                    Some(Ok(new)) if new.buffer.dir != config.buffer.dir => tracing::error!(
                        signal = name,
                        running = %config.buffer.dir.display(),
                        new = %new.buffer.dir.display(),
                        "the new configuration moves the buffer directory, which a reload cannot do (restart logship); the running one stays"
                    ),
                    Some(Ok(new)) => {
                        tracing::info!(signal = name, "reloading the configuration: deliveries finish the attempt they are in, then reading and delivery start again with it");
                        reload_to = Some(new);
                        break None;
                    }
                },
                lifecycle::SignalRequest::Ignored(name) => {
                    tracing::info!(signal = name, "ignored (SIGTERM or SIGINT drains; SIGHUP reloads the configuration)");
                }
            },
            () = shutdown.deadline(), if shutdown.is_draining() => {
                shutdown.cancel();
                break (&mut done_rx).await.ok();
            }
        }
    };
    if let Some(new) = reload_to {
        // No attempt is cut: each delivery task ends after the one it is in (its chunk is then
        // delivered and acknowledged, or stays in the buffer); then the pipeline commits what
        // it read and the acknowledgements, and stops.
        shutdown.pause();
        for d in deliverers {
            let _ = d.await;
        }
        let _ = ctl_tx.send(Control::Halt);
        let mut done = (&mut done_rx).await.unwrap_or_default();
        for (o, counters) in done.outputs.iter_mut().zip(&event_counters) {
            o.events = counters.as_ref().map(|c| c.values().into_iter().collect());
        }
        drop((ctl_tx, shutdown));
        let _ = thread.join();
        // The metrics address is bound again by the next run.
        if let Some(m) = metrics_server {
            m.stop().await;
        }
        return Ok(Outcome::Reload(Box::new(new), Box::new(done)));
    }
    shutdown.cancel();
    drop((ctl_tx, shutdown));
    let _ = thread.join();
    for d in deliverers {
        d.abort();
    }
    drop(metrics_server);
    let mut summary = summary;
    if let Some(s) = &mut summary {
        for (o, counters) in s.outputs.iter_mut().zip(&event_counters) {
            o.events = counters.as_ref().map(|c| c.values().into_iter().collect());
        }
    }
    summary
        .map(|s| Outcome::Finished(Box::new(s)))
        .ok_or_else(|| EngineError::Thread("pipeline thread ended without a result".into()))
}

/// Writes the effective configuration into the buffer directory (private, replaced
/// atomically), so that `logship resend` can deliver what this run leaves to where it was
/// going. It holds no secret: credentials come from the environment. Failing to write it is
/// logged; the run does not depend on it.
fn save_config(config: &Config) {
    let path = config.buffer.dir.join(crate::resend::CONFIG_FILE);
    if let Err(e) = crate::fsutil::write_atomic(&path, config.to_toml().as_bytes(), false) {
        tracing::warn!(file = %path.display(), error = %e, "cannot save the configuration in the buffer directory; `logship resend` will not find it");
    }
}

/// How each output of `config` makes its chunks' keys, and what its chunks keep (the buffer's
/// view of the outputs).
pub fn output_keying(config: &Config) -> Vec<OutputKeying> {
    config
        .outputs
        .iter()
        .enumerate()
        .map(|(i, o)| OutputKeying {
            name: o.name.clone(),
            template: o.key_format.clone(),
            path: o.path.clone(),
            time_slice_format: o
                .time_slice_format
                .clone()
                .unwrap_or_else(|| default_time_slice_format(config.buffer.timekey.get().as_secs()).to_string()),
            file_extension: Sink::file_extension(o).to_string(),
            index_start: o.index_start,
            by_tag: o.key_format.has_tag()
                || !matches!(o.kind, OutputKind::File { .. } | OutputKind::Stdout | OutputKind::S3(_))
                || config
                    .sources
                    .iter()
                    .any(|s| s.kind == SourceKind::SparkEvents && config.routes(s).contains(&i)),
            destination: Sink::destination(o),
            crc32: Sink::sends_written_crc32(o),
            hold_ms: (matches!(o.kind, OutputKind::Cloudwatch(_))
                && config.records_for_output(i) != crate::config::Records::Lines)
                .then(|| {
                    config
                        .sources
                        .iter()
                        .filter(|s| config.routes(s).contains(&i))
                        .map(|s| s.multiline_flush.get().as_millis() as i64)
                        .max()
                        .unwrap_or(0)
                }),
        })
        .collect()
}

/// How a run ends, in one place (as tokio's mini-redis hands a `Shutdown` down): why the drain
/// started, by when it must be done, and what the delivery tasks may still do. Every trigger
/// (the lifecycle, signals, the deadline, a reload) goes through it.
struct Shutdown {
    /// Why the drain started; `None` while running.
    reason: Option<lifecycle::EndReason>,
    /// SIGTERM/SIGINT received during the drain.
    stops: u32,
    /// When deliveries stop and what is left goes to the secondary directories.
    deadline: std::pin::Pin<Box<tokio::time::Sleep>>,
    /// The drain deadline of the configuration.
    drain_deadline: std::time::Duration,
    /// What the delivery tasks are told.
    deliveries: watch::Sender<Deliveries>,
    /// The pipeline thread.
    pipeline: Sender<Control>,
}

impl Shutdown {
    fn new(
        pipeline: Sender<Control>,
        deliveries: watch::Sender<Deliveries>,
        drain_deadline: std::time::Duration,
    ) -> Shutdown {
        Shutdown {
            reason: None,
            stops: 0,
            deadline: Box::pin(tokio::time::sleep(std::time::Duration::from_secs(u32::MAX as u64))),
            drain_deadline,
            deliveries,
            pipeline,
        }
    }

    fn is_draining(&self) -> bool {
        self.reason.is_some()
    }

    /// Starts the drain (once): the pipeline reads to the drain point and delivers; the clock
    /// of the drain deadline starts.
    fn drain(&mut self, reason: lifecycle::EndReason) {
        if self.reason.is_none() {
            let _ = self.pipeline.send(Control::Drain(reason.clone()));
            self.reason = Some(reason);
            self.deadline
                .as_mut()
                .reset(tokio::time::Instant::now() + self.drain_deadline);
        }
    }

    /// SIGTERM or SIGINT. Running: drain. Draining: stop reading, and deliver what was read
    /// within a short bound (a backfill's 24 h deadline is no answer to SIGTERM); again: end now.
    fn stop_signal(&mut self, name: &'static str) {
        if !self.is_draining() {
            return self.drain(lifecycle::EndReason::Signal(name));
        }
        self.stops += 1;
        let now = tokio::time::Instant::now();
        let bound = if self.stops == 1 {
            STOP_DELIVERY_BOUND
        } else {
            std::time::Duration::ZERO
        };
        if self.deadline.deadline() > now + bound {
            self.deadline.as_mut().reset(now + bound);
        }
        tracing::warn!(signal = name, within = ?bound, "received during the drain: reading stops; what was read is delivered (what is not delivered in time goes to the secondary directory), the rest is reported as not read");
        let _ = self.pipeline.send(Control::StopReading);
    }

    /// Resolves when the drain deadline passes.
    async fn deadline(&mut self) {
        self.deadline.as_mut().await
    }

    /// The deadline: deliveries stop at once, the pipeline puts what is left aside.
    fn cancel(&self) {
        let _ = self.deliveries.send(Deliveries::Cancel);
        let _ = self.pipeline.send(Control::Deadline);
    }

    /// A reload: deliveries end after the attempt they are in.
    fn pause(&self) {
        let _ = self.deliveries.send(Deliveries::Pause);
    }
}

/// Delivers the chunks of one output in order, each with its retry schedule, while
/// `deliveries` says `Run`: `Cancel` (the drain deadline) ends it at once, `Pause` (a reload)
/// after the attempt under way.
async fn deliver_loop(
    sink: Sink,
    mut rx: mpsc::UnboundedReceiver<SealedChunk>,
    ctl: Sender<Control>,
    retry: RetryConfig,
    deliveries: watch::Receiver<Deliveries>,
    (metrics, index): (Arc<Metrics>, usize),
) {
    let retries = &metrics.outputs[index].retries;
    let log = crate::sink::retry::FailureLog::default();
    let (mut stop, mut cancel) = (deliveries.clone(), deliveries.clone());
    loop {
        let chunk = tokio::select! {
            c = rx.recv() => match c {
                Some(c) => c,
                None => return,
            },
            _ = stop.wait_for(|d| *d != Deliveries::Run) => return,
        };
        let result = tokio::select! {
            r = crate::sink::retry::deliver_with_retry(&sink, &chunk, &retry, (retries, &log), &deliveries) => r,
            _ = cancel.wait_for(|d| *d == Deliveries::Cancel) => return,
        };
        let msg = match result {
            Ok(stored) => {
                crate::crashpoint::hit("delivered-before-ack");
                Control::Delivered(chunk.seq, stored)
            }
            Err(crate::sink::DeliveryError::Paused) => return,
            Err(e) => Control::Failed(chunk.seq, e.to_string()),
        };
        if ctl.send(msg).is_err() {
            return;
        }
    }
}

/// A size as a person reads it: `950 B`, `17.0 MiB`, `1.25 GiB`.
fn readable_size(b: u64) -> String {
    const UNITS: [(&str, u32); 4] = [("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10)];
    for (unit, shift) in UNITS {
        if b >= 1 << shift {
            let v = b as f64 / (1u64 << shift) as f64;
            return if v < 10.0 {
                format!("{v:.2} {unit}")
            } else {
                format!("{v:.1} {unit}")
            };
        }
    }
    format!("{b} B")
}

/// Reports a backfill's progress on stderr until aborted.
async fn progress(metrics: Arc<Metrics>) {
    use std::io::{IsTerminal, Write};
    // With JSON logs, progress is a log line like the others.
    let json = std::env::var("LOGSHIP_LOG_FORMAT").is_ok_and(|v| v == "json");
    let tty = std::io::stderr().is_terminal() && !json;
    let every = std::env::var("LOGSHIP_PROGRESS_EVERY")
        .ok()
        .and_then(|v| v.parse::<crate::units::HumanDuration>().ok())
        .map_or(std::time::Duration::from_secs(if tty { 1 } else { 10 }), |d| d.get());
    let size = readable_size;
    struct NewlineOnDrop(bool);
    impl Drop for NewlineOnDrop {
        fn drop(&mut self) {
            if self.0 {
                eprintln!();
            }
        }
    }
    let _newline = NewlineOnDrop(tty);
    loop {
        tokio::time::sleep(every).await;
        let (read, total, files) = {
            let f = metrics.files.lock().expect("metrics lock");
            (
                f.iter().map(|x| x.bytes_read).sum::<u64>(),
                f.iter().map(|x| x.size.max(x.bytes_read)).sum::<u64>(),
                f.len(),
            )
        };
        if files == 0 {
            // Nothing found yet (the first scan has not been published): nothing to report.
            continue;
        }
        let delivered: u64 = metrics
            .outputs
            .iter()
            .map(|o| o.bytes_delivered.load(Ordering::Relaxed))
            .sum();
        let pct = (read * 100).checked_div(total).unwrap_or(100);
        if tty {
            let filled = (pct as usize * 30 / 100).min(30);
            eprint!(
                "\r[{}{}] {pct:>3}% read {} of {} in {files} files, {} delivered ",
                "#".repeat(filled),
                "-".repeat(30 - filled),
                size(read),
                size(total),
                size(delivered)
            );
            let _ = std::io::stderr().flush();
        } else if json {
            tracing::info!(percent = pct, read, total, files, delivered, "progress");
        } else {
            eprintln!(
                "logship: progress: {pct}% read ({} of {} in {files} files), {} delivered",
                size(read),
                size(total),
                size(delivered)
            );
        }
    }
}

/// Aborts a task when dropped (the metrics listener ends with the run).
struct AbortOnDrop(Option<tokio::task::JoinHandle<()>>);

impl AbortOnDrop {
    /// Aborts the task and waits until it is gone (and with it, what it held: a listening socket).
    async fn stop(mut self) {
        if let Some(h) = self.0.take() {
            h.abort();
            let _ = h.await;
        }
    }
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if let Some(h) = &self.0 {
            h.abort();
        }
    }
}

/// Starts the inotify watcher (the pipeline adds the directories); a burst of events becomes one
/// wake-up. Without it (poll mode, or inotify unavailable) the pipeline polls.
fn start_watcher(config: &Config, ctl: Sender<Control>, wake: Arc<WakeFlags>) -> Option<DirWatcher> {
    if config.sources.iter().all(|s| s.watch == WatchMode::Poll) {
        return None;
    }
    match DirWatcher::start(wake, move || {
        let _ = ctl.send(Control::Wake);
    }) {
        Ok(w) => Some(w),
        Err(e) => {
            tracing::warn!(error = %e, "file-system events unavailable; polling instead");
            None
        }
    }
}
