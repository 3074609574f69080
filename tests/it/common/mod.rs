//! Test harness: runs the real `logship` binary as a process on real files, and reads what the
//! directory output wrote. Waits are on conditions with generous timeouts, never fixed sleeps.

pub mod atomic_requests;
pub mod moto;
pub mod python;
pub mod s3;
pub mod spark;

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// The binary under test: the one cargo built, or `LOGSHIP_TEST_BIN` (to show that a new test
/// fails on an older build: `LOGSHIP_TEST_BIN=/old/target/debug/logship cargo nextest run -E ...`).
pub fn bin() -> &'static str {
    static BIN: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    BIN.get_or_init(|| std::env::var("LOGSHIP_TEST_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_logship").to_string()))
}

/// A command running the binary under test with `TMPDIR` inside the build's temporary directory:
/// a `--once` run that fails keeps its buffer (by design, so nothing is lost), and the runs that
/// fail on purpose must not pile those up in the machine's `/tmp`. A test that sets `TMPDIR`
/// itself overrides it.
pub fn logship_cmd() -> Command {
    static TMP: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    let tmp = TMP.get_or_init(|| {
        let t = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("logship-tmpdir");
        std::fs::create_dir_all(&t).unwrap();
        t
    });
    let mut c = Command::new(bin());
    c.env("TMPDIR", tmp);
    c
}

/// A scratch layout: input files, output directory, buffer directory, signal file.
pub struct Env {
    pub dir: tempfile::TempDir,
    pub input: PathBuf,
    pub out: PathBuf,
    pub buffer: PathBuf,
    pub signal: PathBuf,
}

impl Env {
    pub fn new() -> Env {
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("in");
        let out = dir.path().join("out");
        fs::create_dir_all(&input).unwrap();
        Env {
            input,
            out,
            buffer: dir.path().join("buffer"),
            signal: dir.path().join("main-ended"),
            dir,
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.input.join(name)
    }

    /// `ship --follow` over `pattern` (relative to the input dir) into the output dir, ending when
    /// the signal file appears; chunks are sealed at every commit so output shows up quickly.
    pub fn follow_args(&self, pattern: &str) -> Vec<String> {
        vec![
            "ship".into(),
            "--follow".into(),
            self.input.join(pattern).display().to_string(),
            "--to".into(),
            format!("file://{}", self.out.display()),
            "--buffer-dir".into(),
            self.buffer.display().to_string(),
            "--signal-file".into(),
            self.signal.display().to_string(),
            "--flush-mode".into(),
            "immediate".into(),
            "--drain-deadline".into(),
            "60s".into(),
        ]
    }

    /// `ship --once` over `pattern` (relative to the input dir) into the output dir, plus `extra`.
    pub fn once_args(&self, pattern: &str, extra: &[&str]) -> Vec<String> {
        let mut args: Vec<String> = vec![
            "ship".into(),
            "--once".into(),
            self.input.join(pattern).display().to_string(),
            "--to".into(),
            format!("file://{}", self.out.display()),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        args
    }

    /// Writes `body` as `logship.toml`, with `{buffer}`, `{input}`, `{out}` and `{signal}` replaced
    /// by this environment's paths; returns the arguments of `logship run --config` for it.
    pub fn run_config(&self, body: &str) -> Vec<String> {
        let cfg = self.dir.path().join("logship.toml");
        let text = body
            .replace("{buffer}", &self.buffer.display().to_string())
            .replace("{input}", &self.input.display().to_string())
            .replace("{out}", &self.out.display().to_string())
            .replace("{signal}", &self.signal.display().to_string());
        fs::write(&cfg, text).unwrap();
        vec!["run".into(), "--config".into(), cfg.display().to_string()]
    }

    pub fn signal_end(&self) {
        fs::write(&self.signal, b"0").unwrap();
    }
}

/// A running logship process with its stderr captured to a file.
pub struct Daemon {
    pub child: Child,
    pub stderr_path: PathBuf,
    pub stdout_path: PathBuf,
}

impl Daemon {
    pub fn spawn(args: &[String], log_dir: &Path) -> Daemon {
        Self::spawn_cmd(logship_cmd(), args, log_dir)
    }

    pub fn spawn_cmd(mut cmd: Command, args: &[String], log_dir: &Path) -> Daemon {
        if !cmd.get_envs().any(|(k, _)| k == "LOGSHIP_LOG") {
            cmd.env(
                "LOGSHIP_LOG",
                std::env::var("TEST_LOGSHIP_LOG").unwrap_or("info".into()),
            );
        }
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let stderr_path = log_dir.join(format!("logship-{n}.stderr"));
        let stdout_path = log_dir.join(format!("logship-{n}.stdout"));
        let child = cmd
            .args(args)
            .stdin(Stdio::null())
            .stdout(fs::File::create(&stdout_path).unwrap())
            .stderr(fs::File::create(&stderr_path).unwrap())
            .spawn()
            .expect("spawn logship");
        Daemon {
            child,
            stderr_path,
            stdout_path,
        }
    }

    pub fn stderr(&self) -> String {
        fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    pub fn stdout(&self) -> Vec<u8> {
        fs::read(&self.stdout_path).unwrap_or_default()
    }

    /// Waits for exit; panics with the log if it takes longer than `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st;
            }
            if start.elapsed() > timeout {
                let _ = self.child.kill();
                panic!("logship did not exit within {timeout:?}; stderr:\n{}", self.stderr());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn signal(&self, sig: &str) {
        let st = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(st.success());
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// How many inotify instances the process holds (its descriptors that link to
    /// `anon_inode:inotify`).
    pub fn inotify_fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .map(|d| {
                d.flatten()
                    .filter(|e| std::fs::read_link(e.path()).is_ok_and(|l| l.to_string_lossy().contains("inotify")))
                    .count()
            })
            .unwrap_or(0)
    }

    /// Polls `f` until it is true; after `timeout`, panics naming `what`, with this daemon's log.
    pub fn wait_until(&self, what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
        let start = Instant::now();
        while !f() {
            if start.elapsed() > timeout {
                panic!(
                    "timed out after {timeout:?} waiting for: {what}; logship stderr:\n{}",
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// The JSON summary line printed at exit.
    pub fn summary(&self) -> serde_json::Value {
        let err = self.stderr();
        let line = err
            .lines()
            .rev()
            .find(|l| l.starts_with("{\"drain_reason\""))
            .unwrap_or_else(|| panic!("no summary line in stderr:\n{err}"));
        serde_json::from_str(line).unwrap()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `f` until it is true; panics after `timeout` naming `what`.
pub fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        if start.elapsed() > timeout {
            panic!("timed out after {timeout:?} waiting for: {what}");
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// The chunk files under `out/<tag>/`, in key order (time slice, then index).
pub fn chunk_files(out: &Path, tag: &str) -> Vec<PathBuf> {
    let dir = out.join(tag);
    let Ok(rd) = fs::read_dir(&dir) else { return Vec::new() };
    let mut files: Vec<(u64, u64, PathBuf)> = rd
        .flatten()
        .filter(|e| e.file_type().map(|t| t.is_file()).unwrap_or(false))
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                return None;
            }
            let stem = name.strip_suffix(".txt")?;
            let (slice, index) = stem.rsplit_once('_')?;
            Some((slice.parse().ok()?, index.parse().ok()?, e.path()))
        })
        .collect();
    files.sort();
    files.into_iter().map(|(_, _, p)| p).collect()
}

/// Asserts that `out` holds nothing but the chunk files of `tags` (no temporary or hidden file
/// anywhere, no other directory) and that they hold `total` bytes in all, so no chunk was written
/// twice under two keys.
#[track_caller]
pub fn assert_only_chunks(out: &Path, tags: &[&str], total: u64) {
    fn walk(dir: &Path, found: &mut Vec<PathBuf>) {
        for e in fs::read_dir(dir).unwrap().flatten() {
            if e.file_type().unwrap().is_dir() {
                walk(&e.path(), found);
            } else {
                found.push(e.path());
            }
        }
    }
    let mut found = Vec::new();
    walk(out, &mut found);
    let chunks: Vec<PathBuf> = tags.iter().flat_map(|t| chunk_files(out, t)).collect();
    let strays: Vec<&PathBuf> = found.iter().filter(|f| !chunks.contains(f)).collect();
    assert!(strays.is_empty(), "files in the output that are not chunks: {strays:?}");
    let bytes: u64 = chunks.iter().map(|f| fs::metadata(f).unwrap().len()).sum();
    assert_eq!(bytes, total, "bytes in the output's chunk files");
}

/// Everything delivered for `tag`, concatenated in key order.
pub fn collect(out: &Path, tag: &str) -> Vec<u8> {
    let mut all = Vec::new();
    for f in chunk_files(out, tag) {
        all.extend(fs::read(f).unwrap());
    }
    all
}

/// Appends to a file (creating it).
pub fn append(path: &Path, bytes: &[u8]) {
    let mut f = fs::OpenOptions::new().create(true).append(true).open(path).unwrap();
    f.write_all(bytes).unwrap();
}

/// `n` numbered lines starting at `from`, each `prefix-<i>` padded with a JSON-ish body.
pub fn lines(prefix: &str, from: usize, n: usize) -> Vec<u8> {
    let mut v = Vec::new();
    for i in from..from + n {
        writeln!(
            v,
            "{{\"Event\":\"{prefix}\",\"n\":{i},\"pad\":\"{}\"}}",
            "x".repeat(i % 97)
        )
        .unwrap();
    }
    v
}

/// Shows the first difference between two byte strings, for assertion messages.
pub fn first_diff(a: &[u8], b: &[u8]) -> String {
    let i = a
        .iter()
        .zip(b)
        .position(|(x, y)| x != y)
        .unwrap_or(a.len().min(b.len()));
    let ctx = |s: &[u8]| String::from_utf8_lossy(&s[i.saturating_sub(40)..(i + 40).min(s.len())]).into_owned();
    format!(
        "lengths {} vs {}; first difference at byte {i}: {:?} vs {:?}",
        a.len(),
        b.len(),
        ctx(a),
        ctx(b)
    )
}

/// Asserts that two byte strings are equal, with a readable message.
#[track_caller]
pub fn assert_bytes_eq(actual: &[u8], expected: &[u8]) {
    if actual != expected {
        panic!("bytes differ: {}", first_diff(actual, expected));
    }
}

/// Sets `--flag value` in an argument list, replacing an earlier value.
pub fn set_flag(args: &mut Vec<String>, flag: &str, value: &str) {
    if let Some(i) = args.iter().position(|a| a == flag) {
        args[i + 1] = value.to_string();
    } else {
        args.push(flag.to_string());
        args.push(value.to_string());
    }
}

/// A port on 127.0.0.1 that was free a moment ago (for servers that take a port number).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// GET `path` from `addr` (HTTP/1.1, one request): the status code and the body.
pub fn http_get(addr: &str, path: &str) -> Option<(u16, String)> {
    use std::io::Read;
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let code = out.split_whitespace().nth(1)?.parse().ok()?;
    Some((code, out.split_once("\r\n\r\n")?.1.to_string()))
}

/// The value of the Prometheus sample whose line starts with `line_start` (name and labels).
pub fn metric(body: &str, line_start: &str) -> Option<u64> {
    body.lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .map(|v| v as u64)
}

/// The files directly in `dir` (not its subdirectories: a secondary directory keeps its records
/// in `.logship/`), sorted.
pub fn files_in(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .collect();
    v.sort();
    v
}
