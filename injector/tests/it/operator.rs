//! `logship-inject template` on Spark Operator resources: the Kubeflow operator's
//! `SparkApplication` and `ScheduledSparkApplication` (Python and Scala, with volumes, dynamic
//! allocation, a driver pod template, executor sidecars and init containers), and the Apache
//! operator's `SparkApplication` (pod templates), in multi-document YAML with a document that
//! passes through. Every input field is kept in place, both roles get the sidecar, the Spark
//! container mounts what the sidecar reads, patching twice changes nothing, the containers and
//! volumes are valid Kubernetes objects, and the sidecar's config is one the daemon accepts.

use crate::common::*;
use serde_json::Value;

const IMAGE: &str = "registry.example/logship:1";

fn patch(file: &str, extra: &[&str]) -> String {
    let f = fixture(&format!("operator/{file}"));
    let mut args = vec![
        "template",
        "--in",
        f.to_str().unwrap(),
        "--image",
        IMAGE,
        "--to",
        "s3://logs-bucket/spark",
    ];
    args.extend(extra);
    ok(&args, b"")
}

fn documents(text: &str) -> Vec<Value> {
    use serde::Deserialize;
    serde_yaml_ng::Deserializer::from_str(text)
        .map(|d| Value::deserialize(d).unwrap())
        .filter(|v| !v.is_null())
        .collect()
}

/// Patching the output again gives it back byte for byte.
fn assert_idempotent(out: &str, extra: &[&str]) {
    let mut args = vec!["template", "--image", IMAGE, "--to", "s3://logs-bucket/spark"];
    args.extend(extra);
    assert_eq!(
        ok(&args, out.as_bytes()),
        out,
        "patching twice changed the output ({extra:?})"
    );
}

/// `v` deserialises as the Kubernetes type `T` (the fields the CRDs take from the core API).
fn valid<T: serde::de::DeserializeOwned>(v: &Value, what: &str) {
    if let Err(e) = serde_path_to_error::deserialize::<_, T>(v) {
        panic!("{what}: {} at {}: {v}", e.inner(), e.path());
    }
}

/// A Kubeflow role (`spec.driver` / `spec.executor`) as a pod: its containers and init containers,
/// with the volumes of the application.
fn check_kubeflow_role(spec: &Value, role: &str, native: bool) {
    use k8s_openapi::api::core::v1::{Container, EnvVar, PodSecurityContext, Volume, VolumeMount};
    let r = &spec[role];
    let sidecar = if native {
        r["initContainers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == "logship")
    } else {
        r["sidecars"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == "logship")
    }
    .unwrap_or_else(|| panic!("{role}: no logship sidecar: {r}"));
    valid::<Container>(sidecar, role);
    assert_eq!(sidecar["restartPolicy"] == "Always", native, "{role}: {sidecar}");
    for list in ["sidecars", "initContainers"] {
        for c in r[list].as_array().into_iter().flatten() {
            valid::<Container>(c, &format!("{role}.{list}"));
        }
    }
    for m in r["volumeMounts"].as_array().unwrap() {
        valid::<VolumeMount>(m, &format!("{role}.volumeMounts"));
    }
    for e in r["env"].as_array().unwrap() {
        valid::<EnvVar>(e, &format!("{role}.env"));
    }
    valid::<PodSecurityContext>(&r["podSecurityContext"], role);
    let volumes: Vec<&Value> = spec["volumes"].as_array().unwrap().iter().collect();
    for v in &volumes {
        valid::<Volume>(v, "spec.volumes");
    }
    // What the sidecar reads, the Spark container writes: every mount of the sidecar but its own
    // buffer (and the Secret) is a mount of the Spark container on the same volume.
    for m in sidecar["volumeMounts"].as_array().unwrap() {
        let name = m["name"].as_str().unwrap();
        assert!(
            volumes.iter().any(|v| v["name"] == name),
            "{role}: volume {name} is not in spec.volumes"
        );
        if name != "logship-buffer" {
            assert!(
                r["volumeMounts"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|s| s["name"] == name && s["mountPath"] == m["mountPath"]),
                "{role}: the Spark container does not mount {name} at {}",
                m["mountPath"]
            );
        }
    }
    assert!(
        r["env"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["name"] == "K8S_SPARK_LOG_URL_STDOUT"),
        "{role}: the Spark container writes its stdout where the sidecar reads"
    );
    assert_eq!(r["podSecurityContext"]["fsGroup"], 1000, "{role}");
    assert_daemon_accepts(sidecar);
}

#[test]
fn a_kubeflow_application_gets_the_sidecar_in_both_roles_and_keeps_every_field() {
    let input = documents(&std::fs::read_to_string(fixture("operator/kubeflow-python.yaml")).unwrap());
    for (mode, native) in [("heartbeat", false), ("native", true)] {
        let extra = ["--termination", mode];
        let out = patch("kubeflow-python.yaml", &extra);
        let docs = documents(&out);
        assert_eq!(docs.len(), 1);
        contains(&docs[0], &input[0], "").unwrap_or_else(|e| panic!("{mode}: {e}"));
        let spec = &docs[0]["spec"];
        check_kubeflow_role(spec, "driver", native);
        check_kubeflow_role(spec, "executor", native);
        // The event logs go where the driver's sidecar reads them.
        assert_eq!(spec["sparkConf"]["spark.eventLog.enabled"], "true");
        assert_eq!(spec["sparkConf"]["spark.eventLog.dir"], "file:///var/log/spark/apps");
        assert!(
            spec["driver"]["volumeMounts"]
                .as_array()
                .unwrap()
                .iter()
                .any(|m| m["mountPath"] == "/var/log/spark/apps"),
            "{mode}: the driver writes its event logs into the shared volume"
        );
        // The executor has no event logs to share.
        assert!(
            !spec["executor"]["volumeMounts"]
                .as_array()
                .unwrap()
                .iter()
                .any(|m| m["mountPath"] == "/var/log/spark/apps")
        );
        assert_idempotent(&out, &extra);
    }
}

#[test]
fn a_driver_pod_template_is_patched_and_a_scheduled_application_s_template_too() {
    let text = std::fs::read_to_string(fixture("operator/kubeflow-scala-template.yaml")).unwrap();
    let input = documents(&text);
    let out = patch("kubeflow-scala-template.yaml", &["--termination", "native"]);
    let docs = documents(&out);
    assert_eq!(docs.len(), 2, "both documents, in order");
    for (o, i) in docs.iter().zip(&input) {
        contains(o, i, "").unwrap();
    }
    // The driver's pod template carries the driver's sidecar; the CR's own fields are left alone.
    let spec = &docs[0]["spec"];
    let template = &spec["driver"]["template"];
    let pod = serde_json::json!({"apiVersion": "v1", "kind": "Pod", "metadata": template["metadata"], "spec": template["spec"]});
    valid::<k8s_openapi::api::core::v1::Pod>(&pod, "spec.driver.template");
    assert_eq!(template["spec"]["containers"][0]["name"], "spark-kubernetes-driver");
    assert!(container(&pod, "initContainers", "logship").is_some(), "{template}");
    assert!(spec["driver"].get("sidecars").is_none() && spec["driver"].get("initContainers").is_none());
    // The executor (no template): its own sidecar and init container are kept, in order, and ours added.
    check_kubeflow_role(spec, "executor", true);
    let inits: Vec<&str> = spec["executor"]["initContainers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(inits, ["wait", "logship"]);
    assert_eq!(spec["executor"]["sidecars"][0]["name"], "metrics");
    // The ScheduledSparkApplication: its template is an application spec.
    let scheduled = &docs[1]["spec"]["template"];
    check_kubeflow_role(scheduled, "driver", true);
    check_kubeflow_role(scheduled, "executor", true);
    assert_eq!(docs[1]["spec"]["schedule"], "@daily");
    assert_idempotent(&out, &["--termination", "native"]);
}

#[test]
fn an_apache_operator_application_has_its_pod_templates_patched_and_other_documents_pass_through() {
    let text = std::fs::read_to_string(fixture("operator/apache.yaml")).unwrap();
    let input = documents(&text);
    let out = patch("apache.yaml", &["--termination", "native"]);
    let docs = documents(&out);
    assert_eq!(docs.len(), 2);
    contains(&docs[0], &input[0], "").unwrap();
    assert_eq!(docs[1], input[1], "the ConfigMap passes through unchanged");
    let spec = &docs[0]["spec"];
    for (key, role, spark) in [
        ("driverSpec", "driver", "main"),
        ("executorSpec", "executor", "spark-kubernetes-executor"),
    ] {
        let t = &spec[key]["podTemplateSpec"];
        let pod = serde_json::json!({"apiVersion": "v1", "kind": "Pod", "metadata": t["metadata"], "spec": t["spec"]});
        valid::<k8s_openapi::api::core::v1::Pod>(&pod, key);
        assert_eq!(
            t["spec"]["containers"][0]["name"], spark,
            "{key}: Spark's container stays first"
        );
        assert!(container(&pod, "initContainers", "logship").is_some(), "{key}");
        assert_eq!(
            spec["sparkConf"][format!("spark.kubernetes.{role}.podTemplateContainerName")],
            spark,
            "{key}: Spark finds its container in the template"
        );
    }
    assert_eq!(spec["driverSpec"]["podTemplateSpec"]["metadata"]["labels"]["team"], "a");
    assert_idempotent(&out, &["--termination", "native"]);
}

#[test]
fn operator_resources_refuse_what_they_cannot_carry_with_the_reason() {
    let f = fixture("operator/kubeflow-python.yaml");
    let base = [
        "template",
        "--in",
        f.to_str().unwrap(),
        "--image",
        IMAGE,
        "--to",
        "s3://b/x",
    ];
    let e = fails(&[&base[..], &["--role", "driver"]].concat(), b"");
    assert!(
        e.contains("--role driver does not apply") && e.contains("SparkApplication"),
        "{e}"
    );
    let e = fails(&[&base[..], &["--termination", "wrap"]].concat(), b"");
    assert!(
        e.contains("spec.driver") && e.contains("wrap") && e.contains("template"),
        "{e}"
    );
    // A document of another kind alone is an error naming it; a pod template still needs a role.
    let e = fails(
        &["template", "--image", IMAGE, "--to", "s3://b/x"],
        b"apiVersion: apps/v1\nkind: Deployment\n",
    );
    assert!(e.contains("kind: Deployment"), "{e}");
    let e = fails(&["template", "--image", IMAGE, "--to", "s3://b/x"], b"kind: Pod\n");
    assert!(e.contains("--role"), "{e}");
}
