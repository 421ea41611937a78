"""What the load scripts share: a release build of Weir, and `weir serve` started on loopback
until it listens."""

import os
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WEIR = ROOT / "target" / "release" / "weir"


def build():
    """Build the release binary the scripts drive."""
    subprocess.run(["cargo", "build", "--release", "-q", "-p", "weir"], cwd=ROOT, check=True)


def serve(port, data, manifest):
    """`weir serve` of `manifest` on 127.0.0.1:`port` with its store in `data`, once it
    listens; its process and admin token."""
    process = subprocess.Popen(
        [WEIR, "serve", "--listen", f"127.0.0.1:{port}", "--data-dir", data, manifest],
        env=dict(os.environ, RUST_LOG="warn"), stderr=subprocess.DEVNULL)
    token = Path(data) / "admin-token"
    deadline = time.time() + 120
    while time.time() < deadline and not token.exists():
        time.sleep(0.2)
    time.sleep(0.5)  # the listener comes up after the token is written
    return process, token.read_text().strip()
