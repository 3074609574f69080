//! Pods in a real container runtime. The images are built with podman from `docker/Dockerfile`'s
//! runtime stages and the static binaries built on this host (`docker/rootfs.sh`), and the pods
//! that `logship-inject template` makes run under `podman kube play`: real containers sharing
//! emptyDir volumes, init containers, `securityContext` (999:1000, read-only root, every
//! capability dropped), memory limits. A stand-in Spark image (busybox-static and
//! `tests/pod/spark-standin/entrypoint.sh`, no libc) behaves like EMR's Spark container, and S3 is
//! the project's s3s server on the host, reached through `hostNetwork`.
//!
//! Where podman 4.3 (Debian 12) does not do what the kubelet does, the test does it to the
//! manifest, each named here and in `docs/pods.md`:
//! - `$(VAR)` references in `env` values, `command` and `args` are not expanded: the test expands
//!   them as the kubelet would (earlier variables of the same container, downward-API values);
//! - emptyDir volumes are created root-owned 0755, and `fsGroup` is ignored: an init container run
//!   as root first makes each emptyDir what the kubelet makes (mode 2777, group `fsGroup`);
//! - a Secret volume cannot be refreshed mid-run: it becomes a hostPath directory that the test
//!   updates the way the kubelet updates a Secret volume (`..data` swapped to a new directory);
//! - `subPath` mounts of a ConfigMap mount the whole ConfigMap (unused by the stand-in);
//! - native sidecars (init containers with `restartPolicy: Always`) do not run as sidecars, so
//!   `--termination native` is tested by its nearest thing: SIGTERM with a grace period
//!   (`podman pod stop -t`), which is what the kubelet sends the sidecar once Spark has ended.

use crate::common::s3::{S3Server, collect_s3, joined, kubelet_write};
use crate::common::{assert_bytes_eq, bin, lines};

use rustls_pki_types::pem::PemObject;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The sidecar's heartbeat threshold (`lifecycle.heartbeat_timeout`'s default, EMR's 15 s).
const STALE: Duration = Duration::from_secs(15);
/// How long a pod may take in all: generous, the machine may be loaded.
const WAIT: Duration = Duration::from_secs(240);
/// The image size goal of issue 16, for each image.
const MAX_IMAGE_BYTES: u64 = 15_000_000;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn podman() -> Command {
    let mut c = Command::new("podman");
    c.env("CONTAINERS_CONF", repo().join("tests/pod/containers.conf"));
    c
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| {
        panic!("cannot run {cmd:?}: {e} (the pod tests need podman, runc and busybox-static; see README)")
    });
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The images the pods run, built once per test process (and one process at a time).
struct Images {
    sidecar: String,
    standin: String,
    /// The webhook's image, built from the same Dockerfile; only its size is checked here.
    inject: String,
}

fn images() -> &'static Images {
    static IMAGES: OnceLock<Images> = OnceLock::new();
    IMAGES.get_or_init(|| {
        let tmp = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("podman-images");
        std::fs::create_dir_all(&tmp).unwrap();
        let lock = std::fs::File::create(tmp.join("lock")).unwrap();
        lock.lock().unwrap();

        // The static binaries, as the Dockerfile's build stage makes them (cargo does nothing when
        // they are up to date; .ci/run builds them before the tests), with the musl C compiler
        // that docker/musl-cc.sh sets up inside target/.
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let musl_cc = run(Command::new(repo().join("docker/musl-cc.sh")).arg(repo().join("target/musl-cc")));
        let musl_cc = String::from_utf8(musl_cc.stdout).unwrap().trim().to_string();
        run(Command::new(cargo)
            .current_dir(repo())
            .env("CC_x86_64_unknown_linux_musl", musl_cc)
            .args([
                "build",
                "--release",
                "--target",
                "x86_64-unknown-linux-musl",
                "--bins",
                "-p",
                "logship",
                "-p",
                "logship-inject",
            ]));
        let target = repo().join("target/x86_64-unknown-linux-musl/release");
        let build = tmp.join("build");
        run(Command::new(repo().join("docker/rootfs.sh"))
            .arg(build.join("rootfs"))
            .arg(target.join("logship"))
            .arg(target.join("logship-inject")));
        let empty = tmp.join("context");
        std::fs::create_dir_all(&empty).unwrap();
        let build_stage = |stage: &str, tag: &str| {
            run(podman()
                .args(["build", "-q", "-f"])
                .arg(repo().join("docker/Dockerfile"))
                .arg(format!("--build-context=build={}", build.display()))
                .args(["--target", stage, "-t", tag])
                .arg(&empty));
        };
        build_stage("sidecar", "localhost/logship:test");
        build_stage("inject", "localhost/logship-inject:test");

        // The Spark stand-in: busybox-static with its applets, and the entrypoint.
        let standin = tmp.join("standin");
        let _ = std::fs::remove_dir_all(&standin);
        let rootfs = standin.join("rootfs");
        std::fs::create_dir_all(rootfs.join("bin")).unwrap();
        std::fs::create_dir_all(rootfs.join("opt")).unwrap();
        std::fs::create_dir_all(rootfs.join("tmp")).unwrap();
        let busybox = ["/bin/busybox", "/usr/bin/busybox"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .expect("busybox-static (apt-get install busybox-static)");
        std::fs::copy(busybox, rootfs.join("bin/busybox")).unwrap();
        for applet in [
            "sh", "cat", "chgrp", "chmod", "dirname", "echo", "kill", "ls", "mkdir", "mv", "sleep", "touch",
        ] {
            std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet)).unwrap();
        }
        std::fs::copy(
            repo().join("tests/pod/spark-standin/entrypoint.sh"),
            rootfs.join("opt/entrypoint.sh"),
        )
        .unwrap();
        run(podman()
            .args(["build", "-q", "-f"])
            .arg(repo().join("tests/pod/spark-standin/Containerfile"))
            .args(["-t", "localhost/spark-standin:test"])
            .arg(&standin));
        Images {
            sidecar: "localhost/logship:test".into(),
            standin: "localhost/spark-standin:test".into(),
            inject: "localhost/logship-inject:test".into(),
        }
    })
}

fn image_size(tag: &str) -> u64 {
    let out = run(podman().args(["image", "inspect", "--format", "{{.Size}}", tag]));
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

/// `logship-inject`, built next to the binary under test.
fn inject(args: &[&str], stdin: &[u8]) -> Value {
    let path = Path::new(bin()).parent().unwrap().join("logship-inject");
    if !path.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        run(Command::new(cargo).args(["build", "-p", "logship-inject", "--bin", "logship-inject"]));
    }
    let mut child = Command::new(&path)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), stdin).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_yaml_ng::from_slice(&out.stdout).unwrap()
}

/// What the job writes: `stdout.N`, `stderr.N`, `events.N` (driver), read by the stand-in.
struct JobData {
    dir: PathBuf,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    events: Vec<u8>,
}

fn job_data(dir: &Path, role: &str, rounds: usize) -> JobData {
    std::fs::create_dir_all(dir).unwrap();
    let (mut stdout, mut stderr, mut events) = (Vec::new(), Vec::new(), Vec::new());
    for n in 1..=rounds {
        let (o, e) = (lines("out", n * 500, 500), lines("err", n * 50, 50));
        std::fs::write(dir.join(format!("stdout.{n}")), &o).unwrap();
        std::fs::write(dir.join(format!("stderr.{n}")), &e).unwrap();
        stdout.extend(o);
        stderr.extend(e);
        if role == "driver" {
            let mut ev = Vec::new();
            for i in 0..300 {
                ev.extend(format!("{{\"Event\":\"SparkListenerTaskEnd\",\"Stage ID\":{n},\"Task ID\":{i}}}\n").bytes());
            }
            std::fs::write(dir.join(format!("events.{n}")), &ev).unwrap();
            events.extend(ev);
        }
    }
    stderr.extend(format!("standin {role}: done\n").bytes());
    JobData {
        dir: dir.to_path_buf(),
        stdout,
        stderr,
        events,
    }
}

/// A pod under `podman kube play`, removed when dropped.
struct Pod {
    name: String,
    yaml: PathBuf,
}

impl Drop for Pod {
    fn drop(&mut self) {
        let _ = podman().args(["kube", "down"]).arg(&self.yaml).output();
        let _ = podman().args(["pod", "rm", "-f", &self.name]).output();
        // The ConfigMaps' volumes outlive the pod (the emptyDirs go with it).
        let out = podman().args(["volume", "ls", "-q"]).output().unwrap();
        for v in String::from_utf8_lossy(&out.stdout).lines() {
            if v.ends_with(&format!("-{}", self.name)) {
                let _ = podman().args(["volume", "rm", "-f", v]).output();
            }
        }
    }
}

/// A container's state: `(status, exit code, finished at)`.
fn state(pod: &str, container: &str) -> (String, i32, String) {
    let out = podman()
        .args([
            "inspect",
            "--format",
            "{{.State.Status}}|{{.State.ExitCode}}|{{.State.FinishedAt}}",
        ])
        .arg(format!("{pod}-{container}"))
        .output()
        .unwrap();
    let s = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let mut parts = s.splitn(3, '|');
    (
        parts.next().unwrap_or("").to_string(),
        parts.next().and_then(|c| c.parse().ok()).unwrap_or(-1),
        parts.next().unwrap_or("").to_string(),
    )
}

fn logs(pod: &str, container: &str) -> String {
    let out = podman()
        .args(["logs"])
        .arg(format!("{pod}-{container}"))
        .output()
        .unwrap();
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Waits until `container` has exited; its exit code.
fn wait_exited(pod: &str, container: &str, timeout: Duration) -> i32 {
    let deadline = Instant::now() + timeout;
    loop {
        let (status, code, _) = state(pod, container);
        if status == "exited" || status == "stopped" {
            return code;
        }
        assert!(
            Instant::now() < deadline,
            "{pod}-{container} still {status:?} after {timeout:?}: {}",
            logs(pod, container)
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Seconds between two containers' ends, from podman's `FinishedAt` times.
fn seconds_between_ends(pod: &str, first: &str, second: &str) -> f64 {
    let t = |c: &str| {
        let at = state(pod, c).2;
        // "2026-12-01 21:15:26.123456789 +0000 UTC"
        let mut f = at.split_whitespace();
        let (d, t) = (f.next().unwrap(), f.next().unwrap());
        chrono::NaiveDateTime::parse_from_str(&format!("{d} {t}"), "%Y-%m-%d %H:%M:%S%.f")
            .unwrap_or_else(|e| panic!("{at:?}: {e}"))
    };
    (t(second) - t(first)).num_milliseconds() as f64 / 1000.0
}

/// `$(NAME)` references to `vars`, as the kubelet expands them (`$$` escapes one `$`).
fn expand(s: &str, vars: &BTreeMap<String, String>) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(a) = after.strip_prefix('$') {
            out.push('$');
            rest = a;
        } else if let Some(body) = after.strip_prefix('(')
            && let Some(end) = body.find(')')
            && let Some(v) = vars.get(&body[..end])
        {
            out.push_str(v);
            rest = &body[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// What the test does in place of the kubelet and Spark (see the module's doc), for a pod named
/// `name` of application `app`; `standin_env` is the Spark stand-in's behaviour.
fn for_podman(
    mut pod: Value,
    name: &str,
    role: &str,
    app: &str,
    data: &Path,
    secret: &Path,
    standin_env: &[(&str, &str)],
) -> String {
    let labels = json!({"spark-role": role, "spark-app-selector": app});
    pod["metadata"] = json!({"name": name, "labels": labels});
    let spec = &mut pod["spec"];
    spec["restartPolicy"] = json!("Never");
    spec["hostNetwork"] = json!(true);
    let fs_group = spec["securityContext"]["fsGroup"].as_i64().unwrap_or(0);

    // Volumes: emptyDirs made as the kubelet makes them, the Secret as a hostPath, ConfigMaps given.
    // podman makes an emptyDir a named volume, shared by every pod with a volume of that name: each
    // gets the pod's name as a suffix, so that concurrent pods do not share buffers.
    let mut empty_dirs = Vec::new();
    let mut config_maps = Vec::new();
    let mut renamed = BTreeMap::new();
    for v in spec["volumes"].as_array_mut().into_iter().flatten() {
        let vname = v["name"].as_str().unwrap().to_string();
        if v.get("emptyDir").is_some() {
            let unique = format!("{vname}-{name}");
            v["name"] = json!(unique);
            renamed.insert(vname, unique.clone());
            empty_dirs.push(unique);
        } else if v.get("secret").is_some() {
            *v = json!({"name": vname, "hostPath": {"path": secret.display().to_string(), "type": "Directory"}});
        } else if let Some(cm) = v.get_mut("configMap") {
            let unique = format!("{}-{name}", cm["name"].as_str().unwrap());
            cm["name"] = json!(unique);
            config_maps.push(unique);
        }
    }
    for list in ["initContainers", "containers"] {
        for c in spec[list].as_array_mut().into_iter().flatten() {
            for m in c["volumeMounts"].as_array_mut().into_iter().flatten() {
                if let Some(unique) = renamed.get(m["name"].as_str().unwrap()) {
                    m["name"] = json!(unique);
                }
            }
        }
    }
    spec["volumes"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "standin-data", "hostPath": {"path": data.display().to_string(), "type": "Directory"}}));
    let mounts: Vec<Value> = empty_dirs
        .iter()
        .map(|v| json!({"name": v, "mountPath": format!("/volumes/{v}")}))
        .collect();
    let dirs: Vec<String> = empty_dirs.iter().map(|v| format!("/volumes/{v}")).collect();
    let fsgroup = json!({
        "name": "kubelet-fsgroup",
        "image": images().standin,
        "command": ["/bin/sh", "-c", format!("chgrp {fs_group} {d} && chmod 2777 {d}", d = dirs.join(" "))],
        "securityContext": {"runAsUser": 0, "runAsGroup": 0},
        "volumeMounts": mounts,
    });
    let inits = spec["initContainers"].as_array().cloned().unwrap_or_default();
    spec["initContainers"] = Value::Array([vec![fsgroup], inits].concat());

    // The Spark stand-in in the Spark container, with Spark's argument.
    let spark = &mut spec["containers"][0];
    spark["image"] = json!(images().standin);
    spark["args"] = json!([role]);
    let env = spark["env"].as_array_mut().unwrap();
    for (k, v) in standin_env {
        env.push(json!({"name": k, "value": v}));
    }
    env.push(json!({"name": "STANDIN_DATA", "value": "/standin-data"}));
    env.push(json!({"name": "STANDIN_APP", "value": app}));
    spark["volumeMounts"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "standin-data", "mountPath": "/standin-data", "readOnly": true}));

    // Every container: local images only, and `$(VAR)` expanded.
    for list in ["initContainers", "containers"] {
        for c in spec[list].as_array_mut().into_iter().flatten() {
            c["imagePullPolicy"] = json!("Never");
            let mut vars = BTreeMap::new();
            for e in c["env"].as_array_mut().into_iter().flatten() {
                let key = e["name"].as_str().unwrap().to_string();
                let value = if let Some(v) = e["value"].as_str() {
                    let v = expand(v, &vars);
                    e["value"] = json!(v);
                    v
                } else {
                    match e["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
                        Some("metadata.name") => name.to_string(),
                        Some(f) => {
                            let label = f.trim_start_matches("metadata.labels['").trim_end_matches("']");
                            labels[label].as_str().unwrap_or_default().to_string()
                        }
                        None => continue,
                    }
                };
                vars.insert(key, value);
            }
            for field in ["command", "args"] {
                for a in c[field].as_array_mut().into_iter().flatten() {
                    *a = json!(expand(a.as_str().unwrap(), &vars));
                }
            }
        }
    }

    let mut docs = String::new();
    for cm in config_maps {
        docs.push_str(&serde_yaml_ng::to_string(&json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": cm}, "data": {"spark-defaults.conf": ""}})).unwrap());
        docs.push_str("---\n");
    }
    docs.push_str(&serde_yaml_ng::to_string(&pod).unwrap());
    docs
}

/// Starts `yaml` under `podman kube play`.
fn play(name: &str, yaml: String, dir: &Path) -> Pod {
    let path = dir.join(format!("{name}.yaml"));
    std::fs::write(&path, yaml).unwrap();
    let pod = Pod {
        name: name.to_string(),
        yaml: path.clone(),
    };
    run(podman().args(["kube", "play"]).arg(&path));
    pod
}

/// A pod name that no other test (or run) uses at the same time.
fn pod_name(what: &str) -> String {
    format!("{what}-{}-{}", std::process::id(), fastrand::u32(..) % 100_000)
}

/// The stand-in Spark container's stderr and stdout, as the sidecar shipped them.
fn assert_container_logs(server: &S3Server, app: &str, pod: &str, data: &JobData) {
    let prefix = format!("spark/containers/{app}");
    let stdout = collect_s3(server, &prefix, &format!("{pod}/stdout"), "gzip");
    assert_bytes_eq(&stdout, &data.stdout);
    let stderr = collect_s3(server, &prefix, &format!("{pod}/stderr"), "gzip");
    assert_bytes_eq(&stderr, &data.stderr);
}

/// The event-log objects `events_<n>_<app>` of `app`, joined in `n` order (which must run 1..N).
fn joined_events(server: &S3Server, app: &str) -> Vec<u8> {
    let prefix = format!("spark/event-logs/eventlog_v2_{app}/events_");
    joined(server, &prefix, |r| r.strip_suffix(&format!("_{app}"))?.parse().ok())
}

#[test]
fn both_images_are_from_scratch_static_and_small() {
    let i = images();
    for tag in [&i.sidecar, &i.inject] {
        let size = image_size(tag);
        eprintln!("{tag}: {size} bytes");
        assert!(size <= MAX_IMAGE_BYTES, "{tag} is {size} bytes");
    }
    // No shell, no libc: the sidecar runs, as 999:1000, and nothing else is in the image.
    let out = run(podman().args(["run", "--rm", "--read-only", &i.sidecar, "--version"]));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("logship "));
    let out = podman()
        .args(["run", "--rm", "--entrypoint", "/bin/sh", &i.sidecar, "-c", "true"])
        .output()
        .unwrap();
    assert!(!out.status.success(), "the sidecar image has no shell");
    let out = run(podman().args(["image", "inspect", "--format", "{{.Config.User}}", &i.sidecar]));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "999:1000");
}

/// One pod test's world: the S3 server, a scratch directory, the pod's name, what the job writes
/// and the presigned POST's Secret directory.
struct PodCase {
    server: S3Server,
    dir: tempfile::TempDir,
    name: String,
    role: &'static str,
    data: JobData,
    secret: PathBuf,
}

impl PodCase {
    /// A case for a pod of `role` named after `what`, whose job writes `rounds` pieces, with a
    /// presigned POST for `spark/` in its Secret (`presigned` changes its text first).
    fn new(what: &str, role: &'static str, rounds: usize, presigned: impl Fn(String) -> String) -> PodCase {
        let server = S3Server::start(&["logs"]);
        let dir = tempfile::tempdir().unwrap();
        let data = job_data(&dir.path().join("data"), role, rounds);
        let secret = dir.path().join("secret");
        std::fs::create_dir_all(&secret).unwrap();
        let post = String::from_utf8(server.presign("logs", "spark/", "1h", "5GB")).unwrap();
        kubelet_write(&secret, presigned(post).as_bytes(), 1);
        PodCase {
            server,
            dir,
            name: pod_name(what),
            role,
            data,
            secret,
        }
    }

    /// `logship-inject template` for this role to `s3://logs/spark` through the Secret.
    fn template(&self, extra: &[&str], input: &[u8]) -> Value {
        let image = images().sidecar.as_str();
        let mut args = vec![
            "template",
            "--role",
            self.role,
            "--image",
            image,
            "--to",
            "s3://logs/spark",
        ];
        args.extend(["--presigned-post-secret", "logship-s3"]);
        args.extend(extra);
        inject(&args, input)
    }

    /// Runs `pod` (see [`for_podman`]) with the stand-in's behaviour `standin_env`.
    fn play(&self, pod: Value, app: &str, standin_env: &[(&str, &str)]) -> Pod {
        let yaml = for_podman(
            pod,
            &self.name,
            self.role,
            app,
            &self.data.dir,
            &self.secret,
            standin_env,
        );
        play(&self.name, yaml, self.dir.path())
    }

    /// Waits for the Spark container to exit 0 and then the sidecar; the sidecar's exit code
    /// and log, and the seconds between the two ends.
    fn ends(&self, pod: &Pod) -> (i32, String, f64) {
        let spark = format!("spark-kubernetes-{}", self.role);
        let code = wait_exited(&pod.name, &spark, WAIT);
        assert_eq!(code, 0, "{}", logs(&pod.name, &spark));
        let code = wait_exited(&pod.name, "logship", WAIT);
        let log = logs(&pod.name, "logship");
        let after = seconds_between_ends(&pod.name, &spark, "logship");
        eprintln!(
            "{}: the sidecar exited {after:.1} s after the Spark container",
            self.name
        );
        (code, log, after)
    }
}

fn emr_template(name: &str) -> Vec<u8> {
    std::fs::read(repo().join("tests/fixtures/emr").join(name)).unwrap()
}

/// EMR's driver template, its fluentd container replaced, in heartbeat mode, with the presigned
/// POST in a Secret volume that the "kubelet" refreshes mid-run.
#[test]
fn emr_driver_template_runs_as_a_pod_and_ships_everything_in_heartbeat_mode() {
    let case = PodCase::new("emr-driver", "driver", 6, |p| p);
    let app = "spark-0123abcd4567ef";
    let extra = ["--event-logs", "single", "--remove-container", "emr-container-fluentd"];
    let pod = case.template(&extra, &emr_template("pod-template-driver.yaml"));
    let standin = [
        ("STANDIN_OUTPUT", "files"),
        ("STANDIN_HEARTBEAT", "1"),
        ("STANDIN_EVENTS", "single"),
        ("STANDIN_EVENT_DIR", "/var/log/spark/apps"),
    ];
    let pod = case.play(pod, app, &standin);

    // Midway, the kubelet refreshes the Secret (a new presigned POST, same policy).
    std::thread::sleep(Duration::from_secs(3));
    kubelet_write(&case.secret, &case.server.presign("logs", "spark/", "1h", "5GB"), 2);

    let (code, log, after) = case.ends(&pod);
    assert_eq!(code, 0, "{log}");
    assert!(
        after <= STALE.as_secs_f64() + 10.0,
        "{after} s after Spark ended: {log}"
    );
    assert!(log.contains("went stale"), "{log}");
    assert_bytes_eq(&joined_events(&case.server, app), &case.data.events);
    let keys = case.server.keys("logs");
    assert!(
        keys.contains(&format!("spark/event-logs/eventlog_v2_{app}/appstatus_{app}")),
        "{keys:?}"
    );
    assert_container_logs(&case.server, app, &case.name, &case.data);
    let posts = case.server.requests("PostObject").len();
    assert!(posts >= 3, "{posts} POSTs");
}

/// EMR's executor template: its heartbeat file is `/tmp/main-container-terminated`, which the
/// sidecar reaches through the pod's `/tmp` volume.
#[test]
fn emr_executor_template_runs_as_a_pod_and_ships_everything_in_heartbeat_mode() {
    let case = PodCase::new("emr-exec", "executor", 4, |p| p);
    let app = "spark-0123abcd4567ef";
    let extra = ["--remove-container", "emr-container-fluentd"];
    let pod = case.template(&extra, &emr_template("pod-template-executor.yaml"));
    let pod = case.play(pod, app, &[("STANDIN_OUTPUT", "files"), ("STANDIN_HEARTBEAT", "1")]);
    let (code, log, after) = case.ends(&pod);
    assert_eq!(code, 0, "{log}");
    assert!(after <= STALE.as_secs_f64() + 10.0, "{after} s: {log}");
    assert_container_logs(&case.server, app, &case.name, &case.data);
}

/// A plain template (no EMR volumes) in wrap mode: the init container copies logship into the
/// stand-in image, which has no libc, and `logship wrap` runs the entrypoint, copies its output
/// into the container-log files and signals the end. Spark 4's rolling layout, uncompressed.
/// The presigned POST names its endpoint `localhost`: the static binary resolves it (musl's
/// resolver, /etc/hosts).
#[test]
fn a_plain_template_in_wrap_mode_runs_logship_in_an_image_without_libc() {
    let case = PodCase::new("plain-driver", "driver", 4, |p| {
        assert!(p.contains("127.0.0.1"), "{p}");
        p.replace("127.0.0.1", "localhost")
    });
    let app = "spark-fedcba9876543210";
    let pod = case.template(&["--termination", "wrap", "--event-logs", "rolling"], b"");
    let standin = [
        ("STANDIN_OUTPUT", "streams"),
        ("STANDIN_EVENTS", "rolling"),
        ("STANDIN_EVENT_DIR", "/var/log/spark/apps"),
    ];
    let pod = case.play(pod, app, &standin);
    let (code, log, after) = case.ends(&pod);
    assert_eq!(code, 0, "{log}");
    assert!(after <= 10.0, "wrap signals the end at once, yet {after} s: {log}");
    assert_bytes_eq(&joined_events(&case.server, app), &case.data.events);
    let keys = case.server.keys("logs");
    assert!(
        keys.contains(&format!("spark/event-logs/eventlog_v2_{app}/appstatus_{app}")),
        "{keys:?}"
    );
    assert_container_logs(&case.server, app, &case.name, &case.data);
}

/// The rest of the template × mode matrix: EMR's driver and executor templates in wrap mode, and
/// the plain driver template in heartbeat mode. Each pod ships every byte and its sidecar exits 0.
#[test]
fn the_other_template_and_mode_pairs_ship_everything_too() {
    let cases: [(&str, &'static str, Option<&str>, &str); 3] = [
        ("emr-driver-wrap", "driver", Some("pod-template-driver.yaml"), "wrap"),
        ("emr-exec-wrap", "executor", Some("pod-template-executor.yaml"), "wrap"),
        ("plain-driver-hb", "driver", None, "heartbeat"),
    ];
    for (what, role, emr, mode) in cases {
        let case = PodCase::new(what, role, 3, |p| p);
        let app = "spark-7777aaaa";
        let input = emr.map(emr_template).unwrap_or_default();
        let mut extra = vec!["--termination", mode, "--event-logs", "single"];
        if emr.is_some() {
            extra.extend(["--remove-container", "emr-container-fluentd"]);
        }
        let pod = case.template(&extra, &input);
        let output = if mode == "wrap" { "streams" } else { "files" };
        let heartbeat = if mode == "wrap" { "0" } else { "1" };
        let standin = [
            ("STANDIN_OUTPUT", output),
            ("STANDIN_HEARTBEAT", heartbeat),
            ("STANDIN_EVENTS", "single"),
            ("STANDIN_EVENT_DIR", "/var/log/spark/apps"),
        ];
        let pod = case.play(pod, app, &standin);
        let (code, log, after) = case.ends(&pod);
        assert_eq!(code, 0, "{what}: {log}");
        assert!(after <= STALE.as_secs_f64() + 10.0, "{what}: {after} s: {log}");
        if role == "driver" {
            assert_bytes_eq(&joined_events(&case.server, app), &case.data.events);
        }
        assert_container_logs(&case.server, app, &case.name, &case.data);
    }
}

/// A pod stopped from outside (the job killed, a node drained): the kubelet sends SIGTERM and
/// waits the grace period. The sidecar drains what the stand-in wrote and exits 0 within it.
#[test]
fn a_pod_stopped_with_a_grace_period_drains_within_it() {
    let case = PodCase::new("stopped", "executor", 3, |p| p);
    let app = "spark-5151515151";
    let pod = case.template(&["--termination", "heartbeat"], b"");
    let standin = [
        ("STANDIN_OUTPUT", "files"),
        ("STANDIN_HEARTBEAT", "1"),
        ("STANDIN_HOLD", "/standin-data/never"),
    ];
    let pod = case.play(pod, app, &standin);
    // Wait until the stand-in has written everything and it is shipped, then stop the pod.
    let (server, name, data) = (&case.server, &case.name, &case.data);
    let prefix = format!("spark/containers/{app}");
    let deadline = Instant::now() + WAIT;
    while collect_s3(server, &prefix, &format!("{name}/stdout"), "gzip").len() < data.stdout.len() {
        assert!(Instant::now() < deadline, "{}", logs(&pod.name, "logship"));
        std::thread::sleep(Duration::from_millis(500));
    }
    let started = Instant::now();
    let mut stop = podman().args(["pod", "stop", "-t", "20", &pod.name]).spawn().unwrap();
    let code = wait_exited(&pod.name, "logship", WAIT);
    let drained_in = started.elapsed();
    let log = logs(&pod.name, "logship");
    assert!(stop.wait().unwrap().success());
    eprintln!("{name}: the sidecar exited {drained_in:?} after `podman pod stop -t 20` began");
    // 137 would be the SIGKILL at the end of the grace period.
    assert_eq!(code, 0, "the sidecar drained and exited 0 on SIGTERM: {log}");
    assert!(log.contains("SIGTERM"), "{log}");
    let stdout = collect_s3(server, &prefix, &format!("{name}/stdout"), "gzip");
    assert_bytes_eq(&stdout, &data.stdout);
    // The stand-in was stopped before its last line ("standin executor: done").
    let stderr = collect_s3(server, &prefix, &format!("{name}/stderr"), "gzip");
    let last = "standin executor: done\n".len();
    assert_bytes_eq(&stderr, &data.stderr[..data.stderr.len() - last]);
}

/// The failure path: the sidecar has no writable buffer directory (its emptyDir mount removed)
/// on a read-only root. One clear line, a non-zero exit, and the Spark container is unaffected.
#[test]
fn a_sidecar_without_a_writable_buffer_directory_says_so_and_fails() {
    let case = PodCase::new("nobuffer", "executor", 1, |p| p);
    let mut pod = case.template(&["--termination", "heartbeat"], b"");
    for c in pod["spec"]["containers"].as_array_mut().unwrap() {
        if c["name"] == "logship" {
            c["volumeMounts"]
                .as_array_mut()
                .unwrap()
                .retain(|m| m["name"] != "logship-buffer");
        }
    }
    let pod = case.play(
        pod,
        "spark-0000dead",
        &[("STANDIN_OUTPUT", "files"), ("STANDIN_HEARTBEAT", "1")],
    );
    let code = wait_exited(&pod.name, "logship", WAIT);
    let log = logs(&pod.name, "logship");
    assert_ne!(code, 0, "{log}");
    let errors: Vec<&str> = log.lines().filter(|l| l.contains("/var/lib/logship")).collect();
    assert!(
        errors
            .iter()
            .any(|l| l.contains("buffer") && (l.contains("Read-only") || l.contains("read-only"))),
        "one line names the buffer directory and why: {log}"
    );
    assert_eq!(wait_exited(&pod.name, "spark-kubernetes-executor", WAIT), 0);
}

/// A TLS front for `target` (a plain-HTTP server on 127.0.0.1) with a self-signed certificate for
/// `localhost`: the certificate's PEM, and the port. It serves until the test process ends.
fn tls_front(target: &str, dir: &Path) -> (PathBuf, u16) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ])
        .args([
            "-days",
            "2",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost,IP:127.0.0.1",
        ])
        .args([
            "-addext",
            "basicConstraints=critical,CA:FALSE",
            "-keyout",
            "key.pem",
            "-out",
            "cert.pem",
        ])
        .output()
        .expect("openssl");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let certs = rustls_pki_types::CertificateDer::pem_file_iter(dir.join("cert.pem"))
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = rustls_pki_types::PrivateKeyDer::from_pem_file(dir.join("key.pem")).unwrap();
    let config =
        rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
    let std_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = std_listener.local_addr().unwrap().port();
    let target = target.trim_start_matches("http://").to_string();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            std_listener.set_nonblocking(true).unwrap();
            let listener = tokio::net::TcpListener::from_std(std_listener).unwrap();
            loop {
                let Ok((socket, _)) = listener.accept().await else {
                    continue;
                };
                let (acceptor, target) = (acceptor.clone(), target.clone());
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(socket).await else {
                        return;
                    };
                    let Ok(mut plain) = tokio::net::TcpStream::connect(&target).await else {
                        return;
                    };
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
                });
            }
        });
    });
    (dir.join("cert.pem"), port)
}

/// The sidecar image verifies TLS against its CA bundle (`/etc/ssl/certs/ca-certificates.crt`),
/// through a presigned POST and through the S3 API: with the test's certificate in that file
/// (bind-mounted over it) both deliver; with the image's own bundle the same run refuses the
/// certificate and does not exit 0.
#[test]
fn the_static_binary_verifies_tls_with_the_images_ca_bundle() {
    let server = S3Server::start(&["logs"]);
    let dir = tempfile::tempdir().unwrap();
    let (cert, port) = tls_front(&server.endpoint, dir.path());
    let endpoint = format!("https://localhost:{port}");
    let input = dir.path().join("in");
    std::fs::create_dir_all(&input).unwrap();
    let content = lines("tls", 0, 2000);
    std::fs::write(input.join("app.log"), &content).unwrap();
    let post = String::from_utf8(server.presign("logs", "tls/", "1h", "5GB"))
        .unwrap()
        .replace(&server.endpoint, &endpoint);
    std::fs::write(dir.path().join("presigned-post"), &post).unwrap();

    let ship = |prefix: &str, via_post: bool, trust_test_ca: bool| {
        let mut cmd = podman();
        cmd.args(["run", "--rm", "--read-only", "--network", "host"])
            .arg(format!("-v={}:/in:ro", input.display()))
            .arg(format!("-v={}:/secret:ro", dir.path().display()))
            .args(["--tmpfs", "/tmp"]);
        if trust_test_ca {
            cmd.arg(format!("-v={}:/etc/ssl/certs/ca-certificates.crt:ro", cert.display()));
        }
        for (k, v) in server.env() {
            cmd.args(["-e", &format!("{k}={v}")]);
        }
        cmd.args([
            &images().sidecar,
            "ship",
            "--once",
            "--to",
            &format!("s3://logs/{prefix}"),
        ]);
        if !trust_test_ca {
            // Refused certificates are retried like any failed request; the drain's deadline ends it.
            cmd.args(["--drain-deadline", "8s"]);
        }
        if via_post {
            cmd.args(["--presigned-post", "/secret/presigned-post"]);
        } else {
            cmd.args(["--endpoint", &endpoint, "--path-style"]);
        }
        cmd.arg("/in/app.log");
        cmd.output().unwrap()
    };
    for via_post in [true, false] {
        let prefix = if via_post { "tls/post" } else { "tls/api" };
        let out = ship(prefix, via_post, true);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "via_post={via_post}: {err}");
        let got = collect_s3(&server, prefix, "in/app.log", "text");
        let got = if got.is_empty() {
            collect_s3(&server, prefix, "app.log", "text")
        } else {
            got
        };
        assert_bytes_eq(&got, &content);

        let refused = format!("{prefix}-untrusted");
        let out = ship(&refused, via_post, false);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_ne!(
            out.status.code(),
            Some(0),
            "via_post={via_post}: an unknown CA is refused: {err}"
        );
        assert!(
            err.to_lowercase().contains("certificate") || err.contains("UnknownIssuer"),
            "via_post={via_post}: the error says why: {err}"
        );
        assert!(!server.keys("logs").iter().any(|k| k.starts_with(&refused)));
    }
}
