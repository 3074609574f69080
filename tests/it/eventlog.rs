//! The event-log source on synthetic Spark layouts (fast; `tests/spark_events.rs` runs real Spark
//! and its History Server): rechunk and mirror, completion markers, torn tails, the application
//! filter, EMR's appstatus-at-start.

use std::fs;
use std::path::Path;
use std::time::Duration;

use crate::common::{Daemon, Env, append, assert_bytes_eq, lines};

const WAIT: Duration = Duration::from_secs(60);

fn ship_args(env: &Env, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = vec![
        "ship".into(),
        "--spark-events".into(),
        env.input.display().to_string(),
        "--to".into(),
        format!("file://{}", env.out.display()),
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

/// `events_1..N` of `app` in order, checking that the indices have no gap.
fn rechunked(out: &Path, app: &str) -> Vec<u8> {
    let dir = out.join(format!("eventlog_v2_{app}"));
    let mut idx: Vec<u64> = fs::read_dir(&dir)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| {
                    let n = e.file_name().to_string_lossy().into_owned();
                    n.strip_prefix("events_")?
                        .strip_suffix(&format!("_{app}"))?
                        .parse()
                        .ok()
                })
                .collect()
        })
        .unwrap_or_default();
    idx.sort();
    assert_eq!(idx, (1..=idx.len() as u64).collect::<Vec<_>>(), "indices must run 1..N");
    idx.iter()
        .flat_map(|n| fs::read(dir.join(format!("events_{n}_{app}"))).unwrap())
        .collect()
}

fn exists(out: &Path, rel: &str) -> bool {
    out.join(rel).exists()
}

#[test]
fn an_uncompressed_single_file_is_rechunked_and_marked_complete_after_its_last_line() {
    let env = Env::new();
    let log = env.path("app-1.inprogress");
    let first = lines("a", 0, 300);
    append(&log, &first);
    append(&log, b"{\"Event\":\"torn");
    let d = Daemon::spawn(&ship_args(&env, &["--follow"]), env.dir.path());
    d.wait_until("whole lines shipped, marked in progress", WAIT, || {
        exists(&env.out, "eventlog_v2_app-1/appstatus_app-1.inprogress") && rechunked(&env.out, "app-1") == first
    });
    assert!(!exists(&env.out, "eventlog_v2_app-1/appstatus_app-1"));

    // Spark completes the line, writes more, and renames the file at stop.
    append(&log, b"\"}\n");
    let more = lines("b", 0, 500);
    append(&log, &more);
    fs::rename(&log, env.path("app-1")).unwrap();
    let all = fs::read(env.path("app-1")).unwrap();
    d.wait_until("complete marker after every line", WAIT, || {
        exists(&env.out, "eventlog_v2_app-1/appstatus_app-1")
            && !exists(&env.out, "eventlog_v2_app-1/appstatus_app-1.inprogress")
    });
    // The marker comes after the data: by then every byte is there.
    assert_bytes_eq(&rechunked(&env.out, "app-1"), &all);
    env.signal_end();
    let mut d = d;
    assert_eq!(d.wait_exit(WAIT).code(), Some(0), "{}", d.stderr());
    assert_bytes_eq(&rechunked(&env.out, "app-1"), &all);
}

#[test]
fn a_rolling_log_is_mirrored_the_growing_file_reuploaded_and_completed() {
    let env = Env::new();
    let dir = env.path("eventlog_v2_app-2");
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join("appstatus_app-2.inprogress"), b"").unwrap();
    let e1 = dir.join("events_1_app-2");
    append(&e1, &lines("one", 0, 200));
    append(&e1, b"{\"half\":");
    let d = Daemon::spawn(&ship_args(&env, &["--follow"]), env.dir.path());
    let out = |n: &str| fs::read(env.out.join("eventlog_v2_app-2").join(n)).unwrap_or_default();
    d.wait_until("whole lines of the growing file, marked in progress", WAIT, || {
        out("events_1_app-2") == lines("one", 0, 200)
            && exists(&env.out, "eventlog_v2_app-2/appstatus_app-2.inprogress")
    });

    // Spark finishes the line and rolls to a second file.
    append(&e1, b"1}\n");
    let e2 = dir.join("events_2_app-2");
    append(&e2, &lines("two", 0, 100));
    d.wait_until("the first file whole, the second shipped", WAIT, || {
        out("events_1_app-2") == fs::read(&e1).unwrap() && out("events_2_app-2") == lines("two", 0, 100)
    });
    append(&e2, &lines("two", 100, 100));
    fs::rename(dir.join("appstatus_app-2.inprogress"), dir.join("appstatus_app-2")).unwrap();
    d.wait_until("complete", WAIT, || {
        exists(&env.out, "eventlog_v2_app-2/appstatus_app-2")
            && !exists(&env.out, "eventlog_v2_app-2/appstatus_app-2.inprogress")
    });
    assert_bytes_eq(&out("events_2_app-2"), &fs::read(&e2).unwrap());
    assert_bytes_eq(&out("events_1_app-2"), &fs::read(&e1).unwrap());
    env.signal_end();
    let mut d = d;
    assert_eq!(d.wait_exit(WAIT).code(), Some(0), "{}", d.stderr());
}

#[test]
fn a_compressed_single_file_is_mirrored_under_its_final_name_at_the_end() {
    let env = Env::new();
    // Any bytes: a compressed stream has no lines.
    let bytes: Vec<u8> = (0..200_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let log = env.path("app-4.zstd.inprogress");
    fs::write(&log, &bytes[..120_000]).unwrap();
    let d = Daemon::spawn(&ship_args(&env, &["--follow"]), env.dir.path());
    d.wait_until("the in-progress copy", WAIT, || {
        fs::read(env.out.join("app-4.zstd.inprogress")).ok().as_deref() == Some(&bytes[..120_000])
    });
    append(&log, &bytes[120_000..]);
    fs::rename(&log, env.path("app-4.zstd")).unwrap();
    d.wait_until("the final copy replaces the in-progress one", WAIT, || {
        fs::read(env.out.join("app-4.zstd")).ok().as_deref() == Some(&bytes[..])
            && !exists(&env.out, "app-4.zstd.inprogress")
    });
    env.signal_end();
    let mut d = d;
    assert_eq!(d.wait_exit(WAIT).code(), Some(0), "{}", d.stderr());
}

#[test]
fn a_torn_tail_is_shipped_at_the_drain_and_the_app_stays_in_progress() {
    let env = Env::new();
    let log = env.path("app-3.inprogress");
    append(&log, &lines("x", 0, 100));
    append(&log, b"{\"Event\":\"killed mid-li");
    let mut d = Daemon::spawn(&ship_args(&env, &["--once"]), env.dir.path());
    assert_eq!(d.wait_exit(WAIT).code(), Some(0), "{}", d.stderr());
    assert_bytes_eq(&rechunked(&env.out, "app-3"), &fs::read(&log).unwrap());
    assert!(exists(&env.out, "eventlog_v2_app-3/appstatus_app-3.inprogress"));
    assert!(!exists(&env.out, "eventlog_v2_app-3/appstatus_app-3"));
}

#[test]
fn emr_mode_marks_complete_at_start_and_the_application_id_selects_the_app() {
    let env = Env::new();
    append(&env.path("spark-aaa.inprogress"), &lines("a", 0, 50));
    append(&env.path("spark-bbb.inprogress"), &lines("b", 0, 50));
    let mut cmd = crate::common::logship_cmd();
    cmd.env("SPARK_APPLICATION_ID", "spark-aaa");
    let mut d = Daemon::spawn_cmd(
        cmd,
        &ship_args(&env, &["--once", "--appstatus", "at-start"]),
        env.dir.path(),
    );
    assert_eq!(d.wait_exit(WAIT).code(), Some(0), "{}", d.stderr());
    assert_eq!(
        fs::read(env.out.join("eventlog_v2_spark-aaa/appstatus_spark-aaa")).unwrap(),
        b" \n"
    );
    assert!(!exists(
        &env.out,
        "eventlog_v2_spark-aaa/appstatus_spark-aaa.inprogress"
    ));
    assert_bytes_eq(&rechunked(&env.out, "spark-aaa"), &lines("a", 0, 50));
    assert!(
        !exists(&env.out, "eventlog_v2_spark-bbb"),
        "another application was shipped"
    );
}

#[test]
fn several_applications_in_one_directory_each_get_their_own_layout() {
    let env = Env::new();
    append(&env.path("local-1"), &lines("one", 0, 40));
    append(&env.path("local-2.inprogress"), &lines("two", 0, 40));
    let roll = env.path("eventlog_v2_local-3");
    fs::create_dir_all(&roll).unwrap();
    append(&roll.join("events_1_local-3"), &lines("three", 0, 40));
    fs::write(roll.join("appstatus_local-3"), b"").unwrap();
    let mut d = Daemon::spawn(&ship_args(&env, &["--once"]), env.dir.path());
    assert_eq!(d.wait_exit(WAIT).code(), Some(0), "{}", d.stderr());
    assert_bytes_eq(&rechunked(&env.out, "local-1"), &lines("one", 0, 40));
    assert_bytes_eq(&rechunked(&env.out, "local-2"), &lines("two", 0, 40));
    assert_bytes_eq(
        &fs::read(env.out.join("eventlog_v2_local-3/events_1_local-3")).unwrap(),
        &lines("three", 0, 40),
    );
    for (app, complete) in [("local-1", true), ("local-2", false), ("local-3", true)] {
        let marker = format!("eventlog_v2_{app}/appstatus_{app}");
        assert_eq!(exists(&env.out, &marker), complete, "{marker}");
        assert_eq!(
            exists(&env.out, &format!("{marker}.inprogress")),
            !complete,
            "{marker}.inprogress"
        );
    }
}

/// Issue 20: the completion marker reaches S3 only after the application's last data object,
/// even when data uploads are slow: the real S3 server holds each `events_N` upload 300 ms and
/// records the order in which it lets requests through (no polling on the client side).
#[test]
fn the_complete_marker_reaches_s3_after_every_data_object_even_when_data_uploads_are_slow() {
    use crate::common::s3::S3Server;
    let server = S3Server::start_holding(&["logs"], Some(("/events_", Duration::from_millis(300))));
    let env = Env::new();
    // A finished application (Spark renamed its log), large enough for several objects.
    let log = lines("ev", 0, 60_000);
    append(&env.path("app-7"), &log);
    let args: Vec<String> = [
        "ship",
        "--once",
        "--spark-events",
        env.input.to_str().unwrap(),
        "--to",
        "s3://logs/ev",
        "--endpoint",
        &server.endpoint,
        "--path-style",
        "--chunk-limit",
        "256KiB",
    ]
    .map(String::from)
    .to_vec();
    let mut cmd = crate::common::logship_cmd();
    cmd.envs(server.env());
    let mut d = Daemon::spawn_cmd(cmd, &args, env.dir.path());
    assert_eq!(d.wait_exit(WAIT).code(), Some(0), "{}", d.stderr());
    let order = server.keys_in_order("PutObject");
    let data: Vec<usize> = (0..order.len()).filter(|&i| order[i].contains("/events_")).collect();
    let done: Vec<usize> = (0..order.len())
        .filter(|&i| order[i].ends_with("/appstatus_app-7"))
        .collect();
    assert!(data.len() >= 4, "{order:?}");
    assert_eq!(done.len(), 1, "{order:?}");
    assert!(
        done[0] > *data.last().unwrap(),
        "the marker went up before the last data: {order:?}"
    );
    let mut objects: Vec<(u64, Vec<u8>)> = server
        .keys("logs")
        .into_iter()
        .filter_map(|k| {
            let n = k
                .strip_prefix("ev/eventlog_v2_app-7/events_")?
                .strip_suffix("_app-7")?
                .parse()
                .ok()?;
            Some((n, server.object("logs", &k).unwrap()))
        })
        .collect();
    objects.sort();
    assert_bytes_eq(&objects.into_iter().flat_map(|(_, b)| b).collect::<Vec<u8>>(), &log);
}
