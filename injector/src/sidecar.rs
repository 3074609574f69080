//! The sidecar's own configuration: logship's native TOML for one role. It names pod-specific
//! values through environment variables (`${SPARK_APPLICATION_ID}`, `${SIDECAR_SIGNAL_FILE}`),
//! which the pod spec fills in from the downward API, so one config serves every pod of a role
//! and can live in a ConfigMap.

use std::fmt::Write;

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

/// Where a stream of logs goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    /// S3 objects under `prefix`.
    S3 {
        /// The bucket.
        bucket: String,
        /// The key prefix, without leading or trailing `/`.
        prefix: String,
    },
    /// CloudWatch Logs: one stream per file under `stream_prefix`.
    CloudWatch {
        /// The log group.
        group: String,
        /// Prepended to each stream name.
        stream_prefix: String,
    },
    /// Files in a directory (a mounted volume; also for trying the sidecar out).
    File {
        /// The directory.
        dir: String,
    },
}

impl Destination {
    /// Parses `s3://BUCKET/PREFIX`, `cloudwatch://GROUP/STREAM-PREFIX` or `file:///DIR`.
    pub fn parse(flag: &'static str, value: &str) -> Result<Destination, SidecarError> {
        let err = |message: &str| SidecarError::Destination {
            flag,
            value: value.to_string(),
            message: message.to_string(),
        };
        if let Some(rest) = value.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(err("no bucket (s3://BUCKET/PREFIX)"));
            }
            Ok(Destination::S3 {
                bucket: bucket.to_string(),
                prefix: prefix.trim_matches('/').to_string(),
            })
        } else if let Some(rest) = value.strip_prefix("cloudwatch://") {
            let (group, stream) = rest.split_once('/').unwrap_or((rest, ""));
            if group.is_empty() {
                return Err(err("no log group (cloudwatch://GROUP/STREAM-PREFIX)"));
            }
            Ok(Destination::CloudWatch {
                group: group.replace("%2F", "/").replace("%2f", "/"),
                stream_prefix: stream.trim_matches('/').to_string(),
            })
        } else if let Some(dir) = value.strip_prefix("file://") {
            if !dir.starts_with('/') {
                return Err(err("a file destination in a pod must be absolute (file:///DIR)"));
            }
            Ok(Destination::File {
                dir: dir.trim_end_matches('/').to_string(),
            })
        } else {
            Err(err(
                "expected s3://BUCKET/PREFIX, cloudwatch://GROUP/STREAM-PREFIX or file:///DIR",
            ))
        }
    }

    /// The event-log destination under this one (`<dest>/event-logs`), when it can hold files.
    fn event_logs_under(&self) -> Option<Destination> {
        match self {
            Destination::S3 { bucket, prefix } => Some(Destination::S3 {
                bucket: bucket.clone(),
                prefix: join(prefix, "event-logs"),
            }),
            Destination::File { dir } => Some(Destination::File {
                dir: format!("{dir}/event-logs"),
            }),
            Destination::CloudWatch { .. } => None,
        }
    }
}

fn join(a: &str, b: &str) -> String {
    if a.is_empty() {
        b.to_string()
    } else {
        format!("{a}/{b}")
    }
}

/// A TOML basic string (JSON's escapes are TOML's).
fn q(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_default()
}

/// The event-log destination of a driver: `--events-to`, else under `--to`; `None` when event
/// logs cannot be shipped (CloudWatch only), which `configure` reports.
pub fn events_destination(opts: &SidecarOptions) -> Result<Option<Destination>, SidecarError> {
    if let Some(e) = &opts.events_to {
        let d = Destination::parse("--events-to", e)?;
        if matches!(d, Destination::CloudWatch { .. }) {
            return Err(SidecarError::Option(
                "--events-to: the History Server reads event logs from files or S3, not CloudWatch".into(),
            ));
        }
        return Ok(Some(d));
    }
    Ok(Destination::parse("--to", &opts.to)?.event_logs_under())
}

/// The sidecar's native config for `role`, and notes for the user (what is not shipped).
pub fn config_toml(opts: &SidecarOptions, role: Role) -> Result<(String, Vec<String>), SidecarError> {
    let logs = Destination::parse("--to", &opts.to)?;
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
    if !matches!(opts.store_as.as_str(), "text" | "gzip" | "zstd") {
        return Err(SidecarError::Option(format!(
            "--store-as {:?}: expected text, gzip or zstd",
            opts.store_as
        )));
    }
    let buffer = opts.buffer_dir.display().to_string();
    let container_logs = opts.container_log_dir.display().to_string();
    let mut t = String::new();
    let _ = writeln!(
        t,
        "# logship sidecar config for the Spark {} (made by logship-inject {}).",
        role.label(),
        env!("CARGO_PKG_VERSION")
    );
    let _ = writeln!(t, "# ${{NAME}} is an environment variable of the sidecar container.\n");
    let _ = writeln!(t, "[buffer]\ndir = {}\n", q(&format!("{buffer}/buffer")));
    if events.is_some() {
        let _ = writeln!(
            t,
            "[[source]]\nname = \"event-logs\"\ntype = \"spark_events\"\npaths = [\"${{K8S_SPARK_EVENT_LOG_DIR}}\"]\noutputs = [\"event-logs\"]\n"
        );
        let mode = match opts.event_logs {
            EventLogLayout::Single => "rechunk",
            EventLogLayout::Rolling | EventLogLayout::RollingZstd => "mirror",
        };
        let _ = writeln!(t, "[source.spark]\nmode = {}\nappstatus = \"at_end\"\n", q(mode));
    }
    let _ = writeln!(
        t,
        "[[source]]\nname = \"container-logs\"\ntype = \"tail\"\npaths = [{}, {}]\noutputs = [\"container-logs\"]\n",
        q(&format!("{container_logs}/*/stdout")),
        q(&format!("{container_logs}/*/stderr")),
    );
    if let Some(events) = &events {
        output(&mut t, opts, "event-logs", events, None, "text");
    }
    output(
        &mut t,
        opts,
        "container-logs",
        &logs,
        Some("containers/${SPARK_APPLICATION_ID}"),
        &opts.store_as,
    );
    let _ = writeln!(t, "[lifecycle]");
    match opts.termination {
        Termination::Heartbeat => {
            let _ = writeln!(t, "heartbeat_file = \"${{SIDECAR_SIGNAL_FILE}}\"");
        }
        Termination::Wrap => {
            let _ = writeln!(t, "heartbeat_file = \"${{SIDECAR_SIGNAL_FILE}}\"");
            let _ = writeln!(t, "signal_file = \"${{LOGSHIP_SIGNAL_FILE}}\"");
        }
        Termination::Native => {
            let _ = writeln!(
                t,
                "# A native sidecar: the kubelet sends SIGTERM once the Spark container has ended;\n# the drain must fit in the pod's terminationGracePeriodSeconds (30 s by default)."
            );
            let _ = writeln!(t, "drain_deadline = \"25s\"");
        }
    }
    Ok((t, notes))
}

/// One `[[output]]` table.
fn output(t: &mut String, opts: &SidecarOptions, name: &str, dest: &Destination, under: Option<&str>, store_as: &str) {
    let _ = writeln!(t, "[[output]]\nname = {}", q(name));
    match dest {
        Destination::S3 { bucket, prefix } => {
            let path = under.map(|u| join(prefix, u)).unwrap_or_else(|| prefix.clone());
            let _ = writeln!(t, "type = \"s3\"\npath = {}", q(&path));
            if under.is_some() {
                // A presigned POST cannot look whether a key is taken: a random part keeps a
                // restarted container's objects apart from the earlier run's.
                let random = if opts.presigned_post_secret.is_some() {
                    "_%{hex_random}"
                } else {
                    ""
                };
                let _ = writeln!(
                    t,
                    "key_format = \"%{{path}}/%{{tag}}/%{{time_slice}}_%{{index}}{random}.%{{file_extension}}\""
                );
            }
            let _ = writeln!(t, "\n[output.s3]\nbucket = {}\nstore_as = {}", q(bucket), q(store_as));
            if opts.presigned_post_secret.is_some() {
                let _ = writeln!(t, "presigned_post = {}", q(paths::PRESIGNED_POST_FILE));
            }
            if let Some(r) = &opts.region {
                let _ = writeln!(t, "region = {}", q(r));
            }
            if let Some(e) = &opts.endpoint {
                let _ = writeln!(t, "endpoint = {}\nforce_path_style = true", q(e));
            }
        }
        Destination::File { dir } => {
            let _ = writeln!(t, "type = \"file\"\ndir = {}", q(dir));
            if let Some(u) = under {
                let _ = writeln!(
                    t,
                    "path = {}\nkey_format = \"%{{path}}/%{{tag}}/%{{time_slice}}_%{{index}}.%{{file_extension}}\"",
                    q(u)
                );
            }
        }
        Destination::CloudWatch { group, stream_prefix } => {
            let stream = join(stream_prefix, "${SPARK_APPLICATION_ID}/%{tag}");
            let _ = writeln!(
                t,
                "type = \"cloudwatch\"\n\n[output.cloudwatch]\nlog_group = {}\nlog_stream = {}\ntimestamp = \"log4j\"",
                q(group),
                q(&stream)
            );
            if let Some(r) = &opts.region {
                let _ = writeln!(t, "region = {}", q(r));
            }
            if let Some(e) = &opts.endpoint {
                let _ = writeln!(t, "endpoint = {}", q(e));
            }
        }
    }
    let _ = writeln!(t);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn destinations_parse_and_bad_ones_say_why() {
        assert_eq!(
            Destination::parse("--to", "s3://b/x/y/").unwrap(),
            Destination::S3 {
                bucket: "b".into(),
                prefix: "x/y".into()
            }
        );
        assert_eq!(
            Destination::parse("--to", "cloudwatch://%2Femr%2Fspark/jobs").unwrap(),
            Destination::CloudWatch {
                group: "/emr/spark".into(),
                stream_prefix: "jobs".into()
            }
        );
        let e = Destination::parse("--to", "http://x").unwrap_err().to_string();
        assert!(e.starts_with("--to \"http://x\": expected s3://"), "{e}");
        let e = Destination::parse("--to", "file://rel").unwrap_err().to_string();
        assert!(e.contains("absolute"), "{e}");
    }
}
