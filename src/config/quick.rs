//! Quick mode (`logship ship PATHS... --to DEST`): builds a native [`Config`] from command-line
//! arguments, so quick mode and `run --config` share one engine.

use std::path::PathBuf;

use super::{
    BufferConfig, Config, ConfigError, FlushMode, Framing, LifecycleConfig, OutputConfig, OutputKind, RetryConfig,
    SecondaryConfig, SourceConfig, SourceKind, WatchMode,
};
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
    /// Heartbeat file.
    pub heartbeat_file: Option<PathBuf>,
    /// Heartbeat timeout.
    pub heartbeat_timeout: HumanDuration,
    /// How long the heartbeat file may take to appear.
    pub heartbeat_appear_timeout: HumanDuration,
    /// Signal file.
    pub signal_file: Option<PathBuf>,
    /// Drain deadline.
    pub drain_deadline: HumanDuration,
    /// Object key format.
    pub key_format: Option<String>,
    /// Secondary directory.
    pub secondary_dir: Option<PathBuf>,
    /// No line framing.
    pub raw: bool,
    /// Poll instead of inotify.
    pub poll: bool,
    /// Flush mode.
    pub flush_mode: FlushMode,
}

/// Builds the native config for quick mode.
pub fn build(args: &QuickArgs) -> Result<Config, ConfigError> {
    let (kind, dir) = parse_destination(&args.to)?;
    let output = OutputConfig {
        name: "out".to_string(),
        kind,
        dir,
        key_format: args.key_format.clone().unwrap_or_else(super::default_key_format),
        path: String::new(),
        time_slice_format: String::new(),
        index_start: 0,
        retry: RetryConfig::default(),
        secondary: SecondaryConfig {
            directory: args.secondary_dir.clone().unwrap_or_default(),
            basename: String::new(),
        },
    };
    let source = SourceConfig {
        name: "files".to_string(),
        kind: SourceKind::Tail,
        paths: args.paths.clone(),
        read_from: Default::default(),
        refresh_interval: if args.once {
            HumanDuration::secs(3600)
        } else {
            HumanDuration::secs(5)
        },
        format: if args.raw { Framing::Raw } else { Framing::Lines },
        max_line_size: None,
        watch: if args.poll { WatchMode::Poll } else { WatchMode::Notify },
        poll_interval: HumanDuration::secs(1),
        rotate_wait: HumanDuration::secs(5),
        tag: None,
        outputs: Vec::new(),
    };
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
    };
    config.normalize();
    config.validate()?;
    Ok(config)
}

/// Parses `--to`: `file:///dir` (or a bare absolute or relative directory path with `file://`
/// prefix) and `stdout` / `-`.
fn parse_destination(to: &str) -> Result<(OutputKind, Option<PathBuf>), ConfigError> {
    if to == "-" || to == "stdout" || to == "stdout://" {
        return Ok((OutputKind::Stdout, None));
    }
    if let Some(rest) = to.strip_prefix("file://") {
        if rest.is_empty() {
            return Err(super::invalid(
                "--to",
                "file:// needs a directory, e.g. file:///tmp/out or file://./out",
            ));
        }
        return Ok((OutputKind::File, Some(PathBuf::from(rest))));
    }
    let scheme = to.split("://").next().unwrap_or(to);
    Err(super::invalid(
        "--to",
        format!("unsupported destination {to:?} (scheme {scheme:?}); supported: file:///DIR, stdout"),
    ))
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
            drain_deadline: HumanDuration::secs(60),
            key_format: None,
            secondary_dir: None,
            raw: false,
            poll: false,
            flush_mode: FlushMode::Lazy,
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
        let e = build(&args("gopher://x")).unwrap_err().to_string();
        assert!(e.contains("--to") && e.contains("gopher"), "{e}");
    }
}
