//! Prometheus text metrics and a health check, on an optional HTTP listener (off by default;
//! `[metrics] listen`, 127.0.0.1 unless configured otherwise).
//!
//! The pipeline thread and the delivery tasks update [`Metrics`] (atomics, and a per-file table the
//! pipeline replaces after each pass); the listener only reads it. `/healthz` answers 503 when
//! data is queued and nothing was delivered for `stall_timeout`: an output that is down, or
//! credentials that never arrive, show up in a readiness or liveness probe instead of in a silent
//! backlog.

use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

/// Counters of one output.
#[derive(Debug, Default)]
pub struct OutputMetrics {
    /// Output name.
    pub name: String,
    /// Chunks delivered (acknowledged by the destination) since start.
    pub chunks_delivered: AtomicU64,
    /// Bytes delivered since start, as read (before compression).
    pub bytes_delivered: AtomicU64,
    /// Delivery attempts that failed and were retried.
    pub retries: AtomicU64,
    /// Chunks written to the secondary directory.
    pub secondary_chunks: AtomicU64,
    /// Bytes written to the secondary directory.
    pub secondary_bytes: AtomicU64,
    /// When a chunk was last delivered (ms since the epoch; 0: never).
    pub last_success_ms: AtomicI64,
    /// What a CloudWatch output did with records (none for other outputs).
    pub events: Option<std::sync::Arc<EventCounters>>,
}

/// What a CloudWatch Logs output did with the records it sent, counted as it goes: shown on
/// `/metrics` and in the exit summary, so a replaced byte or a guessed timestamp is never silent.
#[derive(Debug, Default, serde::Serialize)]
pub struct EventCounters {
    /// Events accepted in PutLogEvents batches (a retried batch counts again).
    pub events_sent: AtomicU64,
    /// Records of more than one line joined into one event (stack traces, tracebacks).
    pub multiline_records: AtomicU64,
    /// Records larger than the event size limit, split into several events.
    pub records_split: AtomicU64,
    /// Events CloudWatch refused individually (too old, too new, expired).
    pub events_rejected: AtomicU64,
    /// Records whose invalid UTF-8 was replaced (U+FFFD).
    pub records_replaced: AtomicU64,
    /// Empty records (CloudWatch refuses empty messages; nothing is lost: they hold no bytes
    /// but their newline).
    pub records_empty: AtomicU64,
    /// Records without a time of their own, sent with the time of the record before them or
    /// the time they were read.
    pub records_untimed: AtomicU64,
    /// Records whose own time CloudWatch would refuse (too old, too far ahead), sent with the
    /// time they were read instead.
    pub records_retimed: AtomicU64,
}

impl EventCounters {
    /// The counters as (name, value), in a fixed order.
    pub fn values(&self) -> [(&'static str, u64); 8] {
        let v = |a: &AtomicU64| a.load(Ordering::Relaxed);
        [
            ("events_sent", v(&self.events_sent)),
            ("multiline_records", v(&self.multiline_records)),
            ("records_split", v(&self.records_split)),
            ("events_rejected", v(&self.events_rejected)),
            ("records_replaced", v(&self.records_replaced)),
            ("records_empty", v(&self.records_empty)),
            ("records_untimed", v(&self.records_untimed)),
            ("records_retimed", v(&self.records_retimed)),
        ]
    }
}

/// One followed file, as of the pipeline's last pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileMetrics {
    /// The source reading it.
    pub source: String,
    /// Its path, the `path` label (the file is followed by identity; this is where it was last seen).
    pub path: String,
    /// Bytes read into chunks (or uploaded, for a mirrored event log).
    pub bytes_read: u64,
    /// Lines read from it since start (newlines; a split long line counts once).
    pub lines_read: u64,
    /// Its size at the last look.
    pub size: u64,
}

/// Everything the metrics endpoint shows.
#[derive(Debug)]
pub struct Metrics {
    /// Per output, in config order.
    pub outputs: Vec<OutputMetrics>,
    /// Per followed file.
    pub files: Mutex<Vec<FileMetrics>>,
    /// Bytes in chunks not yet delivered.
    pub buffer_bytes: AtomicU64,
    /// Chunks not yet delivered.
    pub buffer_chunks: AtomicU64,
    /// When logship started (ms since the epoch).
    pub started_ms: i64,
}

/// Milliseconds since the epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

impl Metrics {
    /// What moves while a run makes progress: bytes read from files, and bytes delivered plus
    /// CloudWatch events accepted (a chunk goes in many batches); a drain whose mark stays the
    /// same for `stall_timeout` has stalled.
    pub fn progress_mark(&self) -> (u64, u64) {
        let read = self
            .files
            .lock()
            .map(|f| f.iter().map(|x| x.bytes_read).sum())
            .unwrap_or(0);
        let delivered = self
            .outputs
            .iter()
            .map(|o| {
                o.bytes_delivered.load(Ordering::Relaxed)
                    + o.events.as_ref().map_or(0, |e| e.events_sent.load(Ordering::Relaxed))
            })
            .sum();
        (read, delivered)
    }

    /// Metrics for these outputs (name, and the event counters of a CloudWatch output).
    pub fn new(outputs: impl IntoIterator<Item = (String, Option<std::sync::Arc<EventCounters>>)>) -> Metrics {
        Metrics {
            outputs: outputs
                .into_iter()
                .map(|(name, events)| OutputMetrics {
                    name,
                    events,
                    ..Default::default()
                })
                .collect(),
            files: Mutex::new(Vec::new()),
            buffer_bytes: AtomicU64::new(0),
            buffer_chunks: AtomicU64::new(0),
            started_ms: now_ms(),
        }
    }

    /// Seconds since the last delivery (or since start, before the first one).
    pub fn seconds_since_delivery(&self, now_ms: i64) -> f64 {
        let last = self
            .outputs
            .iter()
            .map(|o| o.last_success_ms.load(Ordering::Relaxed))
            .max()
            .unwrap_or(0)
            .max(self.started_ms);
        (now_ms - last).max(0) as f64 / 1000.0
    }

    /// Whether deliveries keep up: false when data is queued and nothing was delivered for
    /// `stall`. The text says why.
    pub fn health(&self, stall: Duration, now_ms: i64) -> (bool, String) {
        let queued = self.buffer_chunks.load(Ordering::Relaxed);
        let since = self.seconds_since_delivery(now_ms);
        if queued > 0 && since > stall.as_secs_f64() {
            (
                false,
                format!("unhealthy: {queued} chunks queued and nothing delivered for {since:.0}s\n"),
            )
        } else {
            (
                true,
                format!("ok: {queued} chunks queued, last delivery {since:.0}s ago\n"),
            )
        }
    }

    /// Prometheus text exposition format (0.0.4).
    pub fn render(&self, now_ms: i64) -> String {
        let mut s = String::new();
        let mut family = |name: &str, kind: &str, help: &str, rows: Vec<(String, String)>| {
            s.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
            for (labels, value) in rows {
                if labels.is_empty() {
                    s.push_str(&format!("{name} {value}\n"));
                } else {
                    s.push_str(&format!("{name}{{{labels}}} {value}\n"));
                }
            }
        };
        let files = self.files.lock().expect("metrics lock").clone();
        let file_label = |f: &FileMetrics| format!("source=\"{}\",path=\"{}\"", escape(&f.source), escape(&f.path));
        family(
            "logship_file_read_bytes_total",
            "counter",
            "Bytes read from a file into the buffer.",
            files
                .iter()
                .map(|f| (file_label(f), f.bytes_read.to_string()))
                .collect(),
        );
        family(
            "logship_file_read_lines_total",
            "counter",
            "Lines read from a file into the buffer.",
            files
                .iter()
                .map(|f| (file_label(f), f.lines_read.to_string()))
                .collect(),
        );
        family(
            "logship_file_lag_bytes",
            "gauge",
            "Bytes of a file not read yet (its size minus what was read).",
            files
                .iter()
                .map(|f| (file_label(f), f.size.saturating_sub(f.bytes_read).to_string()))
                .collect(),
        );
        let out = |f: &dyn Fn(&OutputMetrics) -> u64| -> Vec<(String, String)> {
            self.outputs
                .iter()
                .map(|o| (format!("output=\"{}\"", escape(&o.name)), f(o).to_string()))
                .collect()
        };
        family(
            "logship_output_chunks_delivered_total",
            "counter",
            "Chunks delivered by an output.",
            out(&|o| o.chunks_delivered.load(Ordering::Relaxed)),
        );
        family(
            "logship_output_bytes_delivered_total",
            "counter",
            "Bytes delivered by an output.",
            out(&|o| o.bytes_delivered.load(Ordering::Relaxed)),
        );
        family(
            "logship_output_retries_total",
            "counter",
            "Failed delivery attempts that were retried.",
            out(&|o| o.retries.load(Ordering::Relaxed)),
        );
        family(
            "logship_output_secondary_chunks_total",
            "counter",
            "Chunks written to the secondary (error) directory.",
            out(&|o| o.secondary_chunks.load(Ordering::Relaxed)),
        );
        family(
            "logship_output_secondary_bytes_total",
            "counter",
            "Bytes written to the secondary (error) directory.",
            out(&|o| o.secondary_bytes.load(Ordering::Relaxed)),
        );
        let event_outputs: Vec<&OutputMetrics> = self.outputs.iter().filter(|o| o.events.is_some()).collect();
        if !event_outputs.is_empty() {
            let helps = [
                "CloudWatch events accepted (a retried batch counts again).",
                "Records of more than one line sent as one CloudWatch event.",
                "Records larger than the event size limit, split into several events.",
                "CloudWatch events refused individually (too old, too new, expired).",
                "Records whose invalid UTF-8 was replaced.",
                "Empty records, which CloudWatch cannot store.",
                "Records without their own timestamp (sent with the previous record's or the read time).",
            ];
            for (k, help) in helps.iter().enumerate() {
                let name = EventCounters::default().values()[k].0;
                family(
                    &format!("logship_cloudwatch_{name}_total"),
                    "counter",
                    help,
                    event_outputs
                        .iter()
                        .map(|o| {
                            let v = o.events.as_ref().map_or(0, |e| e.values()[k].1);
                            (format!("output=\"{}\"", escape(&o.name)), v.to_string())
                        })
                        .collect(),
                );
            }
        }
        family(
            "logship_buffer_bytes",
            "gauge",
            "Bytes in chunks waiting for delivery.",
            vec![(String::new(), self.buffer_bytes.load(Ordering::Relaxed).to_string())],
        );
        family(
            "logship_buffer_chunks",
            "gauge",
            "Chunks waiting for delivery.",
            vec![(String::new(), self.buffer_chunks.load(Ordering::Relaxed).to_string())],
        );
        family(
            "logship_seconds_since_last_delivery",
            "gauge",
            "Seconds since any output last delivered a chunk (since start before the first).",
            vec![(String::new(), format!("{:.3}", self.seconds_since_delivery(now_ms)))],
        );
        s
    }
}

/// Serves `/metrics` (Prometheus text) and `/healthz` (200, or 503 when chunks wait and nothing
/// was delivered for `stall`) over HTTP/1.1 with hyper, until the task is aborted. A connection
/// gets 5 s to send its request head and 30 s in all; one request per connection.
pub async fn serve(listener: tokio::net::TcpListener, metrics: std::sync::Arc<Metrics>, stall: Duration) {
    use hyper_util::rt::{TokioIo, TokioTimer};
    loop {
        let sock = match listener.accept().await {
            Ok((sock, _)) => sock,
            Err(e) => {
                // Out of descriptors, for instance: wait instead of spinning on the error.
                tracing::debug!(error = %e, "metrics listener cannot accept");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                let reply = respond(&metrics, req.uri().path(), stall);
                async move { Ok::<_, std::convert::Infallible>(reply) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(5))
                .keep_alive(false)
                .serve_connection(TokioIo::new(sock), service);
            let _ = tokio::time::timeout(Duration::from_secs(30), conn).await;
        });
    }
}

/// The reply to a request for `path`.
fn respond(metrics: &Metrics, path: &str, stall: Duration) -> hyper::Response<http_body_util::Full<bytes::Bytes>> {
    let now = now_ms();
    let (status, ctype, body) = match path {
        "/metrics" => (200, "text/plain; version=0.0.4", metrics.render(now)),
        "/healthz" => {
            let (ok, text) = metrics.health(stall, now);
            (if ok { 200 } else { 503 }, "text/plain", text)
        }
        _ => (404, "text/plain", "try /metrics or /healthz\n".to_string()),
    };
    let mut reply = hyper::Response::new(http_body_util::Full::new(bytes::Bytes::from(body)));
    *reply.status_mut() = hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
    reply.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(ctype),
    );
    reply
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_families_and_health_turns_with_the_queue() {
        let m = Metrics::new([("s3".to_string(), None)]);
        m.outputs[0].chunks_delivered.store(3, Ordering::Relaxed);
        m.files.lock().unwrap().push(FileMetrics {
            source: "files".into(),
            path: "/a \"b\"".into(),
            bytes_read: 10,
            lines_read: 2,
            size: 15,
        });
        let text = m.render(m.started_ms);
        assert!(
            text.contains("logship_output_chunks_delivered_total{output=\"s3\"} 3\n"),
            "{text}"
        );
        assert!(
            text.contains("logship_file_lag_bytes{source=\"files\",path=\"/a \\\"b\\\"\"} 5\n"),
            "{text}"
        );
        assert!(
            m.health(Duration::from_secs(1), m.started_ms + 5000).0,
            "nothing queued"
        );
        m.buffer_chunks.store(1, Ordering::Relaxed);
        assert!(!m.health(Duration::from_secs(1), m.started_ms + 5000).0);
        m.outputs[0]
            .last_success_ms
            .store(m.started_ms + 4500, Ordering::Relaxed);
        assert!(m.health(Duration::from_secs(1), m.started_ms + 5000).0);
    }
}
