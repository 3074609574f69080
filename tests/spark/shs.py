"""Starts Spark's History Server on a directory, waits until it lists the expected applications,
and prints what it shows (JSON): per application its listing entry, jobs, stages, executors and
SQL executions, with only the fields that depend on file times or the clock removed.

usage: shs.py LOG_DIR PORT EXPECTED_APPS > dump.json
"""
import json
import os
import subprocess
import sys
import time
import urllib.request

import pyspark

log_dir, port, expected = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
spark_home = os.path.dirname(pyspark.__file__)
env = dict(os.environ)
env["SPARK_HOME"] = spark_home
env["SPARK_HISTORY_OPTS"] = " ".join(
    [
        f"-Dspark.history.fs.logDirectory=file://{os.path.abspath(log_dir)}",
        f"-Dspark.history.ui.port={port}",
        "-Dspark.history.fs.update.interval=1s",
        "-Dspark.ui.bindAddress=127.0.0.1",
        "-Dspark.driver.bindAddress=127.0.0.1",
    ]
)
env["SPARK_LOCAL_IP"] = "127.0.0.1"
env["SPARK_NO_DAEMONIZE"] = "1"
proc = subprocess.Popen(
    [os.path.join(spark_home, "bin", "spark-class"), "org.apache.spark.deploy.history.HistoryServer"],
    env=env,
    stdout=subprocess.DEVNULL,
    stderr=open(os.path.join(os.path.dirname(os.path.abspath(log_dir)), f"shs-{port}.log"), "w"),
)
base = f"http://127.0.0.1:{port}/api/v1"


def get(path):
    with urllib.request.urlopen(base + path, timeout=30) as r:
        return json.loads(r.read())


# Where the log lies (not what it says), and file times.
VOLATILE = {"lastUpdated", "lastUpdatedEpoch", "logSourceFullPath", "logSourceName"}


def clean(x):
    if isinstance(x, dict):
        # An executor still active has run "until now".
        drop = VOLATILE | ({"totalDuration"} if x.get("isActive") is True else set())
        return {k: clean(v) for k, v in x.items() if k not in drop}
    if isinstance(x, list):
        return [clean(v) for v in x]
    return x


try:
    deadline = time.time() + 120
    apps = []
    while time.time() < deadline:
        try:
            apps = get("/applications")
            if len(apps) >= expected:
                # One more scan interval, so a log still being parsed is listed as it is.
                time.sleep(2.5)
                apps = get("/applications")
                break
        except Exception:
            pass
        time.sleep(0.5)
    out = {}
    for app in sorted(apps, key=lambda a: a["id"]):
        aid = app["id"]
        out[aid] = {
            "app": clean(app),
            "jobs": clean(sorted(get(f"/applications/{aid}/jobs"), key=lambda j: j["jobId"])),
            "stages": clean(
                sorted(get(f"/applications/{aid}/stages"), key=lambda s: (s["stageId"], s["attemptId"]))
            ),
            "executors": clean(sorted(get(f"/applications/{aid}/allexecutors"), key=lambda e: e["id"])),
            "sql": clean(sorted(get(f"/applications/{aid}/sql"), key=lambda q: q["id"])),
        }
    json.dump(out, sys.stdout, indent=1, sort_keys=True)
finally:
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
