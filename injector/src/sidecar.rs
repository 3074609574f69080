//! The sidecar's own configuration: logship's native config for one role, built from the
//! daemon's own types (`logship-config`) and written as TOML by them. It names pod-specific
//! values through environment variables (`${SPARK_APPLICATION_ID}`, `${SIDECAR_SIGNAL_FILE}`),
//! which the pod spec fills in from the downward API, so one config serves every pod of a role
//! and can live in a ConfigMap.

use logship_config::contract::{
    K8S_SPARK_EVENT_LOG_DIR, LOGSHIP_SIGNAL_FILE, SIDECAR_SIGNAL_FILE, SPARK_APPLICATION_ID,
};
pub use logship_config::destination::{Destination, DestinationError};
use logship_config::key::KeyTemplate;
use logship_config::units::HumanDuration;
use logship_config::{
    AppStatusMode, CloudWatchSettings, Config, EventLogMode, OutputConfig, OutputKind, S3Settings, SourceConfig,
    SourceKind, SparkEventsConfig, StoreAs, TimestampRule,
};

use crate::options::{EventLogLayout, Role, SidecarOptions, Termination, paths};

/// Why the sidecar cannot be configured.
#[derive(Debug, thiserror::Error)]
pub enum SidecarError {
    /// A destination URL that is not understood.
    #[error("{flag} {value:?}: {message}")]
    Destination {
        /// The flag (`--to`, `--events-to`).
        flag: &'static str,
        /// What was given.
        value: String,
        /// What is wrong.
        message: String,
    },
    /// An option value that is not understood.
    #[error("{0}")]
    Option(String),
}

/// Parses a destination flag for a pod: the daemon's `--to` grammar, where a directory must
/// be absolute (a mounted volume) and logship's own stdout is no place for a pod's logs.
pub fn parse_destination(flag: &'static str, value: &str) -> Result<Destination, SidecarError> {
    let err = |message: String| SidecarError::Destination {
        flag,
        value: value.to_string(),
        message,
    };
    let expected = || err("expected s3://BUCKET/PREFIX, cloudwatch://GROUP/STREAM-PREFIX or file:///DIR".into());
    let d = Destination::parse(value).map_err(|e| match e {
        DestinationError::Unsupported { .. } => expected(),
        e => err(e.to_string()),
    })?;
    match &d {
        Destination::File(dir) if !dir.is_absolute() => {
            Err(err("a file destination in a pod must be absolute (file:///DIR)".into()))
        }
        Destination::Stdout => Err(expected()),
        _ => Ok(d),
    }
}

/// The event-log destination under `d` (`<d>/event-logs`), when it can hold files.
fn event_logs_under(d: &Destination) -> Option<Destination> {
    match d {
        Destination::S3 { bucket, prefix } => Some(Destination::S3 {
            bucket: bucket.clone(),
            prefix: join(prefix, "event-logs"),
        }),
        Destination::File(dir) => Some(Destination::File(dir.join("event-logs"))),
        Destination::CloudWatch { .. } | Destination::Stdout => None,
    }
}

fn join(a: &str, b: &str) -> String {
    if a.is_empty() {
        b.to_string()
    } else {
        format!("{a}/{b}")
    }
}

/// `${NAME}`: a variable of the sidecar's environment, as the daemon expands it.
fn var(name: &str) -> String {
    format!("${{{name}}}")
}

/// The event-log destination of a driver: `--events-to`, else under `--to`; `None` when event
/// logs cannot be shipped (CloudWatch only), which `configure` reports.
pub fn events_destination(opts: &SidecarOptions) -> Result<Option<Destination>, SidecarError> {
    if let Some(e) = &opts.events_to {
        let d = parse_destination("--events-to", e)?;
        if matches!(d, Destination::CloudWatch { .. }) {
            return Err(SidecarError::Option(
                "--events-to: the History Server reads event logs from files or S3, not CloudWatch".into(),
            ));
        }
        return Ok(Some(d));
    }
    Ok(event_logs_under(&parse_destination("--to", &opts.to)?))
}

/// The sidecar's native config for `role`, as TOML, and notes for the user (what is not shipped).
pub fn config_toml(opts: &SidecarOptions, role: Role) -> Result<(String, Vec<String>), SidecarError> {
    let (config, notes) = config_for(opts, role)?;
    let mut t = format!(
        "# logship sidecar config for the Spark {} (made by logship-inject {}).\n# ${{NAME}} is an environment variable of the sidecar container.\n",
        role.label(),
        env!("CARGO_PKG_VERSION")
    );
    if opts.termination == Termination::Native {
        t.push_str("# A native sidecar: the kubelet sends SIGTERM once the Spark container has ended;\n# the drain must fit in the pod's terminationGracePeriodSeconds (30 s by default).\n");
    }
    t.push('\n');
    t.push_str(&config.to_minimal_toml());
    Ok((t, notes))
}

/// The sidecar's native config for `role`, and notes for the user (what is not shipped).
pub fn config_for(opts: &SidecarOptions, role: Role) -> Result<(Config, Vec<String>), SidecarError> {
    let logs = parse_destination("--to", &opts.to)?;
    let mut notes = Vec::new();
    let events = match role {
        Role::Driver => {
            let e = events_destination(opts)?;
            if e.is_none() {
                notes.push("the driver's event logs are not shipped: --to is CloudWatch; give --events-to s3://... for the History Server".to_string());
            }
            e
        }
        Role::Executor => None,
    };
    let store_as = match opts.store_as.as_str() {
        "text" | "gzip" | "zstd" => StoreAs::parse(&opts.store_as).unwrap_or_default(),
        other => {
            return Err(SidecarError::Option(format!(
                "--store-as {other:?}: expected text, gzip or zstd"
            )));
        }
    };
    let mut config = Config::new(Vec::new(), Vec::new());
    config.buffer.dir = opts.buffer_dir.join("buffer");
    if let Some(events) = &events {
        let mut s = SourceConfig::new(
            "event-logs",
            SourceKind::SparkEvents,
            vec![var(K8S_SPARK_EVENT_LOG_DIR)],
        );
        s.outputs = vec!["event-logs".into()];
        s.spark = Some(SparkEventsConfig {
            mode: match opts.event_logs {
                EventLogLayout::Single => EventLogMode::Rechunk,
                EventLogLayout::Rolling | EventLogLayout::RollingZstd => EventLogMode::Mirror,
            },
            appstatus: AppStatusMode::AtEnd,
            ..Default::default()
        });
        config.sources.push(s);
        config
            .outputs
            .push(output(opts, "event-logs", events, None, StoreAs::Text));
    }
    let logs_dir = opts.container_log_dir.display();
    let mut s = SourceConfig::new(
        "container-logs",
        SourceKind::Tail,
        vec![format!("{logs_dir}/*/stdout"), format!("{logs_dir}/*/stderr")],
    );
    s.outputs = vec!["container-logs".into()];
    config.sources.push(s);
    let under = format!("containers/{}", var(SPARK_APPLICATION_ID));
    config
        .outputs
        .push(output(opts, "container-logs", &logs, Some(&under), store_as));
    match opts.termination {
        Termination::Heartbeat => config.lifecycle.heartbeat_file = Some(var(SIDECAR_SIGNAL_FILE).into()),
        Termination::Wrap => {
            config.lifecycle.heartbeat_file = Some(var(SIDECAR_SIGNAL_FILE).into());
            config.lifecycle.signal_file = Some(var(LOGSHIP_SIGNAL_FILE).into());
        }
        // Auto is decided against the pod by `inject`; without a pod (the webhook's check of
        // its options at start) the config is native's.
        Termination::Native | Termination::Auto => config.lifecycle.drain_deadline = Some(HumanDuration::secs(25)),
    }
    Ok((config, notes))
}

/// One output, for container logs `under` a prefix or for event logs (`under` is `None`).
fn output(
    opts: &SidecarOptions,
    name: &str,
    dest: &Destination,
    under: Option<&str>,
    store_as: StoreAs,
) -> OutputConfig {
    match dest {
        Destination::S3 { bucket, prefix } => {
            let s3 = S3Settings {
                bucket: Some(bucket.clone()),
                store_as,
                presigned_post: opts
                    .presigned_post_secret
                    .as_ref()
                    .map(|_| paths::PRESIGNED_POST_FILE.into()),
                region: opts.region.clone(),
                endpoint: opts.endpoint.clone(),
                force_path_style: opts.endpoint.is_some(),
                ..Default::default()
            };
            let mut o = OutputConfig::new(name, OutputKind::S3(Box::new(s3)));
            o.path = under.map(|u| join(prefix, u)).unwrap_or_else(|| prefix.clone());
            if under.is_some() {
                // A presigned POST cannot look whether a key is taken: a random part keeps a
                // restarted container's objects apart from the earlier run's.
                let random = if opts.presigned_post_secret.is_some() {
                    "_%{hex_random}"
                } else {
                    ""
                };
                o.key_format = KeyTemplate::builtin(&format!(
                    "%{{path}}/%{{tag}}/%{{time_slice}}_%{{index}}{random}.%{{file_extension}}"
                ));
            }
            o
        }
        Destination::File(dir) => {
            let mut o = OutputConfig::new(name, OutputKind::File { dir: dir.clone() });
            if let Some(u) = under {
                o.path = u.to_string();
                o.key_format = KeyTemplate::builtin("%{path}/%{tag}/%{time_slice}_%{index}.%{file_extension}");
            }
            o
        }
        Destination::CloudWatch { group, stream } => {
            let cloudwatch = CloudWatchSettings {
                log_group: group.clone(),
                log_stream: join(stream, &format!("{}/%{{tag}}", var(SPARK_APPLICATION_ID))),
                timestamp: TimestampRule::Record,
                region: opts.region.clone(),
                endpoint: opts.endpoint.clone(),
                ..Default::default()
            };
            OutputConfig::new(name, OutputKind::Cloudwatch(Box::new(cloudwatch)))
        }
        // `parse_destination` refuses it for pods.
        Destination::Stdout => OutputConfig::new(name, OutputKind::Stdout),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn destinations_parse_and_bad_ones_say_why() {
        assert_eq!(
            parse_destination("--to", "s3://b/x/y/").unwrap(),
            Destination::S3 {
                bucket: "b".into(),
                prefix: "x/y".into()
            }
        );
        assert_eq!(
            parse_destination("--to", "cloudwatch://%2Femr%2Fspark/jobs").unwrap(),
            Destination::CloudWatch {
                group: "/emr/spark".into(),
                stream: "jobs".into()
            }
        );
        let e = parse_destination("--to", "http://x").unwrap_err().to_string();
        assert!(e.starts_with("--to \"http://x\": expected s3://"), "{e}");
        let e = parse_destination("--to", "file://rel").unwrap_err().to_string();
        assert!(e.contains("absolute"), "{e}");
        assert!(parse_destination("--to", "stdout").is_err());
    }
}
