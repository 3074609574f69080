//! Outputs ("sinks"): deliver one sealed chunk by streaming it from its file.
//!
//! Every output implements the same contract: [`Sink::deliver`] either succeeds (the chunk's
//! bytes are at its key), or fails with a [`DeliveryError`] that says whether trying again can
//! help. The pipeline removes a chunk file only after success; [`retry`] runs the retry schedule
//! and [`secondary`] keeps what could not be delivered.

pub mod cloudwatch;
pub mod compress;
pub mod file;
pub mod file_body;
pub mod log_events;
pub mod preflight;
pub mod presigned_post;
pub mod retry;
pub mod s3;
pub mod secondary;
pub mod stdout;

use crate::buffer::SealedChunk;
use crate::config::{OutputConfig, OutputKind, Records};
use crate::record::RecordRule;

/// Why a delivery failed.
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    /// A failure that may pass (network, 5xx, throttling, a full disk): retried with backoff.
    #[error("{0}")]
    Retryable(String),
    /// A failure that retrying cannot fix (bad key, malformed request): goes to the secondary.
    #[error("{0}")]
    Permanent(String),
    /// The credentials (a presigned POST) are expired or do not allow this upload: the chunk
    /// waits for valid ones, however long that takes (bounded only by the drain deadline), since
    /// the kubelet refreshes the Secret on its own schedule.
    #[error("{0}")]
    Credentials(String),
    /// The destination refused for a reason retrying does not fix but a person may, soon: the
    /// bucket does not exist, access is denied, the key id or signature is not accepted, a
    /// presigned POST's policy does not allow this key or size. Tried again on the usual
    /// schedule for at most [`retry::REFUSED_FOR`] (a bucket being created, a role's policy
    /// being attached, credentials being rotated), then the chunk goes to the secondary
    /// directory and the exit code says so. Never the 24 h of the retry timeout.
    #[error("{0}")]
    Refused(String),
    /// Not tried: the engine is stopping its deliveries to reload the configuration. The chunk
    /// stays in the buffer and the next engine delivers it.
    #[error("paused for a configuration reload")]
    Paused,
}

impl DeliveryError {
    /// Whether trying again can help.
    pub fn is_retryable(&self) -> bool {
        matches!(self, DeliveryError::Retryable(_))
    }
}

/// Every key a chunk may take (its `%{index}` moved on as far as it goes) holds other data:
/// retrying cannot help. `last` names the last key tried.
pub(crate) fn every_key_taken(last: &str) -> DeliveryError {
    DeliveryError::Permanent(format!(
        "every key this chunk may take is held by other data (last tried: {last}); the key format needs %{{index}}"
    ))
}

/// An error and its sources, joined with `: ` (the SDKs' and hyper's top-level messages alone
/// often say only "dispatch failure" or "error sending request").
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        let text = inner.to_string();
        if !s.contains(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        src = inner.source();
    }
    s
}

/// Why an SDK output cannot start: configuration that no retry can supply.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// No region in the configuration, the environment, the profile or IMDS.
    #[error(
        "no AWS region: set `region` in the output's table (quick mode: --region), or AWS_REGION in the environment"
    )]
    NoRegion,
    /// No provider of the default chain had credentials.
    #[error(
        "no AWS credentials: the environment (AWS_ACCESS_KEY_ID), the profile files, web identity (IRSA: AWS_ROLE_ARN and AWS_WEB_IDENTITY_TOKEN_FILE), the container endpoint (EKS Pod Identity) and IMDS gave none; give the pod a service account with an IAM role (IRSA or EKS Pod Identity)"
    )]
    NoCredentials,
    /// A credential source is configured wrongly (a profile that names no role, a malformed
    /// variable).
    #[error("the AWS credential configuration is invalid: {0}")]
    BadCredentials(String),
    /// The host of an endpoint did not resolve, tried for as long as a pod's DNS may take to
    /// come up.
    #[error("cannot resolve {host} (from {url}) after {waited_secs}s: {error}")]
    Unresolved {
        /// The host name.
        host: String,
        /// The URL it is from (an endpoint, a presigned POST's form action).
        url: String,
        /// How long it was tried.
        waited_secs: u64,
        /// The resolver's last answer.
        error: String,
    },
    /// The presigned POST file is missing, unreadable, or made for other keys than the
    /// output writes: uploads would fail until the drain deadline.
    #[error("{0}")]
    PresignedPost(String),
}

/// Whether anything besides IMDS is set up to give credentials: keys, web identity (IRSA), the
/// container endpoint (EKS Pod Identity), a profile or profile files.
fn credential_source_configured() -> bool {
    let set = |v: &str| std::env::var_os(v).is_some_and(|x| !x.is_empty());
    let vars = [
        "AWS_ACCESS_KEY_ID",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        "AWS_PROFILE",
        "AWS_SHARED_CREDENTIALS_FILE",
        "AWS_CONFIG_FILE",
    ];
    let home = std::env::var_os("HOME").map(std::path::PathBuf::from);
    vars.iter().any(|v| set(v))
        || home.is_some_and(|h| h.join(".aws/credentials").exists() || h.join(".aws/config").exists())
}

/// The AWS configuration of an SDK output: the default credential chain (env, web identity /
/// IRSA, EKS Pod Identity, IMDS), `region` when given, and timeouts (10 s to connect,
/// `attempt` per attempt). Each SDK builds its client from it.
///
/// A missing region, or a chain in which no provider has credentials at all, is refused here,
/// at start, in one line: retrying cannot supply them. A provider that fails for a reason that
/// may pass (STS unreachable, IMDS slow) is only logged; each delivery resolves again. With
/// `sdk_host` (the service's host prefix, `s3` or `logs`: the output names no endpoint), the
/// SDK's own host for the region must resolve ([`preflight::aws_endpoint_resolves`]).
pub(crate) async fn aws_config(
    region: Option<&str>,
    attempt: std::time::Duration,
    sdk_host: Option<&str>,
) -> Result<(aws_config::SdkConfig, aws_config::timeout::TimeoutConfig), SetupError> {
    use aws_credential_types::provider::{ProvideCredentials, error::CredentialsError};
    let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
    if let Some(r) = region {
        loader = loader.region(aws_config::Region::new(r.to_string()));
    }
    let timeouts = aws_config::timeout::TimeoutConfig::builder()
        .connect_timeout(std::time::Duration::from_secs(10))
        .operation_attempt_timeout(attempt)
        .build();
    let shared = loader.load().await;
    if shared.region().is_none() {
        return Err(SetupError::NoRegion);
    }
    let provider = shared.credentials_provider().ok_or(SetupError::NoCredentials)?;
    match provider.provide_credentials().await {
        Ok(_) => {}
        Err(CredentialsError::CredentialsNotLoaded(_)) => return Err(SetupError::NoCredentials),
        Err(e @ CredentialsError::InvalidConfiguration(_)) => {
            return Err(SetupError::BadCredentials(error_chain(&e)));
        }
        // Only IMDS was left to ask, and it refused (disabled, or a hop limit the pod cannot
        // pass): nothing configured can give credentials later either.
        Err(e) if !credential_source_configured() && !matches!(e, CredentialsError::ProviderTimedOut(_)) => {
            return Err(SetupError::NoCredentials);
        }
        Err(e) => {
            tracing::warn!(error = %error_chain(&e), "cannot get AWS credentials yet; each delivery tries again")
        }
    }
    if let (Some(service), Some(region)) = (sdk_host, shared.region()) {
        preflight::aws_endpoint_resolves(service, region.as_ref()).await?;
    }
    Ok((shared, timeouts))
}

/// One configured output.
#[derive(Debug)]
pub enum Sink {
    /// A directory of chunk files.
    File(file::FileSink),
    /// logship's own standard output.
    Stdout(stdout::StdoutSink),
    /// S3 objects.
    S3(Box<s3::S3Sink>),
    /// CloudWatch Logs events.
    CloudWatch(Box<cloudwatch::CloudWatchSink>),
}

impl Sink {
    /// Builds the output described by `config` after its [`preflight`] checks (the SDK
    /// outputs load the AWS configuration, and refuse to start without a region or any
    /// credentials).
    pub async fn build(config: &OutputConfig, records: &Records) -> Result<Sink, SetupError> {
        preflight::check(config).await?;
        Ok(match &config.kind {
            OutputKind::File { dir } => Sink::File(file::FileSink::new(dir.clone())),
            OutputKind::Stdout => Sink::Stdout(stdout::StdoutSink),
            OutputKind::S3(s3) => Sink::S3(Box::new(s3::S3Sink::new(s3).await?)),
            OutputKind::Cloudwatch(cw) => Sink::CloudWatch(Box::new(
                cloudwatch::CloudWatchSink::new(cw, RecordRule::new(records)).await?,
            )),
        })
    }

    /// A CloudWatch output's record counters (for `/metrics` and the summary).
    pub fn event_counters(&self) -> Option<std::sync::Arc<crate::metrics::EventCounters>> {
        match self {
            Sink::CloudWatch(c) => Some(c.counters()),
            _ => None,
        }
    }

    /// The `%{file_extension}` of what an output writes.
    pub fn file_extension(config: &OutputConfig) -> &'static str {
        match &config.kind {
            OutputKind::S3(s3) => s3.store_as.extension(),
            OutputKind::File { .. } | OutputKind::Stdout | OutputKind::Cloudwatch(_) => "txt",
        }
    }

    /// Whether an output sends each chunk's CRC32 as it was kept while the chunk was written
    /// ([`crate::buffer::ChunkMeta::crc32`]): the S3 API with text, whose PutObject carries the
    /// chunk's bytes as they are (a presigned POST sends none; compression changes the bytes).
    pub fn sends_written_crc32(config: &OutputConfig) -> bool {
        match &config.kind {
            OutputKind::S3(s3) => s3::S3Sink::sends_written_crc32(s3),
            OutputKind::File { .. } | OutputKind::Stdout | OutputKind::Cloudwatch(_) => false,
        }
    }

    /// Where an output delivers, for messages (no secrets).
    pub fn describe(config: &OutputConfig) -> String {
        match &config.kind {
            OutputKind::File { dir } => {
                let dir = std::path::absolute(dir).unwrap_or_else(|_| dir.clone());
                format!("file://{}", dir.display())
            }
            OutputKind::Stdout => "stdout".to_string(),
            OutputKind::S3(s3) => s3::S3Sink::describe(s3),
            OutputKind::Cloudwatch(cw) => cloudwatch::CloudWatchSink::describe(cw),
        }
    }

    /// Where an output's data is, for the summary: for S3, the bucket (a presigned POST's own,
    /// from its policy, which start-up checked against the output's) and the literal start of
    /// its keys; elsewhere [`Sink::describe`].
    pub fn written_to(config: &OutputConfig) -> String {
        let OutputKind::S3(s3) = &config.kind else {
            return Self::describe(config);
        };
        let from_post = || {
            let path = s3.presigned_post.as_ref()?;
            let post = presigned_post::PresignedPost::load(path).ok()?;
            post.bucket(&post.policy(path).ok()?)
        };
        match s3.bucket.clone().or_else(from_post) {
            Some(b) => {
                let at = format!("s3://{b}/{}", preflight::key_prefix(config));
                match &s3.presigned_post {
                    Some(p) => format!("{at} (presigned POST {})", p.display()),
                    None => at,
                }
            }
            None => Self::describe(config),
        }
    }

    /// Where an output's chunks land, as recorded with them in the buffer: what must not
    /// change under a chunk between the run that wrote it and the run that delivers it. Unlike
    /// [`Sink::describe`], it leaves out how the destination is reached (a presigned POST file).
    pub fn destination(config: &OutputConfig) -> String {
        match &config.kind {
            OutputKind::S3(s3) => {
                let endpoint = s3.endpoint.as_deref().unwrap_or("");
                format!("s3://{} {endpoint}", s3.bucket.as_deref().unwrap_or(""))
                    .trim_end()
                    .to_string()
            }
            OutputKind::Cloudwatch(cw) => {
                let endpoint = cw.endpoint.as_deref().unwrap_or("");
                format!("{} {endpoint}", Self::describe(config)).trim_end().to_string()
            }
            OutputKind::File { .. } | OutputKind::Stdout => Self::describe(config),
        }
    }

    /// Delivers one chunk, then deletes the keys it replaces (`delete_after`). A retry repeats
    /// both; both are idempotent. Returns the bytes the destination stores (after compression;
    /// the chunk's own length where nothing is compressed), for the summary.
    pub async fn deliver(&self, chunk: &SealedChunk) -> Result<u64, DeliveryError> {
        let stored = match self {
            Sink::File(f) => f.deliver(chunk).await.map(|()| chunk.len)?,
            Sink::Stdout(s) => s.deliver(chunk).await.map(|()| chunk.len)?,
            Sink::S3(s) => s.deliver(chunk).await?,
            Sink::CloudWatch(c) => c.deliver(chunk).await.map(|()| chunk.len)?,
        };
        for key in &chunk.delete_after {
            match self {
                Sink::File(f) => f.delete(key)?,
                Sink::Stdout(_) | Sink::CloudWatch(_) => {}
                Sink::S3(s) => s.delete(key).await?,
            }
        }
        Ok(stored)
    }
}
