//! A full disk or a read-only buffer directory: a clear error naming the path, nothing read lost.
//!
//! The buffer directory is a real tmpfs mounted in a private user and mount namespace
//! (`unshare`, util-linux), so the tests need no root and leave nothing mounted.

use std::fs;
use std::process::Command;
use std::time::Duration;

use crate::common::*;

/// A command that runs logship with a tmpfs mounted on `buffer` (`opts`, e.g. "size=1m" or "ro"),
/// private (mode 700) as logship requires of a buffer directory.
fn in_tmpfs(buffer: &std::path::Path, opts: &str) -> Command {
    fs::create_dir_all(buffer).unwrap();
    let mut cmd = Command::new("unshare");
    cmd.args(["--user", "--map-root-user", "--mount", "sh", "-c"])
        .arg(r#"mount -t tmpfs -o "mode=700,$1" logship-test "$2" && shift 2 && exec "$@""#)
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

#[test]
fn a_full_buffer_disk_while_following_pauses_reading_until_deliveries_free_space() {
    let env = Env::new();
    let log = env.path("app.log");
    fs::write(&log, b"").unwrap();
    // The default 32 MiB chunk limit on a 4 MiB buffer file system: the open chunk fills the
    // disk long before its time key closes, so only sealing it and delivering frees space.
    let mut args = env.follow_args("app.log");
    set_flag(&mut args, "--flush-mode", "lazy");
    set_flag(&mut args, "--drain-deadline", "120s");
    let mut d = Daemon::spawn_cmd(in_tmpfs(&env.buffer, "size=4m"), &args, env.dir.path());
    d.wait_until("logship follows the file", Duration::from_secs(30), || {
        d.stderr().contains("following file")
    });
    // About 10 MB/s for 3 s: over 20 MB through the 4 MiB disk.
    let mut expected = Vec::new();
    for i in 0..64 {
        let block = lines("full", i * 6_000, 6_000);
        append(&log, &block);
        expected.extend_from_slice(&block);
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(expected.len() > 20 << 20);
    d.wait_until("everything written is delivered", Duration::from_secs(120), || {
        collect(&env.out, "app.log").len() >= expected.len()
    });
    env.signal_end();
    let st = d.wait_exit(Duration::from_secs(120));
    let err = d.stderr();
    assert!(st.success(), "exit {st:?}; stderr:\n{err}");
    assert_bytes_eq(&collect(&env.out, "app.log"), &expected);
    assert!(
        d.summary()["write_errors"].as_u64().unwrap() > 0,
        "the disk did fill:\n{err}"
    );
    // One line when writing starts to fail and one when it works again, not one per attempt.
    let failing = err.matches("reading pauses until deliveries free space").count();
    let resumed = err.matches("the buffer can be written again").count();
    assert!((1..=20).contains(&failing), "{failing} 'pauses' lines:\n{err}");
    assert!(
        resumed >= failing.saturating_sub(1),
        "{resumed} 'resumes' lines for {failing} pauses"
    );
}

/// Ships `app.log` once with the environment's buffer directory; the run must stop with exit
/// code 1 (a buffer it refuses). Returns its stderr.
fn refused_run(env: &Env) -> String {
    let args = env.once_args("app.log", &["--buffer-dir", &env.buffer.display().to_string()]);
    let mut d = Daemon::spawn(&args, env.dir.path());
    let st = d.wait_exit(Duration::from_secs(60));
    let err = d.stderr();
    assert_eq!(st.code(), Some(1), "{err}");
    err
}

/// A shared buffer directory that another local user prepared: writable by all, with links
/// planted where logship writes. It is refused before anything is written through it.
#[test]
fn a_buffer_directory_writable_by_others_is_refused_and_nothing_is_written_through_it() {
    use std::os::unix::fs::PermissionsExt;
    let env = Env::new();
    fs::write(env.path("app.log"), b"secret line\n").unwrap();
    let victim = env.dir.path().join("victim");
    fs::write(&victim, b"root's file\n").unwrap();
    fs::create_dir_all(env.buffer.join("chunks")).unwrap();
    fs::set_permissions(&env.buffer, fs::Permissions::from_mode(0o777)).unwrap();
    std::os::unix::fs::symlink(&victim, env.buffer.join(".write-probe")).unwrap();
    std::os::unix::fs::symlink(&victim, env.buffer.join("chunks/0.chunk")).unwrap();
    std::os::unix::fs::symlink(&victim, env.buffer.join("state.journal")).unwrap();
    let err = refused_run(&env);
    assert!(err.contains("writable by every user"), "{err}");
    assert_eq!(fs::read(&victim).unwrap(), b"root's file\n");
    assert!(!env.out.exists());
}

/// A link where the state journal goes, in a buffer directory that is ours: never written
/// through; the run stops with the path named, and the file it points to is untouched.
#[test]
fn a_link_at_the_state_journal_is_not_followed() {
    let env = Env::new();
    fs::write(env.path("app.log"), b"secret line\n").unwrap();
    let victim = env.dir.path().join("victim");
    fs::write(&victim, b"someone's file\n").unwrap();
    fs::create_dir_all(&env.buffer).unwrap();
    std::os::unix::fs::symlink(&victim, env.buffer.join("state.journal")).unwrap();
    let err = refused_run(&env);
    assert!(err.contains("state.journal"), "{err}");
    assert_eq!(fs::read(&victim).unwrap(), b"someone's file\n");
}

#[test]
fn a_buffer_directory_owned_by_another_user_is_refused() {
    use std::os::unix::fs::MetadataExt;
    let env = Env::new();
    fs::write(env.path("app.log"), b"secret line\n").unwrap();
    fs::create_dir_all(&env.buffer).unwrap();
    let me = fs::metadata(&env.buffer).unwrap().uid();
    // Give it away: as root with chown, otherwise inside a user namespace where we are root
    // and our uid maps to someone else.
    let other = me + 4242;
    let chowned = std::process::Command::new("chown")
        .arg(other.to_string())
        .arg(&env.buffer)
        .status()
        .unwrap()
        .success();
    assert!(
        chowned,
        "the test needs to own files as another user (run as root, as CI does)"
    );
    let args = env.once_args("app.log", &["--buffer-dir", &env.buffer.display().to_string()]);
    let mut d = Daemon::spawn(&args, env.dir.path());
    let st = d.wait_exit(Duration::from_secs(60));
    let err = d.stderr();
    assert_eq!(st.code(), Some(1), "{err}");
    assert!(err.contains(&format!("owned by uid {other}")), "{err}");
}

#[test]
fn buffer_files_are_private() {
    use std::os::unix::fs::MetadataExt;
    let env = Env::new();
    fs::write(env.path("app.log"), lines("private", 0, 100)).unwrap();
    let mut args = env.follow_args("app.log");
    set_flag(&mut args, "--flush-mode", "lazy");
    set_flag(&mut args, "--timekey", "1h");
    let mut d = Daemon::spawn(&args, env.dir.path());
    d.wait_until("a chunk is committed", Duration::from_secs(60), || {
        env.buffer.join("state.json").exists()
            && fs::read_dir(env.buffer.join("chunks")).is_ok_and(|mut r| r.next().is_some())
    });
    let mode = |p: &std::path::Path| fs::metadata(p).unwrap().mode() & 0o777;
    assert_eq!(mode(&env.buffer), 0o700);
    assert_eq!(mode(&env.buffer.join("chunks")), 0o700);
    assert_eq!(mode(&env.buffer.join("state.json")), 0o600);
    assert_eq!(mode(&env.buffer.join("state.journal")), 0o600);
    for e in fs::read_dir(env.buffer.join("chunks")).unwrap().flatten() {
        assert_eq!(mode(&e.path()), 0o600, "{}", e.path().display());
    }
    env.signal_end();
    assert!(d.wait_exit(Duration::from_secs(60)).success(), "{}", d.stderr());
}

/// Issue 36: private means private. A buffer directory its group can write (0770, a member
/// planting `secondary -> their directory`) is refused like a world-writable one; a link planted
/// by another user where the secondary directory goes is refused, whoever owns its target; and
/// the default buffer's parent `$TMPDIR/logship-<uid>`, made first by another user (0777), is
/// refused rather than used (that user could rename the buffer between runs).
#[test]
fn group_writable_buffers_planted_links_and_a_hostile_default_parent_are_refused() {
    use std::os::unix::fs::PermissionsExt;
    let run_as_root = std::process::Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout == b"0\n");
    // A group-writable buffer directory.
    let env = Env::new();
    fs::write(env.path("app.log"), b"secret line\n").unwrap();
    fs::create_dir_all(&env.buffer).unwrap();
    fs::set_permissions(&env.buffer, fs::Permissions::from_mode(0o770)).unwrap();
    let err = refused_run(&env);
    assert!(err.contains("writable by its group"), "{err}");
    assert!(!env.out.exists());

    // A secondary directory that is someone else's link (needs root to own a link as another).
    if run_as_root {
        let env = Env::new();
        let a = lines("kept", 0, 10);
        fs::write(env.path("app.log"), &a).unwrap();
        let theirs = env.dir.path().join("theirs");
        fs::create_dir_all(&theirs).unwrap();
        let secondary = env.dir.path().join("secondary");
        std::os::unix::fs::symlink(&theirs, &secondary).unwrap();
        let st = std::process::Command::new("chown")
            .args(["-h", "4242:4242"])
            .arg(&secondary)
            .status()
            .unwrap();
        assert!(st.success());
        // An output that fails at once (its directory is a file), so the chunk goes to the
        // secondary directory, which is the planted link.
        let not_a_dir = env.dir.path().join("not-a-dir");
        fs::write(&not_a_dir, b"").unwrap();
        let args = env.once_args(
            "app.log",
            &[
                "--buffer-dir",
                env.buffer.to_str().unwrap(),
                "--secondary-dir",
                secondary.to_str().unwrap(),
            ],
        );
        let mut args = args;
        set_flag(&mut args, "--to", &format!("file://{}", not_a_dir.display()));
        let mut d = Daemon::spawn(&args, env.dir.path());
        let st = d.wait_exit(Duration::from_secs(60));
        let err = d.stderr();
        assert_ne!(st.code(), Some(0), "{err}");
        assert_eq!(
            fs::read_dir(&theirs).unwrap().count(),
            0,
            "nothing written through the link: {err}"
        );
    }

    // The default parent made first by another user.
    if run_as_root {
        let env = Env::new();
        fs::write(env.path("app.log"), b"secret line\n").unwrap();
        let tmp = env.dir.path().join("tmp");
        let parent = tmp.join("logship-0");
        fs::create_dir_all(&parent).unwrap();
        fs::set_permissions(&parent, fs::Permissions::from_mode(0o777)).unwrap();
        assert!(
            std::process::Command::new("chown")
                .arg("4242")
                .arg(&parent)
                .status()
                .unwrap()
                .success()
        );
        let mut cmd = crate::common::logship_cmd();
        cmd.env("TMPDIR", &tmp);
        let args = env.follow_args("app.log");
        let args: Vec<String> = {
            // Without --buffer-dir: the default one under $TMPDIR.
            let mut v = Vec::new();
            let mut it = args.into_iter();
            while let Some(a) = it.next() {
                if a == "--buffer-dir" {
                    it.next();
                } else {
                    v.push(a);
                }
            }
            v
        };
        let mut d = Daemon::spawn_cmd(cmd, &args, env.dir.path());
        let st = d.wait_exit(Duration::from_secs(60));
        let err = d.stderr();
        assert_eq!(st.code(), Some(1), "{err}");
        assert!(
            err.contains("default buffer directory's parent") && err.contains("owned by uid 4242"),
            "{err}"
        );
        assert_eq!(fs::read_dir(&parent).unwrap().count(), 0, "nothing made in it");
    }
}
