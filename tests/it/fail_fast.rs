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
/// minute, then refused naming it: an endpoint's (`.invalid` never resolves), and the SDK's own
/// for a region that does not exist (`--region us-est-1`, a typo, has no `s3.us-est-1` host).
#[test]
fn a_host_that_never_resolves_is_refused_after_a_minute_an_endpoints_or_a_mistyped_regions() {
    let cases = [
        (
            vec!["--endpoint", "http://logship-test.invalid:9000", "--path-style"],
            "cannot resolve logship-test.invalid (from http://logship-test.invalid:9000) after 6",
        ),
        (
            vec!["--region", "us-est-1"],
            "cannot resolve s3.us-est-1.amazonaws.com (from https://s3.us-est-1.amazonaws.com) after 6",
        ),
    ];
    std::thread::scope(|scope| {
        for (extra, expected) in cases {
            scope.spawn(move || {
                let env = Env::new();
                fs::write(env.path("app.log"), b"one line\n").unwrap();
                let args = once(&env, "s3://logs/x", &extra);
                let mut cmd = logship_cmd();
                cmd.env("AWS_ACCESS_KEY_ID", "k")
                    .env("AWS_SECRET_ACCESS_KEY", "s")
                    .env("AWS_REGION", "us-east-1")
                    .env("AWS_EC2_METADATA_DISABLED", "true")
                    .env_remove("AWS_ENDPOINT_URL")
                    .env_remove("AWS_ENDPOINT_URL_S3");
                let mut d = Daemon::spawn_cmd(cmd, &args, env.dir.path());
                assert_eq!(d.wait_exit(T).code(), Some(1), "{}", d.stderr());
                let err = d.stderr();
                assert!(err.contains("trying again for up to a minute"), "{err}");
                assert!(err.contains(expected), "{err}");
                assert!(!env.buffer.join("secondary").exists(), "nothing was read");
            });
        }
    });
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
                // (Its record of what it was for is in `secondary/.logship/`.)
                let kept = files_in(&env.buffer.join("secondary"));
                assert_eq!(kept.len(), 1, "{what}: {kept:?}");
                assert_bytes_eq(&fs::read(&kept[0]).unwrap(), &a);
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

/// Issue 35: a `--once` whose destination is down (every request answered 500, which the retry
/// schedule would try for its 24 h timeout) gives up when nothing has moved for
/// `stall_timeout`: the chunk is in the secondary directory, the exit code is 3.
#[test]
fn a_drain_in_which_nothing_moves_for_the_stall_timeout_ends_with_the_chunk_kept() {
    use crate::common::s3::{Fault, FaultProxy};
    let server = S3Server::start(&["logs"]);
    let proxy = FaultProxy::start(&server.endpoint, vec![], Fault::Status500);
    let env = Env::new();
    let a = lines("stalled", 0, 200);
    fs::write(env.path("app.log"), &a).unwrap();
    let args = env.run_config(&format!(
        r#"
[buffer]
dir = "{{buffer}}"
[[source]]
type = "tail"
paths = ["{{input}}/app.log"]
[[output]]
name = "s3"
type = "s3"
[output.s3]
bucket = "logs"
endpoint = "{}"
force_path_style = true
region = "us-east-1"
[output.retry]
wait = "100ms"
max_interval = "1s"
[metrics]
stall_timeout = "4s"
[lifecycle]
once = true
"#,
        proxy.endpoint
    ));
    let mut cmd = logship_cmd();
    cmd.envs(server.env());
    let mut d = Daemon::spawn_cmd(cmd, &args, env.dir.path());
    assert_eq!(d.wait_exit(T).code(), Some(3), "{}", d.stderr());
    assert!(
        d.stderr().contains("nothing was read or delivered during the drain"),
        "{}",
        d.stderr()
    );
    assert_bytes_eq(&fs::read(env.buffer.join("secondary/s3.chunk.0")).unwrap(), &a);
    assert!(proxy.seen.lock().unwrap().len() > 2, "it was retried until it stalled");
    assert!(server.keys("logs").is_empty());
}

/// Issue 35, item 3: what a failed run left is sent later to where it was going. A `--once` to a
/// bucket that does not exist yet (moto's S3, which answers as AWS does) fails with exit 3 and
/// says how to resend; the bucket is created; `logship resend BUFFER` sends the secondary file
/// to the key it was made for, byte for byte, removes it, and exits 0. Run again, it has
/// nothing to send. A file whose record names another destination than the saved config's is
/// left, and the exit code says so.
#[test]
fn resend_sends_what_a_failed_run_left_to_its_key_once_the_cause_is_fixed() {
    let moto = Moto::start();
    let env = Env::new();
    let a = lines("resend", 0, 400);
    fs::write(env.path("app.log"), &a).unwrap();
    let args = once(
        &env,
        "s3://late-bucket/jobs/1",
        &["--endpoint", &moto.endpoint, "--path-style"],
    );
    let mut cmd = logship_cmd();
    cmd.envs(moto.env());
    let mut d = Daemon::spawn_cmd(cmd, &args, env.dir.path());
    assert_eq!(d.wait_exit(T).code(), Some(3), "{}", d.stderr());
    let hint = format!("logship resend {}", env.buffer.display());
    assert!(d.stderr().contains(&hint), "{}", d.stderr());
    let key = d.summary()["outputs"][0]["secondary"][0]["key"]
        .as_str()
        .unwrap()
        .to_string();
    moto.python(
        "s3 = boto3.client('s3', endpoint_url=ENDPOINT, region_name='us-east-1', aws_access_key_id='testing', aws_secret_access_key='testing')\ns3.create_bucket(Bucket='late-bucket')",
    );
    let resend = || {
        let out = logship_cmd()
            .arg("resend")
            .arg(&env.buffer)
            .envs(moto.env())
            .output()
            .unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let (code, err) = resend();
    assert_eq!(code, Some(0), "{err}");
    assert!(err.contains("resend: sent") && err.contains(&key), "{err}");
    let got = moto.python(&format!(
        "import sys\ns3 = boto3.client('s3', endpoint_url=ENDPOINT, region_name='us-east-1', aws_access_key_id='testing', aws_secret_access_key='testing')\nsys.stdout.write(s3.get_object(Bucket='late-bucket', Key='{key}')['Body'].read().decode())"
    ));
    assert_bytes_eq(got.as_bytes(), &a);
    let left = files_in(&env.buffer.join("secondary"));
    assert!(left.is_empty(), "{left:?}");
    let (code, err) = resend();
    assert_eq!(code, Some(0), "{err}");
    assert!(!err.contains("resend: sent"), "{err}");

    // A file made for another destination than the config the run saved is not sent there.
    let other = Env::new();
    fs::write(other.path("app.log"), b"one line\n").unwrap();
    let args = once(
        &other,
        "s3://missing-too/p",
        &["--endpoint", &moto.endpoint, "--path-style"],
    );
    let mut cmd = logship_cmd();
    cmd.envs(moto.env());
    let mut d = Daemon::spawn_cmd(cmd, &args, other.dir.path());
    assert_eq!(d.wait_exit(T).code(), Some(3), "{}", d.stderr());
    let config = other.buffer.join("config.toml");
    let text = fs::read_to_string(&config)
        .unwrap()
        .replace("missing-too", "late-bucket");
    fs::write(&config, text).unwrap();
    let out = logship_cmd()
        .arg("resend")
        .arg(&other.buffer)
        .envs(moto.env())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(
        err.contains("LEFT") && err.contains("made for s3://missing-too"),
        "{err}"
    );
}
