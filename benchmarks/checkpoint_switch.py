"""Seconds to switch between two checkpoints that are both in the RAM cache (the second and later switches: the
first parks each model once, which allocates its page-locked RAM).

    python benchmarks/checkpoint_switch.py                       tiny SD 1 models, CPU
    python benchmarks/checkpoint_switch.py --full --device cuda  SD 1.5 architecture (random weights), fp16

Prints the median switch time (the issue's goal on an H100/H200: under 0.2 s).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--full", action="store_true", help="the SD 1.5 architecture instead of the tiny model")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--switches", type=int, default=10)
    args = parser.parse_args()

    import torch

    from modules import cmd_args, devices, initialize, sd_models
    from modules.families import sd1_layout
    from modules.loading import demo_model

    data_dir = tempfile.mkdtemp()
    folder = os.path.join(data_dir, "models", "Stable-diffusion")
    arch = sd1_layout.SD1Arch() if args.full else sd1_layout.TINY
    for name, seed in (("a", 1), ("b", 2)):
        demo_model.write_checkpoint(os.path.join(folder, f"{name}.safetensors"), arch, seed=seed)
    precision = "half" if args.device != "cpu" else "full"
    initialize.initialize(cmd_args.parse(["--data-dir", data_dir, "--device", args.device, "--precision", precision,
                                          "--no-hashing"]))
    devices.configure(args.device, precision)
    sd_models.list_models()
    infos = [sd_models.get_closet_checkpoint_match(name) for name in ("a", "b")]
    for info in infos * 2:  # load both, then park each once
        sd_models.reload_model_weights(info=info)
    times = []
    for i in range(args.switches):
        start = time.perf_counter()
        sd_models.reload_model_weights(info=infos[i % 2])
        if args.device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    label = "SD 1.5 architecture" if args.full else "tiny SD 1"
    print(f"{label}, {args.device}, {precision}: switch between two cached checkpoints, "
          f"median {statistics.median(times):.3f} s over {args.switches}")


if __name__ == "__main__":
    main()
