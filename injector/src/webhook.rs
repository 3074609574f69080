//! A Kubernetes mutating admission webhook: AdmissionReview v1 in, a JSONPatch that adds the
//! sidecar out, over HTTPS (rustls). Opt-in is the MutatingWebhookConfiguration's business (a
//! namespace label and the pod label `spark-role`, see `deploy/kustomize/base/mutatingwebhook.yaml`); here a pod is
//! patched only when it carries `spark-role: driver|executor` and not the annotation
//! `logship.io/inject: "false"`. Patching an already patched pod yields an empty patch.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use base64::Engine;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use serde_json::{Value, json};

use crate::options::{Role, SidecarOptions};
use crate::patch::{Target, inject};

/// The annotation that opts a pod out.
pub const OPT_OUT_ANNOTATION: &str = "logship.io/inject";

/// Largest AdmissionReview accepted (a pod is at most about 1.5 MB).
const MAX_BODY: usize = 4 << 20;

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
    let mut patched = pod.clone();
    match inject(&mut patched, role, opts, Target::Pod) {
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

/// A bound, ready webhook.
pub struct Webhook {
    listener: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    config: Arc<WebhookConfig>,
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
        })
    }

    /// The bound address (port 0 becomes the real port).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` completes; connections in flight finish on their own tasks.
    pub async fn serve(self, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
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
            let acceptor = self.acceptor.clone();
            let config = self.config.clone();
            tokio::spawn(async move {
                let tls = match tokio::time::timeout(std::time::Duration::from_secs(10), acceptor.accept(tcp)).await {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        tracing::debug!(%peer, error = %e, "TLS handshake failed");
                        return;
                    }
                    Err(_) => return,
                };
                let service = hyper::service::service_fn(move |req| handle(req, config.clone()));
                let io = hyper_util::rt::TokioIo::new(tls);
                if let Err(e) = hyper::server::conn::http1::Builder::new()
                    .serve_connection(io, service)
                    .await
                {
                    tracing::debug!(%peer, error = %e, "connection ended");
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
) -> Result<Response<Full<Bytes>>, std::convert::Infallible> {
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/healthz") => Ok(text(StatusCode::OK, "ok\n".into())),
        (&Method::POST, "/mutate") => {
            let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
                Ok(b) => b.to_bytes(),
                Err(e) => return Ok(text(StatusCode::PAYLOAD_TOO_LARGE, format!("{e}\n"))),
            };
            match review(&body, &config.options, config.on_error) {
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
            "POST /mutate (AdmissionReview v1) or GET /healthz\n".into(),
        )),
    }
}
