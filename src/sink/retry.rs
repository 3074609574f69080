//! The retry schedule of one output: exponential backoff with jitter (backon), fluentd's
//! parameters, per chunk. A chunk that runs out of retries goes to the secondary directory; the
//! chunks after it are not affected (fluentd drops its whole queue at that point).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};

use super::{DeliveryError, Sink};
use crate::buffer::SealedChunk;
use crate::config::RetryConfig;

/// Longest wait between two tries while waiting for valid credentials.
const CREDENTIALS_MAX_WAIT: Duration = Duration::from_secs(15);

/// Delivers `chunk`: retryable errors follow `config`'s schedule (the last error is returned when
/// retries are exhausted or `config.timeout` has passed); credential errors (an expired or
/// refusing presigned POST) are retried without limit, re-reading the credentials each time;
/// permanent errors return at once.
/// Every failed attempt that is tried again counts in `retries`.
pub async fn deliver_with_retry(
    sink: &Sink,
    chunk: &SealedChunk,
    config: &RetryConfig,
    retries: &AtomicU64,
) -> Result<(), DeliveryError> {
    let mut wait = config.wait.get().max(Duration::from_millis(100));
    loop {
        match deliver_with_backoff(sink, chunk, config, retries).await {
            Err(e) if e.is_credentials() => {
                retries.fetch_add(1, Ordering::Relaxed);
                // Jittered (half to the full wait), so the executors of a job whose credentials
                // expired together do not all come back in the same instant.
                let jittered = wait.mul_f64(0.5 + fastrand::f64() / 2.0);
                tracing::warn!(key = %chunk.key, seq = chunk.seq, error = %e, retry_in = ?jittered, "cannot upload with the current credentials; keeping the chunk and trying again");
                tokio::time::sleep(jittered).await;
                wait = (wait * 2).min(CREDENTIALS_MAX_WAIT);
            }
            other => return other,
        }
    }
}

async fn deliver_with_backoff(
    sink: &Sink,
    chunk: &SealedChunk,
    config: &RetryConfig,
    retries: &AtomicU64,
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
    let attempt = || sink.deliver(chunk);
    let run = attempt
        .retry(backoff)
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
