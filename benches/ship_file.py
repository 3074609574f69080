#!/usr/bin/env python3
"""Benchmark: ship generated Spark-like JSON lines to file:// and report wall time, CPU seconds
and peak RSS; then idle RSS and wake-ups of a follower with nothing to do.

    cargo build --release && python3 benches/ship_file.py [--gib 1] [--runs 5] [--keep]

Needs GNU time (Debian package `time`) for the peak RSS.

Targets (issue 2): <= 1.5 CPU-seconds per GiB, peak RSS <= 16 MiB while shipping, idle RSS
<= 5 MiB with no wake-ups faster than 1 Hz. The input is cached in target/bench-data.
"""

import argparse
import glob
import os
import random
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# LOGSHIP_BENCH_BIN measures another build (before/after comparisons).
BIN = os.environ.get("LOGSHIP_BENCH_BIN") or os.path.join(ROOT, "target", "release", "logship")


def generate(path, size):
    """Spark-like event lines: JSON objects of 200..2800 bytes, mean ~1.5 KB. Values vary like real
    event logs (ids, hosts, metric numbers, hex-ish identifiers), so compression ratios and costs
    are closer to a real Spark event log (gzip about 3.5:1 here; 8:1 on the bundled demo log,
    so compression costs here are on the high side), not those of one repeated letter."""
    if os.path.exists(path) and os.path.getsize(path) >= size:
        return
    os.makedirs(os.path.dirname(path), exist_ok=True)
    rng = random.Random(1)
    events = ["SparkListenerTaskEnd", "SparkListenerTaskStart", "SparkListenerStageCompleted",
              "SparkListenerExecutorMetricsUpdate", "org.apache.spark.sql.execution.ui.SparkListenerSQLExecutionStart"]
    alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
    pool = "".join(rng.choice(alphabet) for _ in range(1 << 12))
    words = ["executor", "stage", "task", "shuffle", "bytes", "records", "read", "write", "time",
             "memory", "spill", "jvm", "gc", "peak", "input", "output", "remote", "local", "blocks"]

    def pad(n):
        out, size = [], 0
        while size < n:
            if rng.random() < 0.95:
                w = '"%s %s":%d,' % (rng.choice(words), rng.choice(words), rng.randrange(100000))
            else:
                start = rng.randrange(len(pool) - 40)
                w = pool[start:start + rng.randrange(8, 40)] + " "
            out.append(w)
            size += len(w)
        return "".join(out)[:n]
    written = 0
    with open(path + ".tmp", "w") as f:
        i = 0
        buf = []
        while written < size:
            ev = events[i % len(events)]
            line = '{"Event":"%s","Stage ID":%d,"Task Info":{"Task ID":%d,"Host":"10.0.%d.%d","Accumulables":"%s"}}\n' % (
                ev, i // 1000, i, (i >> 8) & 255, i & 255, pad(rng.randrange(120, 2700)))
            buf.append(line)
            written += len(line)
            i += 1
            if len(buf) >= 10000:
                f.write("".join(buf))
                buf = []
        f.write("".join(buf))
    os.rename(path + ".tmp", path)


SPARK_JOB = r"""
import sys
from pyspark.sql import SparkSession
spark = (SparkSession.builder.master("local[2]").appName("logship-bench-eventlog")
         .config("spark.eventLog.enabled", "true").config("spark.eventLog.dir", sys.argv[1])
         .config("spark.eventLog.rolling.enabled", "false").config("spark.eventLog.compress", "false")
         .config("spark.ui.enabled", "false").config("spark.ui.showConsoleProgress", "false")
         .config("spark.sql.shuffle.partitions", "200").config("spark.sql.adaptive.enabled", "false")
         .getOrCreate())
spark.sparkContext.setLogLevel("ERROR")
for _ in range(2):
    spark.range(0, 1000 * 1000, 1, 1000).selectExpr("id % 997 as k", "id").groupBy("k").count().collect()
spark.stop()
"""


def generate_spark(path, size):
    """A real Spark event log, written by pyspark (`pip install pyspark`; about a minute on two
    cores): two SQL aggregations of 1,000 tasks and a 200-partition shuffle each, as one plain
    JSON-lines file of about 11 MB, repeated to `size`. Task events dominate it, as they do any
    large event log. The copies repeat at an 11 MB distance, far beyond the compressors' windows
    (zstd level 1: 512 KiB; gzip: 32 KiB), so each copy costs what the original does."""
    if os.path.exists(path) and os.path.getsize(path) >= size:
        return
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with tempfile.TemporaryDirectory() as d:
        logs = os.path.join(d, "logs")
        os.makedirs(logs)
        proc = subprocess.run([sys.executable, "-c", SPARK_JOB, "file://" + logs],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        if proc.returncode != 0:
            sys.exit("the Spark job for the bench data failed (is pyspark installed?):\n"
                     + proc.stderr.decode(errors="replace")[-2000:])
        (log,) = glob.glob(os.path.join(logs, "local-*"))
        with open(log, "rb") as f:
            one = f.read()
    written = 0
    with open(path + ".tmp", "wb") as f:
        while written < size:
            f.write(one)
            written += len(one)
    os.rename(path + ".tmp", path)


def bench_inputs(names, size, label):
    """The inputs by name (`spark`, `synthetic`; both when `names` is empty), generated once to
    `size` bytes under target/bench-data, their file names ending in `label` (e.g. `1gib`)."""
    inputs = []
    for name in names or ["spark", "synthetic"]:
        if name == "spark":
            path = os.path.join(ROOT, "target", "bench-data", f"spark-eventlog-{label}.jsonl")
            generate_spark(path, size)
        else:
            path = os.path.join(ROOT, "target", "bench-data", f"spark-v4-{label}.jsonl")
            generate(path, size)
        inputs.append((name, path))
    return inputs


def run_measured(args):
    """Runs under GNU time (Debian package `time`): a tiny parent, so the peak RSS is logship's.
    (A child forked from this Python process would report Python's size as its peak.)"""
    gnu_time = shutil.which("time") or "/usr/bin/time"
    if not os.path.exists(gnu_time):
        sys.exit("needs GNU time: apt-get install time")
    with tempfile.NamedTemporaryFile("r") as report:
        proc = subprocess.run([gnu_time, "-o", report.name, "-f", "%e %U %S %M"] + args,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        if proc.returncode != 0:
            sys.exit(f"logship exited {proc.returncode}:\n{proc.stderr.decode(errors='replace')}")
        wall, user, system, rss_kib = report.read().split()
    return float(wall), float(user) + float(system), int(rss_kib) / 1024.0


def task_switches(pid):
    total = 0
    for status in glob.glob(f"/proc/{pid}/task/*/status"):
        try:
            with open(status) as f:
                for line in f:
                    if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                        total += int(line.split()[1])
        except FileNotFoundError:
            pass
    return total


def rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return 0.0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gib", type=float, default=1.0)
    ap.add_argument("--keep", action="store_true", help="keep the output directory")
    ap.add_argument("--idle-seconds", type=int, default=20)
    ap.add_argument("--runs", type=int, default=5)
    a = ap.parse_args()
    if not os.path.exists(BIN):
        sys.exit("build first: cargo build --release")
    size = int(a.gib * (1 << 30))
    data = os.path.join(ROOT, "target", "bench-data", f"spark-v4-{a.gib:g}gib.jsonl")
    generate(data, size)
    size = os.path.getsize(data)
    work = tempfile.mkdtemp(prefix="logship-bench-", dir=os.path.join(ROOT, "target"))
    try:
        gib = size / (1 << 30)
        runs = []
        for i in range(a.runs):
            shutil.rmtree(f"{work}/out", ignore_errors=True)
            shutil.rmtree(f"{work}/buffer", ignore_errors=True)
            subprocess.run(["sync"])
            wall, cpu, rss = run_measured([BIN, "ship", "--once", data, "--to", f"file://{work}/out",
                                           "--buffer-dir", f"{work}/buffer"])
            shipped = sum(os.path.getsize(p) for p in glob.glob(f"{work}/out/**/*", recursive=True)
                          if os.path.isfile(p))
            assert shipped == size, f"shipped {shipped} of {size} bytes"
            runs.append((cpu / gib, wall, rss))
            print(f"run {i + 1}: {gib:.2f} GiB in {wall:.1f} s wall, {cpu:.2f} CPU-s "
                  f"({cpu / gib:.2f} CPU-s/GiB), peak RSS {rss:.1f} MiB")
        runs.sort()
        cpu_gib, wall, rss = runs[len(runs) // 2]
        print(f"ship --once to file:// (median of {len(runs)}): {cpu_gib:.2f} CPU-s/GiB, {wall:.1f} s wall, "
              f"peak RSS {max(r[2] for r in runs):.1f} MiB (max)")

        # Idle: a follower of a file nobody writes.
        idle = os.path.join(work, "idle.log")
        open(idle, "w").close()
        p = subprocess.Popen([BIN, "ship", "--follow", idle, "--to", f"file://{work}/idle-out",
                              "--buffer-dir", f"{work}/idle-buffer"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(3)
        s0, t0 = task_switches(p.pid), time.monotonic()
        time.sleep(a.idle_seconds)
        s1, t1 = task_switches(p.pid), time.monotonic()
        idle_rss = rss_mib(p.pid)
        p.send_signal(signal.SIGTERM)
        p.wait(timeout=30)
        print(f"idle follower: RSS {idle_rss:.1f} MiB, {(s1 - s0) / (t1 - t0):.2f} wake-ups/s "
              f"over {a.idle_seconds} s (all threads)")
    finally:
        if not a.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
