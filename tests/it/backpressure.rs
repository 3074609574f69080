//! Invariant 5: when the buffer reaches its disk limit, reading pauses; nothing is dropped, and
//! reading resumes once deliveries free space.

use std::fs;
use std::time::Duration;

use crate::common::*;

fn chunk_bytes(buffer: &std::path::Path) -> u64 {
    fs::read_dir(buffer.join("chunks"))
        .map(|rd| rd.flatten().filter_map(|e| e.metadata().ok()).map(|m| m.len()).sum())
        .unwrap_or(0)
}

#[test]
fn a_full_buffer_pauses_reading_and_resumes_when_the_output_recovers() {
    let env = Env::new();
    let content = lines("bp", 0, 80_000);
    assert!(content.len() > 6 << 20);
    fs::write(env.path("app.log"), &content).unwrap();
    // The tag's directory in the output is blocked by a regular file: every delivery fails and
    // is retried. (An output directory that is itself a file is a permanent error.)
    fs::create_dir_all(&env.out).unwrap();
    let blocker = env.out.join("app.log");
    fs::write(&blocker, b"blocked").unwrap();
    let args = env.run_config(
        r#"
[buffer]
dir = "{buffer}"
chunk_limit = "256KiB"
total_limit = "1MiB"
flush_mode = "immediate"

[[source]]
type = "tail"
paths = ["{input}/app.log"]

[[output]]
type = "file"
dir = "{out}"
[output.retry]
wait = "100ms"
max_interval = "300ms"
max_times = 100000
timeout = "10m"

[lifecycle]
signal_file = "{signal}"
"#,
    );
    let mut d = Daemon::spawn(&args, env.dir.path());
    wait_until("the buffer fills up", Duration::from_secs(60), || {
        d.stderr().contains("buffer is full")
    });
    // While the output is down, the buffer stays at its limit (to within one 256 KiB read block).
    let mut most = 0;
    for _ in 0..20 {
        most = most.max(chunk_bytes(&env.buffer));
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(most >= 768 << 10, "the buffer filled ({most} bytes)");
    assert!(
        most <= (1 << 20) + (256 << 10),
        "the buffer stayed under its limit ({most} bytes)"
    );
    // The output comes back: everything is delivered, nothing was dropped.
    fs::remove_file(&blocker).unwrap();
    wait_until("everything delivered", Duration::from_secs(120), || {
        collect(&env.out, "app.log").len() == content.len()
    });
    env.signal_end();
    let st = d.wait_exit(Duration::from_secs(60));
    assert!(st.success(), "{}", d.stderr());
    assert_bytes_eq(&collect(&env.out, "app.log"), &content);
}
