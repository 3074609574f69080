//! Real Spark for the event-log tests: `pyspark` from PyPI (Spark and its History Server, on the
//! machine's Java 17), a small application (`tests/spark/app.py`) and a History Server dump
//! (`tests/spark/shs.py`) that lists what the server shows for a directory.

use std::collections::BTreeMap;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::python::python_path;
use super::s3::S3Server;

/// The pyspark version the tests pin (Spark 4.3 runs on Java 17).
pub const PYSPARK: &str = "pyspark==4.3.0";

/// One Spark scenario at a time: several drivers and History Servers at once on a 2-core machine
/// only make each slower. nextest runs each test in its own process, so the lock is a file lock
/// (`flock`) in the build's temporary directory; each test holds the guard for its whole run.
pub fn exclusive() -> std::fs::File {
    let path = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("spark.lock");
    let f = std::fs::File::create(path).unwrap();
    f.lock().unwrap();
    f
}

fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/spark").join(name)
}

/// A running Spark application (its own process group: the Python driver, the JVM, workers).
pub struct SparkApp {
    child: Child,
    /// Its gate directory (`app_id`, `paused`, `go`, `hang`, `hanging`, `log`).
    pub gate: PathBuf,
    /// `layout/codec`, for messages.
    pub what: String,
}

impl SparkApp {
    /// Starts `app.py` writing event logs to `ev` in `layout` (single | rolling) with `codec`.
    pub fn start(ev: &Path, layout: &str, codec: &str, gate: &Path, hang: bool) -> SparkApp {
        let py = python_path(&["pyspark"], &[PYSPARK]);
        std::fs::create_dir_all(gate).unwrap();
        if hang {
            std::fs::write(gate.join("hang"), b"").unwrap();
        }
        let log = std::fs::File::create(gate.join("log")).unwrap();
        let child = Command::new("python3")
            .arg(script("app.py"))
            .args([ev.as_os_str(), layout.as_ref(), codec.as_ref(), gate.as_os_str()])
            .env("PYTHONPATH", &py)
            .env("SPARK_LOCAL_IP", "127.0.0.1")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .process_group(0)
            .spawn()
            .expect("python3 tests/spark/app.py");
        SparkApp {
            child,
            gate: gate.to_path_buf(),
            what: format!("{layout}/{codec}"),
        }
    }

    /// Waits until the application wrote `name` into its gate directory.
    pub fn wait_for(&mut self, name: &str, timeout: Duration) {
        let start = Instant::now();
        while !self.gate.join(name).exists() {
            if let Some(st) = self.child.try_wait().unwrap() {
                panic!(
                    "Spark app {} exited ({st}) before {name}; log:\n{}",
                    self.what,
                    self.log()
                );
            }
            if start.elapsed() > timeout {
                panic!(
                    "Spark app {} did not reach {name} in {timeout:?}; log:\n{}",
                    self.what,
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The application id Spark gave it.
    pub fn app_id(&mut self) -> String {
        self.wait_for("app_id", Duration::from_secs(180));
        std::fs::read_to_string(self.gate.join("app_id")).unwrap()
    }

    /// Lets it continue past its pause.
    pub fn go(&self) {
        std::fs::write(self.gate.join("go"), b"").unwrap();
    }

    /// Waits for a clean exit.
    pub fn wait_success(&mut self, timeout: Duration) {
        let start = Instant::now();
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                assert!(
                    st.success(),
                    "Spark app {} failed ({st}); log:\n{}",
                    self.what,
                    self.log()
                );
                return;
            }
            if start.elapsed() > timeout {
                panic!(
                    "Spark app {} still running after {timeout:?}; log:\n{}",
                    self.what,
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// SIGKILL to the driver (Python, the JVM and its workers: the whole process group).
    pub fn kill9(&mut self) {
        let pgid = self.child.id() as i32;
        // SAFETY: kill(2) on our own child's process group.
        unsafe {
            libc::kill(-pgid, libc::SIGKILL);
        }
        let _ = self.child.wait();
    }

    fn log(&self) -> String {
        let s = std::fs::read_to_string(self.gate.join("log")).unwrap_or_default();
        s[s.len().saturating_sub(4000)..].to_string()
    }
}

impl Drop for SparkApp {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            self.kill9();
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// What the real History Server shows for `dir` once it lists `expected` applications: per
/// application its listing, jobs, stages, executors and SQL executions.
pub fn history(dir: &Path, expected: usize) -> serde_json::Value {
    let py = python_path(&["pyspark"], &[PYSPARK]);
    let out = Command::new("python3")
        .arg(script("shs.py"))
        .arg(dir)
        .arg(free_port().to_string())
        .arg(expected.to_string())
        .env("PYTHONPATH", &py)
        .output()
        .expect("python3 tests/spark/shs.py");
    assert!(
        out.status.success(),
        "History Server dump of {} failed: {}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("History Server dump of {}: {e}", dir.display()))
}

/// The History Server views of several directories, fetched in parallel.
pub fn histories(dirs: &[&Path], expected: usize) -> Vec<serde_json::Value> {
    std::thread::scope(|s| {
        let handles: Vec<_> = dirs.iter().map(|d| s.spawn(move || history(d, expected))).collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

/// Asserts two History Server views are the same, showing the first differing line.
#[track_caller]
pub fn assert_same_history(original: &serde_json::Value, shipped: &serde_json::Value, what: &str) {
    if original == shipped {
        return;
    }
    let a = serde_json::to_string_pretty(original).unwrap();
    let b = serde_json::to_string_pretty(shipped).unwrap();
    let (i, (la, lb)) = a
        .lines()
        .zip(b.lines())
        .enumerate()
        .find(|(_, (x, y))| x != y)
        .unwrap_or((0, ("<length differs>", "")));
    let ctx: Vec<&str> = a.lines().skip(i.saturating_sub(12)).take(12).collect();
    panic!(
        "History Server shows {what} differently from the original at line {i}:\n  original: {la}\n  shipped:  {lb}\ncontext:\n{}",
        ctx.join("\n")
    );
}

/// Copies every object under `prefix/` into `to` (the "download" of the shipped logs).
pub fn download(server: &S3Server, bucket: &str, prefix: &str, to: &Path) -> BTreeMap<String, Vec<u8>> {
    let _ = std::fs::remove_dir_all(to);
    std::fs::create_dir_all(to).unwrap();
    let mut objects = BTreeMap::new();
    for key in server.keys(bucket) {
        let Some(rel) = key.strip_prefix(&format!("{prefix}/")) else {
            continue;
        };
        let bytes = server.object(bucket, &key).unwrap();
        let path = to.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &bytes).unwrap();
        objects.insert(rel.to_string(), bytes);
    }
    objects
}

fn whole_lines(b: &[u8]) -> &[u8] {
    match b.iter().rposition(|&c| c == b'\n') {
        Some(i) => &b[..=i],
        None => &[],
    }
}

const CODECS: [&str; 4] = ["lz4", "lzf", "snappy", "zstd"];

fn compressed(name: &str) -> bool {
    let base = name.strip_suffix(".inprogress").unwrap_or(name);
    base.rsplit_once('.').is_some_and(|(_, c)| CODECS.contains(&c))
}

/// The rechunked objects `eventlog_v2_<app>/events_<n>_<app>` under `shipped`, checked to be
/// numbered 1..N without gaps, concatenated.
pub fn rechunked(shipped: &Path, app: &str) -> Result<Vec<u8>, String> {
    let dir = shipped.join(format!("eventlog_v2_{app}"));
    let mut indices = Vec::new();
    for e in std::fs::read_dir(&dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .flatten()
    {
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(rest) = name.strip_prefix("events_") {
            let (n, a) = rest.split_once('_').ok_or(format!("bad name {name}"))?;
            if a != app {
                return Err(format!("{name} is not named for {app}"));
            }
            indices.push(n.parse::<u64>().map_err(|_| format!("bad index in {name}"))?);
        }
    }
    indices.sort();
    let want: Vec<u64> = (1..=indices.len() as u64).collect();
    if indices != want {
        return Err(format!("indices of {app} are {indices:?}, not 1..={}", indices.len()));
    }
    let mut all = Vec::new();
    for n in indices {
        all.extend(std::fs::read(dir.join(format!("events_{n}_{app}"))).unwrap());
    }
    Ok(all)
}

/// Checks that `shipped` holds what Spark wrote in `original`: mirrored files byte for byte (only
/// whole lines of an uncompressed file still being written, unless `whole`), rechunked single
/// files as contiguous `events_<n>` objects whose concatenation is the file.
pub fn compare_shipped(original: &Path, shipped: &Path, whole: bool) -> Result<(), String> {
    let mut entries: Vec<_> = std::fs::read_dir(original).unwrap().flatten().collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue;
        }
        if e.file_type().unwrap().is_dir() {
            let mut files: Vec<(u64, String)> = std::fs::read_dir(e.path())
                .unwrap()
                .flatten()
                .filter_map(|f| {
                    let n = f.file_name().to_string_lossy().into_owned();
                    let idx = n.strip_prefix("events_")?.split('_').next()?.parse().ok()?;
                    Some((idx, n))
                })
                .collect();
            files.sort();
            let last = files.last().map(|f| f.0);
            for (idx, n) in &files {
                let orig = std::fs::read(e.path().join(n)).unwrap();
                let expect = if whole || compressed(n) || Some(*idx) != last {
                    &orig[..]
                } else {
                    whole_lines(&orig)
                };
                let got = std::fs::read(shipped.join(&name).join(n)).map_err(|_| format!("{name}/{n} not shipped"))?;
                if got != expect {
                    return Err(format!("{name}/{n}: {}", super::first_diff(&got, expect)));
                }
            }
            continue;
        }
        let orig = std::fs::read(e.path()).unwrap();
        let expect = if whole || compressed(&name) {
            &orig[..]
        } else {
            whole_lines(&orig)
        };
        let got = if shipped.join(&name).exists() {
            std::fs::read(shipped.join(&name)).unwrap()
        } else {
            let app = name.strip_suffix(".inprogress").unwrap_or(&name);
            rechunked(shipped, app)?
        };
        if got != expect {
            return Err(format!("{name}: {}", super::first_diff(&got, expect)));
        }
    }
    Ok(())
}
