//! The CloudWatch Logs output against moto server (a real CloudWatch Logs API on 127.0.0.1):
//! lines arrive exactly once and in order, batch edges, long lines split and rejoined, group and
//! stream creation, throttling and 500s from a fault proxy, a crash between batches, the drain.

use crate::common::moto;
use crate::common::s3;

use std::time::Duration;

use crate::common::{Daemon, Env, append, lines};
use moto::Moto;

const WAIT: Duration = Duration::from_secs(120);
const GROUP: &str = "spark-logs";

fn ship(env: &Env, moto_endpoint: &str, to: &str, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = vec![
        "ship".into(),
        env.input.join("*/std*").display().to_string(),
        "--to".into(),
        to.into(),
        "--endpoint".into(),
        moto_endpoint.into(),
        "--buffer-dir".into(),
        env.buffer.display().to_string(),
        "--signal-file".into(),
        env.signal.display().to_string(),
        "--timekey".into(),
        "1s".into(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

fn spawn(moto: &Moto, env: &Env, args: &[String]) -> Daemon {
    let mut cmd = crate::common::logship_cmd();
    cmd.envs(moto.env());
    Daemon::spawn_cmd(cmd, args, env.dir.path())
}

/// The messages of `lines` (one per line, newline removed).
fn messages(bytes: &[u8]) -> Vec<String> {
    let text = String::from_utf8(bytes.to_vec()).unwrap();
    let mut v: Vec<String> = text.split('\n').map(str::to_string).collect();
    if v.last().is_some_and(|l| l.is_empty()) {
        v.pop();
    }
    v
}

fn got(moto: &Moto, stream: &str) -> Vec<String> {
    moto.events(GROUP, stream).into_iter().map(|(_, m)| m).collect()
}

#[test]
fn stdout_and_stderr_lines_arrive_once_in_order_in_emr_streams_and_the_last_line_at_the_drain() {
    let moto = Moto::start();
    let env = Env::new();
    let (out, err) = (env.path("driver/stdout"), env.path("driver/stderr"));
    std::fs::create_dir_all(out.parent().unwrap()).unwrap();
    append(&out, &lines("out", 0, 500));
    append(&err, &lines("err", 0, 300));
    let prefix = "emr/vc-1/jobs/job-1/containers/spark-app-1";
    let to = format!("cloudwatch://{GROUP}/{prefix}/%{{tag}}");
    let mut args = ship(&env, &moto.endpoint, &to, &["--follow"]);
    args.extend(["--flush-mode".into(), "immediate".into()]);
    let d = spawn(&moto, &env, &args);
    let s_out = format!("{prefix}/driver/stdout");
    let s_err = format!("{prefix}/driver/stderr");
    d.wait_until("the first lines", WAIT, || {
        got(&moto, &s_out).len() == 500 && got(&moto, &s_err).len() == 300
    });
    append(&out, &lines("out", 500, 700));
    append(&err, &lines("err", 300, 100));
    append(&err, b"the last line, without a newline");
    env.signal_end();
    let mut d = d;
    assert_eq!(d.wait_exit(WAIT).code(), Some(0), "{}", d.stderr());
    assert_eq!(got(&moto, &s_out), messages(&std::fs::read(&out).unwrap()));
    assert_eq!(got(&moto, &s_err), messages(&std::fs::read(&err).unwrap()));
}

#[test]
fn ten_thousand_events_a_full_megabyte_batch_and_a_two_mib_line_arrive_whole() {
    let moto = Moto::start();
    let env = Env::new();
    let f = env.path("exec-1/stdout");
    std::fs::create_dir_all(f.parent().unwrap()).unwrap();
    // Exactly 10,000 events.
    let mut input = lines("e", 0, 10_000);
    // 16 lines of 65,510 bytes: exactly 1,048,576 bytes as CloudWatch counts them.
    for i in 0..16 {
        input.extend(format!("{i:05}").bytes().chain(std::iter::repeat_n(b'm', 65_505)));
        input.push(b'\n');
    }
    // A 2 MiB line with multi-byte characters: split into events, rejoined equal.
    let mut long = String::new();
    for i in 0.. {
        if long.len() >= 2 << 20 {
            break;
        }
        long.push_str(if i % 7 == 0 { "é" } else { "abcd" });
    }
    input.extend(long.as_bytes());
    input.push(b'\n');
    append(&f, &input);
    let to = format!("cloudwatch://{GROUP}/%{{tag}}");
    let mut d = spawn(
        &moto,
        &env,
        &ship(&env, &moto.endpoint, &to, &["--once", "--chunk-limit", "64MB"]),
    );
    assert_eq!(d.wait_exit(WAIT).code(), Some(0), "{}", d.stderr());
    let events = got(&moto, "exec-1/stdout");
    let want = messages(&input);
    assert_eq!(events.len(), 10_000 + 16 + 3, "the 2 MiB line becomes 3 events");
    assert_eq!(events[..10_016], want[..10_016]);
    let rejoined: String = events[10_016..].concat();
    assert!(events[10_016..].iter().all(|e| e.len() <= (1 << 20) - 26));
    assert_eq!(rejoined, long);
}

#[test]
fn existing_group_and_stream_are_used_as_they_are() {
    let moto = Moto::start();
    moto.boto3(&format!(
        "import time\nlogs.create_log_group(logGroupName='{GROUP}')\nlogs.create_log_stream(logGroupName='{GROUP}', logStreamName='pod/stdout')\nlogs.put_log_events(logGroupName='{GROUP}', logStreamName='pod/stdout', logEvents=[{{'timestamp': int(time.time() * 1000) - 60000, 'message': 'before'}}])"
    ));
    let env = Env::new();
    let f = env.path("pod/stdout");
    std::fs::create_dir_all(f.parent().unwrap()).unwrap();
    append(&f, &lines("x", 0, 50));
    let to = format!("cloudwatch://{GROUP}/%{{tag}}");
    let mut d = spawn(&moto, &env, &ship(&env, &moto.endpoint, &to, &["--once"]));
    assert_eq!(d.wait_exit(WAIT).code(), Some(0), "{}", d.stderr());
    let mut want = vec!["before".to_string()];
    want.extend(messages(&lines("x", 0, 50)));
    assert_eq!(got(&moto, "pod/stdout"), want);
}

#[test]
fn throttling_and_server_errors_lose_nothing_and_repeat_nothing() {
    use s3::{Fault, FaultProxy};
    let moto = Moto::start();
    let plan = vec![
        Fault::Throttle,
        Fault::Status500,
        Fault::Throttle,
        Fault::Throttle,
        Fault::Status500,
        Fault::Pass,
        Fault::Throttle,
        Fault::Status500,
    ];
    let proxy = FaultProxy::start(&moto.endpoint, plan, Fault::Pass);
    let env = Env::new();
    let f = env.path("pod/stderr");
    std::fs::create_dir_all(f.parent().unwrap()).unwrap();
    let input = lines("t", 0, 30_000);
    append(&f, &input);
    let to = format!("cloudwatch://{GROUP}/%{{tag}}");
    let mut args = ship(&env, &proxy.endpoint, &to, &["--once", "--chunk-limit", "1MB"]);
    args.extend(["--drain-deadline".into(), "120s".into()]);
    let mut d = spawn(&moto, &env, &args);
    assert_eq!(d.wait_exit(WAIT).code(), Some(0), "{}", d.stderr());
    assert_eq!(got(&moto, "pod/stderr"), messages(&input));
    let seen = proxy.seen.lock().unwrap().clone();
    assert!(
        seen.iter().filter(|f| **f != Fault::Pass).count() >= 6,
        "faults were injected: {seen:?}"
    );
}

#[test]
fn a_crash_between_batches_resumes_after_the_last_accepted_batch() {
    let moto = Moto::start();
    let env = Env::new();
    let f = env.path("pod/stdout");
    std::fs::create_dir_all(f.parent().unwrap()).unwrap();
    // One chunk of three batches (by the byte limit, about 9,500 of these lines each).
    let input = lines("c", 0, 25_000);
    append(&f, &input);
    let to = format!("cloudwatch://{GROUP}/%{{tag}}");
    let args = ship(&env, &moto.endpoint, &to, &["--follow", "--flush-mode", "immediate"]);
    let mut cmd = crate::common::logship_cmd();
    cmd.envs(moto.env())
        .env("LOGSHIP_CRASH_AT", "cloudwatch-batch-recorded:2");
    let mut d = Daemon::spawn_cmd(cmd, &args, env.dir.path());
    let st = d.wait_exit(WAIT);
    assert!(!st.success(), "the crash point was reached: {}", d.stderr());
    let before = got(&moto, "pod/stdout").len();
    assert!(
        before > 10_000 && before < 25_000,
        "two batches were accepted before the crash: {before}"
    );
    let d = spawn(&moto, &env, &args);
    env.signal_end();
    let mut d = d;
    assert_eq!(d.wait_exit(WAIT).code(), Some(0), "{}", d.stderr());
    assert_eq!(got(&moto, "pod/stdout"), messages(&input), "each line exactly once");
}

#[test]
fn after_retries_run_out_the_lines_go_to_the_secondary_directory_and_the_exit_code_says_so() {
    use s3::{Fault, FaultProxy};
    let moto = Moto::start();
    let proxy = FaultProxy::start(&moto.endpoint, vec![], Fault::Status500);
    let env = Env::new();
    let f = env.input.join("stdout");
    append(&f, &lines("s", 0, 200));
    append(&f, b"no newline at the end");
    let secondary = env.dir.path().join("error");
    let args = env.run_config(&format!(
        r#"
[buffer]
dir = "{{buffer}}"
[lifecycle]
once = true
[[source]]
type = "tail"
paths = ["{{input}}/stdout"]
[[output]]
name = "cw"
type = "cloudwatch"
retry = {{ wait = "50ms", max_times = 1, timeout = "30s" }}
secondary = {{ directory = "{}", basename = "cw-error.log" }}
cloudwatch = {{ log_group = "{GROUP}", log_stream = "%{{tag}}", endpoint = "{}" }}
"#,
        secondary.display(),
        proxy.endpoint
    ));
    let mut d = spawn(&moto, &env, &args);
    assert_eq!(d.wait_exit(WAIT).code(), Some(3), "{}", d.stderr());
    assert_eq!(
        std::fs::read(secondary.join("cw-error.log.0")).unwrap(),
        std::fs::read(&f).unwrap()
    );
}

/// Issue 20: at `LOGSHIP_LOG=trace`, with credentials and a session token in the environment,
/// neither the log nor `/metrics` holds a credential or a shipped line (moto takes any key).
#[test]
fn at_trace_level_no_credential_and_no_shipped_line_reaches_the_log_or_metrics() {
    let moto = Moto::start();
    let env = Env::new();
    let f = env.path("pod/stdout");
    std::fs::create_dir_all(f.parent().unwrap()).unwrap();
    let input = lines("cw-secret-line", 0, 300);
    append(&f, &input);
    let (key, secret, token) = (
        "AKIACWTRACETEST00001",
        "cw-trace-secret-0123456789abcdefghijklmn",
        "FQoGZXIvYXdzEXAMPLECWSESSIONTOKEN",
    );
    let addr = format!("127.0.0.1:{}", crate::common::free_port());
    let to = format!("cloudwatch://{GROUP}/%{{tag}}");
    let args = ship(&env, &moto.endpoint, &to, &["--follow", "--metrics-listen", &addr]);
    let mut cmd = crate::common::logship_cmd();
    cmd.envs(moto.env())
        .env("AWS_ACCESS_KEY_ID", key)
        .env("AWS_SECRET_ACCESS_KEY", secret)
        .env("AWS_SESSION_TOKEN", token)
        .env("LOGSHIP_LOG", "trace");
    let mut d = Daemon::spawn_cmd(cmd, &args, env.dir.path());
    d.wait_until("the lines", WAIT, || got(&moto, "pod/stdout").len() == 300);
    let (_, metrics) = crate::common::http_get(&addr, "/metrics").unwrap();
    env.signal_end();
    assert_eq!(d.wait_exit(WAIT).code(), Some(0), "{}", d.stderr());
    let err = d.stderr();
    assert!(err.contains("TRACE"), "trace logging was on");
    for (what, s) in [
        ("the access key id", key),
        ("the secret key", secret),
        ("the session token", token),
        ("a shipped line", "cw-secret-line"),
    ] {
        assert!(!err.contains(s), "{what} is in the log");
        assert!(!metrics.contains(s), "{what} is in /metrics");
    }
}

/// Issue 20: PutLogEvents' limits, written out (not taken from the code's constants) and counted
/// on the wire: 10,000 events are one batch and 10,001 two; 16 events of 65,510 bytes (1,048,576
/// with CloudWatch's 26 bytes each) are one batch, and one byte more makes two.
#[test]
fn a_batch_ends_exactly_at_ten_thousand_events_and_at_1_048_576_bytes() {
    use s3::{Fault, FaultProxy};
    let moto = Moto::start();
    let proxy = FaultProxy::start(&moto.endpoint, vec![], Fault::Pass);
    let long = |len: usize, i: usize| [format!("{i:05}").into_bytes(), vec![b'm'; len - 5], b"\n".to_vec()].concat();
    let cases: Vec<(&str, Vec<u8>, u64, usize)> = vec![
        ("events-10000", lines("e", 0, 10_000), 1, 10_000),
        ("events-10001", lines("e", 0, 10_001), 2, 10_001),
        ("bytes-exact", (0..16).flat_map(|i| long(65_510, i)).collect(), 1, 16),
        (
            "bytes-over",
            (0..16)
                .flat_map(|i| long(if i == 15 { 65_511 } else { 65_510 }, i))
                .collect(),
            2,
            16,
        ),
    ];
    for (name, input, batches, events) in cases {
        let env = Env::new();
        let f = env.path(&format!("{name}/stdout"));
        std::fs::create_dir_all(f.parent().unwrap()).unwrap();
        append(&f, &input);
        let to = format!("cloudwatch://{GROUP}/%{{tag}}");
        let args = ship(
            &env,
            &proxy.endpoint,
            &to,
            &["--once", "--chunk-limit", "64MB", "--multiline", "off"],
        );
        let before = proxy.put_log_events.load(std::sync::atomic::Ordering::SeqCst);
        let mut d = spawn(&moto, &env, &args);
        assert_eq!(d.wait_exit(WAIT).code(), Some(0), "{name}: {}", d.stderr());
        let sent = proxy.put_log_events.load(std::sync::atomic::Ordering::SeqCst) - before;
        assert_eq!(sent, batches, "{name}: PutLogEvents requests");
        assert_eq!(got(&moto, &format!("{name}/stdout")), messages(&input), "{name}");
        assert_eq!(got(&moto, &format!("{name}/stdout")).len(), events, "{name}");
    }
}

#[test]
fn json_quotes_backslashes_control_characters_and_unicode_arrive_byte_for_byte() {
    // logship writes the PutLogEvents body itself (src/sink/log_events.rs): every byte JSON must
    // escape, at every offset within a word, arrives as it was; invalid UTF-8 is replaced.
    let moto = Moto::start();
    let env = Env::new();
    let f = env.path("pod/stdout");
    std::fs::create_dir_all(f.parent().unwrap()).unwrap();
    let mut want = vec![
        r#"{"Event":"SparkListenerTaskEnd","Stage ID":3,"Task Info":{"Host":"10.0.0.7","Accumulables":[]}}"#
            .to_string(),
        r"C:\path\to\file and a trailing backslash \".to_string(),
        // (Not first on its line: a line starting with a tab continues the record before it.)
        "tab\tseparated\tvalues and a carriage return\r".to_string(),
        "\u{1b}[31mERROR\u{1b}[0m coloured by a terminal, a bell \u{7} and a \u{1}\u{1f}".to_string(),
        "caf\u{e9} \u{65e5}\u{672c} \u{1f680} \u{7f}".to_string(),
    ];
    for at in 0..9 {
        want.push(format!("{}\"{}\\{}", "a".repeat(at), "b".repeat(8 - at), "\u{8}\u{c}"));
    }
    let mut bytes: Vec<u8> = want.iter().flat_map(|l| format!("{l}\n").into_bytes()).collect();
    bytes.extend_from_slice(b"bad \xff\xfe utf-8\n");
    want.push("bad \u{fffd}\u{fffd} utf-8".to_string());
    append(&f, &bytes);
    let to = format!("cloudwatch://{GROUP}/%{{tag}}");
    let mut d = spawn(&moto, &env, &ship(&env, &moto.endpoint, &to, &["--once"]));
    assert_eq!(d.wait_exit(WAIT).code(), Some(0), "{}", d.stderr());
    assert_eq!(got(&moto, "pod/stdout"), want);
}

#[test]
fn the_body_logship_writes_is_the_one_its_signature_covers() {
    // logship replaces the SDK's PutLogEvents body before the SDK signs the request. moto with
    // its access control on recomputes every SigV4 signature (body included) and refuses any
    // that does not match: the batches must be accepted as sent.
    let moto = Moto::start_checking_signatures();
    // The server does check: a request signed with a wrong secret is refused.
    let refused = moto.python(
        "logs = boto3.client('logs', endpoint_url=ENDPOINT, region_name='us-east-1', aws_access_key_id=KEY_ID, aws_secret_access_key='wrong')\n\
         try:\n    logs.describe_log_groups()\n    print('accepted')\nexcept Exception as e:\n    print(e)",
    );
    assert!(refused.contains("SignatureDoesNotMatch"), "{refused}");
    let env = Env::new();
    let f = env.path("pod/stdout");
    std::fs::create_dir_all(f.parent().unwrap()).unwrap();
    // Several batches (each about 1 MiB), with characters JSON escapes.
    let line = format!(
        "{{\"Event\":\"SparkListenerTaskEnd\",\"path\":\"C:\\\\tmp\",\"pad\":\"{}\"}}",
        "x".repeat(2000)
    );
    let want: Vec<String> = (0..1500).map(|i| format!("{i} {line}")).collect();
    append(&f, want.iter().map(|l| format!("{l}\n")).collect::<String>().as_bytes());
    let to = format!("cloudwatch://{GROUP}/%{{tag}}");
    let mut d = spawn(&moto, &env, &ship(&env, &moto.endpoint, &to, &["--once"]));
    assert_eq!(d.wait_exit(WAIT).code(), Some(0), "{}", d.stderr());
    assert_eq!(got(&moto, "pod/stdout"), want);
}

/// Issue 36: no record is dropped for its time stamp. Records dated 2020-01-01, `99/12/31`
/// (a two-digit year, read as 1999) and a JSON `ts` of 2010 would be refused by CloudWatch as
/// too old (and one dated next year as too new): each is sent with the time it was read,
/// counted as `records_retimed`; a record of ten minutes ago keeps its own time. Every record
/// arrives, and the run exits 0.
#[test]
fn records_whose_time_cloudwatch_would_refuse_are_sent_with_their_read_time() {
    let moto = Moto::start();
    let env = Env::new();
    let err = env.path("driver/stderr");
    std::fs::create_dir_all(err.parent().unwrap()).unwrap();
    let now = chrono::Utc::now();
    let recent = (now - chrono::Duration::minutes(10))
        .format("%y/%m/%d %H:%M:%S")
        .to_string();
    let next_year = (now + chrono::Duration::days(400))
        .format("%Y-%m-%d %H:%M:%S")
        .to_string();
    let text = format!(
        "2020-01-01 00:00:00,000 INFO old record\n99/12/31 23:59:59 INFO two-digit year\n{{\"ts\":\"2010-05-05T00:00:00Z\",\"level\":\"INFO\",\"msg\":\"json\"}}\n{next_year} INFO from the future\n{recent} INFO recent record\n"
    );
    append(&err, text.as_bytes());
    let args = ship(
        &env,
        &moto.endpoint,
        &format!("cloudwatch://{GROUP}/p/%{{tag}}"),
        &["--once"],
    );
    let mut d = spawn(&moto, &env, &args);
    assert_eq!(d.wait_exit(WAIT).code(), Some(0), "{}", d.stderr());
    let events = moto.events(GROUP, "p/driver/stderr");
    let messages: Vec<&str> = events.iter().map(|(_, m)| m.as_str()).collect();
    let want: Vec<&str> = text.lines().collect();
    let mut sorted_want = want.clone();
    sorted_want.sort();
    let mut sorted_got = messages.clone();
    sorted_got.sort();
    assert_eq!(sorted_got, sorted_want, "every record arrives");
    let now_ms = now.timestamp_millis();
    for (ts, m) in &events {
        if m.contains("recent record") {
            assert!((now_ms - ts - 600_000).abs() < 2_000, "kept its own time: {ts} {m}");
        } else {
            assert!((ts - now_ms).abs() < 120_000, "sent with the read time: {ts} {m}");
        }
    }
    assert_eq!(
        d.summary()["outputs"][0]["events"]["records_retimed"],
        4,
        "{}",
        d.stderr()
    );
}
