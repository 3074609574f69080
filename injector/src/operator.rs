//! Spark Operator resources: the sidecar added to a `SparkApplication` (and a
//! `ScheduledSparkApplication`) of the Kubeflow Spark Operator (`sparkoperator.k8s.io/v1beta2`),
//! and to the pod templates of the Apache Spark Kubernetes Operator's `SparkApplication`
//! (`spark.apache.org`). One resource holds both roles, so both are patched.
//!
//! Each role is patched by the pod patcher ([`crate::patch::inject`]), so a CR gets exactly what a
//! pod template gets. Where the CR has a pod template (`spec.driver.template`, the Apache
//! operator's `podTemplateSpec`), that template is patched. Otherwise the Kubeflow CR's fields
//! are put into a pod for the patch and taken back from it:
//! - the Spark container's `env` and `volumeMounts` go to `spec.<role>.env` / `volumeMounts`;
//! - the other containers become `spec.<role>.sidecars`, the init containers `initContainers`;
//! - volumes go to `spec.volumes` (shared by both roles);
//! - `fsGroup` goes to `spec.<role>.podSecurityContext`;
//! - the event-log settings go to `spec.sparkConf`.
//!
//! Fields the patch does not touch stay where they are, and patching twice changes nothing.

use serde_json::{Map, Value, json};

use crate::options::{Role, SidecarOptions, Termination};
use crate::patch::{Notes, PatchError, Target, inject, shape};

/// What a document is, as far as patching goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resource {
    /// A Pod (or an empty document, an empty pod template).
    Pod,
    /// The Kubeflow Spark Operator's `SparkApplication`.
    KubeflowApplication,
    /// The Kubeflow Spark Operator's `ScheduledSparkApplication` (`spec.template` is an
    /// application's spec).
    KubeflowScheduled,
    /// The Apache Spark Kubernetes Operator's `SparkApplication`.
    ApacheApplication,
    /// Anything else: passed through unchanged.
    Other(String),
}

impl Resource {
    /// What `doc` is, by its `apiVersion` and `kind`.
    pub fn of(doc: &Value) -> Resource {
        let kind = doc.get("kind").and_then(Value::as_str);
        let group = doc
            .get("apiVersion")
            .and_then(Value::as_str)
            .and_then(|v| v.split_once('/'))
            .map(|(g, _)| g);
        match (group, kind) {
            (_, None | Some("Pod")) if !doc.is_null() => Resource::Pod,
            (Some("sparkoperator.k8s.io"), Some("SparkApplication")) => Resource::KubeflowApplication,
            (Some("sparkoperator.k8s.io"), Some("ScheduledSparkApplication")) => Resource::KubeflowScheduled,
            (Some("spark.apache.org"), Some("SparkApplication")) => Resource::ApacheApplication,
            (_, k) => Resource::Other(k.unwrap_or("(none)").to_string()),
        }
    }
}

/// Adds the sidecar to both roles of an operator resource. (With the heartbeat mode, the Spark
/// image must write the heartbeat, as EMR's do; Apache Spark's images do not, and want the
/// native mode.)
pub fn inject_resource(doc: &mut Value, resource: &Resource, opts: &SidecarOptions) -> Result<Notes, PatchError> {
    let spec = doc
        .as_object_mut()
        .ok_or_else(|| shape("", "must be a mapping"))?
        .entry("spec")
        .or_insert_with(|| json!({}));
    match resource {
        Resource::KubeflowApplication => kubeflow(spec, opts, "spec"),
        Resource::KubeflowScheduled => {
            let template = spec
                .as_object_mut()
                .ok_or_else(|| shape("spec", "must be a mapping"))?
                .entry("template")
                .or_insert_with(|| json!({}));
            kubeflow(template, opts, "spec.template")
        }
        Resource::ApacheApplication => apache(spec, opts),
        Resource::Pod | Resource::Other(_) => Ok(Vec::new()),
    }
}

/// The event-log settings of the driver's sidecar and the executors' log links, as `sparkConf`
/// entries.
fn event_log_conf(opts: &SidecarOptions) -> Result<Vec<(String, String)>, PatchError> {
    let mut v = vec![
        ("spark.eventLog.enabled".into(), "true".into()),
        (
            "spark.eventLog.dir".into(),
            format!("file://{}", opts.event_log_dir.display()),
        ),
    ];
    if let Some(p) = crate::log_links::url_pattern(opts)? {
        v.extend(crate::log_links::spark_conf(&p));
    }
    Ok(v)
}

/// Sets `sparkConf` entries (a map of strings), noting the ones that replace another value.
fn set_spark_conf(
    spec: &mut Map<String, Value>,
    path: &str,
    entries: &[(String, String)],
    notes: &mut Notes,
) -> Result<(), PatchError> {
    let conf = spec
        .entry("sparkConf")
        .or_insert_with(|| json!({}))
        .as_object_mut()
        .ok_or_else(|| shape(&format!("{path}.sparkConf"), "must be a mapping"))?;
    for (k, v) in entries {
        match conf.get(k).and_then(Value::as_str) {
            Some(old) if old == v => {}
            Some(old) => {
                notes.push(format!(
                    "{path}.sparkConf: {k} was {old:?}, now {v:?} (where the sidecar reads)"
                ));
                conf.insert(k.clone(), json!(v));
            }
            None => {
                conf.insert(k.clone(), json!(v));
            }
        }
    }
    Ok(())
}

/// The Kubeflow operator's `SparkApplicationSpec` at `path`.
fn kubeflow(spec: &mut Value, opts: &SidecarOptions, path: &str) -> Result<Notes, PatchError> {
    let spec = spec.as_object_mut().ok_or_else(|| shape(path, "must be a mapping"))?;
    let mut notes = Vec::new();
    for role in [Role::Driver, Role::Executor] {
        let key = role.label();
        let role_path = format!("{path}.{key}");
        // Taken out in place (a null left behind), so it goes back where it was.
        let mut pod_spec = spec
            .get_mut(key)
            .map(Value::take)
            .filter(|v| !v.is_null())
            .unwrap_or_else(|| json!({}));
        let role_spec = pod_spec
            .as_object_mut()
            .ok_or_else(|| shape(&role_path, "must be a mapping"))?;
        if let Some(template) = role_spec.get_mut("template") {
            notes.extend(patch_template(template, role, opts, &format!("{role_path}.template"))?);
            spec.insert(key.to_string(), pod_spec);
            continue;
        }
        if opts.termination == Termination::Wrap {
            return Err(PatchError::Conflict(format!(
                "{role_path}: wrap mode changes the Spark container's command, which a SparkApplication cannot say; use --termination native (Kubernetes >= 1.29) or heartbeat, or give the application a pod template ({role_path}.template)"
            )));
        }
        // The role as a pod: the Spark container first (its env and mounts), then the sidecars.
        let spark_name = opts
            .spark_container
            .clone()
            .unwrap_or_else(|| role.default_container().to_string());
        let mut spark = Map::new();
        spark.insert("name".into(), json!(spark_name));
        let mut take = |field: &str| role_spec.get_mut(field).map(Value::take).filter(|v| !v.is_null());
        for field in ["env", "volumeMounts"] {
            if let Some(v) = take(field) {
                spark.insert(field.into(), v);
            }
        }
        let mut containers = vec![Value::Object(spark)];
        if let Some(Value::Array(sidecars)) = take("sidecars") {
            containers.extend(sidecars);
        }
        let mut pod_fields = Map::new();
        pod_fields.insert("containers".into(), Value::Array(containers));
        if let Some(init) = take("initContainers") {
            pod_fields.insert("initContainers".into(), init);
        }
        if let Some(sc) = take("podSecurityContext") {
            pod_fields.insert("securityContext".into(), sc);
        }
        if let Some(v) = spec.get("volumes") {
            pod_fields.insert("volumes".into(), v.clone());
        }
        let mut pod = json!({"apiVersion": "v1", "kind": "Pod", "spec": Value::Object(pod_fields)});
        let mut role_notes = inject(&mut pod, role, opts, Target::Template)?;
        notes.extend(
            role_notes
                .drain(..)
                .map(|n| n.replace("spec.securityContext", &format!("{role_path}.podSecurityContext"))),
        );
        // Back into the CR.
        let Value::Object(mut pod_spec_out) = pod["spec"].take() else {
            return Err(shape(&role_path, "the patch did not give a pod"));
        };
        let Some(Value::Array(mut containers)) = pod_spec_out.remove("containers") else {
            return Err(shape(&role_path, "the patch gave no containers"));
        };
        let at = containers
            .iter()
            .position(|c| c["name"] == spark_name.as_str())
            .ok_or_else(|| shape(&role_path, "the Spark container went missing"))?;
        let Value::Object(mut spark) = containers.remove(at) else {
            return Err(shape(&role_path, "the Spark container is not a mapping"));
        };
        for field in ["env", "volumeMounts"] {
            if let Some(v) = spark.remove(field) {
                role_spec.insert(field.into(), v);
            }
        }
        if let Some((k, _)) = spark.iter().find(|(k, _)| *k != "name") {
            return Err(shape(
                &role_path,
                &format!("the patch changed the Spark container's {k}, which a SparkApplication cannot carry"),
            ));
        }
        if !containers.is_empty() {
            role_spec.insert("sidecars".into(), Value::Array(containers));
        }
        for (field, to) in [
            ("initContainers", "initContainers"),
            ("securityContext", "podSecurityContext"),
        ] {
            if let Some(v) = pod_spec_out.remove(field).filter(|v| !is_empty(v)) {
                role_spec.insert(to.into(), v);
            }
        }
        if let Some(Value::Array(volumes)) = pod_spec_out.remove("volumes") {
            merge_volumes(spec, volumes, path)?;
        }
        if let Some((k, _)) = pod_spec_out.iter().find(|(_, v)| !is_empty(v)) {
            return Err(shape(
                &role_path,
                &format!("the patch set the pod's {k}, which a SparkApplication cannot carry"),
            ));
        }
        // Fields taken out and not given back (an empty list) leave no null behind.
        if let Value::Object(m) = &mut pod_spec {
            m.retain(|_, v| !v.is_null());
        }
        spec.insert(key.to_string(), pod_spec);
    }
    set_spark_conf(spec, path, &event_log_conf(opts)?, &mut notes)?;
    if opts.termination == Termination::Heartbeat {
        notes.push(format!(
            "{path}: --termination heartbeat needs a Spark image that touches the heartbeat file (EMR's do); with Apache Spark's images use --termination native (Kubernetes >= 1.29)"
        ));
    }
    Ok(notes)
}

fn is_empty(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Array(a) => a.is_empty(),
        Value::Object(m) => m.is_empty(),
        _ => false,
    }
}

/// Adds `volumes` to `spec.volumes`: one list for both roles, so a name must mean one volume.
fn merge_volumes(spec: &mut Map<String, Value>, volumes: Vec<Value>, path: &str) -> Result<(), PatchError> {
    let list = spec
        .entry("volumes")
        .or_insert_with(|| json!([]))
        .as_array_mut()
        .ok_or_else(|| shape(&format!("{path}.volumes"), "must be a list"))?;
    for v in volumes {
        match list.iter().find(|old| old["name"] == v["name"]) {
            Some(old) if *old == v => {}
            Some(old) => {
                return Err(PatchError::Conflict(format!(
                    "{path}.volumes: {} is {old} for one role and {v} for the other; the roles share one volume list",
                    v["name"]
                )));
            }
            None => list.push(v),
        }
    }
    Ok(())
}

/// A `PodTemplateSpec` (`{metadata, spec}`) patched as a pod template of `role`.
fn patch_template(template: &mut Value, role: Role, opts: &SidecarOptions, path: &str) -> Result<Notes, PatchError> {
    let t = template
        .as_object_mut()
        .ok_or_else(|| shape(path, "must be a mapping"))?;
    let mut pod = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": t.remove("metadata").unwrap_or_else(|| json!({})),
        "spec": t.remove("spec").unwrap_or_else(|| json!({})),
    });
    let notes = inject(&mut pod, role, opts, Target::Template)?;
    let Value::Object(mut pod) = pod else {
        return Err(shape(path, "the patch did not give a pod"));
    };
    for field in ["metadata", "spec"] {
        if let Some(v) = pod.remove(field).filter(|v| !is_empty(v) || field == "spec") {
            t.insert(field.into(), v);
        }
    }
    Ok(notes.into_iter().map(|n| format!("{path}: {n}")).collect())
}

/// The Apache operator's `SparkApplicationSpec`: its pod templates, and `sparkConf` so Spark
/// finds its container in them.
fn apache(spec: &mut Value, opts: &SidecarOptions) -> Result<Notes, PatchError> {
    let spec = spec.as_object_mut().ok_or_else(|| shape("spec", "must be a mapping"))?;
    let mut notes = Vec::new();
    let mut conf = event_log_conf(opts)?;
    for (role, key) in [(Role::Driver, "driverSpec"), (Role::Executor, "executorSpec")] {
        let path = format!("spec.{key}.podTemplateSpec");
        let role_spec = spec
            .entry(key)
            .or_insert_with(|| json!({}))
            .as_object_mut()
            .ok_or_else(|| shape(&format!("spec.{key}"), "must be a mapping"))?;
        let template = role_spec.entry("podTemplateSpec").or_insert_with(|| json!({}));
        notes.extend(patch_template(template, role, opts, &path)?);
        let name = template["spec"]["containers"][0]["name"]
            .as_str()
            .unwrap_or(role.default_container())
            .to_string();
        conf.push((
            format!("spark.kubernetes.{}.podTemplateContainerName", role.label()),
            name,
        ));
    }
    set_spark_conf(spec, "spec", &conf, &mut notes)?;
    Ok(notes)
}
