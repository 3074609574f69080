//! The end of the main container: heartbeat stale or deleted, SIGTERM, signal file, heartbeat
//! that never appears. In each case the lines written before the end are delivered and logship
//! exits 0.

mod common;

use std::fs;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use common::*;

const T: Duration = Duration::from_secs(60);

/// Touches `path` every 200 ms until `stop` is set (the Spark container's heartbeat, faster).
fn heartbeat(path: std::path::PathBuf, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        while !stop.load(Ordering::SeqCst) {
            let f = fs::OpenOptions::new().create(true).append(true).open(&path).unwrap();
            f.set_modified(SystemTime::now()).unwrap();
            std::thread::sleep(Duration::from_millis(200));
        }
    })
}

fn heartbeat_args(env: &Env, hb: &std::path::Path) -> Vec<String> {
    vec![
        "ship".into(),
        "--follow".into(),
        env.path("*.log").display().to_string(),
        "--to".into(),
        format!("file://{}", env.out.display()),
        "--buffer-dir".into(),
        env.buffer.display().to_string(),
        "--heartbeat-file".into(),
        hb.display().to_string(),
        "--heartbeat-timeout".into(),
        "2s".into(),
        // Lazy flush with a long time key: nothing is sealed before the drain, so the drain
        // itself must seal and deliver everything.
        "--timekey".into(),
        "1h".into(),
    ]
}

/// Ends the heartbeat by `end` and checks that the last lines arrive and logship exits 0.
fn heartbeat_end_delivers_everything(end: impl FnOnce(&std::path::Path)) {
    let env = Env::new();
    let hb = env.dir.path().join("main-container-terminated");
    let stop = Arc::new(AtomicBool::new(false));
    let toucher = heartbeat(hb.clone(), stop.clone());
    let p = env.path("stdout.log");
    let first = lines("early", 0, 2000);
    append(&p, &first);
    let mut d = Daemon::spawn(&heartbeat_args(&env, &hb), env.dir.path());
    wait_until("logship follows the file", T, || d.stderr().contains("following file"));
    // The last lines, written just before the main container ends (one without a newline).
    let last = [lines("late", 0, 50), b"final words".to_vec()].concat();
    append(&p, &last);
    stop.store(true, Ordering::SeqCst);
    toucher.join().unwrap();
    let ended = Instant::now();
    end(&hb);
    let st = d.wait_exit(T);
    assert!(st.success(), "exit {st:?}; stderr:\n{}", d.stderr());
    let took = ended.elapsed();
    assert_bytes_eq(&collect(&env.out, "stdout.log"), &[first, last].concat());
    eprintln!("exited {took:?} after the heartbeat stopped");
}

#[test]
fn stale_heartbeat_drains_and_exits_zero() {
    heartbeat_end_delivers_everything(|_| {});
}

#[test]
fn deleted_heartbeat_drains_and_exits_zero() {
    heartbeat_end_delivers_everything(|hb| fs::remove_file(hb).unwrap());
}

#[test]
fn heartbeat_that_never_appears_drains_after_the_appear_timeout() {
    let env = Env::new();
    let hb = env.dir.path().join("never");
    let content = lines("x", 0, 10);
    append(&env.path("a.log"), &content);
    let mut args = heartbeat_args(&env, &hb);
    args.extend(["--heartbeat-appear-timeout".into(), "1s".into()]);
    let mut d = Daemon::spawn(&args, env.dir.path());
    let st = d.wait_exit(T);
    assert!(st.success(), "stderr:\n{}", d.stderr());
    assert!(d.stderr().contains("never appeared"), "{}", d.stderr());
    assert_bytes_eq(&collect(&env.out, "a.log"), &content);
}

#[test]
fn sigterm_mid_stream_delivers_everything_written_before_it() {
    let env = Env::new();
    let p = env.path("stream.log");
    append(&p, b"");
    let mut args = env.follow_args("*.log");
    // No signal file in this test: SIGTERM ends it. Lazy flush, long time key.
    set_flag(&mut args, "--flush-mode", "lazy");
    set_flag(&mut args, "--timekey", "1h");
    let mut d = Daemon::spawn(&args, env.dir.path());
    wait_until("logship follows the file", T, || d.stderr().contains("following file"));
    let stop = Arc::new(AtomicBool::new(false));
    let written = Arc::new(AtomicU64::new(0));
    let writer = {
        let (stop, written, p) = (stop.clone(), written.clone(), p.clone());
        std::thread::spawn(move || {
            let mut i = 0;
            while !stop.load(Ordering::SeqCst) {
                let chunk = lines("stream", i, 100);
                append(&p, &chunk);
                written.fetch_add(chunk.len() as u64, Ordering::SeqCst);
                i += 100;
                std::thread::sleep(Duration::from_millis(2));
            }
        })
    };
    wait_until("some data written", T, || written.load(Ordering::SeqCst) > 2_000_000);
    let before_signal = written.load(Ordering::SeqCst);
    d.signal("TERM");
    let st = d.wait_exit(T);
    stop.store(true, Ordering::SeqCst);
    writer.join().unwrap();
    assert!(st.success(), "exit {st:?}; stderr:\n{}", d.stderr());
    assert!(d.stderr().contains("SIGTERM"));
    let got = collect(&env.out, "stream.log");
    let file = fs::read(&p).unwrap();
    assert!(
        got.len() as u64 >= before_signal,
        "{} bytes delivered, {before_signal} written before SIGTERM",
        got.len()
    );
    assert_bytes_eq(&got, &file[..got.len()]);
}

#[test]
fn signal_file_appearing_drains_and_exits_zero() {
    let env = Env::new();
    let content = [lines("s", 0, 100), b"no newline".to_vec()].concat();
    append(&env.path("a.log"), &content);
    let mut args = env.follow_args("*.log");
    set_flag(&mut args, "--flush-mode", "lazy");
    set_flag(&mut args, "--timekey", "1h");
    let mut d = Daemon::spawn(&args, env.dir.path());
    wait_until("logship follows the file", T, || d.stderr().contains("following file"));
    env.signal_end();
    let st = d.wait_exit(T);
    assert!(st.success(), "stderr:\n{}", d.stderr());
    assert_bytes_eq(&collect(&env.out, "a.log"), &content);
    assert!(d.summary()["drain_reason"].as_str().unwrap().contains("signal file"));
}

#[test]
fn undeliverable_chunks_go_to_the_secondary_directory_and_the_exit_code_says_so() {
    let env = Env::new();
    let content = lines("s", 0, 100);
    append(&env.path("a.log"), &content);
    // The output directory is a file: every delivery fails. A permanent key error would skip
    // retries; here the error is an I/O error, retried until the drain deadline.
    fs::write(&env.out, b"not a directory").unwrap();
    let args = env.once_args(
        "a.log",
        &[
            "--buffer-dir",
            &env.buffer.display().to_string(),
            "--drain-deadline",
            "3s",
        ],
    );
    let mut d = Daemon::spawn(&args, env.dir.path());
    let st = d.wait_exit(T);
    assert_eq!(st.code(), Some(3), "stderr:\n{}", d.stderr());
    let secondary = env.buffer.join("secondary/out.chunk.0");
    assert_bytes_eq(&fs::read(&secondary).unwrap(), &content);
    assert!(
        d.stderr().contains("NOT DELIVERED") && d.stderr().contains("out.chunk.0"),
        "{}",
        d.stderr()
    );
}
