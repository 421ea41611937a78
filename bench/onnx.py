#!/usr/bin/env python3
"""Weir's two ONNX backends against ONNX Runtime's own `session.run`, in one run.

On the models of the compatibility suite (tests/onnx-zoo/export.py: scikit-learn, XGBoost,
LightGBM, a CNN, an attention block) at batch 1 and 32, times one call of:
  - session.run      ONNX Runtime's Python API on the same model and rows, with as many
                     intra-op threads as Weir gives its sessions (the cores);
  - weir/onnxruntime a whole V2 request with binary tensors (tritonclient's default form)
                     over a keep-alive connection to `weir serve`, the model in the stock
                     `onnx-model` stage on ONNX Runtime;
  - weir/tract       the same, on a second server started with --no-onnxruntime ('-' where
                     tract cannot load the model).
Prints the median of --calls calls and the ratios to session.run; the three take turns in
short blocks, so the machine's drift moves them alike. The HTTP
client sends prepared bytes on a raw keep-alive socket, but it is Python: Weir's numbers
include its cost and the loopback round trip.

Traffic goes to 127.0.0.1 only; the servers are stopped when the script ends.

Usage: python3 bench/onnx.py [--calls 300] [--models cnn,random_forest]
Needs: cargo, python3 with venv (makes target/bench-onnx-venv with the suite's pinned packages).
"""

import argparse
import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / "target" / "bench-onnx-venv"
# The same pins as tests/e2e/zoo.rs.
PACKAGES = ["numpy==2.4.6", "scikit-learn==1.9.1", "skl2onnx==1.20.0", "onnx==1.23.2",
            "onnxruntime==1.32.0", "onnxmltools==1.16.0", "xgboost-cpu==3.2.0", "lightgbm==4.7.0"]
PORTS = {"onnxruntime": 18501, "tract": 18502}


def setup():
    """Build Weir, make the venv, export the suite; the venv's python and the suite's dir."""
    subprocess.run(["cargo", "build", "--release", "-q", "-p", "weir"], cwd=ROOT, check=True)
    python = VENV / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", VENV], check=True)
    subprocess.run([python, "-m", "pip", "install", "-q", *PACKAGES], check=True)
    zoo = ROOT / "target" / "bench-onnx-zoo"
    subprocess.run([python, "-W", "ignore", ROOT / "tests/onnx-zoo/export.py", zoo], check=True)
    return python, zoo


def measure(args, zoo):
    """Run in the venv (re-executed there): time every model and batch size."""
    import numpy as np
    import onnxruntime as ort

    ort.set_default_logger_severity(3)  # no warnings about the declared output shapes

    models = sorted(p.stem for p in zoo.glob("*.json"))
    if args.models:
        models = [m for m in models if m in args.models.split(",")]
    with tempfile.TemporaryDirectory() as work:
        servers = {backend: serve(backend, models, zoo, Path(work)) for backend in PORTS}
        try:
            print(f"{os.cpu_count()} cores, {time.strftime('%Y-%m-%d')}, median of {args.calls} "
                  "calls, ms\n")
            print("| model | batch | session.run | weir/onnxruntime | weir/tract | "
                  "onnxruntime ratio | tract ratio |")
            print("|---|---|---|---|---|---|---|")
            for model in models:
                fixture = json.loads((zoo / f"{model}.json").read_text())
                options = ort.SessionOptions()
                options.intra_op_num_threads = os.cpu_count()
                session = ort.InferenceSession(str(zoo / f"{model}.onnx"), options,
                                               providers=["CPUExecutionProvider"])
                for batch in (1, 32):
                    inputs = {t["name"]: rows(np, t, batch) for t in fixture["inputs"]}
                    calls = [lambda: session.run(None, inputs)]
                    calls += [requester(backend, model, inputs) for backend in PORTS]
                    cells = timed(args.calls, calls)
                    direct = cells[0]
                    ratios = [f"{c / direct:.2f}x" if c else "-" for c in cells[1:]]
                    shown = [f"{c * 1e3:.3f}" if c else "-" for c in cells]
                    print(f"| {model} | {batch} | " + " | ".join(shown + ratios) + " |",
                          flush=True)
        finally:
            for server in servers.values():
                server.terminate()
                server.wait(timeout=30)


def rows(np, tensor, batch):
    """The fixture tensor's rows, repeated or cut to `batch`."""
    dtype = {"FP32": np.float32, "FP64": np.float64, "INT64": np.int64, "BYTES": object}
    array = np.array(tensor["data"], dtype=dtype[tensor["datatype"]])
    array = array.reshape(tensor["shape"])
    return np.resize(array, (batch, *array.shape[1:]))


def serve(backend, models, zoo, work):
    """`weir serve` on `backend` with every model it can load deployed; its process."""
    flags = ["--no-onnxruntime"] if backend == "tract" else [
        "--onnxruntime-lib", next((VENV / "lib").glob("python3*/site-packages/onnxruntime/capi/"
                                                       "libonnxruntime.so.*"))]
    log = open(work / f"{backend}.log", "w")
    server = subprocess.Popen([ROOT / "target/release/weir", "serve", *flags, "--listen",
                               f"127.0.0.1:{PORTS[backend]}", "--data-dir", work / backend],
                              env=dict(os.environ, RUST_LOG="warn"), stdout=log,
                              stderr=subprocess.STDOUT)
    token_file = work / backend / "admin-token"
    deadline = time.time() + 120
    while time.time() < deadline and not token_file.exists():
        time.sleep(0.2)
    time.sleep(0.5)  # the listener comes up after the token is written
    token = token_file.read_text().strip()
    for model in models:
        deploy(backend, zoo / f"{model}.onnx", token)
    return server


def deploy(backend, onnx_file, token):
    """Push the model as an artifact and deploy the four-line manifest that serves it; a model
    the backend cannot load is refused, and the others go on."""
    model = onnx_file.stem
    connection = http.client.HTTPConnection("127.0.0.1", PORTS[backend], timeout=120)
    headers = {"Authorization": f"Bearer {token}"}
    onnx = onnx_file.read_bytes()
    connection.request("PUT", f"/v1/artifacts/{model}.model/1.0.0", onnx, headers)
    connection.getresponse().read()
    text = (f'name = "{model}"\n[model]\ncomponent = "onnx-model@0.1.0"\n'
            f'artifacts = {{ model = {{ artifact = "{model}.model@1.0.0" }} }}\n')
    connection.request("POST", "/v1/pipelines", text.encode(), headers)
    connection.getresponse().read()


def encode(inputs):
    """A V2 request with every input in binary form, and its JSON part's length."""
    header, payload = {"inputs": [], "parameters": {"binary_data_output": True}}, b""
    for name, array in inputs.items():
        if array.dtype == object:
            raw = b"".join(len(s.encode()).to_bytes(4, "little") + s.encode()
                           for s in array.ravel())
            datatype = "BYTES"
        else:
            raw = array.tobytes()
            datatype = {"float32": "FP32", "float64": "FP64", "int64": "INT64"}[str(array.dtype)]
        header["inputs"].append({"name": name, "shape": list(array.shape), "datatype": datatype,
                                 "parameters": {"binary_data_size": len(raw)}})
        payload += raw
    head = json.dumps(header).encode()
    return head + payload, len(head)


def requester(backend, model, inputs):
    """A function that makes one whole request, or None when the server does not serve the
    model. The request's bytes are made once and sent on a raw keep-alive socket, so the
    client's own cost stays small."""
    body, length = encode(inputs)
    head = (f"POST /v2/models/{model}/infer HTTP/1.1\r\nhost: bench\r\n"
            f"inference-header-content-length: {length}\r\ncontent-length: {len(body)}\r\n\r\n")
    request = head.encode() + body
    connection = socket.create_connection(("127.0.0.1", PORTS[backend]))
    connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    reader = connection.makefile("rb")

    def call():
        connection.sendall(request)
        status = int(reader.readline().split()[1])
        size = 0
        while (line := reader.readline()) not in (b"\r\n", b""):
            if line.lower().startswith(b"content-length:"):
                size = int(line.split(b":")[1])
        reader.read(size)
        return status

    return call if call() == 200 else None


def timed(calls, functions, block=25, warm=5):
    """The median time of each function (None for None). The functions take turns in blocks
    of `block` calls, the first `warm` of each block untimed, until each has `calls` timed
    calls: a machine that speeds up or slows down during the run (a shared VM does) moves them
    all alike, and each is timed warm, as under steady traffic."""
    present = [f for f in functions if f]
    times = {id(f): [] for f in present}
    while len(times[id(present[0])]) < calls:
        for function in present:
            for call in range(block):
                started = time.perf_counter()
                function()
                if call >= warm:
                    times[id(function)].append(time.perf_counter() - started)
    return [statistics.median(times[id(f)]) if f else None for f in functions]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--models", help="comma-separated models (default: all)")
    parser.add_argument("--measure", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        return measure(args, args.measure)
    python, zoo = setup()
    command = [python, __file__, "--calls", str(args.calls), "--measure", zoo]
    if args.models:
        command += ["--models", args.models]
    subprocess.run(command, check=True)


if __name__ == "__main__":
    main()
