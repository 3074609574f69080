//! logship's own text log on stderr, safe from the text it quotes: file names, keys and error
//! messages come from other people (a file named `a\nINFO delivered everything` would otherwise
//! forge a log line). Every event is written whole, and inside it a line feed or carriage
//! return becomes `\n` / `\r`; other control characters become `\u{..}` unless the log is in
//! colour on a terminal (whose colour codes are control characters themselves). JSON logs are
//! escaped by JSON.

use std::io::{self, Write};

/// A `MakeWriter` for the text log: stderr, escaped.
#[derive(Debug, Clone, Copy)]
pub struct EscapedStderr {
    /// Colour codes are written (stderr is a terminal): escape characters are let through.
    pub ansi: bool,
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for EscapedStderr {
    type Writer = EscapingWriter<io::Stderr>;

    fn make_writer(&'a self) -> Self::Writer {
        EscapingWriter {
            inner: io::stderr(),
            ansi: self.ansi,
        }
    }
}

/// Writes each buffer it is given (one formatted event) with its inner line breaks and control
/// characters escaped; the buffer's own final line feed is kept.
#[derive(Debug)]
pub struct EscapingWriter<W> {
    inner: W,
    ansi: bool,
}

/// `buf` with its control characters escaped, but for a final line feed (and tabs; escape
/// characters too when `ansi`).
pub fn escape_event(buf: &[u8], ansi: bool) -> Vec<u8> {
    let (body, end) = match buf.strip_suffix(b"\n") {
        Some(b) => (b, &b"\n"[..]),
        None => (buf, &b""[..]),
    };
    let mut out = Vec::with_capacity(buf.len() + 8);
    for &b in body {
        match b {
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.push(b),
            0x1b if ansi => out.push(b),
            0..=0x1f | 0x7f => out.extend_from_slice(format!("\\u{{{b:02x}}}").as_bytes()),
            _ => out.push(b),
        }
    }
    out.extend_from_slice(end);
    out
}

impl<W: Write> Write for EscapingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.inner.write_all(&escape_event(buf, self.ansi))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inner_line_breaks_and_control_characters_are_escaped_the_final_line_feed_kept() {
        let e = escape_event(b"INFO following file path=/in/a\nINFO forged\r\x07\t.log\n", false);
        assert_eq!(e, b"INFO following file path=/in/a\\nINFO forged\\r\\u{07}\t.log\n");
        assert_eq!(
            escape_event(b"\x1b[32mINFO\x1b[0m x\n", true),
            b"\x1b[32mINFO\x1b[0m x\n"
        );
        assert_eq!(escape_event(b"\x1b[2J\n", false), b"\\u{1b}[2J\n");
        assert_eq!(escape_event(b"no newline", false), b"no newline");
    }
}
