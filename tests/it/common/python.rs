//! Python packages the tests need (boto3; later moto and pyspark), installed on first use into
//! Cargo's target directory with `pip install --target`, so `cargo test` alone works on a fresh
//! machine. An installation already importable (system or virtualenv) is used as it is.

use std::path::PathBuf;
use std::process::Command;

/// moto, pinned: a new release can change what the CloudWatch and S3 tests see.
pub const MOTO: &str = "moto[server]==5.2.1";
/// boto3, pinned (it makes presigned POSTs and reads moto's streams in the tests).
pub const BOTO3: &str = "boto3==1.43.11";

/// A `PYTHONPATH` under which every module in `modules` imports; `packages` are what pip installs
/// when one is missing (`tests/requirements.txt` lists the same).
pub fn python_path(modules: &[&str], packages: &[&str]) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("python");
    std::fs::create_dir_all(&dir).unwrap();
    let imports = |path: &PathBuf| {
        // Every module imports, and every pinned package (`name==version`) is that version, so
        // an other version installed elsewhere on the machine is not taken for it.
        let mut code = modules
            .iter()
            .map(|m| format!("import {m}"))
            .collect::<Vec<_>>()
            .join("; ");
        for (name, version) in packages.iter().filter_map(|p| p.split_once("==")) {
            // `moto[server]` is the distribution `moto` with an extra.
            let name = name.split('[').next().unwrap_or(name);
            code.push_str(&format!(
                "; import importlib.metadata as md; assert md.version({name:?}) == {version:?}"
            ));
        }
        Command::new("python3")
            .arg("-c")
            .arg(code)
            .env("PYTHONPATH", path)
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    };
    // One installer at a time across test processes.
    let lock = std::fs::File::create(dir.join(".lock")).unwrap();
    lock.lock().unwrap();
    if !imports(&dir) {
        let out = Command::new("python3")
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "--target",
            ])
            .arg(&dir)
            .args(packages)
            .output()
            .expect("python3 -m pip");
        assert!(
            out.status.success(),
            "cannot install {packages:?} for the tests: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            imports(&dir),
            "{modules:?} still do not import after installing {packages:?}"
        );
    }
    dir
}
