//! Invariant 4: a crash (kill -9) at any instant loses nothing and repeats nothing.
//!
//! A writer appends ~200 MB of lines to two files while logship is killed with SIGKILL at random
//! points (at least 20 times) and restarted on the same buffer directory. At the end, what the
//! output holds for each file is byte-identical to the file.

mod common;

use std::fs;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use common::*;

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
    let mut rng = fastrand::Rng::with_seed(42);
    // At least KILLS kills, and keep killing until the writer has finished.
    let mut k = 0;
    while k < KILLS || !done.load(Ordering::SeqCst) {
        k += 1;
        let mut d = Daemon::spawn(&args, env.dir.path());
        // Random instant: during start-up, reading, committing or delivering.
        std::thread::sleep(Duration::from_millis(rng.u64(20..900)));
        d.kill9();
        eprintln!("kill {k}: {} MB written so far", written.load(Ordering::SeqCst) >> 20);
    }
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
        for point in logship::crashpoint::POINTS {
            // Block writes: 16 MiB per commit / 256 KiB per write = 64 writes in the first batch.
            let counts: &[u64] = if *point == "chunk-written" {
                &[1, 40, 70]
            } else {
                &[1, 2, 3]
            };
            for &n in counts {
                crash_and_recover(mode, timekey, point, n, &big, &small);
            }
        }
    }
}

fn crash_and_recover(mode: &str, timekey: &str, point: &str, n: u64, big: &[u8], small: &[u8]) {
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
    let what = format!("{mode} {point}:{n}");
    let mut cmd = std::process::Command::new(bin());
    cmd.env("LOGSHIP_CRASH_AT", format!("{point}:{n}"));
    let mut d = Daemon::spawn_cmd(cmd, &args, env.dir.path());
    let st = d.wait_exit(Duration::from_secs(60));
    assert!(!st.success(), "{what} should have crashed; stderr:\n{}", d.stderr());
    assert!(d.stderr().contains("crash point"), "{what}: {}", d.stderr());
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
}
