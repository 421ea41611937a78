#!/usr/bin/env python3
"""Weir against its peers, on this machine, in one run.

Serves the iris model (StandardScaler + LogisticRegression, one row per request) with:
  - weir            the iris example as shipped: a fresh instance per stage per request;
  - weir-reused     the same pipeline with every stage opted into `reuse_instances`;
  - mlserver        MLServer + mlserver-sklearn in its fastest configuration (parallel_workers 0);
  - triton          NVIDIA Triton through PyTriton: a Python model function, dynamic batching;
  - ceiling         a bare hyper server answering a fixed V2 response (bench/ceiling): the most
                    HTTP + JSON this machine does with this load generator;
and drives each with the same V2 JSON request from `wrk` at concurrency 1, 8 and 64, one server
at a time. Prints req/s, p50, p99, CPU (cores busy) and peak RSS per server, then the ratios.

Traffic goes to 127.0.0.1 only; every run is bounded (--seconds); the processes it starts are
stopped when it ends, however it ends. The Python peers live in a venv the script creates
(target/bench-venv, reused on the next run).

Usage: python3 bench/peers.py [--seconds 10] [--only weir,ceiling]
Needs: cargo, python3 with venv, wrk (apt-get install wrk; installed if missing and root).
"""

import argparse
import json
import os
import re
import shutil
import signal
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


def run(*args, **kwargs):
    return subprocess.run([str(a) for a in args], check=True, **kwargs)


def setup():
    """Build Weir and the ceiling, install wrk and the Python peers if needed."""
    if shutil.which("wrk") is None:
        if os.geteuid() != 0:
            sys.exit("needs wrk: apt-get install wrk")
        run("apt-get", "install", "-y", "-q", "wrk")
    run("cargo", "build", "--release", "-q", "-p", "weir", "-p", "weir-ceiling", cwd=ROOT)
    python = VENV / "bin" / "python"
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


def measure(server, seconds, script):
    server.wait_ready()
    wrk(server.url, 8, 2, script)  # warm-up
    rows = []
    for c in CONCURRENCY:
        cpu, started = server.cpu_seconds(), time.time()
        rate, p50, p99, errors = wrk(server.url, c, seconds, script)
        cores = (server.cpu_seconds() - cpu) / (time.time() - started)
        rows.append(dict(server=server.name, c=c, rate=rate, p50=p50, p99=p99, errors=errors,
                         cores=cores, rss=server.peak_rss_mb()))
        print(f"  {server.name:12} c={c:<3} {rate:>9,.0f} req/s  p50 {p50:.3f} ms  "
              f"p99 {p99:.3f} ms  cpu {cores:.2f}  rss {rows[-1]['rss']:.0f} MB"
              + (f"  NON-2XX {errors}" if errors else ""), flush=True)
    return rows


def servers(python, work):
    """(name, factory) for every server, in the order they run."""
    weir = ROOT / "target" / "release" / "weir"
    iris = ROOT / "examples" / "iris" / "pipeline.toml"
    reused = ROOT / "examples" / "iris" / ".bench-reused.toml"
    reused.write_text(re.sub(r'^(component = .*)$', r'\1\nreuse_instances = true',
                             iris.read_text().replace('name = "iris"', 'name = "iris-reused"'),
                             flags=re.M))
    model = work / "iris.joblib"
    run(python, ROOT / "bench" / "peers" / "iris_model.py", model)
    mlserver_dir = work / "mlserver"
    (mlserver_dir / "iris").mkdir(parents=True)
    shutil.copy(model, mlserver_dir / "iris" / "model.joblib")
    (mlserver_dir / "settings.json").write_text(json.dumps({
        "debug": False, "parallel_workers": 0, "host": "127.0.0.1", "http_port": PORT + 10,
        "grpc_port": PORT + 11, "metrics_port": PORT + 12}))
    (mlserver_dir / "iris" / "model-settings.json").write_text(json.dumps({
        "name": "iris", "implementation": "mlserver_sklearn.SKLearnModel",
        "parameters": {"uri": "./model.joblib"}}))
    libdir = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_config_var('LIBDIR'))"],
                            capture_output=True, text=True, check=True).stdout.strip()
    triton_env = dict(os.environ, LD_LIBRARY_PATH=f"{libdir}:{os.environ.get('LD_LIBRARY_PATH', '')}")
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
        ("weir-reused", lambda: Server("weir-reused",
                                       [weir, "serve", "--listen", f"127.0.0.1:{PORT + 2}",
                                        "--data-dir", work / "weir-reused", reused],
                                       infer.format(PORT + 2, "iris-reused"), env=quiet, log=log)),
        ("mlserver", lambda: Server("mlserver", [VENV / "bin" / "mlserver", "start", mlserver_dir],
                                    infer.format(PORT + 10, "iris"), log=log)),
        ("triton", lambda: Server("triton", [python, ROOT / "bench" / "peers" / "pytriton_iris.py",
                                             model, PORT + 20],
                                  infer.format(PORT + 20, "iris"), env=triton_env, log=log)),
    ], reused


def report(rows):
    print("\n| server | concurrency | req/s | p50 ms | p99 ms | CPU cores | peak RSS MB |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        errors = f" ({r['errors']} non-2xx)" if r["errors"] else ""
        print(f"| {r['server']} | {r['c']} | {r['rate']:,.0f}{errors} | {r['p50']:.3f} | "
              f"{r['p99']:.3f} | {r['cores']:.2f} | {r['rss']:.0f} |")
    rate = {(r["server"], r["c"]): r["rate"] for r in rows}
    print("\n| ratio (throughput) | " + " | ".join(f"c={c}" for c in CONCURRENCY) + " |")
    print("|---|" + "---|" * len(CONCURRENCY))
    for weir in ("weir", "weir-reused"):
        for peer in ("mlserver", "triton", "ceiling"):
            cells = [f"{rate[(weir, c)] / rate[(peer, c)]:.2f}x"
                     if (weir, c) in rate and (peer, c) in rate else "-" for c in CONCURRENCY]
            if any(cell != "-" for cell in cells):
                print(f"| {weir} / {peer} | " + " | ".join(cells) + " |")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=10, help="length of each wrk run")
    parser.add_argument("--only", help="comma-separated servers to run (default: all)")
    args = parser.parse_args()
    # SIGTERM unwinds like Ctrl-C, so the servers started below are stopped either way.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    python = setup()
    print(f"{os.cpu_count()} cores, {time.strftime('%Y-%m-%d')}, wrk -t1, {args.seconds} s per run")
    with tempfile.TemporaryDirectory(prefix="weir-peers-") as tmp:
        work = Path(tmp)
        script = work / "post.lua"
        script.write_text('wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
                          f"wrk.body = '{REQUEST}'\n")
        chosen, reused = servers(python, work)
        only = set(args.only.split(",")) if args.only else None
        rows = []
        try:
            for name, start in chosen:
                if only and name not in only:
                    continue
                server = start()
                try:
                    rows += measure(server, args.seconds, script)
                except Exception as e:  # one peer failing to start must not hide the others
                    print(f"  {name}: {e} (log: {work / 'servers.log'})", flush=True)
                    print((work / "servers.log").read_text(errors="replace")[-2000:])
                finally:
                    server.stop()
        finally:
            reused.unlink(missing_ok=True)
        report(rows)


if __name__ == "__main__":
    main()
