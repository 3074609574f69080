//! The crash-point matrix: every crash point in the code (`logship::crashpoint::POINTS`), at every
//! output that reaches it (a directory; the S3 API with text, gzip, zstd and multipart objects; a
//! presigned POST; CloudWatch Logs) and every source that reaches it (followed files; a Spark
//! event log rechunked; one mirrored). Each case runs `--once` until the process aborts at the
//! point (`LOGSHIP_CRASH_AT`, as abrupt as `kill -9`), runs it again on the same buffer, and
//! checks that the destination holds the input exactly: every byte once, in order, no object
//! twice. CloudWatch has no keys to deliver under again: there, the batch that CloudWatch had
//! accepted when the process died (`cloudwatch-batch-accepted`) may arrive twice, and nothing else.
//! A chunk whose output fails for good (`secondary-written`) must end in the secondary directory,
//! once.
//!
//! `every_crash_point_is_in_the_matrix` fails when the code has a crash point this table does not
//! run. `LOGSHIP_MATRIX_ONLY=<output>/<source>/<point>` (as a failure names it) runs one case;
//! `LOGSHIP_MATRIX_DEBUG=1` prints both runs' logs (with `TEST_LOGSHIP_LOG=debug`, every chunk).

use std::fs;
use std::time::Duration;

use crate::common::moto::Moto;
use crate::common::s3::{Fault, FaultProxy, S3Server, collect_s3};
use crate::common::*;

const T: Duration = Duration::from_secs(90);
const GROUP: &str = "matrix";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Out {
    Dir,
    S3Text,
    S3Gzip,
    S3Zstd,
    S3Multipart,
    Post,
    CloudWatch,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Src {
    /// Two followed files.
    Tail,
    /// A finished, uncompressed Spark event log, rechunked into `events_<n>_<app>`.
    Rechunk,
    /// A zstd-compressed Spark event log, mirrored byte for byte.
    Mirror,
}

const ALL_OUTPUTS: [Out; 7] = [
    Out::Dir,
    Out::S3Text,
    Out::S3Gzip,
    Out::S3Zstd,
    Out::S3Multipart,
    Out::Post,
    Out::CloudWatch,
];

/// The points every output and source passes through (the buffer's and the engine's).
const EVERYWHERE: [&str; 7] = [
    "chunk-written",
    "before-state-write",
    "state-temp-written",
    "journal-record-half-written",
    "after-state-write",
    "recovery-chunk-cut",
    "delivered-before-ack",
];

/// The (output, source) pairs that reach `point`.
fn reached_by(point: &str) -> Vec<(Out, Src)> {
    let event_logs = [Src::Rechunk, Src::Mirror];
    let mut v = Vec::new();
    match point {
        // A chunk cut back by recovery: one still open across commits, which only followed
        // files have (event logs' chunks are sealed as they are made).
        "recovery-chunk-cut" => v.extend(ALL_OUTPUTS.iter().map(|&o| (o, Src::Tail))),
        p if EVERYWHERE.contains(&p) => {
            v.extend(ALL_OUTPUTS.iter().map(|&o| (o, Src::Tail)));
            for s in event_logs {
                v.extend([(Out::Dir, s), (Out::S3Text, s)]);
            }
        }
        "file-sink-before-rename" => {
            v.extend([(Out::Dir, Src::Tail), (Out::Dir, Src::Rechunk), (Out::Dir, Src::Mirror)])
        }
        "request-body-partly-sent" => {
            v.extend(
                [Out::S3Text, Out::S3Gzip, Out::S3Zstd, Out::S3Multipart, Out::Post]
                    .iter()
                    .map(|&o| (o, Src::Tail)),
            );
            v.extend([(Out::S3Text, Src::Rechunk), (Out::S3Text, Src::Mirror)]);
        }
        "multipart-part-uploaded" => v.push((Out::S3Multipart, Src::Tail)),
        "cloudwatch-batch-accepted" | "cloudwatch-batch-recorded" => v.push((Out::CloudWatch, Src::Tail)),
        "secondary-written" => v.extend([
            (Out::Dir, Src::Tail),
            (Out::S3Text, Src::Tail),
            (Out::Dir, Src::Rechunk),
        ]),
        _ => {}
    }
    v
}

#[test]
fn every_crash_point_is_in_the_matrix() {
    for (point, output) in logship::crashpoint::POINTS {
        let cases = reached_by(point);
        assert!(!cases.is_empty(), "crash point {point} is not in the matrix");
        if let Some(o) = output {
            let family = |out: &Out| match out {
                Out::Dir => "file",
                Out::CloudWatch => "cloudwatch",
                _ => "s3",
            };
            assert!(
                cases.iter().all(|(out, _)| family(out) == *o),
                "{point} belongs to {o}: {cases:?}"
            );
        }
    }
}

/// What a case writes and where it finds it again.
struct Case {
    point: &'static str,
    out: Out,
    src: Src,
    env: Env,
    s3: Option<S3Server>,
    proxy: Option<FaultProxy>,
    moto: Option<Moto>,
    /// The files and their bytes (tags for followed files; file names for event logs).
    inputs: Vec<(String, Vec<u8>)>,
}

/// An uncompressed Spark event log's lines; `noisy`: with padding that does not compress (so
/// that a compressed request body is larger than the piece a body is sent in).
fn event_log(n: usize, noisy: bool) -> Vec<u8> {
    let mut v = Vec::new();
    let mut rng = fastrand::Rng::with_seed(n as u64);
    for i in 0..n {
        let pad: String = if noisy {
            (0..120).map(|_| rng.alphanumeric()).collect()
        } else {
            "e".repeat(i % 200)
        };
        v.extend(format!("{{\"Event\":\"SparkListenerTaskEnd\",\"Task ID\":{i},\"pad\":\"{pad}\"}}\n").bytes());
    }
    v.extend_from_slice(b"{\"Event\":\"SparkListenerApplicationEnd\",\"Timestamp\":1}\n");
    v
}

impl Case {
    fn new(point: &'static str, out: Out, src: Src) -> Case {
        let env = Env::new();
        let mut inputs = Vec::new();
        // A body is sent in pieces of 256 KiB: one partly sent needs more, compressed.
        let noisy = point == "request-body-partly-sent";
        match src {
            Src::Tail => {
                let (a, mut b) = if out == Out::S3Multipart {
                    (lines("multipart", 0, 80_000), lines("small", 0, 2_000))
                } else if noisy {
                    (event_log(6_000, true), lines("b", 0, 1_500))
                } else {
                    (lines("a", 0, 6_000), lines("b", 0, 1_500))
                };
                if point == "recovery-chunk-cut" {
                    // Read at the drain, after the first commit, into the chunk still open.
                    b.extend_from_slice(b"an unterminated last line");
                }
                fs::write(env.path("a.log"), &a).unwrap();
                fs::write(env.path("b.log"), &b).unwrap();
                inputs.push(("a.log".to_string(), a));
                inputs.push(("b.log".to_string(), b));
            }
            Src::Rechunk => {
                let log = event_log(4_000, noisy);
                fs::create_dir_all(env.path("apps")).unwrap();
                fs::write(env.path("apps/app-1"), &log).unwrap();
                inputs.push(("app-1".to_string(), log));
            }
            Src::Mirror => {
                let log = zstd::encode_all(&event_log(if noisy { 6_000 } else { 40_000 }, noisy)[..], 1).unwrap();
                fs::create_dir_all(env.path("apps")).unwrap();
                fs::write(env.path("apps/app-2.zstd"), &log).unwrap();
                inputs.push(("app-2.zstd".to_string(), log));
            }
        }
        let s3 = matches!(
            out,
            Out::S3Text | Out::S3Gzip | Out::S3Zstd | Out::S3Multipart | Out::Post
        )
        .then(|| S3Server::start(&["logs"]));
        let proxy = (point == "secondary-written" && out != Out::Dir)
            .then(|| FaultProxy::start(&s3.as_ref().unwrap().endpoint, vec![], Fault::Status500));
        let moto = (out == Out::CloudWatch).then(Moto::start);
        Case {
            point,
            out,
            src,
            env,
            s3,
            proxy,
            moto,
            inputs,
        }
    }

    fn config(&self) -> Vec<String> {
        let failing = self.point == "secondary-written";
        let source = match self.src {
            Src::Tail => "type = \"tail\"\npaths = [\"{input}/*.log\"]".to_string(),
            Src::Rechunk => {
                "type = \"spark_events\"\npaths = [\"{input}/apps\"]\nspark = { mode = \"rechunk\" }".into()
            }
            Src::Mirror => "type = \"spark_events\"\npaths = [\"{input}/apps\"]\nspark = { mode = \"mirror\" }".into(),
        };
        let endpoint = |s3: &S3Server| match &self.proxy {
            Some(p) => p.endpoint.clone(),
            None => s3.endpoint.clone(),
        };
        let output = match self.out {
            Out::Dir => {
                let dir = if failing {
                    // A file where the directory should be: every delivery fails.
                    let f = self.env.dir.path().join("not-a-dir");
                    fs::write(&f, b"").unwrap();
                    f.join("out")
                } else {
                    self.env.out.clone()
                };
                format!("type = \"file\"\ndir = \"{}\"", dir.display())
            }
            Out::S3Text | Out::S3Gzip | Out::S3Zstd | Out::S3Multipart => {
                let store_as = match self.out {
                    Out::S3Gzip => "gzip",
                    Out::S3Zstd => "zstd",
                    _ => "text",
                };
                format!(
                    "type = \"s3\"\npath = \"api\"\nkey_format = \"%{{path}}/%{{tag}}/%{{time_slice}}_%{{index}}.%{{file_extension}}\"\n[output.s3]\nbucket = \"logs\"\nendpoint = \"{}\"\nforce_path_style = true\nregion = \"us-east-1\"\nstore_as = \"{store_as}\"\nmultipart_threshold = \"5MiB\"\npart_size = \"5MiB\"",
                    endpoint(self.s3.as_ref().unwrap())
                )
            }
            Out::Post => {
                let post = self.env.dir.path().join("post.json");
                fs::write(&post, self.s3.as_ref().unwrap().presign("logs", "api/", "1h", "1GB")).unwrap();
                format!(
                    "type = \"s3\"\npath = \"api\"\nkey_format = \"%{{path}}/%{{tag}}/%{{time_slice}}_%{{index}}_%{{hex_random}}.%{{file_extension}}\"\n[output.s3]\npresigned_post = \"{}\"",
                    post.display()
                )
            }
            Out::CloudWatch => format!(
                "type = \"cloudwatch\"\n[output.cloudwatch]\nlog_group = \"{GROUP}\"\nlog_stream = \"%{{tag}}\"\nendpoint = \"{}\"\nregion = \"us-east-1\"",
                self.moto.as_ref().unwrap().endpoint
            ),
        };
        let chunk_limit = match (self.out, self.point) {
            (Out::S3Multipart, _) => "12MiB",
            (_, "request-body-partly-sent") => "2MiB",
            _ => "64KiB",
        };
        let retry = if failing { "[output.retry]\nmax_times = 0\n" } else { "" };
        // Chunks that stay open across commits (for recovery to cut back), or sealed at once.
        let flush = if self.point == "recovery-chunk-cut" {
            "flush_mode = \"lazy\"\ntimekey = \"1h\""
        } else {
            "flush_mode = \"immediate\""
        };
        self.env.run_config(&format!(
            r#"
[buffer]
dir = "{{buffer}}"
chunk_limit = "{chunk_limit}"
{flush}
[lifecycle]
once = true
drain_deadline = "60s"
[[source]]
{source}
[[output]]
name = "out"
{output}
{retry}
"#
        ))
    }

    fn command(&self) -> std::process::Command {
        let mut cmd = logship_cmd();
        if let Some(s3) = &self.s3 {
            cmd.envs(s3.env());
        }
        if let Some(m) = &self.moto {
            cmd.envs(m.env());
        }
        cmd
    }

    /// Runs once crashing at `spec` (`point:n`); false when the run never reached it.
    fn crash(&self, args: &[String], spec: &str) -> bool {
        let mut cmd = self.command();
        cmd.env("LOGSHIP_CRASH_AT", spec);
        let mut d = Daemon::spawn_cmd(cmd, args, self.env.dir.path());
        let st = d.wait_exit(T);
        let crashed = d.stderr().contains("crash point");
        assert!(crashed || st.success(), "{self:?} at {spec}: {}", d.stderr());
        crashed
    }

    fn run(&self) {
        let args = self.config();
        let what = format!("{:?} at {}", self, self.point);
        let n = match self.point {
            // A mirrored log is one chunk and one commit.
            _ if self.src == Src::Mirror => 1,
            "chunk-written" => 3,
            "before-state-write" | "after-state-write" | "journal-record-half-written" | "delivered-before-ack" => 2,
            _ => 1,
        };
        let spec = format!("{}:{n}", self.point);
        if self.point == "recovery-chunk-cut" {
            // A crash that leaves a chunk file longer than committed (the last line, read at the
            // drain, written to the open chunk; its commit not written), then one in the
            // recovery that cuts it back.
            assert!(
                self.crash(&args, "before-state-write:2"),
                "{what}: the second commit was not reached"
            );
        }
        assert!(self.crash(&args, &spec), "{what}: the run never reached the point");
        let mut d = Daemon::spawn_cmd(self.command(), &args, self.env.dir.path());
        let st = d.wait_exit(T);
        let want_code = if self.point == "secondary-written" { 3 } else { 0 };
        assert_eq!(st.code(), Some(want_code), "{what}: the recovery run: {}", d.stderr());
        if std::env::var_os("LOGSHIP_MATRIX_DEBUG").is_some() {
            for e in fs::read_dir(self.env.dir.path()).unwrap().flatten() {
                if e.file_name().to_string_lossy().ends_with(".stderr") {
                    eprintln!("==== {}\n{}", e.path().display(), fs::read_to_string(e.path()).unwrap());
                }
            }
            if let Some(s3) = &self.s3 {
                eprintln!("keys: {:?}", s3.keys("logs"));
            }
        }
        self.check(&what);
    }

    /// The destination holds each input exactly (see the module doc).
    fn check(&self, what: &str) {
        if self.point == "secondary-written" {
            let dir = self.env.buffer.join("secondary");
            let mut files: Vec<_> = fs::read_dir(&dir)
                .unwrap()
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.is_file())
                .collect();
            files.sort_by_key(|p| {
                p.extension()
                    .and_then(|e| e.to_str())
                    .and_then(|n| n.parse::<u64>().ok())
                    .unwrap_or(u64::MAX)
            });
            let all: Vec<u8> = files.iter().flat_map(|f| fs::read(f).unwrap()).collect();
            let want: usize = self.inputs.iter().map(|(_, b)| b.len()).sum();
            assert_eq!(
                all.len(),
                want,
                "{what}: the secondary directory holds each chunk once: {files:?}"
            );
            for (_, bytes) in &self.inputs {
                for line in bytes.split_inclusive(|&b| b == b'\n').step_by(97) {
                    assert!(
                        all.windows(line.len()).any(|w| w == line),
                        "{what}: a line is missing from the secondary files"
                    );
                }
            }
            return;
        }
        match (self.out, self.src) {
            (Out::CloudWatch, _) => {
                let moto = self.moto.as_ref().unwrap();
                for (tag, bytes) in &self.inputs {
                    let want: Vec<String> = String::from_utf8(bytes.clone())
                        .unwrap()
                        .lines()
                        .map(str::to_string)
                        .collect();
                    let got: Vec<String> = moto.events(GROUP, tag).into_iter().map(|(_, m)| m).collect();
                    if self.point == "cloudwatch-batch-accepted" {
                        // The batch accepted when the process died is sent again, and only it.
                        let mut seen = std::collections::HashSet::new();
                        let repeated = got.iter().filter(|m| !seen.insert(m.as_str())).count();
                        assert!(repeated <= 10_000, "{what}: {repeated} events repeated");
                        let mut unique = got.clone();
                        unique.dedup();
                        let mut seen = std::collections::HashSet::new();
                        unique.retain(|m| seen.insert(m.clone()));
                        assert_eq!(unique, want, "{what}: {tag}");
                    } else {
                        assert_eq!(got.len(), want.len(), "{what}: {tag}: events");
                        assert!(
                            got == want,
                            "{what}: {tag}: the events are not the lines, once each, in order"
                        );
                    }
                }
            }
            (Out::Dir, Src::Tail) => {
                for (tag, bytes) in &self.inputs {
                    assert_bytes_eq(&collect(&self.env.out, tag), bytes);
                }
                let total = self.inputs.iter().map(|(_, b)| b.len() as u64).sum();
                assert_only_chunks(&self.env.out, &["a.log", "b.log"], total);
            }
            (_, Src::Tail) => {
                let store_as = match self.out {
                    Out::S3Gzip => "gzip",
                    Out::S3Zstd => "zstd",
                    _ => "text",
                };
                let s3 = self.s3.as_ref().unwrap();
                for (tag, bytes) in &self.inputs {
                    assert_bytes_eq(&collect_s3(s3, "api", tag, store_as), bytes);
                }
            }
            (out, src) => {
                // Event logs: under `eventlog_v2_<app>/` (rechunked) or by name (mirrored).
                let (name, bytes) = &self.inputs[0];
                let read = |rel: &str| -> Option<Vec<u8>> {
                    match out {
                        Out::Dir => fs::read(self.env.out.join(rel)).ok(),
                        _ => self.s3.as_ref().unwrap().object("logs", &format!("api/{rel}")),
                    }
                };
                let got = if src == Src::Rechunk {
                    let mut all = Vec::new();
                    for n in 1.. {
                        match read(&format!("eventlog_v2_{name}/events_{n}_{name}")) {
                            Some(b) => all.extend(b),
                            None => break,
                        }
                    }
                    assert!(
                        read(&format!("eventlog_v2_{name}/appstatus_{name}")).is_some(),
                        "{what}: the completion marker"
                    );
                    all
                } else {
                    read(name).unwrap_or_default()
                };
                assert_bytes_eq(&got, bytes);
            }
        }
    }
}

impl std::fmt::Debug for Case {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}/{:?}", self.out, self.src)
    }
}

/// Every point that `out` reaches, with every source that reaches it there.
fn run_output(out: Out) {
    let mut failed = Vec::new();
    for (point, _) in logship::crashpoint::POINTS {
        for (o, src) in reached_by(point) {
            // `LOGSHIP_MATRIX_ONLY=S3Gzip/Tail/after-state-write` runs one case (to replay a
            // failure).
            let name = format!("{out:?}/{src:?}/{point}");
            if o == out && std::env::var("LOGSHIP_MATRIX_ONLY").is_ok_and(|only| only != name) {
                continue;
            }
            if o == out {
                eprintln!("matrix: {out:?}/{src:?} at {point}");
                let r = std::panic::catch_unwind(|| Case::new(point, out, src).run());
                if let Err(e) = r {
                    let msg = e
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                        .unwrap_or_default();
                    failed.push(msg.chars().take(600).collect::<String>());
                }
            }
        }
    }
    assert!(
        failed.is_empty(),
        "{} cases failed:\n{}",
        failed.len(),
        failed.join("\n---\n")
    );
}

#[test]
fn crash_points_of_a_directory_output() {
    run_output(Out::Dir);
}

#[test]
fn crash_points_of_the_s3_api_with_text_objects() {
    run_output(Out::S3Text);
}

#[test]
fn crash_points_of_the_s3_api_with_gzip_objects() {
    run_output(Out::S3Gzip);
}

#[test]
fn crash_points_of_the_s3_api_with_zstd_objects() {
    run_output(Out::S3Zstd);
}

#[test]
fn crash_points_of_the_s3_api_with_multipart_uploads() {
    run_output(Out::S3Multipart);
}

#[test]
fn crash_points_of_a_presigned_post() {
    run_output(Out::Post);
}

#[test]
fn crash_points_of_cloudwatch_logs() {
    run_output(Out::CloudWatch);
}
