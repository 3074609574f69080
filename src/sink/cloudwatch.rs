//! The CloudWatch Logs output: one event per line, batched within every PutLogEvents limit,
//! never dropped (facts: `reference-notes.md` §4, §5).
//!
//! A chunk is streamed line by line into batches of at most 10,000 events and 1,048,576 bytes
//! (message bytes + 26 per event), sorted by time and spanning at most 24 h. A line longer than
//! the largest event is split into several events at character boundaries, never dropped.
//! Invalid UTF-8 is replaced (and counted). After each accepted batch, the offset of the last line
//! it completed is written next to the chunk (`<seq>.chunk.progress`, synced), so a retry or a
//! restart resumes there: delivery is at least once, and after a crash at most one batch repeats.
//! Throttling, 5xx and network errors are retried by the output's retry schedule; events that
//! CloudWatch rejects individually (too old, too new, expired) are logged and counted, and the rest
//! of the batch counts as delivered.

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Seek, SeekFrom};
use std::ops::Range;
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
    /// Where its message is in the [`EventText`] it was cut from (valid UTF-8, not empty).
    pub message: Range<usize>,
}

/// The text of a chunk's events that are not sent yet, and of the record being read, in one
/// buffer: events are ranges of it. Why: a string per event meant a copy of each line out of the
/// chunk reader's buffer, into its record and into its event, and an allocation per event; now a
/// line is copied once, from the chunk reader's buffer to here, and then escaped into the request
/// body (a fifth less user CPU on the event log, 2026-12-02). Positions count from the chunk's first event and do not move
/// when the text of a sent batch is dropped.
#[derive(Debug, Default)]
pub struct EventText {
    bytes: Vec<u8>,
    /// The position of `bytes[0]`.
    base: usize,
}

impl EventText {
    /// The position after the last byte.
    pub fn end(&self) -> usize {
        self.base + self.bytes.len()
    }

    /// The bytes at `r` (which must not have been dropped).
    pub fn get(&self, r: Range<usize>) -> &[u8] {
        &self.bytes[r.start - self.base..r.end - self.base]
    }

    /// Appends `b`.
    pub fn push(&mut self, b: &[u8]) {
        self.bytes.extend_from_slice(b);
    }

    /// Drops the bytes from `pos` on.
    fn truncate(&mut self, pos: usize) {
        self.bytes.truncate(pos - self.base);
    }

    /// Drops the bytes before `pos` (their events are sent).
    fn forget_before(&mut self, pos: usize) {
        self.bytes.drain(..pos - self.base);
        self.base = pos;
    }
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

    /// The batch, in time order (stable: records of the same time keep their order). It stays
    /// until [`Batcher::clear`], so its list is reused for the next batch.
    pub fn sorted(&mut self) -> &[Event] {
        self.events.sort_by_key(|e| e.timestamp);
        &self.events
    }

    /// Empties the batch (it was sent).
    pub fn clear(&mut self) {
        self.events.clear();
        self.bytes = 0;
    }
}

/// The length of the first piece of `s` (valid UTF-8) that is at most `max` bytes and ends at a
/// character boundary: where a message longer than an event is cut. `max` is at least 4 (the
/// configuration allows 998 or more), so a piece is never empty.
pub fn piece_len(s: &[u8], max: usize) -> usize {
    if s.len() <= max {
        return s.len();
    }
    let mut cut = max;
    // A UTF-8 continuation byte (0b10xx_xxxx) is not a boundary.
    while s[cut] & 0xc0 == 0x80 {
        cut -= 1;
    }
    cut
}

/// The batch being filled while a chunk is turned into events.
struct EventBuilder {
    batch: Batcher,
    /// The text of the batch's events, of the pending ones and of the record being read.
    text: EventText,
    /// Where the record being read starts in `text` (it runs to the end).
    record_start: usize,
    /// Where its last line starts.
    last_line: usize,
    /// How many lines it has.
    record_lines: u64,
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
    /// The time of the last record sent to each stream: an untimed record at the start of a
    /// chunk takes the time of the record before it in the chunk before (a stream's chunks are
    /// delivered in order), as it does inside a chunk.
    last_times: Mutex<std::collections::HashMap<String, i64>>,
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
        let (shared, timeouts) = super::aws_config(
            settings.region.as_deref(),
            Duration::from_secs(60),
            settings.endpoint.is_none().then_some("logs"),
        )
        .await?;
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
            last_times: Default::default(),
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

    /// Sends one batch (its messages are in `text`). `reuse` is a buffer for the body; it gets
    /// the body's buffer back when the request let go of it.
    async fn put(
        &self,
        stream: &str,
        events: &[Event],
        text: &EventText,
        reuse: &mut Vec<u8>,
    ) -> Result<(), DeliveryError> {
        let group = &self.settings.log_group;
        let n = events.len();
        // logship writes the body itself (see `log_events`); the SDK serializes an empty list,
        // and the body replaces that one before the request is signed (at every attempt).
        let mut buf = std::mem::take(reuse);
        buf.clear();
        super::log_events::put_log_events_body(&mut buf, group, stream, events, text);
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
        let mut b = EventBuilder {
            batch: Batcher::default(),
            text: EventText::default(),
            record_start: 0,
            last_line: 0,
            record_lines: 0,
            // The end of the last record whose events are all sent or in the batch.
            batch_end: start,
            last_ts: self.last_times.lock().expect("last times lock").get(&stream).copied(),
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
        // Lines are taken from the reader's buffer where they lie whole in it; a line that runs
        // past the buffer's end is gathered here first.
        let mut spill = Vec::new();
        let mut offset = start;
        loop {
            let buffered = reader.fill_buf().map_err(io)?;
            if buffered.is_empty() {
                break;
            }
            let Some(newline) = memchr::memchr(b'\n', buffered) else {
                let n = buffered.len();
                spill.extend_from_slice(buffered);
                reader.consume(n);
                continue;
            };
            if spill.is_empty() {
                let line = &buffered[..=newline];
                self.take_line(&stream, chunk, line, offset, &mut b).await?;
                offset += line.len() as u64;
                reader.consume(newline + 1);
            } else {
                spill.extend_from_slice(&buffered[..=newline]);
                reader.consume(newline + 1);
                self.take_line(&stream, chunk, &spill, offset, &mut b).await?;
                offset += spill.len() as u64;
                spill.clear();
            }
        }
        if !spill.is_empty() {
            // The chunk's last line, without a newline.
            self.take_line(&stream, chunk, &spill, offset, &mut b).await?;
            offset += spill.len() as u64;
        }
        if b.text.end() > b.record_start {
            self.send_record(&stream, chunk, offset, &mut b).await?;
        }
        let read_ms = b.read_ms;
        self.release_pending(&stream, chunk, &mut b, read_ms).await?;
        if !b.batch.is_empty() {
            self.put(&stream, b.batch.sorted(), &b.text, &mut b.body).await?;
        }
        record_progress(&mut b.progress, &chunk.path, offset)?;
        if let Some(ts) = b.last_ts {
            self.last_times.lock().expect("last times lock").insert(stream, ts);
        }
        Ok(())
    }

    /// Adds a line (with its newline; it starts at chunk offset `at`) to the record being read,
    /// or, when it starts a record or the record would be over the event size, sends that record
    /// first.
    async fn take_line(
        &self,
        stream: &str,
        chunk: &SealedChunk,
        line: &[u8],
        at: u64,
        b: &mut EventBuilder,
    ) -> Result<(), DeliveryError> {
        let end = b.text.end();
        if end > b.record_start {
            let body = line.strip_suffix(b"\n").unwrap_or(line);
            // The record's lines so far all end with a newline (only a chunk's last may not).
            let prev = b.text.get(b.last_line..end - 1);
            let continues = !self.rule.starts_record(body, Some(prev));
            if !continues || end - b.record_start + line.len() > self.max_message() {
                if continues {
                    // Larger than an event: the rest of the record becomes the next event.
                    self.counters.records_split.fetch_add(1, Ordering::Relaxed);
                }
                self.send_record(stream, chunk, at, b).await?;
            }
        }
        b.last_line = b.text.end();
        b.text.push(line);
        b.record_lines += 1;
        Ok(())
    }

    /// Turns the record being read (the end of `b.text`; it ends at chunk offset `end`) into
    /// events, sending the batch first when they do not fit in it.
    async fn send_record(
        &self,
        stream: &str,
        chunk: &SealedChunk,
        end: u64,
        b: &mut EventBuilder,
    ) -> Result<(), DeliveryError> {
        let c = &self.counters;
        let (start, lines) = (b.record_start, b.record_lines);
        if b.text.get(start..b.text.end()).ends_with(b"\n") {
            b.text.truncate(b.text.end() - 1);
        }
        let own = match std::str::from_utf8(b.text.get(start..b.text.end())) {
            Ok(text) => self.timestamp_of(text, b.read_ms),
            Err(_) => {
                c.records_replaced.fetch_add(1, Ordering::Relaxed);
                let fixed = String::from_utf8_lossy(b.text.get(start..b.text.end())).into_owned();
                b.text.truncate(start);
                b.text.push(fixed.as_bytes());
                self.timestamp_of(&fixed, b.read_ms)
            }
        };
        let stop = b.text.end();
        (b.record_start, b.record_lines) = (stop, 0);
        if start == stop {
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
        if own.is_none() {
            c.records_untimed.fetch_add(1, Ordering::Relaxed);
        }
        let max_msg = self.max_message();
        if stop - start > max_msg {
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
                b.pending_bytes += stop - start;
                let mut at = start;
                while at < stop {
                    let next = at + piece_len(b.text.get(at..stop), max_msg);
                    b.pending.push(Event {
                        timestamp: 0,
                        message: at..next,
                    });
                    at = next;
                }
                b.pending_end = end;
                if b.pending_bytes > MAX_BATCH_BYTES {
                    // No time in sight: the read time, rather than holding more.
                    self.release_pending(stream, chunk, b, b.read_ms).await?;
                }
                return Ok(());
            }
        };
        b.last_ts = Some(ts);
        let mut at = start;
        while at < stop {
            let next = at + piece_len(b.text.get(at..stop), max_msg);
            let e = Event {
                timestamp: ts,
                message: at..next,
            };
            self.push(stream, chunk, b, e).await?;
            at = next;
        }
        b.batch_end = end;
        Ok(())
    }

    /// The most message bytes of one event (the configured event size, less what CloudWatch
    /// counts on top of a message).
    fn max_message(&self) -> usize {
        self.settings.max_event_size.bytes() as usize - EVENT_OVERHEAD
    }

    /// The time of a record (`text`, not empty), by the output's rule. A time CloudWatch would
    /// refuse (older than 14 days or than the group's retention, more than 2 hours ahead: a
    /// record dated 2020, a two-digit year read as 1999) is replaced by the read time, within
    /// what CloudWatch accepts, and counted (`records_retimed`): the record is delivered, not
    /// dropped by CloudWatch.
    fn timestamp_of(&self, text: &str, read_ms: i64) -> Option<i64> {
        let own = match self.settings.timestamp {
            TimestampRule::Record => {
                let first = text.split('\n').next().unwrap_or("");
                crate::record::record_timestamp(first, self.settings.time_zone.seconds())
            }
            TimestampRule::Read => Some(read_ms),
        }?;
        const HOUR: i64 = 3_600_000;
        let now = crate::metrics::now_ms();
        let kept_days = self.settings.retention_days.map_or(14, |d| i64::from(d).min(14));
        // An hour of margin on each side, for clocks and for the time the batch takes.
        let oldest = now - kept_days * 24 * HOUR + HOUR;
        let newest = now + HOUR;
        if (oldest..=newest).contains(&own) {
            return Some(own);
        }
        self.counters.records_retimed.fetch_add(1, Ordering::Relaxed);
        Some(read_ms.clamp(oldest, newest))
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
            self.put(stream, b.batch.sorted(), &b.text, &mut b.body).await?;
            b.batch.clear();
            // Everything before this event is sent (or was an empty record's newline).
            b.text.forget_before(e.message.start);
            record_progress(&mut b.progress, &chunk.path, b.batch_end)?;
        }
        b.batch.push(e);
        Ok(())
    }
}

/// Records that the first `offset` bytes of `chunk` are delivered.
fn record_progress(progress: &mut ProgressRecord, chunk: &Path, offset: u64) -> Result<(), DeliveryError> {
    // CloudWatch has the batch; the record does not say so yet.
    crate::crashpoint::hit("cloudwatch-batch-accepted");
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
            message: 0..len,
        }
    }

    fn batches(events: Vec<Event>) -> Vec<usize> {
        let mut b = Batcher::default();
        let mut out = Vec::new();
        for e in events {
            if !b.fits(&e) {
                out.push(b.sorted().len());
                b.clear();
            }
            b.push(e);
        }
        if !b.is_empty() {
            out.push(b.sorted().len());
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
        for s in [
            "é".repeat(10) + "abc",
            "a€😀".repeat(7),
            "abcdefgh".into(),
            String::new(),
        ] {
            let mut parts = Vec::new();
            let mut rest = s.as_bytes();
            while !rest.is_empty() {
                let n = piece_len(rest, 5);
                let (piece, after) = rest.split_at(n);
                parts.push(std::str::from_utf8(piece).expect("cut at a character boundary"));
                rest = after;
            }
            assert!(parts.iter().all(|p| p.len() <= 5 && !p.is_empty()), "{parts:?}");
            assert_eq!(parts.concat(), s);
        }
    }

    #[test]
    fn event_text_keeps_positions_when_sent_text_is_dropped() {
        let mut t = EventText::default();
        t.push(b"first\nsecond");
        assert_eq!(t.get(6..12), b"second");
        t.forget_before(6);
        assert_eq!((t.get(6..12), t.end()), (&b"second"[..], 12));
        t.push(b"third");
        t.truncate(14);
        assert_eq!(t.get(6..14), b"secondth");
    }
}
