//! Wires one [`Config`] into a running process: the buffer, the pipeline thread, one delivery
//! task per output, the file-system watcher and the lifecycle triggers; then drives the drain
//! and returns the [`Summary`].

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::Sender;

use notify::EventKind;
use tokio::sync::{mpsc, oneshot, watch};

use crate::buffer::{BufferError, ChunkLimits, ChunkStore, OutputKeying, SealedChunk};
use crate::config::{Config, RetryConfig, WatchMode};
use crate::lifecycle;
use crate::metrics::Metrics;
use crate::pipeline::{Control, Pipeline, WakeFlags};
use crate::sink::Sink;
use crate::sink::key::{KeyTemplate, default_time_slice_format};
use crate::summary::Summary;

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

/// Runs `config` until the drain completes (or its deadline passes).
pub async fn run(config: Config) -> Result<Summary, EngineError> {
    let config = Arc::new(config);
    let mut sinks = Vec::new();
    for o in &config.outputs {
        let sink = Sink::build(o).await.map_err(|source| EngineError::Output {
            output: format!("{} ({})", o.name, Sink::describe(o)),
            source,
        })?;
        sinks.push(sink);
    }
    let keying = config
        .outputs
        .iter()
        .map(|o| OutputKeying {
            name: o.name.clone(),
            template: KeyTemplate::parse(&o.key_format).expect("validated"),
            path: o.path.clone(),
            time_slice_format: if o.time_slice_format.is_empty() {
                default_time_slice_format(config.buffer.timekey.get().as_secs()).to_string()
            } else {
                o.time_slice_format.clone()
            },
            file_extension: Sink::file_extension(o).to_string(),
            index_start: o.index_start,
            destination: Sink::destination(o),
        })
        .collect();
    let limits = ChunkLimits {
        timekey_secs: config.buffer.timekey.get().as_secs().max(1) as i64,
        chunk_limit: config.buffer.chunk_limit.bytes(),
        fsync: config.buffer.fsync,
    };
    let store = ChunkStore::open(&config.buffer.dir, limits, keying)?;
    if !store.chunks().is_empty() {
        tracing::info!(
            chunks = store.chunks().len(),
            bytes = store.total_bytes(),
            "recovered undelivered chunks from the buffer"
        );
    }

    let metrics = Arc::new(Metrics::new(config.outputs.iter().map(|o| o.name.clone())));
    let _metrics_server = match &config.metrics.listen {
        Some(addr) => {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|source| EngineError::Metrics {
                    addr: addr.clone(),
                    source,
                })?;
            tracing::info!(%addr, "serving /metrics and /healthz");
            Some(AbortOnDrop(tokio::spawn(crate::metrics::serve(
                listener,
                metrics.clone(),
                config.metrics.stall_timeout.get(),
            ))))
        }
        None => None,
    };
    let (ctl_tx, ctl_rx) = std::sync::mpsc::channel::<Control>();
    let (cancel_tx, cancel_rx) = watch::channel(false);
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
            cancel_rx.clone(),
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
        .then(|| AbortOnDrop(tokio::spawn(progress(metrics.clone()))));
    pipeline.set_watcher(start_watcher(&config, ctl_tx.clone(), wake));

    let (done_tx, mut done_rx) = oneshot::channel::<Summary>();
    let thread = std::thread::Builder::new()
        .name("pipeline".into())
        .spawn(move || {
            let _ = done_tx.send(pipeline.run());
        })
        .map_err(|e| EngineError::Thread(e.to_string()))?;

    let mut signals = lifecycle::Signals::install();
    let end = lifecycle::wait_for_end(&config.lifecycle);
    tokio::pin!(end);
    let deadline = tokio::time::sleep(std::time::Duration::from_secs(u32::MAX as u64));
    tokio::pin!(deadline);
    let mut draining = false;
    let mut stops = 0;
    let start_drain = |reason: String, deadline: std::pin::Pin<&mut tokio::time::Sleep>| {
        let _ = ctl_tx.send(Control::Drain(reason));
        deadline.reset(tokio::time::Instant::now() + config.lifecycle.drain_deadline());
    };
    let summary = loop {
        tokio::select! {
            s = &mut done_rx => break s.ok(),
            reason = &mut end, if !draining => {
                draining = true;
                start_drain(reason.to_string(), deadline.as_mut());
            }
            request = signals.recv() => match request {
                lifecycle::SignalRequest::Stop(name) if !draining => {
                    draining = true;
                    start_drain(lifecycle::EndReason::Signal(name).to_string(), deadline.as_mut());
                }
                lifecycle::SignalRequest::Stop(name) => {
                    // First: stop reading, and deliver what was read within a short bound (a
                    // backfill's 24 h deadline is no answer to SIGTERM). Again: end now.
                    stops += 1;
                    let now = tokio::time::Instant::now();
                    let bound = if stops == 1 { STOP_DELIVERY_BOUND } else { std::time::Duration::ZERO };
                    if deadline.deadline() > now + bound {
                        deadline.as_mut().reset(now + bound);
                    }
                    tracing::warn!(signal = name, within = ?bound, "received during the drain: reading stops; what was read is delivered (what is not delivered in time goes to the secondary directory), the rest is reported as not read");
                    let _ = ctl_tx.send(Control::StopReading);
                }
                lifecycle::SignalRequest::Ignored(name) => {
                    tracing::info!(signal = name, "ignored (SIGTERM or SIGINT drains; reloading the configuration is not supported)");
                }
            },
            _ = &mut deadline, if draining => {
                let _ = cancel_tx.send(true);
                let _ = ctl_tx.send(Control::Deadline);
                break done_rx.await.ok();
            }
        }
    };
    let _ = cancel_tx.send(true);
    drop(ctl_tx);
    let _ = thread.join();
    for d in deliverers {
        d.abort();
    }
    summary.ok_or_else(|| EngineError::Thread("pipeline thread ended without a result".into()))
}

/// Delivers the chunks of one output in order, each with its retry schedule.
async fn deliver_loop(
    sink: Sink,
    mut rx: mpsc::UnboundedReceiver<SealedChunk>,
    ctl: Sender<Control>,
    retry: RetryConfig,
    mut cancel: watch::Receiver<bool>,
    (metrics, index): (Arc<Metrics>, usize),
) {
    let retries = &metrics.outputs[index].retries;
    while let Some(chunk) = rx.recv().await {
        let result = tokio::select! {
            r = crate::sink::retry::deliver_with_retry(&sink, &chunk, &retry, retries) => r,
            _ = cancel.wait_for(|c| *c) => return,
        };
        let msg = match result {
            Ok(()) => {
                crate::crashpoint::hit("delivered-before-ack");
                Control::Delivered(chunk.seq)
            }
            Err(e) => Control::Failed(chunk.seq, e.to_string()),
        };
        if ctl.send(msg).is_err() {
            return;
        }
    }
}

/// Reports a backfill's progress on stderr until aborted.
async fn progress(metrics: Arc<Metrics>) {
    use std::io::{IsTerminal, Write};
    let tty = std::io::stderr().is_terminal();
    let every = std::env::var("LOGSHIP_PROGRESS_EVERY")
        .ok()
        .and_then(|v| v.parse::<crate::units::HumanDuration>().ok())
        .map_or(std::time::Duration::from_secs(if tty { 1 } else { 10 }), |d| d.get());
    let size = |b: u64| crate::units::ByteSize(b).to_string();
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
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Creates the inotify watcher (the pipeline adds the directories); a burst of events becomes one
/// wake-up. Without it (poll mode, or inotify unavailable) the pipeline polls.
fn start_watcher(config: &Config, ctl: Sender<Control>, wake: Arc<WakeFlags>) -> Option<notify::RecommendedWatcher> {
    if config.sources.iter().all(|s| s.watch == WatchMode::Poll) {
        return None;
    }
    let handler = move |res: notify::Result<notify::Event>| {
        let Ok(event) = res else { return };
        match event.kind {
            EventKind::Access(_) => return,
            EventKind::Create(_) | EventKind::Remove(_) | EventKind::Modify(notify::event::ModifyKind::Name(_)) => {
                wake.rescan.store(true, Ordering::SeqCst);
            }
            _ => {}
        }
        if !wake.pending.swap(true, Ordering::SeqCst) {
            let _ = ctl.send(Control::Wake);
        }
    };
    match notify::recommended_watcher(handler) {
        Ok(w) => Some(w),
        Err(e) => {
            tracing::warn!(error = %e, "file-system events unavailable; polling instead");
            None
        }
    }
}
