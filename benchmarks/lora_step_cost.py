"""Cost of a sampling step with a LoRA active, relative to the same step without one.

LoRA weights are merged into the model for the job, so the ratio should be 1.0 within noise; the
one-off merge and restore time per job is printed separately.

    python benchmarks/lora_step_cost.py                        tiny model, CPU, 256x256, 20 steps
    python benchmarks/lora_step_cost.py --full --device cuda   SD 1.5 architecture (random weights), fp16
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
    parser.add_argument("--full", action="store_true")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--size", type=int, default=None)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    size = args.size or (512 if args.full else 256)

    import torch

    from modules import cmd_args, initialize, devices, processing, script_callbacks, sd_models, shared
    from modules.families import sd1_layout
    from modules.loading import demo_model
    from modules.networks import lora
    from tests.conftest import write_kohya_lora

    data_dir = tempfile.mkdtemp()
    arch = sd1_layout.SD1Arch() if args.full else sd1_layout.TINY
    demo_model.write_checkpoint(os.path.join(data_dir, "models", "Stable-diffusion", "bench.safetensors"), arch)
    precision = "half" if args.device != "cpu" else "full"
    initialize.initialize(cmd_args.parse(["--data-dir", data_dir, "--device", args.device, "--precision", precision, "--no-hashing"]))
    devices.configure(args.device, precision)
    sd_models.list_models()
    model = sd_models.reload_model_weights()
    write_kohya_lora(os.path.join(data_dir, "models", "Lora", "bench.safetensors"), model, rank=16, scale=0.01)

    def sync() -> None:
        if args.device == "cuda":
            torch.cuda.synchronize()

    stamps: list[float] = []

    def on_call(params) -> None:
        sync()
        stamps.append(time.perf_counter())

    script_callbacks.on_cfg_denoiser(on_call)

    def step_times(prompt: str) -> tuple[list[float], float]:
        stamps.clear()
        p = processing.StableDiffusionProcessingTxt2Img(prompt=prompt, seed=1, steps=args.steps, width=size, height=size,
                                                        sampler_name="Euler", do_not_save_samples=True, do_not_save_grid=True)
        shared.state.begin("bench")
        start = time.perf_counter()
        processing.process_images(p)
        sync()
        total = time.perf_counter() - start
        return [b - a for a, b in zip(stamps, stamps[1:])], total

    step_times("warm up")
    step_times("warm up <lora:bench:1>")
    plain, with_lora, plain_total, lora_total = [], [], [], []
    for _ in range(args.runs):
        steps, total = step_times("a photo of a cat")
        plain += steps
        plain_total.append(total)
        steps, total = step_times("a photo of a cat <lora:bench:1>")
        with_lora += steps
        lora_total.append(total)
    plain_step, lora_step = statistics.median(plain), statistics.median(with_lora)
    print(f"median step without LoRA: {plain_step * 1000:.2f} ms")
    print(f"median step with LoRA:    {lora_step * 1000:.2f} ms")
    print(f"step cost ratio (LoRA / none): {lora_step / plain_step:.3f}")
    print(f"job overhead of merge + restore: {statistics.median(lora_total) - statistics.median(plain_total):+.3f} s")
    print(f"layers patched: {len(lora.load_network_weights(lora.registry.find('bench').filename, model.family.lora_layout))}")


if __name__ == "__main__":
    main()
