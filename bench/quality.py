#!/usr/bin/env python3
"""What `[quality]` costs a server, and what its records take: in one run,

  1. throughput of the iris example with `[quality]` (every request recorded) and without it,
     `wrk -t1 -c8`, in turns of --seconds for --rounds rounds, each request with a unique id;
  2. the prediction records those requests left: rows in quality.db and its bytes on disk (with
     the write-ahead log), scaled to a million records, and the server's resident memory;
  3. bulk feedback: `weir feedback` with the truth for every recorded id (a CSV), timed: rows
     joined per second.

Traffic goes to 127.0.0.1 only; the servers are stopped when the script ends.

Usage: python3 bench/quality.py [--seconds 10] [--rounds 3]
Needs: cargo, wrk.
"""

import argparse
import os
import re
import sqlite3
import subprocess
import tempfile
import time
from pathlib import Path

from serving import ROOT, WEIR
import serving

PORTS = {"with_quality": 18701, "without_quality": 18702}

# Each request carries a unique id: "<round>-<n>".
LUA = """
local n = 0
local round = "0"
init = function(args)
  round = args[1]
end
request = function()
  n = n + 1
  local body = '{"id":"' .. round .. '-' .. n .. '","inputs":[{"name":"features","shape":[1,4],' ..
    '"datatype":"FP32","data":[5.1,3.5,1.4,0.2]}]}'
  return wrk.format("POST", "/v2/models/iris/infer", nil, body)
end
"""


def serve(name, work):
    """`weir serve` of the iris example, with or without its [quality] section."""
    manifest = (ROOT / "examples/iris/pipeline.toml").read_text()
    if name == "without_quality":
        manifest = manifest[: manifest.index("\n# Live quality")] + "\n"
    data = work / name
    data.mkdir()
    for needed in ["reference.json", "logistic_regression.json"]:
        (data / needed).write_bytes((ROOT / "examples/iris" / needed).read_bytes())
    path = data / "pipeline.toml"
    path.write_text(manifest)
    process, _ = serving.serve(PORTS[name], data, path)
    return process, data


def wrk(port, seconds, script, round):
    out = subprocess.run(["wrk", "-t1", "-c8", f"-d{seconds}s", "-s", script,
                          f"http://127.0.0.1:{port}/", "--", str(round)],
                         capture_output=True, text=True).stdout
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    assert errors is None, out
    return rate


def rss_mib(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    serving.build()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        script = work / "ids.lua"
        script.write_text(LUA)
        servers = {name: serve(name, work) for name in PORTS}
        try:
            rates = {name: [] for name in PORTS}
            for round in range(args.rounds):
                for name in PORTS:
                    rates[name].append(wrk(PORTS[name], args.seconds, script, round))
            print(f"{os.cpu_count()} cores, {time.strftime('%Y-%m-%d')}, wrk -t1 -c8, "
                  f"{args.rounds} rounds of {args.seconds} s, req/s")
            for name in PORTS:
                print(f"  {name}: {', '.join(f'{r:,.0f}' for r in rates[name])}")
            ratios = [a / b for a, b in zip(rates["with_quality"], rates["without_quality"])]
            print(f"  with / without, per round: {', '.join(f'{r:.2f}' for r in ratios)}")

            process, data = servers["with_quality"]
            time.sleep(2)  # the last records flushed
            db = sqlite3.connect(data / "quality.db")
            ids = [row[0] for row in db.execute("SELECT id FROM predictions")]
            db.close()
            size = sum(f.stat().st_size for f in data.glob("quality.db*"))
            print(f"records: {len(ids):,}, quality.db with its WAL {size / 2**20:.1f} MiB: "
                  f"{size / len(ids) * 1e6 / 2**20:,.0f} MiB a million; server RSS "
                  f"{rss_mib(process.pid):.0f} MiB (without [quality]: "
                  f"{rss_mib(servers['without_quality'][0].pid):.0f} MiB)")

            truth = work / "truth.csv"
            truth.write_text("id,target\n" + "".join(f"{i},setosa\n" for i in ids))
            started = time.perf_counter()
            out = subprocess.run(
                [WEIR, "feedback", "iris", truth, "--server",
                 f"http://127.0.0.1:{PORTS['with_quality']}", "--data-dir", data],
                capture_output=True, text=True, check=True).stdout
            took = time.perf_counter() - started
            print(f"weir feedback: {len(ids):,} rows in {took:.1f} s, "
                  f"{len(ids) / took:,.0f} rows/s: {out.strip()}")
        finally:
            for process, _ in servers.values():
                process.terminate()
                process.wait(timeout=30)


if __name__ == "__main__":
    main()
