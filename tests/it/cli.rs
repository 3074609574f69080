//! The command line: `check`, `run --config`, and errors that name what is wrong.

use std::fs;
use std::process::Command;
use std::time::Duration;

use crate::common::*;

#[test]
fn check_prints_the_effective_config_with_defaults() {
    let env = Env::new();
    let cfg = env.dir.path().join("logship.toml");
    fs::write(
        &cfg,
        "[[source]]\ntype = \"tail\"\npaths = [\"/var/log/spark/user/*/stdout\"]\n\n[[output]]\ntype = \"file\"\ndir = \"/tmp/out\"\n",
    )
    .unwrap();
    let out = logship_cmd().args(["check", "--config"]).arg(&cfg).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let printed = String::from_utf8(out.stdout).unwrap();
    for expected in [
        "chunk_limit = \"32MiB\"",
        "timekey = \"30s\"",
        "name = \"source-0\"",
        "heartbeat_timeout = \"15s\"",
    ] {
        assert!(printed.contains(expected), "missing {expected} in:\n{printed}");
    }
}

#[test]
fn check_names_the_file_line_and_key_of_an_error() {
    let env = Env::new();
    let cfg = env.dir.path().join("bad.toml");
    fs::write(&cfg, "[buffer]\ntimekey = \"30s\"\nchunk_limt = \"1MB\"\n").unwrap();
    let out = logship_cmd().args(["check", "--config"]).arg(&cfg).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.toml") && err.contains("line 3") && err.contains("chunk_limt"),
        "{err}"
    );
}

#[test]
fn run_with_a_config_file_ships_and_drains_on_the_signal_file() {
    let env = Env::new();
    let content = [lines("cfg", 0, 1000), b"partial".to_vec()].concat();
    fs::create_dir_all(env.input.join("pod-a")).unwrap();
    fs::write(env.input.join("pod-a/stdout"), &content).unwrap();
    let args = env.run_config(
        r#"
[buffer]
dir = "{buffer}"
timekey = "1h"

[[source]]
name = "container-logs"
type = "tail"
paths = ["{input}/*/stdout"]

[[output]]
name = "local"
type = "file"
dir = "{out}"

[lifecycle]
signal_file = "{signal}"
drain_deadline = "30s"
"#,
    );
    let mut d = Daemon::spawn(&args, env.dir.path());
    wait_until("file followed", Duration::from_secs(30), || {
        d.stderr().contains("following file")
    });
    env.signal_end();
    let st = d.wait_exit(Duration::from_secs(60));
    assert!(st.success(), "{}", d.stderr());
    assert_bytes_eq(&collect(&env.out, "pod-a/stdout"), &content);
}

#[test]
fn an_unsupported_destination_is_a_usage_error_naming_it() {
    let out = logship_cmd()
        .args(["ship", "--once", "/tmp/x", "--to", "ftp://host/x"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--to") && err.contains("ftp://host/x"), "{err}");
}

/// Issue 14 (smaller): quick mode's errors found after parsing name the flag the user typed,
/// not the configuration key it became, and are usage errors (exit 2).
#[test]
fn quick_mode_errors_name_the_flag_and_are_usage_errors() {
    for (extra, flag, wrong_name) in [
        (&["--timekey", "0s"][..], "--timekey", "buffer.timekey"),
        (
            &["--key-format", "%{tag}.log"][..],
            "--key-format",
            "output[0].key_format",
        ),
        (
            &["--heartbeat-timeout", "0s", "--follow"][..],
            "--heartbeat-timeout",
            "lifecycle.",
        ),
        (&["--multiline-start", "(["][..], "--multiline-start", "source[0]"),
    ] {
        let mut args = vec!["ship", "--to", "file:///tmp/logship-never-written", "/tmp/x.log"];
        if !extra.contains(&"--follow") {
            args.push("--once");
        }
        args.extend(extra);
        let out = logship_cmd().args(&args).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{flag}: {err}");
        assert!(
            err.contains(&format!("error: {flag}: ")) && !err.contains(wrong_name),
            "{flag}: {err}"
        );
    }
}

#[test]
fn the_documented_config_example_is_valid() {
    let readme = fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/configuration.md")).unwrap();
    let start = readme
        .find("```toml\n")
        .expect("docs/configuration.md has a TOML example")
        + "```toml\n".len();
    let end = start + readme[start..].find("```").unwrap();
    let env = Env::new();
    let cfg = env.dir.path().join("readme.toml");
    fs::write(&cfg, &readme[start..end]).unwrap();
    // As in a pod, where EMR sets SPARK_APPLICATION_ID (the example's `${SPARK_APPLICATION_ID}`).
    let out = logship_cmd()
        .args(["check", "--config"])
        .arg(&cfg)
        .env("SPARK_APPLICATION_ID", "spark-000000337olhmpguek")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(
        printed.contains("path = \"spark/spark-000000337olhmpguek\""),
        "{printed}"
    );
    let unset = logship_cmd()
        .args(["check", "--config"])
        .arg(&cfg)
        .env_remove("SPARK_APPLICATION_ID")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&unset.stderr);
    assert!(
        !unset.status.success() && err.contains("SPARK_APPLICATION_ID") && err.contains("output[1].path"),
        "{err}"
    );
}

/// Runs `ship --once` over `paths` into the env's output; returns (exit code, summary, stderr).
fn once(env: &Env, paths: &[String], extra: &[&str]) -> (Option<i32>, serde_json::Value, String) {
    let mut args: Vec<String> = vec!["ship".into(), "--once".into()];
    args.extend(paths.iter().cloned());
    args.extend(["--to".into(), format!("file://{}", env.out.display())]);
    for pair in extra.chunks(2) {
        set_flag(&mut args, pair[0], pair[1]);
    }
    let mut d = Daemon::spawn(&args, env.dir.path());
    let st = d.wait_exit(Duration::from_secs(60));
    (st.code(), d.summary(), d.stderr())
}

fn not_shipped(summary: &serde_json::Value) -> Vec<(String, String)> {
    summary["not_shipped"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            (
                n["path"].as_str().unwrap().to_string(),
                n["reason"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn once_says_what_it_could_not_ship_and_does_not_exit_0() {
    let env = Env::new();
    let good = lines("good", 0, 100);
    fs::write(env.path("good.log"), &good).unwrap();
    let fifo = env.path("pipe.log");
    assert!(Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    fs::create_dir_all(env.path("a-dir")).unwrap();
    let cases: Vec<(String, &str)> = vec![
        (env.path("missing.log").display().to_string(), "No such file"),
        (env.path("*.nothing").display().to_string(), "no file matches"),
        (env.path("a-dir").display().to_string(), "a directory"),
        (fifo.display().to_string(), "a FIFO"),
    ];
    for (path, why) in &cases {
        // Each alone, and beside a good file that is still shipped.
        let (code, summary, err) = once(&env, &[path.clone(), env.path("good.log").display().to_string()], &[]);
        assert_eq!(code, Some(4), "{path}: {err}");
        let ns = not_shipped(&summary);
        assert!(
            ns.len() == 1 && ns[0].0 == *path && ns[0].1.contains(why),
            "{path}: {ns:?}"
        );
        assert!(err.contains(&format!("NOT SHIPPED: {path}")), "{err}");
        assert_bytes_eq(&collect(&env.out, "good.log"), &good);
        fs::remove_dir_all(&env.out).unwrap();
    }
    // --spark-events given a file.
    let mut args = vec!["ship".to_string(), "--once".into(), "--spark-events".into()];
    args.push(env.path("good.log").display().to_string());
    args.extend(["--to".into(), format!("file://{}", env.out.display())]);
    let mut d = Daemon::spawn(&args, env.dir.path());
    assert_eq!(d.wait_exit(Duration::from_secs(60)).code(), Some(4), "{}", d.stderr());
    assert!(
        not_shipped(&d.summary())[0].1.contains("not a directory"),
        "{}",
        d.stderr()
    );
}

/// Runs `logship ship --once FILE` as the unprivileged user 65534 (root reads everything) into
/// `file://<work>/out`, from a work directory that user owns; returns the daemon that has exited,
/// its exit code and the work directory. The binary is copied where that user can run it (the
/// build tree may be under a private home directory).
fn ship_once_as_nobody(env: &Env, file: &std::path::Path) -> (Daemon, Option<i32>, std::path::PathBuf) {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(env.dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    fs::set_permissions(&env.input, fs::Permissions::from_mode(0o755)).unwrap();
    let work = env.dir.path().join("nobody");
    fs::create_dir_all(&work).unwrap();
    assert!(
        Command::new("chown")
            .args(["65534:65534"])
            .arg(&work)
            .status()
            .unwrap()
            .success()
    );
    let exe = env.dir.path().join("logship");
    fs::copy(bin(), &exe).unwrap();
    fs::set_permissions(&exe, fs::Permissions::from_mode(0o755)).unwrap();
    let mut cmd = Command::new("setpriv");
    cmd.args(["--reuid", "65534", "--regid", "65534", "--clear-groups"])
        .arg(&exe);
    let args: Vec<String> = vec![
        "ship".into(),
        "--once".into(),
        file.display().to_string(),
        "--to".into(),
        format!("file://{}", work.join("out").display()),
        "--buffer-dir".into(),
        work.join("buffer").display().to_string(),
    ];
    let mut d = Daemon::spawn_cmd(cmd, &args, &work);
    let code = d.wait_exit(Duration::from_secs(60)).code();
    (d, code, work)
}

#[test]
fn once_over_a_file_it_cannot_read_does_not_exit_0() {
    use std::os::unix::fs::PermissionsExt;
    let env = Env::new();
    let secret = env.path("secret.log");
    fs::write(&secret, b"root only\n").unwrap();
    fs::set_permissions(&secret, fs::Permissions::from_mode(0o600)).unwrap();
    let (d, code, _) = ship_once_as_nobody(&env, &secret);
    assert_eq!(code, Some(4), "{}", d.stderr());
    let ns = not_shipped(&d.summary());
    assert!(
        ns[0].0 == secret.display().to_string() && ns[0].1.contains("Permission denied"),
        "{ns:?}"
    );
}

/// logship opens the files it follows with `O_NOATIME`, which the kernel allows only on one's
/// own files: a log another user owns and lets everyone read is opened without it, and shipped.
#[test]
fn a_readable_file_another_user_owns_is_shipped_without_o_noatime() {
    use std::os::unix::fs::PermissionsExt;
    let env = Env::new();
    let theirs = env.path("theirs.log");
    fs::write(&theirs, b"written by root, readable by all\n").unwrap();
    fs::set_permissions(&theirs, fs::Permissions::from_mode(0o644)).unwrap();
    let (d, code, work) = ship_once_as_nobody(&env, &theirs);
    assert_eq!(code, Some(0), "{}", d.stderr());
    assert_bytes_eq(
        &collect(&work.join("out"), "theirs.log"),
        b"written by root, readable by all\n",
    );
}

#[test]
fn the_readme_demo_command_ships_everything_and_exits_0() {
    let env = Env::new();
    let demo = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/demo/**/*");
    let (code, summary, err) = once(&env, &[demo.to_string()], &[]);
    assert_eq!(code, Some(0), "{err}");
    assert!(not_shipped(&summary).is_empty());
    let stdout = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/demo/user/spark-demo-driver/stdout"
    );
    assert_bytes_eq(
        &collect(&env.out, "user/spark-demo-driver/stdout"),
        &fs::read(stdout).unwrap(),
    );
}

/// A presigned POST file (boto3's shape) for `bucket`, allowing keys under `prefix`, expiring at
/// `expires` (RFC 3339), signed (in form only) by `key_id`, with `token` when given.
fn presigned_post_file(
    path: &std::path::Path,
    bucket: &str,
    prefix: &str,
    expires: &str,
    key_id: &str,
    token: Option<&str>,
) {
    use base64::Engine;
    let credential = format!("{key_id}/20261201/us-east-1/s3/aws4_request");
    let mut conditions = vec![
        serde_json::json!({ "bucket": bucket }),
        serde_json::json!(["starts-with", "$key", prefix]),
        serde_json::json!({ "x-amz-algorithm": "AWS4-HMAC-SHA256" }),
        serde_json::json!({ "x-amz-credential": credential }),
        serde_json::json!({ "x-amz-date": "20261201T000000Z" }),
    ];
    let mut fields = serde_json::json!({
        "key": format!("{prefix}${{filename}}"),
        "x-amz-algorithm": "AWS4-HMAC-SHA256",
        "x-amz-credential": credential,
        "x-amz-date": "20261201T000000Z",
        "x-amz-signature": "0123456789abcdef",
    });
    if let Some(t) = token {
        conditions.push(serde_json::json!({ "x-amz-security-token": t }));
        fields["x-amz-security-token"] = t.into();
    }
    let policy = serde_json::json!({ "expiration": expires, "conditions": conditions });
    fields["policy"] = base64::engine::general_purpose::STANDARD
        .encode(policy.to_string())
        .into();
    let post = serde_json::json!({ "url": format!("https://{bucket}.s3.amazonaws.com/"), "fields": fields });
    fs::write(path, post.to_string()).unwrap();
}

fn check(cfg: &std::path::Path) -> (Option<i32>, String) {
    let out = logship_cmd().args(["check", "--config"]).arg(cfg).output().unwrap();
    (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn check_refuses_what_would_fail_at_run_time_naming_the_file_and_key() {
    let env = Env::new();
    let cfg = env.dir.path().join("logship.toml");
    let base = "[[source]]\ntype = \"tail\"\npaths = [\"/var/log/*.log\"]\n";
    for (extra, key, why) in [
        (
            "[[source]]\ntype = \"tail\"\npaths = [\"/x\"]\npoll_interval = \"0s\"\n",
            "source[1].poll_interval",
            "too short",
        ),
        (
            "[[source]]\ntype = \"tail\"\npaths = [\"/x\"]\nrefresh_interval = \"0s\"\n",
            "source[1].refresh_interval",
            "too short",
        ),
        (
            "[lifecycle]\nheartbeat_timeout = \"0s\"\n",
            "lifecycle.heartbeat_timeout",
            "too short",
        ),
        (
            "[lifecycle]\ndrain_deadline = \"0s\"\n",
            "lifecycle.drain_deadline",
            "too short",
        ),
        (
            "[[output]]\ntype = \"s3\"\n[output.s3]\nbucket = \"b\"\nstore_as = \"gzip\"\ncompression_level = 99\n",
            "output[1].s3.compression_level",
            "out of range",
        ),
    ] {
        let out = "[[output]]\ntype = \"file\"\ndir = \"/tmp/o\"\n";
        fs::write(&cfg, format!("{base}{out}{extra}")).unwrap();
        let (code, err) = check(&cfg);
        assert_eq!(code, Some(1), "{extra}: {err}");
        assert!(
            err.contains(&cfg.display().to_string()) && err.contains(key) && err.contains(why),
            "{extra}: {err}"
        );
    }
}

#[test]
fn check_refuses_a_presigned_post_that_would_be_refused() {
    let env = Env::new();
    let post = env.dir.path().join("presigned-post");
    let cfg = env.dir.path().join("logship.toml");
    let write_cfg = |key: &str| {
        fs::write(
            &cfg,
            format!(
                "[[source]]\ntype = \"tail\"\npaths = [\"/var/log/*.log\"]\n[[output]]\ntype = \"s3\"\npath = \"jobs/1\"\nkey_format = \"{key}\"\n[output.s3]\nbucket = \"b\"\npresigned_post = \"{}\"\n",
                post.display()
            ),
        )
        .unwrap()
    };
    let later = "2099-01-01T00:00:00Z";
    presigned_post_file(&post, "b", "jobs/1/", later, "AKIDEXAMPLE", None);
    // A presigned POST cannot look before it writes: keys that a later run would repeat are
    // refused (issue 14, item 2).
    write_cfg("%{path}/%{tag}/%{index}.txt");
    let (code, err) = check(&cfg);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("output[0].key_format") && err.contains("%{hex_random}"),
        "{err}"
    );
    write_cfg("%{path}/%{tag}/%{index}_%{hex_random}.txt");
    let (code, err) = check(&cfg);
    assert_eq!(code, Some(0), "a good one passes: {err}");
    for (bucket, prefix, expires, key_id, token, why) in [
        ("b", "jobs/1/", "2020-01-01T00:00:00Z", "AKIDEXAMPLE", None, "expired"),
        ("other", "jobs/1/", later, "AKIDEXAMPLE", None, "bucket"),
        ("b", "jobs/2/", later, "AKIDEXAMPLE", None, "starting with \"jobs/2/\""),
        ("b", "jobs/1/", later, "ASIAEXAMPLE", None, "x-amz-security-token"),
    ] {
        presigned_post_file(&post, bucket, prefix, expires, key_id, token);
        let (code, err) = check(&cfg);
        assert_eq!(code, Some(1), "{why}: {err}");
        assert!(
            err.contains(why) && err.contains("output[0].s3.presigned_post"),
            "{why}: {err}"
        );
        assert!(!err.contains("0123456789abcdef"), "the signature is never shown: {err}");
    }
    // Temporary credentials with their token are fine.
    presigned_post_file(&post, "b", "jobs/1/", later, "ASIAEXAMPLE", Some("tok"));
    assert_eq!(check(&cfg).0, Some(0));
    // The file alone: expired is an error too.
    presigned_post_file(&post, "b", "jobs/1/", "2020-01-01T00:00:00Z", "AKIDEXAMPLE", None);
    let out = logship_cmd()
        .args(["check", "--presigned-post"])
        .arg(&post)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn environment_references_expand_in_every_value_with_defaults() {
    let env = Env::new();
    fs::write(env.path("app.log"), b"one line\n").unwrap();
    let args = env.run_config(
        r#"
[buffer]
dir = "{buffer}/${LOGSHIP_TEST_POD}"
timekey = "${LOGSHIP_TEST_UNSET:-1h}"

[[source]]
type = "tail"
paths = ["{input}/*.log"]

[[output]]
type = "file"
dir = "{out}/${LOGSHIP_TEST_POD}"

[lifecycle]
once = true
"#,
    );
    let mut cmd = logship_cmd();
    cmd.env("LOGSHIP_TEST_POD", "pod-7").env_remove("LOGSHIP_TEST_UNSET");
    let mut d = Daemon::spawn_cmd(cmd, &args, env.dir.path());
    assert!(d.wait_exit(Duration::from_secs(60)).success(), "{}", d.stderr());
    assert_eq!(collect(&env.out.join("pod-7"), "app.log"), b"one line\n");
    assert!(env.buffer.join("pod-7").join("state.json").exists() || env.buffer.join("pod-7").exists());
    // Unset without a default: an error naming the key.
    let mut cmd = logship_cmd();
    cmd.env_remove("LOGSHIP_TEST_POD");
    let mut d = Daemon::spawn_cmd(cmd, &args, env.dir.path());
    assert_eq!(d.wait_exit(Duration::from_secs(60)).code(), Some(1));
    let err = d.stderr();
    assert!(err.contains("buffer.dir") && err.contains("LOGSHIP_TEST_POD"), "{err}");
}

#[test]
fn an_output_directory_that_is_a_file_fails_at_once_with_what_to_fix() {
    let env = Env::new();
    fs::write(env.path("app.log"), lines("perm", 0, 10)).unwrap();
    let not_a_dir = env.dir.path().join("a-file");
    fs::write(&not_a_dir, b"x").unwrap();
    let (code, summary, err) = once(
        &env,
        &[env.path("app.log").display().to_string()],
        &["--to", &format!("file://{}/sub", not_a_dir.display())],
    );
    // Not retried for minutes: the chunk goes to the secondary directory, and the run says so.
    assert_eq!(code, Some(3), "{err}");
    assert!(err.contains("retrying cannot help"), "{err}");
    assert!(!err.contains("delivery failed; retrying"), "{err}");
    let secondary = &summary["outputs"][0]["secondary"][0];
    assert_eq!(
        fs::read(secondary["file"].as_str().unwrap()).unwrap(),
        lines("perm", 0, 10)
    );
}

/// Issue 14, item 2: the directory output never replaces a file that a chunk did not write.
/// Runs of different files with the same name into one directory all keep their files; a chunk
/// placed just before a crash is recognised on the retry (same bytes at its key), not stored
/// twice.
#[test]
fn runs_of_same_named_files_into_one_directory_keep_every_file_and_a_retry_is_not_stored_twice() {
    let out = tempfile::tempdir().unwrap();
    let run = |content: &[u8], crash: Option<&str>| {
        let env = Env::new();
        fs::write(env.path("app.log"), content).unwrap();
        let mut args = env.once_args("app.log", &["--key-format", "%{tag}/%{index}.%{file_extension}"]);
        set_flag(&mut args, "--to", &format!("file://{}", out.path().display()));
        args.extend(["--buffer-dir".to_string(), env.buffer.display().to_string()]);
        if let Some(point) = crash {
            let mut cmd = logship_cmd();
            cmd.env("LOGSHIP_CRASH_AT", point);
            let mut d = Daemon::spawn_cmd(cmd, &args, env.dir.path());
            assert!(
                !d.wait_exit(Duration::from_secs(60)).success() && d.stderr().contains("crash point"),
                "{}",
                d.stderr()
            );
        }
        let mut d = Daemon::spawn(&args, env.dir.path());
        assert!(d.wait_exit(Duration::from_secs(60)).success(), "{}", d.stderr());
    };
    let inputs = [lines("first", 0, 300), lines("second", 0, 400), lines("third", 0, 500)];
    run(&inputs[0], None);
    run(&inputs[1], None);
    run(&inputs[2], Some("delivered-before-ack:1"));
    let dir = out.path().join("app.log");
    let mut names: Vec<String> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["0.txt", "1.txt", "2.txt"],
        "one file per run, no temporary files"
    );
    for (name, want) in names.iter().zip(&inputs) {
        assert_bytes_eq(&fs::read(dir.join(name)).unwrap(), want);
    }
}

/// Issue 14, item 13: an SDK output with no region, or with no credential source at all, is
/// refused at start in one line that says what to set (it used to retry for ever with SDK
/// dumps). Both outputs, both causes.
#[test]
fn an_sdk_output_without_a_region_or_any_credentials_fails_at_once_saying_what_to_set() {
    let env = Env::new();
    fs::write(env.path("app.log"), b"a line\n").unwrap();
    let home = tempfile::tempdir().unwrap();
    for to in ["s3://logs/p", "cloudwatch://group/stream"] {
        for (region, expected) in [(None, "no AWS region"), (Some("eu-west-1"), "no AWS credentials")] {
            let mut args = env.once_args("app.log", &["--buffer-dir", env.buffer.to_str().unwrap()]);
            set_flag(&mut args, "--to", to);
            let mut cmd = logship_cmd();
            cmd.env_clear()
                .env("PATH", "/usr/bin:/bin")
                .env("HOME", home.path())
                // Deterministic here and in CI: IMDS is not asked (what a pod with IMDS blocked sees).
                .env("AWS_EC2_METADATA_DISABLED", "true");
            if let Some(r) = region {
                cmd.env("AWS_REGION", r);
            }
            let mut d = Daemon::spawn_cmd(cmd, &args, env.dir.path());
            assert_eq!(
                d.wait_exit(Duration::from_secs(60)).code(),
                Some(1),
                "{to}: {}",
                d.stderr()
            );
            let err = d.stderr();
            assert_eq!(err.lines().count(), 1, "{to}: one line: {err}");
            assert!(
                err.contains(expected) && err.contains(to.split('/').nth(2).unwrap()),
                "{to}: {err}"
            );
        }
    }
    assert!(!env.out.exists());
}

/// Issue 14: `--help` says what the exit codes and the signals mean, for `run` and `ship`.
#[test]
fn help_explains_exit_codes_and_signals() {
    for cmd in ["run", "ship"] {
        let out = logship_cmd().args([cmd, "--help"]).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{cmd}");
        for want in ["Exit codes", "\n  3  ", "\n  4  ", "SIGHUP reloads", "SIGTERM"] {
            assert!(text.contains(want), "{cmd} --help lacks {want:?}:\n{text}");
        }
    }
}

/// Issue 35: what `--once` keeps when a delivery fails is private like every buffer: its
/// temporary buffer directory 0700, the secondary directory 0700 and its files 0600.
#[test]
fn a_failed_once_run_keeps_its_buffer_and_secondary_files_private() {
    use std::os::unix::fs::PermissionsExt;
    let env = Env::new();
    fs::write(env.path("app.log"), b"a line nobody else may read\n").unwrap();
    let not_a_dir = env.dir.path().join("not-a-dir");
    fs::write(&not_a_dir, b"").unwrap();
    let tmp = env.dir.path().join("tmp");
    fs::create_dir_all(&tmp).unwrap();
    let mut args = env.once_args("app.log", &["--drain-deadline", "2s"]);
    set_flag(&mut args, "--to", &format!("file://{}/out", not_a_dir.display()));
    let mut cmd = logship_cmd();
    cmd.env("TMPDIR", &tmp);
    let mut d = Daemon::spawn_cmd(cmd, &args, env.dir.path());
    assert_eq!(d.wait_exit(Duration::from_secs(60)).code(), Some(3), "{}", d.stderr());
    let buffer = fs::read_dir(&tmp)
        .unwrap()
        .next()
        .expect("the buffer is kept")
        .unwrap()
        .path();
    let mode = |p: &std::path::Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&buffer), 0o700, "{}", buffer.display());
    let secondary = buffer.join("secondary");
    assert_eq!(mode(&secondary), 0o700);
    let file = secondary.join("out.chunk.0");
    assert_eq!(mode(&file), 0o600);
    assert_eq!(fs::read(&file).unwrap(), b"a line nobody else may read\n");
    // What `resend` needs: the record beside it and the run's config, private too.
    assert_eq!(mode(&secondary.join(".logship")), 0o700);
    assert_eq!(mode(&secondary.join(".logship/out.chunk.0.json")), 0o600);
    assert_eq!(mode(&buffer.join("config.toml")), 0o600);
}

/// Issue 35: a typo in `LOGSHIP_LOG` or `LOGSHIP_LOG_FORMAT` is a usage error that names the
/// variable (it was ignored); with `LOGSHIP_LOG_FORMAT=json`, every line on stderr is JSON, the
/// summary's too.
#[test]
fn log_settings_are_checked_and_json_logs_are_json_to_the_last_line() {
    let env = Env::new();
    fs::write(env.path("app.log"), b"one line\n").unwrap();
    let args = env.once_args("app.log", &[]);
    for (var, value) in [
        ("LOGSHIP_LOG", "debgu"),
        ("LOGSHIP_LOG", "logship=verbose"),
        ("LOGSHIP_LOG_FORMAT", "jsn"),
    ] {
        let out = logship_cmd().args(&args).env(var, value).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{var}={value}: {err}");
        assert!(err.contains(var) && err.contains(value), "{var}={value}: {err}");
    }
    let out = logship_cmd()
        .args(&args)
        .env("LOGSHIP_LOG", "logship=debug,warn")
        .env("LOGSHIP_LOG_FORMAT", "json")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.lines().count() > 2, "{err}");
    for line in err.lines() {
        assert!(
            serde_json::from_str::<serde_json::Value>(line).is_ok(),
            "not JSON: {line:?}"
        );
    }
    assert!(err.contains("delivered 1 chunks"), "{err}");
}

/// Issue 36: a file name is text from someone else. One holding a line feed (and a carriage
/// return, and a terminal escape) is shipped, and logship's own log and summary show it
/// escaped: no line of stderr is the forged one.
#[test]
fn a_file_name_cannot_forge_or_break_a_log_line() {
    let env = Env::new();
    let name = "app\nINFO forged: everything delivered\r\x1b[2J.log";
    fs::write(env.path(name), b"a line\n").unwrap();
    // A path that does not exist, with the same trick: named in the summary.
    let missing = env.path("gone\nlogship: NOT READ: nothing.log");
    let mut args = env.once_args("*.log", &[]);
    args.insert(3, missing.display().to_string());
    let out = logship_cmd().args(&args).env("LOGSHIP_LOG", "info").output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.lines()
            .all(|l| !l.starts_with("INFO forged") && !l.starts_with("logship: NOT READ: nothing")),
        "{err}"
    );
    assert!(!err.contains('\r') && !err.contains('\x1b'), "{err:?}");
    assert!(err.contains("app\\nINFO forged"), "{err}");
    assert!(err.contains("gone\\nlogship: NOT READ"), "{err}");
    assert_eq!(out.status.code(), Some(4), "the missing path: {err}");
}
