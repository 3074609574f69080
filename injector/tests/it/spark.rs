//! Real Spark (pyspark 4.3 from PyPI) loads the patched templates: spark-submit runs against a
//! small stand-in Kubernetes API server (`tests/spark/kube_api.py`) that records the pods Spark
//! asks to create. The driver pod (cluster mode) and an executor pod (client mode: the driver
//! runs here and asks for executors) must hold the sidecar exactly as patched, with Spark's
//! container the one the template chose (Spark adds its arguments and variables to it).

#[path = "../../../tests/it/common/python.rs"]
#[allow(dead_code)]
mod python;

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;
use serde_json::Value;

const IMAGE: &str = "registry.example/logship:1";
const WAIT: Duration = Duration::from_secs(240);

/// One Spark at a time (a 2-core machine), across test processes and across the workspace's
/// test binaries: the same file lock (`flock`) the root package's Spark tests take, in the
/// workspace's shared temporary directory.
fn exclusive() -> std::fs::File {
    let path = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("spark.lock");
    let f = std::fs::File::create(path).unwrap();
    f.lock().unwrap();
    f
}

fn spark_submit() -> (PathBuf, PathBuf) {
    let py = python::python_path(&["pyspark"], &["pyspark==4.3.0"]);
    let out = Command::new("python3")
        .args(["-c", "import os, pyspark; print(os.path.dirname(pyspark.__file__))"])
        .env("PYTHONPATH", &py)
        .output()
        .unwrap();
    let home = PathBuf::from(String::from_utf8(out.stdout).unwrap().trim());
    (home.join("bin/spark-submit"), py)
}

/// The stand-in API server; killed when dropped.
struct KubeApi {
    child: Child,
    dir: PathBuf,
    port: u16,
}

impl KubeApi {
    fn start(dir: &Path) -> KubeApi {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/spark/kube_api.py");
        let child = Command::new("python3").arg(script).arg(dir).spawn().unwrap();
        let port_file = dir.join("port");
        wait("the API server's port", || port_file.exists());
        let port = std::fs::read_to_string(&port_file).unwrap().trim().parse().unwrap();
        KubeApi {
            child,
            dir: dir.to_path_buf(),
            port,
        }
    }

    /// The pods Spark asked to create, in order.
    fn pods(&self) -> Vec<Value> {
        let Ok(text) = std::fs::read_to_string(self.dir.join("requests.jsonl")) else {
            return Vec::new();
        };
        text.lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|e| e["method"] == "POST" && e["body"]["kind"] == "Pod")
            .map(|e| e["body"].clone())
            .collect()
    }
}

impl Drop for KubeApi {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wait(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn patch(role: &str, input: &Path, out: &Path, extra: &[&str]) -> Value {
    let mut args = vec![
        "template",
        "--role",
        role,
        "--in",
        input.to_str().unwrap(),
        "--image",
        IMAGE,
        "--to",
        "s3://logs-bucket/spark",
    ];
    args.extend(extra);
    let text = ok(&args, b"");
    std::fs::write(out, &text).unwrap();
    yaml(&text)
}

fn submit(conf: &[String], deploy_mode: &str, app: &Path, log: &Path, api: &KubeApi) -> Child {
    let (submit, py) = spark_submit();
    let mut cmd = Command::new(submit);
    cmd.args([
        "--master",
        &format!("k8s://http://127.0.0.1:{}", api.port),
        "--deploy-mode",
        deploy_mode,
    ]);
    cmd.args([
        "--name",
        "logship-inject-test",
        "--conf",
        "spark.kubernetes.container.image=apache/spark:4.0.1",
    ]);
    cmd.args([
        "--conf",
        "spark.kubernetes.namespace=spark-jobs",
        "--conf",
        "spark.driver.host=127.0.0.1",
    ]);
    for c in conf {
        cmd.args(["--conf", c]);
    }
    cmd.arg(app)
        .env("PYTHONPATH", py)
        .env("SPARK_LOCAL_IP", "127.0.0.1")
        // No kubeconfig of the machine's may leak in.
        .env("KUBECONFIG", "/nonexistent")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(log).unwrap())
        .stderr(std::fs::File::create(log.with_extension("err")).unwrap())
        .process_group(0);
    cmd.spawn().unwrap()
}

/// The `--conf` pairs `logship-inject spark-conf` prints for these templates.
fn spark_conf(driver: &Path, executor: &Path, driver_container: &str, executor_container: &str) -> Vec<String> {
    let out = ok(
        &[
            "spark-conf",
            "--driver-template",
            driver.to_str().unwrap(),
            "--executor-template",
            executor.to_str().unwrap(),
            "--driver-container",
            driver_container,
            "--executor-container",
            executor_container,
        ],
        b"",
    );
    out.lines()
        .map(|l| l.strip_prefix("--conf ").unwrap().to_string())
        .collect()
}

/// What Spark created holds the patched template: the sidecar exactly, the other containers
/// exactly, every volume, and the Spark container with what the patch added to it.
fn assert_spark_kept(created: &Value, patched: &Value, spark: &str, role: &str, sidecar_list: &str) {
    let sidecar = container(patched, sidecar_list, "logship").unwrap();
    assert_eq!(
        container(created, sidecar_list, "logship"),
        Some(sidecar),
        "the sidecar changed on its way through Spark"
    );
    for list in ["containers", "initContainers"] {
        for name in names(patched, list) {
            if name == spark {
                continue;
            }
            assert_eq!(
                container(created, list, &name),
                container(patched, list, &name),
                "{list} {name}"
            );
        }
    }
    for v in patched["spec"]["volumes"].as_array().unwrap() {
        assert!(
            created["spec"]["volumes"].as_array().unwrap().contains(v),
            "volume {} lost",
            v["name"]
        );
    }
    let theirs = container(created, "containers", spark).expect("Spark's container");
    let ours = container(patched, "containers", spark).unwrap();
    assert_eq!(theirs["args"][0], role, "Spark took {spark} as its own");
    assert!(
        env(theirs, "SPARK_APPLICATION_ID").is_some(),
        "Spark's variables are on {spark}"
    );
    assert!(env(sidecar, "SPARK_APPLICATION_ID").unwrap().get("value").is_none());
    // Spark's client writes quantities written as numbers (`divisor: 1`) as strings.
    let theirs = &quantities_as_strings(theirs.clone());
    for e in quantities_as_strings(ours["env"].clone()).as_array().unwrap() {
        assert!(theirs["env"].as_array().unwrap().contains(e), "{spark} lost {e}");
    }
    for m in ours["volumeMounts"].as_array().unwrap() {
        assert!(
            theirs["volumeMounts"].as_array().unwrap().contains(m),
            "{spark} lost {m}"
        );
    }
    assert_eq!(theirs["command"], ours["command"]);
    // The labels the sidecar's variables read are the ones Spark sets.
    let labels = &created["metadata"]["labels"];
    assert_eq!(labels["spark-role"], role);
    assert!(labels["spark-app-selector"].as_str().unwrap().starts_with("spark-"));
}

#[test]
fn spark_submit_creates_the_driver_pod_with_the_sidecar_as_patched() {
    let _one = exclusive();
    let dir = tempfile::tempdir().unwrap();
    // EMR's driver template, its fluentd replaced (heartbeat mode); and a template with several
    // containers and a native sidecar already, ours native too.
    let cases = [
        (
            "pod-template-driver.yaml",
            vec!["--remove-container", "emr-container-fluentd"],
            "spark-kubernetes-driver",
            "containers",
        ),
        (
            "multi-container.yaml",
            vec!["--termination", "native"],
            "spark",
            "initContainers",
        ),
    ];
    for (n, (file, extra, spark, list)) in cases.into_iter().enumerate() {
        let api = KubeApi::start(&dir.path().join(format!("api-{n}")));
        let driver = dir.path().join(format!("driver-{n}.yaml"));
        let executor = dir.path().join(format!("executor-{n}.yaml"));
        let patched = patch("driver", &fixture(file), &driver, &extra);
        patch("executor", &fixture("pod-template-executor.yaml"), &executor, &[]);
        let mut conf = spark_conf(&driver, &executor, spark, "spark-kubernetes-executor");
        conf.push("spark.kubernetes.submission.waitAppCompletion=false".into());
        let log = dir.path().join(format!("submit-{n}.log"));
        let mut child = submit(
            &conf,
            "cluster",
            Path::new("local:///opt/spark/examples/src/main/python/pi.py"),
            &log,
            &api,
        );
        let st = child.wait().unwrap();
        let stderr = std::fs::read_to_string(log.with_extension("err")).unwrap();
        assert!(st.success(), "spark-submit failed: {stderr}");
        let pods = api.pods();
        assert_eq!(pods.len(), 1, "{stderr}");
        assert_spark_kept(&pods[0], &patched, spark, "driver", list);
        // Spark's own container is last in what it creates; ours is never where Spark looks
        // first, and Spark did not take it for its own.
        assert!(
            !stderr.contains("podTemplateContainerName"),
            "Spark could not find {spark}: {stderr}"
        );
    }
}

/// A process group this test started, killed when dropped.
struct Group(i32);

impl Drop for Group {
    fn drop(&mut self) {
        // SAFETY: a process group this test started.
        unsafe { killpg(self.0, 9) };
    }
}

/// A driver in client mode (here, a Python app that sleeps) with `conf`, its event logs in a local
/// directory, asking for one executor; waits until the API server has an executor pod.
fn client_driver(dir: &Path, api: &KubeApi, mut conf: Vec<String>) -> (Child, Group, Vec<Value>) {
    let events = dir.join("events");
    std::fs::create_dir_all(&events).unwrap();
    conf.retain(|c| !c.starts_with("spark.eventLog.dir="));
    conf.push(format!("spark.eventLog.dir=file://{}", events.display()));
    conf.push("spark.executor.instances=1".into());
    let app = dir.join("app.py");
    std::fs::write(
        &app,
        "import time\nfrom pyspark.sql import SparkSession\nspark = SparkSession.builder.getOrCreate()\ntime.sleep(600)\n",
    )
    .unwrap();
    let log = dir.join("submit.log");
    let mut child = submit(&conf, "client", &app, &log, api);
    let group = Group(child.id() as i32);
    wait("an executor pod", || {
        !api.pods().is_empty() || child.try_wait().unwrap().is_some()
    });
    let pods = api.pods();
    let stderr = std::fs::read_to_string(log.with_extension("err")).unwrap();
    assert!(!pods.is_empty(), "spark exited without asking for executors: {stderr}");
    (child, group, pods)
}

#[test]
fn spark_asks_for_executor_pods_with_the_wrapped_entrypoint_and_the_sidecar() {
    let _one = exclusive();
    let dir = tempfile::tempdir().unwrap();
    let api = KubeApi::start(&dir.path().join("api"));
    let driver = dir.path().join("driver.yaml");
    let executor = dir.path().join("executor.yaml");
    patch("driver", &fixture("pod-template-driver.yaml"), &driver, &[]);
    let patched = patch(
        "executor",
        &fixture("pod-template-executor.yaml"),
        &executor,
        &["--termination", "wrap"],
    );
    let conf = spark_conf(
        &driver,
        &executor,
        "spark-kubernetes-driver",
        "spark-kubernetes-executor",
    );
    // The driver runs here (client mode).
    let (_child, _group, pods) = client_driver(dir.path(), &api, conf);
    let created = &pods[0];
    assert_spark_kept(created, &patched, "spark-kubernetes-executor", "executor", "containers");
    assert_eq!(names(created, "initContainers"), ["logship-install"]);
    let spark = container(created, "containers", "spark-kubernetes-executor").unwrap();
    let cmd: Vec<&str> = spark["command"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(cmd[..2], ["/opt/logship/bin/logship", "wrap"]);
    assert_eq!(
        cmd.last(),
        Some(&"/opt/entrypoint.sh"),
        "Spark's args follow the entrypoint"
    );
}

/// The executors' log links, end to end through real Spark. The driver runs here (client mode)
/// with the settings `spark-conf --to` prints, and asks the API server for an executor pod from
/// the patched template. That pod is then run as the kubelet would run its Spark container, as
/// a local process: Spark's executor backend with the pod's own `SPARK_EXECUTOR_ATTRIBUTE_*`
/// variables, their downward-API values resolved from the pod Spark created. The driver renders
/// the executor's stdout/stderr links (its REST API shows what the UI shows and what goes into
/// the event log); each must open the S3 prefix that the pod's sidecar writes that file to.
#[test]
fn an_executors_log_links_open_where_its_sidecar_ships_its_logs() {
    let _one = exclusive();
    let dir = tempfile::tempdir().unwrap();
    let api = KubeApi::start(&dir.path().join("api"));
    let driver = dir.path().join("driver.yaml");
    let executor = dir.path().join("executor.yaml");
    patch("driver", &fixture("pod-template-driver.yaml"), &driver, &[]);
    let patched = patch("executor", &fixture("pod-template-executor.yaml"), &executor, &[]);
    let out = ok(
        &[
            "spark-conf",
            "--driver-template",
            driver.to_str().unwrap(),
            "--executor-template",
            executor.to_str().unwrap(),
            "--to",
            "s3://logs-bucket/spark",
        ],
        b"",
    );
    let mut conf: Vec<String> = out
        .lines()
        .map(|l| l.strip_prefix("--conf ").unwrap().to_string())
        .collect();
    let pattern = conf
        .iter()
        .find_map(|c| c.strip_prefix("spark.ui.custom.executor.log.url="))
        .expect("spark-conf --to sets the log links")
        .to_string();
    let ui_port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    conf.push(format!("spark.ui.port={ui_port}"));
    let (_child, _group, pods) = client_driver(dir.path(), &api, conf);
    let created = &pods[0];
    assert_spark_kept(created, &patched, "spark-kubernetes-executor", "executor", "containers");

    // The Spark container's variables as the kubelet resolves them.
    let pod_name = created["metadata"]["name"].as_str().unwrap().to_string();
    let app_id = created["metadata"]["labels"]["spark-app-selector"]
        .as_str()
        .unwrap()
        .to_string();
    let spark = container(created, "containers", "spark-kubernetes-executor").unwrap();
    let mut vars = std::collections::BTreeMap::new();
    for e in spark["env"].as_array().unwrap() {
        let name = e["name"].as_str().unwrap().to_string();
        let value = match (e["value"].as_str(), e["valueFrom"]["fieldRef"]["fieldPath"].as_str()) {
            (Some(v), _) => v.to_string(),
            (None, Some("metadata.name")) => pod_name.clone(),
            (None, Some("metadata.labels['spark-app-selector']")) => app_id.clone(),
            (None, Some("status.podIP")) => "127.0.0.1".into(),
            _ => continue,
        };
        vars.insert(name, value);
    }
    let attributes: Vec<(&String, &String)> = vars
        .iter()
        .filter(|(k, _)| k.starts_with("SPARK_EXECUTOR_ATTRIBUTE_"))
        .collect();
    for a in ["APP_ID", "LOGSHIP_POD_NAME", "LOG_FILES"] {
        assert!(
            vars.contains_key(&format!("SPARK_EXECUTOR_ATTRIBUTE_{a}")),
            "the executor carries {a}: {vars:?}"
        );
    }

    // Its Spark container, run here: what the image's entrypoint runs for `executor`.
    let (submit_bin, py) = spark_submit();
    let spark_class = submit_bin.with_file_name("spark-class");
    let mut backend = Command::new(spark_class);
    backend
        .arg("org.apache.spark.scheduler.cluster.k8s.KubernetesExecutorBackend")
        .args(["--driver-url", &vars["SPARK_DRIVER_URL"]])
        .args(["--executor-id", &vars["SPARK_EXECUTOR_ID"]])
        .args(["--cores", "1", "--app-id", &vars["SPARK_APPLICATION_ID"]])
        .args(["--hostname", "127.0.0.1", "--resourceProfileId", "0"])
        .args(["--podName", &pod_name])
        .envs(attributes.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .env("PYTHONPATH", py)
        .env("SPARK_LOCAL_IP", "127.0.0.1")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(dir.path().join("executor.log")).unwrap())
        .stderr(std::fs::File::create(dir.path().join("executor.err")).unwrap())
        .process_group(0);
    let mut backend = backend.spawn().unwrap();
    let executor_group = Group(backend.id() as i32);

    // The links the driver rendered for it.
    let base = format!("http://127.0.0.1:{ui_port}/api/v1/applications");
    let client = reqwest::blocking::Client::new();
    let mut links = None;
    wait("the executor's links in the driver's REST API", || {
        let Ok(r) = client.get(format!("{base}/{app_id}/executors")).send() else {
            return false;
        };
        let Ok(list) = r.text().map(|t| serde_json::from_str::<Value>(&t)) else {
            return false;
        };
        let Ok(list) = list else { return false };
        links = list
            .as_array()
            .and_then(|l| l.iter().find(|e| e["id"] != "driver"))
            .map(|e| e["executorLogs"].clone());
        links.is_some()
    });
    let links = links.unwrap();
    let sidecar = container(created, "containers", "logship").unwrap();
    let config = config_of(sidecar);
    let path = config
        .lines()
        .filter_map(|l| l.strip_prefix("path = \""))
        .find(|p| p.contains("containers"))
        .unwrap()
        .trim_end_matches('"')
        .replace("${SPARK_APPLICATION_ID}", &app_id);
    assert!(config.contains("bucket = \"logs-bucket\""), "{config}");
    for file in ["stdout", "stderr"] {
        // The sidecar's key for /var/log/spark/user/<pod>/<file>: <path>/<pod>/<file>/<slice>_<n>.gz
        let prefix = format!("{path}/{pod_name}/{file}/");
        assert_eq!(
            links[file].as_str().unwrap_or_else(|| panic!("{file}: {links}")),
            format!("https://s3.console.aws.amazon.com/s3/buckets/logs-bucket?prefix={prefix}"),
            "pattern {pattern}"
        );
    }
    drop(executor_group);
    let _ = backend.wait();
}

fn quantities_as_strings(v: Value) -> Value {
    match v {
        Value::Number(n) => Value::String(n.to_string()),
        Value::Array(a) => Value::Array(a.into_iter().map(quantities_as_strings).collect()),
        Value::Object(m) => Value::Object(m.into_iter().map(|(k, v)| (k, quantities_as_strings(v))).collect()),
        other => other,
    }
}

unsafe extern "C" {
    fn killpg(pgrp: i32, sig: i32) -> i32;
}
