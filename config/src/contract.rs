//! The names the sidecar, the Spark container and the injector agree on: environment variables
//! of the pod contract (EMR on EKS's, and logship's own). One place, so the daemon, the fluentd
//! translation and the injector cannot drift apart.

/// The heartbeat file the Spark container touches every few seconds (EMR's name for it).
pub const SIDECAR_SIGNAL_FILE: &str = "SIDECAR_SIGNAL_FILE";
/// The file `logship wrap` writes (with the exit code) when the Spark container's command ends.
pub const LOGSHIP_SIGNAL_FILE: &str = "LOGSHIP_SIGNAL_FILE";
/// A native config file for `logship run`.
pub const LOGSHIP_CONFIG: &str = "LOGSHIP_CONFIG";
/// A native config as TOML text, for a pod spec that carries its config in its environment.
pub const LOGSHIP_CONFIG_TOML: &str = "LOGSHIP_CONFIG_TOML";
/// The directory Spark writes event logs to, as the pod sees it.
pub const K8S_SPARK_EVENT_LOG_DIR: &str = "K8S_SPARK_EVENT_LOG_DIR";
/// The Spark application id (`spark-…`), set by EMR and by the injector from the pod's labels.
pub const SPARK_APPLICATION_ID: &str = "SPARK_APPLICATION_ID";
/// The Spark container's id within the application (the pod name, in EMR's layout).
pub const SPARK_CONTAINER_ID: &str = "SPARK_CONTAINER_ID";
/// Where the Spark container's stdout is written.
pub const K8S_SPARK_LOG_URL_STDOUT: &str = "K8S_SPARK_LOG_URL_STDOUT";
/// Where the Spark container's stderr is written.
pub const K8S_SPARK_LOG_URL_STDERR: &str = "K8S_SPARK_LOG_URL_STDERR";
