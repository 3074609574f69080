#!/usr/bin/env python3
"""Fault soak of the real binary: logship follows three growing files and ships them to the
in-tree S3 server (s3s over s3s-fs, authentication on) and to CloudWatch Logs (moto server), both
behind a fault proxy, while faults arrive one after another for the given time:

  kill -9 at a random instant (then a restart on the same buffer); SIGHUP to a configuration that
  renames a source, and back; S3 answering 500, 503 SlowDown, slowly, or resetting connections;
  CloudWatch throttling; a full buffer disk (a tmpfs, when the script may mount one); rotation by
  rename with the writer still writing the old file for a moment; logrotate's copytruncate; and
  objects of "another run" already at keys logship will want (which it must never replace).

At the end the Spark container's heartbeat goes stale and logship must drain and exit 0. Then it
counts, per output, lines written, delivered, lost and duplicated. Every line written must arrive
exactly once in S3. In CloudWatch every line must arrive; a line may arrive twice only as part of
the one batch in flight when a kill -9 landed (CloudWatch has no keys to deliver under again), at
most 10,000 events per kill. A copytruncate happens once logship's metrics say it has read the
file to its end and a commit has passed, so no line is allowed to be lost to it; if logship could
not catch up (it was down), the lines it had not read are allowed missing, and counted. Exits
non-zero on any loss or duplicate outside those allowances.

    cargo build --release && cargo build --release --example s3_server
    python3 benches/soak.py [--minutes 10] [--seed N] [--keep]

Without a release build it uses the musl release binary the pod tests build, or the debug one.
"""

import argparse
import asyncio
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CREDS = {"AWS_ACCESS_KEY_ID": "AKIALOGSHIPTEST00001",
         "AWS_SECRET_ACCESS_KEY": "logship-test-secret-key-0000000000000000",
         "AWS_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}
GROUP = "soak"
BUCKET = "soak"
LINE = re.compile(rb"<([a-z]+)\.(\d+)\.(\d+)>")


def first_existing(paths, what):
    for p in paths:
        if os.path.exists(p):
            return p
    sys.exit(f"no {what}: build it first (cargo build --release && cargo build --release --example s3_server)")


def binaries():
    t = os.path.join(ROOT, "target")
    logship = first_existing([f"{t}/release/logship", f"{t}/x86_64-unknown-linux-musl/release/logship",
                              f"{t}/debug/logship"], "logship binary")
    server = first_existing([f"{t}/release/examples/s3_server", f"{t}/debug/examples/s3_server"],
                            "s3_server example")
    return logship, server


def python_path():
    """Where moto and boto3 import from: the tests' own install under target/ (pip installs
    them there when missing, as the tests do)."""
    d = os.path.join(ROOT, "target", "tmp", "python")
    os.makedirs(d, exist_ok=True)
    env = dict(os.environ, PYTHONPATH=d)
    check = [sys.executable, "-c", "import moto.server, boto3, flask_cors"]
    if subprocess.run(check, env=env, capture_output=True).returncode != 0:
        with open(os.path.join(ROOT, "tests", "requirements.txt")) as f:
            pkgs = [l.strip() for l in f if l.strip() and not l.startswith(("#", "pyspark"))]
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                        "--target", d, *pkgs], check=True)
    return d


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------------------------------------
# The fault proxy: a TCP proxy that answers new connections with the current fault.

CANNED = {
    "500": b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    "503": (b"HTTP/1.1 503 Slow Down\r\nContent-Type: application/xml\r\nConnection: close\r\nContent-Length: 107\r\n\r\n"
            b"<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>SlowDown</Code><Message>Reduce</Message></Error>"),
    "throttle": (b"HTTP/1.1 400 Bad Request\r\nContent-Type: application/x-amz-json-1.1\r\nConnection: close\r\n"
                 b"Content-Length: 67\r\n\r\n{\"__type\":\"ThrottlingException\",\"message\":\"Rate exceeded\",\"x\":1}"),
}


class FaultProxy:
    def __init__(self, target_port):
        self.target = target_port
        self.mode = "pass"
        self.port = free_port()
        self.open = set()
        self.faults = {}
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()
        threading.Thread(target=self._run, args=(ready,), daemon=True).start()
        ready.wait()

    def _run(self, ready):
        asyncio.set_event_loop(self.loop)
        srv = self.loop.run_until_complete(asyncio.start_server(self._conn, "127.0.0.1", self.port))
        ready.set()
        self.loop.run_until_complete(srv.serve_forever())

    def set(self, mode):
        """Answers new connections with `mode` from now on, and drops the open ones, so the
        client's next request meets it."""
        self.mode = mode

        def drop():
            for w in list(self.open):
                w.close()
        self.loop.call_soon_threadsafe(drop)

    async def _conn(self, reader, writer):
        mode = self.mode
        self.faults[mode] = self.faults.get(mode, 0) + 1
        try:
            if mode in CANNED or mode == "reset":
                await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
                if mode == "reset":
                    sock = writer.get_extra_info("socket")
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                else:
                    writer.write(CANNED[mode])
                    await writer.drain()
                writer.close()
                return
            if mode == "slow":
                await asyncio.sleep(3)
            up_r, up_w = await asyncio.open_connection("127.0.0.1", self.target)
            self.open.add(writer)
            self.open.add(up_w)

            async def pipe(r, w):
                try:
                    while data := await r.read(65536):
                        w.write(data)
                        await w.drain()
                except Exception:
                    pass
                finally:
                    w.close()
            await asyncio.gather(pipe(reader, up_w), pipe(up_r, writer))
            self.open.discard(writer)
            self.open.discard(up_w)
        except Exception:
            writer.close()


# ---------------------------------------------------------------------------------------------
# The writers: lines with a marker <file.generation.n>, so every delivered line names itself.

class Writer:
    """Appends lines to one file, at its own pace, until stopped; `rotate` and `copytruncate`
    act between two writes."""

    def __init__(self, path, name, multiline, rng):
        self.path, self.name, self.multiline, self.rng = path, name, multiline, rng
        self.gen = 0
        self.n = 0
        self.written = []        # (gen, n) of every line, in order
        self.allowed_missing = set()
        self.lock = threading.Lock()
        self.f = open(path, "ab", buffering=0)
        self.stop = False

    def line(self, extra=b""):
        m = b"<%s.%d.%d>" % (self.name.encode(), self.gen, self.n)
        self.written.append((self.gen, self.n))
        self.n += 1
        return m + extra

    def write_some(self):
        with self.lock:
            out = []
            for _ in range(self.rng.randint(1, 40)):
                if self.multiline and self.rng.random() < 0.2:
                    out.append(b"26/12/01 10:00:00 ERROR Executor: " + self.line(b" failed\n"))
                    for _ in range(self.rng.randint(1, 12)):
                        out.append(b"\tat org.apache.spark.Task.run(" + self.line(b")\n"))
                else:
                    pad = b"x" * self.rng.randint(0, 300)
                    out.append(b"26/12/01 10:00:00 INFO Executor: " + self.line(b" " + pad + b"\n"))
            data = b"".join(out)
            cut = self.rng.randint(0, len(data))
            self.f.write(data[:cut])
            self.f.write(data[cut:])

    def run(self):
        while not self.stop:
            self.write_some()
            time.sleep(self.rng.uniform(0.005, 0.05))

    def rotate(self, n):
        """Rotation by rename: the file moves to <name>.<n>; the writer keeps writing the old
        file for a moment, then opens a new one."""
        with self.lock:
            os.rename(self.path, f"{self.path}.{n}")
        time.sleep(0.5)
        with self.lock:
            self.f.close()
            self.gen += 1
            self.n = 0
            self.f = open(self.path, "ab", buffering=0)

    def copytruncate(self, n, lag_of):
        """logrotate's copytruncate, once logship has read the file to its end (or a timeout:
        then what it had not read is allowed missing)."""
        with self.lock:
            deadline = time.time() + 15
            size = os.path.getsize(self.path)
            while time.time() < deadline and lag_of(self.path) != 0:
                time.sleep(0.2)
            lag = lag_of(self.path)
            # A pass has committed what it read.
            time.sleep(1.5)
            shutil.copyfile(self.path, f"{self.path}.copy-{n}")
            if lag:
                # What was not read: the lines in the last `lag` bytes of the file.
                data = open(self.path, "rb").read()
                unread = data[len(data) - (lag if lag > 0 else len(data)):]
                for m in LINE.finditer(unread):
                    self.allowed_missing.add((int(m.group(2)), int(m.group(3))))
            os.truncate(self.path, 0)
            return size, lag


# ---------------------------------------------------------------------------------------------


def metrics_lag(port):
    """path -> lag in bytes (logship_file_lag_bytes); -1 when logship does not answer."""
    try:
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
    except Exception:
        return None
    out = {}
    for m in re.finditer(r'logship_file_lag_bytes\{source="[^"]*",path="([^"]*)"\} (\d+)', body):
        out[m.group(1)] = int(m.group(2))
    return out


def config(work, s3_endpoint, cw_endpoint, metrics_port, source_name):
    return f"""
[buffer]
dir = "{work}/buffer"
timekey = "5s"
chunk_limit = "1MiB"
flush_mode = "interval"
flush_interval = "2s"
[lifecycle]
heartbeat_file = "{work}/heartbeat"
heartbeat_timeout = "10s"
drain_deadline = "10m"
[metrics]
listen = "127.0.0.1:{metrics_port}"
[[source]]
name = "{source_name}"
type = "tail"
paths = ["{work}/in/*.log"]
rotate_wait = "3s"
[[output]]
name = "s3"
type = "s3"
path = "soak"
key_format = "%{{path}}/%{{tag}}/%{{time_slice}}_%{{index}}.%{{file_extension}}"
[output.s3]
bucket = "{BUCKET}"
endpoint = "{s3_endpoint}"
force_path_style = true
region = "us-east-1"
request_timeout = "5s"
[output.retry]
wait = "200ms"
max_interval = "5s"
max_times = 100000
timeout = "1h"
[[output]]
name = "cw"
type = "cloudwatch"
[output.cloudwatch]
log_group = "{GROUP}"
log_stream = "%{{tag}}"
endpoint = "{cw_endpoint}"
region = "us-east-1"
[output.retry]
wait = "200ms"
max_interval = "5s"
max_times = 100000
timeout = "1h"
"""


def in_namespace():
    """Re-runs this script in a private mount namespace (as root) so the buffer can be a small
    tmpfs that can fill up; returns False when that is not possible (no full-disk faults)."""
    if os.environ.get("LOGSHIP_SOAK_NS"):
        return True
    if os.geteuid() != 0 or not shutil.which("unshare"):
        return False
    env = dict(os.environ, LOGSHIP_SOAK_NS="1")
    r = subprocess.run(["unshare", "--mount", "--propagation", "private", sys.executable, *sys.argv], env=env)
    sys.exit(r.returncode)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=10)
    ap.add_argument("--seed", type=int, default=int(time.time()))
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    ap.add_argument("--bin", help="the logship binary (default: release, else musl release, else debug)")
    a = ap.parse_args()
    disk_faults = in_namespace()
    rng = random.Random(a.seed)
    logship, server_bin = binaries()
    logship = a.bin or logship
    py = python_path()
    work = os.path.join(ROOT, "target", "soak", time.strftime("%Y%m%d-%H%M%S"))
    os.makedirs(f"{work}/in")
    # Its own copies: a build during the soak does not swap the binaries under it.
    for b in ("logship", "s3_server"):
        shutil.copy2(logship if b == "logship" else server_bin, f"{work}/{b}")
    logship, server_bin = f"{work}/logship", f"{work}/s3_server"
    os.makedirs(f"{work}/s3/{BUCKET}")
    os.makedirs(f"{work}/buffer")
    if disk_faults:
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48m,mode=0700", "tmpfs", f"{work}/buffer"], check=True)
    print(f"soak: {a.minutes:g} min, seed {a.seed}, {logship}, work {work}"
          f"{'' if disk_faults else ' (no full-disk faults: not root or no unshare)'}", flush=True)
    env = dict(os.environ, **CREDS, LOGSHIP_LOG="info")
    procs = []
    server = subprocess.Popen([server_bin, f"{work}/s3"], stdout=subprocess.PIPE, env=env)
    procs.append(server)
    s3_port = int(server.stdout.readline().decode().strip().rsplit(":", 1)[1])
    moto_port = free_port()
    moto = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(moto_port)],
                            env=dict(env, PYTHONPATH=py), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    procs.append(moto)
    for _ in range(600):
        try:
            socket.create_connection(("127.0.0.1", moto_port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.1)
    s3p, cwp = FaultProxy(s3_port), FaultProxy(moto_port)
    metrics_port = free_port()
    cfg_path = f"{work}/logship.toml"
    names = ["files", "renamed-files"]

    def write_config(i):
        with open(cfg_path, "w") as f:
            f.write(config(work, f"http://127.0.0.1:{s3p.port}", f"http://127.0.0.1:{cwp.port}", metrics_port, names[i]))
    write_config(0)
    # Another run's objects at keys logship will want: never replaced.
    planted = {}
    now = int(time.time())
    for t in range(now - now % 5, now + int(a.minutes * 60) + 120, 5):
        slice_ = time.strftime("%Y%m%d%H%M%S", time.gmtime(t))
        key = f"soak/app.log/{slice_}_0.txt"
        planted[key] = f"another run's object {key}\n".encode()
        p = f"{work}/s3/{BUCKET}/{key}"
        os.makedirs(os.path.dirname(p), exist_ok=True)
        with open(p, "wb") as f:
            f.write(planted[key])
    heartbeat = f"{work}/heartbeat"
    beating = threading.Event()
    beating.set()

    def beat():
        while beating.is_set():
            with open(heartbeat, "w"):
                pass
            time.sleep(1)
    threading.Thread(target=beat, daemon=True).start()
    writers = {n: Writer(f"{work}/in/{n}.log", n, n == "trace", random.Random(rng.random()))
               for n in ("app", "web", "trace")}
    threads = [threading.Thread(target=w.run, daemon=True) for w in writers.values()]
    for t in threads:
        t.start()
    log = open(f"{work}/logship.log", "ab")
    state = {"proc": None, "kills": 0, "reloads": 0, "config": 0}

    def start():
        state["proc"] = subprocess.Popen([logship, "run", "--config", cfg_path], env=env, stdout=log, stderr=log)
    start()
    counts = {}
    end = time.time() + a.minutes * 60
    rotations = 0

    def lag_of(path):
        m = metrics_lag(metrics_port)
        return -1 if m is None else m.get(path, -1)
    while time.time() < end:
        time.sleep(rng.uniform(2, 8))
        action = rng.choices(
            ["kill", "reload", "s3", "cw", "disk", "rotate", "copytruncate"],
            weights=[3, 2, 3, 2, 2 if disk_faults else 0, 2, 2])[0]
        counts[action] = counts.get(action, 0) + 1
        if action == "kill":
            time.sleep(rng.uniform(0, 1))
            state["proc"].send_signal(signal.SIGKILL)
            state["proc"].wait()
            state["kills"] += 1
            start()
        elif action == "reload":
            state["config"] ^= 1
            write_config(state["config"])
            state["proc"].send_signal(signal.SIGHUP)
            state["reloads"] += 1
        elif action in ("s3", "cw"):
            proxy = s3p if action == "s3" else cwp
            mode = rng.choice(["500", "503", "slow", "reset"]) if action == "s3" else rng.choice(["throttle", "500", "reset"])
            proxy.set(mode)
            time.sleep(rng.uniform(3, 15))
            proxy.set("pass")
        elif action == "disk":
            filler = f"{work}/buffer/filler"
            with open(filler, "wb") as f:
                try:
                    while True:
                        f.write(b"\0" * (1 << 20))
                        f.flush()
                except OSError:
                    pass
            time.sleep(rng.uniform(3, 12))
            os.remove(filler)
        elif action == "rotate":
            rotations += 1
            writers["app"].rotate(rotations)
        elif action == "copytruncate":
            rotations += 1
            writers["web"].copytruncate(rotations, lag_of)
        if state["proc"].poll() is not None:
            sys.exit(f"logship exited during the soak with {state['proc'].returncode}; see {work}/logship.log")
    for w in writers.values():
        w.stop = True
    for t in threads:
        t.join()
    s3p.set("pass")
    cwp.set("pass")
    # The main container is gone: its heartbeat goes stale, logship drains and exits.
    beating.clear()
    try:
        rc = state["proc"].wait(timeout=900)
    except subprocess.TimeoutExpired:
        state["proc"].kill()
        sys.exit(f"logship did not drain within 15 minutes; see {work}/logship.log")
    ok = verify(work, writers, planted, state, py, moto_port, rc, counts)
    for p in procs:
        p.kill()
    if disk_faults:
        subprocess.run(["umount", f"{work}/buffer"])
    if ok and not a.keep:
        shutil.rmtree(work, ignore_errors=True)
    sys.exit(0 if ok else 1)


def verify(work, writers, planted, state, py, moto_port, rc, counts):
    ok = rc == 0
    print(f"soak: logship exited {rc} after {state['kills']} kills, {state['reloads']} reloads; "
          f"faults {json.dumps(counts, sort_keys=True)}")
    # S3: every object; the planted ones unchanged.
    s3 = {}
    base = f"{work}/s3/{BUCKET}"
    for d, _, files in os.walk(base):
        for f in files:
            if f.startswith("."):
                continue
            p = os.path.join(d, f)
            key = os.path.relpath(p, base)
            s3[key] = open(p, "rb").read()
    for key, content in planted.items():
        if s3.get(key) != content:
            print(f"soak: FAIL: another run's object {key} was replaced")
            ok = False
        s3.pop(key, None)
    s3_lines = {}
    for key, body in s3.items():
        for m in LINE.finditer(body):
            k = (m.group(1).decode(), int(m.group(2)), int(m.group(3)))
            s3_lines[k] = s3_lines.get(k, 0) + 1
    # CloudWatch: every stream's events.
    script = os.path.join(ROOT, "tests", "cloudwatch", "events.py")
    cw_lines = {}
    for name in writers:
        out = subprocess.run([sys.executable, script, f"http://127.0.0.1:{moto_port}", GROUP, f"{name}.log"],
                             env=dict(os.environ, PYTHONPATH=py), capture_output=True, check=True).stdout
        for e in json.loads(out):
            for m in LINE.finditer(e["message"].encode()):
                k = (m.group(1).decode(), int(m.group(2)), int(m.group(3)))
                cw_lines[k] = cw_lines.get(k, 0) + 1
    written = {(name, g, n) for name, w in writers.items() for (g, n) in w.written}
    allowed = {(name, g, n) for name, w in writers.items() for (g, n) in w.allowed_missing}
    for out, got, dup_allowance in (("s3", s3_lines, 0), ("cloudwatch", cw_lines, 10_000 * state["kills"])):
        lost = written - set(got) - allowed
        excused = len((written & allowed) - set(got))
        dups = sum(c - 1 for c in got.values() if c > 1)
        unknown = set(got) - written
        print(f"soak: {out}: written {len(written)}, delivered {len(set(got) & written)}, lost {len(lost)} "
              f"(+{excused} allowed: unread at a copytruncate), duplicated {dups}"
              f"{f' (allowed up to {dup_allowance}: batches in flight at a kill)' if dup_allowance else ''}")
        if lost:
            print(f"soak: FAIL: {out}: lost lines, e.g. {sorted(lost)[:5]}")
            ok = False
        if dups > dup_allowance:
            print(f"soak: FAIL: {out}: {dups} duplicated lines")
            ok = False
        if unknown:
            print(f"soak: FAIL: {out}: lines that were never written, e.g. {sorted(unknown)[:5]}")
            ok = False
    print("soak: PASS" if ok else f"soak: FAIL (work directory {work} kept)")
    return ok


if __name__ == "__main__":
    main()
