"""The denoising loop over a diffusers UNet and scheduler.

We own this loop (rather than calling a diffusers pipeline) because A1111 semantics need hooks inside
it: per-step progress, interrupt and skip within one step, live previews, per-model-call prompt
schedules, composable AND, the A1111 CFG callbacks, and inpaint blending.

The model call itself (guidance, the A1111 CFG callbacks, the per-step extension points) is the run's
``engine.denoiser.Denoiser``. The loop reads no settings: everything arrives in its :class:`SamplingRun`.

img2img starts part-way down the schedule (diffusers' ``set_begin_index``): with ``steps`` N and
``denoise_steps`` k it noises the init latent to the level of step N-k and runs the last k steps.
"""
from __future__ import annotations

import contextlib
import dataclasses
import inspect
import logging
from dataclasses import dataclass, field
from typing import Any, Callable

from modules import script_callbacks
from modules.engine import denoiser

log = logging.getLogger("webui")
UPCAST_NOTE = ("VAE: half precision gave NaNs, so this model's VAE decodes in float32 (slower; start with "
               "--no-half-vae to skip the half-precision try)")
UPCAST_FLAG = "vae_upcast_after_nans"  # in SDModel.extra: the VAE was switched to float32 by decode()
UPCAST_INFOTEXT = ("VAE precision", "float32 (float16 gave NaNs)")


@dataclass
class RefinerSwitch:
    """A1111's refiner: from the first model call whose noise level has fallen to ``switch_at`` (the training
    timestep t <= 999 - 1000 * switch_at), or with ``by_steps`` (A1111's legacy mode) whose share of the run's
    model calls already made reaches it, the run continues on ``model`` with its own conditioning: the same
    scheduler, latents and noise, nothing re-noised. ``switched_at`` records the model call where it happened."""
    switch_at: float
    model: Any
    cond: Any
    uncond: Any
    empty_cond: Any = None
    by_steps: bool = False
    switched_at: int | None = None

    def due(self, timestep, call: int, total_calls: int) -> bool:
        if self.switched_at is not None:
            return False
        done = call / total_calls if self.by_steps else (999 - round(float(timestep))) / 1000
        return done >= self.switch_at


@dataclass
class SamplingRun:
    model: Any
    scheduler: Any
    cond: Any  # engine.conditioning.MulticondLearnedConditioning
    uncond: Any  # list[list[engine.conditioning.ScheduledPromptConditioning]]
    cfg_scale: float
    steps: int
    empty_cond: Any = None  # (77, D) encoding of "" (a dict for some families), pads cond and uncond to one length
    schedule_steps: int | None = None  # model calls prompt schedules count (A1111 total_steps)
    generators: list | None = None
    eta: float | None = None
    should_stop: Callable[[], bool] = lambda: False
    on_step: Callable[[int, int, Any], None] | None = None  # (step, total, latents)
    init_latent: Any = None  # img2img: the encoded input; None starts from pure noise
    denoise_steps: int | None = None  # img2img: how many of the last ``steps`` steps to run
    mask: Any = None  # inpainting: 1 keeps init_latent, blended in after every step (latent size)
    nmask: Any = None  # 1 - mask
    image_conditioning: Any = None  # extra UNet input channels (9-channel inpainting models)
    # inpainting: (current, nmask, known, mask, blended, timestep, is_final) -> the latents to continue from
    mask_blend: Callable[..., Any] | None = None
    extra_noise: float = 0.0  # img2img/hires: the starting noise added once more, times this (A1111 "Extra noise")
    step_options: dict = field(default_factory=dict)  # more scheduler.step arguments (Euler's s_churn ...)
    hooks: denoiser.DenoiserHooks = field(default_factory=denoiser.DenoiserHooks)  # per-step extension points
    refiner: RefinerSwitch | None = None
    sgm_noise: bool = False  # txt2img: noise x sqrt(1 + sigma_max^2) instead of sigma_max (A1111 sgm_noise_multiplier)


def _step_kwargs(scheduler, run: SamplingRun) -> dict:
    params = inspect.signature(scheduler.step).parameters
    kwargs: dict = {}
    if "generator" in params and run.generators is not None:
        kwargs["generator"] = run.generators if len(run.generators) > 1 else run.generators[0]
    if "eta" in params and run.eta is not None:
        kwargs["eta"] = run.eta
    kwargs.update({key: value for key, value in run.step_options.items() if key in params})
    return kwargs


def known_latents(scheduler, init_latent, noise, timesteps) -> list:
    """Inpainting: the unmasked area's latents after each model call: the init latent noised to the next call's
    level, clean after the last. Computed before the loop with the scheduler's own ``add_noise`` at the step index
    each call leaves behind (sigma schedulers read it), because inside the loop every ``add_noise`` copies the
    sigmas to the device, a host sync per step."""
    begin = getattr(scheduler, "begin_index", None)
    track = hasattr(scheduler, "_step_index") and begin is not None
    saved = scheduler._step_index if track else None
    path = []
    try:
        for i in range(len(timesteps)):
            if i + 1 == len(timesteps):
                path.append(init_latent)
                continue
            if track:
                scheduler._step_index = begin + i + 1  # where scheduler.step() of call i leaves it
            path.append(scheduler.add_noise(init_latent, noise, timesteps[i + 1:i + 2]))
    finally:
        if track:
            scheduler._step_index = saved
    return path


def sample(run: SamplingRun, noise) -> tuple[Any, bool]:
    """Denoise from ``noise`` (B, 4, h, w), or from ``run.init_latent`` noised to the starting step. Returns
    (latents, completed); an interrupt returns the partially denoised latents with completed=False, after at
    most one more model call."""
    import torch

    scheduler = run.scheduler
    device = run.model.device
    scheduler.set_timesteps(run.steps, device=device)
    noise = noise.to(device=device, dtype=torch.float32)
    init_latent = run.init_latent.to(device=device, dtype=torch.float32) if run.init_latent is not None else None
    if init_latent is None:
        timesteps = scheduler.timesteps
        latents = noise * scheduler.init_noise_sigma
        if run.sgm_noise and getattr(scheduler, "sigmas", None) is not None:
            latents = noise * (float(scheduler.sigmas.max()) ** 2 + 1) ** 0.5
    else:
        denoise_steps = run.steps if run.denoise_steps is None else min(run.denoise_steps, run.steps)
        start = (run.steps - denoise_steps) * scheduler.order
        timesteps = scheduler.timesteps[start:]
        if hasattr(scheduler, "set_begin_index"):
            scheduler.set_begin_index(start)
        if len(timesteps) == 0:
            return init_latent, True
        latents = scheduler.add_noise(init_latent, noise, timesteps[:1])
        if run.extra_noise > 0:
            params = script_callbacks.ExtraNoiseParams(noise, init_latent, latents)
            script_callbacks.extra_noise_callback(params)
            latents = latents + params.noise * run.extra_noise
    mask, nmask = (m.to(device=device, dtype=torch.float32) if m is not None else None for m in (run.mask, run.nmask))
    step_kwargs = _step_kwargs(scheduler, run)
    known_path = known_latents(scheduler, init_latent, noise, timesteps) if mask is not None else None
    denoise = denoiser.Denoiser(run)
    total = len(timesteps)
    with torch.inference_mode():
        for i, t in enumerate(timesteps):
            if run.should_stop():
                return latents, False
            if run.refiner is not None and run.refiner.due(t, i, total):
                refiner = run.refiner
                refiner.switched_at = i
                denoise = denoiser.Denoiser(dataclasses.replace(run, model=refiner.model, cond=refiner.cond,
                                                                uncond=refiner.uncond, empty_cond=refiner.empty_cond))
            model_input = scheduler.scale_model_input(latents, t)
            prediction = denoise(model_input, t, i)
            latents = scheduler.step(prediction, t, latents, return_dict=False, **step_kwargs)[0]
            if mask is not None:
                # keep the unmasked area on the init latent's path: noised to the next step's level, clean at the end
                known = known_path[i]
                blended = known * mask + latents * nmask
                if run.mask_blend is not None:
                    blended = run.mask_blend(latents, nmask, known, mask, blended, t, i + 1 == total)
                latents = blended
            if run.on_step is not None:
                run.on_step(i + 1, total, latents)
    return latents, True


@contextlib.contextmanager
def vae_tiles(vae: Any, tile_size: int, downscale: int):
    """While active, the VAE encodes and decodes anything larger than ``tile_size`` pixels in overlapping tiles
    (diffusers' tiling, a quarter of each tile blended with its neighbours); 0 leaves it whole."""
    names = ("use_tiling", "tile_sample_min_size", "tile_latent_min_size", "tile_overlap_factor")
    saved = tuple(getattr(vae, name) for name in names)
    if tile_size:
        vae.use_tiling, vae.tile_sample_min_size, vae.tile_latent_min_size = True, tile_size, tile_size // downscale
        vae.tile_overlap_factor = 0.25
    try:
        yield
    finally:
        for name, value in zip(names, saved):
            setattr(vae, name, value)


def encode(model: Any, images, tile_size: int = 0):
    """Float images in 0..1, (B, 3, H, W) -> latents scaled as the model family says. Uses the mean of the VAE's
    latent distribution (A1111 samples it with the global RNG; the mean is deterministic). ``tile_size``: see
    :func:`vae_tiles`."""
    import torch

    vae, latent = model.vae, model.family.latent
    with torch.inference_mode(), vae_tiles(vae, tile_size, latent.downscale):
        pixels = (images.to(device=model.device, dtype=vae.dtype) * 2 - 1)
        latents = vae.encode(pixels, return_dict=False)[0].mode()
    return (latents.float() - latent.shift_factor) * latent.scale_factor


def decode(model: Any, latents, tile_size: int = 0):
    """Latents -> float images in 0..1, (B, 3, H, W). Retries in float32 if half precision gave NaNs, and keeps
    the VAE in float32, flagged in ``model.extra`` (the console says so; ``processing`` notes it in the comments
    and the infotext of every job the upcast VAE decodes). ``tile_size``: see :func:`vae_tiles`."""
    import torch

    vae, latent = model.vae, model.family.latent
    scaled = latents / latent.scale_factor + latent.shift_factor
    with torch.inference_mode(), vae_tiles(vae, tile_size, latent.downscale):
        scaled = scaled.to(device=model.device)  # the model's device: --lowvram brings the VAE there as it runs
        images = vae.decode(scaled.to(vae.dtype), return_dict=False)[0]
        if torch.isnan(images).any() and vae.dtype != torch.float32:  # SDXL's VAE overflows in float16
            log.warning(UPCAST_NOTE)
            vae.to(torch.float32)
            model.extra[UPCAST_FLAG] = True
            images = vae.decode(scaled.float(), return_dict=False)[0]
    return ((images.float() + 1) / 2).clamp(0, 1)
