//! Quick mode (`logship ship PATHS... --to DEST`): builds a native [`Config`] from command-line
//! arguments, so quick mode and `run --config` share one engine.

use std::path::PathBuf;

use super::{
    AppStatusMode, BufferConfig, CloudWatchSettings, Config, ConfigError, EventLogMode, FlushMode, Framing,
    LifecycleConfig, OutputConfig, OutputKind, S3Settings, SourceConfig, SourceKind, SparkEventsConfig, WatchMode,
};
use crate::Multiline;
use crate::destination::Destination;
use crate::units::{ByteSize, HumanDuration};

/// Quick mode's flags (`logship ship`): the command line and the config builder share this one
/// definition.
#[derive(clap::Args, Debug, Clone)]
pub struct QuickArgs {
    /// Files or glob patterns to ship (quote globs so the shell leaves them alone).
    #[arg(required_unless_present = "spark_events")]
    pub paths: Vec<String>,
    /// Ship a Spark event-log directory (spark.eventLog.dir) so the History Server reads the
    /// copy as the original: every layout (single file, rolling) and codec.
    #[arg(long, conflicts_with = "paths", value_name = "DIR")]
    pub spark_events: Option<PathBuf>,
    /// Event logs: rechunk (EMR's layout: events_<n>_<app> objects cut at line ends, for an
    /// uncompressed single file) or mirror (byte-for-byte copies of Spark's files). Default:
    /// rechunk for an uncompressed single file, mirror otherwise.
    #[arg(long, requires = "spark_events")]
    pub mode: Option<EventLogMode>,
    /// Event logs: upload appstatus_<app> at-end (in progress until Spark finishes; default) or
    /// at-start (EMR's behaviour: complete from the start).
    #[arg(long, requires = "spark_events", default_value = "at-end")]
    pub appstatus: AppStatusMode,
    /// Destination: file:///DIR (one file per chunk under DIR), s3://BUCKET/PREFIX,
    /// cloudwatch://GROUP/STREAM (one event per log record; STREAM may use %{tag}; default %{tag}), or stdout.
    #[arg(long)]
    pub to: String,
    /// S3: upload through this presigned POST file (re-read before every upload) instead of the
    /// S3 API with AWS credentials.
    #[arg(long)]
    pub presigned_post: Option<PathBuf>,
    /// S3: text, gzip or zstd.
    #[arg(long, default_value = "text")]
    pub store_as: crate::StoreAs,
    /// S3 API or CloudWatch: another endpoint URL (also AWS_ENDPOINT_URL).
    #[arg(long)]
    pub endpoint: Option<String>,
    /// S3 API or CloudWatch: region (default from the AWS configuration).
    #[arg(long)]
    pub region: Option<String>,
    /// S3 API: path-style addressing (endpoint/bucket/key).
    #[arg(long)]
    pub path_style: bool,
    /// Ship what exists now (unterminated last lines included) and exit.
    #[arg(long, conflicts_with = "follow")]
    pub once: bool,
    /// Keep following the files until the heartbeat goes stale, the signal file appears, or
    /// SIGTERM/SIGINT (the default when --once is not given).
    #[arg(long)]
    pub follow: bool,
    /// Buffer directory (chunks and checkpoints; private: 0700, owned by this user). Default
    /// with --once: a fresh temporary directory (removed when everything was delivered);
    /// otherwise $TMPDIR/logship-<uid>/<hash of the paths and --to>, so the same command resumes
    /// and a different one never shares it.
    #[arg(long)]
    pub buffer_dir: Option<PathBuf>,
    /// Time-key width: lines read in the same window share a chunk.
    #[arg(long, default_value = "30s")]
    pub timekey: HumanDuration,
    /// Largest chunk (object) size.
    #[arg(long, default_value = "32MB")]
    pub chunk_limit: ByteSize,
    /// When chunks are sealed: lazy (time key closed), interval, immediate.
    #[arg(long, default_value = "lazy")]
    pub flush_mode: FlushMode,
    /// EMR heartbeat file: drain when it is not modified for --heartbeat-timeout or is deleted.
    #[arg(long, env = crate::contract::SIDECAR_SIGNAL_FILE)]
    pub heartbeat_file: Option<PathBuf>,
    /// How long without a heartbeat means the main container has ended.
    #[arg(long, default_value = "15s")]
    pub heartbeat_timeout: HumanDuration,
    /// How long to wait for the heartbeat file to appear before assuming main never started
    /// (then logship drains and exits).
    #[arg(long, default_value = "120s")]
    pub heartbeat_appear_timeout: HumanDuration,
    /// Drain when this file appears (written by `logship wrap`).
    #[arg(long)]
    pub signal_file: Option<PathBuf>,
    /// Time limit of the whole drain; what is not delivered by then goes to the secondary dir.
    /// Default: 60s when following (a pod's grace period is short), 24h with --once (a backfill
    /// of gigabytes takes as long as it takes).
    #[arg(long)]
    pub drain_deadline: Option<HumanDuration>,
    /// Object key format (fluent-plugin-s3 placeholders, plus %{tag}).
    #[arg(long)]
    pub key_format: Option<String>,
    /// Where undeliverable chunks go (default: <buffer-dir>/secondary).
    #[arg(long)]
    pub secondary_dir: Option<PathBuf>,
    /// No line framing: chunks may end at any byte.
    #[arg(long)]
    pub raw: bool,
    /// Poll for changes instead of using inotify.
    #[arg(long)]
    pub poll: bool,
    /// Which lines form one record (one CloudWatch event): auto (log4j stack traces, Python
    /// tracebacks and JSON lines are recognised) or off (every line is a record).
    #[arg(long, value_enum, default_value_t = Multiline::Auto, value_name = "MODE")]
    pub multiline: Multiline,
    /// A regular expression matching the first line of a record, for other log formats.
    #[arg(long, value_name = "REGEX")]
    pub multiline_start: Option<String>,
    /// Serve Prometheus metrics (/metrics) and a health check (/healthz) on this address, e.g.
    /// 127.0.0.1:9880. Off by default.
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<String>,
}

/// Builds the native config for quick mode.
pub fn build(args: &QuickArgs, buffer_dir: PathBuf) -> Result<Config, ConfigError> {
    let dest = Destination::parse(&args.to).map_err(|e| super::invalid("--to", e.to_string()))?;
    let (kind, path) = match dest {
        Destination::File(dir) => (OutputKind::File { dir }, String::new()),
        Destination::Stdout => (OutputKind::Stdout, String::new()),
        Destination::S3 { bucket, prefix } => {
            let s3 = S3Settings {
                bucket: Some(bucket),
                presigned_post: args.presigned_post.clone(),
                store_as: args.store_as,
                endpoint: args.endpoint.clone(),
                region: args.region.clone(),
                force_path_style: args.path_style,
                ..Default::default()
            };
            (OutputKind::S3(Box::new(s3)), prefix)
        }
        Destination::CloudWatch { group, stream } => {
            let mut cloudwatch = CloudWatchSettings {
                log_group: group,
                region: args.region.clone(),
                endpoint: args.endpoint.clone(),
                ..Default::default()
            };
            if !stream.is_empty() {
                cloudwatch.log_stream = stream;
            }
            (OutputKind::Cloudwatch(Box::new(cloudwatch)), String::new())
        }
    };
    if args.presigned_post.is_some() && !matches!(kind, OutputKind::S3(_)) {
        return Err(super::invalid(
            "--presigned-post",
            "only applies to --to s3://BUCKET/PREFIX",
        ));
    }
    let key_format = match &args.key_format {
        Some(f) => crate::key::KeyTemplate::parse(f).map_err(|e| super::invalid("--key-format", e.to_string()))?,
        None if path.is_empty() => super::default_key_format(),
        None => super::default_key_format().under_path(),
    };
    let mut output = OutputConfig::new("out", kind);
    output.key_format = key_format;
    output.path = path;
    output.secondary.directory = args.secondary_dir.clone();
    let (name, kind, paths, spark) = match (&args.spark_events, args.paths.is_empty()) {
        (Some(dir), true) => (
            "spark-events",
            SourceKind::SparkEvents,
            vec![dir.to_string_lossy().into_owned()],
            Some(SparkEventsConfig {
                mode: args.mode.unwrap_or_default(),
                appstatus: args.appstatus,
                ..Default::default()
            }),
        ),
        (None, false) => ("files", SourceKind::Tail, args.paths.clone(), None),
        (Some(_), false) => {
            return Err(super::invalid(
                "--spark-events",
                "give either PATHS or --spark-events DIR, not both (run two logships, or use a config)",
            ));
        }
        (None, true) => return Err(super::invalid("PATHS", "give files to ship, or --spark-events DIR")),
    };
    let mut source = SourceConfig::new(name, kind, paths);
    source.refresh_interval = HumanDuration::secs(if args.once { 3600 } else { 5 });
    source.format = if args.raw { Framing::Raw } else { Framing::Lines };
    source.watch = if args.poll { WatchMode::Poll } else { WatchMode::Notify };
    source.multiline = args.multiline;
    source.multiline_start = args.multiline_start.clone();
    source.spark = spark;
    let mut config = Config {
        buffer: BufferConfig {
            dir: buffer_dir,
            timekey: args.timekey,
            chunk_limit: args.chunk_limit,
            total_limit: ByteSize(args.chunk_limit.bytes().max(1 << 30)),
            flush_mode: args.flush_mode,
            ..BufferConfig::default()
        },
        sources: vec![source],
        outputs: vec![output],
        lifecycle: LifecycleConfig {
            heartbeat_file: args.heartbeat_file.clone(),
            heartbeat_timeout: args.heartbeat_timeout,
            heartbeat_appear_timeout: args.heartbeat_appear_timeout,
            signal_file: args.signal_file.clone(),
            once: args.once,
            drain_deadline: args.drain_deadline,
        },
        metrics: super::MetricsConfig {
            listen: args.metrics_listen.clone(),
            ..Default::default()
        },
    };
    let checked = config.interpolate_env().and_then(|()| {
        config.normalize();
        config.validate()
    });
    checked.map_err(in_flags)?;
    Ok(config)
}

/// The quick-mode flag that sets a configuration key, so errors name what the user typed.
fn flag_for(key: &str) -> Option<&'static str> {
    Some(match (key, key.strip_prefix("output[0].")) {
        (_, Some("key_format")) => "--key-format",
        (_, Some("dir" | "path" | "s3.bucket")) => "--to",
        (_, Some(k)) if k.starts_with("cloudwatch.") => "--to",
        (_, Some(k)) if k.starts_with("secondary.") => "--secondary-dir",
        (_, Some("s3.presigned_post")) => "--presigned-post",
        (_, Some("s3.store_as")) => "--store-as",
        (_, Some("s3.endpoint")) => "--endpoint",
        (_, Some("s3.region")) => "--region",
        ("buffer.timekey", _) => "--timekey",
        ("buffer.chunk_limit", _) => "--chunk-limit",
        ("buffer.dir", _) => "--buffer-dir",
        ("buffer.flush_mode" | "buffer.flush_interval", _) => "--flush-mode",
        ("lifecycle.heartbeat_file", _) => "--heartbeat-file",
        ("lifecycle.heartbeat_timeout", _) => "--heartbeat-timeout",
        ("lifecycle.heartbeat_appear_timeout", _) => "--heartbeat-appear-timeout",
        ("lifecycle.signal_file", _) => "--signal-file",
        ("lifecycle.drain_deadline", _) => "--drain-deadline",
        ("metrics.listen", _) => "--metrics-listen",
        ("source[0].multiline_start", _) => "--multiline-start",
        (k, _) if k.starts_with("source[0].") => "PATHS",
        _ => return None,
    })
}

/// Rewrites a configuration error's key to the quick-mode flag that set it.
fn in_flags(e: ConfigError) -> ConfigError {
    match e {
        ConfigError::Invalid { origin, key, message } => ConfigError::Invalid {
            origin,
            key: flag_for(&key).map(str::to_string).unwrap_or(key),
            message,
        },
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The flags as the command line gives them (through clap, as `logship ship` parses them).
    fn args(to: &str) -> QuickArgs {
        #[derive(clap::Parser)]
        struct Ship {
            #[command(flatten)]
            args: QuickArgs,
        }
        <Ship as clap::Parser>::try_parse_from(["ship", "--once", "/tmp/x/*.log", "--to", to])
            .unwrap()
            .args
    }

    #[test]
    fn file_destinations_and_errors() {
        let c = build(&args("file:///tmp/out"), "/tmp/buf".into()).unwrap();
        assert_eq!(c.outputs[0].kind, OutputKind::File { dir: "/tmp/out".into() });
        assert!(c.lifecycle.once);
        let c = build(&args("file://./out"), "/tmp/buf".into()).unwrap();
        assert_eq!(c.outputs[0].kind, OutputKind::File { dir: "./out".into() });
        assert_eq!(
            build(&args("-"), "/tmp/buf".into()).unwrap().outputs[0].kind,
            OutputKind::Stdout
        );
        let c = build(&args("s3://bkt/spark/logs/"), "/tmp/buf".into()).unwrap();
        assert_eq!(c.outputs[0].s3().unwrap().bucket.as_deref(), Some("bkt"));
        assert_eq!(c.outputs[0].path, "spark/logs");
        assert_eq!(
            c.outputs[0].key_format.to_string(),
            "%{path}/%{tag}/%{time_slice}_%{index}.%{file_extension}"
        );
        let c = build(&args("cloudwatch://%2Faws%2Femr/vc/jobs/j/%{tag}"), "/tmp/buf".into()).unwrap();
        let cw = c.outputs[0].cloudwatch().unwrap();
        assert_eq!(cw.log_group, "/aws/emr");
        assert_eq!(cw.log_stream, "vc/jobs/j/%{tag}");
        let e = build(&args("gopher://x"), "/tmp/buf".into()).unwrap_err().to_string();
        assert!(e.contains("--to") && e.contains("gopher"), "{e}");
    }
}
