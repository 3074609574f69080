//! `logship resend DIR`: sends what a failed run left behind, to where it was going.
//!
//! A run that could not deliver everything leaves two things: chunks still in its buffer
//! directory (`--once` keeps a failed run's temporary buffer), and files in its outputs'
//! secondary directories. Each run writes its effective configuration into the buffer directory
//! (`config.toml`, no secrets: credentials come from the environment, as they did for the run),
//! and each secondary file has a record of the chunk it holds (`sink::secondary`). `resend`:
//!
//! 1. delivers the buffer's chunks by running the engine on the directory with no sources (read
//!    nothing new; recover, deliver, drain);
//! 2. sends each secondary file that has a record to its output, at the key it was made for,
//!    with the same rule as the run (a key holding other data is never replaced: the index moves
//!    on), and removes the file once it is delivered. A file whose record names another
//!    destination than the configuration's output, or that has no record, is left and listed.
//!
//! It never exits 0 while something is left.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;

use crate::buffer::SealedChunk;
use crate::config::Config;
use crate::sink::Sink;
use crate::sink::retry::Deliveries;
use crate::sink::secondary::{SecondaryRecord, read_record, record_path};
use crate::summary::{EXIT_OK, EXIT_SECONDARY, Summary};

/// The name of the configuration a run writes into its buffer directory.
pub const CONFIG_FILE: &str = "config.toml";

/// Why `resend` cannot start.
#[derive(Debug, thiserror::Error)]
pub enum ResendError {
    /// The directory has no configuration written by a run.
    #[error(
        "{0} has no {CONFIG_FILE}: it is not a buffer directory of a logship run (give the buffer directory the failed run printed)"
    )]
    NoConfig(PathBuf),
    /// The configuration cannot be read.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// The engine could not run on the buffer.
    #[error(transparent)]
    Engine(#[from] crate::engine::EngineError),
}

/// What `resend` did.
#[derive(Debug, Default)]
pub struct ResendReport {
    /// What the run over the buffer's chunks did.
    pub buffer: Option<Summary>,
    /// Secondary files sent: (file, key).
    pub sent: Vec<(PathBuf, String)>,
    /// Secondary files left, and why.
    pub left: Vec<(PathBuf, String)>,
}

impl ResendReport {
    /// 0 when everything was sent; else the exit code of the buffer's run, or 3.
    pub fn exit_code(&self) -> i32 {
        let buffer = self.buffer.as_ref().map_or(EXIT_OK, Summary::exit_code);
        match (buffer, self.left.is_empty()) {
            (EXIT_OK, true) => EXIT_OK,
            (EXIT_OK, false) => EXIT_SECONDARY,
            (code, _) => code,
        }
    }

    /// Lines for people.
    pub fn human(&self) -> String {
        let mut s = String::new();
        if let Some(b) = &self.buffer {
            s.push_str(&b.human());
        }
        for (file, key) in &self.sent {
            s.push_str(&format!("logship: resend: sent {} (key {key})\n", file.display()));
        }
        for (file, why) in &self.left {
            s.push_str(&format!("logship: resend: LEFT {}: {why}\n", file.display()));
        }
        s
    }
}

/// Sends what the run that used buffer directory `dir` left behind.
pub async fn resend(dir: &Path) -> Result<ResendReport, ResendError> {
    let config_path = dir.join(CONFIG_FILE);
    if !config_path.is_file() {
        return Err(ResendError::NoConfig(dir.to_path_buf()));
    }
    let mut config = Config::load(&config_path)?;
    config.buffer.dir = dir.to_path_buf();
    let mut report = ResendReport::default();
    if dir.join("state.json").exists() {
        // Nothing new is read: only what the buffer holds is delivered.
        let mut run = config.clone();
        run.sources.clear();
        run.lifecycle.once = true;
        run.lifecycle.heartbeat_file = None;
        run.lifecycle.signal_file = None;
        report.buffer = Some(crate::engine::run(run, None).await?);
    }
    for (i, out) in config.outputs.iter().enumerate() {
        let dir = out.secondary_dir(dir);
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        // This output's files: `<basename>.<n>`.
        let basename = out.secondary_basename();
        let mut files: Vec<PathBuf> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.is_file() && is_numbered(p, &basename))
            .collect();
        files.sort();
        let mut sink = None;
        for file in files {
            let record = match read_record(&file) {
                Ok(Some(r)) => r,
                Ok(None) => {
                    report.left.push((file, "no record of what it was for (written by a run that crashed right after, or by an older logship): ship it with `logship ship --once`".into()));
                    continue;
                }
                Err(e) => {
                    report.left.push((file, format!("its record cannot be read: {e}")));
                    continue;
                }
            };
            if record.chunk.output != out.name {
                continue;
            }
            let now = Sink::destination(out);
            if record.destination != now {
                report.left.push((
                    file,
                    format!(
                        "made for {}, but output {} now delivers to {now}",
                        record.destination, out.name
                    ),
                ));
                continue;
            }
            if sink.is_none() {
                match Sink::build(out, &config.records_for_output(i)).await {
                    Ok(s) => sink = Some(s),
                    Err(e) => {
                        report
                            .left
                            .push((file, format!("output {} cannot start: {e}", out.name)));
                        continue;
                    }
                }
            }
            let sink = sink.as_ref().expect("built");
            match send(sink, out, i, &file, &record).await {
                Ok(key) => {
                    let _ = std::fs::remove_file(&file);
                    let _ = std::fs::remove_file(record_path(&file));
                    let _ = std::fs::remove_file(crate::buffer::siblings::progress_path(&file));
                    tracing::info!(file = %file.display(), %key, "sent");
                    report.sent.push((file, key));
                }
                Err(e) => report.left.push((file, e.to_string())),
            }
        }
    }
    Ok(report)
}

/// Sends one secondary file with the output's retry schedule; returns the key it went to.
async fn send(
    sink: &Sink,
    out: &crate::config::OutputConfig,
    output: usize,
    file: &Path,
    record: &SecondaryRecord,
) -> Result<String, crate::sink::DeliveryError> {
    let len = std::fs::metadata(file)
        .map_err(|e| crate::sink::DeliveryError::Permanent(format!("cannot read {}: {e}", file.display())))?
        .len();
    let c = &record.chunk;
    let chunk = SealedChunk {
        seq: c.seq,
        output,
        tag: c.tag.clone(),
        key: c.key.clone(),
        path: file.to_path_buf(),
        len,
        timekey: c.timekey,
        // Keys the chunk was to replace were the run's to delete; a resend only adds.
        delete_after: Vec::new(),
        created_ms: c.created_ms,
        no_replace: c.no_replace,
        alternatives: c.alternatives.clone(),
        crc32: None,
        secondary: None,
    };
    let (_tx, rx) = tokio::sync::watch::channel(Deliveries::Run);
    let retries = AtomicU64::new(0);
    let log = crate::sink::retry::FailureLog::default();
    crate::sink::retry::deliver_with_retry(sink, &chunk, &out.retry, (&retries, &log), &rx).await?;
    Ok(c.key.clone())
}

/// Whether `p` is named `<basename>.<n>`, as the secondary files of an output are.
fn is_numbered(p: &Path, basename: &str) -> bool {
    let name = p
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    name.strip_prefix(basename)
        .and_then(|r| r.strip_prefix('.'))
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}
