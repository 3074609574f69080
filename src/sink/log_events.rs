//! The body of a PutLogEvents request (AWS JSON 1.1), written by logship instead of the SDK.
//!
//! Why: the SDK turns every event into its own `InputLogEvent` string and escapes it byte by byte
//! (a capacity check and a push per byte). On Spark's JSON lines, where a `"` comes every few
//! bytes, that was 29 % of the CloudWatch output's CPU, more than the SHA-256 of the body that
//! SigV4 needs. Here the messages are escaped straight into one buffer, eight bytes at a time
//! where nothing needs escaping. The SDK still signs, sends, retries and reads the answer: the
//! body replaces the one it serialized (for an empty event list) before signing
//! ([`CloudWatchSink`](super::cloudwatch::CloudWatchSink)).

use std::io::Write;

use super::cloudwatch::Event;

/// Appends to `out` the request body of PutLogEvents for `events` (in the order given: the caller
/// sorts them).
pub fn put_log_events_body(out: &mut Vec<u8>, group: &str, stream: &str, events: &[Event]) {
    // Escaping grows Spark's JSON lines by about a tenth; a few more bytes per event for the keys.
    let estimate: usize = events.iter().map(|e| e.message.len() + e.message.len() / 8 + 40).sum();
    out.reserve(64 + group.len() + stream.len() + estimate);
    let mut scratch = [0; SCRATCH];
    out.extend_from_slice(b"{\"logGroupName\":\"");
    escape_json_into(out, group);
    out.extend_from_slice(b"\",\"logStreamName\":\"");
    escape_json_into(out, stream);
    out.extend_from_slice(b"\",\"logEvents\":[");
    for (n, e) in events.iter().enumerate() {
        if n > 0 {
            out.push(b',');
        }
        write!(out, "{{\"timestamp\":{},\"message\":\"", e.timestamp).expect("writing to a Vec");
        escape_json_with(out, &e.message, &mut scratch);
        out.extend_from_slice(b"\"}");
    }
    out.extend_from_slice(b"]}");
}

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGHS: u64 = 0x8080_8080_8080_8080;

/// A bit set in the high bit of each byte of `w` that is below 0x20, `"` or `\`. Bytes above a
/// flagged one may be flagged wrongly (a borrow), never bytes below it: the lowest flag is exact.
fn escape_mask(w: u64) -> u64 {
    let zero_in = |v: u64| v.wrapping_sub(ONES) & !v;
    (w.wrapping_sub(ONES * 0x20) & !w | zero_in(w ^ (ONES * b'"' as u64)) | zero_in(w ^ (ONES * b'\\' as u64))) & HIGHS
}

/// What follows the `\` of a byte's escape (`u` for `\u00XX`), or 0 for a byte that stays.
const ESCAPE: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut c = 0;
    while c < 0x20 {
        t[c] = b'u';
        c += 1;
    }
    t[b'"' as usize] = b'"';
    t[b'\\' as usize] = b'\\';
    t[b'\n' as usize] = b'n';
    t[b'\r' as usize] = b'r';
    t[b'\t' as usize] = b't';
    t[0x08] = b'b';
    t[0x0C] = b'f';
    t
};

/// Appends `s` to `out` as the inside of a JSON string: `"`, `\` and the control characters
/// escaped, everything else (UTF-8 included) as it is.
pub fn escape_json_into(out: &mut Vec<u8>, s: &str) {
    escape_json_with(out, s, &mut [0; SCRATCH]);
}

/// Bytes gathered before they are appended to the output.
const FLUSH_AT: usize = 4096;
/// The scratch buffer's size: a step starts below FLUSH_AT and adds at most 7 bytes of a word (8
/// are copied) and then an escape of at most 6 (`\u00XX`).
const SCRATCH: usize = FLUSH_AT + 16;

/// [`escape_json_into`] with a scratch buffer the caller keeps across messages (so it is not
/// zeroed for each).
///
/// Words of 8 bytes without a byte to escape are copied whole; bytes are gathered in the scratch
/// buffer and appended to `out` 4 KiB at a time, since event-log JSON has a `"` every few bytes
/// and a `Vec` append per run and per escape cost more than the scan. (A branch-free loop over
/// every byte measured twice as slow on event logs.)
fn escape_json_with(out: &mut Vec<u8>, s: &str, buf: &mut [u8; SCRATCH]) {
    let b = s.as_bytes();
    out.reserve(b.len());
    let (mut n, mut i) = (0, 0);
    while i < b.len() {
        if n >= FLUSH_AT {
            out.extend_from_slice(&buf[..n]);
            n = 0;
        }
        if let Some(word) = b.get(i..i + 8) {
            // Copy the word; keep the bytes before the first one that needs escaping.
            buf[n..n + 8].copy_from_slice(word);
            let m = escape_mask(u64::from_le_bytes(word.try_into().expect("8 bytes")));
            let clean = if m == 0 { 8 } else { (m.trailing_zeros() / 8) as usize };
            (n, i) = (n + clean, i + clean);
            if clean == 8 {
                continue;
            }
        }
        let c = b[i];
        i += 1;
        match ESCAPE[c as usize] {
            0 => {
                buf[n] = c;
                n += 1;
            }
            b'u' => {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                buf[n..n + 6].copy_from_slice(&[
                    b'\\',
                    b'u',
                    b'0',
                    b'0',
                    HEX[(c >> 4) as usize],
                    HEX[(c & 15) as usize],
                ]);
                n += 6;
            }
            e => {
                buf[n] = b'\\';
                buf[n + 1] = e;
                n += 2;
            }
        }
    }
    out.extend_from_slice(&buf[..n]);
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
        let events = vec![
            Event {
                timestamp: 1_700_000_000_000,
                message: "{\"Event\":\"SparkListenerTaskEnd\"}".into(),
            },
            Event {
                timestamp: 1_700_000_000_001,
                message: "line\twith\ttabs é".into(),
            },
        ];
        let mut body = Vec::new();
        put_log_events_body(&mut body, "/aws/emr \"x\"", "a/b", &events);
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
        put_log_events_body(&mut body, "g", "s", &[]);
        let empty: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(empty["logEvents"], serde_json::json!([]));
    }
}
