//! A Kubernetes mutating admission webhook: AdmissionReview v1 in, a JSONPatch that adds the
//! sidecar out, over HTTPS (rustls). Opt-in is the MutatingWebhookConfiguration's business (a
//! namespace label and the pod label `spark-role`, see `deploy/kustomize/base/mutatingwebhook.yaml`); here a pod is
//! patched only when it carries `spark-role: driver|executor` and not the annotation
//! `logship.io/inject: "false"`. Patching an already patched pod yields an empty patch.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use base64::Engine;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use serde_json::{Value, json};

use crate::options::{Role, SidecarOptions, Termination};
use crate::patch::{Target, inject};

/// The annotation that opts a pod out.
pub const OPT_OUT_ANNOTATION: &str = "logship.io/inject";

/// Pod annotations that override the webhook's defaults for one pod (one webhook serves many
/// teams), with what each takes. Any other `logship.io/` annotation is refused as a typo.
pub const ANNOTATIONS: &[(&str, &str)] = &[
    (
        "logship.io/inject",
        "\"false\" leaves the pod alone (\"true\" is the default)",
    ),
    ("logship.io/to", "where container logs go, as --to"),
    (
        "logship.io/events-to",
        "where the driver's event logs go, as --events-to",
    ),
    (
        "logship.io/presigned-post-secret",
        "a Secret holding a presigned POST, as --presigned-post-secret",
    ),
    (
        "logship.io/termination",
        "auto, heartbeat, native or wrap, as --termination",
    ),
    ("logship.io/store-as", "text, gzip or zstd, as --store-as"),
];

/// The sidecar options for one pod: the webhook's, overridden by the pod's `logship.io/`
/// annotations. An annotation that is unknown or has a bad value is an error naming it.
pub fn options_for(meta: &Value, defaults: &SidecarOptions) -> Result<SidecarOptions, String> {
    let mut o = defaults.clone();
    let Some(annotations) = meta["annotations"].as_object() else {
        return Ok(o);
    };
    let known = || ANNOTATIONS.iter().map(|(k, _)| *k).collect::<Vec<_>>().join(", ");
    for (key, value) in annotations {
        let Some(name) = key.strip_prefix("logship.io/") else {
            continue;
        };
        let bad = |why: String| format!("annotation {key}: {value}: {why}");
        let v = value.as_str().ok_or_else(|| bad("must be a string".into()))?;
        match name {
            "inject" if v == "true" || v == "false" => {}
            "inject" => return Err(bad("must be \"true\" or \"false\"".into())),
            "to" => {
                let d = crate::sidecar::parse_destination("logship.io/to", v).map_err(|e| bad(e.to_string()))?;
                annotation_destination(v, &d).map_err(bad)?;
                o.to = v.to_string();
            }
            "events-to" => {
                let d = crate::sidecar::parse_destination("logship.io/events-to", v).map_err(|e| bad(e.to_string()))?;
                annotation_destination(v, &d).map_err(bad)?;
                o.events_to = Some(v.to_string());
            }
            "presigned-post-secret" => {
                let dns = !v.is_empty()
                    && v.len() <= 253
                    && v.bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
                    && !v.starts_with(['-', '.'])
                    && !v.ends_with(['-', '.']);
                if !dns {
                    return Err(bad("not a Secret name (lowercase letters, digits, '-' and '.')".into()));
                }
                o.presigned_post_secret = Some(v.to_string());
            }
            "termination" => {
                o.termination = <Termination as clap::ValueEnum>::from_str(v, false)
                    .map_err(|_| bad("one of auto, heartbeat, native, wrap".into()))?;
            }
            "store-as" => {
                logship_config::StoreAs::parse(v).ok_or_else(|| bad("one of text, gzip, zstd".into()))?;
                o.store_as = v.to_string();
            }
            _ => return Err(format!("annotation {key}: unknown; logship reads {}", known())),
        }
    }
    Ok(o)
}

/// A destination a pod's annotation may name: one the sidecar can use as written. Environment
/// references are refused (the sidecar's environment holds its credentials: `${AWS_SECRET_ACCESS_KEY}`
/// would be expanded into object keys, and an unset one stops the sidecar at start); so are
/// control characters, a bucket name S3 refuses and a log group name CloudWatch refuses.
fn annotation_destination(v: &str, d: &logship_config::destination::Destination) -> Result<(), String> {
    use logship_config::destination::Destination;
    if v.contains('$') {
        return Err(
            "environment references are not allowed in an annotation (the sidecar's environment holds its credentials)"
                .into(),
        );
    }
    if v.chars().any(char::is_control) {
        return Err("control characters are not allowed".into());
    }
    match d {
        Destination::S3 { bucket, .. } => {
            let b = bucket.as_bytes();
            let ok = (3..=63).contains(&b.len())
                && b.iter()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'.' || *c == b'-')
                && b[0].is_ascii_alphanumeric()
                && b[b.len() - 1].is_ascii_alphanumeric()
                && !bucket.contains("..");
            if !ok {
                return Err(format!(
                    "{bucket:?} is not an S3 bucket name (3 to 63 lowercase letters, digits, '.' and '-')"
                ));
            }
        }
        Destination::CloudWatch { group, .. } => {
            if !logship_config::is_log_group_name(group) {
                return Err(format!("{group:?} is not a CloudWatch log group name"));
            }
        }
        Destination::File(_) | Destination::Stdout => {}
    }
    Ok(())
}

/// Largest AdmissionReview accepted: a pod is at most about 1.5 MB (etcd's limit), and a
/// CREATE review carries it once.
const MAX_BODY: usize = 3 << 20;

/// Most JSON objects and arrays (counted as `{` and `[` bytes, strings included: an upper
/// bound) a review may hold. Parsed, each costs tens of bytes: a 3 MiB body of `[{},{},…]`
/// would take a hundred megabytes. A real pod has a few thousand.
const MAX_JSON_CONTAINERS: usize = 100_000;

/// Reviews read and answered at once: with [`MAX_BODY`] and [`MAX_JSON_CONTAINERS`], this
/// bounds the memory of all reviews in flight to a few tens of megabytes, within the
/// Deployment's 64 Mi limit, whatever the number of clients.
const REVIEWS_AT_ONCE: usize = 4;

/// Connections held at once; more are closed at once (the API server retries). Far below a
/// container's usual `ulimit -n` of 1,024.
const MAX_CONNECTIONS: usize = 256;

/// How long a client may take to send a request's headers, or its body.
const READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// How long one connection may live (the API server opens another).
const CONNECTION_LIFETIME: std::time::Duration = std::time::Duration::from_secs(300);

/// Why the webhook cannot serve.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    /// The certificate or key cannot be read.
    #[error("TLS certificate {cert} / key {key}: {message}")]
    Tls {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The address cannot be bound.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: String,
        /// The error.
        source: std::io::Error,
    },
}

/// What to do when a pod that asked for the sidecar cannot get it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum OnError {
    /// Refuse the pod with the reason (spark-submit shows it): no job runs without its logs.
    #[default]
    Deny,
    /// Admit the pod unchanged, with the reason as an admission warning.
    Allow,
}

/// Answers one AdmissionReview (the request body) with an AdmissionReview response.
pub fn review(body: &[u8], opts: &SidecarOptions, on_error: OnError) -> Result<Value, String> {
    let containers = body.iter().filter(|&&b| b == b'{' || b == b'[').count();
    if containers > MAX_JSON_CONTAINERS {
        return Err(format!(
            "not an AdmissionReview a pod makes: {containers} JSON objects and arrays (at most {MAX_JSON_CONTAINERS})"
        ));
    }
    let review: Value = serde_json::from_slice(body).map_err(|e| format!("not an AdmissionReview: {e}"))?;
    let request = review.get("request").ok_or("an AdmissionReview without a request")?;
    let uid = request
        .get("uid")
        .cloned()
        .ok_or("an AdmissionReview request without a uid")?;
    let api_version = review
        .get("apiVersion")
        .cloned()
        .unwrap_or(json!("admission.k8s.io/v1"));
    let respond = |response: Value| {
        let mut r = json!({"uid": uid});
        if let (Value::Object(r), Value::Object(extra)) = (&mut r, response) {
            r.extend(extra);
        }
        json!({"apiVersion": api_version, "kind": "AdmissionReview", "response": r})
    };
    let allow = || respond(json!({"allowed": true}));
    let is_pod_create = request["kind"]["kind"] == "Pod" && request["operation"] == "CREATE";
    let Some(pod) = request.get("object").filter(|_| is_pod_create) else {
        return Ok(allow());
    };
    let meta = &pod["metadata"];
    if meta["annotations"][OPT_OUT_ANNOTATION] == "false" {
        return Ok(allow());
    }
    let Some(role) = meta["labels"]["spark-role"].as_str().and_then(Role::from_label) else {
        return Ok(allow());
    };
    let name = meta["name"]
        .as_str()
        .or(meta["generateName"].as_str())
        .unwrap_or("(unnamed)");
    let namespace = request["namespace"].as_str().unwrap_or("");
    // An annotation the pod got wrong is its owner's to fix: refused, whatever --on-error says.
    let opts = match options_for(meta, opts) {
        Ok(o) => o,
        Err(why) => {
            let message = format!("logship cannot patch {namespace}/{name}: {why}");
            tracing::warn!("{message}");
            return Ok(respond(
                json!({"allowed": false, "status": {"code": 400, "message": message}}),
            ));
        }
    };
    let mut patched = pod.clone();
    match inject(&mut patched, role, &opts, Target::Pod) {
        Ok(notes) => {
            let patch = json_patch::diff(pod, &patched);
            tracing::info!(
                pod = name,
                namespace,
                role = role.label(),
                operations = patch.len(),
                "patched"
            );
            let mut response = json!({"allowed": true});
            if !patch.is_empty() {
                let bytes = serde_json::to_vec(&patch).map_err(|e| e.to_string())?;
                response["patchType"] = json!("JSONPatch");
                response["patch"] = json!(base64::engine::general_purpose::STANDARD.encode(bytes));
            }
            if !notes.is_empty() {
                response["warnings"] = json!(notes.iter().map(|n| format!("logship: {n}")).collect::<Vec<_>>());
            }
            Ok(respond(response))
        }
        Err(e) => {
            let message = format!(
                "logship cannot add its sidecar to {role} pod {namespace}/{name}: {e}",
                role = role.label()
            );
            tracing::warn!("{message}");
            Ok(match on_error {
                OnError::Deny => respond(json!({"allowed": false, "status": {"code": 400, "message": message}})),
                OnError::Allow => respond(json!({"allowed": true, "warnings": [message]})),
            })
        }
    }
}

/// A certificate and key read from files, read again when either changes (cert-manager and
/// Secret volumes replace them in place), checked at each new connection.
#[derive(Debug)]
struct CertFiles {
    cert: PathBuf,
    key: PathBuf,
    current: Mutex<(Option<SystemTime>, Arc<CertifiedKey>)>,
}

impl CertFiles {
    fn open(cert: PathBuf, key: PathBuf) -> Result<CertFiles, WebhookError> {
        let stamp = Self::stamp(&cert, &key);
        let loaded = load_certified_key(&cert, &key)?;
        Ok(CertFiles {
            cert,
            key,
            current: Mutex::new((stamp, Arc::new(loaded))),
        })
    }

    fn stamp(cert: &std::path::Path, key: &std::path::Path) -> Option<SystemTime> {
        let m = |p: &std::path::Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
        Some(m(cert)?.max(m(key)?))
    }
}

impl ResolvesServerCert for CertFiles {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let mut cur = self.current.lock().unwrap_or_else(|e| e.into_inner());
        let stamp = Self::stamp(&self.cert, &self.key);
        if stamp.is_some() && stamp != cur.0 {
            match load_certified_key(&self.cert, &self.key) {
                Ok(k) => {
                    tracing::info!(cert = %self.cert.display(), "TLS certificate reloaded");
                    *cur = (stamp, Arc::new(k));
                }
                // A half-replaced pair: keep serving the old one and try again next time.
                Err(e) => tracing::warn!("{e}; keeping the previous certificate"),
            }
        }
        Some(cur.1.clone())
    }
}

fn load_certified_key(cert: &std::path::Path, key: &std::path::Path) -> Result<CertifiedKey, WebhookError> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let err = |message: String| WebhookError::Tls {
        cert: cert.to_path_buf(),
        key: key.to_path_buf(),
        message,
    };
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| err(format!("certificate: {e}")))?;
    if certs.is_empty() {
        return Err(err("no certificate in the file".into()));
    }
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| err(format!("key: {e}")))?;
    let signing = rustls::crypto::ring::sign::any_supported_type(&key_der).map_err(|e| err(format!("key: {e}")))?;
    Ok(CertifiedKey::new(certs, signing))
}

/// Where and how the webhook serves.
#[derive(Debug, Clone)]
pub struct WebhookConfig {
    /// The listen address, e.g. 0.0.0.0:8443.
    pub listen: String,
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
    /// The sidecar to add.
    pub options: SidecarOptions,
    /// What to do when a pod cannot be patched.
    pub on_error: OnError,
}

/// What the webhook did, for `GET /metrics` (Prometheus text).
#[derive(Debug, Default)]
pub struct WebhookMetrics {
    /// AdmissionReviews received.
    pub requests: AtomicU64,
    /// Pods that got the sidecar (a non-empty patch).
    pub patched: AtomicU64,
    /// Reviews answered without a change: not a Spark pod, opted out, already patched.
    pub skipped: AtomicU64,
    /// Pods refused (a bad annotation, or a pod that cannot be patched with `--on-error deny`).
    pub denied: AtomicU64,
    /// Requests that were not a readable AdmissionReview.
    pub errors: AtomicU64,
    /// Time spent answering reviews, in microseconds (with `requests`, the mean latency).
    pub latency_micros: AtomicU64,
}

impl WebhookMetrics {
    /// Counts one answered review by what it answered.
    fn record(&self, answer: &Result<Value, String>, took: std::time::Duration) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.latency_micros
            .fetch_add(took.as_micros() as u64, Ordering::Relaxed);
        let counter = match answer {
            Err(_) => &self.errors,
            Ok(v) if v["response"]["allowed"] == false => &self.denied,
            Ok(v) if v["response"].get("patch").is_some() => &self.patched,
            Ok(_) => &self.skipped,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Prometheus text exposition format.
    pub fn render(&self) -> String {
        let v = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let mut s = String::new();
        for (name, help, value) in [
            ("requests", "AdmissionReviews received.", v(&self.requests)),
            ("patched", "Pods given the sidecar.", v(&self.patched)),
            (
                "skipped",
                "Reviews answered without a change (not Spark, opted out, already patched).",
                v(&self.skipped),
            ),
            ("denied", "Pods refused, with the reason.", v(&self.denied)),
            (
                "errors",
                "Requests that were not a readable AdmissionReview.",
                v(&self.errors),
            ),
        ] {
            s.push_str(&format!(
                "# HELP logship_inject_{name}_total {help}\n# TYPE logship_inject_{name}_total counter\nlogship_inject_{name}_total {value}\n"
            ));
        }
        let secs = v(&self.latency_micros) as f64 / 1e6;
        s.push_str(&format!(
            "# HELP logship_inject_review_seconds Time spent answering AdmissionReviews.\n# TYPE logship_inject_review_seconds summary\nlogship_inject_review_seconds_sum {secs:.6}\nlogship_inject_review_seconds_count {}\n",
            v(&self.requests)
        ));
        s
    }
}

/// A bound, ready webhook.
pub struct Webhook {
    listener: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    config: Arc<WebhookConfig>,
    metrics: Arc<WebhookMetrics>,
}

impl Webhook {
    /// Reads the certificate and binds the address (errors are reported before serving).
    pub async fn bind(config: WebhookConfig) -> Result<Webhook, WebhookError> {
        let certs = CertFiles::open(config.cert.clone(), config.key.clone())?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut tls = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| WebhookError::Tls {
                cert: config.cert.clone(),
                key: config.key.clone(),
                message: e.to_string(),
            })?
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(certs));
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        let listener = tokio::net::TcpListener::bind(&config.listen)
            .await
            .map_err(|source| WebhookError::Listen {
                addr: config.listen.clone(),
                source,
            })?;
        Ok(Webhook {
            listener,
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(tls)),
            config: Arc::new(config),
            metrics: Arc::default(),
        })
    }

    /// The bound address (port 0 becomes the real port).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` completes; connections in flight finish on their own tasks.
    pub async fn serve(self, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        let connections = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
        let reviews = Arc::new(tokio::sync::Semaphore::new(REVIEWS_AT_ONCE));
        loop {
            let (tcp, peer) = tokio::select! {
                _ = &mut shutdown => return,
                r = self.listener.accept() => match r {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            let Ok(slot) = connections.clone().try_acquire_owned() else {
                tracing::warn!(%peer, max = MAX_CONNECTIONS, "too many connections; closing this one");
                drop(tcp);
                continue;
            };
            let acceptor = self.acceptor.clone();
            let config = self.config.clone();
            let metrics = self.metrics.clone();
            let reviews = reviews.clone();
            tokio::spawn(async move {
                let _slot = slot;
                let tls = match tokio::time::timeout(READ_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        tracing::debug!(%peer, error = %e, "TLS handshake failed");
                        return;
                    }
                    Err(_) => return,
                };
                let service = hyper::service::service_fn(move |req| {
                    handle(req, config.clone(), metrics.clone(), reviews.clone())
                });
                let io = hyper_util::rt::TokioIo::new(tls);
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(READ_TIMEOUT)
                    .max_buf_size(64 << 10)
                    .serve_connection(io, service);
                match tokio::time::timeout(CONNECTION_LIFETIME, conn).await {
                    Ok(Err(e)) => tracing::debug!(%peer, error = %e, "connection ended"),
                    Ok(Ok(())) => {}
                    Err(_) => tracing::debug!(%peer, "connection closed after its lifetime"),
                }
            });
        }
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r
}

async fn handle(
    req: Request<Incoming>,
    config: Arc<WebhookConfig>,
    metrics: Arc<WebhookMetrics>,
    reviews: Arc<tokio::sync::Semaphore>,
) -> Result<Response<Full<Bytes>>, std::convert::Infallible> {
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/healthz") => Ok(text(StatusCode::OK, "ok\n".into())),
        (&Method::GET, "/metrics") => Ok(text(StatusCode::OK, metrics.render())),
        (&Method::POST, "/mutate") => {
            // The body is read, parsed and answered under a permit: memory stays bounded.
            let Ok(_permit) = reviews.acquire().await else {
                return Ok(text(StatusCode::SERVICE_UNAVAILABLE, "shutting down\n".into()));
            };
            let body = match tokio::time::timeout(READ_TIMEOUT, Limited::new(req.into_body(), MAX_BODY).collect()).await
            {
                Ok(Ok(b)) => b.to_bytes(),
                Ok(Err(e)) => return Ok(text(StatusCode::PAYLOAD_TOO_LARGE, format!("{e}\n"))),
                Err(_) => {
                    return Ok(text(
                        StatusCode::REQUEST_TIMEOUT,
                        "the body did not arrive in time\n".into(),
                    ));
                }
            };
            let started = std::time::Instant::now();
            let answer = review(&body, &config.options, config.on_error);
            metrics.record(&answer, started.elapsed());
            match answer {
                Ok(v) => {
                    let mut r = text(StatusCode::OK, v.to_string());
                    r.headers_mut().insert(
                        hyper::header::CONTENT_TYPE,
                        hyper::header::HeaderValue::from_static("application/json"),
                    );
                    Ok(r)
                }
                Err(e) => Ok(text(StatusCode::BAD_REQUEST, format!("{e}\n"))),
            }
        }
        _ => Ok(text(
            StatusCode::NOT_FOUND,
            "POST /mutate (AdmissionReview v1), GET /healthz or GET /metrics\n".into(),
        )),
    }
}
