//! The end of the main container: heartbeat stale or deleted, SIGTERM, signal file, heartbeat
//! that never appears. In each case the lines written before the end are delivered and logship
//! exits 0.

use std::fs;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use crate::common::*;

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
        // Far above any stall of the test's toucher thread on a loaded machine; the tests make
        // the heartbeat stale on purpose.
        "--heartbeat-timeout".into(),
        "30s".into(),
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
    // As if the main container stopped touching it an hour ago.
    heartbeat_end_delivers_everything(|hb| {
        let hour_ago = SystemTime::now() - Duration::from_secs(3600);
        fs::File::options()
            .write(true)
            .open(hb)
            .unwrap()
            .set_modified(hour_ago)
            .unwrap();
    });
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
    // What existed is delivered, but a run that never saw its main container does not exit 0
    // (issue 35: a wrong termination mode used to lose every later line with exit 0).
    let st = d.wait_exit(T);
    assert_eq!(st.code(), Some(4), "stderr:\n{}", d.stderr());
    assert!(
        d.stderr().contains("NOT FOLLOWED: the heartbeat file") && d.stderr().contains("never appeared"),
        "{}",
        d.stderr()
    );
    assert_bytes_eq(&collect(&env.out, "a.log"), &content);
}

#[test]
fn sigterm_mid_stream_delivers_everything_written_before_it() {
    signal_mid_stream_delivers_everything_written_before_it("TERM");
}

/// Issue 34: SIGINT (Ctrl-C on a terminal) drains exactly as SIGTERM does.
#[test]
fn sigint_mid_stream_delivers_everything_written_before_it() {
    signal_mid_stream_delivers_everything_written_before_it("INT");
}

fn signal_mid_stream_delivers_everything_written_before_it(sig: &str) {
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
    d.signal(sig);
    let st = d.wait_exit(T);
    stop.store(true, Ordering::SeqCst);
    writer.join().unwrap();
    assert!(st.success(), "exit {st:?}; stderr:\n{}", d.stderr());
    assert!(d.stderr().contains(&format!("SIG{sig}")), "{}", d.stderr());
    let got = collect(&env.out, "stream.log");
    let file = fs::read(&p).unwrap();
    assert!(
        got.len() as u64 >= before_signal,
        "{} bytes delivered, {before_signal} written before SIGTERM",
        got.len()
    );
    assert_bytes_eq(&got, &file[..got.len()]);
    // The drain stopped at the drain point: what was written after it is still to ship, and a
    // restart on the same buffer ships exactly that (issue 20).
    assert!(got.len() < file.len(), "the writer kept writing after the drain point");
    let mut again = env.once_args(
        "*.log",
        &["--buffer-dir", env.buffer.to_str().unwrap(), "--timekey", "1h"],
    );
    set_flag(&mut again, "--to", &format!("file://{}", env.out.display()));
    let mut d = Daemon::spawn(&again, env.dir.path());
    assert!(d.wait_exit(T).success(), "{}", d.stderr());
    assert_bytes_eq(&collect(&env.out, "stream.log"), &file);
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

/// CPU seconds (user + system) a process has used, from /proc/PID/stat.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which is in parentheses and may hold spaces).
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap();
    let hz = clk_tck();
    ticks / hz
}

/// The kernel's clock tick rate for /proc times (`getconf CLK_TCK`).
fn clk_tck() -> f64 {
    let out = std::process::Command::new("getconf").arg("CLK_TCK").output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

/// An S3 destination that refuses every connection: deliveries fail and are retried.
fn unreachable_s3(env: &Env, extra: &[&str]) -> std::process::Command {
    let port = free_port(); // nothing listens there
    let mut cmd = crate::common::logship_cmd();
    cmd.env("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
        .env("AWS_SECRET_ACCESS_KEY", "secret")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .args(["ship", "--once"])
        .arg(env.path("app.log"))
        .args(["--to", "s3://bucket/logs", "--path-style", "--endpoint"])
        .arg(format!("http://127.0.0.1:{port}"))
        .args(extra);
    cmd
}

#[test]
fn a_drain_waiting_on_delivery_sleeps_instead_of_spinning() {
    let env = Env::new();
    append(&env.path("app.log"), &lines("wait", 0, 1000));
    let d = Daemon::spawn_cmd(unreachable_s3(&env, &[]), &[], env.dir.path());
    // Reading is done and the drain waits on an output that keeps failing.
    d.wait_until("a delivery fails and is retried", T, || {
        d.stderr().contains("delivery failed; retrying")
    });
    let pid = d.child.id();
    let before = cpu_seconds(pid);
    std::thread::sleep(Duration::from_secs(10));
    let used = cpu_seconds(pid) - before;
    assert!(
        used < 1.0,
        "{used:.2} CPU-seconds used in 10 s of waiting on retries; stderr:\n{}",
        d.stderr()
    );
    d.signal("KILL");
}

#[test]
fn retry_jitter_differs_between_processes() {
    let env = Env::new();
    append(&env.path("app.log"), &lines("jitter", 0, 10));
    let buffers = [env.dir.path().join("b1"), env.dir.path().join("b2")];
    let mut ds: Vec<Daemon> = buffers
        .iter()
        .map(|b| {
            let mut cmd = unreachable_s3(&env, &["--buffer-dir", &b.display().to_string()]);
            // Each retry's wait is logged at debug level (a failing output logs one warning a
            // minute).
            cmd.env("LOGSHIP_LOG", "info,logship=debug");
            Daemon::spawn_cmd(cmd, &[], env.dir.path())
        })
        .collect();
    let waits = |d: &Daemon| -> Vec<String> {
        d.stderr()
            .lines()
            .filter_map(|l| l.split("retry_in=").nth(1))
            .map(|w| w.split_whitespace().next().unwrap_or("").to_string())
            .collect()
    };
    for d in &ds {
        d.wait_until("two retries", T, || waits(d).len() >= 2);
    }
    let (a, b) = (waits(&ds[0]), waits(&ds[1]));
    assert_ne!(
        a[..2],
        b[..2],
        "two processes wait the same jittered times: {a:?} / {b:?}"
    );
    for d in &mut ds {
        d.kill9();
    }
}

#[test]
fn signals_during_once_drain_with_a_summary_and_others_never_kill() {
    let env = Env::new();
    let content = lines("sig", 0, 100);
    append(&env.path("app.log"), &content);
    // The tag's directory is blocked: delivery fails and is retried, so the drain waits.
    fs::create_dir_all(&env.out).unwrap();
    fs::write(env.out.join("app.log"), b"blocked").unwrap();
    let args = env.once_args("app.log", &["--buffer-dir", &env.buffer.display().to_string()]);
    let mut d = Daemon::spawn(&args, env.dir.path());
    d.wait_until("a delivery is retried", T, || {
        d.stderr().contains("delivery failed; retrying")
    });
    for sig in ["HUP", "USR1", "USR2"] {
        d.signal(sig);
    }
    d.wait_until("the signals are logged", T, || {
        let err = d.stderr();
        err.matches("ignored (SIGTERM").count() == 2 && err.contains("ignored during the drain")
    });
    assert!(
        d.child.try_wait().unwrap().is_none(),
        "a signal killed it: {}",
        d.stderr()
    );
    d.signal("TERM");
    d.wait_until("reading stops", T, || d.stderr().contains("reading stops"));
    d.signal("TERM");
    let st = d.wait_exit(T);
    let err = d.stderr();
    // Not 143: a summary, and the chunk it could not deliver is in the secondary directory.
    assert_eq!(st.code(), Some(3), "{err}");
    let secondary = &d.summary()["outputs"][0]["secondary"][0];
    assert_eq!(fs::read(secondary["file"].as_str().unwrap()).unwrap(), content);
}

/// Issue 14, item 14: SIGHUP reloads the configuration while lines keep coming, without losing
/// or repeating one: a new source in the new configuration is followed; an invalid
/// configuration, or one that moves the buffer directory, is logged and the running one stays.
#[test]
fn sighup_reloads_the_configuration_without_losing_or_repeating_a_line() {
    let env = Env::new();
    let config = |extra_source: &str, buffer: &str| {
        format!(
            r#"
[buffer]
dir = "{buffer}"
flush_mode = "immediate"
[[source]]
type = "tail"
paths = ["{{input}}/*.log"]
{extra_source}
[[output]]
type = "file"
dir = "{{out}}"
[lifecycle]
signal_file = "{{signal}}"
drain_deadline = "60s"
"#
        )
    };
    let buffer = env.buffer.display().to_string();
    let args = env.run_config(&config("", &buffer));
    let cfg = std::path::PathBuf::from(&args[2]);
    let rewrite = |text: String| {
        let text = text
            .replace("{input}", &env.input.display().to_string())
            .replace("{out}", &env.out.display().to_string())
            .replace("{signal}", &env.signal.display().to_string());
        fs::write(&cfg, text).unwrap();
    };
    let log = env.path("app.log");
    append(&log, b"");
    let mut d = Daemon::spawn(&args, env.dir.path());
    d.wait_until("following", T, || d.stderr().contains("following file"));
    // A writer that keeps going through all the reloads.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (stop, log) = (stop.clone(), log.clone());
        std::thread::spawn(move || {
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                append(&log, &lines("reload", n, 50));
                n += 50;
                std::thread::sleep(Duration::from_millis(5));
            }
            n
        })
    };
    // 1. Invalid: logged, the running configuration stays.
    fs::write(&cfg, "[[source]]\ntype = \"tail\"\n").unwrap();
    d.signal("HUP");
    d.wait_until("the invalid one is refused", T, || {
        d.stderr()
            .contains("the new configuration is invalid; the running one stays")
    });
    // 2. Another buffer directory: refused.
    rewrite(config("", &format!("{buffer}-elsewhere")));
    d.signal("HUP");
    d.wait_until("the move is refused", T, || {
        d.stderr().contains("moves the buffer directory")
    });
    // 3. Valid but cannot start (its metrics address is taken): logged, the old one starts again.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    rewrite(format!(
        "{}\n[metrics]\nlisten = \"{}\"\n",
        config("", &buffer),
        taken.local_addr().unwrap()
    ));
    d.signal("HUP");
    d.wait_until("the old one runs again", T, || {
        d.stderr()
            .contains("the reloaded configuration cannot start; going back to the one that ran")
    });
    // 4. Valid, with one more source: reloaded, twice in a row.
    fs::write(env.input.join("new.txt"), lines("only-in-the-new-config", 0, 200)).unwrap();
    rewrite(config(
        "[[source]]\ntype = \"tail\"\npaths = [\"{input}/*.txt\"]",
        &buffer,
    ));
    d.signal("HUP");
    d.wait_until("reloaded", T, || {
        d.stderr().contains("configuration reloaded; running with it")
    });
    d.signal("HUP");
    d.wait_until("reloaded again", T, || {
        d.stderr().matches("configuration reloaded; running with it").count() == 2
    });
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let written = writer.join().unwrap();
    env.signal_end();
    let st = d.wait_exit(T);
    let err = d.stderr();
    assert_eq!(st.code(), Some(0), "{err}");
    assert!(
        !env.buffer.with_file_name("buffer-elsewhere").exists(),
        "the refused buffer directory was not made"
    );
    // Every line exactly once, in order (one file, one tag).
    assert_bytes_eq(&collect(&env.out, "app.log"), &lines("reload", 0, written));
    assert_bytes_eq(&collect(&env.out, "new.txt"), &lines("only-in-the-new-config", 0, 200));
}

/// Issue 20: a drain that cannot finish says so with exit 4, and nothing is lost: the output is
/// stalled and the buffer full, so at the drain deadline most of the file was never read. What was
/// read goes to the secondary directory, the rest is reported as not read (its exact byte count),
/// and a restart on the same buffer ships exactly the rest.
#[test]
fn a_drain_that_cannot_finish_exits_4_and_a_restart_ships_exactly_the_rest() {
    use crate::common::s3::{Fault, FaultProxy, S3Server, collect_s3};
    let server = S3Server::start(&["logs"]);
    let proxy = FaultProxy::start(&server.endpoint, vec![], Fault::Stall);
    let env = Env::new();
    let file = lines("stalled", 0, 120_000);
    append(&env.path("app.log"), &file);
    let secondary = env.dir.path().join("secondary");
    let config = |deadline: &str| {
        env.run_config(&format!(
            r#"
[buffer]
dir = "{{buffer}}"
chunk_limit = "256KiB"
total_limit = "512KiB"
flush_mode = "immediate"
[lifecycle]
signal_file = "{{signal}}"
drain_deadline = "{deadline}"
[[source]]
type = "tail"
paths = ["{{input}}/app.log"]
[[output]]
name = "s3"
type = "s3"
path = "rest"
key_format = "%{{path}}/%{{tag}}/%{{time_slice}}_%{{index}}.%{{file_extension}}"
secondary = {{ directory = "{}" }}
s3 = {{ bucket = "logs", endpoint = "{}", force_path_style = true, request_timeout = "60s" }}
"#,
            secondary.display(),
            proxy.endpoint
        ))
    };
    let mut cmd = logship_cmd();
    cmd.envs(server.env());
    let mut d = Daemon::spawn_cmd(cmd, &config("2s"), env.dir.path());
    wait_until("reading pauses on the full buffer", T, || {
        d.stderr().contains("reading pauses")
    });
    env.signal_end();
    assert_eq!(d.wait_exit(T).code(), Some(4), "{}", d.stderr());
    // What was read is in the secondary directory, in order; the rest is reported, to the byte.
    let mut parts: Vec<(u64, std::path::PathBuf)> = fs::read_dir(&secondary)
        .unwrap()
        .flatten()
        .filter(|e| e.path().is_file())
        .map(|e| {
            (
                e.path().extension().unwrap().to_str().unwrap().parse().unwrap(),
                e.path(),
            )
        })
        .collect();
    parts.sort();
    let aside: Vec<u8> = parts.iter().flat_map(|(_, p)| fs::read(p).unwrap()).collect();
    assert!(
        !aside.is_empty() && aside.len() < file.len() / 2,
        "{} bytes set aside",
        aside.len()
    );
    assert_bytes_eq(&aside, &file[..aside.len()]);
    let unread = &d.summary()["unread"];
    assert_eq!(
        unread[0][1].as_u64(),
        Some((file.len() - aside.len()) as u64),
        "{unread}"
    );
    assert!(d.stderr().contains("NOT READ"), "{}", d.stderr());
    // The output is back: a restart ships exactly the rest, once.
    proxy.set_always(Fault::Pass);
    let mut cmd = logship_cmd();
    cmd.envs(server.env());
    let mut d = Daemon::spawn_cmd(cmd, &config("120s"), env.dir.path());
    assert_eq!(d.wait_exit(T).code(), Some(0), "{}", d.stderr());
    assert_bytes_eq(&collect_s3(&server, "rest", "app.log", "text"), &file[aside.len()..]);
}

/// Issue 32: a reload never forgets a checkpoint. A source that a reload drops and the next one
/// brings back, or that a reload renames, resumes where its files were (checkpoints belong to
/// files, not to sources' names): nothing is read twice, and with `read_from = "end"` nothing
/// written while it was gone is skipped. The exit summary counts what every configuration of the
/// run delivered.
#[test]
fn a_source_dropped_renamed_or_brought_back_by_a_reload_resumes_where_its_files_were() {
    let env = Env::new();
    let (a, b) = (env.input.join("a"), env.input.join("b"));
    fs::create_dir_all(&a).unwrap();
    fs::create_dir_all(&b).unwrap();
    let (x, y) = (a.join("x.log"), b.join("y.log"));
    // Present before the start: with read_from = "end", y's first lines are not shipped.
    append(&x, &lines("x", 0, 100));
    append(&y, &lines("before-start", 0, 100));
    let config = |b_source: &str| {
        format!(
            r#"
[buffer]
dir = "{{buffer}}"
flush_mode = "immediate"
[lifecycle]
signal_file = "{{signal}}"
drain_deadline = "60s"
[[source]]
name = "a"
type = "tail"
paths = ["{{input}}/a/*.log"]
{b_source}
[[output]]
type = "file"
dir = "{{out}}"
"#
        )
    };
    let with_b = |name: &str| {
        config(&format!(
            "[[source]]\nname = \"{name}\"\ntype = \"tail\"\npaths = [\"{{input}}/b/*.log\"]\nread_from = \"end\"\n"
        ))
    };
    let args = env.run_config(&with_b("b"));
    let mut d = Daemon::spawn(&args, env.dir.path());
    d.wait_until("both files followed", T, || {
        d.stderr().matches("following file").count() == 2
    });
    let (mut nx, mut ny) = (100, 0);
    let mut write = |n: usize| {
        append(&x, &lines("x", nx, n));
        append(&y, &lines("y", ny, n));
        nx += n;
        ny += n;
    };
    let delivered = |tag: &str| collect(&env.out, tag).iter().filter(|&&c| c == b'\n').count();
    write(100);
    d.wait_until("the first lines", T, || {
        delivered("x.log") == 200 && delivered("y.log") == 100
    });
    let mut reloads = 0;
    let mut reload = |d: &Daemon, text: String| {
        env.run_config(&text);
        d.signal("HUP");
        reloads += 1;
        d.wait_until("reloaded", T, || {
            d.stderr().matches("configuration reloaded; running with it").count() == reloads
        });
    };
    // Without b: y is followed by no source; its lines wait in the file.
    reload(&d, config(""));
    write(100);
    d.wait_until("x's lines", T, || delivered("x.log") == 300);
    // b comes back: it resumes at its checkpoint, neither from the start nor from the end.
    reload(&d, with_b("b"));
    write(100);
    d.wait_until("y caught up", T, || delivered("y.log") == 300);
    // b renamed: the new name takes the old name's checkpoint.
    reload(&d, with_b("renamed-b"));
    write(100);
    d.wait_until("y again", T, || delivered("y.log") == 400);
    // And a dozen reloads in a row while lines keep coming.
    for i in 0..12 {
        reload(&d, with_b(if i % 2 == 0 { "b" } else { "renamed-b" }));
        write(50);
    }
    env.signal_end();
    let st = d.wait_exit(T);
    let err = d.stderr();
    assert_eq!(st.code(), Some(0), "{err}");
    assert_bytes_eq(&collect(&env.out, "x.log"), &lines("x", 0, nx));
    assert_bytes_eq(&collect(&env.out, "y.log"), &lines("y", 0, ny));
    let summary = d.summary();
    let total = fs::metadata(&x).unwrap().len() + lines("y", 0, ny).len() as u64;
    assert_eq!(
        summary["outputs"][0]["bytes_delivered"].as_u64(),
        Some(total),
        "the summary counts every configuration's deliveries: {summary}"
    );
}

/// Issue 34: when even the secondary write fails (its directory cannot be made), the chunk
/// stays in the buffer, the summary names it, and the exit code is 4; a later run with a usable
/// secondary directory puts the exact bytes there.
#[test]
fn a_secondary_write_that_fails_keeps_the_chunk_in_the_buffer_and_exits_4() {
    let env = Env::new();
    let a = lines("kept", 0, 20);
    fs::write(env.path("app.log"), &a).unwrap();
    let blocker = env.dir.path().join("a-file");
    fs::write(&blocker, b"").unwrap();
    let run = |secondary: &std::path::Path| {
        let mut args = env.once_args(
            "app.log",
            &[
                "--buffer-dir",
                env.buffer.to_str().unwrap(),
                "--secondary-dir",
                secondary.to_str().unwrap(),
            ],
        );
        // The output itself fails for good: its directory is a file.
        set_flag(&mut args, "--to", &format!("file://{}", blocker.display()));
        let mut d = Daemon::spawn(&args, env.dir.path());
        let code = d.wait_exit(T).code();
        (code, d.stderr())
    };
    let (code, err) = run(&blocker.join("secondary"));
    assert_eq!(code, Some(4), "{err}");
    assert!(
        err.contains("cannot write the secondary file") && err.contains("are still in"),
        "{err}"
    );
    let good = env.dir.path().join("secondary");
    let (code, err) = run(&good);
    assert_eq!(code, Some(3), "{err}");
    let files = files_in(&good);
    assert_eq!(files.len(), 1, "{files:?}");
    assert_bytes_eq(&fs::read(&files[0]).unwrap(), &a);
}
