"""The cost of one ControlNet unit: txt2img seconds with one unit (canny hint, weight 1) over without, same model,
seed, size and steps.

    python benchmarks/controlnet_cost.py                 tiny SD 1 model and a tiny ControlNet, CPU, 256x256, 20 steps
    python benchmarks/controlnet_cost.py --device cuda   the same on a GPU
    python benchmarks/controlnet_cost.py --full --device cuda --size 512
                                                         SD 1.5 and ControlNet 1.1 architectures (random weights), fp16

Prints the median seconds of each and their ratio. On the tiny model the ControlNet's hint encoder (the official
16-32-96-256 channels) is large next to a 32-channel UNet, so the tiny ratio overstates the cost on real models,
where a ControlNet is about half a UNet.
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
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--full", action="store_true", help="the full-size architectures instead of the tiny ones")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()

    from PIL import Image

    from modules import cmd_args, devices, initialize, processing, sd_models
    from modules.controlnet import apply, models
    from modules.families import sd1_layout
    from modules.loading import demo_model
    from modules.shared import state
    from tests.test_controlnet import controlnet_shapes, write_controlnet

    arch = sd1_layout.SD1Arch() if args.full else sd1_layout.TINY
    data_dir = tempfile.mkdtemp()
    demo_model.write_checkpoint(os.path.join(data_dir, "models", "Stable-diffusion", "bench.safetensors"), arch)
    path = write_controlnet(os.path.join(data_dir, "models", "ControlNet", "bench_canny.safetensors"),
                            shapes=controlnet_shapes(arch.unet))
    precision = "half" if args.device != "cpu" else "full"
    initialize.initialize(cmd_args.parse(["--data-dir", data_dir, "--device", args.device, "--precision", precision,
                                          "--no-hashing"]))
    devices.configure(args.device, precision)
    sd_models.list_models()
    model = sd_models.reload_model_weights()
    net = models.load(path, model.dtype, like=model.unet.config, device=model.device)
    hint = Image.new("RGB", (args.size, args.size), "white")

    def job(with_unit: bool) -> float:
        p = processing.StableDiffusionProcessingTxt2Img(prompt="a lighthouse", seed=1, steps=args.steps,
                                                        width=args.size, height=args.size, sampler_name="Euler",
                                                        do_not_save_samples=True, do_not_save_grid=True)
        if with_unit:
            unit = apply.ControlUnit("bench", net, apply.hint_tensor(hint, args.size, args.size, model.device,
                                                                     model.dtype))
            p.denoiser_hooks.before_unet.append(apply.residuals_hook([unit]))
        state.begin("bench")
        start = time.perf_counter()
        processing.process_images(p)
        if args.device == "cuda":
            import torch

            torch.cuda.synchronize()
        return time.perf_counter() - start

    job(False), job(True)  # warm-up
    plain = statistics.median(job(False) for _ in range(args.runs))
    controlled = statistics.median(job(True) for _ in range(args.runs))
    print(f"{'SD 1.5 architecture' if args.full else 'tiny SD 1'}, {args.device}, {args.size}x{args.size}, {args.steps} steps: without ControlNet {plain:.3f} s, "
          f"with one unit {controlled:.3f} s, ratio {controlled / plain:.2f}")


if __name__ == "__main__":
    main()
