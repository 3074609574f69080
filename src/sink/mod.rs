//! Outputs ("sinks"): deliver one sealed chunk by streaming it from its file.
//!
//! Every output implements the same contract: [`Sink::deliver`] either succeeds (the chunk's
//! bytes are at its key), or fails with a [`DeliveryError`] that says whether trying again can
//! help. The pipeline removes a chunk file only after success; [`retry`] runs the retry schedule
//! and [`secondary`] keeps what could not be delivered.

pub mod file;
pub mod key;
pub mod retry;
pub mod secondary;
pub mod stdout;

use crate::buffer::SealedChunk;
use crate::config::{OutputConfig, OutputKind};

/// Why a delivery failed.
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    /// A failure that may pass (network, 5xx, throttling, a full disk): retried with backoff.
    #[error("{0}")]
    Retryable(String),
    /// A failure that retrying cannot fix (bad key, refused by policy): goes to the secondary.
    #[error("{0}")]
    Permanent(String),
}

impl DeliveryError {
    /// Whether trying again can help.
    pub fn is_retryable(&self) -> bool {
        matches!(self, DeliveryError::Retryable(_))
    }
}

/// One configured output.
#[derive(Debug)]
pub enum Sink {
    /// A directory of chunk files.
    File(file::FileSink),
    /// logship's own standard output.
    Stdout(stdout::StdoutSink),
}

impl Sink {
    /// Builds the output described by `config`.
    pub fn from_config(config: &OutputConfig) -> Sink {
        match config.kind {
            OutputKind::File => Sink::File(file::FileSink::new(config.dir.clone().unwrap_or_default())),
            OutputKind::Stdout => Sink::Stdout(stdout::StdoutSink),
        }
    }

    /// The `%{file_extension}` of what this output writes.
    pub fn file_extension(&self) -> &'static str {
        "txt"
    }

    /// Where it delivers, for messages (no secrets).
    pub fn describe(&self) -> String {
        match self {
            Sink::File(f) => {
                let dir = std::path::absolute(f.dir()).unwrap_or_else(|_| f.dir().to_path_buf());
                format!("file://{}", dir.display())
            }
            Sink::Stdout(_) => "stdout".to_string(),
        }
    }

    /// Delivers one chunk.
    pub async fn deliver(&self, chunk: &SealedChunk) -> Result<(), DeliveryError> {
        match self {
            Sink::File(f) => f.deliver(chunk).await,
            Sink::Stdout(s) => s.deliver(chunk).await,
        }
    }
}
