//! Spark's names for event logs: a single file `<app>[.<codec>][.inprogress]`, a rolling
//! directory `eventlog_v2_<app>/` with `events_<n>_<app>[.<codec>]`, and the application ids in
//! them (reference-notes.md §1).

/// Codec short names Spark puts at the end of a compressed event log's name.
pub const CODECS: [&str; 4] = ["lz4", "lzf", "snappy", "zstd"];

/// Suffix of an event log (or appstatus marker) that Spark is still writing.
pub const IN_PROGRESS: &str = ".inprogress";

/// Prefix of a rolling event-log directory.
pub const ROLLING_PREFIX: &str = "eventlog_v2_";

/// A single-file event log's name, taken apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SingleName {
    /// `<appId>[_<attemptId>]`, as Spark sanitized it.
    pub app: String,
    /// The codec suffix, if compressed.
    pub codec: Option<String>,
    /// Still being written.
    pub in_progress: bool,
}

/// Parses `<app>[.<codec>][.inprogress]`; `None` for anything else (hidden files such as
/// Hadoop's `.crc` checksums, compaction output, other files).
pub fn parse_single(name: &str) -> Option<SingleName> {
    if name.starts_with('.') || name.is_empty() {
        return None;
    }
    let (base, in_progress) = match name.strip_suffix(IN_PROGRESS) {
        Some(b) => (b, true),
        None => (name, false),
    };
    let (app, codec) = match base.rsplit_once('.') {
        Some((a, c)) if CODECS.contains(&c) => (a, Some(c.to_string())),
        _ => (base, None),
    };
    // Spark's sanitizer turns '.' into '_': an application name never has one.
    if app.is_empty() || app.contains('.') || app.starts_with(ROLLING_PREFIX) {
        return None;
    }
    Some(SingleName {
        app: app.to_string(),
        codec,
        in_progress,
    })
}

/// Parses `events_<n>_<app>[.<codec>]` inside a rolling directory: the index and codec.
pub fn parse_events_file(name: &str, app: &str) -> Option<(u64, Option<String>)> {
    let rest = name.strip_prefix("events_")?;
    let (n, rest) = rest.split_once('_')?;
    let index = n.parse().ok()?;
    let rest = rest.strip_prefix(app)?;
    match rest {
        "" => Some((index, None)),
        r => {
            let c = r.strip_prefix('.')?;
            CODECS.contains(&c).then(|| (index, Some(c.to_string())))
        }
    }
}

/// Spark's `Utils.sanitizeDirName`, applied to `SPARK_APPLICATION_ID` so it compares with names
/// on disk.
pub fn sanitize_app_id(id: &str) -> String {
    id.chars()
        .map(|c| match c {
            ' ' | ':' | '/' => '-',
            '.' | '$' | '{' | '}' | '\'' | '"' => '_',
            c => c,
        })
        .collect::<String>()
        .to_lowercase()
}
