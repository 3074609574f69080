//! The S3 output: each sealed chunk becomes one object at its key.
//!
//! Two ways in: a **presigned POST** read from a file (EMR on EKS; see `presigned_post`), or the
//! **S3 API** with aws-config's default credential chain (environment, web identity / IRSA, EKS
//! Pod Identity, IMDS): PutObject, or a multipart upload above `multipart_threshold` (streamed
//! parts, aborted on failure). A chunk of tailed data is written only where no object is
//! (`If-None-Match: *`); a taken key moves `%{index}` on, unless it holds the chunk's own bytes
//! from an attempt whose acknowledgement was lost. Event-log snapshots and markers replace their
//! earlier versions on purpose.

use std::path::{Path, PathBuf};
use std::time::Duration;

use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::{ByteStream, SdkBody};

use super::DeliveryError;
use super::compress::{cleanup, prepare};
use super::file_body::FileBody;
use crate::buffer::SealedChunk;
use crate::config::S3Settings;

/// How the S3 output authenticates.
#[derive(Debug)]
enum Access {
    /// A presigned POST file.
    Post { file: PathBuf, client: reqwest::Client },
    /// The S3 API with the default credential chain.
    Api { client: aws_sdk_s3::Client, bucket: String },
}

/// Uploads chunks to S3.
#[derive(Debug)]
pub struct S3Sink {
    access: Access,
    settings: S3Settings,
}

impl S3Sink {
    /// Builds the output (loads AWS configuration for the API mode).
    pub async fn new(settings: &S3Settings) -> Result<S3Sink, super::SetupError> {
        let settings = settings.clone();
        let access = match &settings.presigned_post {
            Some(file) => Access::Post {
                file: file.clone(),
                client: reqwest::Client::builder()
                    .connect_timeout(Duration::from_secs(10))
                    .timeout(settings.request_timeout.get())
                    .build()
                    .expect("HTTP client"),
            },
            None => {
                let (shared, timeouts) = super::aws_config(
                    settings.region.as_deref(),
                    settings.request_timeout.get(),
                    settings.endpoint.is_none().then_some("s3"),
                )
                .await?;
                let mut b = aws_sdk_s3::config::Builder::from(&shared)
                    .force_path_style(settings.force_path_style)
                    .timeout_config(timeouts);
                if let Some(e) = &settings.endpoint {
                    b = b.endpoint_url(e);
                }
                Access::Api {
                    client: aws_sdk_s3::Client::from_conf(b.build()),
                    bucket: settings.bucket.clone().unwrap_or_default(),
                }
            }
        };
        Ok(S3Sink { access, settings })
    }

    /// Whether its uploads send the CRC32 kept while each chunk was written (see
    /// [`Sink::sends_written_crc32`](super::Sink::sends_written_crc32)).
    pub fn sends_written_crc32(settings: &S3Settings) -> bool {
        settings.presigned_post.is_none() && settings.store_as == crate::config::StoreAs::Text
    }

    /// Where it delivers, for messages.
    pub fn describe(settings: &S3Settings) -> String {
        match (&settings.presigned_post, &settings.bucket) {
            (Some(f), Some(b)) => format!("s3://{b} (presigned POST {})", f.display()),
            (Some(f), None) => format!("s3 (presigned POST {})", f.display()),
            (None, b) => format!("s3://{}", b.as_deref().unwrap_or("")),
        }
    }

    /// Uploads one chunk; returns the size of the object (compressed, when it is).
    pub async fn deliver(&self, chunk: &SealedChunk) -> Result<u64, DeliveryError> {
        let store_as = self.settings.store_as;
        let level = self.settings.compression_level;
        let (src, chunk_len) = (chunk.path.clone(), chunk.len);
        let (file, len) = tokio::task::spawn_blocking(move || prepare(&src, chunk_len, store_as, level))
            .await
            .map_err(|e| DeliveryError::Retryable(format!("compression task failed: {e}")))?
            .map_err(|e| {
                DeliveryError::Retryable(format!("cannot prepare {} for upload: {e}", chunk.path.display()))
            })?;
        let content_type = self
            .settings
            .content_type
            .clone()
            .unwrap_or_else(|| store_as.content_type().to_string());
        let result = match &self.access {
            Access::Post { file: post, client } => {
                super::presigned_post::upload(
                    client,
                    post,
                    &chunk.key,
                    &file,
                    len,
                    Some(&content_type),
                    self.settings.presigned_post_margin.get(),
                )
                .await
            }
            Access::Api { client, bucket } => {
                // The CRC32 kept while the chunk was written: of these very bytes only when the
                // chunk goes as it is.
                let body = Body {
                    file: &file,
                    len,
                    crc32: chunk.crc32.filter(|_| file == chunk.path && len == chunk.len),
                };
                if chunk.no_replace {
                    self.put_new(client, bucket, chunk, &body, &content_type).await
                } else {
                    self.put(client, bucket, &chunk.key, &body, &content_type, false)
                        .await
                        .map(|_| ())
                }
            }
        };
        if result.is_ok() {
            cleanup(&chunk.path, store_as);
        }
        result.map(|()| len)
    }

    /// Deletes the object at `key`. With a presigned POST there is no way to delete: the object
    /// stays, and a warning says so (see docs/event-logs.md for what the History Server shows).
    pub async fn delete(&self, key: &str) -> Result<(), DeliveryError> {
        match &self.access {
            Access::Post { .. } => {
                tracing::warn!(%key, "a presigned POST cannot delete objects; leaving it in place");
                Ok(())
            }
            Access::Api { client, bucket } => {
                client
                    .delete_object()
                    .bucket(bucket)
                    .key(key)
                    .send()
                    .await
                    .map_err(|e| classify("DeleteObject", bucket, key, e))?;
                Ok(())
            }
        }
    }

    /// Writes a chunk that must not replace an object it did not write: each candidate key is
    /// written only if free (If-None-Match), and a taken key moves `%{index}` on, as
    /// fluent-plugin-s3's `check_object` does. A key holding this chunk's own bytes (an upload
    /// whose acknowledgement a crash lost) counts as delivered.
    async fn put_new(
        &self,
        client: &aws_sdk_s3::Client,
        bucket: &str,
        chunk: &SealedChunk,
        body: &Body<'_>,
        content_type: &str,
    ) -> Result<(), DeliveryError> {
        let mut last = String::new();
        for key in chunk.candidate_keys() {
            match self.put(client, bucket, &key, body, content_type, true).await? {
                Placed::Done => return Ok(()),
                Placed::Taken => {
                    tracing::warn!(%key, "an object that this chunk did not write is at its key; trying the next index");
                    last = key;
                }
            }
        }
        Err(super::every_key_taken(&format!("s3://{bucket}/{last}")))
    }

    /// Writes `body` at `key` with PutObject, or a multipart upload from `multipart_threshold`
    /// on. With `no_replace`, only if the key is free: a taken key is [`Placed::Taken`], unless
    /// it holds these very bytes (same length and CRC32, recorded in the object's metadata).
    async fn put(
        &self,
        client: &aws_sdk_s3::Client,
        bucket: &str,
        key: &str,
        body: &Body<'_>,
        content_type: &str,
        no_replace: bool,
    ) -> Result<Placed, DeliveryError> {
        let s = &self.settings;
        let Body { file, len, crc32: kept } = *body;
        if len >= s.multipart_threshold.bytes() {
            return self
                .put_multipart(client, bucket, key, file, len, content_type, no_replace)
                .await;
        }
        let crc32 = match kept {
            Some(kept) => encode_crc32(kept),
            None => encode_crc32(crc32_of(file, 0, len).await?.finalize()),
        };
        let stream = file_stream(file, 0, len);
        let req = client
            .put_object()
            .bucket(bucket)
            .key(key)
            .content_length(len as i64)
            .content_type(content_type)
            .checksum_crc32(&crc32)
            .metadata(CRC32_METADATA, &crc32)
            .set_if_none_match(no_replace.then(|| "*".to_string()))
            .set_storage_class(s.storage_class.as_deref().map(Into::into))
            .set_server_side_encryption(s.sse.as_deref().map(Into::into))
            .set_ssekms_key_id(s.sse_kms_key_id.clone())
            .set_acl(s.acl.as_deref().map(Into::into))
            .body(stream);
        match req.customize().disable_payload_signing().send().await {
            Ok(_) => Ok(Placed::Done),
            Err(e) if no_replace && is_precondition_failed(&e) => self.existing(client, bucket, key, len, &crc32).await,
            Err(e) => match (kept, e.code()) {
                (Some(kept), Some("BadDigest")) => Err(changed_on_disk(file, len, kept)
                    .await
                    .unwrap_or_else(|| classify("PutObject", bucket, key, e))),
                _ => Err(classify("PutObject", bucket, key, e)),
            },
        }
    }

    /// What is at a key that a conditional write found taken: this chunk's own earlier upload
    /// ([`Placed::Done`]) or other data ([`Placed::Taken`]). Without the right to read (a
    /// writer-only policy), the key counts as taken: the chunk may then be stored twice, but
    /// never over someone else's object.
    async fn existing(
        &self,
        client: &aws_sdk_s3::Client,
        bucket: &str,
        key: &str,
        len: u64,
        crc32: &str,
    ) -> Result<Placed, DeliveryError> {
        match client.head_object().bucket(bucket).key(key).send().await {
            Ok(o) => {
                let same_len = o.content_length() == Some(len as i64);
                let same_crc = o.metadata().and_then(|m| m.get(CRC32_METADATA)).map(String::as_str) == Some(crc32);
                Ok(if same_len && same_crc {
                    Placed::Done
                } else {
                    Placed::Taken
                })
            }
            Err(e) if e.raw_response().is_some_and(|r| r.status().as_u16() == 403) => {
                tracing::warn!(%key, "the key is taken and the credentials cannot read it (s3:GetObject) to see whether this chunk is already there; trying the next index");
                Ok(Placed::Taken)
            }
            Err(e) if e.raw_response().is_some_and(|r| r.status().as_u16() == 404) => Err(DeliveryError::Retryable(
                format!("s3://{bucket}/{key} was taken, then deleted; trying again"),
            )),
            Err(e) => Err(classify("HeadObject", bucket, key, e)),
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn put_multipart(
        &self,
        client: &aws_sdk_s3::Client,
        bucket: &str,
        key: &str,
        file: &Path,
        len: u64,
        content_type: &str,
        no_replace: bool,
    ) -> Result<Placed, DeliveryError> {
        let s = &self.settings;
        // The parts' CRC32s first: together they give the whole object's, which goes into its
        // metadata at creation (how a later attempt recognises its own upload).
        let part_size = s.part_size.bytes().max(5 << 20);
        let mut parts = Vec::new();
        let mut whole = crc32fast::Hasher::new();
        let mut offset = 0u64;
        while offset < len {
            let size = part_size.min(len - offset);
            let h = crc32_of(file, offset, size).await?;
            whole.combine(&h);
            parts.push((offset, size, encode_crc32(h.clone().finalize())));
            offset += size;
        }
        let whole = encode_crc32(whole.finalize());
        let create = client
            .create_multipart_upload()
            .bucket(bucket)
            .key(key)
            .content_type(content_type)
            .metadata(CRC32_METADATA, &whole)
            .checksum_algorithm(aws_sdk_s3::types::ChecksumAlgorithm::Crc32)
            .set_storage_class(s.storage_class.as_deref().map(Into::into))
            .set_server_side_encryption(s.sse.as_deref().map(Into::into))
            .set_ssekms_key_id(s.sse_kms_key_id.clone())
            .set_acl(s.acl.as_deref().map(Into::into));
        let upload = create
            .send()
            .await
            .map_err(|e| classify("CreateMultipartUpload", bucket, key, e))?;
        let upload_id = upload
            .upload_id()
            .ok_or_else(|| DeliveryError::Retryable("CreateMultipartUpload returned no upload id".into()))?
            .to_string();
        let result = async {
            let mut done = Vec::new();
            for (number, (offset, size, crc32)) in (1..).zip(&parts) {
                let out = client
                    .upload_part()
                    .bucket(bucket)
                    .key(key)
                    .upload_id(&upload_id)
                    .part_number(number)
                    .content_length(*size as i64)
                    .checksum_crc32(crc32)
                    .body(file_stream(file, *offset, *size))
                    .customize()
                    .disable_payload_signing()
                    .send()
                    .await
                    .map_err(|e| classify("UploadPart", bucket, key, e))?;
                crate::crashpoint::hit("multipart-part-uploaded");
                done.push(
                    aws_sdk_s3::types::CompletedPart::builder()
                        .part_number(number)
                        .set_e_tag(out.e_tag().map(str::to_string))
                        .checksum_crc32(crc32)
                        .build(),
                );
            }
            let complete = client
                .complete_multipart_upload()
                .bucket(bucket)
                .key(key)
                .upload_id(&upload_id)
                .set_if_none_match(no_replace.then(|| "*".to_string()))
                .multipart_upload(
                    aws_sdk_s3::types::CompletedMultipartUpload::builder()
                        .set_parts(Some(done))
                        .build(),
                )
                .send()
                .await;
            match complete {
                Ok(_) => {
                    tracing::debug!(key, parts = parts.len(), bytes = len, "multipart upload complete");
                    Ok(None)
                }
                Err(e) if no_replace && is_precondition_failed(&e) => Ok(Some(())),
                Err(e) => Err(classify("CompleteMultipartUpload", bucket, key, e)),
            }
        }
        .await;
        if !matches!(result, Ok(None)) {
            let _ = client
                .abort_multipart_upload()
                .bucket(bucket)
                .key(key)
                .upload_id(&upload_id)
                .send()
                .await;
        }
        match result? {
            None => Ok(Placed::Done),
            Some(()) => self.existing(client, bucket, key, len, &whole).await,
        }
    }
}

/// What became of one attempt to write a chunk at a key.
enum Placed {
    /// The chunk is there (now, or from an earlier attempt).
    Done,
    /// Other data is there.
    Taken,
}

/// The user-metadata name (`x-amz-meta-logship-crc32`) under which every object carries the
/// CRC32 of its bytes: ETags are not content hashes for multipart or SSE-KMS objects, and a
/// HEAD returns the metadata whatever the checksum mode.
const CRC32_METADATA: &str = "logship-crc32";

/// Whether S3 refused a conditional write because the key exists (412; 409 means a concurrent
/// conditional write, which a retry sorts out).
fn is_precondition_failed<E>(e: &SdkError<E, HttpResponse>) -> bool {
    e.raw_response().is_some_and(|r| r.status().as_u16() == 412)
}

/// The body of a PutObject or UploadPart: `len` bytes of `file` from `offset`, through
/// [`FileBody`]; retryable, since the SDK retries on its own.
fn file_stream(file: &Path, offset: u64, len: u64) -> ByteStream {
    let file = file.to_path_buf();
    ByteStream::new(SdkBody::retryable(move || {
        SdkBody::from_body_1_x(FileBody::new(&file, offset, len))
    }))
}

/// The CRC32 of `len` bytes of `file` from `offset` (see [`encode_crc32`] for S3's form).
///
/// Why compute it here rather than let the SDK do it: a body whose checksum the SDK computes
/// itself is sent aws-chunked with the checksum in a trailer, and over a plain `http://` endpoint
/// the SDK then signs every chunk with SHA-256 whatever `disable_payload_signing()` says
/// (aws-sdk-s3's `aws_chunked.rs`: `sign_during_encoding`), about 0.7 CPU-s per GiB. With the
/// checksum given as a header, the body goes as it is, unsigned (`UNSIGNED-PAYLOAD`), over HTTP
/// and HTTPS alike, and S3 still checks every byte against the CRC32. Reading the range once more
/// costs less than the chunked framing did: it comes from the page cache (through the same
/// pooled [`FileBody`] reads as the upload), and CRC32 runs on PCLMULQDQ.
async fn crc32_of(file: &Path, offset: u64, len: u64) -> Result<crc32fast::Hasher, DeliveryError> {
    use http_body::Body as _;
    let mut body = FileBody::new(file, offset, len);
    let mut hasher = crc32fast::Hasher::new();
    while let Some(frame) = std::future::poll_fn(|cx| std::pin::Pin::new(&mut body).poll_frame(cx)).await {
        // FileBody's errors name the file.
        let frame = frame.map_err(|e| DeliveryError::Retryable(e.to_string()))?;
        if let Some(data) = frame.data_ref() {
            hasher.update(data);
        }
    }
    Ok(hasher)
}

/// A CRC32 as S3's `x-amz-checksum-crc32` carries it: base64 of the big-endian value.
fn encode_crc32(crc32: u32) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(crc32.to_be_bytes())
}

/// What an object's body is: `len` bytes of `file`, and their CRC32 when it was kept while the
/// chunk was written ([`SealedChunk::crc32`]).
#[derive(Clone, Copy)]
struct Body<'a> {
    file: &'a Path,
    len: u64,
    crc32: Option<u32>,
}

/// S3 found that a body is not the bytes whose CRC32 logship kept while writing the chunk
/// (`BadDigest`). Damaged on the way, it is sent again (`None`: the error stays retryable). But
/// if the chunk file itself no longer holds those bytes (changed on disk by someone else's hand
/// or the disk), sending it again cannot help, and storing it would pass the change off as the
/// source's data: the chunk goes to the secondary directory, and the run does not exit 0.
async fn changed_on_disk(file: &Path, len: u64, kept: u32) -> Option<DeliveryError> {
    let now = match crc32_of(file, 0, len).await {
        Ok(h) => h.finalize(),
        Err(e) => return Some(e),
    };
    (now != kept).then(|| {
        DeliveryError::Permanent(format!(
            "{} changed after logship wrote it: its CRC32 is {now:08x}, logship wrote {kept:08x}; not uploaded",
            file.display()
        ))
    })
}

/// Sorts an SDK error into retry classes, with the operation, bucket, key and S3's code (never
/// credentials: the SDK's errors do not carry them).
fn classify<E: ProvideErrorMetadata + std::error::Error + 'static>(
    op: &str,
    bucket: &str,
    key: &str,
    e: SdkError<E, HttpResponse>,
) -> DeliveryError {
    let status = e.raw_response().map(|r| r.status().as_u16());
    let code = e.code().unwrap_or("").to_string();
    let text = if code.is_empty() {
        format!("{op} s3://{bucket}/{key}: {}", super::error_chain(&e))
    } else {
        format!("{op} s3://{bucket}/{key}: {code}: {}", e.message().unwrap_or(""))
    };
    let transient_code = matches!(
        code.as_str(),
        "SlowDown" | "InternalError" | "ServiceUnavailable" | "RequestTimeout" | "RequestTimeTooSkewed" | "ExpiredToken"
            // The body arrived damaged (our CRC32 or length did not match): send it again.
            | "BadDigest" | "IncompleteBody"
            // Another conditional write to the key was in flight: look again.
            | "ConditionalRequestConflict"
    );
    // What a person fixes (the bucket created, a policy attached, credentials rotated; IRSA's
    // and Pod Identity's are refreshed by the SDK): tried again for a minute, not for a day.
    let refused_code = matches!(
        code.as_str(),
        "NoSuchBucket"
            | "AccessDenied"
            | "InvalidAccessKeyId"
            // (s3s's answer to an unknown key id.)
            | "NotSignedUp"
            | "SignatureDoesNotMatch"
            | "AllAccessDisabled"
            | "AccountProblem"
            | "InvalidBucketName"
            | "PermanentRedirect"
            | "AuthorizationHeaderMalformed"
    );
    match &e {
        SdkError::ServiceError(_) if transient_code => DeliveryError::Retryable(text),
        SdkError::ServiceError(_) if refused_code => DeliveryError::Refused(text),
        SdkError::ServiceError(_) if status.is_some_and(|s| s >= 500 || s == 429 || s == 408) => {
            DeliveryError::Retryable(text)
        }
        SdkError::ServiceError(_) => DeliveryError::Permanent(text),
        _ => DeliveryError::Retryable(text),
    }
}
