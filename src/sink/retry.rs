//! The retry schedule of one output: exponential backoff with jitter (backon), fluentd's
//! parameters, per chunk. A chunk that runs out of retries goes to the secondary directory; the
//! chunks after it are not affected (fluentd drops its whole queue at that point).

use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};

use super::{DeliveryError, Sink};
use crate::buffer::SealedChunk;
use crate::config::RetryConfig;

/// Delivers `chunk`, retrying retryable errors on `config`'s schedule. Returns the last error
/// when retries are exhausted, the error is permanent, or `config.timeout` has passed.
pub async fn deliver_with_retry(sink: &Sink, chunk: &SealedChunk, config: &RetryConfig) -> Result<(), DeliveryError> {
    let mut backoff = ExponentialBuilder::new()
        .with_min_delay(config.wait.get())
        .with_factor(config.exponential_base)
        .with_max_delay(config.max_interval.get())
        .with_max_times(config.max_times);
    if config.randomize {
        backoff = backoff.with_jitter();
    }
    let attempt = || sink.deliver(chunk);
    let run = attempt
        .retry(backoff)
        .when(DeliveryError::is_retryable)
        .notify(|e: &DeliveryError, wait: Duration| {
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
