"""Our txt2img time divided by a plain diffusers pipeline call (StableDiffusionPipeline, or StableDiffusionXLPipeline
with ``--family sdxl``) with the same components, scheduler, seed, size and steps.

    python benchmarks/txt2img_vs_diffusers.py                       tiny model, CPU, 256x256, 20 steps
    python benchmarks/txt2img_vs_diffusers.py --full --device cuda  SD 1.5 architecture (random weights), 512x512, fp16
    python benchmarks/txt2img_vs_diffusers.py --family sdxl         tiny SDXL; with --full: SDXL architecture, 1024x1024

Prints the median seconds of each and the ratio (target on CPU with the tiny model: 1.02 or less), plus it/s, once per UNet fast-path mode
(``--fast-path off,graphs,compile``; graphs and compile apply on CUDA only); the first image after the model loaded
and at a new size per mode; on CUDA also peak VRAM per mode, time and peak VRAM in --medvram and --lowvram, and
diffusers with its UNet compiled (mode "reduce-overhead") as a yardstick.
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
    parser.add_argument("--full", action="store_true", help="the full-size architecture instead of the tiny model")
    parser.add_argument("--family", choices=("sd1", "sdxl"), default="sd1")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--size", type=int, default=None)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--sampler", default="Euler")
    parser.add_argument("--fast-path", default="off,graphs,compile",
                        help="our UNet fast-path modes to time, comma-separated (graphs applies on CUDA only)")
    args = parser.parse_args()
    sdxl_family = args.family == "sdxl"
    size = args.size or ((1024 if sdxl_family else 512) if args.full else 256)

    import torch
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    from modules import cmd_args, initialize, devices, processing, sd_models, sd_samplers, shared
    from modules.families import sd1_layout, sdxl
    from modules.loading import demo_model

    data_dir = tempfile.mkdtemp()
    path = os.path.join(data_dir, "models", "Stable-diffusion", "bench.safetensors")
    if not sdxl_family:
        demo_model.write_checkpoint(path, sd1_layout.SD1Arch() if args.full else sd1_layout.TINY)
    elif args.full:
        demo_model.write_checkpoint(path, shapes=sdxl.checkpoint_shapes(*sdxl.FULL_SIZE_BASE))
    else:  # the tests' tiny SDXL geometry
        demo_model.write_checkpoint(path, shapes=sdxl.checkpoint_shapes(*sdxl.TINY_BASE))
    precision = "half" if args.device != "cpu" else "full"
    initialize.initialize(cmd_args.parse(["--data-dir", data_dir, "--device", args.device, "--precision", precision, "--no-hashing"]))
    devices.configure(args.device, precision)
    sd_models.list_models()
    model = sd_models.reload_model_weights()

    def sync():
        if args.device == "cuda":
            torch.cuda.synchronize()

    def ours(mode: str, side: int = size) -> float:
        shared.opts.set("unet_fast_path", mode)
        p = processing.StableDiffusionProcessingTxt2Img(
            prompt="a photo of a cat", negative_prompt="blurry", seed=1, steps=args.steps, width=side, height=side,
            sampler_name=args.sampler, do_not_save_samples=True, do_not_save_grid=True)
        shared.state.begin("bench")
        start = time.perf_counter()
        processing.process_images(p)
        sync()
        return time.perf_counter() - start

    scheduler = sd_samplers.create_scheduler(model.scheduler_config, args.sampler, None)
    if sdxl_family:
        pipe = StableDiffusionXLPipeline(vae=model.vae, text_encoder=model.text_encoder,
                                         text_encoder_2=model.text_encoder_2, tokenizer=model.tokenizer,
                                         tokenizer_2=model.tokenizer_2, unet=model.unet, scheduler=scheduler)
    else:
        pipe = StableDiffusionPipeline(vae=model.vae, text_encoder=model.text_encoder, tokenizer=model.tokenizer,
                                       unet=model.unet, scheduler=scheduler, safety_checker=None,
                                       feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)

    def plain() -> float:
        pipe.scheduler = sd_samplers.create_scheduler(model.scheduler_config, args.sampler, None)
        generator = torch.Generator("cpu").manual_seed(1)
        start = time.perf_counter()
        pipe("a photo of a cat", negative_prompt="blurry", num_inference_steps=args.steps, height=size, width=size,
             guidance_scale=7.0, generator=generator, output_type="pil")
        sync()
        return time.perf_counter() - start

    modes = [m for m in args.fast_path.split(",") if m == "off" or args.device == "cuda"]
    shared.opts.set("unet_compile_sizes", f"{size}x{size}")
    for mode in modes:  # warm-up (and, for graphs, the captures; for compile, the compiles start)
        print(f"first image after the model loaded, fast path {mode}: {ours(mode):.3f} s")
    graph_cache = model.extra.get("unet_graphs")
    if "compile" in modes and graph_cache is not None:
        compile_start = time.perf_counter()
        for future in list(graph_cache.compiling.values()):
            future.result()
        print(f"background compile finished {time.perf_counter() - compile_start:.1f} s after the warm-up runs")
        ours("compile")  # captures the compiled UNet
    plain()
    our_times: dict[str, list[float]] = {mode: [] for mode in modes}
    plain_times = []
    for _ in range(args.runs):  # interleaved so drifts in machine load hit every variant equally
        for mode in modes:
            our_times[mode].append(ours(mode))
        plain_times.append(plain())
    b = statistics.median(plain_times)
    label = ("SDXL" if sdxl_family else "SD 1.5") + " architecture" if args.full else f"tiny {args.family}"
    print(f"{label}, {size}x{size}, {args.steps} steps, {args.sampler}, {args.device}, {precision}")
    print(f"diffusers pipeline: {b:.3f} s ({args.steps / b:.2f} it/s)")
    for mode in modes:
        a = statistics.median(our_times[mode])
        print(f"ours, fast path {mode}: {a:.3f} s ({args.steps / a:.2f} it/s)   ratio ours/diffusers: {a / b:.3f}")
    new_side = size + 64
    for mode in modes:
        print(f"first image at a new size ({new_side}x{new_side}), fast path {mode}: {ours(mode, new_side):.3f} s")
    if args.device == "cuda":
        for mode in modes:
            torch.cuda.reset_peak_memory_stats()
            ours(mode)
            print(f"peak VRAM, fast path {mode}: {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB")
        from modules import lowvram

        for memory_mode in ("medvram", "lowvram"):
            lowvram.apply(model, memory_mode)
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            seconds = ours("off")
            print(f"--{memory_mode}: {seconds:.3f} s, peak VRAM {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB")
        lowvram.apply(model, "normal")
        model.to(devices.device)
        pipe.unet = torch.compile(model.unet, mode="reduce-overhead")  # diffusers' own fastest recipe, as a yardstick
        compile_start = time.perf_counter()
        plain()
        print(f"diffusers with torch.compile(unet, mode='reduce-overhead'): compiled in "
              f"{time.perf_counter() - compile_start:.1f} s, then {statistics.median(plain() for _ in range(3)):.3f} s")
    graphs = model.extra.get("unet_graphs")
    if graphs is not None:
        dropped = sum(1 for entry in graphs.entries.values() if entry == "disabled")
        print(f"CUDA graphs: {graphs.captures} captured, {dropped} signatures dropped to eager {sorted(graphs.warned)}; "
              f"compiled UNet vs eager: max difference {graphs.compiled_max_diff:.3g}")



if __name__ == "__main__":
    main()
