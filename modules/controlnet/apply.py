"""ControlNet units on the denoiser seam: a ``before_unet`` hook adds every active unit's residuals to the UNet call.

A unit is active for a model call when the run's progress (model call / calls in the run) lies between its
guidance start and end, as in the A1111 extension; its residuals are scaled by its weight, and the residuals of
several units add. Control modes, as the extension's: "Balanced" adds them as they are; "My prompt is more
important" scales the i-th of n residuals by 0.825^(n-1-i) (the shallow ones least: the original ControlNet's guess
mode scales); "ControlNet is more important" does the same and gives the negative prompt's rows none, so
classifier-free guidance pushes towards the control. A unit of weight 0 is left out entirely, so the image is bit for
bit the one without it. Calls of a UNet with another text width or added conditioning than the unit's (the SDXL
refiner) get no residuals.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable


@dataclass
class ControlUnit:
    """One unit ready for the engine: the ControlNet on the compute device and its hint image."""
    name: str
    controlnet: Any  # diffusers ControlNetModel
    hint: Any  # (1, C, H, W) float in 0..1 at the image's pixel size, on the device
    weight: float = 1.0
    guidance_start: float = 0.0
    guidance_end: float = 1.0
    control_mode: str = "Balanced"
    offload_device: Any = None  # set: the ControlNet waits in RAM and is on this device only for its call (low VRAM)

    def active(self, step: int, total_steps: int) -> bool:
        progress = step / max(total_steps, 1)
        return self.weight != 0 and self.guidance_start <= progress <= self.guidance_end


def hint_tensor(image: Any, width: int, height: int, device: Any, dtype: Any) -> Any:
    """A PIL hint image as the (1, 3, H, W) 0..1 tensor the ControlNet takes (resized to the job's size). An RGBA hint
    (the inpaint preprocessors') has its transparent pixels at -1: the inpaint ControlNet's masked input."""
    import numpy as np
    import torch
    from PIL import Image

    picture = image if image.mode in ("RGB", "RGBA") else image.convert("RGB")
    if picture.size != (width, height):
        picture = picture.resize((width, height), Image.LANCZOS)
    array = np.asarray(picture, dtype=np.float32) / 255.0
    values = array[:, :, :3].copy()
    if picture.mode == "RGBA":
        values[array[:, :, 3] < 0.5] = -1.0
    return torch.from_numpy(values).permute(2, 0, 1)[None].to(device=device, dtype=dtype)


CONTROL_MODES = ("Balanced", "My prompt is more important", "ControlNet is more important")
SOFT_INJECTION_BASE = 0.825


def _shaped(unit: ControlUnit, down: list, mid: Any, call) -> tuple[list, Any]:
    """The unit's residuals after its control mode (see the module docstring)."""
    if unit.control_mode == CONTROL_MODES[0]:
        return down, mid
    count = len(down) + 1
    down = [residual * SOFT_INJECTION_BASE ** (count - 1 - i) for i, residual in enumerate(down)]
    if unit.control_mode == CONTROL_MODES[2] and call.guided:
        keep = call.x.new_ones(call.x.shape[0])
        keep[-len(call.rows):] = 0  # the negative prompt's rows, one per image, come last
        shape = (-1, 1, 1, 1)
        down = [residual * keep.view(shape).to(residual.dtype) for residual in down]
        mid = mid * keep.view(shape).to(mid.dtype)
    return down, mid


def fits(net: Any, call) -> bool:
    """Whether the UNet call takes ``net``'s residuals: the same text width and, for SDXL, the same added
    conditioning (the SDXL refiner has other size embeddings)."""
    if call.kwargs["encoder_hidden_states"].shape[-1] != net.config.cross_attention_dim:
        return False
    if net.config.addition_embed_type != "text_time":
        return True
    added = call.kwargs.get("added_cond_kwargs") or {}
    if "text_embeds" not in added or "time_ids" not in added:
        return False
    width = added["text_embeds"].shape[-1] + added["time_ids"].shape[-1] * net.config.addition_time_embed_dim
    return width == net.config.projection_class_embeddings_input_dim


def residuals_hook(units: list[ControlUnit]) -> Callable[[Any], None]:
    """The ``before_unet`` hook for ``units`` (see the module docstring)."""
    def add_residuals(call) -> None:
        context = call.kwargs["encoder_hidden_states"]
        down, mid = None, None
        for unit in units:
            net = unit.controlnet
            if not unit.active(call.step, call.total_steps) or not fits(net, call):
                continue
            rows = call.x.shape[0]
            extra = {"added_cond_kwargs": call.kwargs["added_cond_kwargs"]} if "added_cond_kwargs" in call.kwargs else {}
            if unit.offload_device is not None:
                net.to(unit.offload_device)
            try:
                unit_down, unit_mid = net(call.x[:, :net.config.in_channels], call.timestep,
                                          encoder_hidden_states=context, controlnet_cond=unit.hint.expand(rows, -1, -1, -1),
                                          conditioning_scale=unit.weight, return_dict=False, **extra)
            finally:
                if unit.offload_device is not None:
                    net.to("cpu")
            unit_down, unit_mid = _shaped(unit, list(unit_down), unit_mid, call)
            if down is None:
                down, mid = list(unit_down), unit_mid
            else:
                down = [total + part for total, part in zip(down, unit_down)]
                mid = mid + unit_mid
        if down is not None:
            call.kwargs = {**call.kwargs, "down_block_additional_residuals": down, "mid_block_additional_residual": mid}

    return add_residuals
