//! Helpers for the injector's tests: the binary, fixtures, and structural comparisons.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::Value;

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_logship-inject")
}

/// EMR's fixtures (vendored in the root package) and the injector's own.
pub fn fixture(name: &str) -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let emr = root.join("../tests/fixtures/emr").join(name);
    if emr.exists() {
        emr
    } else {
        root.join("tests/fixtures").join(name)
    }
}

/// Runs `logship-inject` with `args`, feeding `stdin`.
pub fn run(args: &[&str], stdin: &[u8]) -> Output {
    use std::io::Write;
    let mut child = Command::new(bin())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    child.wait_with_output().unwrap()
}

/// Runs it and expects success; returns stdout.
pub fn ok(args: &[&str], stdin: &[u8]) -> String {
    let out = run(args, stdin);
    assert!(
        out.status.success(),
        "logship-inject {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Runs it and expects failure; returns stderr.
pub fn fails(args: &[&str], stdin: &[u8]) -> String {
    let out = run(args, stdin);
    assert!(!out.status.success(), "logship-inject {args:?} should fail");
    String::from_utf8(out.stderr).unwrap()
}

pub fn yaml(text: &str) -> Value {
    serde_yaml_ng::from_str(text).unwrap()
}

/// Every field of `input` is in `output` with the same value, in the same place: objects may
/// gain keys, lists may gain items after or between (never lose or reorder what was there).
pub fn contains(output: &Value, input: &Value, path: &str) -> Result<(), String> {
    match (input, output) {
        (Value::Object(i), Value::Object(o)) => {
            let mut last = 0;
            for (k, v) in i {
                let Some(pos) = o.keys().position(|key| key == k) else {
                    return Err(format!("{path}.{k}: missing"));
                };
                if pos < last {
                    return Err(format!("{path}.{k}: moved before a key that came before it"));
                }
                last = pos;
                contains(&o[k], v, &format!("{path}.{k}"))?;
            }
            Ok(())
        }
        (Value::Array(i), Value::Array(o)) => {
            // Match input items in order to output items (output may have extra ones).
            let mut j = 0;
            for (n, item) in i.iter().enumerate() {
                loop {
                    if j >= o.len() {
                        return Err(format!("{path}[{n}]: missing or out of order: {item}"));
                    }
                    j += 1;
                    if contains(&o[j - 1], item, &format!("{path}[{n}]")).is_ok() {
                        break;
                    }
                }
            }
            Ok(())
        }
        (i, o) if i == o => Ok(()),
        (i, o) => Err(format!("{path}: {i} became {o}")),
    }
}

pub fn container<'a>(pod: &'a Value, list: &str, name: &str) -> Option<&'a Value> {
    pod["spec"][list].as_array()?.iter().find(|c| c["name"] == name)
}

pub fn names(pod: &Value, list: &str) -> Vec<String> {
    pod["spec"][list]
        .as_array()
        .map(|a| a.iter().map(|c| c["name"].as_str().unwrap_or("").to_string()).collect())
        .unwrap_or_default()
}

pub fn env<'a>(c: &'a Value, name: &str) -> Option<&'a Value> {
    c["env"].as_array()?.iter().find(|e| e["name"] == name)
}

/// The sidecar's config text (LOGSHIP_CONFIG_TOML).
pub fn config_of(c: &Value) -> String {
    env(c, "LOGSHIP_CONFIG_TOML").unwrap()["value"]
        .as_str()
        .unwrap()
        .to_string()
}

/// The variables a pod spec gives the sidecar (the same values in every test, so setting them
/// from parallel tests is harmless).
pub fn set_pod_env() {
    // SAFETY: every test sets the same values, and nothing else in this process reads them.
    unsafe {
        std::env::set_var("SPARK_APPLICATION_ID", "spark-0123");
        std::env::set_var("K8S_SPARK_EVENT_LOG_DIR", "/var/log/spark/apps");
        std::env::set_var("SIDECAR_SIGNAL_FILE", "/var/log/fluentd/main-container-terminated");
        std::env::set_var("LOGSHIP_SIGNAL_FILE", "/var/log/fluentd/logship-main-ended");
    }
}

/// The daemon accepts the sidecar's config, with the variables the pod spec provides.
pub fn assert_daemon_accepts(sidecar: &Value) {
    let text = config_of(sidecar);
    set_pod_env();
    let c = logship::config::Config::parse(&text, "LOGSHIP_CONFIG_TOML")
        .unwrap_or_else(|e| panic!("the daemon refuses the sidecar config: {e}\n{text}"));
    assert!(!c.outputs.is_empty());
}
