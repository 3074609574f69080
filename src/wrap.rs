//! `logship wrap`: runs the Spark container's entrypoint as a child and speaks the sidecar's
//! lifecycle contract for images that do not: it touches the heartbeat file every 2 s while the
//! child runs, forwards signals to it, and when it ends writes the signal file (holding the exit
//! code) and exits with the child's code. The sidecar then drains at once (signal file) or when the
//! heartbeat goes stale, whichever it watches.

use std::path::PathBuf;
use std::time::Duration;

/// What to run and which files to keep.
#[derive(Debug, Clone)]
pub struct WrapConfig {
    /// The command and its arguments.
    pub command: Vec<String>,
    /// Touched every `interval` while the child runs.
    pub heartbeat_file: Option<PathBuf>,
    /// Written (atomically) with the exit code when the child ends.
    pub signal_file: Option<PathBuf>,
    /// How often the heartbeat is touched.
    pub interval: Duration,
    /// The child's stdout is copied here too (appended), for images whose entrypoint does not
    /// write `K8S_SPARK_LOG_URL_STDOUT` itself; it still reaches the container's stdout.
    pub stdout_file: Option<PathBuf>,
    /// The same for stderr.
    pub stderr_file: Option<PathBuf>,
}

/// Why the child could not be run.
#[derive(Debug, thiserror::Error)]
pub enum WrapError {
    /// No command.
    #[error("no command to run (usage: logship wrap [options] -- COMMAND [ARGS...])")]
    NoCommand,
    /// Waiting for it failed.
    #[error("cannot wait for the child: {0}")]
    Wait(std::io::Error),
}

/// Exit code when the command does not exist (as a shell reports it).
pub const EXIT_NOT_FOUND: i32 = 127;
/// Exit code when the command exists but cannot be run (not executable, a directory).
pub const EXIT_CANNOT_RUN: i32 = 126;

/// How long output copying may go on after the child exited.
const TEE_GRACE: Duration = Duration::from_secs(5);

/// Copies a child's output stream to our own and appends it to `path` (directories created).
/// Our own stream always gets everything; a file that cannot be written is reported once and
/// then left alone, so logging problems never stall or kill the Spark process.
async fn tee<R, W>(mut from: R, mut to: W, path: PathBuf)
where
    R: tokio::io::AsyncRead + Unpin,
    W: tokio::io::AsyncWrite + Unpin,
{
    use std::io::Write;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let open = || {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::OpenOptions::new().create(true).append(true).open(&path)
    };
    let mut file = match open() {
        Ok(f) => Some(f),
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot open the output copy");
            None
        }
    };
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let _ = to.write_all(&buf[..n]).await;
        let _ = to.flush().await;
        // Small appends to a local file: a blocking write is cheaper than a thread hop.
        if let Some(f) = &mut file
            && let Err(e) = f.write_all(&buf[..n])
        {
            tracing::warn!(path = %path.display(), error = %e, "cannot write the output copy; stopped copying");
            file = None;
        }
    }
}

fn touch(path: &std::path::Path) {
    let r = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .and_then(|f| f.set_modified(std::time::SystemTime::now()));
    if let Err(e) = r {
        tracing::warn!(path = %path.display(), error = %e, "cannot touch the heartbeat file");
    }
}

/// Runs the child until it ends; returns the exit code to exit with (128 + signal when it was
/// killed by one, as a shell reports it).
pub async fn run(config: &WrapConfig) -> Result<i32, WrapError> {
    use tokio::signal::unix::{SignalKind, signal};
    let (program, args) = config.command.split_first().ok_or(WrapError::NoCommand)?;
    let mut command = tokio::process::Command::new(program);
    command.args(args);
    if config.stdout_file.is_some() {
        command.stdout(std::process::Stdio::piped());
    }
    if config.stderr_file.is_some() {
        command.stderr(std::process::Stdio::piped());
    }
    let kinds = [
        SignalKind::terminate(),
        SignalKind::interrupt(),
        SignalKind::hangup(),
        SignalKind::quit(),
        SignalKind::user_defined1(),
        SignalKind::user_defined2(),
    ];
    // Listened for before the child starts: a signal that came between the spawn and the
    // listening would kill this process (the default action) and leave the child running, with
    // no signal file. Signals that come before the child exists wait in their streams.
    let streams: Vec<_> = kinds
        .iter()
        .filter_map(|k| signal(*k).ok().map(|s| (k.as_raw_value(), s)))
        .collect();
    let mut child = match command.spawn() {
        Ok(c) => c,
        Err(source) => {
            // As a shell does: 127 when the command is not found, 126 when it cannot be run.
            // The signal file is still written, so a sidecar drains now instead of waiting
            // for a heartbeat that never comes.
            let code = if source.kind() == std::io::ErrorKind::NotFound {
                EXIT_NOT_FOUND
            } else {
                EXIT_CANNOT_RUN
            };
            tracing::error!(command = %program, error = %source, code, "cannot start the command");
            write_signal_file(config, code);
            return Ok(code);
        }
    };
    let pid = child.id().map(|p| p as i32);
    let mut tees = Vec::new();
    if let (Some(out), Some(path)) = (child.stdout.take(), &config.stdout_file) {
        tees.push(tokio::spawn(tee(out, tokio::io::stdout(), path.clone())));
    }
    if let (Some(err), Some(path)) = (child.stderr.take(), &config.stderr_file) {
        tees.push(tokio::spawn(tee(err, tokio::io::stderr(), path.clone())));
    }
    // One small task per signal: each forwards what it receives to the child.
    let forwarders: Vec<_> = streams
        .into_iter()
        .map(|(signo, mut stream)| {
            tokio::spawn(async move {
                while stream.recv().await.is_some() {
                    if let Some(pid) = pid {
                        // SAFETY: kill(2) on our own child.
                        unsafe { libc::kill(pid, signo) };
                    }
                }
            })
        })
        .collect();
    if let Some(hb) = &config.heartbeat_file {
        touch(hb);
    }
    let mut tick = tokio::time::interval(config.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let status = loop {
        tokio::select! {
            st = child.wait() => break st.map_err(WrapError::Wait)?,
            _ = tick.tick() => {
                if let Some(hb) = &config.heartbeat_file {
                    touch(hb);
                }
            }
        }
    };
    for f in forwarders {
        f.abort();
    }
    // The copies end at the pipes' end of file; a grandchild that keeps a pipe open does not
    // hold the exit (and the signal file) for more than a few seconds.
    for t in tees {
        if tokio::time::timeout(TEE_GRACE, t).await.is_err() {
            tracing::warn!("the child's output pipe stayed open after it exited; stopped copying it");
        }
    }
    use std::os::unix::process::ExitStatusExt;
    let code = status.code().unwrap_or_else(|| 128 + status.signal().unwrap_or(0));
    write_signal_file(config, code);
    Ok(code)
}

/// Writes the signal file (if configured) holding `code`.
fn write_signal_file(config: &WrapConfig, code: i32) {
    if let Some(sf) = &config.signal_file
        && let Err(e) = crate::fsutil::write_atomic(sf, format!("{code}\n").as_bytes(), true)
    {
        tracing::error!(path = %sf.display(), error = %e, "cannot write the signal file");
    }
}
