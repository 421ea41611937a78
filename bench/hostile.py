#!/usr/bin/env python3
"""A soak of hostile and careless clients beside normal traffic, on one `weir serve`.

Serves the iris example and, for --seconds, drives at once:
  - normal      3 keep-alive clients and 1 that opens a connection per request, each sending
                one-row iris requests back to back: their answers and latency are the result;
  - slowloris   --slowloris connections sending a request's headers one line every 2 s;
  - idle        --idle connections that connect and never send;
  - stalled     --stalled uploads that declare 64 MiB, send --stalled-mib, then stall;
  - oversized   one client declaring 1 GiB bodies and sending none.
Every hostile connection reconnects as soon as the server closes it. The server's resident
memory is sampled every second. Then, on a fresh server, a burst: --burst concurrent requests
at the default element limit (2,097,152 FP64 elements, 16 MiB in binary form each), with the
answers counted and the server's peak memory read. Run it against two builds to compare them (--weir PATH); the
server gets only flags every build knows, so both run with their defaults.

Traffic goes to 127.0.0.1 only, every task stops at the deadline, and the server is stopped
when the script ends, however it ends.

Usage: python3 bench/hostile.py [--weir target/release/weir] [--seconds 60]
           [--nofile 1024] [--slowloris 300] [--idle 700] [--stalled 32] [--stalled-mib 32]
Needs: python3 (standard library only); builds target/release/weir if --weir is not given.
"""

import argparse
import asyncio
import contextlib
import json
import struct
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HOST, PORT = "127.0.0.1", 18400
PATH = "/v2/models/iris/infer"
BODY = json.dumps({"inputs": [{"name": "features", "shape": [1, 4], "datatype": "FP32",
                               "data": [5.1, 3.5, 1.4, 0.2]}]}).encode()
HEAD_LINES = [f"POST {PATH} HTTP/1.1\r\n".encode(), b"host: bench\r\n",
              b"content-type: application/json\r\n"] + [b"x-pad: slow\r\n"] * 1000


def request(body=BODY, length=None):
    length = len(body) if length is None else length
    return f"POST {PATH} HTTP/1.1\r\nhost: bench\r\ncontent-length: {length}\r\n\r\n".encode() + body


async def read_response(reader):
    """(status, body) of one response, or None if the connection closed first."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    length = next((int(l.split(":", 1)[1]) for l in lines if l.lower().startswith("content-length")), 0)
    body = await reader.readexactly(length)
    return status, body


class Tally:
    def __init__(self):
        self.statuses, self.latencies, self.errors = {}, [], 0
        self.reconnects = {"slowloris": 0, "idle": 0, "stalled": 0, "oversized": 0}
        self.answers = {"stalled": {}, "oversized": {}}

    def count(self, kind, status):
        self.answers[kind][status] = self.answers[kind].get(status, 0) + 1


async def normal(deadline, tally, keep_alive):
    reader = writer = None
    while time.monotonic() < deadline:
        try:
            if writer is None:
                reader, writer = await asyncio.wait_for(asyncio.open_connection(HOST, PORT), 5)
            started = time.monotonic()
            writer.write(request())
            status, _ = await asyncio.wait_for(read_response(reader), 10)
            tally.latencies.append(time.monotonic() - started)
            tally.statuses[status] = tally.statuses.get(status, 0) + 1
            if not keep_alive:
                writer.close()
                writer = None
        except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, ValueError):
            tally.errors += 1
            if writer is not None:
                writer.close()
            writer = None
            await asyncio.sleep(0.05)


async def hostile(kind, deadline, tally, send):
    """Connect, run `send` until the server closes the connection, reconnect; until deadline."""
    while time.monotonic() < deadline:
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(HOST, PORT), 5)
        except (OSError, asyncio.TimeoutError):
            await asyncio.sleep(0.5)
            continue
        try:
            await send(reader, writer, deadline)
        except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, ValueError,
                IndexError):
            pass
        finally:
            writer.close()
        if time.monotonic() < deadline:
            tally.reconnects[kind] += 1
            await asyncio.sleep(0.5)


async def until_closed(reader, deadline):
    """Wait for the server to close the connection (or the deadline)."""
    while time.monotonic() < deadline:
        try:
            if not await asyncio.wait_for(reader.read(4096), max(0.01, deadline - time.monotonic())):
                return
        except asyncio.TimeoutError:
            return


async def slowloris(reader, writer, deadline):
    for line in HEAD_LINES:
        writer.write(line)
        await writer.drain()
        try:
            if not await asyncio.wait_for(reader.read(4096), 2):
                return
        except asyncio.TimeoutError:
            if time.monotonic() >= deadline:
                return


async def idle(reader, writer, deadline):
    await until_closed(reader, deadline)


def stalled(tally, mib):
    async def send(reader, writer, deadline):
        writer.write(request(b" " * (mib << 20), length=64 << 20))
        await writer.drain()
        status, _ = await asyncio.wait_for(read_response(reader), max(0.01, deadline - time.monotonic()))
        tally.count("stalled", status)
    return send


def oversized(tally):
    async def send(reader, writer, deadline):
        writer.write(request(b"", length=1 << 30))
        await writer.drain()
        status, _ = await asyncio.wait_for(read_response(reader), 5)
        tally.count("oversized", status)
        await asyncio.sleep(0.2)
    return send


async def burst(count):
    """`count` requests at once at the element limit; their statuses (or errors)."""
    rows = 2_097_152 // 4
    data = struct.pack("<4d", 5.1, 3.5, 1.4, 0.2) * rows
    header = json.dumps({"parameters": {"binary_data_output": True},
                         "inputs": [{"name": "features", "shape": [rows, 4], "datatype": "FP64",
                                     "parameters": {"binary_data_size": len(data)}}]}).encode()
    head = (f"POST {PATH} HTTP/1.1\r\nhost: bench\r\ncontent-length: {len(header) + len(data)}"
            f"\r\ninference-header-content-length: {len(header)}\r\n\r\n").encode()

    async def one():
        try:
            reader, writer = await asyncio.open_connection(HOST, PORT)
            writer.write(head + header + data)
            await writer.drain()
            status, _ = await asyncio.wait_for(read_response(reader), 120)
            writer.close()
            return status
        except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError) as e:
            return type(e).__name__

    statuses = {}
    for status in await asyncio.gather(*(one() for _ in range(count))):
        statuses[status] = statuses.get(status, 0) + 1
    return statuses


def peak_rss(pid):
    with open(f"/proc/{pid}/status") as status:
        return next(int(l.split()[1]) / 1024 for l in status if l.startswith("VmHWM"))


async def sample_rss(pid, deadline, samples):
    while time.monotonic() < deadline:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS"):
                    samples.append(int(line.split()[1]) / 1024)
        await asyncio.sleep(1)


async def soak(args, pid):
    tally, samples = Tally(), []
    deadline = time.monotonic() + args.seconds
    tasks = [normal(deadline, tally, keep_alive=i < 3) for i in range(4)]
    tasks += [hostile("slowloris", deadline, tally, slowloris) for _ in range(args.slowloris)]
    tasks += [hostile("idle", deadline, tally, idle) for _ in range(args.idle)]
    tasks += [hostile("stalled", deadline, tally, stalled(tally, args.stalled_mib))
              for _ in range(args.stalled)]
    tasks += [hostile("oversized", deadline, tally, oversized(tally))]
    tasks += [sample_rss(pid, deadline, samples)]
    await asyncio.gather(*tasks)
    return tally, samples


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weir", type=Path, help="the weir binary (default: build release)")
    parser.add_argument("--seconds", type=int, default=60)
    parser.add_argument("--nofile", type=int, default=1024,
                        help="the server's soft open-file limit (its hard one is kept)")
    parser.add_argument("--slowloris", type=int, default=300)
    parser.add_argument("--idle", type=int, default=700)
    parser.add_argument("--stalled", type=int, default=32)
    parser.add_argument("--stalled-mib", type=int, default=32)
    parser.add_argument("--burst", type=int, default=64)
    args = parser.parse_args()
    weir = args.weir
    if weir is None:
        subprocess.run(["cargo", "build", "--release", "-q", "-p", "weir"], cwd=ROOT, check=True)
        weir = ROOT / "target" / "release" / "weir"
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # the load generator's own sockets

    def server_limits():
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(args.nofile, hard), hard))

    @contextlib.contextmanager
    def serving():
        """A fresh `weir serve` of the iris example; its process."""
        with tempfile.TemporaryDirectory() as data:
            log_path = Path(data) / "serve.log"
            log = open(log_path, "w")
            server = subprocess.Popen(
                [weir, "serve", "--log-format", "json", "--listen", f"{HOST}:{PORT}",
                 "--data-dir", Path(data) / "store", ROOT / "examples/iris/pipeline.toml"],
                stdout=log, stderr=subprocess.STDOUT, preexec_fn=server_limits)
            try:
                for _ in range(600):
                    if '"addr"' in log_path.read_text():
                        break
                    time.sleep(0.1)
                else:
                    sys.exit("the server did not start")
                yield server
            finally:
                server.terminate()
                server.wait(timeout=30)

    with serving() as server:
        tally, samples = asyncio.run(soak(args, server.pid))
    with serving() as server:
        bursts = asyncio.run(burst(args.burst))
        burst_peak = peak_rss(server.pid)
    answered = sum(tally.statuses.values())
    ok = tally.statuses.get(200, 0)
    latencies = sorted(tally.latencies) or [0]
    p99 = latencies[int(0.99 * (len(latencies) - 1))]
    print(f"server: {weir}, {args.seconds} s, soft open-file limit {args.nofile}")
    print(f"hostile: {args.slowloris} slowloris, {args.idle} idle, {args.stalled} stalled uploads "
          f"of {args.stalled_mib} MiB, 1 oversized")
    print(f"normal requests: {answered} answered, {ok} with 200 ({ok / max(answered, 1):.1%}), "
          f"{tally.errors} connection errors or timeouts; p50 "
          f"{statistics.median(latencies) * 1e3:.2f} ms, p99 {p99 * 1e3:.2f} ms")
    print(f"hostile reconnects (the server closed them): {tally.reconnects}")
    print(f"answers to hostile requests: {tally.answers}")
    if samples:
        third = max(1, len(samples) // 3)
        print(f"RSS MiB: first {samples[0]:.0f}, peak {max(samples):.0f}, "
              f"median of the last third {statistics.median(samples[-third:]):.0f}, "
              f"last {samples[-1]:.0f}")
    print(f"burst of {args.burst} requests of 2,097,152 FP64 elements (16 MiB each): {bursts}, "
          f"peak RSS {burst_peak:.0f} MiB")


if __name__ == "__main__":
    main()
