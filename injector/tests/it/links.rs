//! The executors' log links (`log_links`) on every path: `spark-conf --to`, the ConfigMap's
//! spark-defaults, the Spark Operators' `sparkConf`, the executor's attributes in templates (and
//! none on the driver), `--log-url` and `--log-url none`. Real Spark renders them in
//! `spark::an_executors_log_links_open_where_its_sidecar_ships_its_logs`.

use crate::common::*;
use serde_json::Value;

const IMAGE: &str = "registry.example/logship:1";
const S3_PATTERN: &str = "https://s3.console.aws.amazon.com/s3/buckets/logs-bucket?region=eu-west-1&prefix=spark/containers/{{APP_ID}}/{{LOGSHIP_POD_NAME}}/{{FILE_NAME}}/";

fn attribute_names(pod: &Value, spark: &str) -> Vec<String> {
    let c = container(pod, "containers", spark).unwrap();
    c["env"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["name"].as_str())
        .filter(|n| n.starts_with("SPARK_EXECUTOR_ATTRIBUTE_"))
        .map(String::from)
        .collect()
}

#[test]
fn spark_conf_with_to_sets_the_link_pattern_and_without_it_none() {
    let args = ["spark-conf", "--to", "s3://logs-bucket/spark", "--region", "eu-west-1"];
    let out = ok(&args, b"");
    assert!(
        out.lines()
            .any(|l| l == format!("--conf spark.ui.custom.executor.log.url={S3_PATTERN}")),
        "{out}"
    );
    assert!(!ok(&["spark-conf"], b"").contains("log.url"));
    let out = ok(
        &["spark-conf", "--to", "cloudwatch://%2Fspark/jobs", "--properties"],
        b"",
    );
    assert!(
        out.contains("spark.ui.custom.executor.log.url https://console.aws.amazon.com/cloudwatch/home#logsV2:log-groups/log-group/$252Fspark/log-events/jobs$252F{{APP_ID}}$252F{{LOGSHIP_POD_NAME}}$252F{{FILE_NAME}}\n"),
        "{out}"
    );
    // A directory has no console; --log-url names any place, `none` none.
    assert!(!ok(&["spark-conf", "--to", "file:///logs"], b"").contains("log.url"));
    let out = ok(
        &[
            "spark-conf",
            "--to",
            "file:///logs",
            "--log-url",
            "https://logs.example/{{APP_ID}}/{{FILE_NAME}}",
        ],
        b"",
    );
    assert!(
        out.contains("log.url=https://logs.example/{{APP_ID}}/{{FILE_NAME}}\n"),
        "{out}"
    );
    assert!(!ok(&["spark-conf", "--to", "s3://b/p", "--log-url", "none"], b"").contains("log.url"));
    // A bad --to is an error naming it, not a silent lack of links.
    let err = fails(&["spark-conf", "--to", "http://nope"], b"");
    assert!(err.contains("--to"), "{err}");
}

#[test]
fn executor_templates_carry_the_attributes_and_driver_templates_do_not() {
    let base = ["--image", IMAGE, "--to", "s3://logs-bucket/spark"];
    let exec = yaml(&ok(&[&["template", "--role", "executor"][..], &base].concat(), b""));
    assert_eq!(
        attribute_names(&exec, "spark-kubernetes-executor"),
        [
            "SPARK_EXECUTOR_ATTRIBUTE_LOGSHIP_POD_NAME",
            "SPARK_EXECUTOR_ATTRIBUTE_LOG_FILES"
        ]
    );
    let c = container(&exec, "containers", "spark-kubernetes-executor").unwrap();
    assert_eq!(
        env(c, "SPARK_EXECUTOR_ATTRIBUTE_LOGSHIP_POD_NAME").unwrap()["valueFrom"]["fieldRef"]["fieldPath"],
        "metadata.name"
    );
    assert_eq!(
        env(c, "SPARK_EXECUTOR_ATTRIBUTE_LOG_FILES").unwrap()["value"],
        "stdout,stderr"
    );
    let driver = yaml(&ok(&[&["template", "--role", "driver"][..], &base].concat(), b""));
    assert!(attribute_names(&driver, "spark-kubernetes-driver").is_empty());
    let none = yaml(&ok(
        &[&["template", "--role", "executor", "--log-url", "none"][..], &base].concat(),
        b"",
    ));
    assert!(attribute_names(&none, "spark-kubernetes-executor").is_empty());
    // A template that already sets an attribute keeps its value.
    let own = "spec:\n  containers:\n  - name: spark-kubernetes-executor\n    env:\n    - name: SPARK_EXECUTOR_ATTRIBUTE_LOG_FILES\n      value: stdout\n";
    let kept = yaml(&ok(
        &[&["template", "--role", "executor"][..], &base].concat(),
        own.as_bytes(),
    ));
    let c = container(&kept, "containers", "spark-kubernetes-executor").unwrap();
    assert_eq!(env(c, "SPARK_EXECUTOR_ATTRIBUTE_LOG_FILES").unwrap()["value"], "stdout");
}

#[test]
fn configmap_and_operator_resources_get_the_link_pattern() {
    let out = ok(
        &[
            "configmap",
            "--name",
            "x",
            "--image",
            IMAGE,
            "--to",
            "s3://logs-bucket/spark",
            "--region",
            "eu-west-1",
        ],
        b"",
    );
    let cm = yaml(&out);
    let conf = cm["data"]["spark-defaults.conf"].as_str().unwrap();
    assert!(
        conf.contains(&format!("spark.ui.custom.executor.log.url {S3_PATTERN}\n")),
        "{conf}"
    );
    let exec = yaml(cm["data"]["executor-pod-template.yaml"].as_str().unwrap());
    assert_eq!(attribute_names(&exec, "spark-kubernetes-executor").len(), 2);

    for file in ["kubeflow-python.yaml", "apache.yaml"] {
        let f = fixture(&format!("operator/{file}"));
        let out = ok(
            &[
                "template",
                "--in",
                f.to_str().unwrap(),
                "--image",
                IMAGE,
                "--to",
                "s3://logs-bucket/spark",
                "--region",
                "eu-west-1",
            ],
            b"",
        );
        use serde::Deserialize;
        let doc = serde_yaml_ng::Deserializer::from_str(&out)
            .map(|d| Value::deserialize(d).unwrap())
            .find(|d| d["kind"] == "SparkApplication")
            .unwrap();
        assert_eq!(
            doc["spec"]["sparkConf"]["spark.ui.custom.executor.log.url"], S3_PATTERN,
            "{file}"
        );
    }
}
