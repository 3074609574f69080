//! The metrics and health endpoint: counters match what was sent and delivered, and `/healthz`
//! fails while the S3 server is unreachable with data queued, then recovers.

use crate::common::s3;

use std::time::Duration;

use crate::common::{Daemon, Env, append, http_get, lines, metric};
use s3::{Fault, FaultProxy, S3Server};

const WAIT: Duration = Duration::from_secs(90);

#[test]
fn counters_match_what_was_sent_and_health_follows_the_output() {
    let server = S3Server::start(&["logs"]);
    let proxy = FaultProxy::start(&server.endpoint, vec![], Fault::Pass);
    let env = Env::new();
    let file = env.path("app.log");
    let first = lines("m", 0, 1000);
    append(&file, &first);
    let addr = format!("127.0.0.1:{}", crate::common::free_port());
    let args = env.run_config(&format!(
        r#"
[buffer]
dir = "{{buffer}}"
timekey = "1s"
flush_mode = "immediate"
[lifecycle]
signal_file = "{{signal}}"
[metrics]
listen = "{addr}"
stall_timeout = "2s"
[[source]]
name = "files"
type = "tail"
paths = ["{{input}}/*.log"]
[[output]]
name = "s3"
type = "s3"
path = "m"
key_format = "%{{path}}/%{{index}}.txt"
retry = {{ wait = "200ms", max_interval = "500ms", max_times = 1000 }}
[output.s3]
bucket = "logs"
endpoint = "{}"
force_path_style = true
"#,
        proxy.endpoint
    ));
    let mut cmd = crate::common::logship_cmd();
    cmd.envs(server.env());
    let d = Daemon::spawn_cmd(cmd, &args, env.dir.path());
    let path_label = format!(
        "logship_file_read_lines_total{{source=\"files\",path=\"{}\"}}",
        file.display()
    );
    d.wait_until("everything delivered, as the metrics say", WAIT, || {
        http_get(&addr, "/metrics").is_some_and(|(_, b)| {
            metric(&b, &path_label) == Some(1000)
                && metric(&b, "logship_output_bytes_delivered_total{output=\"s3\"}") == Some(first.len() as u64)
                && metric(&b, "logship_buffer_chunks ") == Some(0)
        })
    });
    let (_, body) = http_get(&addr, "/metrics").unwrap();
    let bytes_label = format!(
        "logship_file_read_bytes_total{{source=\"files\",path=\"{}\"}}",
        file.display()
    );
    assert_eq!(metric(&body, &bytes_label), Some(first.len() as u64), "{body}");
    assert_eq!(
        metric(&body, "logship_output_secondary_chunks_total{output=\"s3\"}"),
        Some(0)
    );
    assert_eq!(http_get(&addr, "/healthz").unwrap().0, 200);

    // The server goes away while more data comes: queued, nothing delivered, unhealthy.
    proxy.set_always(Fault::Reset);
    append(&file, &lines("m", 1000, 100));
    d.wait_until("/healthz fails while data waits", WAIT, || {
        http_get(&addr, "/healthz").is_some_and(|(c, _)| c == 503)
    });
    d.wait_until("failed attempts counted as retries, data queued", WAIT, || {
        http_get(&addr, "/metrics").is_some_and(|(_, b)| {
            metric(&b, "logship_output_retries_total{output=\"s3\"}").is_some_and(|r| r > 0)
                && metric(&b, "logship_buffer_chunks ").is_some_and(|c| c > 0)
        })
    });

    // Back: delivered, healthy again.
    proxy.set_always(Fault::Pass);
    d.wait_until("/healthz recovers", WAIT, || {
        http_get(&addr, "/healthz").is_some_and(|(c, _)| c == 200)
    });
    let (_, body) = http_get(&addr, "/metrics").unwrap();
    assert_eq!(metric(&body, &path_label), Some(1100), "{body}");
    env.signal_end();
    let mut d = d;
    assert_eq!(d.wait_exit(WAIT).code(), Some(0), "{}", d.stderr());
    let all: Vec<u8> = {
        let mut keys = server.keys("logs");
        keys.sort_by_key(|k| {
            k.trim_start_matches("m/")
                .trim_end_matches(".txt")
                .parse::<u64>()
                .unwrap_or(0)
        });
        keys.iter().flat_map(|k| server.object("logs", k).unwrap()).collect()
    };
    assert_eq!(all, std::fs::read(&file).unwrap());
}

#[test]
fn a_backfill_prints_progress_lines_when_stderr_is_not_a_terminal() {
    let server = S3Server::start(&["logs"]);
    // The first uploads fail, so the backfill takes a few seconds.
    let proxy = FaultProxy::start(&server.endpoint, vec![Fault::Status500; 6], Fault::Pass);
    let env = Env::new();
    for i in 0..3 {
        append(&env.path(&format!("old-{i}.log")), &lines("b", 0, 2000));
    }
    let mut cmd = crate::common::logship_cmd();
    cmd.envs(server.env()).env("LOGSHIP_PROGRESS_EVERY", "300ms");
    let mut args = env.once_args("*.log", &["--endpoint", &proxy.endpoint, "--path-style"]);
    crate::common::set_flag(&mut args, "--to", "s3://logs/backfill");
    let mut d = Daemon::spawn_cmd(cmd, &args, env.dir.path());
    assert_eq!(d.wait_exit(WAIT).code(), Some(0), "{}", d.stderr());
    let err = d.stderr();
    let progress: Vec<&str> = err.lines().filter(|l| l.starts_with("logship: progress: ")).collect();
    assert!(!progress.is_empty(), "{err}");
    assert!(
        progress
            .iter()
            .all(|l| l.contains("% read (") && l.contains("in 3 files")),
        "{progress:?}"
    );
    assert_eq!(server.keys("logs").len(), 3);
}

/// Issue 35: the progress line never says less was read than was delivered (it said "8% read"
/// beside half the file delivered: the files' list was published once a second), and shows
/// sizes in units a person reads. Checked on every line of a backfill, in JSON (the numbers)
/// and in text (the units).
#[test]
fn progress_never_shows_less_read_than_delivered_and_reads_in_human_units() {
    let env = Env::new();
    let mut big = Vec::new();
    while big.len() < 96 << 20 {
        big.extend_from_slice(&lines("progress", big.len(), 20_000));
    }
    std::fs::write(env.path("big.log"), &big).unwrap();
    for format in ["json", "text"] {
        let out = env.dir.path().join(format!("out-{format}"));
        let mut args = env.once_args("big.log", &["--chunk-limit", "4MiB"]);
        crate::common::set_flag(&mut args, "--to", &format!("file://{}", out.display()));
        let mut cmd = crate::common::logship_cmd();
        cmd.env("LOGSHIP_PROGRESS_EVERY", "20ms")
            .env("LOGSHIP_LOG_FORMAT", format);
        let mut d = Daemon::spawn_cmd(cmd, &args, env.dir.path());
        assert_eq!(d.wait_exit(WAIT).code(), Some(0), "{}", d.stderr());
        let err = d.stderr();
        if format == "json" {
            let mut seen = 0;
            for line in err.lines().filter(|l| l.contains("\"progress\"")) {
                let v: serde_json::Value = serde_json::from_str(line).unwrap();
                let f = &v["fields"];
                let (read, total, delivered) = (
                    f["read"].as_u64().unwrap(),
                    f["total"].as_u64().unwrap(),
                    f["delivered"].as_u64().unwrap(),
                );
                assert!(delivered <= read && read <= total, "{line}");
                assert_eq!(f["percent"].as_u64().unwrap(), read * 100 / total, "{line}");
                seen += 1;
            }
            assert!(seen > 0, "{err}");
        } else {
            let progress: Vec<&str> = err.lines().filter(|l| l.starts_with("logship: progress: ")).collect();
            assert!(!progress.is_empty(), "{err}");
            for l in progress {
                assert!(l.contains(" MiB in 1 files)") && l.ends_with(" delivered"), "{l}");
            }
        }
    }
}
