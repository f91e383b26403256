"""The History index on 20,000 real PNGs with infotext: seconds to build it from scratch, then search latency.

    python benchmarks/history_index.py [--images 20000]

Prints the build time and the median / 95th-percentile latency of typical searches (target: a query under 50 ms).
"""
from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

WORDS = ("cat dog lighthouse castle forest portrait city night rain snow river mountain dragon robot flower ship "
         "painting photo sketch neon golden misty ancient futuristic cozy dramatic").split()
SAMPLERS = ("Euler", "Euler a", "DPM++ 2M", "DDIM", "UniPC")
QUERIES = ("cat", "lighthouse night", "neg:blurry", "seed:12345", "model:dreamy", 'sampler:"Euler a" castle',
           "size:512x768", "date:2026-11-30", "after:2026-11-01 dragon", "misty forest river")


def fill(root: str, count: int) -> None:
    from PIL import Image, PngImagePlugin

    rng = random.Random(0)
    pixel = Image.new("RGB", (64, 64), (120, 80, 40))
    start = time.mktime((2026, 10, 1, 0, 0, 0, 0, 0, -1))
    for i in range(count):
        prompt = " ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 12)))
        width, height = rng.choice(((512, 512), (512, 768), (768, 512), (1024, 1024)))
        text = (f"{prompt}\nNegative prompt: {rng.choice(('blurry', 'lowres', 'watermark'))}\nSteps: 20, Sampler: "
                f"{rng.choice(SAMPLERS)}, CFG scale: 7, Seed: {rng.randint(0, 99999)}, Size: {width}x{height}, "
                f"Model: {rng.choice(('v1-5', 'dreamy-v2', 'sdxl-base'))}, Version: v1.10.1")
        info = PngImagePlugin.PngInfo()
        info.add_text("parameters", text)
        folder = os.path.join(root, "txt2img-images", f"2026-{10 + i * 2 // count:02d}-{1 + i % 28:02d}")
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, f"{i:05d}-{i}.png")
        pixel.save(path, pnginfo=info)
        when = start + i * 60 * 24 * 60 * 2 / count
        os.utime(path, (when, when))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=20_000)
    args = parser.parse_args()

    from modules.history.index import HistoryIndex

    work = tempfile.mkdtemp()
    outputs = os.path.join(work, "outputs")
    started = time.perf_counter()
    fill(outputs, args.images)
    print(f"wrote {args.images} PNGs with infotext in {time.perf_counter() - started:.1f} s")
    history = HistoryIndex(os.path.join(work, "cache", "history.sqlite3"), outputs)
    started = time.perf_counter()
    added, _ = history.reconcile()
    print(f"built the index from scratch: {added} images in {time.perf_counter() - started:.2f} s")
    started = time.perf_counter()
    history.reconcile()
    print(f"reconcile with nothing changed: {time.perf_counter() - started:.2f} s")
    times = []
    for _ in range(5):
        for query in QUERIES:
            started = time.perf_counter()
            total, page = history.search(query, 1, 36)
            times.append((time.perf_counter() - started) * 1000)
    times.sort()
    print(f"search (first page of 36, {len(QUERIES)} kinds of query x 5): median {statistics.median(times):.1f} ms, "
          f"95th percentile {times[int(len(times) * 0.95) - 1]:.1f} ms, slowest {times[-1]:.1f} ms (target: 50 ms)")


if __name__ == "__main__":
    main()
