//! The pages of `docs/running/`, one per way of running Spark: every ` ```sh ` block runs as
//! written, in a directory holding the page's ` ```yaml file=NAME ` blocks, with `logship-inject`
//! on the `PATH`. What the commands write must be valid Kubernetes objects (typed model) that carry
//! the sidecar, or Spark settings with the sidecar's event-log and log-link settings.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::common::*;
use serde::Deserialize;
use serde_json::Value;

fn pages() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/running");
    let mut pages: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "md") && !p.ends_with("README.md"))
        .collect();
    pages.sort();
    pages
}

/// The page's `(file name, text)` inputs and its shell blocks.
fn blocks(page: &str) -> (Vec<(String, String)>, Vec<String>) {
    let (mut files, mut scripts) = (Vec::new(), Vec::new());
    let mut lines = page.lines();
    while let Some(line) = lines.next() {
        let kind = match line.strip_prefix("```") {
            Some(k) if !k.is_empty() => k.to_string(),
            _ => continue,
        };
        let body: Vec<&str> = lines.by_ref().take_while(|l| *l != "```").collect();
        let body = body.join("\n") + "\n";
        if let Some(name) = kind.strip_prefix("yaml file=") {
            files.push((name.to_string(), body));
        } else if kind == "sh" {
            scripts.push(body);
        }
    }
    (files, scripts)
}

/// Every document of a YAML file, checked against the typed model where it has one.
fn check_objects(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap();
    let docs: Vec<Value> = serde_yaml_ng::Deserializer::from_str(&text)
        .map(|d| Value::deserialize(d).unwrap())
        .collect();
    for d in &docs {
        let what = format!("{}: {}", path.display(), d["kind"]);
        let checked = match d["kind"].as_str() {
            Some("Pod") | None => serde_json::from_value::<k8s_openapi::api::core::v1::Pod>(d.clone()).err(),
            Some("ConfigMap") => serde_json::from_value::<k8s_openapi::api::core::v1::ConfigMap>(d.clone()).err(),
            Some(_) => None,
        };
        assert!(checked.is_none(), "{what}: {checked:?}");
    }
    docs
}

#[test]
fn every_page_s_example_runs_as_written_and_makes_pods_with_the_sidecar() {
    let pages = pages();
    let names: Vec<String> = pages
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        names,
        [
            "apache-operator.md",
            "emr-on-eks.md",
            "kubeflow-operator.md",
            "spark-submit.md"
        ]
    );
    let bin_dir = Path::new(bin()).parent().unwrap().to_path_buf();
    let path = format!("{}:{}", bin_dir.display(), std::env::var("PATH").unwrap_or_default());
    for page in pages {
        let (inputs, scripts) = blocks(&std::fs::read_to_string(&page).unwrap());
        assert!(!scripts.is_empty(), "{}: no example to run", page.display());
        let dir = tempfile::tempdir().unwrap();
        for (name, text) in &inputs {
            std::fs::write(dir.path().join(name), text).unwrap();
        }
        for script in &scripts {
            let out = Command::new("bash")
                .args(["-euo", "pipefail", "-c", script])
                .current_dir(dir.path())
                .env("PATH", &path)
                .stdin(Stdio::null())
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}: {script}{}",
                page.display(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let mut made = 0;
        for e in std::fs::read_dir(dir.path()).unwrap() {
            let p = e.unwrap().path();
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            if inputs.iter().any(|(n, _)| *n == name) {
                continue;
            }
            made += 1;
            let text = std::fs::read_to_string(&p).unwrap();
            if name.ends_with(".yaml") {
                let docs = check_objects(&p);
                assert!(!docs.is_empty(), "{name}");
                assert!(
                    text.contains("name: logship"),
                    "{}: {name} has no sidecar",
                    page.display()
                );
            } else {
                assert!(text.contains("spark.eventLog.dir"), "{name}: {text}");
                assert!(text.contains("spark.ui.custom.executor.log.url"), "{name}: {text}");
            }
        }
        assert!(made > 0, "{}: the example wrote nothing", page.display());
    }
}
