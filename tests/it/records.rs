//! One log record, one CloudWatch event: Spark's log4j text with Java stack traces, PySpark
//! tracebacks and Spark 4's JSON lines, shipped to CloudWatch (moto) and to S3 (s3s) by one
//! config. Each record is one event with its own time; the S3 objects hold the bytes exactly.
//! Records written in pieces, across time keys, across full chunks and across a crash stay whole.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::common::moto::Moto;
use crate::common::s3::{S3Server, collect_s3};
use crate::common::{Daemon, Env, append};

const WAIT: Duration = Duration::from_secs(120);
const GROUP: &str = "spark-logs";

/// Spark's log4j date (`yy/MM/dd HH:mm:ss`) of `ms`, as a clock `offset` seconds east of UTC shows it.
fn log4j_date(ms: i64, offset: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms + offset * 1000)
        .unwrap()
        .naive_utc()
        .format("%y/%m/%d %H:%M:%S")
        .to_string()
}

/// A whole second ten minutes ago (CloudWatch refuses events older than 14 days).
fn base_ms() -> i64 {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as i64;
    (now / 1000 - 600) * 1000
}

/// The driver's stderr as Spark writes it with its default log4j pattern, in records, each with
/// the time it should be sent with (`offset`: the zone of the dates).
fn stderr_records(t: i64, offset: i64) -> Vec<(String, i64)> {
    let d = |s: i64| log4j_date(t + s * 1000, offset);
    vec![
        (format!("{} INFO SparkContext: Running Spark version 4.0.0\n", d(0)), t),
        (
            format!(
                "{} ERROR Executor: Exception in task 0.0 in stage 0.0 (TID 0)\n\
                 org.apache.spark.api.python.PythonException: Traceback (most recent call last):\n  \
                 File \"/opt/spark/python/pyspark/worker.py\", line 1247, in main\n    process()\n\
                 ValueError: boom\n\n\
                 \tat org.apache.spark.api.python.BasePythonRunner$ReaderIterator.handlePythonException(PythonRunner.scala:572)\n\
                 \tat scala.collection.Iterator.foreach(Iterator.scala:943)\n\
                 Caused by: java.lang.IllegalStateException: inner\n\
                 \tat a.b.C.d(C.java:1)\n\
                 \t... 12 more\n",
                d(1)
            ),
            t + 1000,
        ),
        (
            format!("{} WARN TaskSetManager: Lost task 0.0 in stage 0.0 (TID 0)\n", d(2)),
            t + 2000,
        ),
        // The driver's own uncaught exception: no date, so the time of the record before.
        (
            "Traceback (most recent call last):\n  File \"/tmp/job.py\", line 10, in <module>\n    df.collect()\n\
             pyspark.errors.exceptions.captured.PythonException: \n  \
             An exception was thrown from the Python worker. Please see the stack trace below.\n\
             Traceback (most recent call last):\n  File \"/tmp/job.py\", line 5, in f\nValueError: boom\n"
                .to_string(),
            t + 2000,
        ),
        (
            format!("{} INFO ShutdownHookManager: Shutdown hook called\n", d(3)),
            t + 3000,
        ),
    ]
}

/// The driver's stdout with Spark 4's structured logging: JSON lines (an escaped newline inside
/// one), and a line a Python `print` wrote between them.
fn stdout_records(t: i64) -> Vec<(String, i64)> {
    let iso = |ms: i64| {
        chrono::DateTime::from_timestamp_millis(ms)
            .unwrap()
            .format("%Y-%m-%dT%H:%M:%S%.3fZ")
            .to_string()
    };
    let east = chrono::FixedOffset::east_opt(5 * 3600 + 1800).unwrap();
    let t2 = chrono::DateTime::from_timestamp_millis(t + 5_250)
        .unwrap()
        .with_timezone(&east)
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, false);
    vec![
        (
            format!(
                "{{\"ts\":\"{}\",\"level\":\"INFO\",\"msg\":\"two\\nlines\",\"logger\":\"SparkContext\"}}\n",
                iso(t + 4_125)
            ),
            t + 4_125,
        ),
        ("hello from print\n".to_string(), t + 4_125),
        (
            format!(
                "{{\"ts\":\"{t2}\",\"level\":\"ERROR\",\"msg\":\"Task failed\",\"exception\":{{\"class\":\"java.lang.RuntimeException\",\"msg\":\"x\",\"stacktrace\":[{{\"class\":\"a.B\",\"method\":\"c\",\"file\":\"B.java\",\"line\":1}}]}},\"logger\":\"Executor\"}}\n"
            ),
            t + 5_250,
        ),
    ]
}

/// One tail source to CloudWatch (dates read in `zone`) and to S3, following until the signal
/// file; `/metrics` on `metrics` when given.
fn config(
    env: &Env,
    moto: &Moto,
    s3: &S3Server,
    flush: &str,
    chunk_limit: &str,
    zone: &str,
    metrics: Option<&str>,
) -> Vec<String> {
    let metrics = metrics
        .map(|m| format!("[metrics]\nlisten = \"{m}\"\n"))
        .unwrap_or_default();
    env.run_config(&format!(
        r#"
{metrics}
[buffer]
dir = "{{buffer}}"
timekey = "1s"
chunk_limit = "{chunk_limit}"
flush_mode = "interval"
flush_interval = "200ms"
[lifecycle]
signal_file = "{{signal}}"
[[source]]
type = "tail"
paths = ["{{input}}/*/std*"]
multiline_flush = "{flush}"
[[output]]
name = "cw"
type = "cloudwatch"
cloudwatch = {{ log_group = "{GROUP}", log_stream = "%{{tag}}", endpoint = "{}", time_zone = "{zone}" }}
[[output]]
name = "s3"
type = "s3"
path = "spark"
key_format = "%{{path}}/%{{tag}}/%{{time_slice}}_%{{index}}.%{{file_extension}}"
s3 = {{ bucket = "logs", endpoint = "{}", force_path_style = true }}
"#,
        moto.endpoint, s3.endpoint
    ))
}

fn spawn(env: &Env, s3: &S3Server, args: &[String]) -> Daemon {
    let mut cmd = crate::common::logship_cmd();
    // moto takes any credentials; the S3 server checks these.
    cmd.envs(s3.env());
    Daemon::spawn_cmd(cmd, args, env.dir.path())
}

/// The events of a stream: (timestamp, message).
fn events(moto: &Moto, stream: &str) -> Vec<(i64, String)> {
    moto.events(GROUP, stream)
}

/// What the events should be: each record without its last newline, with its time.
fn expected(records: &[(String, i64)]) -> Vec<(i64, String)> {
    records
        .iter()
        .map(|(r, t)| (*t, r.strip_suffix('\n').unwrap().to_string()))
        .collect()
}

#[test]
fn each_record_is_one_event_with_its_own_time_while_s3_gets_the_bytes_written_in_pieces() {
    let moto = Moto::start();
    let s3 = S3Server::start(&["logs"]);
    let env = Env::new();
    let (err, out) = (env.path("driver/stderr"), env.path("driver/stdout"));
    std::fs::create_dir_all(err.parent().unwrap()).unwrap();
    let t = base_ms();
    let err_records = stderr_records(t, 2 * 3600);
    let out_records = stdout_records(t);
    // Nothing is let go by time: a record ends when the next one starts, or at the drain.
    let addr = format!("127.0.0.1:{}", crate::common::free_port());
    let d = spawn(
        &env,
        &s3,
        &config(&env, &moto, &s3, "10m", "32MiB", "+02:00", Some(&addr)),
    );
    // The first two records, and the stack trace's first line only.
    let trace = &err_records[1].0;
    let cut = trace.find("\n\tat org").unwrap() + 1;
    append(&err, err_records[0].0.as_bytes());
    append(&err, &trace.as_bytes()[..cut]);
    d.wait_until("the first record", WAIT, || events(&moto, "driver/stderr").len() == 1);
    // The rest of the trace a time key later: still the same record, held back meanwhile.
    std::thread::sleep(Duration::from_millis(1500));
    append(&err, &trace.as_bytes()[cut..]);
    append(&err, err_records[2].0.as_bytes());
    d.wait_until("the stack trace, once the next record started", WAIT, || {
        events(&moto, "driver/stderr").len() == 2
    });
    assert_eq!(events(&moto, "driver/stderr"), expected(&err_records[..2]));
    let (_, body) = crate::common::http_get(&addr, "/metrics").unwrap();
    let counter =
        |name: &str| crate::common::metric(&body, &format!("logship_cloudwatch_{name}_total{{output=\"cw\"}}"));
    assert_eq!(
        (counter("events_sent"), counter("multiline_records")),
        (Some(2), Some(1)),
        "{body}"
    );
    for (r, _) in &err_records[3..] {
        append(&err, r.as_bytes());
    }
    for (r, _) in &out_records {
        append(&out, r.as_bytes());
    }
    env.signal_end();
    let mut d = d;
    assert_eq!(d.wait_exit(WAIT).code(), Some(0), "{}", d.stderr());
    assert_eq!(events(&moto, "driver/stderr"), expected(&err_records));
    assert_eq!(events(&moto, "driver/stdout"), expected(&out_records));
    // An event joined back with its newline is the record: grouping never alters a byte.
    let joined: String = events(&moto, "driver/stderr")
        .iter()
        .map(|(_, m)| format!("{m}\n"))
        .collect();
    assert_eq!(joined.as_bytes(), std::fs::read(&err).unwrap());
    // S3 holds the files exactly.
    assert_eq!(
        collect_s3(&s3, "spark", "driver/stderr", "text"),
        std::fs::read(&err).unwrap()
    );
    assert_eq!(
        collect_s3(&s3, "spark", "driver/stdout", "text"),
        std::fs::read(&out).unwrap()
    );
    // The counters say what happened, in the summary (and on /metrics).
    let summary = d.summary();
    let cw = &summary["outputs"][0]["events"];
    assert_eq!(cw["events_sent"], 8, "{summary}");
    assert_eq!(cw["multiline_records"], 2, "{summary}");
    assert_eq!(cw["records_untimed"], 2, "{summary}");
}

#[test]
fn the_last_record_of_a_quiet_file_is_sent_after_the_flush_time_without_waiting_for_the_next() {
    let moto = Moto::start();
    let s3 = S3Server::start(&["logs"]);
    let env = Env::new();
    let err = env.path("exec-1/stderr");
    std::fs::create_dir_all(err.parent().unwrap()).unwrap();
    let records = stderr_records(base_ms(), 2 * 3600);
    let d = spawn(&env, &s3, &config(&env, &moto, &s3, "1s", "32MiB", "+02:00", None));
    append(&err, records[1].0.as_bytes());
    // No record follows and nothing ends the run: the flush time lets it go.
    d.wait_until("the stack trace", WAIT, || events(&moto, "exec-1/stderr").len() == 1);
    assert_eq!(events(&moto, "exec-1/stderr"), expected(&records[1..2]));
    env.signal_end();
    let mut d = d;
    assert_eq!(d.wait_exit(WAIT).code(), Some(0), "{}", d.stderr());
}

#[test]
fn full_chunks_end_between_records_and_a_crash_between_batches_repeats_no_record_beyond_one_batch() {
    let moto = Moto::start();
    let s3 = S3Server::start(&["logs"]);
    let env = Env::new();
    let err = env.path("exec-2/stderr");
    std::fs::create_dir_all(err.parent().unwrap()).unwrap();
    let t = base_ms();
    // 6,000 records, every other one a stack trace (2.3 MB): several 1 MiB batches
    // and, with 256 KiB chunks, many full chunks whose ends fall inside records.
    let template = stderr_records(t, 2 * 3600);
    let mut records = Vec::new();
    for i in 0..6_000 {
        let (r, ts) = &template[1 + i % 2];
        records.push((
            r.replacen("in task 0.0", &format!("in task {i}.0"), 1).replacen(
                "Lost task 0.0",
                &format!("Lost task {i}.0"),
                1,
            ),
            *ts,
        ));
    }
    let bytes: String = records.iter().map(|(r, _)| r.as_str()).collect();
    append(&err, bytes.as_bytes());
    let args = config(&env, &moto, &s3, "10m", "256KiB", "+02:00", None);
    let mut cmd = crate::common::logship_cmd();
    cmd.envs(s3.env())
        .env("LOGSHIP_CRASH_AT", "cloudwatch-batch-recorded:2");
    let mut d = Daemon::spawn_cmd(cmd, &args, env.dir.path());
    assert!(
        !d.wait_exit(WAIT).success(),
        "the crash point was reached: {}",
        d.stderr()
    );
    let before = events(&moto, "exec-2/stderr").len();
    assert!(before > 0 && before < records.len(), "{before} events before the crash");
    let d = spawn(&env, &s3, &args);
    env.signal_end();
    let mut d = d;
    assert_eq!(d.wait_exit(WAIT).code(), Some(0), "{}", d.stderr());
    let got = events(&moto, "exec-2/stderr");
    let want = expected(&records);
    // Every record arrived whole; what repeats is at most the batch in flight at the crash.
    let mut seen = std::collections::HashMap::new();
    for (_, m) in &got {
        *seen.entry(m.as_str()).or_insert(0) += 1;
    }
    for (_, m) in &want {
        assert!(seen.contains_key(m.as_str()), "missing or split record: {m:?}");
    }
    assert!(
        got.len() >= want.len() && got.len() - want.len() <= 2_000,
        "{} events for {} records",
        got.len(),
        want.len()
    );
    assert!(seen.values().all(|&n| n <= 2));
    // The S3 objects (one per chunk) each start with a record's first line and hold the bytes.
    let all = collect_s3(&s3, "spark", "exec-2/stderr", "text");
    assert_eq!(all, bytes.as_bytes());
    let keys: Vec<String> = s3.keys("logs");
    assert!(keys.len() >= 5, "{} objects", keys.len());
    let date = log4j_date(t, 2 * 3600);
    let year = &date.as_bytes()[..3];
    for k in keys {
        let o = s3.object("logs", &k).unwrap();
        assert!(o.starts_with(year), "{k} starts inside a record");
    }
}

/// What a terminal shows of a line: the text after its last carriage return (Spark's console
/// progress bar, `\r[Stage 0:> … ]\r`, can precede a log line on the same line).
fn visible(line: &str) -> &str {
    line.trim_end_matches('\r').rsplit('\r').next().unwrap_or("")
}

/// The time of a line starting with Spark's log4j date (`yy/MM/dd HH:mm:ss LEVEL `), in UTC.
fn log4j_time(line: &str) -> Option<i64> {
    let v = visible(line);
    let level = v.get(18..)?.split(' ').next()?;
    if !["TRACE", "DEBUG", "INFO", "WARN", "ERROR", "FATAL"].contains(&level) {
        return None;
    }
    let t = chrono::NaiveDateTime::parse_from_str(v.get(..17)?, "%y/%m/%d %H:%M:%S").ok()?;
    Some(t.and_utc().timestamp_millis())
}

/// The `ts` of a JSON log line.
fn json_time(line: &str) -> Option<i64> {
    let v: serde_json::Value = serde_json::from_str(visible(line)).ok()?;
    Some(
        chrono::DateTime::parse_from_rfc3339(v["ts"].as_str()?)
            .ok()?
            .timestamp_millis(),
    )
}

/// Runs `tests/spark/failing_job.py` (with Spark's default log4j pattern, or with structured
/// logging), its output in `driver/stdout` and `driver/stderr` under the input directory.
fn run_failing_job(env: &Env, structured: bool) {
    use crate::common::python::python_path;
    use crate::common::spark::PYSPARK;
    let py = python_path(&["pyspark"], &[PYSPARK]);
    let dir = env.path("driver");
    std::fs::create_dir_all(&dir).unwrap();
    let mut cmd = std::process::Command::new("python3");
    cmd.arg(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/spark/failing_job.py"))
        .env("PYTHONPATH", &py)
        .env("SPARK_LOCAL_IP", "127.0.0.1")
        .env("TZ", "UTC")
        .stdin(std::process::Stdio::null())
        .stdout(std::fs::File::create(dir.join("stdout")).unwrap())
        .stderr(std::fs::File::create(dir.join("stderr")).unwrap());
    if structured {
        cmd.env(
            "PYSPARK_SUBMIT_ARGS",
            "--conf spark.log.structuredLogging.enabled=true \
             --driver-java-options -Dlog4j2.configurationFile=org/apache/spark/log4j2-json-layout.properties pyspark-shell",
        );
    }
    let st = cmd.status().unwrap();
    assert_eq!(st.code(), Some(1), "the job ends in its uncaught exception");
}

#[test]
fn a_real_pyspark_job_failing_in_a_udf_and_on_the_jvm_gives_one_event_per_record_in_both_log_formats() {
    let _spark = crate::common::spark::exclusive();
    for structured in [false, true] {
        let moto = Moto::start();
        let s3 = S3Server::start(&["logs"]);
        let env = Env::new();
        run_failing_job(&env, structured);
        let d = spawn(&env, &s3, &config(&env, &moto, &s3, "2s", "32MiB", "UTC", None));
        // Main has ended: the drain reads everything and lets the last records go.
        env.signal_end();
        let mut d = d;
        assert_eq!(d.wait_exit(WAIT).code(), Some(0), "{}", d.stderr());
        let file = String::from_utf8(std::fs::read(env.path("driver/stderr")).unwrap()).unwrap();
        let events = events(&moto, "driver/stderr");
        let what = if structured { "structured logging" } else { "log4j text" };
        // Every event is a piece of the file, and together they are every line of it.
        let mut lines_of_events: Vec<&str> = events.iter().flat_map(|(_, m)| m.split('\n')).collect();
        let mut lines_of_file: Vec<&str> = file.strip_suffix('\n').unwrap().split('\n').collect();
        for (_, m) in &events {
            assert!(
                file.contains(&format!("{m}\n")),
                "{what}: an event that is not a piece of the file: {m:?}"
            );
        }
        lines_of_events.sort();
        lines_of_file.sort();
        assert_eq!(
            lines_of_events, lines_of_file,
            "{what}: the events hold every line once"
        );
        // One event per log record: each log4j or JSON line starts exactly one event, with its time.
        let record_lines: Vec<(&str, i64)> = file
            .lines()
            .filter_map(|l| Some((l, log4j_time(l).or_else(|| json_time(l))?)))
            .collect();
        assert!(
            record_lines.len() >= 6,
            "{what}: {} log records in\n{file}",
            record_lines.len()
        );
        for (line, ts) in &record_lines {
            let starting: Vec<&(i64, String)> = events
                .iter()
                .filter(|(_, m)| m.split('\n').next() == Some(*line))
                .collect();
            assert_eq!(starting.len(), 1, "{what}: {line:?} starts {} events", starting.len());
            assert_eq!(starting[0].0, *ts, "{what}: the time of {line:?}");
        }
        // No event starts inside a record.
        for (_, m) in &events {
            let first = visible(m.split('\n').next().unwrap());
            for inside in [
                "\tat ",
                "Caused by: ",
                "  File \"",
                " SQLSTATE",
                "ValueError: ",
                "  warnings.warn(",
            ] {
                assert!(
                    !first.starts_with(inside),
                    "{what}: an event starts inside a record: {m:?}"
                );
            }
        }
        // Stack traces and tracebacks are whole inside their events.
        if !structured {
            let udf = events
                .iter()
                .find(|(_, m)| m.contains("ERROR Executor: Exception in task 0.0 in stage 0.0"))
                .unwrap();
            assert!(
                udf.1.contains("ValueError: boom from the UDF")
                    && udf.1.contains("\tat java.base/java.lang.Thread.run("),
                "{what}: the UDF's failure: {:?}",
                udf.1
            );
            let jvm = events
                .iter()
                .find(|(_, m)| m.contains("ERROR Executor: Exception in task 0.0 in stage 1.0"))
                .unwrap();
            assert!(
                jvm.1.contains("jvm side failure") && jvm.1.contains("\n\tat org.apache.spark"),
                "{:?}",
                jvm.1
            );
        }
        let driver: Vec<&(i64, String)> = events
            .iter()
            // Spark's console progress bar (`\r[Stage 2:> … ]\r`) can precede the traceback on its
            // first line when the last stage ran long enough for the bar to be drawn.
            .filter(|(_, m)| visible(m.split('\n').next().unwrap()).starts_with("Traceback (most recent call last):"))
            .collect();
        assert_eq!(
            driver.len(),
            1,
            "{what}: the driver's traceback is one event: {driver:?}"
        );
        assert!(
            driver[0].1.ends_with("ValueError: boom from the UDF") && driver[0].1.matches("Traceback").count() == 2,
            "{what}: {:?}",
            driver[0].1
        );
        // S3 holds the files exactly.
        for f in ["driver/stderr", "driver/stdout"] {
            assert_eq!(
                collect_s3(&s3, "spark", f, "text"),
                std::fs::read(env.path(f)).unwrap(),
                "{what}: {f}"
            );
        }
    }
}
