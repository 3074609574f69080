//! The retry schedule of one output: exponential backoff with jitter (backon), fluentd's
//! parameters, per chunk. A chunk that runs out of retries goes to the secondary directory; the
//! chunks after it are not affected (fluentd drops its whole queue at that point).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use tokio::sync::watch;

use super::{DeliveryError, Sink};
use crate::buffer::SealedChunk;
use crate::config::RetryConfig;

/// What delivery tasks may do: told by the engine's `Shutdown`, read before every attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deliveries {
    /// Deliver, retrying as configured.
    Run,
    /// A reload: start no new attempt; the one under way finishes.
    Pause,
    /// The drain deadline: stop now.
    Cancel,
}

/// Longest wait between two tries while waiting for valid credentials.
const CREDENTIALS_MAX_WAIT: Duration = Duration::from_secs(15);

/// Delivers `chunk`: retryable errors follow `config`'s schedule (the last error is returned when
/// retries are exhausted or `config.timeout` has passed); credential errors (an expired or
/// refusing presigned POST) are retried without limit, re-reading the credentials each time;
/// permanent errors return at once.
/// Every failed attempt that is tried again counts in `retries`.
///
/// Once `deliveries` is not `Run`, no new attempt starts and waits between attempts end early:
/// the result is [`DeliveryError::Paused`]. An attempt under way is never cut (it would leave the
/// destination not knowing whether it holds the chunk).
pub async fn deliver_with_retry(
    sink: &Sink,
    chunk: &SealedChunk,
    config: &RetryConfig,
    retries: &AtomicU64,
    deliveries: &watch::Receiver<Deliveries>,
) -> Result<(), DeliveryError> {
    let mut wait = config.wait.get().max(Duration::from_millis(100));
    loop {
        match deliver_with_backoff(sink, chunk, config, retries, deliveries).await {
            Err(e) if e.is_credentials() => {
                retries.fetch_add(1, Ordering::Relaxed);
                // Jittered (half to the full wait), so the executors of a job whose credentials
                // expired together do not all come back in the same instant.
                let jittered = wait.mul_f64(0.5 + fastrand::f64() / 2.0);
                tracing::warn!(key = %chunk.key, seq = chunk.seq, error = %e, retry_in = ?jittered, "cannot upload with the current credentials; keeping the chunk and trying again");
                sleep_unless_paused(jittered, deliveries.clone()).await;
                wait = (wait * 2).min(CREDENTIALS_MAX_WAIT);
            }
            other => return other,
        }
    }
}

/// Sleeps `d`, or less if deliveries are told to stop.
async fn sleep_unless_paused(d: Duration, mut deliveries: watch::Receiver<Deliveries>) {
    tokio::select! {
        _ = tokio::time::sleep(d) => {}
        _ = deliveries.wait_for(|d| *d != Deliveries::Run) => {}
    }
}

async fn deliver_with_backoff(
    sink: &Sink,
    chunk: &SealedChunk,
    config: &RetryConfig,
    retries: &AtomicU64,
    deliveries: &watch::Receiver<Deliveries>,
) -> Result<(), DeliveryError> {
    let mut backoff = ExponentialBuilder::new()
        .with_min_delay(config.wait.get())
        .with_factor(config.exponential_base)
        .with_max_delay(config.max_interval.get())
        .with_max_times(config.max_times);
    if config.randomize {
        // backon seeds its jitter from the process's randomness only with its `std` feature
        // (on here); without it every process would wait the same "random" times.
        backoff = backoff.with_jitter();
    }
    let for_sleep = deliveries.clone();
    let attempt = || async {
        if *deliveries.borrow() != Deliveries::Run {
            return Err(DeliveryError::Paused);
        }
        sink.deliver(chunk).await
    };
    let run = attempt
        .retry(backoff)
        .sleep(move |d| sleep_unless_paused(d, for_sleep.clone()))
        .when(DeliveryError::is_retryable)
        .notify(|e: &DeliveryError, wait: Duration| {
            retries.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(key = %chunk.key, seq = chunk.seq, error = %e, retry_in = ?wait, "delivery failed; retrying");
        });
    match tokio::time::timeout(config.timeout.get(), run).await {
        Ok(r) => r,
        Err(_) => Err(DeliveryError::Retryable(format!(
            "gave up after retry timeout {}",
            config.timeout
        ))),
    }
}
