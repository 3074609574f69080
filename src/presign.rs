//! `logship presign`: makes a presigned POST (the JSON boto3's `generate_presigned_post` returns)
//! that lets its holder write objects under one key prefix, up to a size, until it expires, and
//! nothing else: a write-only, expiring, prefix-limited credential to hand a pod. Signed with
//! SigV4 (aws-sigv4's signing-key and signature primitives) using credentials from the default
//! chain.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use aws_credential_types::provider::ProvideCredentials;
use base64::Engine;

use crate::sink::presigned_post::PresignedPost;

/// Why a presigned POST could not be made.
#[derive(Debug, thiserror::Error)]
pub enum PresignError {
    /// No credentials in the default chain.
    #[error("no AWS credentials found (environment, profile, web identity, container or instance metadata)")]
    NoCredentials,
    /// The credential provider failed.
    #[error("cannot load AWS credentials: {0}")]
    Credentials(String),
}

/// What to sign.
#[derive(Debug, Clone)]
pub struct PresignRequest {
    /// The bucket the POST may write to (the form's `bucket` field and the URL).
    pub bucket: String,
    /// Keys must start with this.
    pub key_prefix: String,
    /// How long it is valid.
    pub expires: Duration,
    /// The signing region.
    pub region: String,
    /// An S3-compatible endpoint (path-style URL); default: the regional AWS endpoint.
    pub endpoint: Option<String>,
    /// Largest object, in bytes.
    pub max_size: u64,
}

/// Signs `req` with explicit credentials at time `now` (pure: used by [`presign`] and tests).
pub fn sign(
    req: &PresignRequest,
    access_key_id: &str,
    secret_access_key: &str,
    session_token: Option<&str>,
    now: SystemTime,
) -> PresignedPost {
    let t: chrono::DateTime<chrono::Utc> = now.into();
    let date = t.format("%Y%m%d").to_string();
    let amz_date = t.format("%Y%m%dT%H%M%SZ").to_string();
    let expiration = (t + chrono::Duration::from_std(req.expires).unwrap_or_default())
        .format("%Y-%m-%dT%H:%M:%SZ")
        .to_string();
    let credential = format!("{access_key_id}/{date}/{}/s3/aws4_request", req.region);
    let mut conditions = vec![
        serde_json::json!({ "bucket": req.bucket }),
        serde_json::json!(["starts-with", "$key", req.key_prefix]),
        serde_json::json!(["starts-with", "$Content-Type", ""]),
        serde_json::json!(["content-length-range", 0, req.max_size]),
        serde_json::json!({ "x-amz-algorithm": "AWS4-HMAC-SHA256" }),
        serde_json::json!({ "x-amz-credential": credential }),
        serde_json::json!({ "x-amz-date": amz_date }),
    ];
    if let Some(token) = session_token {
        conditions.push(serde_json::json!({ "x-amz-security-token": token }));
    }
    let policy = serde_json::json!({ "expiration": expiration, "conditions": conditions });
    let policy_b64 = base64::engine::general_purpose::STANDARD.encode(policy.to_string());
    let key = aws_sigv4::sign::v4::generate_signing_key(secret_access_key, now, &req.region, "s3");
    let signature = aws_sigv4::sign::v4::calculate_signature(key, policy_b64.as_bytes());
    let mut fields = BTreeMap::new();
    fields.insert("key".to_string(), format!("{}${{filename}}", req.key_prefix));
    fields.insert("policy".to_string(), policy_b64);
    fields.insert("x-amz-algorithm".to_string(), "AWS4-HMAC-SHA256".to_string());
    fields.insert("x-amz-credential".to_string(), credential);
    fields.insert("x-amz-date".to_string(), amz_date);
    fields.insert("x-amz-signature".to_string(), signature);
    if let Some(token) = session_token {
        fields.insert("x-amz-security-token".to_string(), token.to_string());
    }
    let url = match &req.endpoint {
        Some(e) => format!("{}/{}", e.trim_end_matches('/'), req.bucket),
        None => format!("https://{}.s3.{}.amazonaws.com/", req.bucket, req.region),
    };
    PresignedPost { url, fields }
}

/// Signs `req` with credentials from the default chain.
pub async fn presign(req: &PresignRequest) -> Result<PresignedPost, PresignError> {
    let conf = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new(req.region.clone()))
        .load()
        .await;
    let provider = conf.credentials_provider().ok_or(PresignError::NoCredentials)?;
    let creds = provider
        .provide_credentials()
        .await
        .map_err(|e| PresignError::Credentials(e.to_string()))?;
    Ok(sign(
        req,
        creds.access_key_id(),
        creds.secret_access_key(),
        creds.session_token(),
        SystemTime::now(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signed_policy_allows_the_prefix_and_is_checked_locally() {
        let req = PresignRequest {
            bucket: "logs".into(),
            key_prefix: "jobs/1/".into(),
            expires: Duration::from_secs(3600),
            region: "us-east-1".into(),
            endpoint: Some("http://127.0.0.1:9000".into()),
            max_size: 1 << 30,
        };
        let post = sign(&req, "AKIDEXAMPLE", "secret", Some("tok"), SystemTime::now());
        assert_eq!(post.url, "http://127.0.0.1:9000/logs");
        assert_eq!(post.fields["key"], "jobs/1/${filename}");
        assert_eq!(post.fields["x-amz-signature"].len(), 64);
        let p = std::path::Path::new("post.json");
        post.check(p, "jobs/1/a/b.txt", 100, SystemTime::now(), Duration::from_secs(30))
            .unwrap();
        assert!(
            post.check(p, "jobs/2/x", 100, SystemTime::now(), Duration::from_secs(30))
                .is_err()
        );
        let policy = post.policy(p).unwrap();
        assert_eq!(post.bucket(&policy).as_deref(), Some("logs"));
    }
}
