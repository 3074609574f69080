//! A full disk or a read-only buffer directory: a clear error naming the path, nothing read lost.
//!
//! The buffer directory is a real tmpfs mounted in a private user and mount namespace
//! (`unshare`, util-linux), so the tests need no root and leave nothing mounted.

mod common;

use std::fs;
use std::process::Command;
use std::time::Duration;

use common::*;

/// A command that runs logship with a tmpfs mounted on `buffer` (`opts`, e.g. "size=1m" or "ro").
fn in_tmpfs(buffer: &std::path::Path, opts: &str) -> Command {
    fs::create_dir_all(buffer).unwrap();
    let mut cmd = Command::new("unshare");
    cmd.args(["--user", "--map-root-user", "--mount", "sh", "-c"])
        .arg(r#"mount -t tmpfs -o "$1" logship-test "$2" && shift 2 && exec "$@""#)
        .arg("sh")
        .arg(opts)
        .arg(buffer)
        .arg(bin());
    cmd
}

#[test]
fn a_full_buffer_disk_pauses_reading_names_the_path_and_loses_nothing() {
    let env = Env::new();
    // 6 MiB of input through a 1 MiB buffer file system.
    let content = lines("disk", 0, 70_000);
    assert!(content.len() > 5 << 20);
    fs::write(env.path("app.log"), &content).unwrap();
    let args = env.once_args(
        "app.log",
        &[
            "--buffer-dir",
            &env.buffer.display().to_string(),
            "--chunk-limit",
            "128KiB",
            "--flush-mode",
            "immediate",
            "--drain-deadline",
            "120s",
        ],
    );
    let mut d = Daemon::spawn_cmd(in_tmpfs(&env.buffer, "size=1m"), &args, env.dir.path());
    let st = d.wait_exit(Duration::from_secs(180));
    let err = d.stderr();
    assert!(st.success(), "exit {st:?}; stderr:\n{err}");
    assert_bytes_eq(&collect(&env.out, "app.log"), &content);
    assert!(err.contains("No space left on device"), "the error says why:\n{err}");
    assert!(
        err.contains(&env.buffer.display().to_string()),
        "the error names the path:\n{err}"
    );
    assert!(d.summary()["write_errors"].as_u64().unwrap() > 0);
}

#[test]
fn a_read_only_buffer_directory_is_a_clear_error_before_anything_is_read() {
    let env = Env::new();
    fs::write(env.path("app.log"), b"a line\n").unwrap();
    let args = env.once_args("app.log", &["--buffer-dir", &env.buffer.display().to_string()]);
    let mut d = Daemon::spawn_cmd(in_tmpfs(&env.buffer, "ro"), &args, env.dir.path());
    let st = d.wait_exit(Duration::from_secs(60));
    let err = d.stderr();
    assert_eq!(st.code(), Some(1), "stderr:\n{err}");
    assert!(
        err.contains(&format!("buffer directory {} is not usable", env.buffer.display())),
        "{err}"
    );
    assert!(err.contains("Read-only file system"), "{err}");
    assert!(!env.out.exists(), "nothing was shipped");
}
