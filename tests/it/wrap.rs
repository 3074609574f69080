//! `logship wrap`: the child's exit code and the signals sent to it pass through; the heartbeat
//! and the signal file behave as the daemon expects (a test runs both together).

use std::fs;
use std::process::Command;
use std::time::Duration;

use crate::common::{Daemon, Env, bin, wait_until};

const WAIT: Duration = Duration::from_secs(60);

fn wrap(env: &Env, script: &str) -> Vec<String> {
    vec![
        "wrap".into(),
        "--heartbeat-file".into(),
        env.dir.path().join("heartbeat").display().to_string(),
        "--signal-file".into(),
        env.signal.display().to_string(),
        "--heartbeat-interval".into(),
        "200ms".into(),
        "--".into(),
        "sh".into(),
        "-c".into(),
        script.into(),
    ]
}

#[test]
fn exit_codes_pass_through_and_the_signal_file_holds_them() {
    let env = Env::new();
    let st = crate::common::logship_cmd()
        .args(wrap(&env, "exit 7"))
        .status()
        .unwrap();
    assert_eq!(st.code(), Some(7));
    assert_eq!(fs::read_to_string(&env.signal).unwrap(), "7\n");
    let st = crate::common::logship_cmd()
        .args(wrap(&env, "kill -9 $$"))
        .status()
        .unwrap();
    assert_eq!(st.code(), Some(137), "killed by SIGKILL is 128 + 9, as a shell says");
    assert_eq!(fs::read_to_string(&env.signal).unwrap(), "137\n");
}

#[test]
fn a_command_that_cannot_start_exits_like_a_shell_and_still_writes_the_signal_file() {
    let env = Env::new();
    let run = |command: &str| {
        let _ = fs::remove_file(&env.signal);
        crate::common::logship_cmd()
            .args([
                "wrap",
                "--signal-file",
                &env.signal.display().to_string(),
                "--",
                command,
            ])
            .output()
            .unwrap()
    };
    // Not found: 127, the name in the error, and the signal file so the sidecar drains now.
    let out = run("/no/such/program");
    assert_eq!(out.status.code(), Some(127));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/no/such/program"));
    assert_eq!(fs::read_to_string(&env.signal).unwrap(), "127\n");
    // Found but not executable: 126.
    let script = env.dir.path().join("not-executable.sh");
    fs::write(&script, "#!/bin/sh\nexit 0\n").unwrap();
    let out = run(&script.display().to_string());
    assert_eq!(out.status.code(), Some(126), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(fs::read_to_string(&env.signal).unwrap(), "126\n");
    // A directory: 126.
    let out = run(&env.dir.path().display().to_string());
    assert_eq!(out.status.code(), Some(126));
}

#[test]
fn signals_are_forwarded_to_the_child() {
    let env = Env::new();
    let ready = env.dir.path().join("ready");
    let script = format!(
        "trap 'echo got-term; exit 42' TERM; touch '{}'; while :; do sleep 0.05; done",
        ready.display()
    );
    let mut d = Daemon::spawn(&wrap(&env, &script), env.dir.path());
    d.wait_until("the child is ready", WAIT, || ready.exists());
    d.signal("TERM");
    assert_eq!(d.wait_exit(WAIT).code(), Some(42), "{}", d.stderr());
    assert_eq!(d.stdout(), b"got-term\n");
    assert_eq!(fs::read_to_string(&env.signal).unwrap(), "42\n");
}

/// Issue 34: every signal the README says `logship wrap` forwards reaches the child: INT, HUP,
/// QUIT, USR1 and USR2 (TERM above). The child records each one, then ends on the last.
#[test]
fn int_hup_quit_usr1_and_usr2_are_forwarded_to_the_child() {
    let env = Env::new();
    let ready = env.dir.path().join("ready");
    let script = format!(
        "for s in INT HUP QUIT USR1; do trap \"echo got-$s\" $s; done; trap 'echo got-USR2; exit 7' USR2; touch '{}'; while :; do sleep 0.05; done",
        ready.display()
    );
    let mut d = Daemon::spawn(&wrap(&env, &script), env.dir.path());
    d.wait_until("the child is ready", WAIT, || ready.exists());
    let mut want = String::new();
    for sig in ["INT", "HUP", "QUIT", "USR1"] {
        d.signal(sig);
        want.push_str(&format!("got-{sig}\n"));
        d.wait_until(&format!("the child got {sig}"), WAIT, || {
            String::from_utf8_lossy(&d.stdout()).contains(&format!("got-{sig}"))
        });
    }
    d.signal("USR2");
    want.push_str("got-USR2\n");
    assert_eq!(d.wait_exit(WAIT).code(), Some(7), "{}", d.stderr());
    assert_eq!(String::from_utf8_lossy(&d.stdout()), want);
}

#[test]
fn the_daemon_follows_the_wrapped_container_and_drains_when_it_ends() {
    let env = Env::new();
    let heartbeat = env.dir.path().join("heartbeat");
    let log = env.path("app.log");
    let go = env.dir.path().join("go");
    // The sidecar watches the heartbeat (long timeout, so only the signal file can end it soon).
    let mut args = env.follow_args("*.log");
    args.extend([
        "--heartbeat-file".into(),
        heartbeat.display().to_string(),
        "--heartbeat-timeout".into(),
        "60s".into(),
    ]);
    let sidecar = Daemon::spawn(&args, env.dir.path());
    let script = format!(
        "echo first >> '{log}'; while [ ! -e '{go}' ]; do sleep 0.05; done; printf 'last' >> '{log}'; exit 3",
        log = log.display(),
        go = go.display()
    );
    let mut main = Daemon::spawn(&wrap(&env, &script), env.dir.path());
    // While the wrapped command runs, the heartbeat stays fresh.
    wait_until("the heartbeat is touched", WAIT, || heartbeat.exists());
    let first = fs::metadata(&heartbeat).unwrap().modified().unwrap();
    wait_until("the heartbeat is touched again", WAIT, || {
        fs::metadata(&heartbeat).unwrap().modified().unwrap() > first
    });
    assert!(!env.signal.exists(), "no signal file while the command runs");
    fs::write(&go, b"").unwrap();
    assert_eq!(main.wait_exit(WAIT).code(), Some(3), "{}", main.stderr());
    let mut sidecar = sidecar;
    assert_eq!(sidecar.wait_exit(WAIT).code(), Some(0), "{}", sidecar.stderr());
    assert!(sidecar.stderr().contains("signal file"), "{}", sidecar.stderr());
    assert_eq!(crate::common::collect(&env.out, "app.log"), b"first\nlast");
}

#[test]
fn output_is_copied_to_the_container_log_files_and_still_reaches_the_streams() {
    let env = Env::new();
    let user = env.dir.path().join("user/pod-1");
    let mut args = wrap(&env, "echo out-1; echo err-1 >&2; printf 'out-2'; exit 5");
    let at = args.iter().position(|a| a == "--").unwrap();
    args.splice(
        at..at,
        [
            "--stdout-file".to_string(),
            user.join("stdout").display().to_string(),
            "--stderr-file".to_string(),
            user.join("stderr").display().to_string(),
        ],
    );
    let out = crate::common::logship_cmd().args(&args).output().unwrap();
    assert_eq!(out.status.code(), Some(5));
    assert_eq!(out.stdout, b"out-1\nout-2");
    assert!(String::from_utf8_lossy(&out.stderr).contains("err-1\n"));
    assert_eq!(fs::read(user.join("stdout")).unwrap(), b"out-1\nout-2");
    assert_eq!(fs::read(user.join("stderr")).unwrap(), b"err-1\n");
    // Appended, as a restarted container would: nothing written before is lost.
    let out = crate::common::logship_cmd().args(&args).output().unwrap();
    assert_eq!(out.status.code(), Some(5));
    assert_eq!(fs::read(user.join("stdout")).unwrap(), b"out-1\nout-2out-1\nout-2");
}

#[test]
fn install_copies_the_executable_so_another_container_can_run_it() {
    let env = Env::new();
    let dest = env.dir.path().join("bin/logship");
    let st = crate::common::logship_cmd().arg("install").arg(&dest).status().unwrap();
    assert!(st.success());
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(fs::metadata(&dest).unwrap().permissions().mode() & 0o777, 0o755);
    assert_eq!(fs::read(&dest).unwrap(), fs::read(bin()).unwrap());
    let out = Command::new(&dest).arg("--version").output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("logship "));
}
