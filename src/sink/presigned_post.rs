//! S3 uploads through a presigned POST (EMR on EKS: `/var/emr-container/s3/presigned-post`).
//!
//! The file holds what boto3's `generate_presigned_post` returns: `{"url": ..., "fields": {...}}`.
//! It is read again before every upload, by path, so a Secret refreshed by the kubelet (an atomic
//! swap of the `..data` symlink) is picked up at once. Before uploading, the policy is decoded and
//! checked locally (expiry with a margin for clock skew, the key conditions, the size range,
//! every form field covered), so a mismatch is a clear message naming the condition rather than
//! an opaque 403. Such a mismatch, and a 403 from S3, mean "wait for a valid file": the chunk is
//! kept and tried again, never dropped.
//!
//! The object key is sent in the `key` field (allowed by an `eq` or `starts-with` condition; a
//! policy made for `prefix/${filename}` has `starts-with prefix/`). The chunk file is streamed as
//! the last field, with its length known, so memory stays bounded. Nothing secret (signature,
//! security token, credential) is ever logged or put in an error message.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use base64::Engine;
use serde::{Deserialize, Serialize};

use super::DeliveryError;

/// Why a presigned POST cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum PostError {
    /// The file cannot be read.
    #[error("cannot read presigned POST file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The file is not the expected JSON.
    #[error("presigned POST file {path} is not {{\"url\": ..., \"fields\": {{...}}}} JSON: {message}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The policy field cannot be decoded.
    #[error("presigned POST file {path}: field `policy` is not a base64 JSON POST policy: {message}")]
    Policy {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The policy has expired (with the margin for clock skew).
    #[error("presigned POST file {path}: {message}")]
    Expired {
        /// The file.
        path: PathBuf,
        /// When, and what the clock says.
        message: String,
    },
    /// The policy forbids this upload.
    #[error("presigned POST file {path}: {message}")]
    Refused {
        /// The file.
        path: PathBuf,
        /// The condition that fails.
        message: String,
    },
}

/// The content of a presigned POST file.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PresignedPost {
    /// The form's action: the bucket URL.
    pub url: String,
    /// The form fields (key, policy, x-amz-*).
    pub fields: BTreeMap<String, String>,
}

/// One condition of a POST policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Condition {
    /// The field must equal the value.
    Eq {
        /// Field name, lower case, without `$`.
        field: String,
        /// The value the field must have.
        value: String,
    },
    /// The field must start with the prefix (empty: anything).
    StartsWith {
        /// Field name, lower case, without `$`.
        field: String,
        /// The prefix every key must start with (the POST's reach in the bucket).
        prefix: String,
    },
    /// The file's size must be within [min, max].
    ContentLengthRange {
        /// Inclusive minimum.
        min: u64,
        /// Inclusive maximum.
        max: u64,
    },
}

/// A decoded POST policy.
#[derive(Debug, Clone)]
pub struct Policy {
    /// When it stops being accepted.
    pub expiration: chrono::DateTime<chrono::Utc>,
    /// Its conditions, checked before each upload so a refusal is explained without sending the body.
    pub conditions: Vec<Condition>,
}

/// Fields S3 does not require a condition for: the signature fields of SigV4 and of the older
/// SigV2 form (`AWSAccessKeyId`, `signature`, which boto3 still makes in some setups), the policy
/// itself, and `x-ignore-*`.
fn exempt(field: &str) -> bool {
    matches!(
        field,
        "x-amz-signature" | "file" | "policy" | "awsaccesskeyid" | "signature"
    ) || field.starts_with("x-ignore-")
}

impl PresignedPost {
    /// Reads and parses the file.
    pub fn load(path: &Path) -> Result<PresignedPost, PostError> {
        let bytes = std::fs::read(path).map_err(|source| PostError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let post: PresignedPost = serde_json::from_slice(&bytes).map_err(|e| PostError::Format {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        if !post.fields.contains_key("key") {
            return Err(PostError::Format {
                path: path.to_path_buf(),
                message: "fields has no `key`".into(),
            });
        }
        Ok(post)
    }

    /// Decodes the `policy` field.
    pub fn policy(&self, path: &Path) -> Result<Policy, PostError> {
        let err = |message: String| PostError::Policy {
            path: path.to_path_buf(),
            message,
        };
        let b64 = self
            .fields
            .get("policy")
            .ok_or_else(|| err("there is no `policy` field".into()))?;
        let json = base64::engine::general_purpose::STANDARD
            .decode(b64.trim())
            .map_err(|e| err(format!("base64: {e}")))?;
        let raw: serde_json::Value = serde_json::from_slice(&json).map_err(|e| err(format!("JSON: {e}")))?;
        let expiration = raw
            .get("expiration")
            .and_then(|v| v.as_str())
            .ok_or_else(|| err("no `expiration`".into()))?;
        let expiration = chrono::DateTime::parse_from_rfc3339(expiration)
            .map_err(|e| err(format!("expiration {expiration:?}: {e}")))?
            .with_timezone(&chrono::Utc);
        let mut conditions = Vec::new();
        for c in raw
            .get("conditions")
            .and_then(|v| v.as_array())
            .ok_or_else(|| err("no `conditions` array".into()))?
        {
            conditions.push(parse_condition(c).ok_or_else(|| err(format!("condition {c} is not understood")))?);
        }
        Ok(Policy { expiration, conditions })
    }

    /// The bucket the policy is for, from its `bucket` condition.
    pub fn bucket(&self, policy: &Policy) -> Option<String> {
        policy.conditions.iter().find_map(|c| match c {
            Condition::Eq { field, value } if field == "bucket" => Some(value.clone()),
            _ => None,
        })
    }

    /// What keys the policy allows, for messages: `exactly K`, `under P`, or `any key`.
    pub fn key_scope(&self, policy: &Policy) -> String {
        for c in &policy.conditions {
            match c {
                Condition::Eq { field, value } if field == "key" => return format!("exactly {value:?}"),
                Condition::StartsWith { field, prefix } if field == "key" => {
                    return format!("keys starting with {prefix:?}");
                }
                _ => {}
            }
        }
        "any key".into()
    }

    /// The form fields to send for `key` (the file's fields, with `key` replaced).
    pub fn form_fields(&self, key: &str) -> Vec<(String, String)> {
        self.fields
            .iter()
            .map(|(k, v)| {
                if k.eq_ignore_ascii_case("key") {
                    (k.clone(), key.to_string())
                } else {
                    (k.clone(), v.clone())
                }
            })
            .collect()
    }

    /// Checks locally what S3 would check: expiry (with `margin`), key, size, coverage of every
    /// field sent. Names the condition that fails; returns the decoded policy.
    pub fn check(
        &self,
        path: &Path,
        key: &str,
        len: u64,
        now: SystemTime,
        margin: Duration,
    ) -> Result<Policy, PostError> {
        let refused = |message: String| PostError::Refused {
            path: path.to_path_buf(),
            message,
        };
        let policy = self.policy(path)?;
        let now: chrono::DateTime<chrono::Utc> = now.into();
        let margin = chrono::Duration::from_std(margin).unwrap_or_default();
        if now + margin >= policy.expiration {
            return Err(PostError::Expired {
                path: path.to_path_buf(),
                message: format!(
                    "policy expired at {} (now {}, margin {}s); waiting for a refreshed file",
                    policy.expiration.to_rfc3339(),
                    now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                    margin.num_seconds()
                ),
            });
        }
        let fields = self.form_fields(key);
        for c in &policy.conditions {
            match c {
                Condition::ContentLengthRange { min, max } => {
                    if len < *min || len > *max {
                        return Err(refused(format!(
                            "condition content-length-range [{min}, {max}] refuses a {len}-byte object (key {key:?})"
                        )));
                    }
                }
                Condition::Eq { field, value } => {
                    if let Some(sent) = sent_value(&fields, field)
                        && sent != *value
                    {
                        return Err(refused(format!(
                            "condition {{\"{field}\": {value:?}}} refuses {}",
                            shown(field, &sent)
                        )));
                    }
                }
                Condition::StartsWith { field, prefix } => {
                    if let Some(sent) = sent_value(&fields, field)
                        && !sent.starts_with(prefix.as_str())
                    {
                        return Err(refused(format!(
                            "condition [\"starts-with\", \"${field}\", {prefix:?}] refuses {}",
                            shown(field, &sent)
                        )));
                    }
                }
            }
        }
        for (name, _) in &fields {
            let lower = name.to_ascii_lowercase();
            if exempt(&lower) {
                continue;
            }
            let covered = policy.conditions.iter().any(|c| match c {
                Condition::Eq { field, .. } | Condition::StartsWith { field, .. } => *field == lower,
                Condition::ContentLengthRange { .. } => false,
            });
            if !covered {
                return Err(refused(format!(
                    "form field `{name}` is not covered by any policy condition"
                )));
            }
        }
        Ok(policy)
    }
}

fn sent_value(fields: &[(String, String)], field: &str) -> Option<String> {
    fields
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(field))
        .map(|(_, v)| v.clone())
}

/// Whether a (lower-case) field carries a secret or part of the signing identity.
fn is_secret(field: &str) -> bool {
    ["signature", "token", "credential", "accesskey"]
        .iter()
        .any(|s| field.contains(s))
}

/// A field's value for a message, hiding anything secret.
fn shown(field: &str, value: &str) -> String {
    if is_secret(field) {
        format!("the `{field}` field (value hidden)")
    } else {
        format!("{field} {value:?}")
    }
}

fn parse_condition(c: &serde_json::Value) -> Option<Condition> {
    if let Some(obj) = c.as_object() {
        let (k, v) = obj.iter().next()?;
        return Some(Condition::Eq {
            field: k.trim_start_matches('$').to_ascii_lowercase(),
            value: v.as_str()?.to_string(),
        });
    }
    let arr = c.as_array()?;
    let op = arr.first()?.as_str()?.to_ascii_lowercase();
    match op.as_str() {
        "eq" | "starts-with" => {
            let field = arr.get(1)?.as_str()?.trim_start_matches('$').to_ascii_lowercase();
            let value = arr.get(2)?.as_str()?.to_string();
            Some(if op == "eq" {
                Condition::Eq { field, value }
            } else {
                Condition::StartsWith { field, prefix: value }
            })
        }
        "content-length-range" => {
            let num = |v: &serde_json::Value| v.as_u64().or_else(|| v.as_str().and_then(|s| s.parse().ok()));
            Some(Condition::ContentLengthRange {
                min: num(arr.get(1)?)?,
                max: num(arr.get(2)?)?,
            })
        }
        _ => None,
    }
}

/// Uploads `file` (`len` bytes) to `key` with the form from `post_path`. Re-reads the file first.
pub async fn upload(
    client: &reqwest::Client,
    post_path: &Path,
    key: &str,
    file: &Path,
    len: u64,
    content_type: Option<&str>,
    margin: Duration,
) -> Result<(), DeliveryError> {
    let credentials = |e: PostError| DeliveryError::Credentials(e.to_string());
    let post = PresignedPost::load(post_path).map_err(credentials)?;
    let policy = post
        .check(post_path, key, len, SystemTime::now(), margin)
        .map_err(|e| match e {
            // Expired: the kubelet brings a refreshed file; the chunk waits for it.
            PostError::Expired { .. } => credentials(e),
            // A key, size or field the policy does not allow: a refreshed file allows no more.
            _ => DeliveryError::Refused(e.to_string()),
        })?;
    let mut form = reqwest::multipart::Form::new();
    for (k, v) in post.form_fields(key) {
        form = form.text(k, v);
    }
    if let Some(ct) = content_type
        && !post.fields.keys().any(|k| k.eq_ignore_ascii_case("content-type"))
    {
        // Only when the policy allows it: an uncovered field would be refused by S3.
        if policy.conditions.iter().any(|c| {
            matches!(c, Condition::Eq { field, .. } | Condition::StartsWith { field, .. } if field == "content-type")
        }) {
            form = form.text("Content-Type", ct.to_string());
        }
    }
    let body = reqwest::Body::wrap(super::file_body::FileBody::new(file, 0, len));
    let name = key.rsplit('/').next().unwrap_or(key).to_string();
    let part = reqwest::multipart::Part::stream_with_length(body, len).file_name(name);
    form = form.part("file", part);
    let resp = client
        .post(&post.url)
        .multipart(form)
        .send()
        .await
        .map_err(|e| DeliveryError::Retryable(format!("POST to {} failed: {}", post.url, without_url(&e))))?;
    let status = resp.status();
    if matches!(status.as_u16(), 200 | 201 | 204) {
        return Ok(());
    }
    let body = resp.text().await.unwrap_or_default();
    let detail = s3_error_summary(&body);
    let msg = format!("POST {key:?} to {}: HTTP {status}: {detail}", post.url);
    Err(match status.as_u16() {
        // Expired (S3's clock is ahead of ours), or a signature made before the Secret was
        // refreshed: a refreshed file fixes it.
        403 if detail.contains("xpired") || detail.contains("ExpiredToken") => {
            DeliveryError::Credentials(format!("{msg}; re-reading {} and trying again", post_path.display()))
        }
        403 | 404 => DeliveryError::Refused(format!("{msg}; re-reading {} and trying again", post_path.display())),
        400 if detail.contains("EntityTooLarge")
            || detail.contains("EntityTooSmall")
            || detail.contains("InvalidPolicyDocument") =>
        {
            DeliveryError::Refused(format!("{msg}; a presigned POST that allows it may still come"))
        }
        408 | 429 | 500..=599 => DeliveryError::Retryable(msg),
        _ => DeliveryError::Permanent(msg),
    })
}

/// The error's text without the request URL (which could carry query credentials elsewhere).
fn without_url(e: &reqwest::Error) -> String {
    let s = super::error_chain(e);
    match e.url() {
        Some(url) => s.replace(url.as_str(), "<url>"),
        None => s,
    }
}

/// `Code: Message` from an S3 XML error body (never the whole body: it may echo request data).
pub fn s3_error_summary(body: &str) -> String {
    let tag = |name: &str| {
        let open = format!("<{name}>");
        let close = format!("</{name}>");
        let start = body.find(&open)? + open.len();
        let end = start + body[start..].find(&close)?;
        Some(body[start..end].to_string())
    };
    match (tag("Code"), tag("Message")) {
        (Some(c), Some(m)) => format!("{c}: {m}"),
        (Some(c), None) => c,
        _ => {
            let mut short: String = body.chars().take(200).collect();
            if short.is_empty() {
                short = "(empty body)".into();
            }
            short
        }
    }
}

/// A human explanation of a presigned POST file for `logship check` (no secrets).
pub fn explain(path: &Path, now: SystemTime) -> Result<String, PostError> {
    let post = PresignedPost::load(path)?;
    let policy = post.policy(path)?;
    let now: chrono::DateTime<chrono::Utc> = now.into();
    let left = policy.expiration - now;
    let mut s = String::new();
    s.push_str(&format!("presigned POST file: {}\n", path.display()));
    s.push_str(&format!("url: {}\n", post.url));
    s.push_str(&format!(
        "bucket: {}\n",
        post.bucket(&policy).unwrap_or_else(|| "(not restricted)".into())
    ));
    s.push_str(&format!("keys: {}\n", post.key_scope(&policy)));
    s.push_str(&format!(
        "key field: {}\n",
        post.fields.get("key").map(String::as_str).unwrap_or("")
    ));
    s.push_str(&format!(
        "expires: {} ({})\n",
        policy.expiration.to_rfc3339(),
        if left.num_seconds() > 0 {
            format!("in {}s", left.num_seconds())
        } else {
            format!("EXPIRED {}s ago", -left.num_seconds())
        }
    ));
    s.push_str("conditions:\n");
    for c in &policy.conditions {
        let line = match c {
            Condition::Eq { field, value } => format!("  {field} = {}", hidden_or(field, value)),
            Condition::StartsWith { field, prefix } => format!("  {field} starts with {:?}", prefix),
            Condition::ContentLengthRange { min, max } => format!("  size in [{min}, {max}] bytes"),
        };
        s.push_str(&line);
        s.push('\n');
    }
    s.push_str(&format!(
        "fields sent: {} (signature not shown)\n",
        post.fields.keys().cloned().collect::<Vec<_>>().join(", ")
    ));
    Ok(s)
}

/// What would make uploads through the presigned POST at `path` fail for an output that writes
/// keys starting with `key_prefix` into `bucket` (each checked when known): expiry (with `margin`), a bucket or
/// key condition that does not cover those keys, temporary credentials without their session
/// token. Empty when nothing would. `logship check` reports these before a job runs.
pub fn problems(
    path: &Path,
    bucket: Option<&str>,
    key_prefix: Option<&str>,
    now: SystemTime,
    margin: Duration,
) -> Result<Vec<String>, PostError> {
    let post = PresignedPost::load(path)?;
    let policy = post.policy(path)?;
    let mut v = Vec::new();
    let now: chrono::DateTime<chrono::Utc> = now.into();
    if now + chrono::Duration::from_std(margin).unwrap_or_default() >= policy.expiration {
        v.push(format!("expired at {}", policy.expiration.to_rfc3339()));
    }
    v.extend(mismatches(&post, &policy, bucket, key_prefix));
    Ok(v)
}

/// [`problems`] of the loaded `post` (with its decoded `policy`) that a refreshed file cannot
/// fix (all but expiry): the output starts only without them.
pub fn mismatches(
    post: &PresignedPost,
    policy: &Policy,
    bucket: Option<&str>,
    key_prefix: Option<&str>,
) -> Vec<String> {
    let mut v = Vec::new();
    if let (Some(want), Some(got)) = (bucket, post.bucket(policy))
        && want != got
    {
        v.push(format!(
            "is for bucket {got:?}, but the output writes to bucket {want:?}"
        ));
    }
    for c in policy.conditions.iter().filter(|_| key_prefix.is_some()) {
        let key_prefix = key_prefix.unwrap_or_default();
        match c {
            Condition::StartsWith { field, prefix } if field == "key" && !key_prefix.starts_with(prefix.as_str()) => {
                v.push(format!(
                    "allows only keys starting with {prefix:?}, but the output's keys start with {key_prefix:?}"
                ));
            }
            Condition::Eq { field, value } if field == "key" => {
                v.push(format!(
                    "allows only the one key {value:?}, but the output writes a key per chunk under {key_prefix:?}"
                ));
            }
            _ => {}
        }
    }
    let field = |name: &str| {
        post.fields
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    };
    let key_id = field("x-amz-credential").or(field("AWSAccessKeyId"));
    let token = field("x-amz-security-token");
    // Temporary credentials (STS: IRSA, Pod Identity, an assumed role) have ASIA key ids; S3
    // refuses their signature without the session token.
    if key_id.is_some_and(|k| k.starts_with("ASIA")) && token.is_none() {
        v.push("is signed with temporary credentials but has no x-amz-security-token field".into());
    }
    let token_covered = policy.conditions.iter().any(|c| match c {
        Condition::Eq { field, .. } | Condition::StartsWith { field, .. } => field == "x-amz-security-token",
        _ => false,
    });
    if token.is_some() && !token_covered {
        v.push("sends x-amz-security-token, but its policy has no condition for it (S3 refuses extra fields)".into());
    }
    v
}

fn hidden_or(field: &str, value: &str) -> String {
    if field == "x-amz-credential" {
        // Access key id / date / region / service: show all but the key id.
        let rest = value.split_once('/').map_or("", |(_, r)| r);
        format!("<access key id>/{rest}")
    } else if is_secret(field) {
        "(hidden)".into()
    } else {
        format!("{value:?}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn post(policy: serde_json::Value, key: &str) -> PresignedPost {
        let b64 = base64::engine::general_purpose::STANDARD.encode(policy.to_string());
        let mut fields = BTreeMap::new();
        fields.insert("key".to_string(), key.to_string());
        fields.insert("policy".to_string(), b64);
        fields.insert("x-amz-algorithm".to_string(), "AWS4-HMAC-SHA256".to_string());
        fields.insert("x-amz-signature".to_string(), "secret-signature".to_string());
        PresignedPost {
            url: "http://127.0.0.1/b".into(),
            fields,
        }
    }

    fn policy(expiration: &str) -> serde_json::Value {
        serde_json::json!({
            "expiration": expiration,
            "conditions": [
                {"bucket": "b"},
                ["starts-with", "$key", "logs/"],
                ["content-length-range", 1, 1000],
                {"x-amz-algorithm": "AWS4-HMAC-SHA256"}
            ]
        })
    }

    const P: &str = "/run/post";

    #[test]
    fn accepts_what_the_policy_allows() {
        let p = post(policy("2099-01-01T00:00:00Z"), "logs/${filename}");
        p.check(
            Path::new(P),
            "logs/a/b.txt",
            10,
            SystemTime::now(),
            Duration::from_secs(30),
        )
        .unwrap();
        assert_eq!(p.bucket(&p.policy(Path::new(P)).unwrap()).as_deref(), Some("b"));
    }

    #[test]
    fn refusals_name_the_condition_and_never_the_signature() {
        let p = post(policy("2099-01-01T00:00:00Z"), "logs/${filename}");
        let now = SystemTime::now();
        let m = Duration::from_secs(30);
        let mut messages = Vec::new();
        let e = p.check(Path::new(P), "other/x", 10, now, m).unwrap_err().to_string();
        assert!(
            e.contains("starts-with") && e.contains("\"logs/\"") && e.contains("other/x"),
            "{e}"
        );
        messages.push(e);
        let e = p.check(Path::new(P), "logs/x", 5000, now, m).unwrap_err().to_string();
        assert!(
            e.contains("content-length-range [1, 1000]") && e.contains("5000"),
            "{e}"
        );
        messages.push(e);
        let expired = post(policy("2020-01-01T00:00:00Z"), "logs/${filename}");
        let e = expired
            .check(Path::new(P), "logs/x", 10, now, m)
            .unwrap_err()
            .to_string();
        assert!(e.contains("expired at 2020-01-01"), "{e}");
        messages.push(e);
        let mut extra = post(policy("2099-01-01T00:00:00Z"), "logs/${filename}");
        extra.fields.insert("acl".into(), "public-read".into());
        let e = extra.check(Path::new(P), "logs/x", 10, now, m).unwrap_err().to_string();
        assert!(e.contains("`acl` is not covered"), "{e}");
        messages.push(e);
        assert!(messages.iter().all(|m| !m.contains("secret-signature")));
    }

    #[test]
    fn explain_hides_secrets() {
        let p = post(policy("2099-01-01T00:00:00Z"), "logs/${filename}");
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("post.json");
        std::fs::write(&f, serde_json::to_vec(&p).unwrap()).unwrap();
        let s = explain(&f, SystemTime::now()).unwrap();
        assert!(
            s.contains("keys starting with \"logs/\"") && s.contains("size in [1, 1000]"),
            "{s}"
        );
        assert!(!s.contains("secret-signature"));
    }

    #[test]
    fn s3_error_bodies_are_summarised() {
        let body =
            "<Error><Code>AccessDenied</Code><Message>Invalid according to Policy: Policy expired.</Message></Error>";
        assert_eq!(
            s3_error_summary(body),
            "AccessDenied: Invalid according to Policy: Policy expired."
        );
    }
}
