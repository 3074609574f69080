//! Invariant 4: a crash (kill -9) at any instant loses nothing and repeats nothing.
//!
//! A writer appends ~200 MB of lines to two files while logship is killed with SIGKILL at random
//! points (at least 20 times) and restarted on the same buffer directory. At the end, what the
//! output holds for each file is byte-identical to the file.

use std::fs;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use crate::common::*;

const TOTAL_BYTES: u64 = 200 << 20;
const KILLS: usize = 24;

#[test]
fn kill_9_at_random_points_loses_and_repeats_nothing() {
    let env = Env::new();
    let files = [env.path("driver.log"), env.path("stderr.log")];
    for f in &files {
        append(f, b"");
    }
    let written = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let writer = {
        let (written, done, files) = (written.clone(), done.clone(), files.clone());
        std::thread::spawn(move || {
            let mut i = 0usize;
            let mut rng = fastrand::Rng::with_seed(7);
            while written.load(Ordering::SeqCst) < TOTAL_BYTES {
                // Lines of varied length (Spark-like JSON, 50 B .. 6 KB), in writes that often
                // end mid-line, so logship sees partial lines at every instant.
                let mut batch = Vec::new();
                for _ in 0..rng.usize(20..200) {
                    batch.extend(
                        format!(
                            "{{\"Event\":\"SparkListenerTaskEnd\",\"n\":{i},\"pad\":\"{}\"}}\n",
                            "p".repeat(rng.usize(20..6000))
                        )
                        .into_bytes(),
                    );
                    i += 1;
                }
                let f = &files[i % 2];
                let cut = rng.usize(0..batch.len());
                append(f, &batch[..cut]);
                append(f, &batch[cut..]);
                written.fetch_add(batch.len() as u64, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(rng.u64(5..30)));
            }
            done.store(true, Ordering::SeqCst);
        })
    };

    let mut args = env.follow_args("*.log");
    set_flag(&mut args, "--chunk-limit", "2MiB");
    // Chunks stay open up to a second (appended to across commits), then are delivered: most
    // instants have chunk files in the buffer, committed or not.
    set_flag(&mut args, "--flush-mode", "lazy");
    args.extend(["--timekey".into(), "1s".into()]);
    let mut rng = fastrand::Rng::with_seed(42);
    // At least KILLS kills, and keep killing until the writer has finished.
    let mut k = 0;
    let mut phases = std::collections::BTreeMap::new();
    while k < KILLS || !done.load(Ordering::SeqCst) {
        k += 1;
        let mut d = Daemon::spawn(&args, env.dir.path());
        // Random instant: during start-up, reading, committing or delivering.
        std::thread::sleep(Duration::from_millis(rng.u64(20..900)));
        // Where it is, as far as the outside can tell: still starting (no file followed yet),
        // or running with chunks committed and not yet delivered, or with none.
        let in_buffer = fs::read_dir(env.buffer.join("chunks"))
            .map(|rd| {
                rd.flatten()
                    .filter(|e| e.file_name().to_string_lossy().ends_with(".chunk"))
                    .count()
            })
            .unwrap_or(0);
        let phase = if !d.stderr().contains("following file") {
            "start-up"
        } else if in_buffer > 0 {
            "chunks in the buffer"
        } else {
            "all delivered"
        };
        d.kill9();
        *phases.entry(phase).or_insert(0) += 1;
        eprintln!(
            "kill {k} ({phase}, {in_buffer} chunk files): {} MB written so far",
            written.load(Ordering::SeqCst) >> 20
        );
    }
    eprintln!("kills by phase: {phases:?}");
    // The kills must land where it matters: with chunks being written, committed or delivered.
    assert!(
        phases.get("chunks in the buffer").copied().unwrap_or(0) >= KILLS / 3,
        "{phases:?}"
    );
    writer.join().unwrap();
    assert!(done.load(Ordering::SeqCst));

    // A last run ships the rest and drains.
    let mut d = Daemon::spawn(&args, env.dir.path());
    env.signal_end();
    let st = d.wait_exit(Duration::from_secs(300));
    assert!(st.success(), "exit {st:?}; stderr:\n{}", d.stderr());
    for f in &files {
        let tag = f.file_name().unwrap().to_str().unwrap();
        let want = fs::read(f).unwrap();
        let got = collect(&env.out, tag);
        assert_bytes_eq(&got, &want);
    }
    let total: u64 = files.iter().map(|f| fs::metadata(f).unwrap().len()).sum();
    assert!(total >= TOTAL_BYTES);
    // Nothing was left behind: no chunk files, no temporary files in the output.
    let leftover: Vec<_> = fs::read_dir(env.buffer.join("chunks")).unwrap().flatten().collect();
    assert!(leftover.is_empty(), "chunk files left: {leftover:?}");
    let tags: Vec<&str> = files.iter().map(|f| f.file_name().unwrap().to_str().unwrap()).collect();
    assert_only_chunks(&env.out, &tags, total);
}

/// Crashes at each named point (at several occurrences), restarts, and checks the output is
/// byte-identical to the input: no loss, no repetition, whatever instant the crash hit.
///
/// Two flush modes: `immediate` seals a chunk at every commit (exercises delivery steps);
/// `lazy` with a long time key keeps appending to a committed chunk across commits (the input
/// is larger than one 16 MiB commit batch), so a crash after such an append must cut the chunk
/// file back to its committed length on recovery.
#[test]
fn crash_at_each_commit_and_delivery_step_recovers_exactly() {
    let big: Vec<u8> = [lines("crash", 0, 220_000), b"unterminated tail".to_vec()].concat();
    assert!(big.len() > 17 << 20);
    let small = lines("small", 0, 20_000);
    for (mode, timekey) in [("immediate", "30s"), ("lazy", "1h")] {
        // The directory output's points (tests/s3.rs and tests/cloudwatch.rs crash at theirs).
        for (point, _) in logship::crashpoint::POINTS
            .iter()
            .filter(|(p, output)| output.is_none_or(|o| o == "file") && *p != "secondary-written")
        {
            // Block writes: 16 MiB per commit / 256 KiB per write = 64 writes in the first batch.
            let counts: &[u64] = match *point {
                "chunk-written" => &[1, 40, 70],
                // Snapshots: the first commit writes one; later commits append journal records
                // until the journal outgrows the snapshot (unit tests in buffer::tests cover
                // that compaction), which these small runs never reach.
                "state-temp-written" => &[1],
                _ => &[1, 2, 3],
            };
            for &n in counts {
                let crashes = if *point == "recovery-chunk-cut" {
                    // A crash that leaves chunk files longer than committed, then a crash in
                    // the recovery that cuts them back.
                    vec!["chunk-written:70".to_string(), format!("{point}:{n}")]
                } else {
                    vec![format!("{point}:{n}")]
                };
                crash_and_recover(mode, timekey, &crashes, &big, &small);
            }
        }
    }
}

/// Runs once per entry of `crashes` (`point:n`), each run crashing there, then once to the end;
/// the output must be the input exactly.
fn crash_and_recover(mode: &str, timekey: &str, crashes: &[String], big: &[u8], small: &[u8]) {
    let env = Env::new();
    let a = env.path("a.log");
    let b = env.path("b.log");
    fs::write(&a, big).unwrap();
    fs::write(&b, small).unwrap();
    let args = env.once_args(
        "*.log",
        &[
            "--buffer-dir",
            &env.buffer.display().to_string(),
            "--chunk-limit",
            "4MiB",
            "--flush-mode",
            mode,
            "--timekey",
            timekey,
        ],
    );
    let what = format!("{mode} {}", crashes.join(" then "));
    for crash in crashes {
        let mut cmd = crate::common::logship_cmd();
        cmd.env("LOGSHIP_CRASH_AT", crash);
        let mut d = Daemon::spawn_cmd(cmd, &args, env.dir.path());
        let st = d.wait_exit(Duration::from_secs(60));
        assert!(
            !st.success(),
            "{what}: {crash} should have crashed; stderr:\n{}",
            d.stderr()
        );
        assert!(d.stderr().contains("crash point"), "{what}: {}", d.stderr());
    }
    let mut d = Daemon::spawn(&args, env.dir.path());
    let st = d.wait_exit(Duration::from_secs(60));
    assert!(st.success(), "{what}: recovery run failed; stderr:\n{}", d.stderr());
    for (path, tag) in [(&a, "a.log"), (&b, "b.log")] {
        let got = collect(&env.out, tag);
        let want = fs::read(path).unwrap();
        if got != want {
            panic!("after a crash at {what}, {tag}: {}", first_diff(&got, &want));
        }
    }
    assert_only_chunks(&env.out, &["a.log", "b.log"], (big.len() + small.len()) as u64);
}

/// Ships `file` with `--once` into `out` and aborts right after the first commit, leaving a
/// committed, undelivered chunk in `buffer`; returns that chunk file.
fn leave_committed_chunk(env: &Env, pattern: &str, out: &std::path::Path) -> std::path::PathBuf {
    let mut args = env.once_args(
        pattern,
        &[
            "--buffer-dir",
            &env.buffer.display().to_string(),
            "--flush-mode",
            "immediate",
        ],
    );
    set_flag(&mut args, "--to", &format!("file://{}", out.display()));
    let mut cmd = crate::common::logship_cmd();
    cmd.env("LOGSHIP_CRASH_AT", "after-state-write:1");
    let mut d = Daemon::spawn_cmd(cmd, &args, env.dir.path());
    assert!(!d.wait_exit(Duration::from_secs(60)).success(), "{}", d.stderr());
    let chunks: Vec<_> = fs::read_dir(env.buffer.join("chunks"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert_eq!(chunks.len(), 1, "{chunks:?}");
    chunks[0].clone()
}

#[test]
fn a_chunk_file_shorter_than_committed_ships_what_is_real_and_says_what_is_missing() {
    let env = Env::new();
    let content = lines("short", 0, 30_000);
    fs::write(env.path("app.log"), &content).unwrap();
    let chunk = leave_committed_chunk(&env, "app.log", &env.out);
    // The committed chunk is a prefix of the file: all of it, or all but the last line when the
    // crash came before the read was done (the last record is held back until the end of input).
    let committed = fs::read(&chunk).unwrap();
    assert_bytes_eq(&committed, &content[..committed.len()]);
    // As a host crash with fsync = false leaves it.
    fs::OpenOptions::new()
        .write(true)
        .open(&chunk)
        .unwrap()
        .set_len(1000)
        .unwrap();
    let args = env.once_args("app.log", &["--buffer-dir", &env.buffer.display().to_string()]);
    let mut d = Daemon::spawn(&args, env.dir.path());
    let st = d.wait_exit(Duration::from_secs(60));
    let err = d.stderr();
    assert_eq!(
        st.code(),
        Some(4),
        "a run that lost data does not exit 0; stderr:\n{err}"
    );
    // Only the real bytes, never zeros in place of the rest; what was never committed is read again.
    let expected = [&content[..1000], &content[committed.len()..]].concat();
    assert_bytes_eq(&collect(&env.out, "app.log"), &expected);
    let damaged = &d.summary()["damaged_chunks"];
    assert_eq!(
        damaged[0]["missing"].as_u64(),
        Some(committed.len() as u64 - 1000),
        "{err}"
    );
    assert!(
        err.contains("LOST:") && err.contains(&chunk.display().to_string()),
        "{err}"
    );
}

#[test]
fn a_missing_chunk_file_is_reported_and_the_rest_of_the_buffer_is_delivered() {
    let env = Env::new();
    let first = lines("first", 0, 1000);
    fs::write(env.path("a.log"), &first).unwrap();
    let chunk = leave_committed_chunk(&env, "a.log", &env.out);
    // All of a.log, or all but its last line (see above).
    let committed = fs::read(&chunk).unwrap().len();
    fs::remove_file(&chunk).unwrap();
    // A later run on the same buffer, with more to read.
    let second = lines("second", 0, 1000);
    fs::write(env.path("b.log"), &second).unwrap();
    let args = env.once_args("*.log", &["--buffer-dir", &env.buffer.display().to_string()]);
    let mut d = Daemon::spawn(&args, env.dir.path());
    let st = d.wait_exit(Duration::from_secs(60));
    let err = d.stderr();
    assert_eq!(st.code(), Some(4), "stderr:\n{err}");
    assert_bytes_eq(&collect(&env.out, "b.log"), &second);
    assert_bytes_eq(&collect(&env.out, "a.log"), &first[committed..]);
    assert_eq!(
        d.summary()["damaged_chunks"][0]["missing"].as_u64(),
        Some(committed as u64)
    );
    // The state no longer holds it: the next run is clean.
    let mut d = Daemon::spawn(&args, env.dir.path());
    assert!(d.wait_exit(Duration::from_secs(60)).success(), "{}", d.stderr());
}

#[test]
fn recovered_chunks_never_go_to_another_destination() {
    let env = Env::new();
    let secret = b"secret-X of run A\n".repeat(100);
    fs::write(env.path("a.log"), &secret).unwrap();
    let dest_a = env.dir.path().join("destA");
    let dest_b = env.dir.path().join("destB");
    leave_committed_chunk(&env, "a.log", &dest_a);
    // Another run, other files, another destination, the same buffer directory: refused.
    fs::write(env.path("b.log"), b"run B\n").unwrap();
    let mut args = env.once_args("b.log", &["--buffer-dir", &env.buffer.display().to_string()]);
    set_flag(&mut args, "--to", &format!("file://{}", dest_b.display()));
    let mut d = Daemon::spawn(&args, env.dir.path());
    let st = d.wait_exit(Duration::from_secs(60));
    let err = d.stderr();
    assert_eq!(st.code(), Some(1), "{err}");
    assert!(
        err.contains("bound for file://") && err.contains(&dest_a.display().to_string()),
        "{err}"
    );
    assert!(!dest_b.exists(), "nothing reached B");
    // The run that wrote it delivers it.
    set_flag(&mut args, "--to", &format!("file://{}", dest_a.display()));
    let mut d = Daemon::spawn(&args, env.dir.path());
    assert!(d.wait_exit(Duration::from_secs(60)).success(), "{}", d.stderr());
    assert_bytes_eq(&collect(&dest_a, "a.log"), &secret);
}

#[test]
fn the_default_follow_buffer_is_per_user_and_per_configuration() {
    let env = Env::new();
    let tmp = env.dir.path().join("tmp");
    fs::create_dir_all(&tmp).unwrap();
    fs::write(env.path("a.log"), b"secret-X\n").unwrap();
    fs::write(env.path("b.log"), b"run B\n").unwrap();
    let dest_a = env.dir.path().join("destA");
    let dest_b = env.dir.path().join("destB");
    let follow = |file: &str, dest: &std::path::Path| -> Vec<String> {
        vec![
            "ship".into(),
            "--follow".into(),
            env.path(file).display().to_string(),
            "--to".into(),
            format!("file://{}", dest.display()),
            "--signal-file".into(),
            env.signal.display().to_string(),
            "--flush-mode".into(),
            "immediate".into(),
        ]
    };
    // Run A is killed after its first commit, leaving a chunk in its default buffer.
    let mut cmd = crate::common::logship_cmd();
    cmd.env("TMPDIR", &tmp).env("LOGSHIP_CRASH_AT", "after-state-write:1");
    let mut d = Daemon::spawn_cmd(cmd, &follow("a.log", &dest_a), env.dir.path());
    assert!(!d.wait_exit(Duration::from_secs(60)).success(), "{}", d.stderr());
    // Run B, other files to another destination, with the default buffer too.
    env.signal_end();
    let mut cmd = crate::common::logship_cmd();
    cmd.env("TMPDIR", &tmp);
    let mut d = Daemon::spawn_cmd(cmd, &follow("b.log", &dest_b), env.dir.path());
    assert!(d.wait_exit(Duration::from_secs(60)).success(), "{}", d.stderr());
    assert_eq!(collect(&dest_b, "b.log"), b"run B\n");
    assert!(!dest_b.join("a.log").exists(), "A's chunk went to B");
    // The same command as A resumes A's buffer.
    let mut cmd = crate::common::logship_cmd();
    cmd.env("TMPDIR", &tmp);
    let mut d = Daemon::spawn_cmd(cmd, &follow("a.log", &dest_a), env.dir.path());
    assert!(d.wait_exit(Duration::from_secs(60)).success(), "{}", d.stderr());
    assert_eq!(collect(&dest_a, "a.log"), b"secret-X\n");
    // Both live under one private directory of this user.
    use std::os::unix::fs::MetadataExt;
    let uid = fs::metadata(env.dir.path()).unwrap().uid();
    let parent = tmp.join(format!("logship-{uid}"));
    assert_eq!(fs::metadata(&parent).unwrap().mode() & 0o777, 0o700);
    assert_eq!(fs::read_dir(&parent).unwrap().count(), 2);
}

/// Issue 32: a buffer whose state files do not hold together is refused, with the file named, and
/// nothing in it is changed: a journal record damaged in the middle (valid records after it: not a
/// torn append), the snapshot gone beside its journal, or the journal gone beside its snapshot.
/// (They were taken for a torn end, or a fresh start: lines sent again, chunks deleted as
/// unknown, exit 0.)
#[test]
fn a_damaged_state_is_refused_naming_the_file_and_nothing_in_the_buffer_changes() {
    for damage in [
        "a flipped bit mid-journal",
        "state.json deleted",
        "state.journal deleted",
    ] {
        let env = Env::new();
        let log = env.path("app.log");
        append(&log, b"");
        let args = env.follow_args("*.log");
        let mut d = Daemon::spawn(&args, env.dir.path());
        d.wait_until("following", Duration::from_secs(60), || {
            d.stderr().contains("following file")
        });
        // Commits: a snapshot, then a journal record each.
        for round in 0..6 {
            append(&log, &lines("round", round * 100, 100));
            d.wait_until("delivered", Duration::from_secs(60), || {
                collect(&env.out, "app.log").len() == lines("round", 0, (round + 1) * 100).len()
            });
        }
        d.kill9();
        let journal = env.buffer.join("state.journal");
        match damage {
            "a flipped bit mid-journal" => {
                let mut bytes = fs::read(&journal).unwrap();
                // Records: [length u32][FNV-1a u64][payload]; damage the second one's payload.
                let mut at = 0;
                let mut starts = Vec::new();
                while at + 12 <= bytes.len() {
                    starts.push(at);
                    at += 12 + u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
                }
                assert!(starts.len() >= 3, "{damage}: {} records", starts.len());
                bytes[starts[1] + 20] ^= 0x10;
                fs::write(&journal, bytes).unwrap();
            }
            "state.json deleted" => fs::remove_file(env.buffer.join("state.json")).unwrap(),
            _ => fs::remove_file(&journal).unwrap(),
        }
        let files = |dir: &std::path::Path| -> Vec<(String, Vec<u8>)> {
            let mut v: Vec<_> = walk(dir)
                .into_iter()
                .filter(|p| !p.ends_with(".lock") && !p.ends_with(".reserve"))
                .map(|p| (p.display().to_string(), fs::read(&p).unwrap()))
                .collect();
            v.sort();
            v
        };
        let before = files(&env.buffer);
        let mut d = Daemon::spawn(&args, env.dir.path());
        let st = d.wait_exit(Duration::from_secs(60));
        let err = d.stderr();
        assert!(!st.success(), "{damage}: {err}");
        let named = if damage == "state.json deleted" {
            "state.json"
        } else {
            "state.journal"
        };
        assert!(
            err.contains(named) && err.contains("Nothing was changed"),
            "{damage}: {err}"
        );
        assert_eq!(files(&env.buffer), before, "{damage}: the buffer was changed");
    }
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).unwrap().flatten() {
        if e.file_type().unwrap().is_dir() {
            out.extend(walk(&e.path()));
        } else {
            out.push(e.path());
        }
    }
    out
}
