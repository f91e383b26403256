"""Cold start: seconds from `python launch.py --skip-install` to the first HTTP 200 of the page.

Usage: python benchmarks/cold_start.py [runs]. Uses a fresh data dir holding the demo checkpoint, so the
figure covers imports, checkpoint discovery, building the page and starting the server.
"""
from __future__ import annotations

import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def one_run(data_dir: str) -> float:
    port = free_port()
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "launch.py", "--skip-install", "--data-dir", data_dir, "--port", str(port)],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=dict(os.environ, HF_HUB_OFFLINE="1"))
    try:
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1) as response:
                    if response.status == 200:
                        return time.perf_counter() - started
            except OSError:
                if proc.poll() is not None:
                    raise RuntimeError("server exited before answering")
                time.sleep(0.05)
    finally:
        proc.terminate()
        proc.wait(30)


def main() -> None:
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    sys.path.insert(0, ROOT)
    from modules.loading.demo_model import ensure_demo_checkpoint

    with tempfile.TemporaryDirectory() as data_dir:
        ensure_demo_checkpoint(os.path.join(data_dir, "models"))
        one_run(data_dir)  # warm the OS file cache and __pycache__
        times = [one_run(data_dir) for _ in range(runs)]
    print(f"cold start to first HTTP 200: median {statistics.median(times):.2f} s "
          f"(min {min(times):.2f}, max {max(times):.2f}, {runs} runs)")


if __name__ == "__main__":
    main()
