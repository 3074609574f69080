//! EMR's fluentd configurations run unchanged. The fixtures (`tests/fixtures/emr/`, copied from the
//! project's shared EMR fixtures) translate and run end to end with the driver pod template's
//! environment (paths moved to temporary directories) against the in-process S3 server with a
//! presigned POST, and a container-log configuration in EMR's shape runs against moto and S3.
//! Malformed configs give precise errors.

use crate::common::moto;
use crate::common::s3;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::common::{Daemon, append, assert_bytes_eq, lines};
use s3::S3Server;

const WAIT: Duration = Duration::from_secs(90);
const BUCKET: &str = "prod.ap-northeast-2.appinfo.src";
const PREFIX: &str = "123456789012/vc/jobs/job/sparklogs";

fn fixture(name: &str) -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/emr")
        .join(name);
    fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// The fluentd container's environment from `pod-template-driver.yaml`, with its directories
/// under `root`.
fn driver_env(root: &Path) -> Vec<(String, String)> {
    let pod = "spark-0000000337omlr0m19o-driver";
    vec![
        ("SPARK_CONTAINER_ID".into(), pod.into()),
        ("SPARK_ROLE".into(), "driver".into()),
        (
            "K8S_SPARK_LOG_URL_STDERR".into(),
            root.join(format!("user/{pod}/stderr")).display().to_string(),
        ),
        (
            "K8S_SPARK_LOG_URL_STDOUT".into(),
            root.join(format!("user/{pod}/stdout")).display().to_string(),
        ),
        (
            "SIDECAR_SIGNAL_FILE".into(),
            root.join("fluentd/main-container-terminated").display().to_string(),
        ),
        ("FLUENTD_CONF".into(), "fluent.conf".into()),
        (
            "K8S_SPARK_EVENT_LOG_DIR".into(),
            root.join("apps").display().to_string(),
        ),
        ("AWS_REGION".into(), "ap-northeast-2".into()),
        ("RUBY_GC_HEAP_OLDOBJECT_LIMIT_FACTOR".into(), "0.9".into()),
    ]
}

/// The fixture with its absolute pod paths moved under `root`, the dump's `[account-id]`
/// placeholder replaced by an account id, and the virtual cluster and job ids shortened: s3s-fs
/// keeps each object's metadata in a file named after the base64 of bucket and key, and a key
/// this long would exceed the 255-byte file name limit (the server answers 500).
fn relocate(text: &str, root: &Path) -> String {
    let r = root.display().to_string();
    text.replace("[account-id]", "123456789012")
        .replace("jk518skp01ys9ka8b0npx9nt0/jobs/0000000337olhmpguek", "vc/jobs/job")
        .replace("/tmp/", &format!("{r}/tmp/"))
        .replace("/var/emr-container/s3/", &format!("{r}/emr-container-s3/"))
        .replace("/var/log/fluentd/", &format!("{r}/fluentd/"))
}

fn rechunked(server: &S3Server, app: &str) -> Vec<u8> {
    let dir = format!("{PREFIX}/eventlog_v2_{app}/");
    let mut idx: Vec<u64> = server
        .keys(BUCKET)
        .iter()
        .filter_map(|k| {
            k.strip_prefix(&dir)?
                .strip_prefix("events_")?
                .strip_suffix(&format!("_{app}"))?
                .parse()
                .ok()
        })
        .collect();
    idx.sort();
    assert_eq!(idx, (1..=idx.len() as u64).collect::<Vec<_>>(), "indices run 1..N");
    idx.iter()
        .flat_map(|n| server.object(BUCKET, &format!("{dir}events_{n}_{app}")).unwrap())
        .collect()
}

#[test]
fn emr_driver_config_ships_the_event_log_through_the_presigned_post_with_the_pod_env() {
    let server = S3Server::start(&[BUCKET]);
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    for d in ["apps", "fluentd", "emr-container-s3", "tmp"] {
        fs::create_dir_all(root.join(d)).unwrap();
    }
    fs::write(
        root.join("emr-container-s3/presigned-post"),
        server.presign(BUCKET, PREFIX, "1h", "5GB"),
    )
    .unwrap();
    let conf = root.join("fluent.conf");
    fs::write(&conf, relocate(&fixture("fluentd-driver.conf"), root)).unwrap();
    let app = "spark-0000000337omlr0m19o";
    let heartbeat = root.join("fluentd/main-container-terminated");
    fs::write(&heartbeat, b"").unwrap();

    let mut cmd = crate::common::logship_cmd();
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap())
        .envs(driver_env(root));
    cmd.env("SPARK_APPLICATION_ID", app).env("LOGSHIP_FLUENTD_DIR", root);
    // No flags: EMR's image contract (FLUENTD_CONF under the config directory).
    let d = Daemon::spawn_cmd(cmd, &["run".to_string()], root);
    let log = root.join(format!("apps/{app}.inprogress"));
    append(&log, &lines("ev", 0, 2000));
    append(&log, b"{\"Event\":\"half a li");
    // The Spark container's heartbeat, every poll while it "runs".
    let beat = || {
        fs::File::options()
            .write(true)
            .open(&heartbeat)
            .unwrap()
            .set_modified(std::time::SystemTime::now())
            .unwrap()
    };
    d.wait_until("appstatus at start, as EMR does", WAIT, || {
        beat();
        server
            .object(BUCKET, &format!("{PREFIX}/eventlog_v2_{app}/appstatus_{app}"))
            .as_deref()
            == Some(b" \n")
    });
    append(&log, b"ne\"}\n");
    append(&log, &lines("ev", 2000, 3000));
    fs::rename(&log, root.join(format!("apps/{app}"))).unwrap();
    // The Spark container ends: its heartbeat goes quiet; SIGTERM (the kubelet) ends it sooner.
    d.signal("TERM");
    let mut d = d;
    assert_eq!(d.wait_exit(WAIT).code(), Some(0), "{}", d.stderr());
    assert_bytes_eq(
        &rechunked(&server, app),
        &fs::read(root.join(format!("apps/{app}"))).unwrap(),
    );
}

#[test]
fn emr_pod_metadata_config_prints_the_metadata_lines_to_stdout() {
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    let meta = root.join("pod-info");
    append(&meta, b"namespace=spark\npod=driver-1\n");
    let conf = root.join("pod-metadata.conf");
    fs::write(&conf, relocate(&fixture("fluentd-pod-metadata.conf"), root)).unwrap();
    let mut cmd = crate::common::logship_cmd();
    cmd.env("POD_METADATA_PATH", &meta).env_remove("SIDECAR_SIGNAL_FILE");
    let args = vec!["run".to_string(), "--fluentd-config".into(), conf.display().to_string()];
    let d = Daemon::spawn_cmd(cmd, &args, root);
    d.wait_until("the first lines on stdout", WAIT, || {
        d.stdout() == b"namespace=spark\npod=driver-1\n"
    });
    append(&meta, b"node=ip-10-0-0-1\n");
    d.signal("TERM");
    let mut d = d;
    assert_eq!(d.wait_exit(WAIT).code(), Some(0), "{}", d.stderr());
    assert_eq!(d.stdout(), b"namespace=spark\npod=driver-1\nnode=ip-10-0-0-1\n");
}

/// Container logs in EMR's shape (reference-notes §0, §2): stdout and stderr to CloudWatch
/// (`<prefix>/<vcid>/jobs/<job>/containers/<app>/<pod>/stdout`) and to S3 with the pod's own
/// credentials (`<logUri>/<vcid>/jobs/<job>/containers/<app>/<pod>/stderr.gz`).
const CONTAINER_LOGS: &str = r##"
<system>
  workers 1
</system>
<worker 0>
  <source>
    tag emr-containers-spark-stdout
    @label @emr-containers-spark-stdout
    @type tail
    path "#{ENV['K8S_SPARK_LOG_URL_STDOUT']}"
    pos_file "{root}/tmp/stdout.pos"
    read_from_head true
    <parse>
      @type none
    </parse>
  </source>
  <source>
    tag emr-containers-spark-stderr
    @label @emr-containers-spark-stderr
    @type tail
    path "#{ENV['K8S_SPARK_LOG_URL_STDERR']}"
    pos_file "{root}/tmp/stderr.pos"
    read_from_head true
    <parse>
      @type none
    </parse>
  </source>
  <label @emr-containers-spark-stdout>
    <match emr-containers-spark-stdout>
      @type cloudwatch_logs
      log_group_name "emr-spark"
      log_stream_name "spark-logs/vc-1/jobs/job-1/containers/#{ENV['SPARK_APPLICATION_ID']}/#{ENV['SPARK_CONTAINER_ID']}/stdout"
      auto_create_stream true
      include_time_key true
      put_log_events_retry_limit 0
      endpoint "{cw}"
      <buffer>
        @type file
        path {root}/tmp/fluentd/cw-stdout-buffer*
        chunk_limit_size 16MB
        flush_interval 1s
        retry_wait 1s
        retry_max_times 5
      </buffer>
      <secondary>
        @type secondary_file
        directory {root}/fluentd/error/
        basename cw-container-error.log
      </secondary>
    </match>
  </label>
  <label @emr-containers-spark-stderr>
    <match emr-containers-spark-stderr>
      @type s3
      s3_bucket logs
      s3_region us-east-1
      s3_endpoint "{s3}"
      force_path_style true
      path "spark/vc-1/jobs/job-1/containers/#{ENV['SPARK_APPLICATION_ID']}/#{ENV['SPARK_CONTAINER_ID']}"
      s3_object_key_format %{path}/stderr.gz
      store_as gzip
      overwrite true
      format single_value
      <buffer>
        @type file
        path {root}/tmp/fluentd/s3-stderr-buffer*
        chunk_limit_size 16MB
        flush_mode interval
        flush_interval 1s
      </buffer>
      <local_file_upload>
        file_path "#{ENV['K8S_SPARK_LOG_URL_STDERR']}"
      </local_file_upload>
    </match>
  </label>
</worker>
"##;

#[test]
fn emr_container_log_config_runs_against_cloudwatch_and_s3() {
    let moto = moto::Moto::start();
    let server = S3Server::start(&["logs"]);
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    let env = driver_env(root);
    let pod = &env[0].1;
    let stdout: PathBuf = env[3].1.clone().into();
    let stderr: PathBuf = env[2].1.clone().into();
    fs::create_dir_all(stdout.parent().unwrap()).unwrap();
    let conf = root.join("fluent.conf");
    fs::write(
        &conf,
        CONTAINER_LOGS
            .replace("{root}", &root.display().to_string())
            .replace("{cw}", &moto.endpoint)
            .replace("{s3}", &server.endpoint),
    )
    .unwrap();
    append(&stdout, &lines("out", 0, 300));
    append(&stderr, &lines("err", 0, 200));
    let mut cmd = crate::common::logship_cmd();
    cmd.envs(env.clone())
        .envs(server.env())
        .env("SPARK_APPLICATION_ID", "spark-app-1");
    let args = vec!["run".to_string(), "--fluentd-config".into(), conf.display().to_string()];
    let d = Daemon::spawn_cmd(cmd, &args, root);
    fs::write(root.join("fluentd-hb"), b"").unwrap();
    let stream = format!("spark-logs/vc-1/jobs/job-1/containers/spark-app-1/{pod}/stdout");
    d.wait_until("stdout in CloudWatch", WAIT, || {
        moto.events("emr-spark", &stream).len() == 300
    });
    append(&stdout, &lines("out", 300, 50));
    append(&stderr, &lines("err", 200, 50));
    d.signal("TERM");
    let mut d = d;
    assert_eq!(d.wait_exit(WAIT).code(), Some(0), "{}", d.stderr());
    let got: Vec<String> = moto.events("emr-spark", &stream).into_iter().map(|(_, m)| m).collect();
    let want: Vec<String> = String::from_utf8(fs::read(&stdout).unwrap())
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(got, want);
    // stderr: gzip objects under the pod's prefix, in index order, holding the file's lines once.
    let prefix = format!("spark/vc-1/jobs/job-1/containers/spark-app-1/{pod}/");
    let mut keys: Vec<(u64, String)> = server
        .keys("logs")
        .into_iter()
        .filter_map(|k| {
            let n = k
                .strip_prefix(&prefix)?
                .strip_prefix("stderr.")?
                .strip_suffix(".gz")?
                .parse()
                .ok()?;
            Some((n, k))
        })
        .collect();
    keys.sort();
    assert!(!keys.is_empty(), "{:?}", server.keys("logs"));
    let mut all = Vec::new();
    for (_, k) in keys {
        let obj = server.object("logs", &k).unwrap();
        let mut dec = flate2::read::MultiGzDecoder::new(&obj[..]);
        std::io::Read::read_to_end(&mut dec, &mut all).unwrap();
    }
    assert_bytes_eq(&all, &fs::read(&stderr).unwrap());
}

fn translate_error(conf: &str, env: &[(&str, &str)]) -> String {
    let d = tempfile::tempdir().unwrap();
    let f = d.path().join("bad.conf");
    fs::write(&f, conf).unwrap();
    let out = crate::common::logship_cmd()
        .arg("translate")
        .arg(&f)
        .env_remove("SIDECAR_SIGNAL_FILE")
        .envs(env.iter().copied())
        .output()
        .unwrap();
    assert!(!out.status.success(), "{conf} was accepted");
    String::from_utf8_lossy(&out.stderr).replace(&d.path().display().to_string(), "DIR")
}

#[test]
fn malformed_configs_name_the_file_line_and_column() {
    let e = translate_error("<source>\n  @type tail\n  path /x\n", &[]);
    assert!(
        e.contains("DIR/bad.conf:1:1") && e.contains("<source> is never closed"),
        "{e}"
    );
    let e = translate_error(
        "<source>\n  @type tail\n  path /x\n  tag t\n</source>\n<matcher t>\n</matcher>\n",
        &[],
    );
    assert!(
        e.contains("bad.conf:6:1") && e.contains("unknown directive <matcher>"),
        "{e}"
    );
    let e = translate_error(
        "<source>\n  @type tail\n  path /x\n  tag t\n  refresh_interval 30parsecs\n</source>\n<match t>\n  @type stdout\n</match>\n",
        &[],
    );
    assert!(e.contains("bad.conf:5:3") && e.contains("refresh_interval"), "{e}");
    // An unset variable is an error where the config runs (`translate` keeps it as `${NAME}`).
    let d = tempfile::tempdir().unwrap();
    let conf = d.path().join("bad.conf");
    fs::write(
        &conf,
        "<source>\n  @type tail\n  path \"#{ENV['NO_SUCH_VAR']}/x\"\n</source>\n",
    )
    .unwrap();
    let out = crate::common::logship_cmd()
        .args(["run", "--fluentd-config"])
        .arg(&conf)
        .output()
        .unwrap();
    let e = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{e}");
    assert!(e.contains("bad.conf:3:9") && e.contains("NO_SUCH_VAR"), "{e}");
    let e = translate_error(
        "<source>\n  @type tail\n  path /x\n  tag t\n</source>\n<match t>\n  @type kafka2\n</match>\n",
        &[],
    );
    assert!(
        e.contains("bad.conf:7:3") && e.contains("unknown output plugin \"kafka2\""),
        "{e}"
    );
    let e = translate_error("<source>\n  @type syslog\n  tag t\n</source>\n", &[]);
    assert!(e.contains("bad.conf:2:3") && e.contains("unknown source plugin"), "{e}");
    let e = translate_error(
        "<source>\n  @type tail\n  path /x\n  tag t\n  multiline_flush_interval 5s\n</source>\n<match t>\n  @type stdout\n</match>\n",
        &[],
    );
    assert!(
        e.contains("bad.conf:5:3") && e.contains("multiline_flush_interval"),
        "{e}"
    );
    // A file that cannot be read is named once, with no made-up position (it said `:0:0`).
    let d = tempfile::tempdir().unwrap();
    let missing = d.path().join("missing.conf");
    for cmd in [&["translate"][..], &["run", "--fluentd-config"][..]] {
        let out = crate::common::logship_cmd().args(cmd).arg(&missing).output().unwrap();
        let e = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{e}");
        assert!(e.contains("missing.conf: cannot read: No such file"), "{e}");
        assert!(!e.contains(":0:0") && e.matches("missing.conf").count() == 1, "{e}");
    }
}

#[test]
fn the_parser_never_panics_on_mangled_configs() {
    // A cheap, always-on cousin of the cargo-fuzz target (fuzz/): the fixtures cut, spliced and
    // with bytes flipped, parsed thousands of times.
    let seeds = [
        fixture("fluentd-driver.conf"),
        fixture("fluentd-pod-metadata.conf"),
        CONTAINER_LOGS.to_string(),
    ];
    let env = |_: &str| Some("x".to_string());
    let mut rng = fastrand::Rng::with_seed(7);
    let noise = ['<', '>', '/', '"', '\'', '#', '{', '}', '\\', '\n', ' ', '@', 'é'];
    for _ in 0..3000 {
        let s = &seeds[rng.usize(..seeds.len())];
        let mut chars: Vec<char> = s.chars().collect();
        for _ in 0..rng.usize(1..8) {
            let i = rng.usize(..chars.len().max(1));
            match rng.u8(..3) {
                0 => chars.truncate(i),
                1 => chars.insert(i.min(chars.len()), noise[rng.usize(..noise.len())]),
                _ => {
                    if i < chars.len() {
                        chars.remove(i);
                    }
                }
            }
        }
        let text: String = chars.into_iter().collect();
        if let Ok(root) = logship::fluentd::parse::parse_str(&text, Path::new("fuzz.conf"), &env, 0) {
            let _ = logship::fluentd::translate::translate(&root, &env);
        }
    }
}

/// Issue 35, item 5: `translate` works off the cluster. With none of EMR's variables set, EMR's
/// own configs translate; their `#{ENV['NAME']}` become `${NAME}` in the TOML (never a value of
/// the machine that translated), and the TOML is resolved where it runs: `check` with the pod's
/// environment fills in the directory and application, and without it names the variable.
#[test]
fn translate_keeps_environment_references_and_the_toml_resolves_them_where_it_runs() {
    let root = tempfile::tempdir().unwrap();
    let unset = [
        "K8S_SPARK_EVENT_LOG_DIR",
        "SPARK_APPLICATION_ID",
        "SIDECAR_SIGNAL_FILE",
        "POD_METADATA_PATH",
        "FLUENTD_CONF",
    ];
    let translate = |name: &str| {
        let conf = root.path().join(name);
        fs::write(&conf, relocate(&fixture(name), root.path())).unwrap();
        let mut cmd = crate::common::logship_cmd();
        cmd.arg("translate").arg(&conf);
        for v in unset {
            cmd.env_remove(v);
        }
        let out = cmd.output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "{name}: {stderr}");
        (String::from_utf8(out.stdout).unwrap(), stderr)
    };
    let (toml, stderr) = translate("fluentd-driver.conf");
    assert!(
        toml.contains("type = \"spark_events\"") && toml.contains("paths = [\"${K8S_SPARK_EVENT_LOG_DIR}\"]"),
        "{toml}"
    );
    assert!(
        !toml.contains("app_id"),
        "the source takes SPARK_APPLICATION_ID itself: {toml}"
    );
    assert!(toml.contains("heartbeat_file = \"${SIDECAR_SIGNAL_FILE:-}\""), "{toml}");
    assert!(toml.contains("appstatus = \"at_start\""), "{toml}");
    assert!(
        stderr.contains("K8S_SPARK_EVENT_LOG_DIR") && stderr.contains("SPARK_APPLICATION_ID"),
        "stderr lists the variables: {stderr}"
    );
    let native = root.path().join("native.toml");
    fs::write(&native, &toml).unwrap();
    let check = |env: &[(&str, &str)]| {
        let mut cmd = crate::common::logship_cmd();
        cmd.args(["check", "--config"]).arg(&native);
        for v in unset {
            cmd.env_remove(v);
        }
        cmd.envs(env.iter().copied()).output().unwrap()
    };
    let on_pod = check(&[
        ("K8S_SPARK_EVENT_LOG_DIR", "/var/log/spark/apps"),
        ("SPARK_APPLICATION_ID", "spark-1"),
        ("SIDECAR_SIGNAL_FILE", "/var/log/fluentd/main-container-terminated"),
    ]);
    let effective = String::from_utf8_lossy(&on_pod.stdout);
    assert!(on_pod.status.success(), "{}", String::from_utf8_lossy(&on_pod.stderr));
    assert!(
        effective.contains("\"/var/log/spark/apps\"")
            && effective.contains("app_id = \"spark-1\"")
            && effective.contains("heartbeat_file = \"/var/log/fluentd/main-container-terminated\""),
        "{effective}"
    );
    // Off EMR (no heartbeat variable), the same TOML runs without a heartbeat.
    let plain = check(&[
        ("K8S_SPARK_EVENT_LOG_DIR", "/logs"),
        ("SPARK_APPLICATION_ID", "spark-2"),
    ]);
    assert!(plain.status.success(), "{}", String::from_utf8_lossy(&plain.stderr));
    assert!(!String::from_utf8_lossy(&plain.stdout).contains("heartbeat_file"));
    let off_pod = check(&[]);
    let err = String::from_utf8_lossy(&off_pod.stderr);
    assert!(
        !off_pod.status.success() && err.contains("K8S_SPARK_EVENT_LOG_DIR") && err.contains("is not set"),
        "{err}"
    );
    let (toml, _) = translate("fluentd-pod-metadata.conf");
    assert!(toml.contains("${POD_METADATA_PATH}"), "{toml}");
}

/// Issue 34: a presigned POST cannot see existing objects, so `translate` adds `%{hex_random}`
/// to a container-log key format without one, and says so on stderr; an event-log output (whose
/// keys Spark's layout fixes) and a key that has a random part already are left alone.
#[test]
fn translate_adds_hex_random_to_presigned_post_keys_and_warns() {
    let d = tempfile::tempdir().unwrap();
    let conf = d.path().join("fluent.conf");
    let post = d.path().join("pp");
    let out = |key: &str| {
        fs::write(
            &conf,
            format!(
                "<source>\n  @type tail\n  tag stdout\n  path /var/log/spark/user/*/stdout\n</source>\n<match stdout>\n  @type s3\n  s3_bucket b\n  path logs\n  s3_object_key_format {key}\n  <refreshing_file_presigned_post>\n    presigned_post_path {}\n  </refreshing_file_presigned_post>\n</match>\n",
                post.display()
            ),
        )
        .unwrap();
        let o = crate::common::logship_cmd()
            .arg("translate")
            .arg(&conf)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        (
            String::from_utf8(o.stdout).unwrap(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    };
    let (toml, stderr) = out("%{path}/stdout_%{index}.gz");
    assert!(
        toml.contains("key_format = \"%{path}/stdout_%{index}_%{hex_random}.gz\""),
        "{toml}"
    );
    assert!(
        stderr.contains("WARN") && stderr.contains("adds %{hex_random}"),
        "{stderr}"
    );
    let (toml, stderr) = out("%{path}/stdout_%{index}_%{hex_random}.gz");
    assert!(
        toml.contains("key_format = \"%{path}/stdout_%{index}_%{hex_random}.gz\""),
        "{toml}"
    );
    assert!(!stderr.contains("hex_random"), "{stderr}");
    // A path the key format does not use (fluent-plugin-s3 ignores it): left out, with a warning.
    let (toml, stderr) = out("stdout/%{index}_%{hex_random}.gz");
    assert!(!toml.contains("path = \"logs\""), "{toml}");
    assert!(stderr.contains("not used by s3_object_key_format"), "{stderr}");
}
