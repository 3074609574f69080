//! Quick mode (`logship ship PATHS... --to DEST`): builds a native [`Config`] from command-line
//! arguments, so quick mode and `run --config` share one engine.

use std::path::PathBuf;

use super::{
    AppStatusMode, BufferConfig, CloudWatchSettings, Config, ConfigError, EventLogMode, FlushMode, Framing,
    LifecycleConfig, OutputConfig, OutputKind, S3Settings, SourceConfig, SourceKind, SparkEventsConfig, WatchMode,
};
use crate::destination::Destination;
use crate::units::{ByteSize, HumanDuration};

/// The quick-mode arguments that shape the config.
#[derive(Debug, Clone)]
pub struct QuickArgs {
    /// Paths or globs.
    pub paths: Vec<String>,
    /// `file:///dir` (or `-` for stdout).
    pub to: String,
    /// Ship what exists and exit.
    pub once: bool,
    /// Buffer directory.
    pub buffer_dir: PathBuf,
    /// Time key width.
    pub timekey: HumanDuration,
    /// Chunk size limit.
    pub chunk_limit: ByteSize,
    /// `--heartbeat-file`: EMR's heartbeat; main has ended when it goes stale.
    pub heartbeat_file: Option<PathBuf>,
    /// `--heartbeat-timeout`: how old the heartbeat may get before main counts as ended.
    pub heartbeat_timeout: HumanDuration,
    /// How long the heartbeat file may take to appear.
    pub heartbeat_appear_timeout: HumanDuration,
    /// `--signal-file`: its appearance ends the run (written by `logship wrap`).
    pub signal_file: Option<PathBuf>,
    /// `--drain-deadline`; unset, the mode's default (60 s following, 24 h with `--once`).
    pub drain_deadline: Option<HumanDuration>,
    /// Object key format.
    pub key_format: Option<String>,
    /// Secondary directory.
    pub secondary_dir: Option<PathBuf>,
    /// No line framing.
    pub raw: bool,
    /// Poll instead of inotify.
    pub poll: bool,
    /// `--flush-mode`: when chunks are sealed for delivery (lazy, interval, immediate).
    pub flush_mode: FlushMode,
    /// S3: a presigned POST file.
    pub presigned_post: Option<PathBuf>,
    /// S3: text, gzip or zstd.
    pub store_as: crate::StoreAs,
    /// S3: endpoint URL.
    pub endpoint: Option<String>,
    /// S3 and CloudWatch: `--region`, when the AWS configuration has none.
    pub region: Option<String>,
    /// S3: path-style addressing.
    pub path_style: bool,
    /// A Spark event-log directory to ship (instead of `paths`).
    pub spark_events: Option<PathBuf>,
    /// Event logs: rechunk or mirror (default: by layout).
    pub mode: EventLogMode,
    /// Event logs: when `appstatus_<app>` is uploaded.
    pub appstatus: AppStatusMode,
    /// Metrics and health listener address.
    pub metrics_listen: Option<String>,
}

/// Builds the native config for quick mode.
pub fn build(args: &QuickArgs) -> Result<Config, ConfigError> {
    let dest = Destination::parse(&args.to).map_err(|e| super::invalid("--to", e.to_string()))?;
    let mut s3 = S3Settings::default();
    let mut cloudwatch = CloudWatchSettings::default();
    let (kind, dir, path) = match dest {
        Destination::File(dir) => (OutputKind::File, Some(dir), String::new()),
        Destination::Stdout => (OutputKind::Stdout, None, String::new()),
        Destination::S3 { bucket, prefix } => {
            s3.bucket = Some(bucket);
            s3.presigned_post = args.presigned_post.clone();
            s3.store_as = args.store_as;
            s3.endpoint = args.endpoint.clone();
            s3.region = args.region.clone();
            s3.force_path_style = args.path_style;
            (OutputKind::S3, None, prefix)
        }
        Destination::CloudWatch { group, stream } => {
            cloudwatch.log_group = group;
            if !stream.is_empty() {
                cloudwatch.log_stream = stream;
            }
            cloudwatch.region = args.region.clone();
            cloudwatch.endpoint = args.endpoint.clone();
            (OutputKind::Cloudwatch, None, String::new())
        }
    };
    if args.presigned_post.is_some() && kind != OutputKind::S3 {
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
    output.dir = dir;
    output.key_format = key_format;
    output.path = path;
    output.secondary.directory = args.secondary_dir.clone().unwrap_or_default();
    output.s3 = s3;
    output.cloudwatch = cloudwatch;
    let (name, kind, paths, spark) = match (&args.spark_events, args.paths.is_empty()) {
        (Some(dir), true) => (
            "spark-events",
            SourceKind::SparkEvents,
            vec![dir.to_string_lossy().into_owned()],
            Some(SparkEventsConfig {
                mode: args.mode,
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
    source.spark = spark;
    let mut config = Config {
        buffer: BufferConfig {
            dir: args.buffer_dir.clone(),
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

    fn args(to: &str) -> QuickArgs {
        QuickArgs {
            paths: vec!["/tmp/x/*.log".into()],
            to: to.into(),
            once: true,
            buffer_dir: "/tmp/buf".into(),
            timekey: HumanDuration::secs(30),
            chunk_limit: ByteSize(32 << 20),
            heartbeat_file: None,
            heartbeat_timeout: HumanDuration::secs(15),
            heartbeat_appear_timeout: HumanDuration::secs(120),
            signal_file: None,
            drain_deadline: None,
            key_format: None,
            secondary_dir: None,
            raw: false,
            poll: false,
            flush_mode: FlushMode::Lazy,
            presigned_post: None,
            store_as: Default::default(),
            endpoint: None,
            region: None,
            path_style: false,
            spark_events: None,
            mode: Default::default(),
            appstatus: Default::default(),
            metrics_listen: None,
        }
    }

    #[test]
    fn file_destinations_and_errors() {
        let c = build(&args("file:///tmp/out")).unwrap();
        assert_eq!(c.outputs[0].dir, Some(PathBuf::from("/tmp/out")));
        assert_eq!(c.outputs[0].kind, OutputKind::File);
        assert!(c.lifecycle.once);
        let c = build(&args("file://./out")).unwrap();
        assert_eq!(c.outputs[0].dir, Some(PathBuf::from("./out")));
        assert_eq!(build(&args("-")).unwrap().outputs[0].kind, OutputKind::Stdout);
        let c = build(&args("s3://bkt/spark/logs/")).unwrap();
        assert_eq!(c.outputs[0].s3.bucket.as_deref(), Some("bkt"));
        assert_eq!(c.outputs[0].path, "spark/logs");
        assert_eq!(
            c.outputs[0].key_format.to_string(),
            "%{path}/%{tag}/%{time_slice}_%{index}.%{file_extension}"
        );
        let c = build(&args("cloudwatch://%2Faws%2Femr/vc/jobs/j/%{tag}")).unwrap();
        assert_eq!(c.outputs[0].kind, OutputKind::Cloudwatch);
        assert_eq!(c.outputs[0].cloudwatch.log_group, "/aws/emr");
        assert_eq!(c.outputs[0].cloudwatch.log_stream, "vc/jobs/j/%{tag}");
        let e = build(&args("gopher://x")).unwrap_err().to_string();
        assert!(e.contains("--to") && e.contains("gopher"), "{e}");
    }
}
