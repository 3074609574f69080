#!/usr/bin/env python3
"""Benchmark: ship Spark JSON lines to CloudWatch Logs (moto server on loopback, PyPI
`moto[server]`), one event per line, with `ship --once`. Reports logship's CPU seconds per GiB
and peak RSS (GNU time), and what moto itself used (its utime + stime from /proc), since moto (a
Python server that keeps every event in memory) costs far more than logship and shares the two
cores with it.

moto holds every event in memory (about 10 times their size), so the default is 256 MiB per run,
scaled to a GiB in the figures; `--mib` changes it.

    cargo build --release
    PYTHONPATH=target/tmp/python python3 benches/ship_cloudwatch.py [--mib 256] [--runs 3] [--data spark|synthetic]

Target (issue 19): <= 1.5 CPU-s/GiB of logship's own CPU.
"""

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ship_file import BIN, ROOT, bench_inputs, run_measured  # noqa: E402

ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
       "AWS_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}


def cpu_seconds(pid):
    """utime + stime of a process (and its waited-for children), in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return sum(int(x) for x in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def start_moto():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if time.time() > deadline or proc.poll() is not None:
                proc.kill()
                sys.exit("moto server did not start (pip install 'moto[server]'; or PYTHONPATH=target/tmp/python)")
            time.sleep(0.1)
    return proc, f"http://127.0.0.1:{port}"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mib", type=int, default=256)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--data", choices=["spark", "synthetic"], action="append",
                    help="input (default: both)")
    a = ap.parse_args()
    if not os.path.exists(BIN):
        sys.exit("build first: cargo build --release")
    size = a.mib << 20
    inputs = bench_inputs(a.data, size, f"{a.mib}mib")
    os.environ.update(ENV)
    work = tempfile.mkdtemp(prefix="logship-bench-cw-", dir=os.path.join(ROOT, "target"))
    try:
        for name, data in inputs:
            gib = os.path.getsize(data) / (1 << 30)
            with open(data, "rb") as f:
                lines = sum(1 for _ in f)
            runs = []
            for i in range(a.runs):
                # A fresh moto per run: it keeps every event, and its memory would grow run by run.
                moto, endpoint = start_moto()
                try:
                    shutil.rmtree(f"{work}/buffer", ignore_errors=True)
                    subprocess.run(["sync"])
                    before = cpu_seconds(moto.pid)
                    wall, cpu, rss = run_measured([BIN, "ship", "--once", data, "--to", f"cloudwatch://bench/run-{i}",
                                                   "--endpoint", endpoint, "--region", "us-east-1",
                                                   "--buffer-dir", f"{work}/buffer"])
                    moto_cpu = cpu_seconds(moto.pid) - before
                    runs.append((cpu / gib, wall, rss, moto_cpu / gib))
                finally:
                    moto.kill()
                    moto.wait()
            runs.sort()
            cpu_gib, wall, _, moto_gib = runs[len(runs) // 2]
            print(f"{name:9} cloudwatch: median of {len(runs)}: {cpu_gib:.2f} CPU-s/GiB ({wall:.1f} s wall for "
                  f"{gib * 1024:.0f} MiB, {lines} events), peak RSS {max(r[2] for r in runs):.1f} MiB (max); all: "
                  f"{', '.join(f'{r[0]:.2f}' for r in runs)} CPU-s/GiB; moto itself: {moto_gib:.1f} CPU-s/GiB")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
