//! The Spark settings that go with the patched templates: where the templates are, which
//! container is Spark's, and event logs written where and how the sidecar reads them.

use std::path::Path;

use crate::options::EventLogLayout;

/// What `spark_conf` needs to know.
#[derive(Debug, Clone)]
pub struct SparkConf<'a> {
    /// The driver's pod template, as spark-submit reads it (a local path, or any Hadoop URL).
    pub driver_template: &'a str,
    /// The executors' pod template.
    pub executor_template: &'a str,
    /// The driver template's Spark container.
    pub driver_container: &'a str,
    /// The executor template's Spark container.
    pub executor_container: &'a str,
    /// The event-log directory in the driver pod (shared with the sidecar).
    pub event_log_dir: &'a Path,
    /// How Spark writes event logs.
    pub layout: EventLogLayout,
    /// The executors' log-link pattern (`log_links`), if any.
    pub log_url: Option<&'a str>,
}

/// The settings as (key, value) pairs, in a stable order.
pub fn spark_conf(c: &SparkConf) -> Vec<(String, String)> {
    let mut v: Vec<(&str, String)> = vec![
        ("spark.kubernetes.driver.podTemplateFile", c.driver_template.to_string()),
        (
            "spark.kubernetes.executor.podTemplateFile",
            c.executor_template.to_string(),
        ),
        (
            "spark.kubernetes.driver.podTemplateContainerName",
            c.driver_container.to_string(),
        ),
        (
            "spark.kubernetes.executor.podTemplateContainerName",
            c.executor_container.to_string(),
        ),
        ("spark.eventLog.enabled", "true".into()),
        ("spark.eventLog.dir", format!("file://{}", c.event_log_dir.display())),
    ];
    match c.layout {
        EventLogLayout::RollingZstd => v.extend([
            ("spark.eventLog.rolling.enabled", "true".to_string()),
            ("spark.eventLog.rolling.maxFileSize", "16m".into()),
            ("spark.eventLog.compress", "true".into()),
            ("spark.eventLog.compression.codec", "zstd".into()),
        ]),
        EventLogLayout::Rolling => v.extend([
            ("spark.eventLog.rolling.enabled", "true".to_string()),
            ("spark.eventLog.rolling.maxFileSize", "16m".into()),
            ("spark.eventLog.compress", "false".into()),
        ]),
        EventLogLayout::Single => v.extend([
            ("spark.eventLog.rolling.enabled", "false".to_string()),
            ("spark.eventLog.compress", "false".into()),
        ]),
    }
    let mut v: Vec<(String, String)> = v.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
    if let Some(p) = c.log_url {
        v.extend(crate::log_links::spark_conf(p));
    }
    v
}

/// `--conf k=v` lines for spark-submit.
pub fn as_submit_args(conf: &[(String, String)]) -> String {
    conf.iter().map(|(k, v)| format!("--conf {k}={v}\n")).collect()
}

/// spark-defaults.conf lines.
pub fn as_properties(conf: &[(String, String)]) -> String {
    conf.iter().map(|(k, v)| format!("{k} {v}\n")).collect()
}
