//! Issue 35, item 1: what cannot work fails fast. Mistakes no retry can fix are refused at start,
//! before anything is read; refusals during the run (no such bucket, a key id or signature the
//! server does not accept) end retrying within a minute, with the chunk in the secondary
//! directory and exit code 3, where the retry timeout (24 h by default) used to rule. Against the
//! real servers: the in-tree S3 server (authentication on) and moto's S3 for a missing bucket
//! (s3s-fs creates one on PutObject; AWS does not).

use std::fs;
use std::time::Duration;

use crate::common::moto::Moto;
use crate::common::s3::S3Server;
use crate::common::*;

/// Long enough for a minute of refusals and the drain around it, on a loaded machine.
const T: Duration = Duration::from_secs(240);

/// `ship --once` of one file to `to`, with the buffer (and so `secondary/`) in the test's dir.
fn once(env: &Env, to: &str, extra: &[&str]) -> Vec<String> {
    let mut args = env.once_args("app.log", &["--buffer-dir", env.buffer.to_str().unwrap()]);
    set_flag(&mut args, "--to", to);
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

#[test]
fn mistakes_no_retry_can_fix_are_refused_at_start() {
    let server = S3Server::start(&["logs", "other-bucket"]);
    let env = Env::new();
    fs::write(env.path("app.log"), b"one line\n").unwrap();
    let post = env.dir.path().join("presigned-post");
    fs::write(&post, server.presign("logs", "x/", "1h", "1GB")).unwrap();
    let post_arg = post.to_str().unwrap();
    let missing = env.dir.path().join("no-such-file");
    let cases: Vec<(&str, Vec<String>, i32, Vec<String>)> = vec![
        (
            "an endpoint without a scheme",
            once(&env, "s3://logs/x", &["--endpoint", "127.0.0.1:5077", "--path-style"]),
            2,
            vec!["--endpoint".into(), "http://127.0.0.1:5077".into()],
        ),
        (
            "a presigned POST for another bucket",
            once(&env, "s3://other-bucket/x", &["--presigned-post", post_arg]),
            1,
            vec!["is for bucket \"logs\"".into(), "\"other-bucket\"".into()],
        ),
        (
            "a presigned POST whose prefix does not cover the keys",
            once(&env, "s3://logs/jobs/1", &["--presigned-post", post_arg]),
            1,
            vec!["allows only keys starting with \"x/\"".into(), "\"jobs/1/".into()],
        ),
        (
            "a presigned POST file that does not exist",
            once(&env, "s3://logs/x", &["--presigned-post", missing.to_str().unwrap()]),
            1,
            vec![format!("cannot read presigned POST file {}", missing.display())],
        ),
        (
            "a CloudWatch log group name CloudWatch refuses",
            once(&env, "cloudwatch://my*group/stream", &["--endpoint", &server.endpoint]),
            2,
            vec!["log group".into(), "my*group".into()],
        ),
    ];
    for (what, args, code, expected) in cases {
        let mut cmd = logship_cmd();
        cmd.envs(server.env());
        let mut d = Daemon::spawn_cmd(cmd, &args, env.dir.path());
        assert_eq!(d.wait_exit(T).code(), Some(code), "{what}: {}", d.stderr());
        let err = d.stderr();
        for e in &expected {
            assert!(err.contains(e.as_str()), "{what}: no {e:?} in: {err}");
        }
        assert!(!err.contains("x-amz-signature"), "{what}: {err}");
        assert!(!env.buffer.join("secondary").exists(), "{what}: nothing was read");
    }
    assert!(server.keys("logs").is_empty() && server.keys("other-bucket").is_empty());
}

/// A pod's DNS can come up after its containers: a host that does not resolve is tried for a
/// minute, then refused naming it (`.invalid` never resolves).
#[test]
fn an_endpoint_whose_host_never_resolves_is_refused_after_a_minute() {
    let env = Env::new();
    fs::write(env.path("app.log"), b"one line\n").unwrap();
    let args = once(
        &env,
        "s3://logs/x",
        &["--endpoint", "http://logship-test.invalid:9000", "--path-style"],
    );
    let mut cmd = logship_cmd();
    cmd.env("AWS_ACCESS_KEY_ID", "k")
        .env("AWS_SECRET_ACCESS_KEY", "s")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_EC2_METADATA_DISABLED", "true");
    let mut d = Daemon::spawn_cmd(cmd, &args, env.dir.path());
    assert_eq!(d.wait_exit(T).code(), Some(1), "{}", d.stderr());
    let err = d.stderr();
    assert!(
        err.contains("cannot resolve logship-test.invalid (from http://logship-test.invalid:9000) after 6"),
        "{err}"
    );
}

/// Refusals during the run: the bucket does not exist (moto's S3, as AWS answers), the access
/// key id is unknown, the signature does not match (the in-tree server). Each is tried again for
/// about a minute (the retry timeout is its default, 24 h), then the chunk is in the secondary
/// directory byte for byte and the exit code is 3.
#[test]
fn refusals_end_retrying_within_a_minute_and_the_chunk_is_kept() {
    let moto = Moto::start();
    let server = S3Server::start(&["logs"]);
    type Vars = Vec<(String, String)>;
    let cases: Vec<(&str, String, Vars, &str)> = vec![
        ("no such bucket", moto.endpoint.clone(), moto.env(), "NoSuchBucket"),
        (
            "an unknown access key id",
            server.endpoint.clone(),
            with(server.env(), "AWS_ACCESS_KEY_ID", "AKIANOTKNOWN0000000"),
            // s3s's answer; AWS's is InvalidAccessKeyId (both refusals).
            "NotSignedUp",
        ),
        (
            "a wrong secret",
            server.endpoint.clone(),
            with(server.env(), "AWS_SECRET_ACCESS_KEY", "not-the-secret"),
            "SignatureDoesNotMatch",
        ),
    ];
    std::thread::scope(|scope| {
        for (what, endpoint, vars, code) in cases {
            scope.spawn(move || {
                let env = Env::new();
                let a = lines(what, 0, 300);
                fs::write(env.path("app.log"), &a).unwrap();
                let args = once(
                    &env,
                    "s3://no-such-bucket/p",
                    &["--endpoint", &endpoint, "--path-style"],
                );
                let mut cmd = logship_cmd();
                cmd.envs(vars);
                let mut d = Daemon::spawn_cmd(cmd, &args, env.dir.path());
                assert_eq!(d.wait_exit(T).code(), Some(3), "{what}: {}", d.stderr());
                let err = d.stderr();
                assert!(err.contains(code) && err.contains("refused for 6"), "{what}: {err}");
                let kept: Vec<_> = fs::read_dir(env.buffer.join("secondary")).unwrap().collect();
                assert_eq!(kept.len(), 1, "{what}: {kept:?}");
                assert_bytes_eq(&fs::read(kept[0].as_ref().unwrap().path()).unwrap(), &a);
            });
        }
    });
}

fn with(mut vars: Vec<(String, String)>, name: &str, value: &str) -> Vec<(String, String)> {
    for (k, v) in &mut vars {
        if k == name {
            *v = value.to_string();
        }
    }
    vars
}
