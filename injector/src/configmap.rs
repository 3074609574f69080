//! One ConfigMap with everything a submitter needs, as EMR's job runner makes one per job: the
//! patched driver and executor templates, each role's sidecar config (the templates mount it
//! from this ConfigMap), and the matching spark-defaults.conf.

use serde_json::{Map, Value, json};

use crate::document::{self, DocumentError};
use crate::options::{Role, SidecarOptions};
use crate::patch::{PatchError, Target, config_key, inject};
use crate::sidecar::config_toml;
use crate::spark_conf::{SparkConf, as_properties, spark_conf};

/// Why the ConfigMap cannot be made.
#[derive(Debug, thiserror::Error)]
pub enum ConfigMapError {
    /// An input template.
    #[error(transparent)]
    Document(#[from] DocumentError),
    /// Patching a template.
    #[error("{role} template: {source}")]
    Patch {
        /// driver or executor.
        role: &'static str,
        /// Why.
        source: PatchError,
    },
}

/// The inputs.
#[derive(Debug, Clone)]
pub struct ConfigMapRequest {
    /// The ConfigMap's name (the templates refer to it).
    pub name: String,
    /// Its namespace, if it should say.
    pub namespace: Option<String>,
    /// The driver template to patch (None: an empty pod).
    pub driver: Option<(String, String)>,
    /// The executor template (text, origin).
    pub executor: Option<(String, String)>,
    /// Where the submitter mounts this ConfigMap (for spark-defaults.conf's template paths).
    pub mount_dir: String,
    /// The sidecar; its `config_map` is set to `name`.
    pub options: SidecarOptions,
}

/// Builds the ConfigMap; also returns notes for stderr.
pub fn configmap(req: &ConfigMapRequest) -> Result<(Value, Vec<String>), ConfigMapError> {
    let mut opts = req.options.clone();
    opts.config_map = Some(req.name.clone());
    let mut data = Map::new();
    let mut notes = Vec::new();
    let mut containers = Vec::new();
    // `--termination auto` is decided per template, and the role's config follows it.
    let mut role_opts = Vec::new();
    for (role, input) in [(Role::Driver, &req.driver), (Role::Executor, &req.executor)] {
        let (text, origin) = input.clone().unwrap_or_default();
        let origin = if origin.is_empty() {
            format!("({} template)", role.label())
        } else {
            origin
        };
        let mut pod = document::parse(&text, &origin)?;
        notes.extend(document::validate(&pod, &origin)?);
        role_opts.push(opts.resolved_for(&pod).0);
        notes.extend(
            inject(&mut pod, role, &opts, Target::Template).map_err(|source| ConfigMapError::Patch {
                role: role.label(),
                source,
            })?,
        );
        containers.push(spark_container_name(&pod, &opts, role));
        data.insert(
            template_key(role).into(),
            json!(document::print(&pod, document::Format::Yaml)),
        );
    }
    for (role, opts) in [Role::Driver, Role::Executor].into_iter().zip(&role_opts) {
        let (toml, n) = config_toml(opts, role).map_err(|e| ConfigMapError::Patch {
            role: role.label(),
            source: e.into(),
        })?;
        if role == Role::Driver {
            notes.extend(n);
        }
        data.insert(config_key(role).into(), json!(toml));
    }
    let dir = req.mount_dir.trim_end_matches('/');
    let conf = spark_conf(&SparkConf {
        driver_template: &format!("{dir}/{}", template_key(Role::Driver)),
        executor_template: &format!("{dir}/{}", template_key(Role::Executor)),
        driver_container: &containers[0],
        executor_container: &containers[1],
        event_log_dir: &opts.event_log_dir,
        layout: opts.event_logs,
        log_url: crate::log_links::url_pattern(&opts)
            .map_err(|e| ConfigMapError::Patch {
                role: Role::Executor.label(),
                source: e.into(),
            })?
            .as_deref(),
    });
    data.insert("spark-defaults.conf".into(), json!(as_properties(&conf)));
    let mut metadata = json!({"name": req.name, "labels": {"app.kubernetes.io/managed-by": "logship-inject"}});
    if let Some(ns) = &req.namespace {
        metadata["namespace"] = json!(ns);
    }
    Ok((
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": metadata, "data": data}),
        notes,
    ))
}

/// The data key of a role's template.
pub fn template_key(role: Role) -> &'static str {
    match role {
        Role::Driver => "driver-pod-template.yaml",
        Role::Executor => "executor-pod-template.yaml",
    }
}

/// The Spark container's name in a patched template (what podTemplateContainerName must say).
pub fn spark_container_name(pod: &Value, opts: &SidecarOptions, role: Role) -> String {
    opts.spark_container.clone().unwrap_or_else(|| {
        pod["spec"]["containers"][0]["name"]
            .as_str()
            .unwrap_or(role.default_container())
            .to_string()
    })
}
