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
    /// The pipeline thread could not be started or died.
    #[error("pipeline thread failed: {0}")]
    Thread(String),
}

/// Runs `config` until the drain completes (or its deadline passes).
pub async fn run(config: Config) -> Result<Summary, EngineError> {
    let config = Arc::new(config);
    let mut sinks = Vec::new();
    for o in &config.outputs {
        sinks.push(Sink::build(o).await);
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

    let (ctl_tx, ctl_rx) = std::sync::mpsc::channel::<Control>();
    let (cancel_tx, cancel_rx) = watch::channel(false);
    let mut senders = Vec::new();
    let mut deliverers = Vec::new();
    for (sink, out) in sinks.into_iter().zip(&config.outputs) {
        let (tx, rx) = mpsc::unbounded_channel::<SealedChunk>();
        senders.push(tx);
        deliverers.push(tokio::spawn(deliver_loop(
            sink,
            rx,
            ctl_tx.clone(),
            out.retry.clone(),
            cancel_rx.clone(),
        )));
    }

    let wake = Arc::new(WakeFlags::default());
    let mut pipeline = Pipeline::new(config.clone(), store, senders, ctl_rx, wake.clone());
    pipeline.set_watcher(start_watcher(&config, ctl_tx.clone(), wake));

    let (done_tx, mut done_rx) = oneshot::channel::<Summary>();
    let thread = std::thread::Builder::new()
        .name("pipeline".into())
        .spawn(move || {
            let _ = done_tx.send(pipeline.run());
        })
        .map_err(|e| EngineError::Thread(e.to_string()))?;

    let summary = tokio::select! {
        s = &mut done_rx => s.ok(),
        reason = lifecycle::wait_for_end(&config.lifecycle) => {
            let _ = ctl_tx.send(Control::Drain(reason.to_string()));
            let deadline = config.lifecycle.drain_deadline();
            tokio::select! {
                s = &mut done_rx => s.ok(),
                _ = tokio::time::sleep(deadline) => {
                    let _ = cancel_tx.send(true);
                    let _ = ctl_tx.send(Control::Deadline);
                    done_rx.await.ok()
                }
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
) {
    while let Some(chunk) = rx.recv().await {
        let result = tokio::select! {
            r = crate::sink::retry::deliver_with_retry(&sink, &chunk, &retry) => r,
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
