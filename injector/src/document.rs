//! Reading and writing pod documents. A pod is patched as an ordered JSON tree, so every field of
//! the input comes out in its place, including fields this tool does not know; the typed
//! Kubernetes model (k8s-openapi) only validates it.

use serde_json::Value;

/// Why a document cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum DocumentError {
    /// Not YAML or JSON.
    #[error("{origin}: not a YAML or JSON document: {message}")]
    Syntax {
        /// The file (or "stdin", "request").
        origin: String,
        /// The parser's message (with line and column).
        message: String,
    },
    /// Not a Pod.
    #[error("{origin}: not a Pod (kind: {kind})")]
    NotAPod {
        /// The file.
        origin: String,
        /// What it is.
        kind: String,
    },
    /// A field has the wrong shape for a Pod.
    #[error("{origin}: {path}: {message}")]
    Invalid {
        /// The file.
        origin: String,
        /// The field, e.g. `spec.containers[1].env[0].valueFrom`.
        path: String,
        /// What is wrong.
        message: String,
    },
}

/// The output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Format {
    /// YAML (as pod templates are usually written).
    #[default]
    Yaml,
    /// JSON.
    Json,
}

/// Parses YAML (JSON is YAML too) into an ordered tree. An empty document is an empty pod.
pub fn parse(text: &str, origin: &str) -> Result<Value, DocumentError> {
    if text.trim().is_empty() {
        return Ok(serde_json::json!({"apiVersion": "v1", "kind": "Pod"}));
    }
    let v: Value = serde_yaml_ng::from_str(text).map_err(|e| DocumentError::Syntax {
        origin: origin.to_string(),
        message: e.to_string(),
    })?;
    match &v {
        Value::Object(m) => {
            if let Some(kind) = m.get("kind")
                && kind != "Pod"
            {
                return Err(DocumentError::NotAPod {
                    origin: origin.to_string(),
                    kind: kind.to_string(),
                });
            }
        }
        Value::Null => return Ok(serde_json::json!({"apiVersion": "v1", "kind": "Pod"})),
        other => {
            return Err(DocumentError::NotAPod {
                origin: origin.to_string(),
                kind: format!("a {} instead of a mapping", type_name(other)),
            });
        }
    }
    Ok(v)
}

/// Parses every document of a YAML stream (`---` between them), in order, whatever their kind:
/// what is patched and what passes through is the caller's choice. An empty input is one empty
/// pod; empty documents between separators are dropped.
pub fn parse_all(text: &str, origin: &str) -> Result<Vec<Value>, DocumentError> {
    use serde::Deserialize;
    if text.trim().is_empty() {
        return Ok(vec![serde_json::json!({"apiVersion": "v1", "kind": "Pod"})]);
    }
    let mut docs = Vec::new();
    for (i, d) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        // The first document is named as the file; later ones by their number too.
        let origin = if i == 0 {
            origin.to_string()
        } else {
            format!("{origin} (document {})", i + 1)
        };
        let v = Value::deserialize(d).map_err(|e| DocumentError::Syntax {
            origin: origin.clone(),
            message: e.to_string(),
        })?;
        match v {
            Value::Null => {}
            Value::Object(_) => docs.push(v),
            other => {
                return Err(DocumentError::NotAPod {
                    origin,
                    kind: format!("a {} instead of a mapping", type_name(&other)),
                });
            }
        }
    }
    if docs.is_empty() {
        docs.push(serde_json::json!({"apiVersion": "v1", "kind": "Pod"}));
    }
    Ok(docs)
}

/// Prints several documents: YAML separated by `---`, or one JSON `List`.
pub fn print_all(docs: &[Value], format: Format) -> String {
    match (docs, format) {
        ([one], _) => print(one, format),
        (_, Format::Yaml) => docs.iter().map(|d| print(d, format)).collect::<Vec<_>>().join("---\n"),
        (_, Format::Json) => print(
            &serde_json::json!({"apiVersion": "v1", "kind": "List", "items": docs}),
            format,
        ),
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "list",
        Value::Object(_) => "mapping",
    }
}

/// Checks `pod` against the typed Kubernetes model and returns notes for what Spark accepts but
/// the API server would not take as written (a number where a string belongs, such as EMR's
/// `value: 0.9`: Spark's client turns it into a string). Quantities written as numbers are
/// fine for both and pass silently. Anything else wrong is an error naming the field.
pub fn validate(pod: &Value, origin: &str) -> Result<Vec<String>, DocumentError> {
    let mut copy = pod.clone();
    let mut notes = Vec::new();
    // Each round fixes one scalar in the copy; a pod has few.
    for _ in 0..1000 {
        let err = match serde_path_to_error::deserialize::<_, k8s_openapi::api::core::v1::Pod>(&copy) {
            Ok(_) => return Ok(notes),
            Err(e) => e,
        };
        let path = err.path().to_string();
        let message = err.inner().to_string();
        let scalar_for_string = message.starts_with("invalid type:") && message.ends_with("expected a string");
        let slot = if scalar_for_string {
            lookup_mut(&mut copy, &path)
        } else {
            None
        };
        match slot {
            Some(v @ (Value::Number(_) | Value::Bool(_))) => {
                let text = match &*v {
                    Value::Number(n) => n.to_string(),
                    other => other.to_string(),
                };
                if !is_quantity(&path) {
                    notes.push(format!(
                        "{origin}: {path}: {text} is not a string; Spark sends it as \"{text}\" (quote it for kubectl)"
                    ));
                }
                *v = Value::String(text);
            }
            _ => {
                return Err(DocumentError::Invalid {
                    origin: origin.to_string(),
                    path,
                    message,
                });
            }
        }
    }
    Err(DocumentError::Invalid {
        origin: origin.to_string(),
        path: String::new(),
        message: "too many fields of the wrong type".into(),
    })
}

/// Quantities (`cpu: 1`, `divisor: 1`) may be numbers in Kubernetes.
fn is_quantity(path: &str) -> bool {
    path.ends_with(".divisor")
        || path.contains(".limits.")
        || path.contains(".requests.")
        || path.contains(".overhead.")
        || path.ends_with(".sizeLimit")
        || path.ends_with(".storage")
}

/// The value at a serde_path_to_error path such as `spec.containers[1].env[8].value`.
fn lookup_mut<'a>(root: &'a mut Value, path: &str) -> Option<&'a mut Value> {
    let mut cur = root;
    for part in path.split('.') {
        let (name, indices) = match part.find('[') {
            Some(i) => (&part[..i], &part[i..]),
            None => (part, ""),
        };
        if !name.is_empty() {
            cur = cur.get_mut(name)?;
        }
        for idx in indices.split('[').filter(|s| !s.is_empty()) {
            let n: usize = idx.trim_end_matches(']').parse().ok()?;
            cur = cur.get_mut(n)?;
        }
    }
    Some(cur)
}

/// Prints a document in `format`, ending with a newline.
pub fn print(v: &Value, format: Format) -> String {
    match format {
        Format::Yaml => serde_yaml_ng::to_string(v).unwrap_or_else(|e| format!("# cannot print: {e}\n")),
        Format::Json => {
            let mut s = serde_json::to_string_pretty(v).unwrap_or_default();
            s.push('\n');
            s
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_where_strings_belong_are_noted_and_quantities_pass() {
        let pod = parse(
            "kind: Pod\nspec:\n  containers:\n  - name: a\n    env:\n    - name: X\n      value: 0.9\n    resources:\n      limits:\n        cpu: 1\n",
            "t.yaml",
        )
        .unwrap();
        let notes = validate(&pod, "t.yaml").unwrap();
        assert_eq!(notes.len(), 1, "{notes:?}");
        assert!(notes[0].contains("spec.containers[0].env[0].value: 0.9"), "{notes:?}");
    }

    #[test]
    fn a_wrong_shape_names_the_field() {
        let pod = parse("kind: Pod\nspec:\n  containers:\n  - name: a\n    env: {}\n", "t.yaml").unwrap();
        let e = validate(&pod, "t.yaml").unwrap_err().to_string();
        assert!(
            e.starts_with("t.yaml: spec.containers[0].env: invalid type: map"),
            "{e}"
        );
        let e = parse("kind: Deployment\n", "d.yaml").unwrap_err().to_string();
        assert_eq!(e, "d.yaml: not a Pod (kind: \"Deployment\")");
    }
}
