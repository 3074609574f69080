//! What the sidecar should look like: the choices a user makes on the command line (or the
//! webhook's flags), shared by every command so `template`, `configmap` and `webhook` agree.

use std::path::{Path, PathBuf};

/// Which Spark pod a template is for: the driver ships event logs and its container logs, an
/// executor only its container logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Role {
    /// The driver pod (`spark-role: driver`).
    Driver,
    /// An executor pod (`spark-role: executor`).
    Executor,
}

impl Role {
    /// The value of the pod label `spark-role` Spark sets.
    pub fn label(self) -> &'static str {
        match self {
            Role::Driver => "driver",
            Role::Executor => "executor",
        }
    }

    /// The name Spark gives its container when the template does not name one.
    pub fn default_container(self) -> &'static str {
        match self {
            Role::Driver => "spark-kubernetes-driver",
            Role::Executor => "spark-kubernetes-executor",
        }
    }

    /// The role for a `spark-role` label value.
    pub fn from_label(v: &str) -> Option<Role> {
        match v {
            "driver" => Some(Role::Driver),
            "executor" => Some(Role::Executor),
            _ => None,
        }
    }
}

/// How the sidecar learns that the Spark container has ended (see `docs/injector.md`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Termination {
    /// `heartbeat` where the pod is EMR's (its Spark container sets `SIDECAR_SIGNAL_FILE`, or
    /// EMR's fluentd sidecar is there: EMR's images touch the heartbeat), `native` elsewhere (a
    /// plain Spark image touches no heartbeat, and a sidecar waiting for one would stop
    /// following before Spark wrote anything). The choice is printed with the pod's reason.
    #[default]
    Auto,
    /// The Spark container touches the heartbeat file every 2 s (EMR's images do); the sidecar
    /// drains when it goes stale. A regular container after Spark's.
    Heartbeat,
    /// A Kubernetes native sidecar (an init container with `restartPolicy: Always`, Kubernetes
    /// ≥ 1.29): the kubelet sends SIGTERM once the Spark container has ended.
    Native,
    /// For images that write no heartbeat: an init container copies logship into a shared
    /// volume and the Spark container's command becomes `logship wrap ... -- <entrypoint>`.
    Wrap,
}

/// How Spark should write event logs; the sidecar ships each layout (rechunked or mirrored).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum EventLogLayout {
    /// Rolling files compressed with zstd (Spark 4's defaults): mirrored byte for byte.
    #[default]
    RollingZstd,
    /// Rolling, uncompressed: mirrored.
    Rolling,
    /// One uncompressed file (EMR's layout): cut into `events_<n>_<app>` objects as it grows.
    Single,
}

/// The sidecar options every command takes.
#[derive(Debug, Clone, clap::Args)]
pub struct SidecarOptions {
    /// The logship image.
    #[arg(long)]
    pub image: String,
    /// The image pull policy of the sidecar (default: the cluster's).
    #[arg(long)]
    pub image_pull_policy: Option<String>,
    /// Where container logs go: s3://BUCKET/PREFIX, cloudwatch://GROUP[/STREAM-PREFIX] (write a
    /// `/` in GROUP as %2F) or file:///DIR. Event logs go to <DEST>/event-logs unless
    /// --events-to is given.
    #[arg(long)]
    pub to: String,
    /// Where the driver's event logs go (the History Server's spark.history.fs.logDirectory):
    /// s3://BUCKET/PREFIX or file:///DIR. Default: <--to>/event-logs when --to is S3 or a file.
    #[arg(long)]
    pub events_to: Option<String>,
    /// Upload through a presigned POST kept in this Secret (key `presigned-post`, boto3's JSON),
    /// mounted where EMR mounts it, instead of AWS credentials.
    #[arg(long)]
    pub presigned_post_secret: Option<String>,
    /// AWS region of the outputs (default: the pod's AWS_REGION, else the SDK's chain).
    #[arg(long)]
    pub region: Option<String>,
    /// An S3-compatible endpoint (path-style addressing).
    #[arg(long)]
    pub endpoint: Option<String>,
    /// Compression of container-log objects: text, gzip or zstd.
    #[arg(long, default_value = "gzip")]
    pub store_as: String,
    /// How the sidecar learns that Spark has ended.
    #[arg(long, value_enum, default_value_t)]
    pub termination: Termination,
    /// The Spark container's name (Spark's podTemplateContainerName); default: the template's
    /// first container, else Spark's default name.
    #[arg(long)]
    pub spark_container: Option<String>,
    /// The sidecar container's name.
    #[arg(long = "sidecar-name", id = "sidecar_name", default_value = "logship")]
    pub name: String,
    /// Remove this container first (repeatable), e.g. EMR's `emr-container-fluentd`.
    #[arg(long = "remove-container", value_name = "NAME")]
    pub remove_containers: Vec<String>,
    /// Take the sidecar's config from this ConfigMap (made by `logship-inject configmap`)
    /// instead of carrying it in the LOGSHIP_CONFIG_TOML variable.
    #[arg(long, value_name = "NAME")]
    pub config_map: Option<String>,
    /// Spark's event-log directory in the pod (spark.eventLog.dir).
    #[arg(long, default_value = "/var/log/spark/apps")]
    pub event_log_dir: PathBuf,
    /// The directory holding `<pod>/stdout` and `<pod>/stderr` (K8S_SPARK_LOG_URL_*).
    #[arg(long, default_value = "/var/log/spark/user")]
    pub container_log_dir: PathBuf,
    /// The heartbeat file; its directory is the shared communicate volume. A SIDECAR_SIGNAL_FILE
    /// already set on the Spark container wins.
    #[arg(long, default_value = "/var/log/fluentd/main-container-terminated")]
    pub heartbeat_file: PathBuf,
    /// The sidecar's buffer directory (an emptyDir of its own).
    #[arg(long, default_value = "/var/lib/logship")]
    pub buffer_dir: PathBuf,
    /// Wrap mode: the Spark image's entrypoint, used when the template's container sets no
    /// `command` (apache/spark images: /opt/entrypoint.sh).
    #[arg(long, default_value = "/opt/entrypoint.sh")]
    pub entrypoint: String,
    /// How Spark writes event logs (what `spark-conf` prints, and what the sidecar expects).
    #[arg(long, value_enum, default_value_t)]
    pub event_logs: EventLogLayout,
    /// Sidecar CPU request.
    #[arg(long, default_value = "50m")]
    pub cpu_request: String,
    /// Sidecar CPU limit (none by default: a limit only throttles the final drain).
    #[arg(long)]
    pub cpu_limit: Option<String>,
    /// Sidecar memory request.
    #[arg(long, default_value = "32Mi")]
    pub memory_request: String,
    /// Sidecar memory limit.
    #[arg(long, default_value = "64Mi")]
    pub memory_limit: String,
    /// The executors' stdout/stderr links in the Spark UI and History Server (Spark's
    /// spark.ui.custom.executor.log.url), with {{APP_ID}}, {{EXECUTOR_ID}}, {{LOGSHIP_POD_NAME}} and
    /// {{FILE_NAME}}; `none` for Spark's own links. Default: the AWS console at the pod's logs
    /// (S3 prefix or CloudWatch stream of --to; none for file:// or an --endpoint).
    #[arg(long, value_name = "PATTERN")]
    pub log_url: Option<String>,
}

/// Where the sidecar's volumes are mounted and which files it reads; fixed paths, so the Spark
/// container and the sidecar agree without configuration.
pub mod paths {
    /// EMR's presigned-POST mount (a Secret volume).
    pub const PRESIGNED_POST_DIR: &str = "/var/emr-container/s3";
    /// The presigned-POST file in it.
    pub const PRESIGNED_POST_FILE: &str = "/var/emr-container/s3/presigned-post";
    /// The config from a ConfigMap.
    pub const CONFIG_DIR: &str = "/etc/logship";
    /// The config file in it.
    pub const CONFIG_FILE: &str = "/etc/logship/logship.toml";
    /// Wrap mode: where the init container puts the logship binary.
    pub const BIN_DIR: &str = "/opt/logship/bin";
    /// The binary in it.
    pub const BIN: &str = "/opt/logship/bin/logship";
    /// Wrap mode: the file `logship wrap` writes when the Spark process ends (next to the
    /// heartbeat file).
    pub const SIGNAL_FILE_NAME: &str = "logship-main-ended";
}

impl SidecarOptions {
    /// These options with `--termination auto` decided for `pod` (a pod or a pod template),
    /// and a note that says what was chosen and why (None when the mode was given).
    pub fn resolved_for(&self, pod: &serde_json::Value) -> (SidecarOptions, Option<String>) {
        if self.termination != Termination::Auto {
            return (self.clone(), None);
        }
        let spec = &pod["spec"];
        let containers = ["containers", "initContainers"]
            .iter()
            .filter_map(|k| spec[k].as_array())
            .flatten();
        let mut emr = None;
        for c in containers {
            let name = c["name"].as_str().unwrap_or_default();
            if name == "emr-container-fluentd" {
                emr = Some(format!("EMR's fluentd sidecar ({name}) is in the pod"));
                break;
            }
            let sets_heartbeat = c["env"].as_array().is_some_and(|env| {
                env.iter()
                    .any(|e| e["name"].as_str() == Some(logship_config::contract::SIDECAR_SIGNAL_FILE))
            });
            if sets_heartbeat && name != self.name {
                emr = Some(format!(
                    "container {name} sets {}, as EMR's Spark containers do",
                    logship_config::contract::SIDECAR_SIGNAL_FILE
                ));
                break;
            }
        }
        let (termination, note) = match emr {
            Some(why) => (
                Termination::Heartbeat,
                format!("--termination auto chose heartbeat: {why}"),
            ),
            None => (
                Termination::Native,
                "--termination auto chose native (an init container with restartPolicy: Always; Kubernetes >= 1.29): nothing in the pod writes EMR's heartbeat; for an older cluster use --termination wrap".to_string(),
            ),
        };
        let mut resolved = self.clone();
        resolved.termination = termination;
        (resolved, Some(note))
    }

    /// The signal file of wrap mode, next to `heartbeat`.
    pub fn signal_file(heartbeat: &Path) -> PathBuf {
        heartbeat
            .parent()
            .unwrap_or(Path::new("/"))
            .join(paths::SIGNAL_FILE_NAME)
    }
}
