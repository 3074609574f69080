//! A real S3 server in the test process: s3s (protocol, SigV4 and POST-policy checks) over
//! s3s-fs (objects as files), with authentication on, listening on 127.0.0.1. It stops when
//! dropped.

use std::path::{Path, PathBuf};

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder as ConnBuilder;

/// The access key the server accepts.
pub const ACCESS_KEY: &str = "AKIALOGSHIPTEST00001";
/// Its secret.
pub const SECRET_KEY: &str = "logship-test-secret-key-0000000000000000";
/// A second key pair the server accepts (to tell which credential signed a request).
pub const ACCESS_KEY_2: &str = "AKIALOGSHIPTEST00002";
/// Its secret.
pub const SECRET_KEY_2: &str = "logship-test-secret-key-0000000000000002";

/// A running S3 server.
pub struct S3Server {
    /// `http://127.0.0.1:PORT`.
    pub endpoint: String,
    /// Where objects are stored (`root/<bucket>/<key>`).
    pub root: tempfile::TempDir,
    rt: Option<tokio::runtime::Runtime>,
    /// Every authenticated request the server accepted: its operation and headers.
    requests: Requests,
}

/// The server's access check, as s3s does it by default (a signed request is required), that
/// also records each request's operation and headers, so tests can see what reached the server.
struct Recorder {
    requests: Requests,
    /// Requests for keys containing this are held this long before they are let through (and
    /// recorded): slow uploads, to show what a client does while they are in flight.
    hold: Option<(String, std::time::Duration)>,
}

/// Every authenticated request, in the order the server let it through: its operation, headers,
/// the access key that signed it, and its object key ("" when it names none).
type Requests = std::sync::Arc<std::sync::Mutex<Vec<(String, http::HeaderMap, String, String)>>>;

#[async_trait::async_trait]
impl s3s::access::S3Access for Recorder {
    async fn check(&self, cx: &mut s3s::access::S3AccessContext<'_>) -> s3s::S3Result<()> {
        let Some(key) = cx.credentials().map(|c| c.access_key.clone()) else {
            return Err(s3s::s3_error!(AccessDenied, "Signature is required"));
        };
        let op = cx.s3_op().name().to_string();
        let object = match cx.s3_path() {
            s3s::path::S3Path::Object { key, .. } => key.to_string(),
            _ => String::new(),
        };
        if let Some((part, delay)) = &self.hold
            && object.contains(part.as_str())
        {
            tokio::time::sleep(*delay).await;
        }
        self.requests
            .lock()
            .unwrap()
            .push((op, cx.headers().clone(), key, object));
        Ok(())
    }
}

impl S3Server {
    /// Starts a server with the given buckets.
    pub fn start(buckets: &[&str]) -> S3Server {
        Self::start_holding(buckets, None)
    }

    /// [`S3Server::start`], holding each request for a key that contains `hold.0` for `hold.1`.
    pub fn start_holding(buckets: &[&str], hold: Option<(&str, std::time::Duration)>) -> S3Server {
        let root = tempfile::tempdir().unwrap();
        for b in buckets {
            std::fs::create_dir_all(root.path().join(b)).unwrap();
        }
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
        let addr = listener.local_addr().unwrap();
        let fs = s3s_fs::FileSystem::new(root.path()).unwrap();
        let mut builder = s3s::service::S3ServiceBuilder::new(fs);
        let mut auth = s3s::auth::SimpleAuth::new();
        auth.register(ACCESS_KEY.into(), SECRET_KEY.into());
        auth.register(ACCESS_KEY_2.into(), SECRET_KEY_2.into());
        builder.set_auth(auth);
        let requests = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        builder.set_access(Recorder {
            requests: requests.clone(),
            hold: hold.map(|(k, d)| (k.to_string(), d)),
        });
        let service = builder.build();
        rt.spawn(async move {
            loop {
                let Ok((socket, _)) = listener.accept().await else {
                    continue;
                };
                let service = super::atomic_requests::atomic_requests(service.clone());
                tokio::spawn(async move {
                    let _ = ConnBuilder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(socket), service)
                        .await;
                });
            }
        });
        S3Server {
            endpoint: format!("http://{addr}"),
            root,
            rt: Some(rt),
            requests,
        }
    }

    /// An object's bytes.
    pub fn object(&self, bucket: &str, key: &str) -> Option<Vec<u8>> {
        std::fs::read(self.root.path().join(bucket).join(key)).ok()
    }

    /// Every key in a bucket, sorted.
    pub fn keys(&self, bucket: &str) -> Vec<String> {
        let base = self.root.path().join(bucket);
        let mut out = Vec::new();
        walk(&base, &base, &mut out);
        out.sort();
        out
    }

    /// A presigned POST JSON made by `logship presign` for writing under `prefix` in `bucket`.
    pub fn presign(&self, bucket: &str, prefix: &str, expires: &str, max_size: &str) -> Vec<u8> {
        self.presign_with(bucket, prefix, expires, max_size, (ACCESS_KEY, SECRET_KEY))
    }

    /// [`S3Server::presign`], signed with the key pair `(access key, secret)`.
    pub fn presign_with(
        &self,
        bucket: &str,
        prefix: &str,
        expires: &str,
        max_size: &str,
        key: (&str, &str),
    ) -> Vec<u8> {
        let out = crate::common::logship_cmd()
            .args([
                "presign",
                "--bucket",
                bucket,
                "--key-prefix",
                prefix,
                "--expires",
                expires,
            ])
            .args(["--max-size", max_size, "--endpoint", &self.endpoint])
            .envs(self.env())
            .env("AWS_ACCESS_KEY_ID", key.0)
            .env("AWS_SECRET_ACCESS_KEY", key.1)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        out.stdout
    }

    /// The headers of every request of operation `op` (e.g. `PutObject`) so far.
    pub fn requests(&self, op: &str) -> Vec<http::HeaderMap> {
        let all = self.requests.lock().unwrap();
        all.iter()
            .filter(|(o, _, _, _)| o == op)
            .map(|(_, h, _, _)| h.clone())
            .collect()
    }

    /// The access key that signed each request of operation `op` so far, in order.
    pub fn access_keys(&self, op: &str) -> Vec<String> {
        let all = self.requests.lock().unwrap();
        all.iter()
            .filter(|(o, _, _, _)| o == op)
            .map(|(_, _, k, _)| k.clone())
            .collect()
    }

    /// The object keys of every request of operation `op` so far, in the order they were let through.
    pub fn keys_in_order(&self, op: &str) -> Vec<String> {
        let all = self.requests.lock().unwrap();
        all.iter()
            .filter(|(o, _, _, _)| o == op)
            .map(|(_, _, _, k)| k.clone())
            .collect()
    }

    /// Environment for logship / boto3 to use the server with static credentials.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID".into(), ACCESS_KEY.into()),
            ("AWS_SECRET_ACCESS_KEY".into(), SECRET_KEY.into()),
            ("AWS_REGION".into(), "us-east-1".into()),
            ("AWS_EC2_METADATA_DISABLED".into(), "true".into()),
        ]
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

fn walk(base: &Path, dir: &Path, out: &mut Vec<String>) {
    let Ok(rd) = std::fs::read_dir(dir) else { return };
    for e in rd.flatten() {
        let p: PathBuf = e.path();
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue;
        }
        if p.is_dir() {
            walk(base, &p, out);
        } else {
            out.push(p.strip_prefix(base).unwrap().to_string_lossy().into_owned());
        }
    }
}

/// What the kubelet does to a Secret volume: a new timestamped directory, then `..data` swapped
/// to it atomically; `presigned-post` is a symlink through `..data`.
pub fn kubelet_write(dir: &Path, content: &[u8], generation: u32) {
    let gen_dir = dir.join(format!("..2026_11_24_00_00_{generation:02}.000000000"));
    std::fs::create_dir_all(&gen_dir).unwrap();
    std::fs::write(gen_dir.join("presigned-post"), content).unwrap();
    let tmp = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(gen_dir.file_name().unwrap(), &tmp).unwrap();
    std::fs::rename(&tmp, dir.join("..data")).unwrap();
    // The kubelet then removes the earlier generations.
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with("..2") && e.path() != gen_dir {
            std::fs::remove_dir_all(e.path()).unwrap();
        }
    }
    let link = dir.join("presigned-post");
    if std::fs::symlink_metadata(&link).is_err() {
        std::os::unix::fs::symlink("..data/presigned-post", &link).unwrap();
    }
}

/// What the fault proxy does with one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Forward to the real server.
    Pass,
    /// Answer 500 Internal Server Error.
    Status500,
    /// Answer 503 SlowDown (S3's throttling).
    SlowDown,
    /// Read the request, then drop the connection.
    Reset,
    /// Read the request and never answer.
    Stall,
    /// Forward to the real server, with one byte of the request body changed on the way (what a
    /// bad NIC or a buggy middlebox does; only a checksum the server checks catches it).
    Corrupt,
    /// Answer 400 with CloudWatch's ThrottlingException (JSON protocol).
    Throttle,
}

/// A TCP proxy in front of the real server that injects the faults no real server produces on
/// demand: the first connections get `plan`'s faults, in order; later ones (or all, with
/// `always`) are forwarded or get `always`'s fault.
pub struct FaultProxy {
    /// `http://127.0.0.1:PORT` of the proxy.
    pub endpoint: String,
    /// Connections handled so far, by fault.
    pub seen: std::sync::Arc<std::sync::Mutex<Vec<Fault>>>,
    /// CloudWatch PutLogEvents requests forwarded so far (counted on the wire).
    pub put_log_events: std::sync::Arc<std::sync::atomic::AtomicU64>,
    always: std::sync::Arc<std::sync::Mutex<Fault>>,
    passing: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>>,
    _rt: tokio::runtime::Runtime,
}

impl FaultProxy {
    pub fn start(target: &str, plan: Vec<Fault>, always: Fault) -> FaultProxy {
        let target = target.trim_start_matches("http://").to_string();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen2 = seen.clone();
        let always = std::sync::Arc::new(std::sync::Mutex::new(always));
        let always2 = always.clone();
        let passing = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let passing2 = passing.clone();
        let put_log_events = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let puts2 = put_log_events.clone();
        rt.spawn(async move {
            let mut n = 0;
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    continue;
                };
                let fault = plan.get(n).copied().unwrap_or(*always2.lock().unwrap());
                n += 1;
                seen2.lock().unwrap().push(fault);
                let target = target.clone();
                let passing = passing2.clone();
                let puts = puts2.clone();
                let task = tokio::spawn(async move {
                    use tokio::io::{AsyncReadExt, AsyncWriteExt};
                    if fault == Fault::Pass {
                        if let Ok(server) = tokio::net::TcpStream::connect(&target).await {
                            // Forward both ways, counting the PutLogEvents requests going up.
                            let (mut from_client, mut to_server) = (client, server);
                            let (mut cr, mut cw) = from_client.split();
                            let (mut sr, mut sw) = to_server.split();
                            let up = async {
                                let mut buf = vec![0u8; 64 * 1024];
                                let mut tail: Vec<u8> = Vec::new();
                                loop {
                                    let n = match cr.read(&mut buf).await {
                                        Ok(0) | Err(_) => break,
                                        Ok(n) => n,
                                    };
                                    tail.extend_from_slice(&buf[..n]);
                                    let found = tail.windows(PUT_LOG_EVENTS.len()).filter(|w| *w == PUT_LOG_EVENTS).count();
                                    puts.fetch_add(found as u64, std::sync::atomic::Ordering::SeqCst);
                                    let keep = tail.len().min(PUT_LOG_EVENTS.len() - 1);
                                    tail.drain(..tail.len() - keep);
                                    if sw.write_all(&buf[..n]).await.is_err() {
                                        break;
                                    }
                                }
                                let _ = sw.shutdown().await;
                            };
                            let down = async {
                                let _ = tokio::io::copy(&mut sr, &mut cw).await;
                                let _ = cw.shutdown().await;
                            };
                            tokio::join!(up, down);
                        }
                        return;
                    }
                    if fault == Fault::Corrupt {
                        let Ok(mut server) = tokio::net::TcpStream::connect(&target).await else {
                            return;
                        };
                        // Forward until the first body byte, flip its low bit, then pass the rest.
                        let mut head = Vec::new();
                        let mut buf = vec![0u8; 64 * 1024];
                        loop {
                            let Ok(n) = client.read(&mut buf).await else { return };
                            if n == 0 {
                                return;
                            }
                            head.extend_from_slice(&buf[..n]);
                            if let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n")
                                && head.len() > end + 4
                            {
                                head[end + 4] ^= 1;
                                let _ = server.write_all(&head).await;
                                break;
                            }
                        }
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                        return;
                    }
                    // Read the whole request (its head, then Content-Length bytes of body, or
                    // until it goes quiet), so that the answer is read as an answer: closing
                    // with request bytes unread resets the connection, and the client sees a
                    // failed write instead of the 500 or 503.
                    read_request(&mut client).await;
                    let reply = match fault {
                        Fault::Status500 => response("500 Internal Server Error", ""),
                        Fault::Throttle => format!(
                            "HTTP/1.1 400 Bad Request\r\nContent-Type: application/x-amz-json-1.1\r\nx-amzn-ErrorType: ThrottlingException\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{}",
                            THROTTLE.len(),
                            THROTTLE
                        ),
                        Fault::SlowDown => response(
                            "503 Slow Down",
                            "<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>",
                        ),
                        Fault::Reset => String::new(),
                        Fault::Stall => {
                            tokio::time::sleep(std::time::Duration::from_secs(3600)).await;
                            String::new()
                        }
                        Fault::Pass | Fault::Corrupt => unreachable!(),
                    };
                    let _ = client.write_all(reply.as_bytes()).await;
                    let _ = client.shutdown().await;
                });
                if fault == Fault::Pass {
                    passing.lock().unwrap().push(task.abort_handle());
                }
            }
        });
        FaultProxy {
            endpoint,
            seen,
            put_log_events,
            always,
            passing,
            _rt: rt,
        }
    }

    /// From now on, new connections get `fault`; open pass-through connections are cut (as if
    /// the server went away).
    pub fn set_always(&self, fault: Fault) {
        *self.always.lock().unwrap() = fault;
        for h in self.passing.lock().unwrap().drain(..) {
            h.abort();
        }
    }
}

/// Reads one HTTP request: the head, then the body its Content-Length gives (each read waits
/// at most 2 s; without a length, until 300 ms pass without bytes).
async fn read_request(client: &mut tokio::net::TcpStream) {
    use tokio::io::AsyncReadExt;
    let mut got = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut want: Option<usize> = None;
    loop {
        if want.is_some_and(|w| got.len() >= w) {
            return;
        }
        let wait = if want.is_some() { 2000 } else { 300 };
        let n = match tokio::time::timeout(std::time::Duration::from_millis(wait), client.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => n,
            _ => return,
        };
        got.extend_from_slice(&buf[..n]);
        if want.is_none()
            && let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n")
        {
            let head = String::from_utf8_lossy(&got[..end]).to_ascii_lowercase();
            let len = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok());
            want = len.map(|l| end + 4 + l);
        }
    }
}

/// The `X-Amz-Target` value of a PutLogEvents request.
const PUT_LOG_EVENTS: &[u8] = b"Logs_20140328.PutLogEvents";

const THROTTLE: &str = r#"{"__type":"ThrottlingException","message":"Rate exceeded"}"#;

fn response(status: &str, body: &str) -> String {
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

/// An object's bytes as written: `store_as` is `text`, `gzip` or `zstd`.
pub fn decode(bytes: &[u8], store_as: &str) -> Vec<u8> {
    match store_as {
        "gzip" => {
            let mut out = Vec::new();
            std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(bytes), &mut out).unwrap();
            out
        }
        "zstd" => zstd::decode_all(bytes).unwrap(),
        _ => bytes.to_vec(),
    }
}

/// The objects of bucket `logs` under `prefix`, concatenated in the order of the index that
/// `index_of` reads from the rest of each key (`<n>_<hex>.txt`, `<n>_<app>`); the indices run 1..N.
pub fn joined(server: &S3Server, prefix: &str, index_of: impl Fn(&str) -> Option<u64>) -> Vec<u8> {
    let mut keys: Vec<(u64, String)> = server
        .keys("logs")
        .into_iter()
        .filter_map(|k| Some((index_of(k.strip_prefix(prefix)?)?, k)))
        .collect();
    keys.sort();
    let idx: Vec<u64> = keys.iter().map(|k| k.0).collect();
    assert_eq!(
        idx,
        (1..=idx.len() as u64).collect::<Vec<_>>(),
        "{prefix}: indices run 1..N"
    );
    keys.iter()
        .flat_map(|(_, k)| server.object("logs", k).unwrap())
        .collect()
}

/// The objects of bucket `logs` under `prefix/<tag>/`, in time slice and index order, decoded, joined.
pub fn collect_s3(server: &S3Server, prefix: &str, tag: &str, store_as: &str) -> Vec<u8> {
    let dir = format!("{prefix}/{tag}/");
    let mut keys: Vec<(u64, u64, String)> = server
        .keys("logs")
        .into_iter()
        .filter_map(|k| {
            let name = k.strip_prefix(&dir)?;
            // `<slice>_<index>.<ext>`, or `<slice>_<index>_<hex_random>.<ext>` (presigned POST).
            let stem = name.rsplit_once('.')?.0;
            let mut parts = stem.split('_');
            let (slice, index) = (parts.next()?, parts.next()?);
            Some((slice.parse().ok()?, index.parse().ok()?, k.clone()))
        })
        .collect();
    keys.sort();
    let mut all = Vec::new();
    for (_, _, k) in keys {
        all.extend(decode(&server.object("logs", &k).unwrap(), store_as));
    }
    all
}
