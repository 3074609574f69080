//! The CloudWatch Logs output: one event per line, batched within every PutLogEvents limit,
//! never dropped (facts: `reference-notes.md` §4, §5).
//!
//! A chunk is streamed line by line into batches of at most 10,000 events and 1,048,576 bytes
//! (message bytes + 26 per event), sorted by time and spanning at most 24 h. A line longer than
//! the largest event is split into several events at character boundaries, never dropped.
//! Invalid UTF-8 is replaced (and counted). After each accepted batch, the offset of the last line
//! it completed is written next to the chunk (`<seq>.chunk.progress`, atomically), so a retry or a
//! restart resumes there: delivery is at least once, and after a crash at most one batch repeats.
//! Throttling, 5xx and network errors are retried by the output's retry schedule; events that
//! CloudWatch rejects individually (too old, too new, expired) are logged and counted, and the rest
//! of the batch counts as delivered.

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Seek, SeekFrom};
use std::path::Path;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::Ordering;
use std::time::Duration;

use aws_sdk_cloudwatchlogs::config::http::HttpResponse;
use aws_sdk_cloudwatchlogs::error::{ProvideErrorMetadata, SdkError};

use super::DeliveryError;
use crate::buffer::SealedChunk;
use crate::buffer::siblings::ProgressRecord;
use crate::config::{CloudWatchSettings, TimestampRule};
use crate::metrics::EventCounters;
use crate::record::RecordRule;

/// Bytes CloudWatch counts per event on top of its message.
pub const EVENT_OVERHEAD: usize = 26;
/// Largest batch: message bytes + 26 per event.
pub const MAX_BATCH_BYTES: usize = 1_048_576;
/// Most events in one batch.
pub const MAX_BATCH_EVENTS: usize = 10_000;
/// Largest time span of one batch.
pub const MAX_BATCH_SPAN_MS: i64 = 24 * 3600 * 1000;

/// One event ready to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Milliseconds since the epoch.
    pub timestamp: i64,
    /// The message (valid UTF-8, not empty).
    pub message: String,
}

/// Collects events into batches that respect every PutLogEvents limit. Records keep their own
/// times, which need not be in order (a record without a time between two with one); a batch is
/// sorted by time when taken, as PutLogEvents requires, and spans at most 24 h.
#[derive(Debug, Default)]
pub struct Batcher {
    events: Vec<Event>,
    bytes: usize,
    earliest: i64,
    latest: i64,
}

impl Batcher {
    /// Whether `e` fits in the current batch.
    pub fn fits(&self, e: &Event) -> bool {
        if self.events.is_empty() {
            return true;
        }
        self.events.len() < MAX_BATCH_EVENTS
            && self.bytes + e.message.len() + EVENT_OVERHEAD <= MAX_BATCH_BYTES
            && self.latest.max(e.timestamp) - self.earliest.min(e.timestamp) <= MAX_BATCH_SPAN_MS
    }

    /// Adds an event that fits (see [`Batcher::fits`]).
    pub fn push(&mut self, e: Event) {
        if self.events.is_empty() {
            (self.earliest, self.latest) = (e.timestamp, e.timestamp);
        }
        self.earliest = self.earliest.min(e.timestamp);
        self.latest = self.latest.max(e.timestamp);
        self.bytes += e.message.len() + EVENT_OVERHEAD;
        self.events.push(e);
    }

    /// Whether there is nothing to send.
    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    /// Bytes as CloudWatch counts them.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Takes the batch, in time order (stable: records of the same time keep their order).
    pub fn take(&mut self) -> Vec<Event> {
        self.bytes = 0;
        let mut events = std::mem::take(&mut self.events);
        events.sort_by_key(|e| e.timestamp);
        events
    }
}

/// Splits `s` into pieces of at most `max` bytes, at character boundaries.
pub fn split_message(s: &str, max: usize) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = s;
    while rest.len() > max {
        let mut cut = max;
        while !rest.is_char_boundary(cut) {
            cut -= 1;
        }
        out.push(&rest[..cut]);
        rest = &rest[cut..];
    }
    if !rest.is_empty() {
        out.push(rest);
    }
    out
}

/// The batch being filled while a chunk is turned into events.
struct EventBuilder {
    batch: Batcher,
    /// The chunk offset after the last record whose events are all sent or in `batch`.
    batch_end: u64,
    /// The time of the record before (an untimed record takes it).
    last_ts: Option<i64>,
    /// When the chunk was opened (the read time).
    read_ms: i64,
    /// Untimed records before the chunk's first timed one, held (up to one batch's bytes) to
    /// be sent with its time rather than the later read time.
    pending: Vec<Event>,
    /// Their message bytes.
    pending_bytes: usize,
    /// The chunk offset after the last of them.
    pending_end: u64,
    /// The buffer of the last request body, reused for the next batch of the chunk: a body is
    /// about 1.1 MiB, above the allocator's mmap threshold, and a fresh one per batch cost a
    /// page fault per 4 KiB (7 % of the output's CPU). Freed with the builder, after the chunk.
    body: Vec<u8>,
    /// The chunk's progress record, rewritten after each accepted batch.
    progress: ProgressRecord,
}

/// Uploads chunks as CloudWatch Logs events.
#[derive(Debug)]
pub struct CloudWatchSink {
    client: aws_sdk_cloudwatchlogs::Client,
    settings: CloudWatchSettings,
    /// Streams known to exist (created or found), so no Describe* call is made per batch.
    ready: Mutex<HashSet<String>>,
    group_ready: std::sync::atomic::AtomicBool,
    /// Which lines form one event (the rule its sources cut chunks by).
    rule: RecordRule,
    /// What it did with records, for `/metrics` and the summary.
    counters: Arc<EventCounters>,
}

fn classify<E: ProvideErrorMetadata + std::error::Error + 'static>(
    op: &str,
    target: &str,
    e: &SdkError<E, HttpResponse>,
) -> DeliveryError {
    let status = e.raw_response().map(|r| r.status().as_u16());
    let code = e.code().unwrap_or("").to_string();
    let text = if code.is_empty() {
        format!("{op} {target}: {}", super::error_chain(e))
    } else {
        format!("{op} {target}: {code}: {}", e.message().unwrap_or(""))
    };
    let permanent = matches!(code.as_str(), "InvalidParameterException" | "MalformedQueryException");
    match e {
        SdkError::ServiceError(_) if permanent && status.is_some_and(|s| s < 500) => DeliveryError::Permanent(text),
        _ => DeliveryError::Retryable(text),
    }
}

impl CloudWatchSink {
    /// Builds the output (loads the AWS configuration).
    pub async fn new(settings: &CloudWatchSettings, rule: RecordRule) -> Result<CloudWatchSink, super::SetupError> {
        let (shared, timeouts) = super::aws_config(settings.region.as_deref(), Duration::from_secs(60)).await?;
        let mut b = aws_sdk_cloudwatchlogs::config::Builder::from(&shared).timeout_config(timeouts);
        if let Some(e) = &settings.endpoint {
            b = b.endpoint_url(e);
        }
        Ok(CloudWatchSink {
            client: aws_sdk_cloudwatchlogs::Client::from_conf(b.build()),
            settings: settings.clone(),
            ready: Mutex::new(HashSet::new()),
            group_ready: Default::default(),
            rule,
            counters: Arc::default(),
        })
    }

    /// Its counters (shared with the metrics endpoint).
    pub fn counters(&self) -> Arc<EventCounters> {
        self.counters.clone()
    }

    /// Where it delivers, for messages.
    pub fn describe(settings: &CloudWatchSettings) -> String {
        format!("cloudwatch://{}/{}", settings.log_group, settings.log_stream)
    }

    /// The stream a chunk of `tag` goes to.
    pub fn stream_for(&self, tag: &str) -> String {
        self.settings.log_stream.replace("%{tag}", tag).replace("${tag}", tag)
    }

    async fn ensure(&self, stream: &str) -> Result<(), DeliveryError> {
        if self.ready.lock().expect("lock").contains(stream) {
            return Ok(());
        }
        let group = &self.settings.log_group;
        if self.settings.auto_create && !self.group_ready.load(Ordering::SeqCst) {
            match self.client.create_log_group().log_group_name(group).send().await {
                Ok(_) => tracing::info!(%group, "created log group"),
                Err(e) if e.code() == Some("ResourceAlreadyExistsException") => {}
                Err(e) => return Err(classify("CreateLogGroup", group, &e)),
            }
            if let Some(days) = self.settings.retention_days {
                self.client
                    .put_retention_policy()
                    .log_group_name(group)
                    .retention_in_days(days)
                    .send()
                    .await
                    .map_err(|e| classify("PutRetentionPolicy", group, &e))?;
            }
            self.group_ready.store(true, Ordering::SeqCst);
        }
        if self.settings.auto_create {
            match self
                .client
                .create_log_stream()
                .log_group_name(group)
                .log_stream_name(stream)
                .send()
                .await
            {
                Ok(_) => tracing::info!(%group, %stream, "created log stream"),
                Err(e) if e.code() == Some("ResourceAlreadyExistsException") => {}
                Err(e) => return Err(classify("CreateLogStream", &format!("{group}/{stream}"), &e)),
            }
        }
        self.ready.lock().expect("lock").insert(stream.to_string());
        Ok(())
    }

    /// Sends one batch. `reuse` is a buffer for the body; it gets the body's buffer back when
    /// the request let go of it.
    async fn put(&self, stream: &str, events: Vec<Event>, reuse: &mut Vec<u8>) -> Result<(), DeliveryError> {
        let group = &self.settings.log_group;
        let n = events.len();
        // logship writes the body itself (see `log_events`); the SDK serializes an empty list,
        // and the body replaces that one before the request is signed (at every attempt).
        let mut buf = std::mem::take(reuse);
        buf.clear();
        super::log_events::put_log_events_body(&mut buf, group, stream, &events);
        drop(events);
        let body = bytes::Bytes::from(buf);
        let sent = body.clone();
        let result = self
            .client
            .put_log_events()
            .log_group_name(group)
            .log_stream_name(stream)
            .set_log_events(Some(Vec::new()))
            .customize()
            .mutate_request(move |request| {
                request.headers_mut().insert("content-length", sent.len().to_string());
                *request.body_mut() = aws_smithy_types::body::SdkBody::from(sent.clone());
            })
            .send()
            .await;
        if let Ok(mut unique) = body.try_into_mut() {
            unique.clear();
            *reuse = unique.into();
        }
        let out = match result {
            Ok(o) => o,
            Err(e) => {
                if e.code() == Some("ResourceNotFoundException") {
                    // Deleted under us (or never created): create it again on the retry.
                    self.ready.lock().expect("lock").remove(stream);
                    self.group_ready.store(false, Ordering::SeqCst);
                }
                return Err(classify("PutLogEvents", &format!("{group}/{stream}"), &e));
            }
        };
        self.counters.events_sent.fetch_add(n as u64, Ordering::Relaxed);
        if let Some(r) = out.rejected_log_events_info() {
            let too_old = r.too_old_log_event_end_index().unwrap_or(0).max(0) as u64;
            let expired = r.expired_log_event_end_index().unwrap_or(0).max(0) as u64;
            let too_new = r
                .too_new_log_event_start_index()
                .map_or(0, |i| (n as i64 - i as i64).max(0) as u64);
            let count = too_old.max(expired) + too_new;
            let total = self.counters.events_rejected.fetch_add(count, Ordering::Relaxed) + count;
            tracing::warn!(%group, %stream, too_old, expired, too_new, total_rejected = total, "CloudWatch rejected events of a batch (outside its accepted time range); the rest was accepted");
        }
        Ok(())
    }

    /// Delivers a chunk from its recorded progress on: its lines are joined into records by the
    /// output's rule, one event per record (a record over the event size limit is cut at line
    /// ends, and a line over it at character boundaries). Progress is only recorded at the end
    /// of a record, so a retry resends whole records.
    pub async fn deliver(&self, chunk: &SealedChunk) -> Result<(), DeliveryError> {
        let stream = self.stream_for(&chunk.tag);
        self.ensure(&stream).await?;
        let start = crate::buffer::siblings::read_progress(&chunk.path).min(chunk.len);
        let io = |e: std::io::Error| DeliveryError::Retryable(format!("cannot read {}: {e}", chunk.path.display()));
        let mut file = std::fs::File::open(&chunk.path).map_err(io)?;
        file.seek(SeekFrom::Start(start)).map_err(io)?;
        let mut reader = BufReader::with_capacity(64 << 10, std::io::Read::take(file, chunk.len - start));
        let max_msg = self.settings.max_event_size.bytes() as usize - EVENT_OVERHEAD;
        let mut events = EventBuilder {
            batch: Batcher::default(),
            // The end of the last record whose events are all sent or in the batch.
            batch_end: start,
            last_ts: None,
            read_ms: chunk.created_ms,
            pending: Vec::new(),
            pending_bytes: 0,
            pending_end: start,
            body: Vec::new(),
            progress: ProgressRecord::open(&chunk.path).map_err(|e| {
                DeliveryError::Retryable(format!(
                    "cannot open the progress record of {}: {e}",
                    chunk.path.display()
                ))
            })?,
        };
        // The record being joined (its lines with their newlines), and where it ends.
        let mut record: Vec<u8> = Vec::new();
        let mut record_lines = 0u64;
        let mut offset = start;
        let mut line = Vec::new();
        loop {
            line.clear();
            let n = reader.read_until(b'\n', &mut line).map_err(io)?;
            if n == 0 {
                break;
            }
            if !record.is_empty() {
                let body = line.strip_suffix(b"\n").unwrap_or(&line);
                let continues = !self.rule.starts_record(body, Some(crate::record::last_line(&record)));
                if !continues || record.len() + line.len() > max_msg {
                    if continues {
                        // Larger than an event: the rest of the record becomes the next event.
                        self.counters.records_split.fetch_add(1, Ordering::Relaxed);
                    }
                    self.send_record(&stream, chunk, &record, record_lines, offset, &mut events)
                        .await?;
                    record.clear();
                    record_lines = 0;
                }
            }
            record.extend_from_slice(&line);
            record_lines += 1;
            offset += n as u64;
        }
        if !record.is_empty() {
            self.send_record(&stream, chunk, &record, record_lines, offset, &mut events)
                .await?;
        }
        let read_ms = events.read_ms;
        self.release_pending(&stream, chunk, &mut events, read_ms).await?;
        if !events.batch.is_empty() {
            self.put(&stream, events.batch.take(), &mut events.body).await?;
        }
        record_progress(&mut events.progress, &chunk.path, offset)?;
        Ok(())
    }

    /// Turns one record (ending at chunk offset `end`) into events, sending the batch first
    /// when they do not fit in it.
    async fn send_record(
        &self,
        stream: &str,
        chunk: &SealedChunk,
        record: &[u8],
        lines: u64,
        end: u64,
        b: &mut EventBuilder,
    ) -> Result<(), DeliveryError> {
        let c = &self.counters;
        let body = record.strip_suffix(b"\n").unwrap_or(record);
        let text = match std::str::from_utf8(body) {
            Ok(s) => std::borrow::Cow::Borrowed(s),
            Err(_) => {
                c.records_replaced.fetch_add(1, Ordering::Relaxed);
                String::from_utf8_lossy(body)
            }
        };
        if text.is_empty() {
            c.records_empty.fetch_add(1, Ordering::Relaxed);
            if b.pending.is_empty() {
                b.batch_end = end;
            } else {
                b.pending_end = end;
            }
            return Ok(());
        }
        if lines > 1 {
            c.multiline_records.fetch_add(1, Ordering::Relaxed);
        }
        let own = match self.settings.timestamp {
            TimestampRule::Record => {
                let first = text.split('\n').next().unwrap_or("");
                crate::record::record_timestamp(first, self.settings.time_zone.seconds())
            }
            TimestampRule::Read => Some(b.read_ms),
        };
        if own.is_none() {
            c.records_untimed.fetch_add(1, Ordering::Relaxed);
        }
        let max_msg = self.settings.max_event_size.bytes() as usize - EVENT_OVERHEAD;
        let pieces = split_message(&text, max_msg);
        if pieces.len() > 1 {
            c.records_split.fetch_add(1, Ordering::Relaxed);
        }
        let ts = match (own, b.last_ts) {
            (Some(ts), _) => {
                // Untimed records before the chunk's first timed one take its time.
                self.release_pending(stream, chunk, b, ts).await?;
                ts
            }
            (None, Some(previous)) => previous,
            (None, None) => {
                b.pending_bytes += text.len();
                b.pending.extend(pieces.into_iter().map(|p| Event {
                    timestamp: 0,
                    message: p.to_string(),
                }));
                b.pending_end = end;
                if b.pending_bytes > MAX_BATCH_BYTES {
                    // No time in sight: the read time, rather than holding more.
                    self.release_pending(stream, chunk, b, b.read_ms).await?;
                }
                return Ok(());
            }
        };
        b.last_ts = Some(ts);
        for piece in pieces {
            let e = Event {
                timestamp: ts,
                message: piece.to_string(),
            };
            self.push(stream, chunk, b, e).await?;
        }
        b.batch_end = end;
        Ok(())
    }

    /// Sends the untimed records held back at the start of a chunk with the time `ts`.
    async fn release_pending(
        &self,
        stream: &str,
        chunk: &SealedChunk,
        b: &mut EventBuilder,
        ts: i64,
    ) -> Result<(), DeliveryError> {
        if b.pending.is_empty() {
            return Ok(());
        }
        b.last_ts = Some(ts);
        for mut e in std::mem::take(&mut b.pending) {
            e.timestamp = ts;
            self.push(stream, chunk, b, e).await?;
        }
        b.pending_bytes = 0;
        b.batch_end = b.pending_end;
        Ok(())
    }

    /// Adds an event to the batch, sending the batch first (and recording the progress) when it
    /// does not fit.
    async fn push(
        &self,
        stream: &str,
        chunk: &SealedChunk,
        b: &mut EventBuilder,
        e: Event,
    ) -> Result<(), DeliveryError> {
        if !b.batch.fits(&e) {
            self.put(stream, b.batch.take(), &mut b.body).await?;
            record_progress(&mut b.progress, &chunk.path, b.batch_end)?;
        }
        b.batch.push(e);
        Ok(())
    }
}

/// Records that the first `offset` bytes of `chunk` are delivered.
fn record_progress(progress: &mut ProgressRecord, chunk: &Path, offset: u64) -> Result<(), DeliveryError> {
    progress
        .record(offset)
        .map_err(|e| DeliveryError::Retryable(format!("cannot record progress of {}: {e}", chunk.display())))?;
    crate::crashpoint::hit("cloudwatch-batch-recorded");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(ts: i64, len: usize) -> Event {
        Event {
            timestamp: ts,
            message: "x".repeat(len),
        }
    }

    fn batches(events: Vec<Event>) -> Vec<usize> {
        let mut b = Batcher::default();
        let mut out = Vec::new();
        for e in events {
            if !b.fits(&e) {
                out.push(b.take().len());
            }
            b.push(e);
        }
        if !b.is_empty() {
            out.push(b.take().len());
        }
        out
    }

    #[test]
    fn exactly_ten_thousand_events_is_one_batch_and_one_more_is_two() {
        assert_eq!(batches((0..10_000).map(|_| ev(1, 10)).collect()), vec![10_000]);
        assert_eq!(batches((0..10_001).map(|_| ev(1, 10)).collect()), vec![10_000, 1]);
    }

    #[test]
    fn exactly_the_byte_limit_is_one_batch_and_one_byte_more_is_two() {
        // 16 events of 65,510 bytes + 26 each = 1,048,576.
        let per = MAX_BATCH_BYTES / 16 - EVENT_OVERHEAD;
        let mut b = Batcher::default();
        for _ in 0..16 {
            b.push(ev(1, per));
        }
        assert_eq!(b.bytes(), MAX_BATCH_BYTES);
        assert_eq!(batches((0..16).map(|_| ev(1, per)).collect()), vec![16]);
        let mut over: Vec<Event> = (0..15).map(|_| ev(1, per)).collect();
        over.push(ev(1, per + 1));
        assert_eq!(batches(over), vec![15, 1]);
    }

    #[test]
    fn a_batch_spans_at_most_a_day() {
        assert_eq!(batches(vec![ev(0, 1), ev(MAX_BATCH_SPAN_MS, 1)]), vec![2]);
        assert_eq!(batches(vec![ev(0, 1), ev(MAX_BATCH_SPAN_MS + 1, 1)]), vec![1, 1]);
    }

    #[test]
    fn long_messages_split_at_character_boundaries_and_rejoin() {
        let s = "é".repeat(10) + "abc";
        let parts = split_message(&s, 5);
        assert!(parts.iter().all(|p| p.len() <= 5 && !p.is_empty()));
        assert_eq!(parts.concat(), s);
        assert_eq!(split_message("", 5), Vec::<&str>::new());
    }
}
