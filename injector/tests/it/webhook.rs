//! The admission webhook over real HTTPS (rustls, a certificate made by openssl): it answers
//! AdmissionReview JSON for a pod real Spark built (`fixtures/admission-review-driver.json`,
//! recorded from spark-submit), its JSONPatch applied to that pod gives exactly what the CLI
//! gives, a patched pod gets an empty patch, opt-in and opt-out hold, conflicts deny (or warn),
//! health answers, and a replaced certificate is served without a restart.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::common::*;
use base64::Engine;
use logship_inject::options::SidecarOptions;
use logship_inject::webhook::{OnError, Webhook, WebhookConfig};
use serde_json::{Value, json};

const IMAGE: &str = "registry.example/logship:1";
/// Heartbeat mode, said: these tests check the patch's shape in the mode the pods of an EMR
/// cluster get (`auto` is tested in template.rs).
const SIDECAR_ARGS: [&str; 6] = [
    "--image",
    IMAGE,
    "--to",
    "s3://logs-bucket/spark",
    "--termination",
    "heartbeat",
];

/// A CA (ca.pem) and a certificate it signs for 127.0.0.1 (cert.pem, key.pem) in `dir`, as
/// cert-manager makes them; the API server trusts the CA (the webhook's caBundle).
fn certificate(dir: &Path, cn: &str) {
    let openssl = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let subj = format!("/CN={cn}");
    let ca_subj = format!("/CN={cn} CA");
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-days",
        "2",
        "-subj",
        &ca_subj,
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem.new",
    ]);
    openssl(&[
        "req",
        "-new",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-subj",
        &subj,
        "-keyout",
        "key.pem.new",
        "-out",
        "leaf.csr",
    ]);
    std::fs::write(
        dir.join("leaf.ext"),
        "basicConstraints=CA:FALSE\nsubjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        "leaf.csr",
        "-CA",
        "ca.pem.new",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "leaf.ext",
        "-out",
        "cert.pem.new",
    ]);
    // Key first, then certificate, each by rename, as a Secret update lands.
    std::fs::rename(dir.join("key.pem.new"), dir.join("key.pem")).unwrap();
    std::fs::rename(dir.join("cert.pem.new"), dir.join("cert.pem")).unwrap();
    std::fs::rename(dir.join("ca.pem.new"), dir.join("ca.pem")).unwrap();
}

fn options(extra: &[&str]) -> SidecarOptions {
    use clap::{Args, Command as ClapCommand, FromArgMatches};
    let cmd = SidecarOptions::augment_args(ClapCommand::new("t"));
    let mut argv = vec!["t"];
    argv.extend(SIDECAR_ARGS);
    argv.extend(extra);
    SidecarOptions::from_arg_matches(&cmd.get_matches_from(argv)).unwrap()
}

fn client(dir: &Path) -> reqwest::blocking::Client {
    client_trusting(&std::fs::read(dir.join("ca.pem")).unwrap())
}

/// A new client (no pooled connections) that trusts the CA `pem`.
fn client_trusting(pem: &[u8]) -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(pem).unwrap())
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// The webhook in this process on 127.0.0.1; dropped, it stops.
struct Served {
    url: String,
    _stop: tokio::sync::oneshot::Sender<()>,
    _rt: tokio::runtime::Runtime,
}

fn serve(dir: &Path, extra: &[&str], on_error: OnError) -> Served {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let hook = rt
        .block_on(Webhook::bind(WebhookConfig {
            listen: "127.0.0.1:0".into(),
            cert: dir.join("cert.pem"),
            key: dir.join("key.pem"),
            options: options(extra),
            on_error,
        }))
        .unwrap();
    let url = format!("https://{}", hook.local_addr().unwrap());
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    rt.spawn(hook.serve(async {
        let _ = rx.await;
    }));
    Served {
        url,
        _stop: tx,
        _rt: rt,
    }
}

fn review_json() -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixture("admission-review-driver.json")).unwrap()).unwrap()
}

fn post(c: &reqwest::blocking::Client, url: &str, review: &Value) -> Value {
    let r = c
        .post(format!("{url}/mutate"))
        .header("content-type", "application/json")
        .body(review.to_string())
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = serde_json::from_str(&r.text().unwrap()).unwrap();
    assert_eq!(v["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(v["kind"], "AdmissionReview");
    assert_eq!(v["response"]["uid"], review["request"]["uid"]);
    v["response"].clone()
}

fn apply(pod: &Value, response: &Value) -> Value {
    assert_eq!(response["patchType"], "JSONPatch");
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(response["patch"].as_str().unwrap())
        .unwrap();
    let patch: json_patch::Patch = serde_json::from_slice(&bytes).unwrap();
    let mut out = pod.clone();
    json_patch::patch(&mut out, &patch).unwrap();
    out
}

#[test]
fn the_patch_gives_the_pod_the_cli_gives_and_a_patched_pod_gets_none() {
    let dir = tempfile::tempdir().unwrap();
    certificate(dir.path(), "logship-inject");
    let served = serve(dir.path(), &[], OnError::Deny);
    let c = client(dir.path());
    assert_eq!(
        c.get(format!("{}/healthz", served.url)).send().unwrap().text().unwrap(),
        "ok\n"
    );

    let review = review_json();
    let pod = &review["request"]["object"];
    let response = post(&c, &served.url, &review);
    assert_eq!(response["allowed"], true, "{response}");
    let patched = apply(pod, &response);

    // The CLI on the same pod, told which container is Spark's (the webhook finds it by its
    // `driver` arguments: Spark moved it after the template's other containers).
    let mut args = vec![
        "template",
        "--role",
        "driver",
        "--spark-container",
        "spark",
        "--output",
        "json",
    ];
    args.extend(SIDECAR_ARGS);
    let cli: Value = serde_json::from_str(&ok(&args, pod.to_string().as_bytes())).unwrap();
    assert_eq!(patched, cli, "webhook and CLI disagree");
    assert_eq!(names(&patched, "containers"), ["metrics-exporter", "spark", "logship"]);
    let spark = container(&patched, "containers", "spark").unwrap();
    assert_eq!(
        env(spark, "SIDECAR_SIGNAL_FILE").unwrap()["value"],
        "/var/log/fluentd/main-container-terminated"
    );
    contains(&patched, pod, "").unwrap();

    // Idempotent: the patched pod comes back unchanged.
    let mut again = review.clone();
    again["request"]["object"] = patched.clone();
    let response = post(&c, &served.url, &again);
    assert_eq!(response["allowed"], true);
    assert!(response.get("patch").is_none(), "{response}");

    // Not a Spark pod, or opted out: allowed as is.
    let mut other = review.clone();
    other["request"]["object"]["metadata"]["labels"]
        .as_object_mut()
        .unwrap()
        .remove("spark-role");
    let response = post(&c, &served.url, &other);
    assert_eq!(response, json!({"uid": review["request"]["uid"], "allowed": true}));
    let mut out = review.clone();
    out["request"]["object"]["metadata"]["annotations"]["logship.io/inject"] = json!("false");
    assert!(post(&c, &served.url, &out).get("patch").is_none());

    // Anything but an AdmissionReview is a 400.
    let r = c.post(format!("{}/mutate", served.url)).body("{}").send().unwrap();
    assert_eq!(r.status(), 400);
}

#[test]
fn a_pod_that_cannot_be_patched_is_denied_with_the_reason_or_allowed_with_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    certificate(dir.path(), "logship-inject");
    let mut review = review_json();
    review["request"]["object"]["spec"]["volumes"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "logship-buffer", "hostPath": {"path": "/srv"}}));
    let c = client(dir.path());
    let deny = serve(dir.path(), &[], OnError::Deny);
    let response = post(&c, &deny.url, &review);
    assert_eq!(response["allowed"], false);
    let msg = response["status"]["message"].as_str().unwrap();
    assert!(
        msg.contains("spark-jobs/") && msg.contains("volume logship-buffer already exists and is a hostPath"),
        "{msg}"
    );
    let allow = serve(dir.path(), &[], OnError::Allow);
    let response = post(&c, &allow.url, &review);
    assert_eq!(response["allowed"], true);
    assert!(response.get("patch").is_none());
    assert!(
        response["warnings"][0].as_str().unwrap().contains("logship-buffer"),
        "{response}"
    );
}

#[test]
fn a_replaced_certificate_is_served_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    certificate(dir.path(), "first");
    let served = serve(dir.path(), &[], OnError::Deny);
    let old_ca = std::fs::read(dir.path().join("ca.pem")).unwrap();
    let first = client_trusting(&old_ca)
        .get(format!("{}/healthz", served.url))
        .send()
        .unwrap();
    assert_eq!(first.status(), 200);
    // Modification times have a resolution; make sure the new files look newer.
    std::thread::sleep(Duration::from_millis(1100));
    certificate(dir.path(), "second");
    let second = client(dir.path());
    let r = second.get(format!("{}/healthz", served.url)).send().unwrap();
    assert_eq!(r.status(), 200);
    // A client that trusts only the old certificate must now fail, in the TLS handshake (not a
    // timeout or a refused connection: the server is up, with the new certificate).
    let e = client_trusting(&old_ca)
        .get(format!("{}/healthz", served.url))
        .send()
        .unwrap_err();
    let chain = std::iter::successors(Some(&e as &dyn std::error::Error), |e| e.source())
        .map(|e| e.to_string())
        .collect::<Vec<_>>()
        .join(": ");
    assert!(
        e.is_connect() && !e.is_timeout() && chain.to_lowercase().contains("certificate"),
        "{chain}"
    );
}

#[test]
fn the_binary_serves_until_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    certificate(dir.path(), "logship-inject");
    // Text logs (no colour codes: stderr is a file, not a terminal), then JSON lines.
    for format in ["text", "json"] {
        let log = dir.path().join(format!("stderr-{format}"));
        let mut child = Command::new(bin())
            .args(["webhook", "--listen", "127.0.0.1:0", "--tls-cert"])
            .arg(dir.path().join("cert.pem"))
            .arg("--tls-key")
            .arg(dir.path().join("key.pem"))
            .args(SIDECAR_ARGS)
            .env("LOGSHIP_LOG_FORMAT", format)
            .env_remove("NO_COLOR")
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        struct Kill(u32);
        impl Drop for Kill {
            fn drop(&mut self) {
                // SAFETY: our own child; harmless when it already exited and was reaped.
                unsafe { libc_kill(self.0 as i32, 9) };
            }
        }
        let _guard = Kill(child.id());
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        let addr = loop {
            let text = std::fs::read_to_string(&log).unwrap();
            let found = match format {
                "text" => text.find("addr=").map(|i| {
                    let rest = &text[i + 5..];
                    rest[..rest.find(|c: char| c.is_whitespace()).unwrap_or(rest.len())].to_string()
                }),
                _ => text
                    .lines()
                    .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                    .find_map(|v| v["fields"]["addr"].as_str().map(str::to_string)),
            };
            if let Some(a) = found {
                break a;
            }
            assert!(std::time::Instant::now() < deadline, "no address logged: {text}");
            std::thread::sleep(Duration::from_millis(50));
        };
        let c = client(dir.path());
        let r = c.get(format!("https://{addr}/healthz")).send().unwrap();
        assert_eq!(r.status(), 200);
        // SAFETY: our own child.
        unsafe { libc_kill(child.id() as i32, 15) };
        let st = child.wait().unwrap();
        let text = std::fs::read_to_string(&log).unwrap();
        assert!(st.success(), "{st:?}: {text}");
        assert!(
            !text.contains('\x1b'),
            "{format}: colour codes in a log that is not a terminal: {text:?}"
        );
        if format == "json" {
            for line in text.lines() {
                serde_json::from_str::<Value>(line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
            }
        }
    }
    // A bad certificate path is an error at start that names the file.
    let out = Command::new(bin())
        .args([
            "webhook",
            "--listen",
            "127.0.0.1:0",
            "--tls-cert",
            "/nonexistent/cert.pem",
            "--tls-key",
            "/nonexistent/key.pem",
        ])
        .args(SIDECAR_ARGS)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/cert.pem"));
}

unsafe extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
}

/// One webhook, many teams: a pod's `logship.io/` annotations override the webhook's defaults for
/// that pod; a bad value or an unknown annotation (a typo) refuses the pod with a message naming
/// it, even with `--on-error allow`; `/metrics` counts what the webhook did.
#[test]
fn pod_annotations_override_the_defaults_bad_ones_are_refused_and_metrics_count_it_all() {
    let dir = tempfile::tempdir().unwrap();
    certificate(dir.path(), "logship-inject");
    let served = serve(dir.path(), &[], OnError::Allow);
    let c = client(dir.path());
    let review = review_json();
    let with = |annotations: Value| {
        let mut r = review.clone();
        let a = r["request"]["object"]["metadata"]
            .as_object_mut()
            .unwrap()
            .entry("annotations")
            .or_insert_with(|| json!({}));
        for (k, v) in annotations.as_object().unwrap() {
            a[k] = v.clone();
        }
        r
    };
    // Overrides: the patch equals the CLI's with the same flags.
    let r = with(json!({
        "logship.io/to": "cloudwatch://team-a/spark",
        "logship.io/termination": "native",
        "logship.io/store-as": "zstd",
    }));
    let response = post(&c, &served.url, &r);
    assert_eq!(response["allowed"], true, "{response}");
    let patched = apply(&r["request"]["object"], &response);
    let mut args = vec![
        "template",
        "--role",
        "driver",
        "--spark-container",
        "spark",
        "--output",
        "json",
    ];
    args.extend([
        "--image",
        IMAGE,
        "--to",
        "cloudwatch://team-a/spark",
        "--termination",
        "native",
        "--store-as",
        "zstd",
    ]);
    let cli: Value = serde_json::from_str(&ok(&args, r["request"]["object"].to_string().as_bytes())).unwrap();
    assert_eq!(patched, cli, "the annotations are the CLI's flags");
    assert!(
        container(&patched, "initContainers", "logship").is_some(),
        "native: an init container"
    );
    // Refused, naming the annotation: a bad destination, a bad mode, a typo.
    for (annotations, named) in [
        (json!({"logship.io/to": "gs://bucket"}), "logship.io/to"),
        (json!({"logship.io/termination": "sometimes"}), "logship.io/termination"),
        (json!({"logship.io/too": "s3://b/x"}), "logship.io/too"),
        (
            json!({"logship.io/presigned-post-secret": "Not_A_Name"}),
            "logship.io/presigned-post-secret",
        ),
        // Issue 36: nothing the sidecar could not run with, and nothing of its environment.
        (json!({"logship.io/to": "s3://b/${NOPE_UNSET}"}), "logship.io/to"),
        (
            json!({"logship.io/to": "s3://b/${AWS_SECRET_ACCESS_KEY}"}),
            "logship.io/to",
        ),
        (json!({"logship.io/to": "s3://Bad_Bucket!/x"}), "logship.io/to"),
        (json!({"logship.io/to": "s3://logs/a\u{0}b"}), "logship.io/to"),
        (json!({"logship.io/events-to": "s3://ab/x"}), "logship.io/events-to"),
        (json!({"logship.io/to": "cloudwatch://my group/x"}), "logship.io/to"),
    ] {
        let response = post(&c, &served.url, &with(annotations.clone()));
        assert_eq!(response["allowed"], false, "{annotations}: {response}");
        let msg = response["status"]["message"].as_str().unwrap();
        assert!(msg.contains(named) && msg.contains("spark-jobs/"), "{msg}");
    }
    // Opted out: untouched.
    assert!(
        post(&c, &served.url, &with(json!({"logship.io/inject": "false"})))
            .get("patch")
            .is_none()
    );
    // What the webhook did, counted: 1 patched, 4 denied, 1 skipped, 1 error.
    let r = c.post(format!("{}/mutate", served.url)).body("{}").send().unwrap();
    assert_eq!(r.status(), 400);
    let metrics = c.get(format!("{}/metrics", served.url)).send().unwrap().text().unwrap();
    let value = |name: &str| -> u64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&format!("logship_inject_{name} ")))
            .unwrap_or_else(|| panic!("no {name} in\n{metrics}"))
            .parse::<f64>()
            .unwrap() as u64
    };
    assert_eq!(
        (
            value("requests_total"),
            value("patched_total"),
            value("denied_total"),
            value("skipped_total"),
            value("errors_total")
        ),
        (13, 1, 10, 1, 1),
        "{metrics}"
    );
    assert_eq!(value("review_seconds_count"), 13);
}

/// The peak resident memory of this process (the webhook runs in it), in bytes.
fn peak_rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kb * 1024
}

/// Issue 36: the webhook survives its clients. Twenty bodies of a million empty JSON objects at
/// once (each under the body limit; parsed, each would take a hundred megabytes) are refused
/// before parsing, and the process's peak memory grows by less than the Deployment's 64 Mi; a
/// body over the limit is refused; 300 connections that never finish their TLS handshake are
/// closed by the server within seconds and never stop a real review from being answered.
#[test]
fn hostile_clients_do_not_exhaust_the_webhook_and_a_real_review_is_still_answered() {
    use std::io::Read;
    let dir = tempfile::tempdir().unwrap();
    certificate(dir.path(), "logship-inject");
    let served = serve(dir.path(), &[], OnError::Deny);
    let c = client(dir.path());
    // One body, shared by the clients (their copies would count in this process's memory).
    let body = hyper::body::Bytes::from(format!(
        "{{\"request\":{{\"uid\":\"u1\",\"x\":[{}]}}}}",
        vec!["{}"; 900_000].join(",")
    ));
    assert!(body.len() < 3 << 20);
    let before = peak_rss();
    std::thread::scope(|s| {
        for _ in 0..20 {
            s.spawn(|| {
                let r = c
                    .post(format!("{}/mutate", served.url))
                    .header("content-type", "application/json")
                    .body(body.clone())
                    .send()
                    .unwrap();
                assert_eq!(r.status(), 400);
                assert!(r.text().unwrap().contains("JSON objects and arrays"));
            });
        }
    });
    let grown = peak_rss().saturating_sub(before);
    assert!(grown < 64 << 20, "peak memory grew by {} MiB", grown >> 20);
    // Over the limit: 413, or the connection closed while the client was still writing.
    let too_big = vec![b' '; 4 << 20];
    match c.post(format!("{}/mutate", served.url)).body(too_big).send() {
        Ok(r) => assert_eq!(r.status(), 413),
        Err(e) => assert!(e.is_request() || e.is_body(), "{e:?}"),
    }

    // Connections that never finish their handshake.
    let addr = served.url.trim_start_matches("https://").to_string();
    let idle: Vec<std::net::TcpStream> = (0..300)
        .filter_map(|_| std::net::TcpStream::connect(&addr).ok())
        .collect();
    let start = std::time::Instant::now();
    let answered = loop {
        let fresh = client(dir.path());
        match fresh
            .post(format!("{}/mutate", served.url))
            .header("content-type", "application/json")
            .body(review_json().to_string())
            .send()
        {
            Ok(r) if r.status() == 200 => break serde_json::from_str::<Value>(&r.text().unwrap()).unwrap(),
            _ if start.elapsed() < std::time::Duration::from_secs(60) => {
                std::thread::sleep(std::time::Duration::from_millis(200))
            }
            other => panic!("no answer to a real review: {other:?}"),
        }
    };
    assert_eq!(answered["response"]["allowed"], true, "{answered}");
    for mut t in idle {
        t.set_read_timeout(Some(std::time::Duration::from_secs(30))).unwrap();
        let mut b = [0u8; 16];
        // Closed by the server: end of stream or a reset, not a timeout.
        match t.read(&mut b) {
            Ok(0) => {}
            Err(e) if e.kind() != std::io::ErrorKind::WouldBlock && e.kind() != std::io::ErrorKind::TimedOut => {}
            other => panic!("a half-open connection was kept: {other:?}"),
        }
    }
}
