#!/usr/bin/env python3
"""Weir against its peers, on this machine, in one run.

Serves the iris model (StandardScaler + LogisticRegression, one row per request) with:
  - weir            the iris example as shipped: a fresh instance per stage per request;
  - weir-reused     the same pipeline with every stage opted into `reuse_instances`;
  - weir-batched    the same pipeline with `[batching]`: concurrent requests share one pass
                    through fresh instances;
  - mlserver        MLServer + mlserver-sklearn in its fastest configuration (parallel_workers 0);
  - triton          NVIDIA Triton through PyTriton: a Python model function, dynamic batching;
  - ceiling         a bare hyper server answering a fixed V2 response (bench/ceiling): the most
                    HTTP + JSON this machine does with this load generator;
and drives each with the same V2 JSON request from `wrk` at concurrency 1, 8 and 64.

This machine's speed drifts (a quarter over minutes, on a shared VM), so Weir and the ceiling
run side by side and are driven in turn, round after round (--rounds): each round's ratio
comes from runs seconds apart, and the report gives medians over rounds. The Python peers,
thirty times slower, run alone once. Prints req/s, p50, p99, CPU (cores busy) and peak RSS per
server, then the ratios.

Traffic goes to 127.0.0.1 only; every run is bounded (--seconds); the processes it starts are
stopped when it ends, however it ends. The Python peers live in a venv the script creates
(target/bench-venv, reused on the next run).

With --baseline PATH, another build of `weir` (say, of the previous commit) serves the same
example as `weir-baseline` beside the others, and the report gives `weir / weir-baseline`: what
a change did to speed, measured in one run.

Usage: python3 bench/peers.py [--seconds 10] [--rounds 3] [--only weir,ceiling] [--baseline PATH]
Needs: cargo, python3 with venv, wrk (apt-get install wrk; installed if missing and root).
"""

import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / "target" / "bench-venv"
PEER_PACKAGES = ["mlserver==1.7.1", "mlserver-sklearn==1.7.1", "uvloop<0.22",
                 "nvidia-pytriton==0.7.0", "scikit-learn", "joblib"]
REQUEST = '{"inputs":[{"name":"features","shape":[1,4],"datatype":"FP32","data":[5.1,3.5,1.4,0.2]}]}'
CONCURRENCY = [1, 8, 64]
PORT = 18300
# Servers driven in turn, round after round, so that their ratios are paired in time.
SIDE_BY_SIDE = ("ceiling", "weir", "weir-baseline", "weir-reused", "weir-batched")
PYTHON_PEERS = ("mlserver", "triton")


def run(*args, **kwargs):
    return subprocess.run([str(a) for a in args], check=True, **kwargs)


def setup(python_peers):
    """Build Weir and the ceiling, install wrk and, when they run, the Python peers."""
    if shutil.which("wrk") is None:
        if os.geteuid() != 0:
            sys.exit("needs wrk: apt-get install wrk")
        run("apt-get", "install", "-y", "-q", "wrk")
    run("cargo", "build", "--release", "-q", "-p", "weir", "-p", "weir-ceiling", cwd=ROOT)
    python = VENV / "bin" / "python"
    if not python_peers:
        return python
    if not python.exists():
        run(sys.executable, "-m", "venv", VENV)
    run(python, "-m", "pip", "install", "-q", *PEER_PACKAGES)
    return python


class Server:
    """A server process (and its children) in its own session, stopped on `stop()`."""

    def __init__(self, name, args, url, env=None, log=None):
        self.name, self.url = name, url
        self.process = subprocess.Popen([str(a) for a in args], env=env, stdout=log,
                                        stderr=subprocess.STDOUT, start_new_session=True)

    def wait_ready(self, timeout=180):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.process.returncode}")
            try:
                request = urllib.request.Request(self.url, data=REQUEST.encode(),
                                                 headers={"Content-Type": "application/json"})
                with urllib.request.urlopen(request, timeout=2) as response:
                    if response.status == 200:
                        return json.loads(response.read())
            except OSError:
                pass
            time.sleep(0.3)
        raise RuntimeError(f"{self.name} did not answer within {timeout} s")

    def pids(self):
        """The server's process and all its descendants."""
        pids, frontier = [], [self.process.pid]
        while frontier:
            pid = frontier.pop()
            pids.append(pid)
            try:
                children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
            except OSError:
                children = []
            frontier.extend(int(c) for c in children)
        return pids

    def cpu_seconds(self):
        total = 0
        for pid in self.pids():
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                total += int(fields[11]) + int(fields[12])  # utime, stime
            except OSError:
                pass
        return total / os.sysconf("SC_CLK_TCK")

    def peak_rss_mb(self):
        total = 0
        for pid in self.pids():
            try:
                status = Path(f"/proc/{pid}/status").read_text()
                total += int(re.search(r"VmHWM:\s+(\d+)", status).group(1))
            except (OSError, AttributeError):
                pass
        return total / 1024

    def stop(self):
        if self.process.poll() is None:
            for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
                try:
                    os.killpg(self.process.pid, sig)
                    self.process.wait(wait)
                    break
                except (subprocess.TimeoutExpired, ProcessLookupError):
                    continue


def wrk(url, concurrency, seconds, script):
    """One wrk run: (req/s, p50 ms, p99 ms, non-2xx responses)."""
    out = run("wrk", "-t1", f"-c{concurrency}", f"-d{seconds}s", "--latency", "-s", script,
              url, capture_output=True, text=True).stdout
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))

    def percentile(p):
        value, unit = re.search(rf"^\s+{p}%\s+([\d.]+)(us|ms|s)", out, re.M).groups()
        return float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit]

    errors = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    return rate, percentile(50), percentile(99), int(errors.group(1)) if errors else 0


def drive(server, concurrency, seconds, script):
    """One wrk run against `server`, with the CPU its processes used meanwhile."""
    cpu, started = server.cpu_seconds(), time.time()
    rate, p50, p99, errors = wrk(server.url, concurrency, seconds, script)
    cores = (server.cpu_seconds() - cpu) / (time.time() - started)
    row = dict(server=server.name, c=concurrency, rate=rate, p50=p50, p99=p99, errors=errors,
               cores=cores, rss=server.peak_rss_mb())
    print(f"  {server.name:12} c={concurrency:<3} {rate:>9,.0f} req/s  p50 {p50:.3f} ms  "
          f"p99 {p99:.3f} ms  cpu {cores:.2f}  rss {row['rss']:.0f} MB"
          + (f"  NON-2XX {errors}" if errors else ""), flush=True)
    return row


def measure(group, started, seconds, script, rounds):
    """Drive the `started` servers of `group` in turn, `rounds` times at each concurrency."""
    for server in started:
        server.wait_ready()
        wrk(server.url, 8, 2, script)  # warm-up
    return [dict(drive(server, c, seconds, script), group=group, round=r)
            for c in CONCURRENCY for r in range(rounds) for server in started]


def servers(python, work, baseline):
    """(name, factory) for every server, in the order they run."""
    weir = ROOT / "target" / "release" / "weir"
    iris = ROOT / "examples" / "iris" / "pipeline.toml"
    # Variants of the example, next to it for its relative paths; removed when the run ends.
    reused = ROOT / "examples" / "iris" / ".bench-reused.toml"
    reused.write_text(re.sub(r'^(component = .*)$', r'\1\nreuse_instances = true',
                             iris.read_text().replace('name = "iris"', 'name = "iris-reused"'),
                             flags=re.M))
    batched = ROOT / "examples" / "iris" / ".bench-batched.toml"
    batched.write_text(iris.read_text().replace('name = "iris"', 'name = "iris-batched"')
                       + "\n[batching]\nmax_batch_size = 64\n")
    model = work / "iris.joblib"
    mlserver_dir = work / "mlserver"

    def python_peer_files():
        """The scikit-learn model and MLServer's settings, made once, when a peer needs them."""
        if model.exists():
            return
        run(python, ROOT / "bench" / "peers" / "iris_model.py", model)
        (mlserver_dir / "iris").mkdir(parents=True)
        shutil.copy(model, mlserver_dir / "iris" / "model.joblib")
        (mlserver_dir / "settings.json").write_text(json.dumps({
            "debug": False, "parallel_workers": 0, "host": "127.0.0.1", "http_port": PORT + 10,
            "grpc_port": PORT + 11, "metrics_port": PORT + 12}))
        (mlserver_dir / "iris" / "model-settings.json").write_text(json.dumps({
            "name": "iris", "implementation": "mlserver_sklearn.SKLearnModel",
            "parameters": {"uri": "./model.joblib"}}))

    def triton_env():
        libdir = subprocess.run(
            [python, "-c", "import sysconfig; print(sysconfig.get_config_var('LIBDIR'))"],
            capture_output=True, text=True, check=True).stdout.strip()
        return dict(os.environ,
                    LD_LIBRARY_PATH=f"{libdir}:{os.environ.get('LD_LIBRARY_PATH', '')}")

    log = open(work / "servers.log", "ab")
    quiet = dict(os.environ, RUST_LOG="warn")
    infer = "http://127.0.0.1:{}/v2/models/{}/infer"
    return [
        ("ceiling", lambda: Server("ceiling", [ROOT / "target" / "release" / "weir-ceiling",
                                               f"127.0.0.1:{PORT}"], infer.format(PORT, "iris"),
                                   log=log)),
        ("weir", lambda: Server("weir", [weir, "serve", "--listen", f"127.0.0.1:{PORT + 1}",
                                         "--data-dir", work / "weir", iris],
                                infer.format(PORT + 1, "iris"), env=quiet, log=log)),
        ("weir-baseline", lambda: Server("weir-baseline",
                                         [baseline, "serve", "--listen", f"127.0.0.1:{PORT + 4}",
                                          "--data-dir", work / "weir-baseline", iris],
                                         infer.format(PORT + 4, "iris"), env=quiet, log=log)),
        ("weir-reused", lambda: Server("weir-reused",
                                       [weir, "serve", "--listen", f"127.0.0.1:{PORT + 2}",
                                        "--data-dir", work / "weir-reused", reused],
                                       infer.format(PORT + 2, "iris-reused"), env=quiet, log=log)),
        ("weir-batched", lambda: Server("weir-batched",
                                        [weir, "serve", "--listen", f"127.0.0.1:{PORT + 3}",
                                         "--data-dir", work / "weir-batched", batched],
                                        infer.format(PORT + 3, "iris-batched"), env=quiet,
                                        log=log)),
        ("mlserver", lambda: python_peer_files() or Server(
            "mlserver", [VENV / "bin" / "mlserver", "start", mlserver_dir],
            infer.format(PORT + 10, "iris"), log=log)),
        ("triton", lambda: python_peer_files() or Server(
            "triton", [python, ROOT / "bench" / "peers" / "pytriton_iris.py", model, PORT + 20],
            infer.format(PORT + 20, "iris"), env=triton_env(), log=log)),
    ], [reused, batched]


def summary(runs):
    """One row per server and concurrency: medians over its rounds, the peak RSS of all."""
    by_key = {}
    for run in runs:
        by_key.setdefault((run["server"], run["c"]), []).append(run)
    rows = []
    for (server, c), runs_of in by_key.items():
        row = dict(server=server, c=c, rss=max(r["rss"] for r in runs_of),
                   errors=sum(r["errors"] for r in runs_of))
        for key in ("rate", "p50", "p99", "cores"):
            row[key] = statistics.median(r[key] for r in runs_of)
        rows.append(row)
    return rows


def ratio(runs, a, b, c):
    """Throughput of server `a` over `b` at concurrency `c`: the median of the ratios within
    each round when they ran side by side, else the ratio of their medians."""
    rates = {(r["server"], r["group"], r["round"]): r["rate"] for r in runs if r["c"] == c}
    paired = [rate / rates[(b, group, rnd)] for (server, group, rnd), rate in rates.items()
              if server == a and (b, group, rnd) in rates]
    if paired:
        return statistics.median(paired)
    def of(name):
        return [rate for (server, _, _), rate in rates.items() if server == name]
    return statistics.median(of(a)) / statistics.median(of(b)) if of(a) and of(b) else None


def report(runs):
    rounds = max(r["round"] for r in runs) + 1
    print(f"\nMedians of up to {rounds} rounds:\n")
    print("| server | concurrency | req/s | p50 ms | p99 ms | CPU cores | peak RSS MB |")
    print("|---|---|---|---|---|---|---|")
    for r in summary(runs):
        errors = f" ({r['errors']} non-2xx)" if r["errors"] else ""
        print(f"| {r['server']} | {r['c']} | {r['rate']:,.0f}{errors} | {r['p50']:.3f} | "
              f"{r['p99']:.3f} | {r['cores']:.2f} | {r['rss']:.0f} |")
    print("\n| ratio (throughput) | " + " | ".join(f"c={c}" for c in CONCURRENCY) + " |")
    print("|---|" + "---|" * len(CONCURRENCY))
    pairs = [(weir, peer) for weir in ("weir", "weir-reused", "weir-batched")
             for peer in ("mlserver", "triton", "ceiling")] + [("weir", "weir-baseline")]
    for weir, peer in pairs:
        cells = [ratio(runs, weir, peer, c) for c in CONCURRENCY]
        if any(cells):
            print(f"| {weir} / {peer} | "
                  + " | ".join(f"{x:.2f}x" if x else "-" for x in cells) + " |")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=10, help="length of each wrk run")
    parser.add_argument("--rounds", type=int, default=3,
                        help="rounds for the servers run side by side (Weir and the ceiling)")
    parser.add_argument("--only", help="comma-separated servers to run (default: all)")
    parser.add_argument("--baseline", type=Path,
                        help="another weir binary to run beside this build as weir-baseline")
    args = parser.parse_args()
    # SIGTERM unwinds like Ctrl-C, so the servers started below are stopped either way.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    only = set(args.only.split(",")) if args.only else None
    python = setup(python_peers=not only or bool(only & set(PYTHON_PEERS)))
    print(f"{os.cpu_count()} cores, {time.strftime('%Y-%m-%d')}, wrk -t1, {args.seconds} s per run, "
          f"{args.rounds} rounds side by side for {', '.join(SIDE_BY_SIDE)}")
    with tempfile.TemporaryDirectory(prefix="weir-peers-") as tmp:
        work = Path(tmp)
        script = work / "post.lua"
        script.write_text('wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
                          f"wrk.body = '{REQUEST}'\n")
        chosen, variants = servers(python, work, args.baseline)
        chosen = [(name, start) for name, start in chosen
                  if (not only or name in only) and (name != "weir-baseline" or args.baseline)]
        groups = [[c for c in chosen if c[0] in SIDE_BY_SIDE]]
        groups += [[c] for c in chosen if c[0] not in SIDE_BY_SIDE]
        runs = []
        try:
            for index, group in enumerate(g for g in groups if g):
                started = []
                try:
                    for _, start in group:
                        started.append(start())
                    rounds = args.rounds if len(group) > 1 else 1
                    runs += measure(index, started, args.seconds, script, rounds)
                except Exception as e:  # one peer failing to start must not hide the others
                    names = ", ".join(name for name, _ in group)
                    print(f"  {names}: {e} (log: {work / 'servers.log'})", flush=True)
                    print((work / "servers.log").read_text(errors="replace")[-2000:])
                finally:
                    for server in started:
                        server.stop()
        finally:
            for variant in variants:
                variant.unlink(missing_ok=True)
        if runs:
            report(runs)


if __name__ == "__main__":
    main()
