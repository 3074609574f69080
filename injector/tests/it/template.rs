//! `logship-inject template` on EMR's templates and on templates with several containers, init
//! containers and native sidecars: every input field kept in place, the sidecar never first,
//! patching twice gives the same output, conflicts are clear errors, and the sidecar's config is
//! one the daemon accepts.

use crate::common::*;
use serde_json::Value;

const IMAGE: &str = "registry.example/logship:1";

fn template(role: &str, file: &str, extra: &[&str]) -> String {
    let out = template_output(role, file, extra);
    assert!(
        out.status.success(),
        "logship-inject template {file} {extra:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// `logship-inject template` of the fixture `file`, its output and status as they are.
fn template_output(role: &str, file: &str, extra: &[&str]) -> std::process::Output {
    let f = fixture(file);
    let mut args = vec![
        "template",
        "--role",
        role,
        "--in",
        f.to_str().unwrap(),
        "--image",
        IMAGE,
        "--to",
        "s3://logs-bucket/spark",
    ];
    args.extend(extra);
    run(&args, b"")
}

/// Patching the output again (from stdin) gives it back byte for byte.
fn assert_idempotent(role: &str, out: &str, extra: &[&str]) {
    let mut args = vec![
        "template",
        "--role",
        role,
        "--image",
        IMAGE,
        "--to",
        "s3://logs-bucket/spark",
    ];
    args.extend(extra);
    assert_eq!(
        ok(&args, out.as_bytes()),
        out,
        "patching twice changed the output ({extra:?})"
    );
}

#[test]
fn emr_templates_keep_every_field_and_gain_the_sidecar_in_every_mode() {
    for (role, file) in [
        ("driver", "pod-template-driver.yaml"),
        ("executor", "pod-template-executor.yaml"),
    ] {
        let input = yaml(&std::fs::read_to_string(fixture(file)).unwrap());
        for mode in ["heartbeat", "native", "wrap"] {
            let extra = ["--termination", mode];
            let out = template(role, file, &extra);
            let pod = yaml(&out);
            let what = format!("{role}/{mode}");
            if mode == "wrap" {
                // The one replaced field: the Spark container's command (it had none).
                let mut without = pod.clone();
                without["spec"]["containers"][0]
                    .as_object_mut()
                    .unwrap()
                    .shift_remove("command");
                contains(&without, &input, "").unwrap_or_else(|e| panic!("{what}: {e}"));
            } else {
                contains(&pod, &input, "").unwrap_or_else(|e| panic!("{what}: {e}"));
            }
            assert_idempotent(role, &out, &extra);
            let spark = format!("spark-kubernetes-{role}");
            assert_eq!(
                names(&pod, "containers")[0],
                spark,
                "{what}: Spark's container stays first"
            );
            let sidecar = match mode {
                "native" => {
                    let s = container(&pod, "initContainers", "logship").expect("native sidecar");
                    assert_eq!(s["restartPolicy"], "Always", "{what}");
                    assert!(container(&pod, "containers", "logship").is_none(), "{what}");
                    s
                }
                _ => {
                    let n = names(&pod, "containers");
                    assert_eq!(n.last().unwrap(), "logship", "{what}: {n:?}");
                    container(&pod, "containers", "logship").unwrap()
                }
            };
            assert_eq!(sidecar["image"], IMAGE);
            assert_eq!(sidecar["securityContext"]["readOnlyRootFilesystem"], true);
            assert_eq!(sidecar["securityContext"]["runAsNonRoot"], true);
            assert_eq!(sidecar["securityContext"]["capabilities"]["drop"][0], "ALL");
            assert_eq!(sidecar["resources"]["limits"]["memory"], "64Mi");
            assert_eq!(
                env(sidecar, "SPARK_APPLICATION_ID").unwrap()["valueFrom"]["fieldRef"]["fieldPath"],
                "metadata.labels['spark-app-selector']"
            );
            assert_daemon_accepts(sidecar);
            // Spark's own container and the sidecar share the directories, through EMR's volumes.
            let mounts = |c: &Value| -> Vec<(String, String)> {
                c["volumeMounts"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|m| {
                        (
                            m["name"].as_str().unwrap().into(),
                            m["mountPath"].as_str().unwrap().into(),
                        )
                    })
                    .collect()
            };
            let spark_mounts = mounts(container(&pod, "containers", &spark).unwrap());
            let side_mounts = mounts(sidecar);
            let user = (
                "emr-container-application-log-dir".to_string(),
                "/var/log/spark/user".to_string(),
            );
            assert!(
                spark_mounts.contains(&user) && side_mounts.contains(&user),
                "{what}: {side_mounts:?}"
            );
            if role == "driver" {
                let ev = (
                    "emr-container-event-log-dir".to_string(),
                    "/var/log/spark/apps".to_string(),
                );
                assert!(side_mounts.contains(&ev), "{what}: {side_mounts:?}");
            }
            if mode != "native" {
                // The executor template already says where its heartbeat is (/tmp): the sidecar
                // follows it rather than adding a second one.
                let hb = if role == "executor" {
                    "/tmp/main-container-terminated"
                } else {
                    "/var/log/fluentd/main-container-terminated"
                };
                assert_eq!(env(sidecar, "SIDECAR_SIGNAL_FILE").unwrap()["value"], hb, "{what}");
            }
        }
    }
}

#[test]
fn emr_fluentd_sidecar_can_be_replaced() {
    let out = template(
        "driver",
        "pod-template-driver.yaml",
        &["--remove-container", "emr-container-fluentd"],
    );
    let pod = yaml(&out);
    assert_eq!(names(&pod, "containers"), ["spark-kubernetes-driver", "logship"]);
    // Its presigned-POST Secret volume is reused when asked to upload through it.
    let out = template(
        "driver",
        "pod-template-driver.yaml",
        &[
            "--remove-container",
            "emr-container-fluentd",
            "--presigned-post-secret",
            "emr-containers-s3-jk518skp01ys9ka8b0npx9nt0-0000000337omlr0m19o",
        ],
    );
    let pod = yaml(&out);
    let sidecar = container(&pod, "containers", "logship").unwrap();
    let m = sidecar["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["mountPath"] == "/var/emr-container/s3")
        .unwrap();
    assert_eq!(m["name"], "emr-container-s3");
    assert!(config_of(sidecar).contains("presigned_post = \"/var/emr-container/s3/presigned-post\""));
    assert_daemon_accepts(sidecar);
}

#[test]
fn several_containers_init_containers_and_native_sidecars_are_kept_in_order() {
    let input = yaml(&std::fs::read_to_string(fixture("multi-container.yaml")).unwrap());
    for mode in ["heartbeat", "native", "wrap"] {
        let extra = ["--termination", mode];
        let out = template("executor", "multi-container.yaml", &extra);
        let pod = yaml(&out);
        let mut check = pod.clone();
        if mode == "wrap" {
            check["spec"]["containers"][0]
                .as_object_mut()
                .unwrap()
                .shift_remove("command");
        }
        contains(&check, &input, "").unwrap_or_else(|e| panic!("{mode}: {e}"));
        assert_idempotent("executor", &out, &extra);
        let containers = names(&pod, "containers");
        let init = names(&pod, "initContainers");
        match mode {
            "heartbeat" => {
                assert_eq!(containers, ["spark", "metrics-exporter", "logship"]);
                assert_eq!(init, ["fetch-deps", "proxy"]);
            }
            "native" => {
                assert_eq!(containers, ["spark", "metrics-exporter"]);
                assert_eq!(init, ["fetch-deps", "proxy", "logship"]);
            }
            _ => {
                assert_eq!(containers, ["spark", "metrics-exporter", "logship"]);
                assert_eq!(init, ["fetch-deps", "proxy", "logship-install"]);
                let cmd = &pod["spec"]["containers"][0]["command"];
                assert_eq!(cmd[0], "/opt/logship/bin/logship");
                assert_eq!(cmd.as_array().unwrap().last().unwrap(), "/opt/entrypoint.sh");
            }
        }
        // The pod had no fsGroup: one is set so the sidecar can read Spark's 0660 event logs.
        assert_eq!(pod["spec"]["securityContext"]["fsGroup"], 1000);
    }
    // Spark's container can be named, and need not be first.
    let out = template(
        "executor",
        "multi-container.yaml",
        &["--spark-container", "metrics-exporter", "--termination", "heartbeat"],
    );
    let pod = yaml(&out);
    let exporter = container(&pod, "containers", "metrics-exporter").unwrap();
    assert!(env(exporter, "SIDECAR_SIGNAL_FILE").is_some());
    assert!(env(container(&pod, "containers", "spark").unwrap(), "SIDECAR_SIGNAL_FILE").is_none());
}

#[test]
fn an_empty_template_gets_spark_container_and_sidecar_and_json_on_request() {
    let out = ok(
        &[
            "template",
            "--role",
            "driver",
            "--image",
            IMAGE,
            "--to",
            "cloudwatch://spark/jobs",
            "--events-to",
            "s3://b/events",
            "--output",
            "json",
        ],
        b"",
    );
    let pod: Value = serde_json::from_str(&out).unwrap();
    // Nothing in an empty template writes EMR's heartbeat: `auto` makes a native sidecar.
    assert_eq!(names(&pod, "containers"), ["spark-kubernetes-driver"]);
    assert_eq!(names(&pod, "initContainers"), ["logship"]);
    let sidecar = container(&pod, "initContainers", "logship").unwrap();
    let config = config_of(sidecar);
    assert!(config.contains("type = \"cloudwatch\""), "{config}");
    assert!(
        config.contains("log_stream = \"jobs/${SPARK_APPLICATION_ID}/%{tag}\""),
        "{config}"
    );
    assert_daemon_accepts(sidecar);
    // The output is a valid typed Pod.
    let notes = logship_inject::document::validate(&pod, "out").unwrap();
    assert!(notes.is_empty(), "{notes:?}");
}

#[test]
fn conflicts_are_errors_that_say_what_is_in_the_way() {
    let args = ["template", "--role", "driver", "--image", IMAGE, "--to", "s3://b/p"];
    let cases: [(&str, &str); 5] = [
        (
            "spec:\n  volumes:\n  - name: logship-buffer\n    configMap: {name: x}\n",
            "volume logship-buffer already exists and is a configMap, not an emptyDir",
        ),
        (
            "spec:\n  containers:\n  - name: spark\n    volumeMounts:\n    - {name: cfg, mountPath: /var/log/spark/apps}\n  volumes:\n  - name: cfg\n    configMap: {name: x}\n",
            "/var/log/spark/apps in container spark is volume cfg, a configMap: read-only",
        ),
        (
            "spec:\n  containers:\n  - name: spark\n    volumeMounts:\n    - {name: logs, mountPath: /var/log/spark/user, readOnly: true}\n  volumes:\n  - name: logs\n    emptyDir: {}\n",
            "/var/log/spark/user is mounted read-only in container spark",
        ),
        (
            "spec:\n  containers:\n  - name: spark\n    volumeMounts:\n    - {name: logship-event-logs, mountPath: /data}\n  volumes:\n  - name: logship-event-logs\n    emptyDir: {}\n",
            "volume logship-event-logs is mounted at \"/data\" in container spark, not at /var/log/spark/apps",
        ),
        (
            "spec:\n  containers:\n  - name: spark\n    env:\n    - name: SIDECAR_SIGNAL_FILE\n      valueFrom: {configMapKeyRef: {name: a, key: b}}\n",
            "SIDECAR_SIGNAL_FILE on the Spark container is not a plain value",
        ),
    ];
    for (input, expected) in cases {
        let err = fails(&args, input.as_bytes());
        assert!(err.contains(expected), "expected {expected:?} in:\n{err}");
    }
    let err = fails(
        &[
            "template",
            "--role",
            "driver",
            "--image",
            IMAGE,
            "--to",
            "s3://b/p",
            "--spark-container",
            "nope",
        ],
        b"spec:\n  containers:\n  - name: spark\n",
    );
    assert!(
        err.contains("--spark-container nope: the pod has no such container"),
        "{err}"
    );
    let err = fails(&args, b"kind: Pod\nspec:\n  containers: {}\n");
    assert!(
        err.contains("stdin: spec.containers: invalid type: map, expected a sequence"),
        "{err}"
    );
    let err = fails(&args, b"spec: [unclosed\n");
    assert!(err.contains("stdin: not a YAML or JSON document"), "{err}");
    let err = fails(
        &["template", "--role", "driver", "--image", IMAGE, "--to", "gs://b"],
        b"",
    );
    assert!(err.contains("--to \"gs://b\": expected s3://"), "{err}");
}

#[test]
fn spark_conf_matches_the_templates() {
    let out = ok(&["spark-conf"], b"");
    assert_eq!(
        out,
        "--conf spark.kubernetes.driver.podTemplateFile=driver-pod-template.yaml\n\
         --conf spark.kubernetes.executor.podTemplateFile=executor-pod-template.yaml\n\
         --conf spark.kubernetes.driver.podTemplateContainerName=spark-kubernetes-driver\n\
         --conf spark.kubernetes.executor.podTemplateContainerName=spark-kubernetes-executor\n\
         --conf spark.eventLog.enabled=true\n\
         --conf spark.eventLog.dir=file:///var/log/spark/apps\n\
         --conf spark.eventLog.rolling.enabled=true\n\
         --conf spark.eventLog.rolling.maxFileSize=16m\n\
         --conf spark.eventLog.compress=true\n\
         --conf spark.eventLog.compression.codec=zstd\n"
    );
    let out = ok(&["spark-conf", "--event-logs", "single", "--properties"], b"");
    assert!(
        out.contains("spark.eventLog.rolling.enabled false\nspark.eventLog.compress false\n"),
        "{out}"
    );
}

#[test]
fn configmap_bundles_templates_configs_and_spark_defaults() {
    let d = fixture("multi-container.yaml");
    let out = ok(
        &[
            "configmap",
            "--name",
            "spark-logship",
            "--namespace",
            "spark-jobs",
            "--driver-in",
            d.to_str().unwrap(),
            "--image",
            IMAGE,
            "--to",
            "s3://b/p",
        ],
        b"",
    );
    let cm = yaml(&out);
    assert_eq!(cm["kind"], "ConfigMap");
    assert_eq!(cm["metadata"]["namespace"], "spark-jobs");
    let data = cm["data"].as_object().unwrap();
    let keys: Vec<&str> = data.keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        [
            "driver-pod-template.yaml",
            "executor-pod-template.yaml",
            "logship-driver.toml",
            "logship-executor.toml",
            "spark-defaults.conf"
        ]
    );
    // Neither template is EMR's: `auto` makes native sidecars, and each role's config is a
    // native sidecar's (drained by SIGTERM within the grace period).
    let driver = yaml(data["driver-pod-template.yaml"].as_str().unwrap());
    let sidecar = container(&driver, "initContainers", "logship").unwrap();
    for role in ["driver", "executor"] {
        let toml = data[&format!("logship-{role}.toml")].as_str().unwrap();
        assert!(
            toml.contains("drain_deadline = \"25s\"") && !toml.contains("heartbeat_file"),
            "{toml}"
        );
    }
    assert_eq!(
        env(sidecar, "LOGSHIP_CONFIG").unwrap()["value"],
        "/etc/logship/logship.toml"
    );
    let vol = driver["spec"]["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "logship-config")
        .unwrap();
    assert_eq!(vol["configMap"]["name"], "spark-logship");
    assert_eq!(vol["configMap"]["items"][0]["key"], "logship-driver.toml");
    let executor = yaml(data["executor-pod-template.yaml"].as_str().unwrap());
    assert_eq!(names(&executor, "containers"), ["spark-kubernetes-executor"]);
    assert_eq!(names(&executor, "initContainers"), ["logship"]);
    let conf = data["spark-defaults.conf"].as_str().unwrap();
    assert!(
        conf.contains("spark.kubernetes.driver.podTemplateFile /opt/spark/pod-templates/driver-pod-template.yaml\n")
    );
    assert!(
        conf.contains("spark.kubernetes.driver.podTemplateContainerName spark\n"),
        "{conf}"
    );
    assert!(conf.contains("spark.kubernetes.executor.podTemplateContainerName spark-kubernetes-executor\n"));
    // Each config is one the daemon runs.
    for key in ["logship-driver.toml", "logship-executor.toml"] {
        let text = data[key].as_str().unwrap();
        set_pod_env();
        logship::config::Config::parse(text, key).unwrap_or_else(|e| panic!("{key}: {e}"));
    }
    assert!(!data["logship-executor.toml"].as_str().unwrap().contains("spark_events"));
}

/// Issue 35, item 4: the default termination cannot lose logs on the pod it patches. EMR's
/// templates (whose Spark container touches the heartbeat) get `heartbeat`; a plain Spark
/// template gets a native sidecar (an init container with `restartPolicy: Always`, drained by
/// the kubelet's SIGTERM), never a sidecar waiting for a heartbeat no one writes; the choice
/// and its reason are on stderr; and the sidecar's config is one the daemon accepts.
#[test]
fn the_default_termination_is_heartbeat_for_emr_pods_and_native_elsewhere_and_says_so() {
    for (role, file, chosen) in [
        ("driver", "pod-template-driver.yaml", "heartbeat"),
        ("executor", "pod-template-executor.yaml", "heartbeat"),
        ("driver", "multi-container.yaml", "native"),
    ] {
        let out = template_output(role, file, &[]);
        assert!(out.status.success(), "{file}: {}", String::from_utf8_lossy(&out.stderr));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(&format!("--termination auto chose {chosen}")),
            "{file}: {stderr}"
        );
        let pod = yaml(&String::from_utf8(out.stdout).unwrap());
        let as_init = container(&pod, "initContainers", "logship");
        let as_regular = container(&pod, "containers", "logship");
        let sidecar = if chosen == "native" {
            assert!(as_regular.is_none(), "{file}: a native sidecar is an init container");
            let s = as_init.expect("the sidecar");
            assert_eq!(s["restartPolicy"], "Always", "{file}");
            assert!(
                config_of(s).contains("drain_deadline = \"25s\""),
                "{file}: {}",
                config_of(s)
            );
            assert!(!config_of(s).contains("heartbeat_file"), "{file}: {}", config_of(s));
            s
        } else {
            assert!(as_init.is_none(), "{file}");
            let s = as_regular.expect("the sidecar");
            assert!(config_of(s).contains("heartbeat_file"), "{file}: {}", config_of(s));
            s
        };
        assert_daemon_accepts(sidecar);
    }
}
