//! Log records: which lines of a log belong together, and when a record says it was written.
//!
//! CloudWatch Logs is read one event at a time, so a Java stack trace or a Python traceback must
//! be one event, not forty. A [`RecordRule`] says where records start. The buffer keeps a record's
//! lines in one chunk (for CloudWatch it waits for a file's last record until the next one starts,
//! or the file has been quiet for the source's `multiline_flush`; see `buffer::ChunkStore::append`),
//! and cuts full chunks at record starts, so a record is split across chunks only when it alone is
//! larger than one. The CloudWatch output joins the lines of a record into one event with the same
//! rule. Outputs that store bytes (files, S3) are not changed at all: the rule only moves where full
//! chunks end.
//!
//! The built-in rule ([`RecordRule::Auto`]) recognises what Spark's containers write, with no
//! per-file setting: log4j 2 text with Spark's default pattern (a record starts with its date; a
//! throwable follows on lines like `java.lang.IllegalStateException: boom`, `\tat …`,
//! `Caused by: …`, `\t... 12 more`), Python tracebacks (`Traceback (most recent call last):`,
//! indented frames, the final `ValueError: boom`, chained exceptions, and a traceback inside a
//! Java exception's message), and Spark 4's structured logging (one JSON object per line). It
//! does this by recognising continuation lines, so a plain log stays one record per line.

use std::borrow::Cow;

use crate::config::Records;

/// Where records start.
#[derive(Debug, Clone, Default)]
pub enum RecordRule {
    /// Every line is a record (`multiline = "off"`).
    #[default]
    Lines,
    /// The built-in rule for log4j, Python tracebacks and JSON lines (see the module docs).
    Auto,
    /// A record starts at each line this expression matches (`multiline_start`); the lines
    /// that do not match continue the record before them.
    Start(regex_lite::Regex),
}

impl RecordRule {
    /// The rule a configuration describes (validation has compiled its expression).
    pub fn new(records: &Records) -> RecordRule {
        match records {
            Records::Lines => RecordRule::Lines,
            Records::Auto => RecordRule::Auto,
            Records::Start(re) => match regex_lite::Regex::new(re) {
                Ok(r) => RecordRule::Start(r),
                Err(e) => unreachable!("validated expression {re:?}: {e}"),
            },
        }
    }

    /// Whether records can span several lines (so the last one of a file is held back).
    pub fn is_multiline(&self) -> bool {
        !matches!(self, RecordRule::Lines)
    }

    /// Whether `line` (without its newline) starts a record; `prev` is the line before it, if
    /// any (a record always starts at the first line).
    pub fn starts_record(&self, line: &[u8], prev: Option<&[u8]>) -> bool {
        let Some(prev) = prev else { return true };
        match self {
            RecordRule::Lines => true,
            RecordRule::Start(re) => re.is_match(&text(line)),
            RecordRule::Auto => !continues(line, || traceback_is_nested(prev)),
        }
    }

    /// [`RecordRule::starts_record`] after a line known only by what the rule needs of it.
    pub fn starts_record_after(&self, line: &[u8], prev: PrevLine) -> bool {
        match self {
            RecordRule::Lines => true,
            RecordRule::Start(re) => re.is_match(&text(line)),
            RecordRule::Auto => !continues(line, || prev.nests_traceback),
        }
    }

    /// How many leading bytes of `data` (whole lines) continue the record whose last line was
    /// `prev`: the lines before the first one that starts a record.
    pub fn continuation_len(&self, data: &[u8], prev: PrevLine) -> usize {
        if !self.is_multiline() {
            return 0;
        }
        let mut at = 0;
        let mut prev_line: Option<&[u8]> = None;
        while at < data.len() {
            let end = memchr::memchr(b'\n', &data[at..]).map_or(data.len(), |i| at + i + 1);
            let body = &data[at..end];
            let body = body.strip_suffix(b"\n").unwrap_or(body);
            let starts = match prev_line {
                None => self.starts_record_after(body, prev),
                Some(p) => self.starts_record(body, Some(p)),
            };
            if starts {
                break;
            }
            prev_line = Some(body);
            at = end;
        }
        at
    }

    /// Where the complete records of `data` (whole lines, ending with a newline) end: the start
    /// of its last record, which may continue in what follows. 0 when `data` holds one record.
    /// With one record per line, everything is complete.
    pub fn complete_prefix(&self, data: &[u8]) -> usize {
        if !self.is_multiline() {
            return data.len();
        }
        let body = data.strip_suffix(b"\n").unwrap_or(data);
        let mut end = body.len();
        // Walk back line by line: the last line that starts a record.
        loop {
            let start = memchr::memrchr(b'\n', &body[..end]).map_or(0, |i| i + 1);
            if start == 0 {
                return 0;
            }
            let line = &body[start..end];
            let prev_start = memchr::memrchr(b'\n', &body[..start - 1]).map_or(0, |i| i + 1);
            if self.starts_record(line, Some(&body[prev_start..start - 1])) {
                return start;
            }
            end = start - 1;
        }
    }

    /// The offset in `data` (whole lines) of the last record start at or before `limit`, if one
    /// is after the first byte: where a full chunk is cut so that no record spans two chunks.
    pub fn last_start_within(&self, data: &[u8], limit: usize) -> Option<usize> {
        let end = memchr::memrchr(b'\n', &data[..limit.min(data.len())])? + 1;
        if end == data.len() || self.starts_record(next_line(&data[end..]), Some(last_line(&data[..end]))) {
            return Some(end);
        }
        match self.complete_prefix(&data[..end]) {
            0 => None,
            n => Some(n),
        }
    }
}

fn next_line(data: &[u8]) -> &[u8] {
    memchr::memchr(b'\n', data).map_or(data, |i| &data[..i])
}

/// The last line of `data` (lines ending with a newline), without its newline.
pub fn last_line(data: &[u8]) -> &[u8] {
    let body = data.strip_suffix(b"\n").unwrap_or(data);
    memchr::memrchr(b'\n', body).map_or(body, |i| &body[i + 1..])
}

fn text(line: &[u8]) -> Cow<'_, str> {
    String::from_utf8_lossy(line)
}

/// What a rule needs to know of the line before another one (kept for a file's last line, whose
/// bytes are gone by the time the next line arrives).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PrevLine {
    /// A Python traceback after it continues its record (see `traceback_is_nested`).
    nests_traceback: bool,
}

impl PrevLine {
    /// What the rule needs of `line` (without its newline).
    pub fn of(line: &[u8]) -> PrevLine {
        PrevLine {
            nests_traceback: traceback_is_nested(line),
        }
    }
}

/// The built-in rule: whether `line` continues the record that the line before it belongs to
/// (`nested`: whether a traceback after that line is part of its record).
fn continues(line: &[u8], nested: impl FnOnce() -> bool) -> bool {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    match line.first() {
        // A blank line inside a trace, indented frames and messages (`\tat`, `  File`).
        None | Some(b' ' | b'\t') => true,
        Some(_) => {
            line.starts_with(b"Caused by: ")
                || line.starts_with(b"Suppressed: ")
                || is_exception_header(line)
                || line.starts_with(b"During handling of the above exception, another exception occurred:")
                || line.starts_with(b"The above exception was the direct cause of the following exception:")
                || (line.starts_with(b"Traceback (most recent call last):") && nested())
        }
    }
}

/// A Python traceback inside a record: after a blank line (chained exceptions), after an
/// exception's name (PySpark's `PythonException: An exception was thrown from the Python
/// worker:`), or after "Please see the stack trace below." inside a Java exception's message.
fn traceback_is_nested(prev: &[u8]) -> bool {
    let prev = prev.strip_suffix(b"\r").unwrap_or(prev);
    prev.iter().all(u8::is_ascii_whitespace)
        || is_exception_header(prev)
        || prev.trim_ascii_end().ends_with(b"stack trace below.")
}

/// `java.lang.IllegalStateException: boom`, `org.apache.spark.SparkException`, `ValueError: x`,
/// `py4j.protocol.Py4JJavaError: An error occurred…`: a (dotted) name ending in Exception, Error,
/// Throwable, Exit, Interrupt or Warning, then `: ` or the line's end.
fn is_exception_header(line: &[u8]) -> bool {
    let name_len = line
        .iter()
        .position(|b| !(b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'$')))
        .unwrap_or(line.len());
    let (name, rest) = line.split_at(name_len);
    if name.is_empty() || !(rest.is_empty() || rest.starts_with(b":")) {
        return false;
    }
    let last = name.rsplit(|&b| b == b'.').next().unwrap_or(name);
    const ENDINGS: [&[u8]; 6] = [b"Exception", b"Error", b"Throwable", b"Exit", b"Interrupt", b"Warning"];
    last.first().is_some_and(u8::is_ascii_uppercase) && ENDINGS.iter().any(|e| last.ends_with(e))
}

/// The time a record says it was written, in milliseconds since the epoch: log4j's date as Spark
/// configures it (`yy/MM/dd HH:mm:ss`), an ISO-like `yyyy-MM-dd HH:mm:ss[,.SSS]` (also with `T`),
/// both read in the zone `offset_secs` east of UTC; or the `ts` of a JSON line (RFC 3339, its own
/// offset; without one, `offset_secs`).
pub fn record_timestamp(first_line: &str, offset_secs: i32) -> Option<i64> {
    use chrono::NaiveDateTime;
    // What a terminal shows: Spark's console progress bar (`\r[Stage 0:> … ]\r`) can precede a
    // log line on the same line.
    let first_line = first_line.trim_end_matches('\r').rsplit('\r').next().unwrap_or("");
    let local = |t: NaiveDateTime| t.and_utc().timestamp_millis() - i64::from(offset_secs) * 1000;
    if first_line.starts_with('{') {
        return json_ts(first_line, offset_secs);
    }
    if let Some(head) = first_line.get(..17)
        && let Ok(t) = NaiveDateTime::parse_from_str(head, "%y/%m/%d %H:%M:%S")
    {
        return Some(local(t));
    }
    let head = first_line.get(..19)?.replace('T', " ");
    let t = NaiveDateTime::parse_from_str(&head, "%Y-%m-%d %H:%M:%S").ok()?;
    let b = first_line.as_bytes();
    let ms = if b.len() >= 23 && (b[19] == b',' || b[19] == b'.') && b[20..23].iter().all(u8::is_ascii_digit) {
        first_line[20..23].parse::<i64>().unwrap_or(0)
    } else {
        0
    };
    Some(local(t) + ms)
}

/// The `"ts"` of a JSON log line (Spark's structured logging: `{"ts":"2024-06-14T16:43:38.148Z",…}`).
fn json_ts(line: &str, offset_secs: i32) -> Option<i64> {
    // memchr's SIMD search: `str::find` was 5 % of the CloudWatch output's CPU on event-log
    // lines, which have no "ts" and are searched to their end.
    static TS_KEY: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
        std::sync::LazyLock::new(|| memchr::memmem::Finder::new(b"\"ts\""));
    let at = TS_KEY.find(line.as_bytes())? + 4;
    let rest = line[at..]
        .trim_start()
        .strip_prefix(':')?
        .trim_start()
        .strip_prefix('"')?;
    let value = &rest[..rest.find('"')?];
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(value) {
        return Some(t.timestamp_millis());
    }
    let t = chrono::NaiveDateTime::parse_from_str(value, "%Y-%m-%dT%H:%M:%S%.f")
        .or_else(|_| chrono::NaiveDateTime::parse_from_str(value, "%Y-%m-%d %H:%M:%S%.f"))
        .ok()?;
    Some(t.and_utc().timestamp_millis() - i64::from(offset_secs) * 1000)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The records of `text` by the built-in rule, each with its newlines.
    fn records(rule: &RecordRule, text: &str) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        let mut prev: Option<&str> = None;
        for line in text.split_inclusive('\n') {
            let body = line.strip_suffix('\n').unwrap_or(line);
            if rule.starts_record(body.as_bytes(), prev.map(str::as_bytes)) {
                out.push(String::new());
            }
            out.last_mut().expect("first line starts one").push_str(line);
            prev = Some(body);
        }
        out
    }

    const LOG4J: &str = "\
26/12/01 10:00:00 INFO SparkContext: Running Spark version 4.0.0
26/12/01 10:00:01 ERROR Executor: Exception in task 0.0 in stage 0.0 (TID 0)
org.apache.spark.api.python.PythonException: Traceback (most recent call last):
  File \"/opt/spark/python/pyspark/worker.py\", line 1247, in main
    process()
ValueError: boom

\tat org.apache.spark.api.python.BasePythonRunner$ReaderIterator.handlePythonException(PythonRunner.scala:572)
\tat scala.collection.Iterator.foreach(Iterator.scala:943)
Caused by: java.lang.IllegalStateException: inner
\tat a.b.C.d(C.java:1)
\t... 12 more
26/12/01 10:00:02 WARN TaskSetManager: Lost task 0.0 in stage 0.0
Traceback (most recent call last):
  File \"/tmp/job.py\", line 10, in <module>
    df.collect()
pyspark.errors.exceptions.captured.PythonException:
  An exception was thrown from the Python worker. Please see the stack trace below.
Traceback (most recent call last):
  File \"/tmp/job.py\", line 5, in f
ValueError: boom
pyspark.errors.exceptions.captured.PythonException: An exception was thrown from the Python worker:
Traceback (most recent call last):
  File \"/tmp/job.py\", line 5, in f
ValueError: boom

During handling of the above exception, another exception occurred:

Traceback (most recent call last):
  File \"/tmp/job.py\", line 12, in <module>
RuntimeError: again
{\"ts\":\"2026-12-01T10:00:03.123Z\",\"level\":\"INFO\",\"msg\":\"a\\nb\",\"logger\":\"X\"}
plain line
";

    #[test]
    fn the_built_in_rule_groups_stack_traces_tracebacks_and_keeps_json_lines_and_plain_lines_apart() {
        let r = records(&RecordRule::Auto, LOG4J);
        assert_eq!(r.concat(), LOG4J, "grouping never alters a byte");
        let firsts: Vec<&str> = r.iter().map(|x| x.lines().next().unwrap()).collect();
        assert_eq!(
            firsts,
            [
                "26/12/01 10:00:00 INFO SparkContext: Running Spark version 4.0.0",
                "26/12/01 10:00:01 ERROR Executor: Exception in task 0.0 in stage 0.0 (TID 0)",
                "26/12/01 10:00:02 WARN TaskSetManager: Lost task 0.0 in stage 0.0",
                "Traceback (most recent call last):",
                "{\"ts\":\"2026-12-01T10:00:03.123Z\",\"level\":\"INFO\",\"msg\":\"a\\nb\",\"logger\":\"X\"}",
                "plain line",
            ]
        );
        assert!(r[1].ends_with("\t... 12 more\n") && r[1].contains("ValueError: boom\n\n\tat"));
        assert!(r[3].ends_with("RuntimeError: again\n") && r[3].matches("Traceback").count() == 4);
    }

    #[test]
    fn a_progress_bar_before_a_traceback_starts_a_record_and_the_traceback_stays_whole() {
        // What a real PySpark driver wrote when its last stage ran long enough for the console
        // progress bar to be drawn, and then failed: the bar and the traceback share a line.
        let text = "{\"ts\":\"2026-12-02T06:26:11.993Z\",\"level\":\"ERROR\",\"msg\":\"aborting job\"}\n\
                    \r[Stage 2:>                (0 + 1) / 1]\rTraceback (most recent call last):\n\
                    \x20 File \"/job.py\", line 38, in <module>\n\
                    pyspark.errors.exceptions.captured.PythonException: An exception was thrown from the Python worker:\n\
                    Traceback (most recent call last):\n\
                    \x20 File \"/job.py\", line 23, in boom\n\
                    ValueError: boom from the UDF\n";
        let r = records(&RecordRule::Auto, text);
        assert_eq!(r.len(), 2, "{r:?}");
        assert!(
            r[1].starts_with("\r[Stage 2:>") && r[1].matches("Traceback").count() == 2,
            "{r:?}"
        );
        assert_eq!(r.concat(), text);
    }

    #[test]
    fn without_multiline_every_line_is_a_record_and_a_start_pattern_decides_alone() {
        assert_eq!(records(&RecordRule::Lines, LOG4J).len(), LOG4J.lines().count());
        let rule = RecordRule::Start(regex_lite::Regex::new(r"^\[\d+\]").unwrap());
        let text = "[1] a\n  b\nc\n[2] d\n";
        assert_eq!(records(&rule, text), ["[1] a\n  b\nc\n", "[2] d\n"]);
        // Lines before the first match form a record of their own.
        assert_eq!(records(&rule, "x\n[1] a\n"), ["x\n", "[1] a\n"]);
    }

    #[test]
    fn the_complete_prefix_ends_before_the_last_record() {
        let a = RecordRule::Auto;
        let text = "26/12/01 10:00:00 INFO a\n26/12/01 10:00:01 ERROR b\njava.lang.XException: y\n\tat z\n";
        assert_eq!(a.complete_prefix(text.as_bytes()), 25);
        assert_eq!(a.complete_prefix(b"one record\n\tat x\n"), 0);
        assert_eq!(a.complete_prefix(b"only\n"), 0);
        assert_eq!(RecordRule::Lines.complete_prefix(text.as_bytes()), text.len());
        // A blank line inside a trace does not end it.
        assert_eq!(a.complete_prefix(b"a\nb\n\tat c\n\n\tat d\n"), 2);
    }

    #[test]
    fn a_full_chunk_is_cut_at_a_record_start() {
        let a = RecordRule::Auto;
        let text = b"a\n\tat 1\n\tat 2\nb\n\tat 3\n";
        // Up to byte 17 ("a…\tat 2\nb\n\t"): the last start within is "b" at 14.
        assert_eq!(a.last_start_within(text, 17), Some(14));
        // Exactly at a record's end: cut there.
        assert_eq!(a.last_start_within(text, 14), Some(14));
        // Inside the first record: no start after byte 0.
        assert_eq!(a.last_start_within(text, 10), None);
        assert_eq!(RecordRule::Lines.last_start_within(text, 10), Some(8));
    }

    #[test]
    fn exception_headers() {
        for yes in [
            "java.lang.IllegalStateException: boom",
            "org.apache.spark.SparkException",
            "ValueError: boom",
            "py4j.protocol.Py4JJavaError: An error occurred while calling o42.collect.",
            "KeyboardInterrupt",
            "pyspark.errors.exceptions.captured.PythonException: ",
        ] {
            assert!(is_exception_header(yes.as_bytes()), "{yes}");
        }
        for no in [
            "26/12/01 10:00:00 ERROR Executor: x",
            "errors: 3",
            "Some Error: spaced",
            "{\"ts\":1}",
            "",
        ] {
            assert!(!is_exception_header(no.as_bytes()), "{no}");
        }
    }

    #[test]
    fn timestamps_in_a_zone_and_from_json() {
        assert_eq!(
            record_timestamp("24/11/26 14:14:02 WARN NativeCodeLoader: x", 0),
            Some(1_732_630_442_000)
        );
        // The same wall-clock time two hours east of UTC is two hours earlier.
        assert_eq!(
            record_timestamp("24/11/26 14:14:02 WARN x", 7200),
            Some(1_732_630_442_000 - 7_200_000)
        );
        assert_eq!(
            record_timestamp("2024-11-26 14:14:02,345 INFO x", 0),
            Some(1_732_630_442_345)
        );
        assert_eq!(
            record_timestamp("2024-11-26T14:14:02 INFO x", 0),
            Some(1_732_630_442_000)
        );
        assert_eq!(
            record_timestamp("{\"ts\":\"2024-11-26T14:14:02.345Z\",\"msg\":\"x\"}", 3600),
            Some(1_732_630_442_345)
        );
        assert_eq!(
            record_timestamp("{\"level\":\"INFO\", \"ts\" : \"2024-11-26T16:14:02.345+02:00\"}", 0),
            Some(1_732_630_442_345)
        );
        assert_eq!(record_timestamp("{\"msg\":\"no time\"}", 0), None);
        assert_eq!(record_timestamp("\tat org.apache.spark.Foo", 0), None);
        assert_eq!(record_timestamp("Traceback (most recent call last):", 0), None);
        // Behind Spark's console progress bar.
        assert_eq!(
            record_timestamp("\r[Stage 0:>      (0 + 1) / 1]\r24/11/26 14:14:02 ERROR Executor: x", 0),
            Some(1_732_630_442_000)
        );
    }
}
