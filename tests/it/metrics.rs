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
