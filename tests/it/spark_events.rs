//! Spark event logs shipped by logship and read by the real Spark History Server: a real Spark 4
//! application (pyspark from PyPI) writes its event log in each layout, logship ships it to the
//! in-process S3 server, and the History Server must show the original and the shipped copy the
//! same way (applications, completion, jobs, stages, tasks, executors, SQL executions), while the
//! application runs and after it ended, also when the driver or logship is killed.
//!
//! Run these alone with `cargo test --test spark_events` (they install pyspark on first use).

use crate::common::s3;
use crate::common::spark;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::common::Daemon;
use s3::S3Server;
use spark::{SparkApp, assert_same_history, compare_shipped, download, histories};

const BUCKET: &str = "logs";
const LONG: Duration = Duration::from_secs(300);

/// `logship ship --spark-events` into `s3://logs/<prefix>` through the S3 API, following until the
/// signal file appears; chunks close every second so the copy keeps up.
fn logship(server: &S3Server, ev: &Path, prefix: &str, work: &Path, extra: &[&str]) -> Daemon {
    let mut cmd = crate::common::logship_cmd();
    cmd.envs(server.env());
    let mut args: Vec<String> = vec![
        "ship".into(),
        "--follow".into(),
        "--spark-events".into(),
        ev.display().to_string(),
        "--to".into(),
        format!("s3://{BUCKET}/{prefix}"),
        "--endpoint".into(),
        server.endpoint.clone(),
        "--path-style".into(),
        "--buffer-dir".into(),
        work.join(format!("buffer-{prefix}")).display().to_string(),
        "--signal-file".into(),
        work.join(format!("end-{prefix}")).display().to_string(),
        "--timekey".into(),
        "1s".into(),
        "--drain-deadline".into(),
        "120s".into(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    Daemon::spawn_cmd(cmd, &args, work)
}

fn end(work: &Path, prefix: &str) {
    std::fs::write(work.join(format!("end-{prefix}")), b"0").unwrap();
}

/// Waits until the objects under `prefix` hold what Spark wrote (whole lines only while it
/// writes, everything with `whole`), and returns them.
fn wait_shipped(
    server: &S3Server,
    d: &Daemon,
    ev: &Path,
    prefix: &str,
    to: &Path,
    whole: bool,
) -> BTreeMap<String, Vec<u8>> {
    let start = std::time::Instant::now();
    loop {
        let objects = download(server, BUCKET, prefix, to);
        let last = match compare_shipped(ev, to, whole) {
            Ok(()) => return objects,
            Err(e) => e,
        };
        if start.elapsed() > Duration::from_secs(120) {
            panic!(
                "shipped copy under {prefix} never matched the original: {last}\nobjects: {:?}\nlogship stderr:\n{}",
                objects.keys().collect::<Vec<_>>(),
                d.stderr()
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn completed(view: &serde_json::Value) -> Vec<(String, bool)> {
    view.as_object()
        .unwrap()
        .iter()
        .map(|(id, v)| (id.clone(), v["app"]["attempts"][0]["completed"].as_bool().unwrap()))
        .collect()
}

fn events_dir(work: &Path) -> PathBuf {
    let ev = work.join("spark-events");
    std::fs::create_dir_all(&ev).unwrap();
    ev
}

/// Four layouts (single file and rolling at 2 MiB, each uncompressed and zstd), shipped in the
/// default mode (rechunk for the uncompressed single file, mirror for the rest) and in mirror mode.
/// While the applications are paused mid-run, and after they end, the History Server shows the
/// copies as it shows the originals.
#[test]
fn history_server_reads_shipped_event_logs_in_every_layout() {
    let _one_at_a_time = spark::exclusive();
    let work = tempfile::tempdir().unwrap();
    let work = work.path();
    let ev = events_dir(work);
    let server = S3Server::start(&[BUCKET]);
    let auto = logship(&server, &ev, "auto", work, &[]);
    let mirror = logship(&server, &ev, "mirror", work, &["--mode", "mirror"]);

    // Every codec Spark has, in one layout or the other.
    let layouts = [
        ("single", "none"),
        ("single", "zstd"),
        ("rolling", "none"),
        ("rolling", "zstd"),
        ("single", "lz4"),
        ("rolling", "snappy"),
        ("single", "lzf"),
    ];
    let mut apps: Vec<SparkApp> = layouts
        .iter()
        .enumerate()
        .map(|(i, (l, c))| SparkApp::start(&ev, l, c, &work.join(format!("gate-{i}")), false))
        .collect();
    let ids: Vec<String> = apps.iter_mut().map(|a| a.app_id()).collect();
    for a in &mut apps {
        a.wait_for("paused", LONG);
    }

    // In progress: listed, incomplete, the same events so far.
    let (a_dir, m_dir) = (work.join("shipped-auto"), work.join("shipped-mirror"));
    let a_objs = wait_shipped(&server, &auto, &ev, "auto", &a_dir, false);
    wait_shipped(&server, &mirror, &ev, "mirror", &m_dir, false);
    for id in &ids {
        assert!(
            a_objs.contains_key(&format!("eventlog_v2_{id}/appstatus_{id}.inprogress"))
                || a_objs.keys().any(|k| k.starts_with(id.as_str())),
            "no in-progress marker for {id}: {:?}",
            a_objs.keys().collect::<Vec<_>>()
        );
    }
    let views = histories(&[&ev, &a_dir, &m_dir], ids.len());
    assert_eq!(
        views[0].as_object().unwrap().len(),
        ids.len(),
        "original: {:?}",
        completed(&views[0])
    );
    assert!(
        completed(&views[0]).iter().all(|(_, c)| !c),
        "{:?}",
        completed(&views[0])
    );
    assert_same_history(&views[0], &views[1], "the in-progress applications (default mode)");
    assert_same_history(&views[0], &views[2], "the in-progress applications (mirror mode)");

    // The applications finish; logship is told the pod ends once the copies are complete.
    for a in &apps {
        a.go();
    }
    for a in &mut apps {
        a.wait_success(LONG);
    }
    let a_objs = wait_shipped(&server, &auto, &ev, "auto", &a_dir, true);
    let m_objs = wait_shipped(&server, &mirror, &ev, "mirror", &m_dir, true);
    let (mut auto, mut mirror) = (auto, mirror);
    end(work, "auto");
    end(work, "mirror");
    for d in [&mut auto, &mut mirror] {
        let st = d.wait_exit(LONG);
        assert_eq!(st.code(), Some(0), "logship stderr:\n{}", d.stderr());
    }
    // The uncompressed rolling log really rolled (2 MiB files): more than one `events_N`.
    let (rolling, _) = ids
        .iter()
        .zip(layouts)
        .find(|(_, l)| *l == ("rolling", "none"))
        .unwrap();
    let rolled = std::fs::read_dir(ev.join(format!("eventlog_v2_{rolling}")))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("events_"))
        .count();
    assert!(rolled >= 2, "the rolling log has {rolled} events_N file(s)");
    let a_objs_final = download(&server, BUCKET, "auto", &a_dir);
    let m_objs_final = download(&server, BUCKET, "mirror", &m_dir);
    assert!(a_objs_final.len() >= a_objs.len() && m_objs_final.len() >= m_objs.len());
    compare_shipped(&ev, &a_dir, true).unwrap();
    compare_shipped(&ev, &m_dir, true).unwrap();

    // Completion markers: final ones present, no `.inprogress` object left behind.
    for (id, (layout, codec)) in ids.iter().zip(layouts) {
        for (objs, mode) in [(&a_objs_final, "auto"), (&m_objs_final, "mirror")] {
            let keys: Vec<&String> = objs.keys().filter(|k| k.contains(id.as_str())).collect();
            assert!(
                !keys.iter().any(|k| k.ends_with(".inprogress")),
                "{mode} {layout}/{codec}: an in-progress object is left: {keys:?}"
            );
            let single_mirrored = layout == "single" && (mode == "mirror" || codec != "none");
            if !single_mirrored {
                assert_eq!(
                    objs.get(&format!("eventlog_v2_{id}/appstatus_{id}")).map(Vec::len),
                    Some(0),
                    "{mode} {layout}/{codec}: {keys:?}"
                );
            }
        }
    }
    let views = histories(&[&ev, &a_dir, &m_dir], ids.len());
    assert!(
        completed(&views[0]).iter().all(|(_, c)| *c),
        "{:?}",
        completed(&views[0])
    );
    assert_same_history(&views[0], &views[1], "the finished applications (default mode)");
    assert_same_history(&views[0], &views[2], "the finished applications (mirror mode)");
    let jobs = views[0][&ids[0]]["jobs"].as_array().unwrap().len();
    assert!(jobs >= 10, "the application ran {jobs} jobs");
}

/// A driver killed with SIGKILL mid-job, and logship killed with SIGKILL and restarted while the
/// application runs: the copy is still identical (the torn tail included), the rechunked indices
/// run 1..N with no object rewritten with other bytes, and the History Server shows the same
/// incomplete applications for the original and the copy.
#[test]
fn a_killed_driver_and_a_restarted_logship_lose_and_repeat_nothing() {
    let _one_at_a_time = spark::exclusive();
    let work = tempfile::tempdir().unwrap();
    let work = work.path();
    let ev = events_dir(work);
    let server = S3Server::start(&[BUCKET]);
    let mut ship = logship(&server, &ev, "auto", work, &[]);
    let layouts = [("single", "none"), ("rolling", "zstd")];
    let mut apps: Vec<SparkApp> = layouts
        .iter()
        .enumerate()
        .map(|(i, (l, c))| SparkApp::start(&ev, l, c, &work.join(format!("gate-{i}")), true))
        .collect();
    let ids: Vec<String> = apps.iter_mut().map(|a| a.app_id()).collect();
    for a in &mut apps {
        a.wait_for("paused", LONG);
    }
    let dir = work.join("shipped");
    let before = wait_shipped(&server, &ship, &ev, "auto", &dir, false);

    // logship dies; Spark goes on and starts a job that never ends; logship comes back.
    ship.kill9();
    for a in &apps {
        a.go();
    }
    for a in &mut apps {
        a.wait_for("hanging", LONG);
    }
    let ship = logship(&server, &ev, "auto", work, &[]);
    wait_shipped(&server, &ship, &ev, "auto", &dir, false);

    // The driver dies mid-job.
    for a in &mut apps {
        a.kill9();
    }
    end(work, "auto");
    let mut ship = ship;
    let st = ship.wait_exit(LONG);
    assert_eq!(st.code(), Some(0), "logship stderr:\n{}", ship.stderr());
    let after = download(&server, BUCKET, "auto", &dir);
    compare_shipped(&ev, &dir, true).unwrap();
    for (key, bytes) in &before {
        if key.contains("/events_") && !key.ends_with(".zstd") {
            assert!(
                after.get(key) == Some(bytes),
                "{key} was rewritten with other bytes after the restart (an index was reused)"
            );
        }
    }
    for id in &ids {
        assert!(
            after.contains_key(&format!("eventlog_v2_{id}/appstatus_{id}.inprogress")),
            "{id}"
        );
        assert!(
            !after.contains_key(&format!("eventlog_v2_{id}/appstatus_{id}")),
            "{id} marked complete"
        );
    }
    let views = histories(&[&ev, &dir], ids.len());
    assert!(
        completed(&views[0]).iter().all(|(_, c)| !c),
        "{:?}",
        completed(&views[0])
    );
    assert_same_history(&views[0], &views[1], "applications whose driver was killed");
}
