"""Fuzz every /sdapi/v1 route from the server's OpenAPI schema for longer than the test suite does.

    python benchmarks/fuzz_api.py                          200 examples per route and mode, a random seed, 20 min
    python benchmarks/fuzz_api.py --examples 50 --seed 3   reproducible

Runs in process on the tiny random-weight model (CPU), with jobs kept small (sides up to 128 px, 3 steps, 2 images).
Prints the number of requests, the answers by status, and every request that got a 5xx or a stack trace.
Exit status 1 when there was one.
"""
from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--examples", type=int, default=200, help="examples per route and generation mode")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--minutes", type=float, default=20)
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)

    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from modules import cmd_args, initialize, devices, scripts, sd_models, shared
    from modules.loading import demo_model
    from modules.api.api import Api
    from tests.fuzzing import fuzz, small_jobs

    data_dir = tempfile.mkdtemp()
    demo_model.write_checkpoint(os.path.join(data_dir, "models", "Stable-diffusion", "tiny.safetensors"), seed=0)
    initialize.initialize(cmd_args.parse(["--data-dir", data_dir]))
    devices.configure("cpu", "full")
    sd_models.list_models()
    sd_models.reload_model_weights()
    scripts.load_scripts()
    app = FastAPI()
    Api(app)
    started = time.time()
    with TestClient(app), small_jobs():
        report = fuzz(app, args.examples, seed=seed, time_budget=args.minutes * 60, collect=True)
    print(f"seed {seed}: {report.cases} requests to {len(report.operations)} routes in {time.time() - started:.0f} s")
    print("answers by status:", dict(sorted(report.by_status.items())))
    print(f"bad answers (5xx or stack trace): {len(report.failures)}")
    for line in report.failures:
        print("  " + line)
    return 1 if report.failures else 0


if __name__ == "__main__":
    sys.exit(main())
