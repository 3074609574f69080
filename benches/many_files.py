#!/usr/bin/env python3
"""Benchmark: logship as a node forwarder following many files (a /var/log/pods/*/*/*.log-like tree).

    cargo build --release && python3 benches/many_files.py [--files 10000] [--runs 3]

Measures, with GNU time as the small parent (a child forked from Python would report Python's
RSS as its peak):
  1. backfill: `logship run` with `once = true` over N files of 20 lines each, to file:// (CPU-s, peak RSS,
     CPU per file);
  2. follow, idle: N files already read, nothing written for --idle-seconds (CPU-s, wake-ups/s);
  3. follow, busy: --rate lines/s spread round-robin over the N files for --busy-seconds
     (CPU % of one core, peak RSS, every line delivered);
  4. commit cost: state.json size and bytes written to the buffer directory per commit.

Targets (issue 19, goal 1): busy <= 5 % of one core and <= 24 MiB RSS; idle no measurable CPU,
no wake-up faster than 1 Hz; backfill <= 1 ms of CPU per file on top of the bytes.
"""

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.environ.get("LOGSHIP_BENCH_BIN") or os.path.join(ROOT, "target", "release", "logship")
LINE = "2026-12-02T00:00:00.000000000Z stdout F INFO Executor: Finished task %d.0 in stage 3.0 (TID %d). 2437 bytes result sent to driver\n"


def make_tree(root, n, lines):
    """n files, 100 per pod directory, like the kubelet's /var/log/pods/<ns>_<pod>_<uid>/<container>/0.log."""
    paths = []
    for i in range(n):
        d = os.path.join(root, "ns_pod-%04d_uid" % (i // 10), "c%d" % (i % 10))
        os.makedirs(d, exist_ok=True)
        p = os.path.join(d, "0.log")
        with open(p, "w") as f:
            f.write("".join(LINE % (i, j) for j in range(lines)))
        paths.append(p)
    return paths


def config(work, tree, out, once=False):
    return f"""
[lifecycle]
once = {"true" if once else "false"}

[buffer]
dir = "{work}/buffer"
timekey = "1s"

[[source]]
name = "pods"
type = "tail"
paths = ["{tree}/*/*/*.log"]
multiline = "off"

[[output]]
name = "local"
type = "file"
dir = "{out}"
key_format = "%{{time_slice}}_%{{index}}.%{{file_extension}}"
"""


def timed(cmd, env=None):
    """Runs cmd under GNU time; returns (cpu seconds, peak RSS MiB, wall seconds)."""
    tf = tempfile.NamedTemporaryFile(delete=False)
    tf.close()
    t0 = time.monotonic()
    subprocess.run(["/usr/bin/time", "-f", "%U %S %M", "-o", tf.name] + cmd, check=True, env=env,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.monotonic() - t0
    u, s, m = open(tf.name).read().split()[-3:]
    os.unlink(tf.name)
    return float(u) + float(s), int(m) / 1024, wall


def proc_cpu(pid):
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proc_switches(pid):
    """Context switches per thread (threads come and go: compare per thread)."""
    out = {}
    for task in os.listdir("/proc/%d/task" % pid):
        try:
            with open("/proc/%d/task/%s/status" % (pid, task)) as f:
                out[task] = sum(int(line.split()[1]) for line in f
                                if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")))
        except FileNotFoundError:
            pass
    return out


def switches_since(before, after):
    return sum(n - before.get(t, 0) for t, n in after.items())


def rss(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS"):
                return int(line.split()[1]) / 1024
    return 0


def hwm(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmHWM"):
                return int(line.split()[1]) / 1024
    return 0


def delivered_lines(out):
    n = 0
    for dirpath, _, names in os.walk(out):
        for name in names:
            if name.startswith("."):
                continue  # a file being written (renamed into place when complete)
            try:
                with open(os.path.join(dirpath, name), "rb") as f:
                    n += f.read().count(b"\n")
            except FileNotFoundError:
                pass
    return n


def run_once(args):
    work = tempfile.mkdtemp(prefix="logship-many-")
    try:
        tree, out = os.path.join(work, "pods"), os.path.join(work, "out")
        make_tree(tree, args.files, 20)
        cfg = os.path.join(work, "logship.toml")
        with open(cfg, "w") as f:
            f.write(config(work, tree, out, once=True))
        subprocess.run(["sync"])
        cpu, peak, wall = timed([BIN, "run", "--config", cfg])
        got = delivered_lines(out)
        assert got == args.files * 20, f"delivered {got} lines, wrote {args.files * 20}"
        state = os.path.getsize(os.path.join(work, "buffer", "state.json"))
        return {"cpu": cpu, "peak": peak, "wall": wall, "state": state}
    finally:
        shutil.rmtree(work)


def run_follow(args):
    work = tempfile.mkdtemp(prefix="logship-many-")
    try:
        tree, out = os.path.join(work, "pods"), os.path.join(work, "out")
        paths = make_tree(tree, args.files, 20)
        cfg = os.path.join(work, "logship.toml")
        with open(cfg, "w") as f:
            f.write(config(work, tree, out))
        subprocess.run(["sync"])
        p = subprocess.Popen([BIN, "run", "--config", cfg], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        expected = args.files * 20
        deadline = time.monotonic() + 300
        while delivered_lines(out) < expected:
            assert time.monotonic() < deadline, "backfill did not finish"
            time.sleep(1)
        time.sleep(3)
        # Idle.
        c0, s0 = proc_cpu(p.pid), proc_switches(p.pid)
        time.sleep(args.idle_seconds)
        idle_cpu = proc_cpu(p.pid) - c0
        wakeups = switches_since(s0, proc_switches(p.pid)) / args.idle_seconds
        idle_rss = rss(p.pid)
        # Busy: rate lines/s, round robin over the files, written in 10 bursts per second.
        handles = [open(path, "a") for path in paths]
        c0 = proc_cpu(p.pid)
        t0 = time.monotonic()
        written, k = 0, 0
        per_tick = max(1, args.rate // 10)
        while time.monotonic() - t0 < args.busy_seconds:
            tick = time.monotonic()
            for _ in range(per_tick):
                h = handles[k % len(handles)]
                h.write(LINE % (k, written))
                h.flush()
                k += 1
                written += 1
            time.sleep(max(0, 0.1 - (time.monotonic() - tick)))
        busy_wall = time.monotonic() - t0
        expected += written
        deadline = time.monotonic() + 60
        while delivered_lines(out) < expected:
            assert time.monotonic() < deadline, "busy lines not delivered"
            time.sleep(0.5)
        lag = time.monotonic() - t0 - busy_wall
        busy_cpu = proc_cpu(p.pid) - c0
        peak = hwm(p.pid)
        for h in handles:
            h.close()
        state = os.path.getsize(os.path.join(work, "buffer", "state.json"))
        p.send_signal(signal.SIGTERM)
        rc = p.wait(60)
        assert rc == 0, f"exit {rc}"
        assert delivered_lines(out) == expected
        return {"idle_cpu": idle_cpu, "wakeups": wakeups, "idle_rss": idle_rss,
                "busy_pct": 100 * busy_cpu / busy_wall, "rate": written / busy_wall,
                "lag": lag, "peak": peak, "state": state}
    finally:
        shutil.rmtree(work)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--files", type=int, default=10000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--rate", type=int, default=10000, help="lines per second while busy")
    ap.add_argument("--idle-seconds", type=int, default=20)
    ap.add_argument("--busy-seconds", type=int, default=20)
    ap.add_argument("--skip-follow", action="store_true")
    args = ap.parse_args()
    print(f"binary: {BIN}")
    once = [run_once(args) for _ in range(args.runs)]
    med = lambda rows, k: statistics.median(r[k] for r in rows)
    print(f"backfill --once, {args.files} files x 20 lines: CPU {med(once, 'cpu'):.2f} s "
          f"({1000 * med(once, 'cpu') / args.files:.3f} ms/file), peak {med(once, 'peak'):.1f} MiB, "
          f"wall {med(once, 'wall'):.1f} s, state.json {med(once, 'state') / 1024:.0f} KiB "
          f"(runs: {', '.join('%.2f' % r['cpu'] for r in once)})")
    if args.skip_follow:
        return
    follow = [run_follow(args) for _ in range(args.runs)]
    print(f"follow idle {args.idle_seconds}s: CPU {med(follow, 'idle_cpu'):.2f} s, "
          f"{med(follow, 'wakeups'):.2f} wake-ups/s, RSS {med(follow, 'idle_rss'):.1f} MiB")
    print(f"follow busy {med(follow, 'rate'):.0f} lines/s: {med(follow, 'busy_pct'):.1f} % of a core, "
          f"peak {med(follow, 'peak'):.1f} MiB, last line delivered {med(follow, 'lag'):.1f} s after the writes stopped, "
          f"state.json {med(follow, 'state') / 1024:.0f} KiB "
          f"(runs: {', '.join('%.1f%%' % r['busy_pct'] for r in follow)})")


if __name__ == "__main__":
    sys.exit(main())
