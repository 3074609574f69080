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
    /// The access key id and secret that requests are signed with.
    key: (String, String),
}

impl Moto {
    /// Starts the server and waits until it answers. It does not check signatures.
    pub fn start() -> Moto {
        Moto::spawn(&[])
    }

    /// Starts a server that checks every request's SigV4 signature against the access keys it
    /// knows (moto's IAM access control, on after `INITIAL_NO_AUTH_ACTION_COUNT` requests), and
    /// makes an access key for a user allowed everything; the other methods use that key.
    pub fn start_checking_signatures() -> Moto {
        let mut moto = Moto::spawn(&[("INITIAL_NO_AUTH_ACTION_COUNT", "3")]);
        let out = moto.python(
            "import json\niam = boto3.client('iam', endpoint_url=ENDPOINT, region_name='us-east-1', aws_access_key_id='testing', aws_secret_access_key='testing')\n\
             iam.create_user(UserName='shipper')\n\
             iam.put_user_policy(UserName='shipper', PolicyName='all', PolicyDocument=json.dumps({'Version': '2012-10-17', 'Statement': [{'Effect': 'Allow', 'Action': '*', 'Resource': '*'}]}))\n\
             k = iam.create_access_key(UserName='shipper')['AccessKey']\n\
             print(k['AccessKeyId'], k['SecretAccessKey'])",
        );
        let mut words = out.split_whitespace().map(str::to_string);
        moto.key = (words.next().expect("key id"), words.next().expect("secret"));
        moto
    }

    fn spawn(env: &[(&str, &str)]) -> Moto {
        let py = python_path(
            &["moto.server", "boto3", "flask_cors"],
            &[super::python::MOTO, super::python::BOTO3],
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new("python3")
            .args(["-m", "moto.server", "-H", "127.0.0.1", "-p", &port.to_string()])
            .env("PYTHONPATH", &py)
            .envs(env.iter().copied())
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
            key: ("testing".into(), "testing".into()),
        }
    }

    /// Environment for logship to use the server.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID".into(), self.key.0.clone()),
            ("AWS_SECRET_ACCESS_KEY".into(), self.key.1.clone()),
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
            .env("MOTO_KEY_ID", &self.key.0)
            .env("MOTO_SECRET", &self.key.1)
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
        self.python(&format!(
            "logs = boto3.client('logs', endpoint_url=ENDPOINT, region_name='us-east-1', aws_access_key_id='{}', aws_secret_access_key='{}')\n{code}",
            self.key.0, self.key.1
        ));
    }

    /// Runs Python with `boto3` imported and `ENDPOINT` and `KEY_ID` set; its stdout.
    pub fn python(&self, code: &str) -> String {
        let prog = format!(
            "import boto3\nENDPOINT = '{}'\nKEY_ID = '{}'\n{code}",
            self.endpoint, self.key.0
        );
        let out = Command::new("python3")
            .arg("-c")
            .arg(prog)
            .env("PYTHONPATH", &self.py)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
