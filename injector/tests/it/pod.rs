//! The patched pod runs as Kubernetes would run it, minus Kubernetes: each container's
//! environment is resolved from its spec (downward API fields and `$(VAR)` references), the
//! init container installs logship, the Spark container runs its patched command (`logship wrap`
//! around a stand-in entrypoint that writes container output and an event log), and the sidecar
//! runs `logship run` with only its spec's environment. The sidecar must ship every byte and
//! exit 0 once the Spark process has ended: the injector and the daemon agree on the contract.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;
use serde_json::Value;

const POD: &str = "spark-pi-driver";
const APP: &str = "spark-5f1c0e3a9b7d4e2f8a6c1b0d9e8f7a6b";

/// The logship daemon, built next to this package's binary.
fn logship() -> PathBuf {
    let dir = Path::new(bin()).parent().unwrap();
    let path = dir.join("logship");
    if !path.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let st = Command::new(cargo)
            .args(["build", "-p", "logship", "--bin", "logship"])
            .status()
            .unwrap();
        assert!(st.success());
    }
    path
}

/// A container's environment as the kubelet would give it.
fn environment(c: &Value, labels: &BTreeMap<&str, &str>) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = Vec::new();
    for e in c["env"].as_array().into_iter().flatten() {
        let name = e["name"].as_str().unwrap().to_string();
        let value = if let Some(v) = e["value"].as_str() {
            expand(v, &env)
        } else {
            let field = e["valueFrom"]["fieldRef"]["fieldPath"].as_str().expect("a fieldRef");
            match field {
                "metadata.name" => POD.to_string(),
                f => {
                    let label = f
                        .strip_prefix("metadata.labels['")
                        .and_then(|l| l.strip_suffix("']"))
                        .unwrap_or_else(|| panic!("unexpected fieldRef {f}"));
                    labels.get(label).copied().unwrap_or_default().to_string()
                }
            }
        };
        env.push((name, value));
    }
    env
}

/// `$(VAR)` references to variables defined earlier, as Kubernetes expands them.
fn expand(s: &str, env: &[(String, String)]) -> String {
    let mut out = s.to_string();
    for (k, v) in env {
        out = out.replace(&format!("$({k})"), v);
    }
    out
}

fn wait(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Every file under `dir` whose path contains `part`, concatenated in name order.
fn collect(dir: &Path, part: &str) -> Vec<u8> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.to_string_lossy().contains(part) {
                files.push(p);
            }
        }
    }
    files.sort();
    files.iter().flat_map(|f| std::fs::read(f).unwrap()).collect()
}

#[test]
fn the_wrapped_spark_container_and_the_sidecar_ship_everything_and_end_together() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path();
    let p = |s: &str| root.join(s).display().to_string();
    let out = ok(
        &[
            "template",
            "--role",
            "driver",
            "--image",
            "logship:test",
            "--termination",
            "wrap",
            "--event-logs",
            "single",
            "--to",
            &format!("file://{}", p("shipped")),
            "--event-log-dir",
            &p("apps"),
            "--container-log-dir",
            &p("user"),
            "--heartbeat-file",
            &p("communicate/main-container-terminated"),
            "--buffer-dir",
            &p("buffer"),
            "--entrypoint",
            "/bin/sh",
        ],
        b"",
    );
    let pod = yaml(&out);
    let labels: BTreeMap<&str, &str> = [("spark-role", "driver"), ("spark-app-selector", APP)].into();
    // The kubelet creates the emptyDirs.
    for d in ["apps", "user", "communicate", "buffer"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }

    // Init container: logship installs itself where the Spark container runs it from.
    let installed = root.join("bin/logship");
    let install = container(&pod, "initContainers", "logship-install").unwrap();
    assert_eq!(install["args"][0], "install");
    let st = Command::new(logship()).arg("install").arg(&installed).status().unwrap();
    assert!(st.success());

    // The sidecar, with only its spec's environment.
    let sidecar_spec = container(&pod, "containers", "logship").unwrap();
    let mut sidecar = Command::new(logship())
        .args(
            sidecar_spec["args"]
                .as_array()
                .unwrap()
                .iter()
                .map(|a| a.as_str().unwrap()),
        )
        .env_clear()
        .envs(environment(sidecar_spec, &labels))
        .stderr(std::fs::File::create(root.join("sidecar.log")).unwrap())
        .spawn()
        .unwrap();

    // Spark's container: its patched command, then the arguments Spark would set.
    let spark = container(&pod, "containers", "spark-kubernetes-driver").unwrap();
    let env = environment(spark, &labels);
    let mut command: Vec<String> = spark["command"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| expand(v.as_str().unwrap(), &env))
        .collect();
    assert_eq!(command[0], "/opt/logship/bin/logship");
    command[0] = installed.display().to_string();
    let events = "{\"Event\":\"SparkListenerLogStart\",\"Spark Version\":\"4.3.0\"}\n{\"Event\":\"SparkListenerApplicationEnd\",\"Timestamp\":2}\n";
    let script = format!(
        "echo driver starting; echo 'WARN something' >&2; printf '%s' '{events}' > {apps}/{APP}.inprogress; \
         sleep 3; mv {apps}/{APP}.inprogress {apps}/{APP}; echo driver done",
        apps = p("apps")
    );
    let spark_run = Command::new(&command[0])
        .args(&command[1..])
        .args(["-c", &script])
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .envs(env)
        .stdout(Stdio::piped())
        .output()
        .unwrap();
    assert_eq!(
        spark_run.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&spark_run.stderr)
    );
    assert_eq!(
        spark_run.stdout, b"driver starting\ndriver done\n",
        "the container's stdout still gets it"
    );

    let mut code = None;
    wait("the sidecar to exit", || {
        code = sidecar.try_wait().unwrap();
        code.is_some()
    });
    let log = std::fs::read_to_string(root.join("sidecar.log")).unwrap();
    assert_eq!(code.unwrap().code(), Some(0), "{log}");

    let shipped = root.join("shipped");
    let stdout_part = format!("containers/{APP}/{POD}/stdout/");
    let stderr_part = format!("containers/{APP}/{POD}/stderr/");
    assert_eq!(
        String::from_utf8(collect(&shipped, &stdout_part)).unwrap(),
        "driver starting\ndriver done\n",
        "{log}"
    );
    assert_eq!(
        String::from_utf8(collect(&shipped, &stderr_part)).unwrap(),
        "WARN something\n",
        "{log}"
    );
    let ev = format!("event-logs/eventlog_v2_{APP}/events_1_{APP}");
    assert_eq!(String::from_utf8(collect(&shipped, &ev)).unwrap(), events, "{log}");
    assert!(
        shipped
            .join(format!("event-logs/eventlog_v2_{APP}/appstatus_{APP}"))
            .exists(),
        "the completed application's marker: {log}"
    );
}
