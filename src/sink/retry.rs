//! The retry schedule of one output: exponential backoff with jitter (backon), fluentd's
//! parameters, per chunk. A chunk that runs out of retries goes to the secondary directory; the
//! chunks after it are not affected (fluentd drops its whole queue at that point).

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder, Retryable};
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

/// How long a chunk whose delivery is [refused](DeliveryError::Refused) is tried again before
/// it goes to the secondary directory.
pub const REFUSED_FOR: Duration = Duration::from_secs(60);

/// How often a failing output says it is still failing.
const STILL_FAILING_EVERY: Duration = Duration::from_secs(60);

/// One output's failed attempts, logged as episodes rather than one line each (an output down
/// for an hour with a chunk retried every few seconds would fill the log): a warning when
/// attempts start failing, one a minute while they go on (with the count), and one line when a
/// delivery works again. The single attempts are at debug level.
#[derive(Debug, Default)]
pub struct FailureLog {
    episode: std::sync::Mutex<Option<Episode>>,
}

#[derive(Debug)]
struct Episode {
    since: tokio::time::Instant,
    failures: u64,
    said: tokio::time::Instant,
}

impl FailureLog {
    /// A failed attempt that will be tried again in `retry_in`; `what` says what happened.
    fn failed(&self, key: &str, error: &DeliveryError, retry_in: Duration, what: &str) {
        let now = tokio::time::Instant::now();
        let mut episode = self.episode.lock().unwrap_or_else(|e| e.into_inner());
        match episode.as_mut() {
            None => {
                *episode = Some(Episode {
                    since: now,
                    failures: 1,
                    said: now,
                });
                tracing::warn!(%key, %error, ?retry_in, "{what}; retrying (while it fails, a line a minute)");
            }
            Some(ep) => {
                ep.failures += 1;
                if now.duration_since(ep.said) >= STILL_FAILING_EVERY {
                    ep.said = now;
                    tracing::warn!(%key, %error, failures = ep.failures, failing_for = ?now.duration_since(ep.since), "{what}; still retrying");
                } else {
                    tracing::debug!(%key, %error, ?retry_in, "{what}; retrying");
                }
            }
        }
    }

    /// A delivery succeeded: ends the episode, if any, in one line.
    fn succeeded(&self) {
        let ended = self.episode.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(ep) = ended {
            tracing::info!(failures = ep.failures, failing_for = ?ep.since.elapsed(), "deliveries work again");
        }
    }
}

/// Delivers `chunk`: retryable errors follow `config`'s schedule (the last error is returned when
/// retries are exhausted or `config.timeout` has passed); credential errors (an expired
/// presigned POST) are retried without limit, re-reading the credentials each time; refusals
/// for [`REFUSED_FOR`]; permanent errors return at once.
/// Every failed attempt that is tried again counts in `retries`.
///
/// Once `deliveries` is not `Run`, no new attempt starts and waits between attempts end early:
/// the result is [`DeliveryError::Paused`]. An attempt under way is never cut (it would leave the
/// destination not knowing whether it holds the chunk).
pub async fn deliver_with_retry(
    sink: &Sink,
    chunk: &SealedChunk,
    config: &RetryConfig,
    (retries, log): (&AtomicU64, &FailureLog),
    deliveries: &watch::Receiver<Deliveries>,
) -> Result<u64, DeliveryError> {
    retry(|| sink.deliver(chunk), &chunk.key, config, (retries, log), deliveries).await
}

/// [`deliver_with_retry`] for any attempt (`key` names what it delivers, in messages).
pub(crate) async fn retry<F, Fut, T>(
    mut attempt: F,
    key: &str,
    config: &RetryConfig,
    (retries, log): (&AtomicU64, &FailureLog),
    deliveries: &watch::Receiver<Deliveries>,
) -> Result<T, DeliveryError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, DeliveryError>>,
{
    let mut wait = config.wait.get().max(Duration::from_millis(100));
    let mut refused_since: Option<tokio::time::Instant> = None;
    loop {
        match with_backoff(&mut attempt, key, config, (retries, log), deliveries).await {
            Err(e @ (DeliveryError::Refused(_) | DeliveryError::Credentials(_))) => {
                // A refusal is tried again for `REFUSED_FOR` at most; credentials (the kubelet
                // brings a refreshed presigned POST) for as long as it takes.
                let (left, what) = match &e {
                    DeliveryError::Refused(msg) => {
                        let since = *refused_since.get_or_insert_with(tokio::time::Instant::now);
                        let left = REFUSED_FOR.saturating_sub(since.elapsed());
                        if left.is_zero() {
                            return Err(DeliveryError::Refused(format!(
                                "{msg} (refused for {}s: no retry fixes that)",
                                since.elapsed().as_secs()
                            )));
                        }
                        (
                            left,
                            "the destination refused the chunk, which is tried again for at most a minute",
                        )
                    }
                    _ => (
                        Duration::MAX,
                        "cannot upload with the current credentials; the chunk is kept",
                    ),
                };
                retries.fetch_add(1, Ordering::Relaxed);
                // Jittered (half to the full wait), so the executors of a job whose credentials
                // expired together do not all come back in the same instant.
                let jittered = wait.mul_f64(0.5 + fastrand::f64() / 2.0).min(left);
                log.failed(key, &e, jittered, what);
                sleep_unless_paused(jittered, deliveries.clone()).await;
                wait = (wait * 2).min(CREDENTIALS_MAX_WAIT);
            }
            other => {
                if other.is_ok() {
                    log.succeeded();
                }
                return other;
            }
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

/// The waits between attempts: fluentd's exponential schedule (`wait` × `exponential_base`^n,
/// at most `max_interval`), at most `max_times` of them. With `randomize`, each wait is drawn
/// from half of it to all of it, so that retries of many chunks spread out and no wait is ever
/// longer than `max_interval`. (backon's own jitter adds up to the whole wait again: up to twice
/// `max_interval`.)
pub fn schedule(config: &RetryConfig) -> impl Iterator<Item = Duration> + Send + Sync + Unpin + use<> {
    let exponential = ExponentialBuilder::new()
        .with_min_delay(config.wait.get())
        .with_factor(config.exponential_base)
        .with_max_delay(config.max_interval.get())
        .with_max_times(config.max_times)
        .build();
    let randomize = config.randomize;
    exponential.map(move |d| {
        if randomize {
            d.mul_f64(0.5 + fastrand::f64() / 2.0)
        } else {
            d
        }
    })
}

async fn with_backoff<F, Fut, T>(
    attempt: &mut F,
    key: &str,
    config: &RetryConfig,
    (retries, log): (&AtomicU64, &FailureLog),
    deliveries: &watch::Receiver<Deliveries>,
) -> Result<T, DeliveryError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, DeliveryError>>,
{
    let for_sleep = deliveries.clone();
    let attempt = || {
        let run = *deliveries.borrow() == Deliveries::Run;
        let fut = run.then(&mut *attempt);
        async move {
            match fut {
                Some(f) => f.await,
                None => Err(DeliveryError::Paused),
            }
        }
    };
    let run = attempt
        .retry(schedule(config))
        .sleep(move |d| sleep_unless_paused(d, for_sleep.clone()))
        .when(DeliveryError::is_retryable)
        .notify(|e: &DeliveryError, wait: Duration| {
            retries.fetch_add(1, Ordering::Relaxed);
            log.failed(key, e, wait, "delivery failed");
        });
    match tokio::time::timeout(config.timeout.get(), run).await {
        Ok(r) => r,
        Err(_) => Err(DeliveryError::Retryable(format!(
            "gave up after retry timeout {}",
            config.timeout
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::units::HumanDuration;
    use std::sync::Mutex;
    use tokio::time::Instant;

    fn config(wait: u64, base: f32, max_interval: u64, randomize: bool, max_times: usize, timeout: u64) -> RetryConfig {
        RetryConfig {
            wait: HumanDuration::secs(wait),
            exponential_base: base,
            max_interval: HumanDuration::secs(max_interval),
            randomize,
            max_times,
            timeout: HumanDuration::secs(timeout),
        }
    }

    /// Runs `retry` over attempts that fail with `errors` in turn (then succeed), with tokio's
    /// clock paused (it moves only when every task sleeps); returns the result and the instant
    /// of each attempt, in seconds from the start.
    async fn attempts(
        c: &RetryConfig,
        errors: impl Fn(usize) -> Option<DeliveryError>,
        deliveries: &watch::Receiver<Deliveries>,
    ) -> (Result<(), DeliveryError>, Vec<f64>, u64) {
        let start = Instant::now();
        let at = Mutex::new(Vec::new());
        let retries = AtomicU64::new(0);
        let log = FailureLog::default();
        let r = retry(
            || {
                let mut at = at.lock().unwrap();
                at.push(start.elapsed().as_secs_f64());
                let e = errors(at.len() - 1);
                async move { e.map_or(Ok(()), Err) }
            },
            "k",
            c,
            (&retries, &log),
            deliveries,
        )
        .await;
        // The failures are one episode, ended by the success (if any).
        let episode = log.episode.lock().unwrap().as_ref().map(|e| e.failures);
        let failures = retries.load(Ordering::Relaxed);
        match &r {
            Ok(()) => assert_eq!(episode, None, "a success ends the episode"),
            Err(_) if failures > 0 => assert_eq!(episode, Some(failures), "one episode counts every retry"),
            Err(_) => {}
        }
        (r, at.into_inner().unwrap(), failures)
    }

    fn running() -> (watch::Sender<Deliveries>, watch::Receiver<Deliveries>) {
        watch::channel(Deliveries::Run)
    }

    fn failing(_: usize) -> Option<DeliveryError> {
        Some(DeliveryError::Retryable("503".into()))
    }

    /// Waits grow by `exponential_base` from `wait`, stop growing at `max_interval`, and
    /// `max_times` retries follow the first attempt; the last error is what is returned.
    #[tokio::test(start_paused = true)]
    async fn waits_grow_exponentially_up_to_the_cap_and_max_times_retries_follow_the_first_try() {
        let (_tx, rx) = running();
        let (r, at, retries) = attempts(&config(1, 2.0, 10, false, 6, 3600), failing, &rx).await;
        assert_eq!(at, [0.0, 1.0, 3.0, 7.0, 15.0, 25.0, 35.0]);
        assert_eq!(retries, 6);
        assert!(matches!(r, Err(DeliveryError::Retryable(e)) if e == "503"));
        // A success ends it.
        let (r, at, _) = attempts(
            &config(1, 3.0, 100, false, 6, 3600),
            |i| (i < 2).then(|| failing(i).unwrap()),
            &rx,
        )
        .await;
        assert!(r.is_ok());
        assert_eq!(at, [0.0, 1.0, 4.0]);
        // No retries: one attempt.
        let (r, at, retries) = attempts(&config(1, 2.0, 10, false, 0, 3600), failing, &rx).await;
        assert!(r.is_err());
        assert_eq!((at.len(), retries), (1, 0));
    }

    /// `retry.timeout` ends the retries of a chunk however many are left.
    #[tokio::test(start_paused = true)]
    async fn the_retry_timeout_ends_the_retries_whatever_max_times_says() {
        let (_tx, rx) = running();
        let (r, at, _) = attempts(&config(2, 1.0, 10, false, 1000, 9), failing, &rx).await;
        assert_eq!(at, [0.0, 2.0, 4.0, 6.0, 8.0]);
        assert!(
            matches!(&r, Err(DeliveryError::Retryable(e)) if e.contains("retry timeout")),
            "{r:?}"
        );
    }

    /// With `randomize`, each wait is between half of the exponential wait and all of it: never
    /// longer than `max_interval`, and not always the same.
    #[test]
    fn randomized_waits_stay_between_half_and_all_of_the_wait_and_under_the_cap() {
        let c = config(1, 2.0, 8, true, 12, 3600);
        let plain: Vec<Duration> = schedule(&RetryConfig {
            randomize: false,
            ..c.clone()
        })
        .collect();
        assert_eq!(plain.len(), 12);
        assert_eq!(*plain.last().unwrap(), Duration::from_secs(8));
        let mut seen = std::collections::HashSet::new();
        for _ in 0..500 {
            for (got, full) in schedule(&c).zip(&plain) {
                assert!(got >= *full / 2 && got <= *full, "{got:?} for {full:?}");
                assert!(got <= Duration::from_secs(8));
                seen.insert(got.as_millis());
            }
        }
        assert!(seen.len() > 100, "the waits vary ({} values)", seen.len());
    }

    /// A permanent error is not retried; a credentials error is retried past `max_times`,
    /// until it passes.
    #[tokio::test(start_paused = true)]
    async fn permanent_errors_are_not_retried_and_credential_errors_wait_for_new_credentials() {
        let (_tx, rx) = running();
        let (r, at, _) = attempts(
            &config(1, 2.0, 10, false, 5, 3600),
            |_| Some(DeliveryError::Permanent("400".into())),
            &rx,
        )
        .await;
        assert!(matches!(r, Err(DeliveryError::Permanent(_))));
        assert_eq!(at.len(), 1);
        let (r, at, _) = attempts(
            &config(1, 2.0, 10, false, 1, 3600),
            |i| (i < 8).then(|| DeliveryError::Credentials("expired".into())),
            &rx,
        )
        .await;
        assert!(r.is_ok());
        assert_eq!(at.len(), 9);
    }

    /// Issue 35: a refusal (no such bucket, access denied) is tried again for a minute, not for
    /// the 24 h of the retry timeout, then returned (the chunk goes to the secondary); one that
    /// passes inside the minute (the bucket was created) is delivered.
    #[tokio::test(start_paused = true)]
    async fn a_refusal_is_tried_again_for_a_minute_then_returned() {
        let (_tx, rx) = running();
        let c = config(1, 2.0, 30, true, 100, 86_400);
        let (r, at, retries) = attempts(&c, |_| Some(DeliveryError::Refused("NoSuchBucket".into())), &rx).await;
        assert!(
            matches!(&r, Err(DeliveryError::Refused(e)) if e.contains("NoSuchBucket") && e.contains("refused for 60s")),
            "{r:?}"
        );
        let last = *at.last().unwrap();
        assert!((60.0..61.0).contains(&last), "{at:?}");
        assert!(at.len() >= 5 && retries == at.len() as u64 - 1, "{at:?}");
        assert!(at.windows(2).all(|w| w[1] - w[0] <= 15.0), "{at:?}");
        let (r, at, _) = attempts(
            &c,
            |i| (i < 3).then(|| DeliveryError::Refused("AccessDenied".into())),
            &rx,
        )
        .await;
        assert!(r.is_ok() && at.len() == 4, "{r:?} {at:?}");
    }

    /// Paused (a reload), no new attempt starts and the wait ends at once.
    #[tokio::test(start_paused = true)]
    async fn a_pause_starts_no_new_attempt() {
        let (tx, rx) = running();
        let c = config(60, 2.0, 600, false, 5, 3600);
        let run = attempts(&c, failing, &rx);
        let pause = async {
            tokio::time::sleep(Duration::from_secs(5)).await;
            tx.send(Deliveries::Pause).unwrap();
        };
        let ((r, at, _), ()) = tokio::join!(run, pause);
        assert!(matches!(r, Err(DeliveryError::Paused)), "{r:?}");
        assert_eq!(at, [0.0]);
    }
}
