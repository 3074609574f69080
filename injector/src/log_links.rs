//! Executor log links that outlive the pods. Spark's UI (and, through the event log, the History
//! Server) shows each executor's stdout/stderr links; on Kubernetes they point at the pod, which
//! is gone after the job. Spark 4 renders `spark.ui.custom.executor.log.url` from *executor
//! attributes*, which an executor reads from its `SPARK_EXECUTOR_ATTRIBUTE_<NAME>` variables
//! (`CoarseGrainedExecutorBackend.extractAttributes`), with `{{FILE_NAME}}` taken from the
//! `LOG_FILES` attribute (`ExecutorLogUrlHandler`). Spark sets `APP_ID` and `EXECUTOR_ID` on
//! executor pods; the patch adds the pod's name (from the same downward-API field the sidecar's
//! tag comes from) and the list of files, and the Spark
//! settings carry a URL pattern that opens that place: the S3 console at the pod's prefix, or
//! the CloudWatch console at its stream. The driver has no such setting on Kubernetes (Spark 4.3
//! gives custom driver log URLs only to standalone clusters).

use serde_json::{Value, json};

use crate::options::SidecarOptions;
use crate::sidecar::{Destination, SidecarError, parse_destination};

/// The attribute holding the pod's name (its sidecar's `%{tag}` starts with it).
pub const POD_ATTRIBUTE: &str = "LOGSHIP_POD_NAME";
/// The attribute holding the application id: Spark's own, which it sets on every executor pod
/// (`SPARK_EXECUTOR_ATTRIBUTE_APP_ID`, the same id as the label `spark-app-selector` that the
/// sidecar's `${SPARK_APPLICATION_ID}` comes from).
pub const APP_ATTRIBUTE: &str = "APP_ID";
/// Spark's attribute listing the log files, one link each (`{{FILE_NAME}}`).
pub const LOG_FILES_ATTRIBUTE: &str = "LOG_FILES";
/// The prefix Spark reads executor attributes from.
pub const ATTRIBUTE_ENV_PREFIX: &str = "SPARK_EXECUTOR_ATTRIBUTE_";
/// The Spark setting for the live UI; Spark also writes the rendered links into the event log,
/// so the History Server shows them too.
pub const UI_KEY: &str = "spark.ui.custom.executor.log.url";
/// The History Server's own setting (in its configuration, not the application's): it renders
/// the same pattern from the attributes recorded in the event log.
pub const HISTORY_KEY: &str = "spark.history.custom.executor.log.url";

/// The environment variables the executor's Spark container gets (Spark adds `APP_ID` and
/// `EXECUTOR_ID` itself).
pub fn attribute_env() -> Vec<Value> {
    vec![
        json!({"name": format!("{ATTRIBUTE_ENV_PREFIX}{POD_ATTRIBUTE}"),
               "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}),
        json!({"name": format!("{ATTRIBUTE_ENV_PREFIX}{LOG_FILES_ATTRIBUTE}"), "value": "stdout,stderr"}),
    ]
}

/// The URL pattern for the options' destination: `--log-url` if given (`none`: no links),
/// else the AWS console for `--to` (S3 or CloudWatch). `None` when there is no link to make
/// (`file://` destinations, `--log-url none`).
pub fn url_pattern(opts: &SidecarOptions) -> Result<Option<String>, SidecarError> {
    pattern_for(
        Some(&opts.to),
        opts.region.as_deref(),
        opts.endpoint.is_some(),
        opts.log_url.as_deref(),
    )
}

/// [`url_pattern`] from its parts: `log_url` (`--log-url`) wins; else the console for `to`.
pub fn pattern_for(
    to: Option<&str>,
    region: Option<&str>,
    custom_endpoint: bool,
    log_url: Option<&str>,
) -> Result<Option<String>, SidecarError> {
    match log_url {
        Some("none") => return Ok(None),
        Some(custom) => return Ok(Some(custom.to_string())),
        None => {}
    }
    let Some(to) = to else { return Ok(None) };
    let dest = parse_destination("--to", to)?;
    Ok(console_url(&dest, region, custom_endpoint))
}

fn var(name: &str) -> String {
    format!("{{{{{name}}}}}")
}

/// The console URL of a pod's container logs under `dest` (the layout of `sidecar::config_for`).
pub fn console_url(dest: &Destination, region: Option<&str>, custom_endpoint: bool) -> Option<String> {
    let (app, pod, file) = (var(APP_ATTRIBUTE), var(POD_ATTRIBUTE), var("FILE_NAME"));
    match dest {
        // An S3-compatible store has no AWS console; `--log-url` names its own.
        Destination::S3 { .. } if custom_endpoint => None,
        Destination::S3 { bucket, prefix } => {
            let under = if prefix.is_empty() {
                String::new()
            } else {
                format!("{}/", query_escape(prefix))
            };
            let region = region
                .map(|r| format!("region={}&", query_escape(r)))
                .unwrap_or_default();
            Some(format!(
                "https://s3.console.aws.amazon.com/s3/buckets/{}?{region}prefix={under}containers/{app}/{pod}/{file}/",
                query_escape(bucket)
            ))
        }
        Destination::CloudWatch { group, stream } => {
            let host = match region {
                Some(r) => format!("https://{r}.console.aws.amazon.com/cloudwatch/home?region={r}"),
                None => "https://console.aws.amazon.com/cloudwatch/home".into(),
            };
            let slash = console_escape("/");
            let lead = if stream.is_empty() {
                String::new()
            } else {
                format!("{}{slash}", console_escape(stream))
            };
            Some(format!(
                "{host}#logsV2:log-groups/log-group/{}/log-events/{lead}{app}{slash}{pod}{slash}{file}",
                console_escape(group)
            ))
        }
        Destination::File(_) | Destination::Stdout => None,
    }
}

/// Percent-encoding for a query value, keeping `/` (the S3 console reads prefixes either way).
fn query_escape(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~/".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The CloudWatch console's fragment encoding: percent-encoded, then each `%` written `$25`.
fn console_escape(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("$25{b:02X}"));
        }
    }
    out
}

/// The Spark settings: the live UI's pattern (which also goes into the event log).
pub fn spark_conf(pattern: &str) -> Vec<(String, String)> {
    vec![(UI_KEY.to_string(), pattern.to_string())]
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    /// What Spark does with a pattern and an executor's attributes (`ExecutorLogUrlHandler`): each
    /// `{{NAME}}` replaced by the attribute, one link per file in `LOG_FILES`. `None` when an
    /// attribute is missing (Spark then keeps the default links).
    fn render(pattern: &str, attributes: &BTreeMap<String, String>) -> Option<Vec<(String, String)>> {
        let mut names = Vec::new();
        let mut rest = pattern;
        while let Some(i) = rest.find("{{") {
            let after = &rest[i + 2..];
            let end = after.find("}}")?;
            names.push(after[..end].to_string());
            rest = &after[end + 2..];
        }
        let mut url = pattern.to_string();
        for n in names.iter().filter(|n| *n != "FILE_NAME") {
            url = url.replace(&var(n), attributes.get(n)?);
        }
        if names.iter().any(|n| n == "FILE_NAME") {
            let files = attributes.get(LOG_FILES_ATTRIBUTE)?;
            Some(
                files
                    .split(',')
                    .map(|f| (f.to_string(), url.replace(&var("FILE_NAME"), f)))
                    .collect(),
            )
        } else {
            Some(vec![("log".into(), url)])
        }
    }

    fn attrs() -> BTreeMap<String, String> {
        [
            (APP_ATTRIBUTE, "spark-0123abcd"),
            (POD_ATTRIBUTE, "pi-exec-1"),
            (LOG_FILES_ATTRIBUTE, "stdout,stderr"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }

    #[test]
    fn the_s3_link_opens_the_pods_prefix_per_file() {
        let dest = Destination::parse("s3://logs-bucket/team a/spark").unwrap();
        let p = console_url(&dest, Some("eu-west-1"), false).unwrap();
        let links = render(&p, &attrs()).unwrap();
        assert_eq!(
            links,
            vec![
                (
                    "stdout".to_string(),
                    "https://s3.console.aws.amazon.com/s3/buckets/logs-bucket?region=eu-west-1&prefix=team%20a/spark/containers/spark-0123abcd/pi-exec-1/stdout/".to_string()
                ),
                (
                    "stderr".to_string(),
                    "https://s3.console.aws.amazon.com/s3/buckets/logs-bucket?region=eu-west-1&prefix=team%20a/spark/containers/spark-0123abcd/pi-exec-1/stderr/".to_string()
                ),
            ]
        );
        // No link for an S3-compatible endpoint or a directory, unless --log-url names one.
        assert_eq!(console_url(&dest, None, true), None);
        assert_eq!(
            console_url(&Destination::parse("file:///x").unwrap(), None, false),
            None
        );
    }

    #[test]
    fn the_cloudwatch_link_opens_the_pods_stream() {
        let dest = Destination::parse("cloudwatch://%2Femr%2Fspark/jobs").unwrap();
        let p = console_url(&dest, Some("us-east-2"), false).unwrap();
        let links = render(&p, &attrs()).unwrap();
        assert_eq!(
            links[0].1,
            "https://us-east-2.console.aws.amazon.com/cloudwatch/home?region=us-east-2#logsV2:log-groups/log-group/$252Femr$252Fspark/log-events/jobs$252Fspark-0123abcd$252Fpi-exec-1$252Fstdout"
        );
    }

    #[test]
    fn a_missing_attribute_renders_nothing_as_in_spark() {
        let mut a = attrs();
        a.remove(POD_ATTRIBUTE);
        assert_eq!(render("x/{{LOGSHIP_POD_NAME}}/{{FILE_NAME}}", &a), None);
        a = attrs();
        a.remove(LOG_FILES_ATTRIBUTE);
        assert_eq!(render("x/{{LOGSHIP_POD_NAME}}/{{FILE_NAME}}", &a), None);
        assert_eq!(
            render("x/{{LOGSHIP_POD_NAME}}", &a),
            Some(vec![("log".to_string(), "x/pi-exec-1".to_string())])
        );
    }
}
