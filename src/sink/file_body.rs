//! `FileBody`: an HTTP request body that streams a byte range of a chunk file.
//!
//! Why not the SDK's `ByteStream::read_from().path(..)` or tokio's `File` behind a
//! `ReaderStream`: both read through tokio's blocking buffer and copy each piece into a freshly
//! allocated `BytesMut`. A 256 KiB allocation is above glibc's mmap threshold, so every piece
//! cost an `mmap`, 64 page faults that zero the pages, a second copy and an `munmap`: about 15 %
//! of the CPU of an upload (perf, 1 GiB to S3 over HTTPS). Here each piece is read once, with
//! `pread` on the blocking pool straight into a buffer taken from a small process-wide pool, and
//! handed to hyper as `Bytes` that give the buffer back to the pool when hyper drops them. One
//! read runs ahead while hyper sends the previous piece, so the disk and the socket overlap.
//!
//! Memory: at most [`POOLED`] idle buffers of [`PIECE`] bytes are kept, plus the pieces in flight.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::task::JoinHandle;

/// Size of one piece of the body (one `pread`, one `Bytes` frame).
pub const PIECE: usize = 256 * 1024;
/// How many idle piece buffers the pool keeps for the next piece or the next upload.
const POOLED: usize = 4;

/// Idle piece buffers, shared by every upload of the process.
static POOL: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());

fn take_buffer() -> Vec<u8> {
    POOL.lock()
        .ok()
        .and_then(|mut p| p.pop())
        .unwrap_or_else(|| vec![0; PIECE])
}

/// A piece of a body: returns its buffer to the pool when hyper is done with it.
struct Piece {
    buf: Vec<u8>,
    len: usize,
}

impl AsRef<[u8]> for Piece {
    fn as_ref(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl Drop for Piece {
    fn drop(&mut self) {
        if let Ok(mut pool) = POOL.lock()
            && pool.len() < POOLED
        {
            pool.push(std::mem::take(&mut self.buf));
        }
    }
}

type Read = io::Result<(Vec<u8>, usize)>;

/// The request body for `len` bytes of a file from `offset`. Its length is exact
/// ([`Body::size_hint`]), so the request carries a Content-Length. A file that turns out
/// shorter than `len` ends the body with an error naming it, never a short upload.
pub struct FileBody {
    path: PathBuf,
    file: Result<Arc<File>, Option<io::Error>>,
    /// Offset of the next read to start.
    next: u64,
    /// End of the range.
    end: u64,
    /// Bytes not yet handed out.
    remaining: u64,
    /// The read that runs ahead.
    pending: Option<JoinHandle<Read>>,
}

impl FileBody {
    /// A body for `len` bytes of `path` from `offset`. An error opening the file is reported
    /// by the first poll (so a retryable SDK body can be made from a plain closure).
    pub fn new(path: &Path, offset: u64, len: u64) -> FileBody {
        FileBody {
            path: path.to_path_buf(),
            file: File::open(path).map(Arc::new).map_err(Some),
            next: offset,
            end: offset + len,
            remaining: len,
            pending: None,
        }
    }

    fn error(&self, e: io::Error) -> io::Error {
        io::Error::new(e.kind(), format!("cannot read {}: {e}", self.path.display()))
    }

    /// Starts reading the next piece on the blocking pool, if any is left.
    fn read_ahead(&mut self) {
        let Ok(file) = &self.file else { return };
        if self.next >= self.end || self.pending.is_some() {
            return;
        }
        let want = (self.end - self.next).min(PIECE as u64) as usize;
        let (file, offset) = (file.clone(), self.next);
        self.next += want as u64;
        self.pending = Some(tokio::task::spawn_blocking(move || {
            let mut buf = take_buffer();
            let mut n = 0;
            while n < want {
                match file.read_at(&mut buf[n..want], offset + n as u64) {
                    Ok(0) => break,
                    Ok(m) => n += m,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
            if n < want {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("the file ended {} bytes before the end of the upload", want - n),
                ));
            }
            Ok((buf, n))
        }));
    }
}

impl Body for FileBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = &mut *self;
        if let Err(e) = &mut this.file {
            return Poll::Ready(e.take().map(|e| Err(this.error(e))));
        }
        this.read_ahead();
        let Some(pending) = &mut this.pending else {
            return Poll::Ready(None);
        };
        let done = ready!(Pin::new(pending).poll(cx))
            .map_err(io::Error::other)
            .and_then(|read| read);
        this.pending = None;
        let (buf, len) = match done {
            Ok(read) => read,
            Err(e) => {
                this.next = this.end;
                return Poll::Ready(Some(Err(this.error(e))));
            }
        };
        this.remaining -= len as u64;
        if this.remaining > 0 {
            // Part of the body is on its way to the server, the rest is not.
            crate::crashpoint::hit("request-body-partly-sent");
        }
        this.read_ahead();
        Poll::Ready(Some(Ok(Frame::data(Bytes::from_owner(Piece { buf, len })))))
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0 && self.pending.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining)
    }
}

impl Drop for FileBody {
    fn drop(&mut self) {
        if let Some(p) = self.pending.take() {
            p.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn streams_exactly_the_range_in_pieces() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("1.chunk");
        let data: Vec<u8> = (0..(3 * PIECE + 1234) as u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &data).unwrap();
        for (offset, len) in [(0, data.len()), (7, PIECE), (PIECE + 3, 2 * PIECE + 1000), (5, 0)] {
            let body = FileBody::new(&path, offset as u64, len as u64);
            assert_eq!(body.size_hint().exact(), Some(len as u64));
            let got = body.collect().await.unwrap().to_bytes();
            assert_eq!(&got[..], &data[offset..offset + len], "range {offset}+{len}");
        }
    }

    #[tokio::test]
    async fn a_missing_or_short_file_is_an_error_naming_it() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("2.chunk");
        let e = FileBody::new(&path, 0, 10).collect().await.err().unwrap();
        assert!(e.to_string().contains("2.chunk"), "{e}");
        std::fs::write(&path, b"short").unwrap();
        let e = FileBody::new(&path, 0, 10).collect().await.err().unwrap();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
        assert!(
            e.to_string().contains("2.chunk") && e.to_string().contains("5 bytes before"),
            "{e}"
        );
    }
}
