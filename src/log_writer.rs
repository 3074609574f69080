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
    // An event is formatted into a `String`: valid UTF-8.
    let text = String::from_utf8_lossy(buf);
    let (body, end) = match text.strip_suffix('\n') {
        Some(b) => (b, "\n"),
        None => (&*text, ""),
    };
    let mut out = String::with_capacity(buf.len() + 8);
    escape_controls(body, ansi, &mut out);
    out.push_str(end);
    out.into_bytes()
}

/// Appends `text` to `out` with its control characters escaped: a line feed or carriage return
/// as `\n` / `\r`, others as `\u{..}`; tabs are kept, and so are escape characters with
/// `keep_esc` (a terminal's colour codes). Text from others (file names, keys) can then
/// neither split a line nor forge one, in the log or in the summary.
pub fn escape_controls(text: &str, keep_esc: bool, out: &mut String) {
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push(c),
            '\x1b' if keep_esc => out.push(c),
            c if c.is_control() => out.push_str(&format!("\\u{{{:02x}}}", c as u32)),
            c => out.push(c),
        }
    }
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
