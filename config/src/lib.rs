//! The native configuration: what to read (`[[source]]`), where to send it (`[[output]]`), how to
//! buffer it (`[buffer]`) and when to stop (`[lifecycle]`).
//!
//! Every entry point (`run --config`, the quick mode `ship`, later the fluentd translation) ends up
//! as one [`Config`], so there is one engine and one set of rules. Unknown keys are errors, and
//! errors carry the TOML line and column.

pub mod contract;
pub mod destination;
pub mod env;
pub mod key;
pub mod quick;
mod store_as;
pub mod units;

pub use store_as::StoreAs;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::key::KeyTemplate;
use crate::units::{ByteSize, HumanDuration};

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The TOML is malformed or a key is unknown or has a bad value (the message has the line).
    #[error("invalid config {origin}: {message}")]
    Parse {
        /// The file name, or a description of where the text came from.
        origin: String,
        /// toml's message, which quotes the line and column.
        message: String,
    },
    /// The values are individually valid but do not fit together.
    #[error("invalid config{}: {key}: {message}", origin_suffix(origin))]
    Invalid {
        /// The file name, or where the text came from (empty for command-line flags).
        origin: String,
        /// The dotted key, e.g. `source[0].paths`.
        key: String,
        /// What is wrong.
        message: String,
    },
}

fn invalid(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        origin: String::new(),
        key: key.into(),
        message: message.into(),
    }
}

fn origin_suffix(origin: &str) -> String {
    if origin.is_empty() {
        String::new()
    } else {
        format!(" {origin}")
    }
}

impl ConfigError {
    /// The same error, naming where the configuration came from.
    fn naming_origin(self, from: &str) -> ConfigError {
        match self {
            ConfigError::Invalid { key, message, .. } => ConfigError::Invalid {
                origin: from.to_string(),
                key,
                message,
            },
            other => other,
        }
    }
}

/// The whole configuration of one logship process.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where chunks and checkpoints live and how chunks are cut.
    #[serde(default)]
    pub buffer: BufferConfig,
    /// What to read.
    #[serde(default, rename = "source")]
    pub sources: Vec<SourceConfig>,
    /// Where to deliver.
    #[serde(default, rename = "output")]
    pub outputs: Vec<OutputConfig>,
    /// When to stop, and how long the final delivery may take.
    #[serde(default)]
    pub lifecycle: LifecycleConfig,
    /// The optional metrics and health listener.
    #[serde(default)]
    pub metrics: MetricsConfig,
}

/// The metrics and health endpoint (off unless `listen` is set).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Address to serve `/metrics` (Prometheus text) and `/healthz` on, e.g. `127.0.0.1:9880`
    /// (`0.0.0.0:9880` for a Prometheus outside the pod).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<String>,
    /// `/healthz` fails when data is queued and nothing was delivered for this long; and a
    /// drain in which nothing is read or delivered for this long ends as if its deadline had
    /// passed (what is left goes to the secondary directory), so a `--once` whose destination
    /// is down gives up in minutes, not after the 24 h drain deadline.
    pub stall_timeout: HumanDuration,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            listen: None,
            stall_timeout: HumanDuration::secs(300),
        }
    }
}

/// How records are grouped into chunks, and where the chunks are kept until delivered.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BufferConfig {
    /// Directory for chunk files and the state file. Must be writable; in a pod, an emptyDir
    /// that survives container restarts so a restarted sidecar recovers what it had not delivered.
    pub dir: PathBuf,
    /// Width of a time key: records read in the same window go to the same chunk (fluentd `timekey`).
    pub timekey: HumanDuration,
    /// How long after its window closes a chunk is kept open (fluentd `timekey_wait`).
    pub timekey_wait: HumanDuration,
    /// A chunk is sealed before it would exceed this size (fluentd `chunk_limit_size`).
    pub chunk_limit: ByteSize,
    /// When chunks on disk add up to this, reading pauses until deliveries free space
    /// (back-pressure); nothing is dropped to stay under it.
    pub total_limit: ByteSize,
    /// When open chunks are sealed for delivery.
    pub flush_mode: FlushMode,
    /// With `flush_mode = "interval"`: seal a chunk this long after it was opened.
    pub flush_interval: HumanDuration,
    /// fsync chunk data and state at each commit. Off only survives a process crash, not a node crash.
    pub fsync: bool,
}

impl Default for BufferConfig {
    fn default() -> Self {
        BufferConfig {
            dir: PathBuf::from("/tmp/logship"),
            timekey: HumanDuration::secs(30),
            timekey_wait: HumanDuration::secs(0),
            chunk_limit: ByteSize(32 << 20),
            total_limit: ByteSize(1 << 30),
            flush_mode: FlushMode::Lazy,
            flush_interval: HumanDuration::secs(60),
            fsync: true,
        }
    }
}

/// When an open chunk becomes ready for delivery (besides being full, and at drain).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum FlushMode {
    /// When its time key has closed (`timekey + timekey_wait` after the window started).
    Lazy,
    /// `flush_interval` after the chunk was opened.
    Interval,
    /// As soon as the data is committed to the chunk file.
    Immediate,
}

/// One thing to read.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// A name for logs, metrics and the default tag prefix. Defaults to `source-<n>`.
    #[serde(default)]
    pub name: String,
    /// The kind of source.
    #[serde(rename = "type")]
    pub kind: SourceKind,
    /// Files to follow: paths or glob patterns (`*`, `?`, `[...]`, `**`).
    pub paths: Vec<String>,
    /// Where to start in a file seen for the first time when logship starts (files that appear
    /// later are always read from their beginning).
    #[serde(default)]
    pub read_from: ReadFrom,
    /// How often to look for new files matching `paths` (file-system events also trigger a look).
    #[serde(default = "default_refresh_interval")]
    pub refresh_interval: HumanDuration,
    /// Line framing (`lines`) or none (`raw`, for files that are not line-oriented).
    #[serde(default)]
    pub format: Framing,
    /// A line longer than this is split into pieces of this size (counted in the summary);
    /// also bounds how long an unterminated last line may wait for its newline. Default: 16 MiB,
    /// or `buffer.chunk_limit` when that is smaller.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_line_size: Option<ByteSize>,
    /// How changes are noticed: inotify (`notify`, with a slow safety poll) or `poll` only
    /// (for file systems without events, e.g. some network mounts).
    #[serde(default)]
    pub watch: WatchMode,
    /// With `watch = "poll"`: how often files are checked for new data.
    #[serde(default = "default_poll_interval")]
    pub poll_interval: HumanDuration,
    /// After a file was renamed away or deleted, how long it is still followed once at its end
    /// (writers keep appending to a rotated file until they reopen).
    #[serde(default = "default_rotate_wait")]
    pub rotate_wait: HumanDuration,
    /// Directories a symbolic link matched by a glob may point into, besides the pattern's own
    /// directory (a link elsewhere is not followed, and is named: `in/x.log -> /etc/shadow`).
    /// A node forwarder following `/var/log/containers/*.log` needs `["/var/log/pods"]`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub follow_links_into: Vec<PathBuf>,
    /// Which lines form one log record (one CloudWatch event): `auto` recognises Spark's log4j
    /// text with its stack traces, Python tracebacks and JSON lines; `off` makes every line a
    /// record. Files and S3 objects keep their bytes either way.
    #[serde(default)]
    pub multiline: Multiline,
    /// A regular expression matching the first line of a record, for other formats: lines that
    /// do not match continue the record before them (replaces the built-in rule).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub multiline_start: Option<String>,
    /// For CloudWatch: a file's last record waits in the buffer until the next one starts, or
    /// until the file has been quiet this long (a record's lines are written together; this
    /// bounds the delay). Nothing waits for outputs that store bytes.
    #[serde(default = "default_multiline_flush")]
    pub multiline_flush: HumanDuration,
    /// A fixed tag for every file of this source. Without it, each file's tag is its path
    /// relative to the glob's fixed directory (`/var/log/*/stdout` → `pod-1/stdout`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    /// Names of the outputs this source feeds; empty means all outputs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub outputs: Vec<String>,
    /// For `type = "spark_events"`: layout, completion marker, application filter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spark: Option<SparkEventsConfig>,
}

fn default_refresh_interval() -> HumanDuration {
    HumanDuration::secs(30)
}
fn default_poll_interval() -> HumanDuration {
    HumanDuration::secs(1)
}
fn default_rotate_wait() -> HumanDuration {
    HumanDuration::secs(5)
}
fn default_multiline_flush() -> HumanDuration {
    HumanDuration::secs(2)
}

/// Which lines form one record, as a source's settings say (see [`SourceConfig::records`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Records {
    /// Every line is a record.
    Lines,
    /// The built-in rule for log4j, Python tracebacks and JSON lines.
    Auto,
    /// A record starts at each line this (validated) expression matches.
    Start(String),
}

impl Config {
    /// The records of the sources feeding output `i` (validation makes them agree).
    pub fn records_for_output(&self, i: usize) -> Records {
        self.sources
            .iter()
            .find(|s| self.routes(s).contains(&i))
            .map_or(Records::Lines, SourceConfig::records)
    }
}

/// Whether records may span lines.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Multiline {
    /// Records span lines by the built-in rule (or `multiline_start`).
    #[default]
    Auto,
    /// Every line is a record.
    Off,
}

/// Kinds of source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SourceKind {
    /// Follow files by path and identity (rotation, truncation, renames).
    Tail,
    /// Spark event logs: `paths` are event-log directories (`spark.eventLog.dir`); every layout
    /// and codec Spark writes is found there and shipped so the History Server reads it (see
    /// `[source.spark]` and docs/event-logs.md).
    SparkEvents,
}

/// How Spark event logs are written to the output.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum EventLogMode {
    /// `rechunk` for an uncompressed single file, `mirror` for everything else.
    #[default]
    Auto,
    /// EMR's layout: an uncompressed single file is cut at line ends into
    /// `eventlog_v2_<app>/events_<n>_<app>` objects, one per time key or chunk limit.
    /// (Compressed or rolling logs cannot be cut; they are mirrored, with a warning.)
    Rechunk,
    /// Byte-for-byte copies of Spark's own files, re-uploaded as the last one grows.
    Mirror,
}

/// When the `appstatus_<app>` marker (the History Server's "complete" flag) is uploaded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum AppStatusMode {
    /// `appstatus_<app>.inprogress` while the application runs; `appstatus_<app>` once Spark has
    /// finished the log and every uploaded object ends at a line end (the `.inprogress` object is
    /// then deleted where the output can delete).
    #[default]
    #[value(alias = "at_end")]
    AtEnd,
    /// EMR's behaviour: `appstatus_<app>` (" \n") as soon as the application is seen, so the
    /// History Server shows it as complete from the start.
    #[value(alias = "at_start")]
    AtStart,
}

/// Settings of a `spark_events` source.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SparkEventsConfig {
    /// How logs are written: `auto`, `rechunk` or `mirror`.
    #[serde(default)]
    pub mode: EventLogMode,
    /// When the completion marker is uploaded: `at_end` (default) or `at_start` (EMR).
    #[serde(default)]
    pub appstatus: AppStatusMode,
    /// Ship only this application (its attempts included). Default: `SPARK_APPLICATION_ID` when
    /// set, else every application found in the directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_id: Option<String>,
    /// In `mirror` mode, the least time between two uploads of a file that keeps growing (it is
    /// always uploaded once more when it is final, and at the drain). Default: `buffer.timekey`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mirror_interval: Option<HumanDuration>,
}

/// Where to start reading a pre-existing file that has no checkpoint.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReadFrom {
    /// From its first byte (fluentd `read_from_head true`; what a log shipper in a pod wants).
    #[default]
    Head,
    /// From its current end.
    End,
}

/// How a source's bytes are framed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Framing {
    /// Newline-terminated lines: chunks end only at line ends.
    #[default]
    Lines,
    /// No framing: chunks may end at any byte.
    Raw,
}

/// How a tail source notices changes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WatchMode {
    /// inotify events, plus a poll every few seconds as a safety net.
    #[default]
    Notify,
    /// Polling only, every `poll_interval`.
    Poll,
}

/// One destination: what every output has (its name, key layout, retries, secondary directory)
/// and, in `kind`, what only its type has. In the file it is one flat `[[output]]` table with
/// `type = "..."`; [`OutputTable`] is that shape, and converting from it refuses settings of
/// another type (`dir` on an S3 output, an `[output.cloudwatch]` table on a file output), so the
/// code never meets them.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(try_from = "OutputTable", into = "OutputTable")]
pub struct OutputConfig {
    /// A name, used in routes (`source.outputs`), logs and the summary. Defaults to `output-<n>`.
    pub name: String,
    /// The type of output with its own settings.
    pub kind: OutputKind,
    /// Object key (file path) of a chunk; placeholders as fluent-plugin-s3: `%{tag}`, `%{path}`,
    /// `%{time_slice}`, `%{index}`, `%{file_extension}`, `%{hex_random}`, `%{uuid_flush}`,
    /// `%{hostname}`.
    pub key_format: KeyTemplate,
    /// Value of `%{path}` (a key prefix; empty is a valid prefix: none).
    pub path: String,
    /// strftime format of `%{time_slice}` (UTC); derived from the time key when not given.
    pub time_slice_format: Option<String>,
    /// First value of `%{index}` for each key prefix (EMR's event-log layout starts at 1).
    pub index_start: u64,
    /// Retries of a failed delivery.
    pub retry: RetryConfig,
    /// Where a chunk goes when delivery has failed for good.
    pub secondary: SecondaryConfig,
}

/// The type of an output and the settings only that type has.
#[derive(Debug, Clone, PartialEq)]
pub enum OutputKind {
    /// Each chunk becomes a file under `dir` (written to a temp name, then renamed).
    File {
        /// The directory the files go to (created when missing).
        dir: PathBuf,
    },
    /// Lines are written to logship's own standard output.
    Stdout,
    /// Objects in S3, through a presigned POST or the S3 API (`[output.s3]`). Boxed: it is by
    /// far the largest variant.
    S3(Box<S3Settings>),
    /// CloudWatch Logs events, one per line (`[output.cloudwatch]`).
    Cloudwatch(Box<CloudWatchSettings>),
}

impl OutputKind {
    /// An S3 output with every S3 setting at its default.
    pub fn s3() -> OutputKind {
        OutputKind::S3(Box::default())
    }

    /// A CloudWatch Logs output with every setting at its default.
    pub fn cloudwatch() -> OutputKind {
        OutputKind::Cloudwatch(Box::default())
    }

    /// The `type = "..."` value of this kind.
    pub fn type_name(&self) -> OutputType {
        match self {
            OutputKind::File { .. } => OutputType::File,
            OutputKind::Stdout => OutputType::Stdout,
            OutputKind::S3(_) => OutputType::S3,
            OutputKind::Cloudwatch(_) => OutputType::Cloudwatch,
        }
    }
}

/// The values of an output's `type` key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutputType {
    /// `type = "file"`.
    File,
    /// `type = "stdout"`.
    Stdout,
    /// `type = "s3"`.
    S3,
    /// `type = "cloudwatch"`.
    Cloudwatch,
}

/// An `[[output]]` table as written in the file: flat, with the settings of every type optional.
/// Only the conversion to and from [`OutputConfig`] uses it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct OutputTable {
    #[serde(default)]
    name: String,
    #[serde(rename = "type")]
    kind: OutputType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    dir: Option<PathBuf>,
    #[serde(default = "default_key_format")]
    key_format: KeyTemplate,
    #[serde(default)]
    path: String,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "empty_is_unset"
    )]
    time_slice_format: Option<String>,
    #[serde(default)]
    index_start: u64,
    #[serde(default)]
    retry: RetryConfig,
    #[serde(default)]
    secondary: SecondaryConfig,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    s3: Option<Box<S3Settings>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    cloudwatch: Option<Box<CloudWatchSettings>>,
}

impl TryFrom<OutputTable> for OutputConfig {
    type Error = String;

    fn try_from(t: OutputTable) -> Result<OutputConfig, String> {
        let ty = t.kind;
        let misplaced = |key: &str, owner: &str| {
            Err(format!(
                "`{key}` belongs to type = \"{owner}\"; this output has type = \"{}\"",
                toml_name(ty)
            ))
        };
        if ty != OutputType::File && t.dir.is_some() {
            return misplaced("dir", "file");
        }
        if ty != OutputType::S3 && t.s3.is_some() {
            return misplaced("s3", "s3");
        }
        if ty != OutputType::Cloudwatch && t.cloudwatch.is_some() {
            return misplaced("cloudwatch", "cloudwatch");
        }
        let kind = match ty {
            OutputType::File => OutputKind::File {
                dir: t.dir.ok_or("`dir` is required for type = \"file\"")?,
            },
            OutputType::Stdout => OutputKind::Stdout,
            OutputType::S3 => OutputKind::S3(t.s3.unwrap_or_default()),
            OutputType::Cloudwatch => OutputKind::Cloudwatch(t.cloudwatch.unwrap_or_default()),
        };
        Ok(OutputConfig {
            name: t.name,
            kind,
            key_format: t.key_format,
            path: t.path,
            time_slice_format: t.time_slice_format,
            index_start: t.index_start,
            retry: t.retry,
            secondary: t.secondary,
        })
    }
}

impl From<OutputConfig> for OutputTable {
    fn from(o: OutputConfig) -> OutputTable {
        let kind = o.kind.type_name();
        let (mut dir, mut s3, mut cloudwatch) = (None, None, None);
        match o.kind {
            OutputKind::File { dir: d } => dir = Some(d),
            OutputKind::Stdout => {}
            OutputKind::S3(s) => s3 = Some(s),
            OutputKind::Cloudwatch(c) => cloudwatch = Some(c),
        }
        OutputTable {
            name: o.name,
            kind,
            dir,
            key_format: o.key_format,
            path: o.path,
            time_slice_format: o.time_slice_format,
            index_start: o.index_start,
            retry: o.retry,
            secondary: o.secondary,
            s3,
            cloudwatch,
        }
    }
}

/// Reads an optional string-like value where an empty string, which earlier versions documented
/// as "use the default", still means unset (configs written for them keep working).
fn empty_is_unset<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: From<String>,
{
    let s = Option::<String>::deserialize(d)?;
    Ok(s.filter(|s| !s.is_empty()).map(T::from))
}

/// The TOML spelling of a type (`"s3"`, `"cloudwatch"`, ...).
fn toml_name(ty: OutputType) -> &'static str {
    match ty {
        OutputType::File => "file",
        OutputType::Stdout => "stdout",
        OutputType::S3 => "s3",
        OutputType::Cloudwatch => "cloudwatch",
    }
}

/// Settings of an S3 output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct S3Settings {
    /// The bucket (S3 API mode; with a presigned POST, checked against the policy when set).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bucket: Option<String>,
    /// A presigned POST file (`{"url": ..., "fields": {...}}`, as boto3 makes): upload through it
    /// instead of the S3 API. EMR mounts one at `/var/emr-container/s3/presigned-post`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub presigned_post: Option<PathBuf>,
    /// A presigned POST is treated as expired this long before its expiration (clock skew).
    pub presigned_post_margin: HumanDuration,
    /// Region (S3 API mode); default from the AWS configuration (`AWS_REGION`, profile, IMDS).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Endpoint URL (S3 API mode; also `AWS_ENDPOINT_URL`), for S3-compatible stores.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// Path-style addressing (`endpoint/bucket/key`) instead of virtual hosts.
    pub force_path_style: bool,
    /// What objects hold: `text`, `gzip` or `zstd` (fluent-plugin-s3's `store_as`).
    pub store_as: crate::StoreAs,
    /// Compression level (gzip 0-9, default 1; zstd 1-22, default 1). Higher costs much more CPU
    /// for slightly smaller objects.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub compression_level: Option<i32>,
    /// Storage class, e.g. `STANDARD`, `STANDARD_IA`, `INTELLIGENT_TIERING`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub storage_class: Option<String>,
    /// Server-side encryption: `AES256` or `aws:kms`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sse: Option<String>,
    /// KMS key for `sse = "aws:kms"`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sse_kms_key_id: Option<String>,
    /// A canned ACL for each object (fluent-plugin-s3's `acl`), e.g. `bucket-owner-full-control`
    /// when the bucket belongs to another account that must own what lands in it (buckets with
    /// ACLs disabled, the default since 2023, need none). S3 API only: a presigned POST's policy
    /// decides its ACL.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub acl: Option<String>,
    /// Content-Type of objects; default from `store_as`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    /// Objects at least this large use a multipart upload (S3 API mode).
    pub multipart_threshold: ByteSize,
    /// Part size of multipart uploads (at least 5 MiB).
    pub part_size: ByteSize,
    /// One request may take this long (a stalled connection is abandoned and retried).
    pub request_timeout: HumanDuration,
}

impl Default for S3Settings {
    fn default() -> Self {
        S3Settings {
            bucket: None,
            presigned_post: None,
            presigned_post_margin: HumanDuration::secs(30),
            region: None,
            endpoint: None,
            force_path_style: false,
            store_as: Default::default(),
            compression_level: None,
            storage_class: None,
            sse: None,
            sse_kms_key_id: None,
            acl: None,
            content_type: None,
            multipart_threshold: ByteSize(64 << 20),
            part_size: ByteSize(16 << 20),
            request_timeout: HumanDuration::secs(120),
        }
    }
}

/// Object keys of rechunked event logs, below `%{path}` (the tag is the application id).
pub const EVENTS_KEY_FORMAT: &str = "eventlog_v2_%{tag}/events_%{index}_%{tag}";

/// S3's canned ACLs (what `s3.acl` may name).
pub const CANNED_ACLS: &[&str] = &[
    "private",
    "public-read",
    "public-read-write",
    "authenticated-read",
    "aws-exec-read",
    "bucket-owner-read",
    "bucket-owner-full-control",
];

/// The default object key layout: one directory per tag, time slice and index in the name.
pub fn default_key_format() -> KeyTemplate {
    KeyTemplate::builtin("%{tag}/%{time_slice}_%{index}.%{file_extension}")
}

/// Where a CloudWatch event's timestamp comes from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TimestampRule {
    /// The record's own time: log4j's date as Spark sets it (`yy/MM/dd HH:mm:ss`), an ISO-like
    /// `yyyy-MM-dd HH:mm:ss[,SSS]` (both in `time_zone`), or a JSON line's `ts`. A record without
    /// one takes the time of the record before it; at the start of a chunk, that of the first
    /// record after it that has one, else the read time (counted). Batches are sorted by time,
    /// as PutLogEvents requires. `log4j` is its earlier name.
    #[default]
    #[serde(alias = "log4j")]
    Record,
    /// When logship read the record (the time its chunk was opened; within one time key).
    Read,
}

/// Settings of a CloudWatch Logs output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CloudWatchSettings {
    /// The log group (`${NAME}` environment references are replaced).
    pub log_group: String,
    /// The log stream; `%{tag}` is the chunk's tag, `${NAME}` an environment variable. EMR's
    /// layout: `<prefix>/<virtual-cluster-id>/jobs/<job-id>/containers/<app-id>/<pod>/stdout`.
    pub log_stream: String,
    /// Create the group and stream when missing (an existing one is fine).
    pub auto_create: bool,
    /// Retention set on the group when logship creates it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retention_days: Option<i32>,
    /// Largest event including CloudWatch's 26 bytes of overhead (1 MiB since April 2025; set
    /// 256KiB for the older limit). Longer lines are split into several events.
    pub max_event_size: ByteSize,
    /// `record` (default: the record's own time) or `read`.
    pub timestamp: TimestampRule,
    /// The zone of wall-clock dates in records (`UTC`, or an offset like `+08:00`).
    pub time_zone: crate::units::UtcOffset,
    /// Region; default from the AWS configuration.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Endpoint URL (also `AWS_ENDPOINT_URL`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
}

impl Default for CloudWatchSettings {
    fn default() -> Self {
        CloudWatchSettings {
            log_group: String::new(),
            log_stream: "%{tag}".to_string(),
            auto_create: true,
            retention_days: None,
            max_event_size: ByteSize(1 << 20),
            timestamp: TimestampRule::Record,
            time_zone: Default::default(),
            region: None,
            endpoint: None,
        }
    }
}

/// Retry schedule of one output, with fluentd's parameter names and defaults where they are safe.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryConfig {
    /// Wait before the first retry (fluentd `retry_wait`).
    pub wait: HumanDuration,
    /// Each further wait is multiplied by this (fluentd `retry_exponential_backoff_base`).
    pub exponential_base: f32,
    /// No wait is longer than this (fluentd `retry_max_interval`).
    pub max_interval: HumanDuration,
    /// Randomize each wait (jitter), as fluentd's `retry_randomize`: each is drawn from half of
    /// the exponential wait to all of it, so it is never longer than `max_interval`.
    pub randomize: bool,
    /// Give up after this many retries (fluentd `retry_max_times`); 0 = no retry.
    pub max_times: usize,
    /// Give up when retrying this chunk has taken this long (fluentd `retry_timeout`).
    pub timeout: HumanDuration,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            wait: HumanDuration::secs(1),
            exponential_base: 2.0,
            max_interval: HumanDuration::secs(60),
            randomize: true,
            max_times: 10,
            timeout: HumanDuration::secs(600),
        }
    }
}

/// The secondary (error) directory of an output: where chunks go when delivery failed for good.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SecondaryConfig {
    /// Directory; default `<buffer.dir>/secondary` (filled in when the config is read, so
    /// `logship check` shows it).
    #[serde(skip_serializing_if = "Option::is_none", deserialize_with = "empty_is_unset")]
    pub directory: Option<PathBuf>,
    /// File name; each chunk is written to `<basename>.<n>`, n the first unused number
    /// (fluentd's `secondary_file`). Default `<output name>.chunk`.
    #[serde(skip_serializing_if = "Option::is_none", deserialize_with = "empty_is_unset")]
    pub basename: Option<String>,
}

/// When the process stops and how long the final delivery may take.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LifecycleConfig {
    /// EMR's heartbeat file (`SIDECAR_SIGNAL_FILE`): the Spark container touches it every 2 s.
    /// Main has ended when it goes stale or is deleted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub heartbeat_file: Option<PathBuf>,
    /// The heartbeat is stale when not modified for this long.
    pub heartbeat_timeout: HumanDuration,
    /// How long to wait for the heartbeat file to appear at all; if it never does, logship
    /// warns, drains and exits (as EMR's own sample sidecar does), so a pod whose main container
    /// never started does not run forever.
    pub heartbeat_appear_timeout: HumanDuration,
    /// A file whose appearance means "main has ended" (written by `logship wrap`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signal_file: Option<PathBuf>,
    /// Ship what exists, then drain and exit (quick mode `--once`).
    pub once: bool,
    /// The whole drain (read to end, seal, deliver) must finish within this; what is not
    /// delivered by then goes to the secondary directory and the exit code says so. Default:
    /// 60s when following (a pod's grace period is short), 24h with `once` (a backfill of
    /// gigabytes takes as long as it takes).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub drain_deadline: Option<HumanDuration>,
}

impl Default for LifecycleConfig {
    fn default() -> Self {
        LifecycleConfig {
            heartbeat_file: None,
            heartbeat_timeout: HumanDuration::secs(15),
            heartbeat_appear_timeout: HumanDuration::secs(120),
            signal_file: None,
            once: false,
            drain_deadline: None,
        }
    }
}

impl LifecycleConfig {
    /// The effective drain deadline (see `drain_deadline`).
    pub fn drain_deadline(&self) -> std::time::Duration {
        let default = if self.once { 24 * 3600 } else { 60 };
        self.drain_deadline.unwrap_or(HumanDuration::secs(default)).get()
    }
}

impl SourceConfig {
    /// A source of `kind` reading `paths`, every other setting at its default: what a
    /// `[[source]]` table that gives only these keys reads as.
    pub fn new(name: &str, kind: SourceKind, paths: Vec<String>) -> SourceConfig {
        SourceConfig {
            name: name.to_string(),
            kind,
            paths,
            read_from: ReadFrom::default(),
            refresh_interval: default_refresh_interval(),
            format: Framing::default(),
            max_line_size: None,
            watch: WatchMode::default(),
            poll_interval: default_poll_interval(),
            rotate_wait: default_rotate_wait(),
            follow_links_into: Vec::new(),
            multiline: Multiline::default(),
            multiline_start: None,
            multiline_flush: default_multiline_flush(),
            tag: None,
            outputs: Vec::new(),
            spark: None,
        }
    }

    /// Which lines form a record, in effect: event logs and `raw` files are never joined.
    pub fn records(&self) -> Records {
        match (self.kind, self.format, self.multiline, &self.multiline_start) {
            (SourceKind::SparkEvents, _, _, _) | (_, Framing::Raw, _, _) | (_, _, Multiline::Off, _) => Records::Lines,
            (_, _, Multiline::Auto, Some(re)) => Records::Start(re.clone()),
            (_, _, Multiline::Auto, None) => Records::Auto,
        }
    }

    /// The effective maximum line length (see `max_line_size`).
    pub fn max_line(&self) -> u64 {
        self.max_line_size.map_or(16 << 20, ByteSize::bytes)
    }
}

impl OutputConfig {
    /// An output of `kind`, every other setting at its default: what an `[[output]]` table that
    /// gives only these keys reads as.
    pub fn new(name: &str, kind: OutputKind) -> OutputConfig {
        OutputConfig {
            name: name.to_string(),
            kind,
            key_format: default_key_format(),
            path: String::new(),
            time_slice_format: None,
            index_start: 0,
            retry: RetryConfig::default(),
            secondary: SecondaryConfig::default(),
        }
    }

    /// The S3 settings, when this is an S3 output.
    pub fn s3(&self) -> Option<&S3Settings> {
        match &self.kind {
            OutputKind::S3(s) => Some(s),
            _ => None,
        }
    }

    /// The S3 settings to change, when this is an S3 output.
    pub fn s3_mut(&mut self) -> Option<&mut S3Settings> {
        match &mut self.kind {
            OutputKind::S3(s) => Some(s),
            _ => None,
        }
    }

    /// The CloudWatch Logs settings, when this is a CloudWatch output.
    pub fn cloudwatch(&self) -> Option<&CloudWatchSettings> {
        match &self.kind {
            OutputKind::Cloudwatch(c) => Some(c),
            _ => None,
        }
    }

    /// Whether this output stores chunks whole under a key (files and S3 objects), rather than
    /// as lines (stdout, CloudWatch events).
    pub fn stores_objects(&self) -> bool {
        matches!(self.kind, OutputKind::File { .. } | OutputKind::S3(_))
    }

    /// The secondary directory: as configured, else `<buffer_dir>/secondary`.
    pub fn secondary_dir(&self, buffer_dir: &Path) -> PathBuf {
        self.secondary
            .directory
            .clone()
            .unwrap_or_else(|| buffer_dir.join("secondary"))
    }

    /// The secondary file name: as configured, else `<name>.chunk`.
    pub fn secondary_basename(&self) -> String {
        self.secondary
            .basename
            .clone()
            .unwrap_or_else(|| format!("{}.chunk", self.name))
    }
}

impl Config {
    /// A configuration of these sources and outputs, every table at its default.
    pub fn new(sources: Vec<SourceConfig>, outputs: Vec<OutputConfig>) -> Config {
        Config {
            buffer: BufferConfig::default(),
            sources,
            outputs,
            lifecycle: LifecycleConfig::default(),
            metrics: MetricsConfig::default(),
        }
    }

    /// This configuration as TOML, leaving out every value that equals its default, so the text
    /// says only what was chosen (the injector writes the sidecar's config this way). Parsing
    /// the text gives this configuration back.
    pub fn to_minimal_toml(&self) -> String {
        fn value<T: Serialize>(v: &T) -> toml::Table {
            match toml::Table::try_from(v) {
                Ok(t) => t,
                Err(e) => unreachable!("a configuration always serialises: {e}"),
            }
        }
        /// Removes from `t` what equals the same key in `default`; tables are pruned inside,
        /// and dropped when nothing is left of them.
        fn prune(t: &mut toml::Table, default: &toml::Table) {
            t.retain(|k, v| match (v, default.get(k)) {
                (toml::Value::Table(inner), Some(toml::Value::Table(d))) => {
                    prune(inner, d);
                    !inner.is_empty()
                }
                (v, Some(d)) => v != d,
                (_, None) => true,
            });
        }
        let mut root = value(self);
        let defaults = value(&Config::new(Vec::new(), Vec::new()));
        for table in ["buffer", "lifecycle", "metrics"] {
            if let (Some(toml::Value::Table(t)), Some(toml::Value::Table(d))) =
                (root.get_mut(table), defaults.get(table))
            {
                prune(t, d);
            }
        }
        root.retain(|_, v| !matches!(v, toml::Value::Table(t) if t.is_empty()));
        // Each source and output against a default one of its kind (its required keys stay).
        let per_item = |key: &str, root: &mut toml::Table, default_of: &dyn Fn(usize) -> toml::Table| {
            if let Some(toml::Value::Array(items)) = root.get_mut(key) {
                for (i, item) in items.iter_mut().enumerate() {
                    if let toml::Value::Table(t) = item {
                        let mut d = default_of(i);
                        for required in ["name", "type", "paths", "dir"] {
                            d.remove(required);
                        }
                        prune(t, &d);
                    }
                }
            }
        };
        per_item("source", &mut root, &|i| {
            let s = &self.sources[i];
            value(&SourceConfig::new(&s.name, s.kind, s.paths.clone()))
        });
        per_item("output", &mut root, &|i| {
            let o = &self.outputs[i];
            let kind = match o.kind.type_name() {
                OutputType::File => o.kind.clone(),
                OutputType::Stdout => OutputKind::Stdout,
                OutputType::S3 => OutputKind::s3(),
                OutputType::Cloudwatch => OutputKind::cloudwatch(),
            };
            value(&OutputConfig::new(&o.name, kind))
        });
        toml::to_string(&root).unwrap_or_default()
    }

    /// Reads and validates a TOML config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::parse(&text, &path.display().to_string())
    }

    /// Parses and validates TOML text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Config, ConfigError> {
        Config::parse_with_env(text, origin, &env::process_env)
    }

    /// [`Config::parse`], with `${NAME}` references taken from `lookup` instead of the process
    /// environment (`translate` checks the config it writes with stand-ins).
    pub fn parse_with_env(text: &str, origin: &str, lookup: env::Lookup) -> Result<Config, ConfigError> {
        let parse_err = |e: toml::de::Error| ConfigError::Parse {
            origin: origin.to_string(),
            message: e.to_string(),
        };
        // Environment references are expanded in every string value before the values are
        // typed, so `timekey = "${TIMEKEY:-30s}"` works as well as a path does.
        let mut doc: toml::Value = toml::from_str(text).map_err(parse_err)?;
        env::expand_all_with(&mut doc, "", lookup)
            .map_err(|(key, e)| invalid(key, e.to_string()).naming_origin(origin))?;
        let mut config: Config = match doc.try_into() {
            Ok(c) => c,
            // Parsed from the text, the same mistake comes with its line and column, unless the
            // text's error is about a `${...}` that the expansion already resolved.
            Err(e) => {
                let spanned = toml::from_str::<Config>(text)
                    .err()
                    .filter(|t| !t.to_string().contains("${"));
                return Err(parse_err(spanned.unwrap_or(e)));
            }
        };
        config.fill_from_env();
        config.normalize();
        config.validate().map_err(|e| e.naming_origin(origin))?;
        Ok(config)
    }

    /// The effective configuration as TOML (defaults filled in), for `logship check`.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot print config: {e}\n"))
    }

    /// Expands `${NAME}` / `${NAME:-default}` in every string value of a configuration built
    /// in code (quick mode's flags, when the shell left them alone), as [`Config::parse`] does
    /// for a file; then fills what comes from the environment by default.
    pub fn interpolate_env(&mut self) -> Result<(), ConfigError> {
        let mut doc = toml::Value::try_from(&*self).map_err(|e| invalid("", e.to_string()))?;
        env::expand_all(&mut doc, "").map_err(|(key, e)| invalid(key, e.to_string()))?;
        *self = doc
            .try_into()
            .map_err(|e: toml::de::Error| invalid("", e.to_string()))?;
        self.fill_from_env();
        Ok(())
    }

    /// Defaults taken from the environment: an event-log source ships `$SPARK_APPLICATION_ID`'s
    /// application when no `app_id` is given.
    fn fill_from_env(&mut self) {
        for s in &mut self.sources {
            if s.kind == SourceKind::SparkEvents {
                let spark = s.spark.get_or_insert_with(Default::default);
                if spark.app_id.is_none() {
                    spark.app_id = std::env::var(contract::SPARK_APPLICATION_ID)
                        .ok()
                        .filter(|v| !v.is_empty());
                }
            }
        }
    }

    /// Fills in names and derived defaults.
    pub fn normalize(&mut self) {
        self.lifecycle.drain_deadline = Some(HumanDuration(self.lifecycle.drain_deadline()));
        // `heartbeat_file = "${SIDECAR_SIGNAL_FILE:-}"` (what `translate` writes): no heartbeat
        // where the pod has none.
        if self
            .lifecycle
            .heartbeat_file
            .as_ref()
            .is_some_and(|p| p.as_os_str().is_empty())
        {
            self.lifecycle.heartbeat_file = None;
        }
        for (i, s) in self.sources.iter_mut().enumerate() {
            if s.name.is_empty() {
                s.name = format!("source-{i}");
            }
            if s.max_line_size.is_none() {
                s.max_line_size = Some(ByteSize((16 << 20).min(self.buffer.chunk_limit.bytes())));
            }
            if s.kind == SourceKind::SparkEvents {
                let spark = s.spark.get_or_insert_with(Default::default);
                spark.mirror_interval.get_or_insert(self.buffer.timekey);
            }
        }
        // Outputs fed by event logs name objects by Spark's rolling layout (what the History
        // Server reads); indices start at 1 and have no gaps.
        let event_outputs: Vec<usize> = self
            .sources
            .iter()
            .filter(|s| s.kind == SourceKind::SparkEvents)
            .flat_map(|s| self.routes(s))
            .collect();
        for &i in &event_outputs {
            let o = &mut self.outputs[i];
            let events = KeyTemplate::builtin(EVENTS_KEY_FORMAT);
            o.key_format = if o.path.is_empty() { events } else { events.under_path() };
            o.index_start = 1;
        }
        // An output with a `path` and the default key format keys its objects under the path, as
        // fluent-plugin-s3's default `%{path}...` does (a path nothing used was a silent surprise).
        for (i, o) in self.outputs.iter_mut().enumerate() {
            if !o.path.is_empty() && o.key_format == default_key_format() && !event_outputs.contains(&i) {
                o.key_format = default_key_format().under_path();
            }
        }
        // A presigned POST cannot look whether a key is taken, so its default keys differ between
        // runs (a restarted container, a re-run job) by a random part.
        for (i, o) in self.outputs.iter_mut().enumerate() {
            let defaulted = o.key_format == default_key_format() || o.key_format == default_key_format().under_path();
            let presigned = o.s3().is_some_and(|s3| s3.presigned_post.is_some());
            if presigned && defaulted && !event_outputs.contains(&i) {
                o.key_format = o.key_format.with_random_part();
            }
        }
        for (i, o) in self.outputs.iter_mut().enumerate() {
            if o.name.is_empty() {
                o.name = format!("output-{i}");
            }
            o.secondary.directory = Some(o.secondary_dir(&self.buffer.dir));
            o.secondary.basename = Some(o.secondary_basename());
        }
    }

    /// Checks what serde cannot: names, routes and limits that must agree.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.sources.is_empty() {
            return Err(invalid("source", "at least one [[source]] is required"));
        }
        if self.outputs.is_empty() {
            return Err(invalid("output", "at least one [[output]] is required"));
        }
        if let Some(l) = &self.metrics.listen
            && std::net::ToSocketAddrs::to_socket_addrs(l.as_str()).is_err()
        {
            return Err(invalid(
                "metrics.listen",
                format!("{l:?} is not an address like 127.0.0.1:9880 or localhost:9880"),
            ));
        }
        let b = &self.buffer;
        if b.timekey.get().as_secs() == 0 {
            return Err(invalid("buffer.timekey", "must be at least 1s"));
        }
        // Durations that pace a loop or end a wait: zero would spin a core, or end at once.
        let ms = Duration::from_millis;
        let mut at_least: Vec<(String, HumanDuration, Duration)> = vec![
            ("buffer.flush_interval".into(), b.flush_interval, ms(100)),
            (
                "lifecycle.heartbeat_timeout".into(),
                self.lifecycle.heartbeat_timeout,
                ms(1000),
            ),
            (
                "lifecycle.heartbeat_appear_timeout".into(),
                self.lifecycle.heartbeat_appear_timeout,
                ms(1000),
            ),
            (
                "lifecycle.drain_deadline".into(),
                HumanDuration(self.lifecycle.drain_deadline()),
                ms(1000),
            ),
        ];
        for (i, s) in self.sources.iter().enumerate() {
            at_least.push((format!("source[{i}].poll_interval"), s.poll_interval, ms(100)));
            at_least.push((format!("source[{i}].refresh_interval"), s.refresh_interval, ms(100)));
            at_least.push((format!("source[{i}].multiline_flush"), s.multiline_flush, ms(100)));
        }
        for (i, o) in self.outputs.iter().enumerate() {
            at_least.push((format!("output[{i}].retry.wait"), o.retry.wait, ms(10)));
            at_least.push((format!("output[{i}].retry.max_interval"), o.retry.max_interval, ms(10)));
            at_least.push((format!("output[{i}].retry.timeout"), o.retry.timeout, ms(1000)));
            if let Some(s3) = o.s3() {
                at_least.push((format!("output[{i}].s3.request_timeout"), s3.request_timeout, ms(1000)));
            }
        }
        for (key, value, min) in at_least {
            if value.get() < min {
                return Err(invalid(
                    key,
                    format!("{value} is too short; must be at least {}", HumanDuration(min)),
                ));
            }
        }
        if b.chunk_limit.bytes() < 1024 {
            return Err(invalid("buffer.chunk_limit", "must be at least 1KiB"));
        }
        if b.total_limit < b.chunk_limit {
            return Err(invalid(
                "buffer.total_limit",
                format!("must be at least buffer.chunk_limit ({})", b.chunk_limit),
            ));
        }
        let mut names = HashSet::new();
        for (i, o) in self.outputs.iter().enumerate() {
            if !names.insert(o.name.as_str()) {
                return Err(invalid(
                    format!("output[{i}].name"),
                    format!("duplicate name {:?}", o.name),
                ));
            }
            if !o.path.is_empty()
                && !o.key_format.has_path()
                && !matches!(o.kind, OutputKind::Cloudwatch(_) | OutputKind::Stdout)
            {
                return Err(invalid(
                    format!("output[{i}].path"),
                    format!(
                        "is {:?}, but key_format ({}) does not use %{{path}}: add %{{path}} to key_format, or leave path out",
                        o.path, o.key_format
                    ),
                ));
            }
            if let OutputKind::S3(s3) = &o.kind {
                validate_s3(i, s3)?;
            }
            if let OutputKind::Cloudwatch(cw) = &o.kind {
                validate_cloudwatch(i, cw)?;
            }
            if o.secondary.basename.as_deref().is_some_and(|b| b.contains('/')) {
                return Err(invalid(
                    format!("output[{i}].secondary.basename"),
                    "must not contain '/'",
                ));
            }
            if o.retry.exponential_base < 1.0 {
                return Err(invalid(
                    format!("output[{i}].retry.exponential_base"),
                    "must be at least 1",
                ));
            }
        }
        for (i, s) in self.sources.iter().enumerate() {
            if s.paths.is_empty() {
                return Err(invalid(format!("source[{i}].paths"), "at least one path is required"));
            }
            for p in &s.paths {
                if let Err(e) = glob::Pattern::new(p) {
                    return Err(invalid(format!("source[{i}].paths"), format!("bad pattern {p:?}: {e}")));
                }
            }
            if s.max_line_size.is_some_and(|m| m.bytes() == 0 || m > b.chunk_limit) {
                return Err(invalid(
                    format!("source[{i}].max_line_size"),
                    format!("must be between 1 byte and buffer.chunk_limit ({})", b.chunk_limit),
                ));
            }
            for o in &s.outputs {
                if !names.contains(o.as_str()) {
                    return Err(invalid(
                        format!("source[{i}].outputs"),
                        format!("no output named {o:?}"),
                    ));
                }
            }
            if let Some(re) = &s.multiline_start {
                if s.multiline == Multiline::Off {
                    return Err(invalid(
                        format!("source[{i}].multiline_start"),
                        "says where records start, but multiline = \"off\" makes every line a record",
                    ));
                }
                if let Err(e) = regex_lite::Regex::new(re) {
                    return Err(invalid(
                        format!("source[{i}].multiline_start"),
                        format!("{re:?} is not a regular expression: {e}"),
                    ));
                }
            }
            if s.spark.is_some() && s.kind != SourceKind::SparkEvents {
                return Err(invalid(
                    format!("source[{i}].spark"),
                    "only applies to type = \"spark_events\"",
                ));
            }
        }
        // A CloudWatch output joins lines into events by the rule its sources cut records by.
        for (i, o) in self.outputs.iter().enumerate() {
            if o.cloudwatch().is_none() {
                continue;
            }
            let mut rules = self
                .sources
                .iter()
                .enumerate()
                .filter(|(_, s)| self.routes(s).contains(&i))
                .map(|(j, s)| (j, s.records()));
            if let Some((first, rule)) = rules.next()
                && let Some((other, _)) = rules.find(|(_, r)| *r != rule)
            {
                return Err(invalid(
                    format!("output[{i}]"),
                    format!(
                        "is fed by source[{first}] and source[{other}], whose records differ (multiline, multiline_start or format); give each its own CloudWatch output"
                    ),
                ));
            }
        }
        let event_outputs = self.event_outputs();
        for (i, s) in self.sources.iter().enumerate() {
            if s.kind == SourceKind::SparkEvents {
                continue;
            }
            if let Some(&o) = self.routes(s).iter().find(|o| event_outputs.contains(o)) {
                return Err(invalid(
                    format!("source[{i}].outputs"),
                    format!(
                        "feeds output {:?}, which a spark_events source also feeds; event logs need an output of their own (set `outputs` on the sources)",
                        self.outputs[o].name
                    ),
                ));
            }
        }
        for (i, o) in self.outputs.iter().enumerate() {
            if o.stores_objects() && !event_outputs.contains(&i) && !o.key_format.is_unique_per_chunk() {
                return Err(invalid(
                    format!("output[{i}].key_format"),
                    format!(
                        "{:?} gives every chunk of a tag in a time slice the same key, each replacing the last; add %{{index}} (or %{{hex_random}} / %{{uuid_flush}})",
                        o.key_format.to_string()
                    ),
                ));
            }
            if o.s3().is_some_and(|s3| s3.presigned_post.is_some())
                && !event_outputs.contains(&i)
                && !o.key_format.is_unique_per_run()
            {
                return Err(invalid(
                    format!("output[{i}].key_format"),
                    format!(
                        "{:?} gives a chunk of the next run (a restarted container, a re-run job) the key of one of this run's, and a presigned POST cannot look before it writes; add %{{hex_random}} or %{{uuid_flush}}",
                        o.key_format.to_string()
                    ),
                ));
            }
        }
        for &o in &event_outputs {
            let out = &self.outputs[o];
            if out.s3().is_some_and(|s3| s3.store_as != crate::StoreAs::Text) {
                return Err(invalid(
                    format!("output[{o}].s3.store_as"),
                    "must be \"text\" for event logs: the History Server reads objects by their Spark file names (Spark's own codec, if any, is kept)",
                ));
            }
        }
        Ok(())
    }

    /// Indices of the outputs that event-log sources feed.
    fn event_outputs(&self) -> HashSet<usize> {
        self.sources
            .iter()
            .filter(|s| s.kind == SourceKind::SparkEvents)
            .flat_map(|s| self.routes(s))
            .collect()
    }

    /// Indices of the outputs a source feeds.
    pub fn routes(&self, source: &SourceConfig) -> Vec<usize> {
        self.outputs
            .iter()
            .enumerate()
            .filter(|(_, o)| source.outputs.is_empty() || source.outputs.contains(&o.name))
            .map(|(i, _)| i)
            .collect()
    }
}

/// Checks an S3 output's settings (`i` is the output's index, for the error's key).
fn validate_s3(i: usize, s3: &S3Settings) -> Result<(), ConfigError> {
    if s3.bucket.is_none() && s3.presigned_post.is_none() {
        return Err(invalid(
            format!("output[{i}].s3"),
            "type = \"s3\" needs s3.bucket (S3 API) or s3.presigned_post (a presigned POST file)",
        ));
    }
    if let Some(level) = s3.compression_level {
        let range = match s3.store_as {
            StoreAs::Gzip => 0..=9,
            StoreAs::Zstd => 1..=22,
            StoreAs::Text => {
                return Err(invalid(
                    format!("output[{i}].s3.compression_level"),
                    "only applies with store_as = \"gzip\" or \"zstd\"",
                ));
            }
        };
        if !range.contains(&level) {
            return Err(invalid(
                format!("output[{i}].s3.compression_level"),
                format!(
                    "{level} is out of range for {:?}: {}..={}",
                    s3.store_as,
                    range.start(),
                    range.end()
                ),
            ));
        }
    }
    if let Some(acl) = &s3.acl {
        if !CANNED_ACLS.contains(&acl.as_str()) {
            return Err(invalid(
                format!("output[{i}].s3.acl"),
                format!("{acl:?} is not a canned ACL; one of {}", CANNED_ACLS.join(", ")),
            ));
        }
        if s3.presigned_post.is_some() {
            return Err(invalid(
                format!("output[{i}].s3.acl"),
                "applies to the S3 API; with a presigned POST, its policy decides the ACL",
            ));
        }
    }
    if let Some(e) = &s3.endpoint {
        check_endpoint(format!("output[{i}].s3.endpoint"), e)?;
    }
    if s3.part_size.bytes() < 5 << 20 {
        return Err(invalid(
            format!("output[{i}].s3.part_size"),
            "S3 parts are at least 5MiB",
        ));
    }
    Ok(())
}

/// CloudWatch's rule for log group names: 1 to 512 characters of a-z, A-Z, 0-9, '.', '-', '_',
/// '/' and '#' (what the injector's webhook checks in an annotation too).
pub fn is_log_group_name(name: &str) -> bool {
    (1..=512).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '/' | '#'))
}

/// An endpoint is an `http://` or `https://` URL with a host: without the scheme the SDK's
/// requests fail one by one, retried for as long as the retry timeout allows.
fn check_endpoint(key: String, e: &str) -> Result<(), ConfigError> {
    if e.contains("${") {
        return Ok(());
    }
    let Some(rest) = e.strip_prefix("https://").or_else(|| e.strip_prefix("http://")) else {
        return Err(invalid(
            key,
            format!("{e:?} is not a URL: it needs a scheme, e.g. http://{e} or https://{e}"),
        ));
    };
    let host = rest.split(['/', '?', '#']).next().unwrap_or("");
    if host.is_empty() || host.starts_with(':') || e.contains(char::is_whitespace) {
        return Err(invalid(key, format!("{e:?} has no host")));
    }
    Ok(())
}

/// Checks a CloudWatch Logs output's settings (`i` is the output's index, for the error's key).
fn validate_cloudwatch(i: usize, cw: &CloudWatchSettings) -> Result<(), ConfigError> {
    if cw.log_group.is_empty() {
        return Err(invalid(
            format!("output[{i}].cloudwatch.log_group"),
            "required for type = \"cloudwatch\"",
        ));
    }
    // A `${NAME}` not yet expanded (a config built for a pod, by the injector) is checked where
    // it runs.
    if !cw.log_group.contains("${") && !is_log_group_name(&cw.log_group) {
        return Err(invalid(
            format!("output[{i}].cloudwatch.log_group"),
            format!(
                "{:?} is not a CloudWatch log group name: 1 to 512 characters of a-z, A-Z, 0-9, '.', '-', '_', '/', '#'",
                cw.log_group
            ),
        ));
    }
    if let Some(e) = &cw.endpoint {
        check_endpoint(format!("output[{i}].cloudwatch.endpoint"), e)?;
    }
    if cw.log_stream.is_empty() || cw.log_stream.contains([':', '*']) {
        return Err(invalid(
            format!("output[{i}].cloudwatch.log_stream"),
            "must not be empty or contain ':' or '*'",
        ));
    }
    if !(1024..=1 << 20).contains(&cw.max_event_size.bytes()) {
        return Err(invalid(
            format!("output[{i}].cloudwatch.max_event_size"),
            "must be between 1KiB and 1MiB (CloudWatch's limit, 26 bytes of overhead included)",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
[[source]]
type = "tail"
paths = ["/var/log/spark/user/*/stdout"]

[[output]]
type = "file"
dir = "/tmp/out"
"#;

    /// Issue 35: a `path` goes into the default keys (as fluent-plugin-s3's default format puts
    /// it); a key format that leaves out a path that is set is an error, not a silent surprise;
    /// the metrics address may name a host.
    #[test]
    fn a_path_is_in_the_default_keys_and_an_unused_one_is_an_error() {
        let with_path = MINIMAL.replace("dir = \"/tmp/out\"", "dir = \"/tmp/out\"\npath = \"jobs/42\"");
        let c = Config::parse(&with_path, "test").unwrap();
        assert_eq!(
            c.outputs[0].key_format.to_string(),
            "%{path}/%{tag}/%{time_slice}_%{index}.%{file_extension}"
        );
        let unused = with_path.replace("path = ", "key_format = \"%{tag}/%{index}.log\"\npath = ");
        let e = Config::parse(&unused, "test").unwrap_err().to_string();
        assert!(e.contains("output[0].path") && e.contains("%{path}"), "{e}");
        let host = format!("[metrics]\nlisten = \"localhost:9880\"\n{MINIMAL}");
        assert!(Config::parse(&host, "test").is_ok());
        let bad = format!("[metrics]\nlisten = \"localhost\"\n{MINIMAL}");
        let e = Config::parse(&bad, "test").unwrap_err().to_string();
        assert!(e.contains("metrics.listen"), "{e}");
    }

    /// Issue 35: an endpoint without a scheme and a log group CloudWatch would refuse are
    /// config errors naming the key (they used to be retried until the retry timeout).
    #[test]
    fn an_endpoint_without_a_scheme_and_a_bad_log_group_are_refused() {
        let s3 = |endpoint: &str| {
            format!(
                "[[source]]\ntype = \"tail\"\npaths = [\"/l/*.log\"]\n[[output]]\ntype = \"s3\"\n[output.s3]\nbucket = \"b\"\nendpoint = \"{endpoint}\"\n"
            )
        };
        for bad in ["127.0.0.1:5077", "localhost:9000/x", "ftp://h", "http://", "http://:80"] {
            let e = Config::parse(&s3(bad), "test").unwrap_err().to_string();
            assert!(e.contains("output[0].s3.endpoint"), "{bad}: {e}");
        }
        let e = Config::parse(&s3("127.0.0.1:5077"), "test").unwrap_err().to_string();
        assert!(e.contains("http://127.0.0.1:5077"), "the message shows the fix: {e}");
        for good in [
            "http://127.0.0.1:5077",
            "https://s3.eu-west-1.amazonaws.com/",
            "http://minio:9000",
        ] {
            Config::parse(&s3(good), "test").unwrap_or_else(|e| panic!("{good}: {e}"));
        }
        let cw = |group: &str| {
            format!(
                "[[source]]\ntype = \"tail\"\npaths = [\"/l/*.log\"]\n[[output]]\ntype = \"cloudwatch\"\n[output.cloudwatch]\nlog_group = \"{group}\"\nendpoint = \"localhost:4566\"\n"
            )
        };
        let e = Config::parse(&cw("/emr/ok"), "test").unwrap_err().to_string();
        assert!(e.contains("output[0].cloudwatch.endpoint"), "{e}");
        let cw_ok = |group: &str| cw(group).replace("localhost:4566", "http://localhost:4566");
        Config::parse(&cw_ok("/aws/emr-on-eks/job_1#a.b"), "test").unwrap();
        for bad in ["my group", "a:b", "grp*", &"g".repeat(513)] {
            let e = Config::parse(&cw_ok(bad), "test").unwrap_err().to_string();
            assert!(e.contains("output[0].cloudwatch.log_group"), "{bad}: {e}");
        }
    }

    #[test]
    fn minimal_config_gets_defaults_and_names() {
        let c = Config::parse(MINIMAL, "test").unwrap();
        assert_eq!(c.sources[0].name, "source-0");
        assert_eq!(c.outputs[0].name, "output-0");
        assert_eq!(c.buffer.chunk_limit.bytes(), 32 << 20);
        assert_eq!(
            c.outputs[0].secondary.directory,
            Some(PathBuf::from("/tmp/logship/secondary"))
        );
        // The effective config prints and parses back to the same thing.
        let again = Config::parse(&c.to_toml(), "printed").unwrap();
        // The minimal form says only what differs from the defaults, and reads back the same.
        let minimal = c.to_minimal_toml();
        let back = Config::parse(&minimal, "minimal").unwrap();
        assert_eq!(back.to_toml(), c.to_toml(), "{minimal}");
        assert!(minimal.len() < c.to_toml().len() / 2, "{minimal}");
        assert_eq!(again.to_toml(), c.to_toml());
    }

    #[test]
    fn unknown_key_error_names_key_and_line() {
        let text = format!("{MINIMAL}\n[buffer]\nchunk_limt = \"1MB\"\n");
        let e = Config::parse(&text, "x.toml").unwrap_err().to_string();
        assert!(e.contains("chunk_limt"), "{e}");
        assert!(e.contains("line 11"), "{e}");
        assert!(e.contains("x.toml"), "{e}");
    }

    #[test]
    fn bad_unit_error_names_value_and_line() {
        let text = format!("{MINIMAL}\n[buffer]\ntimekey = \"30 parsecs\"\n");
        let e = Config::parse(&text, "x.toml").unwrap_err().to_string();
        assert!(e.contains("30 parsecs") && e.contains("line 11"), "{e}");
    }

    #[test]
    fn max_line_size_defaults_to_the_chunk_limit_when_smaller_but_an_explicit_larger_one_is_an_error() {
        let small = format!("{MINIMAL}\n[buffer]\nchunk_limit = \"256KiB\"\n");
        assert_eq!(Config::parse(&small, "x").unwrap().sources[0].max_line(), 256 << 10);
        let explicit = small.replace("paths =", "max_line_size = \"1MiB\"\npaths =");
        let e = Config::parse(&explicit, "x").unwrap_err().to_string();
        assert!(e.contains("source[0].max_line_size"), "{e}");
    }

    #[test]
    fn drain_deadline_defaults_depend_on_once_and_an_explicit_one_is_kept() {
        let follow = Config::parse(MINIMAL, "x").unwrap();
        assert_eq!(follow.lifecycle.drain_deadline(), std::time::Duration::from_secs(60));
        let once = Config::parse(&format!("{MINIMAL}\n[lifecycle]\nonce = true\n"), "x").unwrap();
        assert_eq!(
            once.lifecycle.drain_deadline(),
            std::time::Duration::from_secs(24 * 3600)
        );
        assert!(once.to_toml().contains("drain_deadline = \"1d\""), "{}", once.to_toml());
        let explicit = Config::parse(
            &format!("{MINIMAL}\n[lifecycle]\nonce = true\ndrain_deadline = \"5m\"\n"),
            "x",
        )
        .unwrap();
        assert_eq!(explicit.lifecycle.drain_deadline(), std::time::Duration::from_secs(300));
    }

    #[test]
    fn settings_of_another_output_type_are_refused_with_their_line() {
        // What a careless edit leaves: a file output that kept its old S3 table, a CloudWatch
        // output with a `dir`, an S3 output given CloudWatch settings, a file output without `dir`.
        let cases = [
            (
                MINIMAL.replace("dir = \"/tmp/out\"", "dir = \"/tmp/out\"\ns3 = { bucket = \"b\" }"),
                "`s3`",
            ),
            (
                MINIMAL.replace(
                    "type = \"file\"",
                    "type = \"cloudwatch\"\ncloudwatch = { log_group = \"g\" }",
                ),
                "`dir`",
            ),
            (
                MINIMAL.replace(
                    "type = \"file\"\ndir = \"/tmp/out\"",
                    "type = \"s3\"\n[output.s3]\nbucket = \"b\"\n[output.cloudwatch]\nlog_group = \"g\"",
                ),
                "`cloudwatch`",
            ),
            (MINIMAL.replace("dir = \"/tmp/out\"", ""), "`dir` is required"),
        ];
        for (text, what) in cases {
            let e = Config::parse(&text, "x.toml").unwrap_err().to_string();
            assert!(
                e.contains(what) && e.contains("x.toml") && e.contains("line "),
                "{text}\n{e}"
            );
        }
        // The typed form prints back to the same flat table.
        let c = Config::parse(
            &MINIMAL.replace(
                "type = \"file\"\ndir = \"/tmp/out\"",
                "type = \"s3\"\n[output.s3]\nbucket = \"b\"",
            ),
            "x",
        )
        .unwrap();
        assert_eq!(c.outputs[0].s3().unwrap().bucket.as_deref(), Some("b"));
        let printed = c.to_toml();
        assert!(
            printed.contains("[output.s3]")
                && !printed.contains("[output.cloudwatch]")
                && !printed.split("[[output]]").nth(1).unwrap().contains("\ndir ="),
            "{printed}"
        );
        assert_eq!(Config::parse(&printed, "printed").unwrap().to_toml(), printed);
    }

    #[test]
    fn an_empty_string_still_means_the_default_where_it_once_did() {
        let text = MINIMAL.replace(
            "dir = \"/tmp/out\"",
            "dir = \"/tmp/out\"\ntime_slice_format = \"\"\nsecondary = { directory = \"\", basename = \"\" }",
        );
        let c = Config::parse(&text, "x").unwrap();
        let o = &c.outputs[0];
        assert_eq!(o.time_slice_format, None);
        assert_eq!(o.secondary.directory, Some(PathBuf::from("/tmp/logship/secondary")));
        assert_eq!(o.secondary.basename.as_deref(), Some("output-0.chunk"));
    }

    #[test]
    fn multiline_settings_are_checked_where_they_are_written() {
        let bad_re = MINIMAL.replace("paths =", "multiline_start = \"([\"\npaths =");
        let e = Config::parse(&bad_re, "x").unwrap_err().to_string();
        assert!(
            e.contains("source[0].multiline_start") && e.contains("regular expression"),
            "{e}"
        );
        let off = MINIMAL.replace("paths =", "multiline = \"off\"\nmultiline_start = \"^x\"\npaths =");
        let e = Config::parse(&off, "x").unwrap_err().to_string();
        assert!(e.contains("source[0].multiline_start") && e.contains("off"), "{e}");
        let zero = MINIMAL.replace("paths =", "multiline_flush = \"0s\"\npaths =");
        assert!(
            Config::parse(&zero, "x")
                .unwrap_err()
                .to_string()
                .contains("source[0].multiline_flush")
        );
        // One CloudWatch output fed by sources that cut records differently: refused.
        let cw = "[[output]]\ntype = \"cloudwatch\"\ncloudwatch = { log_group = \"g\" }\n";
        let two = format!(
            "[[source]]\ntype = \"tail\"\npaths = [\"/a/*\"]\n[[source]]\ntype = \"tail\"\npaths = [\"/b/*\"]\nmultiline = \"off\"\n{cw}"
        );
        let e = Config::parse(&two, "x").unwrap_err().to_string();
        assert!(
            e.contains("output[0]") && e.contains("source[0]") && e.contains("source[1]"),
            "{e}"
        );
        let same = two.replace("multiline = \"off\"\n", "");
        let c = Config::parse(&same, "x").unwrap();
        assert_eq!(c.records_for_output(0), Records::Auto);
        // Event logs and raw files are never joined.
        let raw = MINIMAL.replace("paths =", "format = \"raw\"\npaths =");
        assert_eq!(Config::parse(&raw, "x").unwrap().sources[0].records(), Records::Lines);
        // The old name of the record timestamp rule still reads.
        let old = cw.replace("log_group = \"g\"", "log_group = \"g\", timestamp = \"log4j\"");
        let c = Config::parse(&format!("[[source]]\ntype = \"tail\"\npaths = [\"/a/*\"]\n{old}"), "x").unwrap();
        assert_eq!(c.outputs[0].cloudwatch().unwrap().timestamp, TimestampRule::Record);
    }

    #[test]
    fn unknown_route_is_an_error() {
        let text = MINIMAL.replace("paths =", "outputs = [\"s3\"]\npaths =");
        let e = Config::parse(&text, "x").unwrap_err().to_string();
        assert!(e.contains("source[0].outputs") && e.contains("\"s3\""), "{e}");
    }

    #[test]
    fn event_log_outputs_get_spark_names_and_cannot_be_shared_or_compressed() {
        let events = r#"
[[source]]
type = "spark_events"
paths = ["/var/log/spark/apps"]
outputs = ["ev"]

[[output]]
name = "ev"
type = "s3"
path = "logs/${LOGSHIP_TEST_JOB}"
s3 = { bucket = "b" }
"#;
        // SAFETY: tests in this module do not read this variable concurrently.
        unsafe { std::env::set_var("LOGSHIP_TEST_JOB", "job-1") };
        let c = Config::parse(events, "x").unwrap();
        assert_eq!(
            c.outputs[0].key_format.to_string(),
            "%{path}/eventlog_v2_%{tag}/events_%{index}_%{tag}"
        );
        assert_eq!(c.outputs[0].path, "logs/job-1");
        assert_eq!(c.outputs[0].index_start, 1);
        let spark = c.sources[0].spark.as_ref().unwrap();
        assert_eq!(spark.mode, EventLogMode::Auto);
        assert_eq!(spark.mirror_interval, Some(c.buffer.timekey));

        let shared = format!("{events}\n[[source]]\ntype = \"tail\"\npaths = [\"/x/*\"]\n");
        let e = Config::parse(&shared, "x").unwrap_err().to_string();
        assert!(e.contains("source[1].outputs") && e.contains("\"ev\""), "{e}");

        let gz = events.replace("bucket = \"b\"", "bucket = \"b\", store_as = \"gzip\"");
        let e = Config::parse(&gz, "x").unwrap_err().to_string();
        assert!(e.contains("store_as") && e.contains("text"), "{e}");

        let misplaced = MINIMAL.replace("paths =", "spark = { mode = \"mirror\" }\npaths =");
        let e = Config::parse(&misplaced, "x").unwrap_err().to_string();
        assert!(e.contains("source[0].spark"), "{e}");
    }
}
