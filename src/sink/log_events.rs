//! The body of a PutLogEvents request (AWS JSON 1.1), written by logship instead of the SDK.
//!
//! Why: the SDK turns every event into its own `InputLogEvent` string and escapes it byte by byte
//! (a capacity check and a push per byte). On Spark's JSON lines, where a `"` comes every few
//! bytes, that was 29 % of the CloudWatch output's CPU, more than the SHA-256 of the body that
//! SigV4 needs. Here the messages are escaped straight into one buffer, 16 bytes at a time
//! where nothing needs escaping. The SDK still signs, sends, retries and reads the answer: the
//! body replaces the one it serialized (for an empty event list) before signing
//! ([`CloudWatchSink`](super::cloudwatch::CloudWatchSink)).

use std::io::Write;

use super::cloudwatch::{Event, EventText};

/// Appends to `out` the request body of PutLogEvents for `events` (in the order given: the caller
/// sorts them), whose messages are in `text`.
pub fn put_log_events_body(out: &mut Vec<u8>, group: &str, stream: &str, events: &[Event], text: &EventText) {
    // Escaping grows Spark's JSON lines by about a tenth; a few more bytes per event for the keys.
    let estimate: usize = events.iter().map(|e| e.message.len() + e.message.len() / 8 + 40).sum();
    out.reserve(64 + group.len() + stream.len() + estimate);
    let mut scratch = [0; SCRATCH];
    out.extend_from_slice(b"{\"logGroupName\":\"");
    escape_json_with(out, group.as_bytes(), &mut scratch);
    out.extend_from_slice(b"\",\"logStreamName\":\"");
    escape_json_with(out, stream.as_bytes(), &mut scratch);
    out.extend_from_slice(b"\",\"logEvents\":[");
    for (n, e) in events.iter().enumerate() {
        if n > 0 {
            out.push(b',');
        }
        write!(out, "{{\"timestamp\":{},\"message\":\"", e.timestamp).expect("writing to a Vec");
        escape_json_with(out, text.get(e.message.clone()), &mut scratch);
        out.extend_from_slice(b"\"}");
    }
    out.extend_from_slice(b"]}");
}

/// A bit for each byte of `block` that JSON needs escaped: below 0x20, `"` or `\`.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn needs_escape(block: &[u8; 16]) -> u32 {
    use std::arch::x86_64::*;
    // SAFETY: SSE2 is part of x86_64 (every intrinsic here needs only it); the load reads
    // exactly the 16 bytes of `block`.
    unsafe {
        let v = _mm_loadu_si128(block.as_ptr().cast());
        let ctl = _mm_cmpeq_epi8(_mm_max_epu8(v, _mm_set1_epi8(0x1f)), _mm_set1_epi8(0x1f));
        let q = _mm_cmpeq_epi8(v, _mm_set1_epi8(b'"' as i8));
        let bs = _mm_cmpeq_epi8(v, _mm_set1_epi8(b'\\' as i8));
        _mm_movemask_epi8(_mm_or_si128(ctl, _mm_or_si128(q, bs))) as u32
    }
}

/// The same, eight bytes at a time in a `u64` (exact: no borrow crosses bytes). Where SSE2 is not
/// there; on x86_64 the tests hold the two to the same answers.
#[cfg(not(target_arch = "x86_64"))]
#[inline(always)]
fn needs_escape(block: &[u8; 16]) -> u32 {
    needs_escape_swar(block)
}

#[cfg_attr(target_arch = "x86_64", allow(dead_code))]
#[inline(always)]
fn needs_escape_swar(block: &[u8; 16]) -> u32 {
    const LOW7: u64 = 0x7f7f_7f7f_7f7f_7f7f;
    const ONES: u64 = 0x0101_0101_0101_0101;
    // The high bit of each byte that is zero (7-bit sums do not carry into the next byte).
    let zero = |v: u64| !((v & LOW7).wrapping_add(LOW7) | v) & !LOW7;
    let word = |w: u64| {
        let m = zero(w & (ONES * 0xe0)) | zero(w ^ (ONES * b'"' as u64)) | zero(w ^ (ONES * b'\\' as u64));
        // The high bit of byte j moved to bit j.
        ((m >> 7).wrapping_mul(0x0102_0408_1020_4080) >> 56) as u32
    };
    let (lo, hi) = block.split_at(8);
    word(u64::from_le_bytes(lo.try_into().expect("8 bytes")))
        | word(u64::from_le_bytes(hi.try_into().expect("8 bytes"))) << 8
}

/// `c`'s escape (`c` is below 0x20, `"` or `\`), written as 8 bytes, and its length.
#[inline(always)]
fn escape_of(c: u8) -> ([u8; 8], usize) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    match c {
        b'"' => (*b"\\\"      ", 2),
        b'\\' => (*b"\\\\      ", 2),
        b'\n' => (*b"\\n      ", 2),
        b'\r' => (*b"\\r      ", 2),
        b'\t' => (*b"\\t      ", 2),
        0x08 => (*b"\\b      ", 2),
        0x0c => (*b"\\f      ", 2),
        c => (
            [
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[(c >> 4) as usize],
                HEX[(c & 15) as usize],
                0,
                0,
            ],
            6,
        ),
    }
}

/// Appends `s` to `out` as the inside of a JSON string: `"`, `\` and the control characters
/// escaped, everything else (UTF-8 included) as it is.
pub fn escape_json_into(out: &mut Vec<u8>, s: &str) {
    escape_json_with(out, s.as_bytes(), &mut [0; SCRATCH]);
}

/// Bytes gathered before they are appended to the output.
const FLUSH_AT: usize = 4096;
/// The scratch buffer's size: a block starts below FLUSH_AT, and may add 16 escapes of 6 bytes
/// (`\u00XX`) and then a 16-byte copy.
const SCRATCH: usize = FLUSH_AT + 16 * 6 + 16;

/// [`escape_json_into`] of UTF-8 bytes (an event's message), with a scratch buffer the caller
/// keeps across messages (so it is not zeroed for each).
///
/// The input is looked at 16 bytes at a time (SSE2 on x86_64): a block without a byte to escape is
/// copied whole; in one with some, each is found from the block's bit mask, the bytes before it
/// are already in place, and its escape is written. Bytes are gathered in the scratch buffer and
/// appended to `out` 4 KiB at a time, since event-log JSON has a `"` every few bytes and a `Vec`
/// append per run and per escape cost more than the scan. (A branch-free loop over every byte
/// measured twice as slow on event logs; 8 bytes at a time in a `u64`, restarting after each
/// escape, twice as slow as this on event logs and 1.6 times on the synthetic data, both at the
/// release profile's `opt-level = "s"`.)
fn escape_json_with(out: &mut Vec<u8>, b: &[u8], buf: &mut [u8; SCRATCH]) {
    out.reserve(b.len());
    let (mut n, mut i) = (0, 0);
    // Fixed-size copies (`[u8; N]` to `[u8; N]`) throughout: a copy whose length the compiler
    // does not see is a call to memmove, which was 7 % of the CPU.
    while let Some(block) = b[i..].first_chunk::<16>() {
        if n >= FLUSH_AT {
            out.extend_from_slice(&buf[..n]);
            n = 0;
        }
        *to16(buf, n) = *block;
        let mut m = needs_escape(block);
        if m == 0 {
            (n, i) = (n + 16, i + 16);
            continue;
        }
        // The block with 16 bytes after it, so that the rest of it after an escape is a fixed
        // copy of 16 bytes (only those before the next escape count).
        let mut padded = [0u8; 32];
        *padded.first_chunk_mut::<16>().expect("32 bytes") = *block;
        // The block's bytes from `done` on are copied at `n`, up to the next escape.
        let mut done = 0;
        while m != 0 {
            let k = m.trailing_zeros() as usize;
            m &= m - 1;
            n += k - done;
            let (e, len) = escape_of(block[k]);
            *buf[n..].first_chunk_mut::<8>().expect("scratch room") = e;
            n += len;
            done = k + 1;
            *to16(buf, n) = *padded[done..].first_chunk::<16>().expect("32 bytes");
        }
        n += 16 - done;
        i += 16;
    }
    for &c in &b[i..] {
        if c < 0x20 || c == b'"' || c == b'\\' {
            let (e, len) = escape_of(c);
            *buf[n..].first_chunk_mut::<8>().expect("scratch room") = e;
            n += len;
        } else {
            buf[n] = c;
            n += 1;
        }
    }
    out.extend_from_slice(&buf[..n]);
}

/// The 16 bytes of the scratch buffer at `n` (below the flush point, plus the room `SCRATCH`
/// keeps for a block's escapes).
#[inline(always)]
fn to16(buf: &mut [u8; SCRATCH], n: usize) -> &mut [u8; 16] {
    buf[n..].first_chunk_mut::<16>().expect("scratch room")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn escaped(s: &str) -> String {
        let mut out = Vec::new();
        escape_json_into(&mut out, s);
        String::from_utf8(out).expect("escaping keeps UTF-8")
    }

    #[test]
    fn every_byte_that_json_forbids_is_escaped_at_every_position() {
        // Each special byte at each offset of a word, among plain, multi-byte and 0x7f/0x80 bytes,
        // so the word-at-a-time scan and the byte tail are both tried; serde_json reads it back.
        let specials = ['"', '\\', '\n', '\r', '\t', '\u{8}', '\u{c}', '\0', '\u{1f}', '\u{1}'];
        for special in specials {
            for at in 0..20 {
                for filler in ["a", "é", "\u{7f}", "ü ", "!#"] {
                    let mut s: String = filler.repeat(24);
                    let cut = s.char_indices().map(|(i, _)| i).nth(at).unwrap_or(s.len());
                    s.insert(cut, special);
                    let e = escaped(&s);
                    let back: String = serde_json::from_str(&format!("\"{e}\"")).expect(&e);
                    assert_eq!(back, s, "{e}");
                    assert!(!e.bytes().any(|c| c < 0x20), "{e}");
                }
            }
        }
        assert_eq!(
            escaped("plain text, no escapes at all"),
            "plain text, no escapes at all"
        );
        assert_eq!(escaped("\u{1}"), "\\u0001");
        assert_eq!(escaped("{\"a\":\"b\\c\"}"), "{\\\"a\\\":\\\"b\\\\c\\\"}");
    }

    #[test]
    fn the_portable_mask_finds_the_same_bytes_as_sse2() {
        // Every byte value at every position, among plain and high bytes.
        for c in 0..=255u8 {
            for at in 0..16 {
                for filler in [b'a', 0x7f, 0x80, 0xff, b' ', 0x21] {
                    let mut block = [filler; 16];
                    block[at] = c;
                    let want = block
                        .iter()
                        .enumerate()
                        .filter(|&(_, &b)| b < 0x20 || b == b'"' || b == b'\\')
                        .fold(0u32, |m, (i, _)| m | 1 << i);
                    assert_eq!(needs_escape_swar(&block), want, "{block:?}");
                    assert_eq!(needs_escape(&block), want, "{block:?}");
                }
            }
        }
    }

    #[test]
    fn long_messages_escape_across_the_scratch_buffer_flush() {
        // Escapes of every length just before, at and after each point where the scratch buffer
        // is appended to the output (a word's clean bytes followed by a 6-byte escape included).
        // Leading `"`s (two bytes out for one in) shift the output against the input's words.
        for special in ["\u{1}", "\"", "\u{1}\u{1}\u{1}"] {
            for (shift, before) in (0..8).flat_map(|shift| (4070..4110).map(move |before| (shift, before))) {
                for after in [0, 3, 9, 5000] {
                    let s = format!(
                        "{}{}{special}{}",
                        "\"".repeat(shift),
                        "a".repeat(before),
                        "b".repeat(after)
                    );
                    let back: String = serde_json::from_str(&format!("\"{}\"", escaped(&s))).unwrap();
                    assert_eq!(back, s);
                }
            }
        }
        // Blocks whose 16 bytes all take six (`\u0001`), starting at every point just before the
        // flush: the most a block can add to the scratch buffer.
        // Leading `"`s (two bytes out for one in) put the block at every offset of the buffer.
        for (shift, before) in (0..16).flat_map(|shift| (4064..4100).map(move |before| (shift, before))) {
            let s = "\"".repeat(shift) + &"a".repeat(before) + &"\u{1}".repeat(64);
            let back: String = serde_json::from_str(&format!("\"{}\"", escaped(&s))).unwrap();
            assert_eq!(back, s);
        }
        let dense = "\u{1}x".repeat(5000);
        let back: String = serde_json::from_str(&format!("\"{}\"", escaped(&dense))).unwrap();
        assert_eq!(back, dense);
    }

    #[test]
    fn escaping_matches_serde_json_on_random_text() {
        // A deterministic mix of every ASCII byte and some multi-byte characters.
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let alphabet: Vec<char> = (0u8..128).map(char::from).chain("éü€😀".chars()).collect();
        for len in [0usize, 1, 7, 8, 9, 15, 16, 17, 100, 1000, 5000, 9000] {
            for _ in 0..50 {
                let s: String = (0..len)
                    .map(|_| {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        alphabet[(x % alphabet.len() as u64) as usize]
                    })
                    .collect();
                let back: String = serde_json::from_str(&format!("\"{}\"", escaped(&s))).unwrap();
                assert_eq!(back, s);
            }
        }
    }

    #[test]
    fn the_body_is_the_put_log_events_request_in_order() {
        // Messages are ranges of one text; bytes between them (a dropped newline) are not sent.
        let mut text = EventText::default();
        let first = "{\"Event\":\"SparkListenerTaskEnd\"}";
        text.push(first.as_bytes());
        text.push(b"\n");
        text.push("line\twith\ttabs é".as_bytes());
        let events = vec![
            Event {
                timestamp: 1_700_000_000_000,
                message: 0..first.len(),
            },
            Event {
                timestamp: 1_700_000_000_001,
                message: first.len() + 1..text.end(),
            },
        ];
        let mut body = Vec::new();
        put_log_events_body(&mut body, "/aws/emr \"x\"", "a/b", &events, &text);
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "logGroupName": "/aws/emr \"x\"",
                "logStreamName": "a/b",
                "logEvents": [
                    {"timestamp": 1_700_000_000_000i64, "message": "{\"Event\":\"SparkListenerTaskEnd\"}"},
                    {"timestamp": 1_700_000_000_001i64, "message": "line\twith\ttabs é"},
                ]
            })
        );
        // Appended: a reused buffer is cleared by the caller.
        body.clear();
        put_log_events_body(&mut body, "g", "s", &[], &text);
        let empty: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(empty["logEvents"], serde_json::json!([]));
    }
}
