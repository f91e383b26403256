"""The denoising loop over a diffusers UNet and scheduler.

We own this loop (rather than calling a diffusers pipeline) because A1111 semantics need hooks inside
it: per-step progress, interrupt and skip within one step, live previews, and later per-step prompt
schedules, AND, inpaint blending and CFG callbacks.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Callable


class Interrupted(Exception):
    """Sampling stopped because the user pressed Interrupt or Skip."""


@dataclass
class SamplingRun:
    model: Any
    scheduler: Any
    cond: Any  # (B, 77, D)
    uncond: Any  # (B, 77, D)
    cfg_scale: float
    steps: int
    generators: list | None = None
    eta: float | None = None
    should_stop: Callable[[], bool] = lambda: False
    on_step: Callable[[int, int, Any], None] | None = None  # (step, total, latents)


def _step_kwargs(scheduler, run: SamplingRun) -> dict:
    params = inspect.signature(scheduler.step).parameters
    kwargs: dict = {}
    if "generator" in params and run.generators is not None:
        kwargs["generator"] = run.generators if len(run.generators) > 1 else run.generators[0]
    if "eta" in params and run.eta is not None:
        kwargs["eta"] = run.eta
    return kwargs


def sample(run: SamplingRun, noise) -> tuple[Any, bool]:
    """Denoise from ``noise`` (B, 4, h, w). Returns (latents, completed); an interrupt returns the
    partially denoised latents with completed=False, after at most one more model call."""
    import torch

    model, scheduler = run.model, run.scheduler
    device, dtype = model.device, model.dtype
    scheduler.set_timesteps(run.steps, device=device)
    timesteps = scheduler.timesteps
    latents = noise.to(device=device, dtype=torch.float32) * scheduler.init_noise_sigma
    guided = run.cfg_scale != 1.0
    context = torch.cat([run.uncond, run.cond]) if guided else run.cond
    step_kwargs = _step_kwargs(scheduler, run)
    total = len(timesteps)
    with torch.inference_mode():
        for i, t in enumerate(timesteps):
            if run.should_stop():
                return latents, False
            model_input = torch.cat([latents, latents]) if guided else latents
            model_input = scheduler.scale_model_input(model_input, t).to(dtype)
            prediction = model.unet(model_input, t, encoder_hidden_states=context, return_dict=False)[0].float()
            if guided:
                uncond, cond = prediction.chunk(2)
                prediction = uncond + run.cfg_scale * (cond - uncond)
            latents = scheduler.step(prediction, t, latents, return_dict=False, **step_kwargs)[0]
            if run.on_step is not None:
                run.on_step(i + 1, total, latents)
    return latents, True


def decode(model: Any, latents):
    """Latents -> float images in 0..1, (B, 3, H, W). Retries in float32 if half precision gave NaNs."""
    import torch

    vae = model.vae
    scaled = latents / vae.config.scaling_factor
    with torch.inference_mode():
        images = vae.decode(scaled.to(vae.dtype), return_dict=False)[0]
        if torch.isnan(images).any() and vae.dtype != torch.float32:
            vae.to(torch.float32)
            images = vae.decode(scaled.float(), return_dict=False)[0]
    return ((images.float() + 1) / 2).clamp(0, 1)
