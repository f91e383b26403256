"""500 jobs from 50 concurrent API clients against the real server (launch.py --demo, loopback): every answer is
checked against its request, and the server's resident memory is measured after a warm-up and at the end.

    python benchmarks/load_soak.py                 50 clients x 10 jobs, 64x64, 2 steps
    python benchmarks/load_soak.py --jobs 20       50 clients x 20 jobs

Prints RSS after the warm-up, every 100 jobs and at the end, the growth, and the wall time.
"""
from __future__ import annotations

import argparse
import base64
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--jobs", type=int, default=10, help="jobs per client")
    args = parser.parse_args()

    import psutil
    from PIL import Image

    data = tempfile.mkdtemp()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    users = {f"u{i}": f"p{i}" for i in range(args.clients)}
    accounts = ",".join(f"{u}:{p}" for u, p in users.items())
    log = open(os.path.join(data, "server.log"), "w")
    proc = subprocess.Popen([sys.executable, "launch.py", "--skip-install", "--demo", "--data-dir", data, "--port",
                             str(port), "--api-auth", accounts, "--max-queued-jobs", str(args.clients * 2)],
                            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ, HF_HUB_OFFLINE="1"))
    url = f"http://127.0.0.1:{port}"

    def call(user: str, body: dict) -> dict:
        token = base64.b64encode(f"{user}:{users[user]}".encode()).decode()
        request = urllib.request.Request(url + "/sdapi/v1/txt2img", data=json.dumps(body).encode(), method="POST",
                                         headers={"Content-Type": "application/json", "Authorization": f"Basic {token}"})
        with urllib.request.urlopen(request, timeout=600) as response:
            return json.loads(response.read())

    def body(user: str, n: int) -> dict:
        return {"prompt": f"{user} {n}", "seed": int(user[1:]) * 1000 + n, "steps": 2, "width": 64, "height": 64}

    try:
        deadline = time.time() + 120
        while True:
            try:
                call("u0", body("u0", 999))
                break
            except OSError:
                if time.time() > deadline or proc.poll() is not None:
                    raise SystemExit("the server did not start; see " + log.name)
                time.sleep(0.5)
        for n in range(20):
            call("u0", body("u0", 900 + n))
        server = psutil.Process(proc.pid)
        start_rss = server.memory_info().rss
        print(f"RSS after warm-up (21 jobs): {start_rss / 2**20:.0f} MiB", flush=True)
        done, wrong, lock = [0], [], threading.Lock()

        def client(user: str) -> None:
            for n in range(args.jobs):
                answer = call(user, body(user, n))
                info = json.loads(answer["info"])
                image = Image.open(io.BytesIO(base64.b64decode(answer["images"][0])))
                expected = body(user, n)
                ok = (info["seed"] == expected["seed"] and info["prompt"] == expected["prompt"]
                      and image.info["parameters"] == info["infotexts"][0])
                with lock:
                    done[0] += 1
                    if not ok:
                        wrong.append((user, n))
                    if done[0] % 100 == 0:
                        print(f"  {done[0]} jobs: RSS {server.memory_info().rss / 2**20:.0f} MiB", flush=True)

        started = time.time()
        threads = [threading.Thread(target=client, args=(user,)) for user in users]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        end_rss = server.memory_info().rss
        print(f"{done[0]} jobs from {args.clients} clients in {time.time() - started:.0f} s; answers not matching "
              f"their request: {len(wrong)}")
        print(f"RSS at the end: {end_rss / 2**20:.0f} MiB (growth {(end_rss - start_rss) / 2**20:+.0f} MiB)")
        return 1 if wrong or done[0] != args.clients * args.jobs else 0
    finally:
        proc.terminate()
        proc.wait(30)
        shutil.rmtree(data, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
