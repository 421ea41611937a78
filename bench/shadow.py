#!/usr/bin/env python3
"""What a 100% shadow costs the active version's clients, in one run: the iris example served
with no experiment and with every request shadowed by a candidate (the same manifest deployed
as version 2), in short paired turns, `wrk -t1` at c=1, c=8 and c=64 (saturated): requests
per second, p50 and p99 of the clients' answers, and the shadow copies run and dropped (by
reason).

Traffic goes to 127.0.0.1 only; the server is stopped when the script ends.

Usage: python3 bench/shadow.py [--seconds 3] [--rounds 6]
Needs: cargo, wrk.
"""

import argparse
import json
import os
import re
import statistics
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

from serving import ROOT, WEIR
import serving

PORT = 18801
BASE = f"http://127.0.0.1:{PORT}"
LUA = """
wrk.method = "POST"
wrk.body = '{"inputs":[{"name":"features","shape":[1,4],"datatype":"FP32","data":[5.1,3.5,1.4,0.2]}]}'
"""


def admin(token, method, path, body=None):
    request = urllib.request.Request(BASE + path, method=method,
                                     data=None if body is None else json.dumps(body).encode(),
                                     headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request) as response:
        return json.loads(response.read())


def wrk(connections, seconds, script):
    out = subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", "-s",
                          script, f"{BASE}/v2/models/iris/infer"],
                         capture_output=True, text=True).stdout
    assert "Non-2xx" not in out, out

    def ms(label):
        value, unit = re.search(rf"\s{label}\s+([\d.]+)(us|ms|s)", out).groups()
        return float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit]

    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    return rate, ms("50%"), ms("99%")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=6)
    args = parser.parse_args()
    serving.build()
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        script = Path(tmp) / "post.lua"
        script.write_text(LUA)
        manifest = ROOT / "examples/iris/pipeline.toml"
        server, token = serving.serve(PORT, data, manifest)
        try:
            subprocess.run([WEIR, "deploy", "--candidate", manifest, "--server", BASE,
                            "--data-dir", data], check=True, capture_output=True)
            # Paired turns, short, per connection count: this VM's speed drifts by a quarter
            # within a minute, and a pair sees the same period.
            print(f"{os.cpu_count()} cores, {time.strftime('%Y-%m-%d')}, wrk -t1, "
                  f"{args.rounds} pairs of {args.seconds} s runs per row, medians")
            print("| c | no experiment: req/s, p50, p99 ms | 100% shadow: req/s, p50, p99 ms | "
                  "throughput ratio per pair | copies run, dropped (busy, queue full) |")
            print("|---|---|---|---|---|")
            for connections in (1, 8, 64):
                plain, shadowed, ran, busy, full = [], [], 0, 0, 0
                for _ in range(args.rounds):
                    plain.append(wrk(connections, args.seconds, script))
                    admin(token, "PUT", "/v1/pipelines/iris/experiment",
                          {"mode": "shadow", "candidate": 2, "interval_seconds": 3600})
                    shadowed.append(wrk(connections, args.seconds, script))
                    status = admin(token, "POST", "/v1/pipelines/iris/experiment/abort")
                    ran += status["arms"]["candidate"]["requests"]
                    busy += status["shadow_dropped"]["pressure"]
                    full += status["shadow_dropped"]["queue_full"]

                def medians(runs):
                    rate, p50, p99 = (statistics.median(column) for column in zip(*runs))
                    return f"{rate:,.0f}, {p50:.3f}, {p99:.3f}"

                ratios = [s[0] / p[0] for p, s in zip(plain, shadowed)]
                print(f"| {connections} | {medians(plain)} | {medians(shadowed)} | "
                      f"{', '.join(f'{r:.2f}' for r in ratios)} (median "
                      f"{statistics.median(ratios):.2f}) | {ran:,}, {busy:,}, {full:,} |",
                      flush=True)
        finally:
            server.terminate()
            server.wait(timeout=30)


if __name__ == "__main__":
    main()
