//! The stdout output: chunk bytes (whole lines) are written to logship's own standard output,
//! as fluentd's `stdout` output with `format single_value` does. Logs go to stderr, so stdout
//! carries only shipped lines.

use std::io::{Read, Write};

use super::DeliveryError;
use crate::buffer::SealedChunk;

/// Writes chunks to standard output.
#[derive(Debug, Clone, Copy)]
pub struct StdoutSink;

impl StdoutSink {
    /// Streams the chunk (its first `len` bytes) to stdout in blocks.
    pub async fn deliver(&self, chunk: &SealedChunk) -> Result<(), DeliveryError> {
        let (path, len) = (chunk.path.clone(), chunk.len);
        tokio::task::spawn_blocking(move || -> Result<(), DeliveryError> {
            let f = std::fs::File::open(&path)
                .map_err(|e| DeliveryError::Retryable(format!("cannot open chunk {}: {e}", path.display())))?;
            let mut f = f.take(len);
            let out = std::io::stdout();
            let mut out = out.lock();
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = f
                    .read(&mut buf)
                    .map_err(|e| DeliveryError::Retryable(format!("cannot read chunk {}: {e}", path.display())))?;
                if n == 0 {
                    break;
                }
                out.write_all(&buf[..n])
                    .map_err(|e| DeliveryError::Permanent(format!("cannot write to stdout: {e}")))?;
            }
            out.flush()
                .map_err(|e| DeliveryError::Permanent(format!("cannot write to stdout: {e}")))
        })
        .await
        .map_err(|e| DeliveryError::Retryable(format!("delivery task failed: {e}")))?
    }
}
