//! A real CloudWatch Logs API for the tests: `moto` server (PyPI `moto[server]`), started on
//! 127.0.0.1 on a free port and killed when dropped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::python::python_path;

/// A running moto server.
pub struct Moto {
    /// `http://127.0.0.1:PORT`.
    pub endpoint: String,
    child: Child,
    py: PathBuf,
}

impl Moto {
    /// Starts the server and waits until it answers.
    pub fn start() -> Moto {
        let py = python_path(&["moto.server", "boto3", "flask_cors"], &["moto[server]", "boto3"]);
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new("python3")
            .args(["-m", "moto.server", "-H", "127.0.0.1", "-p", &port.to_string()])
            .env("PYTHONPATH", &py)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 -m moto.server");
        let start = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(start.elapsed() < Duration::from_secs(60), "moto server did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        Moto {
            endpoint: format!("http://127.0.0.1:{port}"),
            child,
            py,
        }
    }

    /// Environment for logship to use the server.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID".into(), "testing".into()),
            ("AWS_SECRET_ACCESS_KEY".into(), "testing".into()),
            ("AWS_REGION".into(), "us-east-1".into()),
            ("AWS_EC2_METADATA_DISABLED".into(), "true".into()),
        ]
    }

    /// Every event of a stream, oldest first: (timestamp, message). Empty when it does not exist.
    pub fn events(&self, group: &str, stream: &str) -> Vec<(i64, String)> {
        self.events_via(&self.endpoint, group, stream)
    }

    /// The same through another endpoint.
    pub fn events_via(&self, endpoint: &str, group: &str, stream: &str) -> Vec<(i64, String)> {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/cloudwatch/events.py");
        let out = Command::new("python3")
            .arg(script)
            .args([endpoint, group, stream])
            .env("PYTHONPATH", &self.py)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "reading {group}/{stream} from moto failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
        v.into_iter()
            .map(|e| {
                (
                    e["timestamp"].as_i64().unwrap(),
                    e["message"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    }

    /// Runs a boto3 snippet against the server (`logs` is a client).
    pub fn boto3(&self, code: &str) {
        let prog = format!(
            "import boto3\nlogs = boto3.client('logs', endpoint_url='{}', region_name='us-east-1', aws_access_key_id='testing', aws_secret_access_key='testing')\n{code}",
            self.endpoint
        );
        let out = Command::new("python3")
            .arg("-c")
            .arg(prog)
            .env("PYTHONPATH", &self.py)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
