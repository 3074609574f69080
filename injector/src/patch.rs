//! Adding the sidecar to a pod (a template, or a pod Spark is creating). Only adds: volumes,
//! mounts and variables the Spark container lacks, the sidecar itself, and in wrap mode the
//! Spark container's `command`. What is there already is reused when it fits and an error when
//! it does not; patching a patched pod gives the same pod.

use logship_config::contract::{
    K8S_SPARK_EVENT_LOG_DIR, K8S_SPARK_LOG_URL_STDERR, K8S_SPARK_LOG_URL_STDOUT, LOGSHIP_CONFIG, LOGSHIP_CONFIG_TOML,
    LOGSHIP_SIGNAL_FILE, SIDECAR_SIGNAL_FILE, SPARK_APPLICATION_ID, SPARK_CONTAINER_ID,
};
use std::path::Path;

use serde_json::{Map, Value, json};

use crate::options::{Role, SidecarOptions, Termination, paths};
use crate::sidecar::{SidecarError, config_toml};

/// Why a pod cannot be patched.
#[derive(Debug, thiserror::Error)]
pub enum PatchError {
    /// Something in the pod is in the way.
    #[error("conflict: {0}")]
    Conflict(String),
    /// The Spark container cannot be found.
    #[error("no Spark container: {0}")]
    NoSparkContainer(String),
    /// A field has a shape no pod has.
    #[error("{path}: {message}")]
    Shape {
        /// The field.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// The sidecar options.
    #[error(transparent)]
    Sidecar(#[from] SidecarError),
}

/// How the Spark container is recognised.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// A pod template, as Spark reads it: `--spark-container`, else the first container, else
    /// a new container with Spark's default name (Spark treats the first one as its own).
    Template,
    /// A pod Spark has built (the webhook): Spark moved its container to the end of the list,
    /// so it is found by `--spark-container`, else Spark's default name, else by its arguments
    /// (`driver ...` / `executor`).
    Pod,
}

/// What the patch did that a user should know about.
pub type Notes = Vec<String>;

/// Patches `pod` for `role`. Returns notes (for stderr or admission warnings).
pub fn inject(pod: &mut Value, role: Role, opts: &SidecarOptions, target: Target) -> Result<Notes, PatchError> {
    let (opts, chosen) = opts.resolved_for(pod);
    let opts = &opts;
    let (config, mut notes) = config_toml(opts, role)?;
    notes.extend(chosen);
    let root = pod.as_object_mut().ok_or_else(|| shape("", "a pod is a mapping"))?;
    let spec = child_object(root, "spec", "spec")?;
    let install_name = format!("{}-install", opts.name);

    // Remove what is replaced: containers asked for, and an earlier logship (put back in place).
    let mut old_sidecar: Option<(&'static str, usize)> = None;
    let mut old_install: Option<usize> = None;
    for list in ["containers", "initContainers"] {
        let Some(items) = spec.get_mut(list) else { continue };
        let items = items
            .as_array_mut()
            .ok_or_else(|| shape(&format!("spec.{list}"), "must be a list"))?;
        let mut i = 0;
        while i < items.len() {
            let name = items[i]
                .get("name")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            if opts.remove_containers.contains(&name) {
                items.remove(i);
                notes.push(format!("removed container {name}"));
                continue;
            }
            if name == opts.name {
                old_sidecar = Some((list, i));
                items.remove(i);
                continue;
            }
            if list == "initContainers" && name == install_name {
                old_install = Some(i);
                items.remove(i);
                continue;
            }
            i += 1;
        }
    }

    let mut volumes = take_array(spec, "volumes")?;
    let mut containers = take_array(spec, "containers")?;
    let spark_index = spark_container(&mut containers, role, opts, target)?;
    let spark = containers[spark_index]
        .as_object_mut()
        .ok_or_else(|| shape(&format!("spec.containers[{spark_index}]"), "must be a mapping"))?;
    let spark_name = spark
        .get("name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    if spark_name == opts.name {
        return Err(PatchError::Conflict(format!(
            "the Spark container is named {:?}, the sidecar's name; choose another with --sidecar-name",
            opts.name
        )));
    }

    // The heartbeat file: what the Spark container already uses, else ours.
    let heartbeat = match opts.termination {
        // (Auto was decided against this pod above.)
        Termination::Native | Termination::Auto => None,
        Termination::Heartbeat | Termination::Wrap => Some(match env_value(spark, SIDECAR_SIGNAL_FILE)? {
            Some(v) => v,
            None => opts.heartbeat_file.display().to_string(),
        }),
    };

    // Directories the two containers share.
    let mut shares: Vec<(String, &str)> = vec![(dir(&opts.container_log_dir), "logship-container-logs")];
    if role == Role::Driver {
        shares.push((dir(&opts.event_log_dir), "logship-event-logs"));
    }
    if let Some(hb) = &heartbeat {
        let parent = Path::new(hb)
            .parent()
            .filter(|p| p.is_absolute() && p != &Path::new("/"))
            .ok_or_else(|| {
                PatchError::Conflict(format!("the heartbeat file {hb:?} must be in a directory (absolute)"))
            })?;
        shares.push((dir(parent), "logship-communicate"));
    }
    let mut sidecar_mounts = Vec::new();
    for (path, default_volume) in &shares {
        if sidecar_mounts.iter().any(|m: &Value| m["mountPath"] == path.as_str()) {
            continue;
        }
        sidecar_mounts.push(share(spark, &spark_name, &mut volumes, path, default_volume)?);
    }
    ensure_volume(&mut volumes, "logship-buffer", json!({"emptyDir": {}}), "emptyDir")?;
    sidecar_mounts.push(json!({"name": "logship-buffer", "mountPath": dir(&opts.buffer_dir)}));
    if let Some(secret) = &opts.presigned_post_secret {
        let name = reuse_or_add(&mut volumes, "logship-presigned-post", "secret", "secretName", secret)?;
        sidecar_mounts.push(json!({"name": name, "mountPath": paths::PRESIGNED_POST_DIR, "readOnly": true}));
    }
    if let Some(cm) = &opts.config_map {
        let name = reuse_or_add(&mut volumes, "logship-config", "configMap", "name", cm)?;
        // One ConfigMap holds both roles' configs; each pod mounts its own as logship.toml.
        let v = volumes
            .iter_mut()
            .find(|v| v["name"] == name.as_str())
            .expect("just added");
        v["configMap"]["items"] = json!([{"key": config_key(role), "path": "logship.toml"}]);
        sidecar_mounts.push(json!({"name": name, "mountPath": paths::CONFIG_DIR, "readOnly": true}));
    }

    // The env contract on the Spark container (only what it lacks).
    let log_dir = dir(&opts.container_log_dir);
    let spark_env = child_array(spark, "env", &format!("container {spark_name}: env"))?;
    add_env(
        spark_env,
        json!({"name": SPARK_CONTAINER_ID, "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}),
    );
    add_env(
        spark_env,
        json!({"name": K8S_SPARK_LOG_URL_STDOUT, "value": format!("{log_dir}/$({SPARK_CONTAINER_ID})/stdout")}),
    );
    add_env(
        spark_env,
        json!({"name": K8S_SPARK_LOG_URL_STDERR, "value": format!("{log_dir}/$({SPARK_CONTAINER_ID})/stderr")}),
    );
    if let Some(hb) = &heartbeat {
        add_env(spark_env, json!({"name": SIDECAR_SIGNAL_FILE, "value": hb}));
    }
    // An executor names where its sidecar writes, for its log links (`log_links`).
    if role == Role::Executor && crate::log_links::url_pattern(opts)?.is_some() {
        for var in crate::log_links::attribute_env() {
            add_env(spark_env, var);
        }
    }

    let signal_file = heartbeat
        .as_ref()
        .map(|hb| SidecarOptions::signal_file(Path::new(hb)).display().to_string());
    let mut init = take_array(spec, "initContainers")?;
    if opts.termination == Termination::Wrap {
        ensure_volume(&mut volumes, "logship-bin", json!({"emptyDir": {}}), "emptyDir")?;
        let mounts = child_array(spark, "volumeMounts", &format!("container {spark_name}: volumeMounts"))?;
        match mounts.iter().find(|m| m["mountPath"] == paths::BIN_DIR) {
            Some(m) if m["name"] == "logship-bin" => {}
            Some(m) => {
                return Err(PatchError::Conflict(format!(
                    "{} in container {spark_name} is volume {}, not logship-bin",
                    paths::BIN_DIR,
                    m["name"]
                )));
            }
            None => mounts.push(json!({"name": "logship-bin", "mountPath": paths::BIN_DIR, "readOnly": true})),
        }
        wrap_command(
            spark,
            &spark_name,
            opts,
            heartbeat.as_deref().unwrap_or_default(),
            signal_file.as_deref().unwrap_or_default(),
        )?;
        let mut install = json!({
            "name": install_name,
            "image": opts.image,
            "args": ["install", paths::BIN],
            "resources": resources(opts),
            "securityContext": security_context(),
            "volumeMounts": [{"name": "logship-bin", "mountPath": paths::BIN_DIR}],
        });
        if let Some(p) = &opts.image_pull_policy {
            install["imagePullPolicy"] = json!(p);
        }
        let at = old_install.unwrap_or(init.len()).min(init.len());
        init.insert(at, install);
    }

    // Files Spark writes (event logs are 0660) must be readable by the sidecar's user: a pod
    // fsGroup makes the shared volumes group-owned and gives every container that group.
    let security = child_object(spec, "securityContext", "spec.securityContext")?;
    if !security.contains_key("fsGroup") {
        security.insert("fsGroup".into(), json!(1000));
        notes.push("set spec.securityContext.fsGroup: 1000 so the sidecar can read what Spark writes".into());
    }

    // The sidecar.
    let mut env = vec![
        json!({"name": SPARK_CONTAINER_ID, "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}),
        json!({"name": "SPARK_ROLE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['spark-role']"}}}),
        json!({"name": SPARK_APPLICATION_ID, "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['spark-app-selector']"}}}),
    ];
    if role == Role::Driver {
        env.push(json!({"name": K8S_SPARK_EVENT_LOG_DIR, "value": dir(&opts.event_log_dir)}));
    }
    env.push(json!({"name": K8S_SPARK_LOG_URL_STDOUT, "value": format!("{log_dir}/$({SPARK_CONTAINER_ID})/stdout")}));
    env.push(json!({"name": K8S_SPARK_LOG_URL_STDERR, "value": format!("{log_dir}/$({SPARK_CONTAINER_ID})/stderr")}));
    if let Some(hb) = &heartbeat {
        env.push(json!({"name": SIDECAR_SIGNAL_FILE, "value": hb}));
    }
    if opts.termination == Termination::Wrap
        && let Some(sf) = &signal_file
    {
        env.push(json!({"name": LOGSHIP_SIGNAL_FILE, "value": sf}));
    }
    if let Some(r) = &opts.region {
        env.push(json!({"name": "AWS_REGION", "value": r}));
    }
    match &opts.config_map {
        Some(_) => env.push(json!({"name": LOGSHIP_CONFIG, "value": paths::CONFIG_FILE})),
        None => env.push(json!({"name": LOGSHIP_CONFIG_TOML, "value": config})),
    }
    let mut sidecar = Map::new();
    sidecar.insert("name".into(), json!(opts.name));
    sidecar.insert("image".into(), json!(opts.image));
    if let Some(p) = &opts.image_pull_policy {
        sidecar.insert("imagePullPolicy".into(), json!(p));
    }
    sidecar.insert("args".into(), json!(["run"]));
    if opts.termination == Termination::Native {
        sidecar.insert("restartPolicy".into(), json!("Always"));
    }
    sidecar.insert("env".into(), Value::Array(env));
    sidecar.insert("resources".into(), resources(opts));
    sidecar.insert("securityContext".into(), security_context());
    sidecar.insert("volumeMounts".into(), Value::Array(sidecar_mounts));
    let sidecar = Value::Object(sidecar);

    match opts.termination {
        Termination::Native | Termination::Auto => {
            let at = match old_sidecar {
                Some(("initContainers", i)) => i.min(init.len()),
                _ => init.len(),
            };
            init.insert(at, sidecar);
        }
        Termination::Heartbeat | Termination::Wrap => {
            // Never first: Spark takes the first container as its own.
            let at = match old_sidecar {
                Some(("containers", i)) if i > spark_index => i.min(containers.len()),
                _ => containers.len(),
            };
            containers.insert(at, sidecar);
        }
    }
    put_array(spec, "volumes", volumes);
    put_array(spec, "initContainers", init);
    put_array(spec, "containers", containers);
    Ok(notes)
}

/// The ConfigMap key of a role's sidecar config.
pub fn config_key(role: Role) -> &'static str {
    match role {
        Role::Driver => "logship-driver.toml",
        Role::Executor => "logship-executor.toml",
    }
}

pub(crate) fn shape(path: &str, message: &str) -> PatchError {
    PatchError::Shape {
        path: if path.is_empty() {
            "(document)".into()
        } else {
            path.to_string()
        },
        message: message.to_string(),
    }
}

fn dir(p: &Path) -> String {
    let s = p.display().to_string();
    if s.len() > 1 {
        s.trim_end_matches('/').to_string()
    } else {
        s
    }
}

fn child_object<'a>(
    m: &'a mut Map<String, Value>,
    key: &str,
    path: &str,
) -> Result<&'a mut Map<String, Value>, PatchError> {
    let v = m.entry(key).or_insert_with(|| json!({}));
    if v.is_null() {
        *v = json!({});
    }
    v.as_object_mut().ok_or_else(|| shape(path, "must be a mapping"))
}

fn child_array<'a>(m: &'a mut Map<String, Value>, key: &str, path: &str) -> Result<&'a mut Vec<Value>, PatchError> {
    let v = m.entry(key).or_insert_with(|| json!([]));
    if v.is_null() {
        *v = json!([]);
    }
    v.as_array_mut().ok_or_else(|| shape(path, "must be a list"))
}

/// Takes a list out of `spec` (put back with `put_array`, in its place, or last when new).
fn take_array(spec: &mut Map<String, Value>, key: &str) -> Result<Vec<Value>, PatchError> {
    match spec.get_mut(key) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(a)) => Ok(std::mem::take(a)),
        Some(_) => Err(shape(&format!("spec.{key}"), "must be a list")),
    }
}

fn put_array(spec: &mut Map<String, Value>, key: &str, items: Vec<Value>) {
    match spec.get_mut(key) {
        Some(v) => *v = Value::Array(items),
        None if items.is_empty() => {}
        None => {
            spec.insert(key.into(), Value::Array(items));
        }
    }
}

/// The index of the Spark container in `containers` (added when a template has none).
fn spark_container(
    containers: &mut Vec<Value>,
    role: Role,
    opts: &SidecarOptions,
    target: Target,
) -> Result<usize, PatchError> {
    let by_name = |name: &str| containers.iter().position(|c| c["name"] == name);
    if let Some(name) = &opts.spark_container {
        return by_name(name).ok_or_else(|| {
            PatchError::NoSparkContainer(format!(
                "--spark-container {name}: the pod has no such container (Spark would then take the first one)"
            ))
        });
    }
    match target {
        Target::Template => {
            if containers.is_empty() {
                containers.push(json!({"name": role.default_container()}));
            }
            Ok(0)
        }
        Target::Pod => by_name(role.default_container())
            .or_else(|| {
                containers
                    .iter()
                    .position(|c| c["args"].get(0).and_then(Value::as_str) == Some(role.label()))
            })
            .ok_or_else(|| {
                PatchError::NoSparkContainer(format!(
                    "no container named {} and none started as `{} ...`; give --spark-container",
                    role.default_container(),
                    role.label()
                ))
            }),
    }
}

/// A literal environment value of a container.
fn env_value(c: &Map<String, Value>, name: &str) -> Result<Option<String>, PatchError> {
    let Some(env) = c.get("env").and_then(Value::as_array) else {
        return Ok(None);
    };
    match env.iter().find(|e| e["name"] == name) {
        None => Ok(None),
        Some(e) => match e.get("value") {
            Some(Value::String(s)) if !s.is_empty() => Ok(Some(s.clone())),
            _ => Err(PatchError::Conflict(format!(
                "{name} on the Spark container is not a plain value; the sidecar must know the path"
            ))),
        },
    }
}

fn add_env(env: &mut Vec<Value>, var: Value) {
    if !env.iter().any(|e| e["name"] == var["name"]) {
        env.push(var);
    }
}

/// Volume kinds whose files a container cannot write.
const READ_ONLY_KINDS: [&str; 4] = ["configMap", "secret", "downwardAPI", "projected"];

fn volume_kind(v: &Value) -> String {
    v.as_object()
        .and_then(|m| m.keys().find(|k| *k != "name").cloned())
        .unwrap_or_else(|| "volume without a source".into())
}

/// Makes `path` a directory both containers see: the Spark container's own volume there, else
/// a new emptyDir. Returns the sidecar's (read-only) mount.
fn share(
    spark: &mut Map<String, Value>,
    spark_name: &str,
    volumes: &mut Vec<Value>,
    path: &str,
    default_volume: &str,
) -> Result<Value, PatchError> {
    let mounts = child_array(spark, "volumeMounts", &format!("container {spark_name}: volumeMounts"))?;
    if let Some(m) = mounts
        .iter()
        .find(|m| m["mountPath"].as_str().map(|p| p.trim_end_matches('/')) == Some(path))
    {
        let name = m["name"].as_str().unwrap_or_default().to_string();
        if m["readOnly"] == true {
            return Err(PatchError::Conflict(format!(
                "{path} is mounted read-only in container {spark_name} (volume {name}); Spark writes there"
            )));
        }
        let kind = volumes
            .iter()
            .find(|v| v["name"] == name.as_str())
            .map(volume_kind)
            .ok_or_else(|| {
                PatchError::Conflict(format!(
                    "{path} in container {spark_name} is volume {name}, which the pod does not define"
                ))
            })?;
        if READ_ONLY_KINDS.contains(&kind.as_str()) {
            return Err(PatchError::Conflict(format!(
                "{path} in container {spark_name} is volume {name}, a {kind}: read-only, Spark cannot write there"
            )));
        }
        let mut mount = json!({"name": name, "mountPath": path, "readOnly": true});
        if let Some(sub) = m.get("subPath") {
            mount["subPath"] = sub.clone();
        }
        return Ok(mount);
    }
    if let Some(m) = mounts.iter().find(|m| m["name"] == default_volume) {
        return Err(PatchError::Conflict(format!(
            "volume {default_volume} is mounted at {} in container {spark_name}, not at {path}",
            m["mountPath"]
        )));
    }
    ensure_volume(volumes, default_volume, json!({"emptyDir": {}}), "emptyDir")?;
    mounts.push(json!({"name": default_volume, "mountPath": path}));
    Ok(json!({"name": default_volume, "mountPath": path, "readOnly": true}))
}

/// Adds volume `name` with `source`, or accepts an existing one of the same `kind`.
fn ensure_volume(volumes: &mut Vec<Value>, name: &str, source: Value, kind: &str) -> Result<(), PatchError> {
    match volumes.iter().find(|v| v["name"] == name) {
        Some(v) if v.get(kind).is_some() => Ok(()),
        Some(v) => Err(PatchError::Conflict(format!(
            "volume {name} already exists and is a {}, not an {kind}",
            volume_kind(v)
        ))),
        None => {
            let mut v = Map::new();
            v.insert("name".into(), json!(name));
            if let Value::Object(s) = source {
                v.extend(s);
            }
            volumes.push(Value::Object(v));
            Ok(())
        }
    }
}

/// A volume of `kind` whose `field` is `value` (a Secret or ConfigMap): reuses one the pod
/// already has (EMR's `emr-container-s3`), else adds `name`. Returns the volume's name.
fn reuse_or_add(
    volumes: &mut Vec<Value>,
    name: &str,
    kind: &str,
    field: &str,
    value: &str,
) -> Result<String, PatchError> {
    if let Some(v) = volumes.iter().find(|v| v[kind][field] == value) {
        return Ok(v["name"].as_str().unwrap_or(name).to_string());
    }
    if let Some(v) = volumes.iter().find(|v| v["name"] == name) {
        return Err(PatchError::Conflict(format!(
            "volume {name} already exists and is {} {}, not {kind} {value}",
            volume_kind(v),
            v[volume_kind(v)][field]
        )));
    }
    volumes.push(json!({"name": name, kind: {field: value}}));
    Ok(name.to_string())
}

/// Wrap mode: the Spark container runs `logship wrap ... -- <its entrypoint>`; Spark sets only
/// `args`, which Kubernetes appends to `command`.
fn wrap_command(
    spark: &mut Map<String, Value>,
    spark_name: &str,
    opts: &SidecarOptions,
    heartbeat: &str,
    signal_file: &str,
) -> Result<(), PatchError> {
    let current: Vec<String> = match spark.get("command") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(a)) => a
            .iter()
            .map(|v| v.as_str().map(str::to_string))
            .collect::<Option<_>>()
            .ok_or_else(|| shape(&format!("container {spark_name}: command"), "must be a list of strings"))?,
        Some(_) => return Err(shape(&format!("container {spark_name}: command"), "must be a list")),
    };
    let original: Vec<String> = if current.first().map(String::as_str) == Some(paths::BIN) {
        // Already wrapped: keep what it wraps.
        match current.iter().position(|a| a == "--") {
            Some(i) => current[i + 1..].to_vec(),
            None => {
                return Err(PatchError::Conflict(format!(
                    "container {spark_name} runs {} without `--`",
                    paths::BIN
                )));
            }
        }
    } else if current.is_empty() {
        vec![opts.entrypoint.clone()]
    } else {
        current
    };
    let mut command: Vec<String> = [
        paths::BIN,
        "wrap",
        "--heartbeat-file",
        heartbeat,
        "--signal-file",
        signal_file,
        "--stdout-file",
        "$(K8S_SPARK_LOG_URL_STDOUT)",
        "--stderr-file",
        "$(K8S_SPARK_LOG_URL_STDERR)",
        "--",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    command.extend(original);
    spark.insert("command".into(), json!(command));
    Ok(())
}

fn resources(opts: &SidecarOptions) -> Value {
    let mut limits = json!({"memory": opts.memory_limit});
    if let Some(c) = &opts.cpu_limit {
        limits["cpu"] = json!(c);
    }
    json!({"requests": {"cpu": opts.cpu_request, "memory": opts.memory_request}, "limits": limits})
}

/// Non-root (EMR's fluentd user), read-only root file system, no capabilities.
fn security_context() -> Value {
    json!({
        "runAsNonRoot": true,
        "runAsUser": 999,
        "runAsGroup": 1000,
        "allowPrivilegeEscalation": false,
        "privileged": false,
        "readOnlyRootFilesystem": true,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    })
}
