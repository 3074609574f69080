//! The `logship` command line.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use logship::config::contract;

use logship::config::Config;
use logship::config::quick::{QuickArgs, build};
use logship::units::{ByteSize, HumanDuration};

/// Ships Spark's logs from Kubernetes pods (or any host) to a directory, S3 or CloudWatch Logs:
/// crash-safe, nothing lost at the end of a job, in a few MiB of memory.
/// What `run` and `ship` exit with, and what signals do (shown by `--help`).
const EXIT_AND_SIGNALS: &str = "\
Exit codes (run, ship):
  0  everything written before the drain point was delivered
  1  fatal error: bad config, unusable buffer directory or damaged buffer state (the file is
     named; nothing is changed), an output that cannot start
  2  usage error: a bad flag or flag value
  3  some chunks are in a secondary directory instead of their output
  4  some data was not delivered anywhere: left in the buffer, not read in time, missing from a
     damaged chunk file, or a path that could not be shipped; or files in the buffer that logship
     could not account for (kept) (each named in the summary)

Signals: SIGTERM or SIGINT start the drain; during a drain the first stops reading (what was read
is delivered within 60 s) and a second ends the run. SIGHUP reloads the configuration (run).
SIGUSR1 and SIGUSR2 are ignored.";

#[derive(Parser, Debug)]
#[command(name = "logship", version, about, long_about = None, after_help = EXIT_AND_SIGNALS)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run until a lifecycle trigger, then drain and exit: from a native TOML config, from a
    /// fluentd config (EMR's fluent.conf), or, with neither, from /etc/fluent/$FLUENTD_CONF when
    /// that exists (EMR's image contract: the logship image replaces EMR's fluentd image as is).
    #[command(after_help = EXIT_AND_SIGNALS)]
    Run {
        /// The native config file.
        #[arg(long, short, env = contract::LOGSHIP_CONFIG, conflicts_with = "fluentd_config")]
        config: Option<PathBuf>,
        /// A fluentd configuration to translate and run (see `logship translate`).
        #[arg(long)]
        fluentd_config: Option<PathBuf>,
        /// The native config as TOML text (for a pod spec that carries its config in an
        /// environment variable, as `logship-inject template` writes it).
        #[arg(long, env = contract::LOGSHIP_CONFIG_TOML, hide_env_values = true, conflicts_with_all = ["config", "fluentd_config"])]
        config_toml: Option<String>,
    },
    /// Translate a fluentd configuration (as EMR on EKS generates it) into logship's native TOML
    /// and print it; what is ignored is listed on stderr. `#{ENV['NAME']}` becomes `${NAME}`,
    /// resolved where the config runs, so the TOML serves every pod.
    Translate {
        /// The fluentd configuration file.
        file: PathBuf,
    },
    /// Send what a failed run left, to where it was going: the chunks still in its buffer
    /// directory and the files in its outputs' secondary directories (each to the key it was
    /// made for; a key holding other data is never replaced). Uses the configuration the run
    /// saved in DIR, and credentials from the environment, as the run did. Exits 0 only when
    /// nothing is left.
    #[command(after_help = EXIT_AND_SIGNALS)]
    Resend {
        /// The buffer directory of the failed run (`--once` prints it when it keeps it).
        dir: PathBuf,
    },
    /// Validate a config and print the effective config (defaults filled in), and/or explain a
    /// presigned POST file (bucket, key prefix, conditions, time left; never the signature).
    Check {
        /// The config file.
        #[arg(long, short, env = contract::LOGSHIP_CONFIG, required_unless_present = "presigned_post")]
        config: Option<PathBuf>,
        /// A presigned POST file to explain.
        #[arg(long)]
        presigned_post: Option<PathBuf>,
    },
    /// Print a presigned POST (JSON, as boto3 makes) that can only write objects under a key
    /// prefix, up to a size, until it expires. Signed with credentials from the default chain.
    Presign {
        /// The bucket.
        #[arg(long)]
        bucket: String,
        /// Objects must be written under this prefix.
        #[arg(long)]
        key_prefix: String,
        /// How long it is valid.
        #[arg(long, default_value = "1h")]
        expires: HumanDuration,
        /// Signing region.
        #[arg(long, env = "AWS_REGION", default_value = "us-east-1")]
        region: String,
        /// An S3-compatible endpoint (path-style), e.g. http://127.0.0.1:9000.
        #[arg(long, env = "AWS_ENDPOINT_URL")]
        endpoint: Option<String>,
        /// Largest object allowed.
        #[arg(long, default_value = "5GB")]
        max_size: ByteSize,
    },
    /// Quick mode: ship files to a destination without a config file.
    #[command(after_help = EXIT_AND_SIGNALS)]
    Ship(Box<QuickArgs>),
    /// Run a command as the Spark container's entrypoint, speaking the sidecar's lifecycle
    /// contract for it: touch the heartbeat file every 2 s while it runs, forward signals to it,
    /// and when it ends write the signal file (with its exit code) and exit with its code.
    Wrap {
        /// The heartbeat file to touch (EMR: /var/log/fluentd/main-container-terminated).
        #[arg(long, env = contract::SIDECAR_SIGNAL_FILE)]
        heartbeat_file: Option<PathBuf>,
        /// The file to write with the exit code when the command ends.
        #[arg(long)]
        signal_file: Option<PathBuf>,
        /// How often the heartbeat file is touched.
        #[arg(long, default_value = "2s")]
        heartbeat_interval: HumanDuration,
        /// Also append the command's stdout to this file (it still goes to stdout), for images
        /// whose entrypoint does not write K8S_SPARK_LOG_URL_STDOUT itself.
        #[arg(long)]
        stdout_file: Option<PathBuf>,
        /// Also append the command's stderr to this file.
        #[arg(long)]
        stderr_file: Option<PathBuf>,
        /// The command and its arguments (after `--`).
        #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
        command: Vec<String>,
    },
    /// Copy this executable to DEST (mode 0755), for an init container that puts logship into a
    /// volume the Spark container then runs `logship wrap` from (the image has no shell or cp).
    Install {
        /// Where to put the copy, e.g. /opt/logship/bin/logship.
        dest: PathBuf,
    },
}

fn main() -> ExitCode {
    tune_malloc();
    let cli = Cli::parse();
    if let Err(e) = init_logging() {
        eprintln!("logship: error: {e}");
        return ExitCode::from(logship::summary::EXIT_USAGE as u8);
    }
    logship::fsutil::raise_open_file_limit();
    match real_main(cli) {
        Ok(code) => ExitCode::from(code as u8),
        Err(e) => {
            say_error(&format!("logship: error: {}", error_chain(&e)));
            ExitCode::from(1)
        }
    }
}

/// Whether logship's own logs are JSON lines (`LOGSHIP_LOG_FORMAT=json`): then every line it
/// writes to stderr is one, the exit summary's included.
static JSON_LOGS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();

fn json_logs() -> bool {
    JSON_LOGS.get().copied().unwrap_or(false)
}

/// A line for people on stderr: as it is, or as a JSON log line.
fn say(line: &str) {
    if json_logs() {
        tracing::info!("{}", line.trim_start_matches("logship: "));
    } else {
        eprintln!("{line}");
    }
}

fn say_error(line: &str) {
    if json_logs() {
        tracing::error!("{}", line.trim_start_matches("logship: error: "));
    } else {
        eprintln!("{line}");
    }
}

/// An error with its causes joined by `: `, leaving out a cause that its parent's message
/// already quotes (most of logship's errors name their cause in their own text).
fn error_chain(e: &anyhow::Error) -> String {
    let mut s = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if s.contains(&text) {
            continue;
        }
        if !s.is_empty() {
            s.push_str(": ");
        }
        s.push_str(&text);
    }
    s
}

/// Keeps glibc's malloc from holding memory logship no longer uses (measured on 1 GiB to S3):
/// - one arena for all threads: glibc gives each allocating thread its own arena and keeps what
///   was freed there (compression on the blocking pool held ~10 MiB more than it used); logship
///   has few threads and allocates little, so there is no contention to lose;
/// - a fixed 128 KiB mmap threshold: otherwise glibc raises it after large blocks are freed, and
///   later read buffers and encoder states land in the heap, where fragmentation pins them
///   (gzip: 18.2 MiB peak RSS with a live heap under 1 MiB; 10.5 MiB with the fixed threshold).
///
/// Must run before any thread starts. musl's allocator returns memory by itself.
fn tune_malloc() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters; called before other threads exist.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
    }
}

/// The most each AWS SDK crate may log (see [`init_logging`]).
const SDK_LOG_CAPS: &[&str] = &[
    "aws_config=error",
    "aws_credential_types=error",
    "aws_runtime=warn",
    "aws_sigv4=warn",
    "aws_sdk_s3=warn",
    "aws_sdk_cloudwatchlogs=warn",
    "aws_sdk_sts=warn",
    "aws_sdk_sso=warn",
    "aws_sdk_ssooidc=warn",
    "aws_smithy_runtime=warn",
    "aws_smithy_runtime_api=warn",
    "aws_smithy_http_client=warn",
    "aws_smithy_http=warn",
    "aws_smithy_types=warn",
];

/// Logs go to stderr: text, or one JSON object per line with `LOGSHIP_LOG_FORMAT=json` (for log
/// collectors that parse fields); the level filter is `LOGSHIP_LOG`.
///
/// The AWS SDK's own logs are capped whatever `LOGSHIP_LOG` says: at debug and trace they print
/// the access key id (`Credentials`' `Debug`), signed requests and session tokens, and
/// aws-config's profile provider logs assumed-role credentials at info. Its warnings (a region
/// IMDS could not give) are multi-line dumps; logship says what is missing in its own words.
fn init_logging() -> std::result::Result<(), String> {
    let format = std::env::var("LOGSHIP_LOG_FORMAT").unwrap_or_default();
    let json = match format.as_str() {
        "json" => true,
        "" | "text" => false,
        other => return Err(format!("LOGSHIP_LOG_FORMAT={other:?}: must be text or json")),
    };
    let _ = JSON_LOGS.set(json);
    let level = std::env::var("LOGSHIP_LOG").unwrap_or_default();
    // Each directive a level, or target=level: a typo ("debgu") would otherwise be taken for the
    // name of a target and quietly change nothing.
    const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];
    for d in level.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        let lvl = d.rsplit_once('=').map_or(d, |(_, l)| l).to_ascii_lowercase();
        if !LEVELS.contains(&lvl.as_str()) {
            return Err(format!(
                "LOGSHIP_LOG={level:?}: {d:?} is not a level ({}) or target=level",
                LEVELS.join(", ")
            ));
        }
    }
    let mut filter = if level.trim().is_empty() {
        tracing_subscriber::EnvFilter::new("info")
    } else {
        tracing_subscriber::EnvFilter::try_new(&level).map_err(|e| format!("LOGSHIP_LOG={level:?}: {e}"))?
    };
    for cap in SDK_LOG_CAPS {
        filter = filter.add_directive(cap.parse().expect("a valid directive"));
    }
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_target(false);
    if json {
        builder.with_writer(std::io::stderr).json().init();
    } else {
        // Untrusted text (file names, keys) cannot forge or break a log line.
        let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
        builder
            .with_writer(logship::log_writer::EscapedStderr { ansi })
            .with_ansi(ansi)
            .init();
    }
    Ok(())
}

fn real_main(cli: Cli) -> Result<i32> {
    match cli.command {
        Command::Check { config, presigned_post } => {
            use logship::sink::presigned_post::{explain, problems};
            let now = std::time::SystemTime::now();
            let mut found = Vec::new();
            if let Some(config) = &config {
                let c = Config::load(config)?;
                print!("{}", c.to_toml());
                found.extend(check_presigned_posts(&c, config, now)?);
            }
            if let Some(post) = presigned_post {
                print!("{}", explain(&post, now)?);
                for p in problems(&post, None, None, now, std::time::Duration::ZERO)? {
                    found.push(format!("presigned POST {}: {p}", post.display()));
                }
            }
            for p in &found {
                say_error(&format!("logship: error: {p}"));
            }
            if !found.is_empty() {
                return Ok(1);
            }
            if let Some(config) = config {
                say(&format!("logship: {} is valid", config.display()));
            }
            Ok(0)
        }
        Command::Presign {
            bucket,
            key_prefix,
            expires,
            region,
            endpoint,
            max_size,
        } => {
            let req = logship::presign::PresignRequest {
                bucket,
                key_prefix,
                expires: expires.get(),
                region,
                endpoint,
                max_size: max_size.bytes(),
            };
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            let post = rt.block_on(logship::presign::presign(&req))?;
            println!("{}", serde_json::to_string_pretty(&post)?);
            Ok(0)
        }
        Command::Run {
            config,
            fluentd_config,
            config_toml,
        } => {
            // SIGHUP reads the configuration again from the same place.
            let reload: logship::engine::Reloader = match (config, fluentd_config) {
                _ if let Some(text) = config_toml => {
                    Box::new(move || Config::parse(&text, contract::LOGSHIP_CONFIG_TOML).map_err(|e| e.to_string()))
                }
                (Some(c), _) => Box::new(move || Config::load(&c).map_err(|e| e.to_string())),
                (None, Some(f)) => Box::new(move || load_fluentd(&f).map_err(|e| error_chain(&e))),
                (None, None) => match logship::fluentd::emr_config_path() {
                    Some(f) => {
                        tracing::info!(file = %f.display(), "running EMR's fluentd configuration (FLUENTD_CONF)");
                        Box::new(move || load_fluentd(&f).map_err(|e| error_chain(&e)))
                    }
                    None => anyhow::bail!(
                        "no configuration: give --config FILE or --fluentd-config FILE (or set FLUENTD_CONF to a file in /etc/fluent, as EMR does)"
                    ),
                },
            };
            let c = reload().map_err(anyhow::Error::msg)?;
            run_engine(c, None, Some(reload))
        }
        Command::Wrap {
            heartbeat_file,
            signal_file,
            heartbeat_interval,
            stdout_file,
            stderr_file,
            command,
        } => {
            let config = logship::wrap::WrapConfig {
                command,
                heartbeat_file,
                signal_file,
                interval: heartbeat_interval.get(),
                stdout_file,
                stderr_file,
            };
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            Ok(rt.block_on(logship::wrap::run(&config))?)
        }
        Command::Install { dest } => {
            install_self(&dest).with_context(|| format!("cannot install logship at {}", dest.display()))?;
            say(&format!("logship: installed at {}", dest.display()));
            Ok(0)
        }
        Command::Resend { dir } => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .max_blocking_threads(4)
                .build()
                .context("cannot start the runtime")?;
            let report = rt
                .block_on(logship::resend::resend(&dir))
                .with_context(|| format!("cannot resend from {}", dir.display()))?;
            for line in report.human().lines() {
                say(line);
            }
            Ok(report.exit_code())
        }
        Command::Translate { file } => {
            let p = logship::fluentd::translate_portable(&file).context("cannot translate the fluentd config")?;
            for w in &p.translation.warnings {
                tracing::warn!("{w}");
            }
            if !p.variables.is_empty() {
                tracing::info!(
                    variables = %p.variables.join(", "),
                    "environment references are kept as ${{NAME}}: they are resolved where the config runs"
                );
            }
            print!("{}", p.translation.config.to_toml());
            Ok(0)
        }
        Command::Ship(args) => {
            let args = *args;
            let mut temp = None;
            let buffer_dir = match (&args.buffer_dir, args.once) {
                (Some(d), _) => d.clone(),
                (None, true) => {
                    use std::os::unix::fs::PermissionsExt;
                    // Private, as every buffer directory (a run that fails keeps it).
                    let t = tempfile::Builder::new()
                        .prefix("logship-once-")
                        .permissions(std::fs::Permissions::from_mode(0o700))
                        .tempdir()
                        .context("cannot create a temporary buffer directory")?;
                    let p = t.path().to_path_buf();
                    temp = Some(t);
                    p
                }
                (None, false) => {
                    let d = default_buffer_dir(&args);
                    // `$TMPDIR/logship-<uid>` is shared ground: one another user made first
                    // (or can write into) could rename our buffer between runs.
                    if let Some(parent) = d.parent() {
                        logship::fsutil::private_dir(parent).with_context(|| {
                            format!(
                                "the default buffer directory's parent {} cannot be used; give --buffer-dir",
                                parent.display()
                            )
                        })?;
                    }
                    d
                }
            };
            // Quick mode's errors are about flags: a usage error, exit 2, like clap's own.
            let c = match build(&args, buffer_dir) {
                Ok(c) => c,
                Err(logship::config::ConfigError::Invalid { key, message, .. }) => {
                    say_error(&format!(
                        "logship: error: {key}: {message}\n\nFor more information, try 'logship ship --help'."
                    ));
                    return Ok(logship::summary::EXIT_USAGE);
                }
                Err(e) => return Err(e.into()),
            };
            run_engine(c, temp, None)
        }
    }
}

/// What would make the presigned POSTs of `config`'s S3 outputs fail, each naming the file and
/// the output. A POST file that does not exist yet is only noted (in a pod it is mounted later).
fn check_presigned_posts(config: &Config, origin: &std::path::Path, now: std::time::SystemTime) -> Result<Vec<String>> {
    let mut found = Vec::new();
    for (i, o) in config.outputs.iter().enumerate() {
        let Some(s3) = o.s3() else { continue };
        let Some(post) = &s3.presigned_post else { continue };
        if !post.exists() {
            say(&format!(
                "logship: note: {}: output[{i}].s3.presigned_post {} does not exist yet; it must when logship runs",
                origin.display(),
                post.display()
            ));
            continue;
        }
        // The literal start of every key this output writes.
        let prefix = logship::sink::preflight::key_prefix(o);
        let problems = logship::sink::presigned_post::problems(
            post,
            s3.bucket.as_deref(),
            Some(&prefix),
            now,
            s3.presigned_post_margin.get(),
        )?;
        for p in problems {
            found.push(format!(
                "{}: output[{i}].s3.presigned_post ({}): {p}",
                origin.display(),
                post.display()
            ));
        }
    }
    Ok(found)
}

/// The buffer directory of `ship --follow` without `--buffer-dir`:
/// `$TMPDIR/logship-<uid>/<hash of what is read and where it goes>`. Per user, so no other local
/// user owns it (it is private, 0700, and refused otherwise); per configuration, so a run of
/// other files to another destination never picks up this one's chunks; stable, so the same
/// command run again resumes where a crashed one stopped.
fn default_buffer_dir(args: &QuickArgs) -> PathBuf {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let uid = unsafe { libc::geteuid() };
    let mut what = format!("to={}\0", args.to);
    for p in &args.paths {
        what.push_str(&format!("path={p}\0"));
    }
    if let Some(d) = &args.spark_events {
        what.push_str(&format!("spark-events={}\0", d.display()));
    }
    let hash = logship::fsutil::fnv1a(what.as_bytes());
    std::env::temp_dir()
        .join(format!("logship-{uid}"))
        .join(format!("{hash:016x}"))
}

/// Copies the running executable to `dest` through the project's temporary name and a rename
/// (`fsutil::temp_path_for`), so a restarted init container never leaves a half-written binary.
fn install_self(dest: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let exe = std::env::current_exe()?;
    if let Some(dir) = dest.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = logship::fsutil::temp_path_for(dest);
    let result = std::fs::copy(&exe, &tmp)
        .and_then(|_| std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755)))
        .and_then(|_| std::fs::rename(&tmp, dest));
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Parses and translates a fluentd config; what was ignored goes to the log.
fn load_fluentd(path: &std::path::Path) -> Result<Config> {
    // The error names the file (and the line and column, when it is inside it).
    let t = logship::fluentd::load(path).context("cannot use the fluentd config")?;
    for w in &t.warnings {
        tracing::warn!("{w}");
    }
    Ok(t.config)
}

fn run_engine(
    config: Config,
    temp_buffer: Option<tempfile::TempDir>,
    reload: Option<logship::engine::Reloader>,
) -> Result<i32> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .max_blocking_threads(4)
        .build()
        .context("cannot start the runtime")?;
    let summary = rt.block_on(logship::engine::run(config, reload))?;
    for line in summary.human().lines() {
        say(line);
    }
    eprintln!("{}", summary.json());
    let code = summary.exit_code();
    if let Some(t) = temp_buffer {
        if code == 0 {
            drop(t);
        } else {
            let kept = t.keep();
            say(&format!(
                "logship: buffer kept at {} (when the cause is fixed: logship resend {0})",
                kept.display()
            ));
        }
    }
    Ok(code)
}
