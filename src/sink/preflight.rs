//! What an output is checked for before anything is read: the mistakes no retry can fix are
//! found in seconds, not after a day of retries.
//!
//! Config validation has already checked the values (an endpoint is an `http(s)://` URL, a log
//! group name is one CloudWatch accepts). Here the outside world is asked:
//!
//! - every endpoint's host resolves (the S3 or CloudWatch `endpoint`, a presigned POST's form
//!   action), tried for up to [`RESOLVE_FOR`], since a pod's DNS can come up after its
//!   containers;
//! - a presigned POST file exists, is the JSON boto3 writes, is for the bucket the output
//!   names, and its key condition covers the keys the output writes. An expired one is not an
//!   error here: the kubelet refreshes the Secret, and uploads wait for it.

use std::time::Duration;

use super::SetupError;
use crate::config::{OutputConfig, OutputKind};
use crate::sink::presigned_post::{self, PresignedPost};

/// How long a host name may take to resolve at start.
pub const RESOLVE_FOR: Duration = Duration::from_secs(60);

/// Runs the checks for one output.
pub async fn check(config: &OutputConfig) -> Result<(), SetupError> {
    match &config.kind {
        OutputKind::S3(s3) => {
            if let Some(post_path) = &s3.presigned_post {
                let unusable = |e: presigned_post::PostError| SetupError::PresignedPost(e.to_string());
                let post = PresignedPost::load(post_path).map_err(unusable)?;
                let policy = post.policy(post_path).map_err(unusable)?;
                let found = presigned_post::mismatches(&post, &policy, s3.bucket.as_deref(), Some(&key_prefix(config)));
                if !found.is_empty() {
                    return Err(SetupError::PresignedPost(format!(
                        "presigned POST file {}: {}",
                        post_path.display(),
                        found.join("; ")
                    )));
                }
                resolves(&post.url).await?;
            }
            if let Some(e) = &s3.endpoint {
                resolves(e).await?;
            }
        }
        OutputKind::Cloudwatch(cw) => {
            if let Some(e) = &cw.endpoint {
                resolves(e).await?;
            }
        }
        OutputKind::File { .. } | OutputKind::Stdout => {}
    }
    Ok(())
}

/// Without an endpoint, the SDK's own: `https://<service>.<region>.amazonaws.com` (`.com.cn` in
/// China). A region that is not one (`us-est-1`) has no such host, and is refused here after a
/// minute instead of retried for the retry timeout. Skipped when an `AWS_ENDPOINT_URL*`
/// variable points the SDK elsewhere.
pub(crate) async fn aws_endpoint_resolves(service: &str, region: &str) -> Result<(), SetupError> {
    if std::env::vars_os().any(|(k, _)| k.to_string_lossy().starts_with("AWS_ENDPOINT_URL")) {
        return Ok(());
    }
    let domain = if region.starts_with("cn-") {
        "amazonaws.com.cn"
    } else {
        "amazonaws.com"
    };
    resolves(&format!("https://{service}.{region}.{domain}")).await
}

/// The literal start of every key an output writes: its key format up to the first
/// placeholder, with `%{path}` filled in.
pub fn key_prefix(config: &OutputConfig) -> String {
    let key = config.key_format.to_string().replace("%{path}", &config.path);
    let cut = [key.find("%{"), key.find("${")]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(key.len());
    key[..cut].to_string()
}

/// Resolves the host of `url`, trying again every 2 s for up to [`RESOLVE_FOR`].
async fn resolves(url: &str) -> Result<(), SetupError> {
    let Some((host, port)) = host_and_port(url) else {
        return Ok(());
    };
    let start = tokio::time::Instant::now();
    let mut said = false;
    loop {
        let error = match tokio::net::lookup_host((host.as_str(), port)).await {
            Ok(addrs) => {
                if addrs.count() > 0 {
                    return Ok(());
                }
                "no address".to_string()
            }
            Err(e) => e.to_string(),
        };
        if start.elapsed() >= RESOLVE_FOR {
            return Err(SetupError::Unresolved {
                host,
                url: url.to_string(),
                waited_secs: start.elapsed().as_secs(),
                error,
            });
        }
        if !said {
            tracing::warn!(%host, %error, "cannot resolve the endpoint's host yet; trying again for up to a minute");
            said = true;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// The host and port of an `http(s)://` URL (an IPv6 literal without its brackets).
fn host_and_port(url: &str) -> Option<(String, u16)> {
    let (rest, default_port) = match url.split_once("://") {
        Some(("https", r)) => (r, 443),
        Some(("http", r)) => (r, 80),
        _ => return None,
    };
    let authority = rest.split(['/', '?', '#']).next()?;
    let authority = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (h, after) = v6.split_once(']')?;
        (h, after.strip_prefix(':'))
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    let port = match port {
        Some(p) => p.parse().ok()?,
        None => default_port,
    };
    (!host.is_empty()).then(|| (host.to_string(), port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_and_ports_of_urls() {
        assert_eq!(host_and_port("http://127.0.0.1:5077"), Some(("127.0.0.1".into(), 5077)));
        assert_eq!(
            host_and_port("https://s3.amazonaws.com/b?x"),
            Some(("s3.amazonaws.com".into(), 443))
        );
        assert_eq!(host_and_port("http://[::1]:9000/"), Some(("::1".into(), 9000)));
        assert_eq!(host_and_port("http://u:p@minio"), Some(("minio".into(), 80)));
        assert_eq!(host_and_port("127.0.0.1:5077"), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_host_that_never_resolves_is_an_error_after_a_minute() {
        let e = resolves("http://logship-test.invalid:9000").await.unwrap_err();
        match e {
            SetupError::Unresolved { host, waited_secs, .. } => {
                assert_eq!(host, "logship-test.invalid");
                assert!(waited_secs >= 60, "{waited_secs}");
            }
            other => panic!("{other}"),
        }
        resolves("http://127.0.0.1:1").await.unwrap();
    }
}
