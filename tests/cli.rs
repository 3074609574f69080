//! The command line: `check`, `run --config`, and errors that name what is wrong.

mod common;

use std::fs;
use std::process::Command;
use std::time::Duration;

use common::*;

#[test]
fn check_prints_the_effective_config_with_defaults() {
    let env = Env::new();
    let cfg = env.dir.path().join("logship.toml");
    fs::write(
        &cfg,
        "[[source]]\ntype = \"tail\"\npaths = [\"/var/log/spark/user/*/stdout\"]\n\n[[output]]\ntype = \"file\"\ndir = \"/tmp/out\"\n",
    )
    .unwrap();
    let out = Command::new(bin())
        .args(["check", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
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
    let out = Command::new(bin())
        .args(["check", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
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
    let out = Command::new(bin())
        .args(["ship", "--once", "/tmp/x", "--to", "ftp://host/x"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--to") && err.contains("ftp://host/x"), "{err}");
}

#[test]
fn the_readme_config_example_is_valid() {
    let readme = fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let start = readme.find("```toml\n").expect("README has a TOML example") + "```toml\n".len();
    let end = start + readme[start..].find("```").unwrap();
    let env = Env::new();
    let cfg = env.dir.path().join("readme.toml");
    fs::write(&cfg, &readme[start..end]).unwrap();
    // As in a pod, where EMR sets SPARK_APPLICATION_ID (the example's `${SPARK_APPLICATION_ID}`).
    let out = Command::new(bin())
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
    let unset = Command::new(bin())
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
