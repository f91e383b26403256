"""A1111's ``--medvram`` / ``--lowvram`` (and ``--medvram-sdxl``): keep the model's weights in RAM and move one part
at a time to the GPU, just before it runs.

- medvram: the parts are the text encoders, the UNet and the VAE (about a third of the VRAM a model needs).
- lowvram: the text encoders and the VAE as in medvram, and the UNet block by block (each down block, the middle
  block, each up block); its small input and output layers stay on the GPU.

Forward pre-hooks move the parts, as in A1111, so every caller (the sampling loop, scripts calling the UNet) works
unchanged; the model's ``device`` stays the compute device, where inputs are made. CUDA graphs need weights at fixed
addresses, so the UNet fast path is off in these modes. The public names (``setup_for_low_vram``, ``is_enabled``,
``send_everything_to_cpu``, ``is_needed``, ``apply``) are A1111's.
"""
from __future__ import annotations

import logging
import threading
from typing import Any

log = logging.getLogger("webui")

MODES = ("normal", "medvram", "lowvram")
FLAG_KEY = "memory_mode"  # in SDModel.extra: the mode the model was set up for


class _Placement:
    """The one part that is on a GPU now (A1111's ``module_in_gpu``)."""

    def __init__(self) -> None:
        self.in_gpu: Any = None
        self.lock = threading.Lock()


_placements: dict[str, _Placement] = {}  # by device: with --gpus each GPU holds one part of its worker's model


def placement(device: Any) -> _Placement:
    return _placements.setdefault(str(device), _Placement())


def _move(module: Any, device: Any) -> None:
    module.to(device)


WORKING_MEMORY = {"sdxl": 4 << 30}  # bytes a job needs besides the weights (activations, VAE decode), by family base
DEFAULT_WORKING_MEMORY = 2 << 30


def _bytes(module: Any) -> int:
    if module is None:
        return 0
    return sum(t.numel() * t.element_size() for t in [*module.parameters(), *module.buffers()])


def fitting_mode(sd_model: Any, available: int) -> str:
    """The lightest mode in which ``sd_model`` fits ``available`` bytes of GPU memory with room for a job: all of it
    (normal), its largest part at a time (medvram), or the UNet block by block (lowvram)."""
    working = WORKING_MEMORY.get(sd_model.family.base, DEFAULT_WORKING_MEMORY)
    parts = [getattr(sd_model, name, None) for name in sd_model.family.components]
    if sum(_bytes(part) for part in parts) + working <= available:
        return "normal"
    if max(_bytes(part) for part in parts) + working <= available:
        return "medvram"
    return "lowvram"


def available_memory(device: Any) -> int:
    """Free GPU memory for ``device``: what the driver reports free plus what torch holds cached but unused."""
    import torch

    free, _ = torch.cuda.mem_get_info(device)
    return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)


def requested_mode(sd_model: Any) -> str:
    """The mode for this model: the command line's (``--lowvram``, ``--medvram``, ``--medvram-sdxl``), or, without
    those flags, on a CUDA device, the lightest mode the model fits in (:func:`fitting_mode`; the console says when
    that is not normal)."""
    from modules import devices, shared

    opts = shared.cmd_opts
    if getattr(opts, "lowvram", False):
        return "lowvram"
    if getattr(opts, "medvram", False) or (getattr(opts, "medvram_sdxl", False) and sd_model.family.base == "sdxl"):
        return "medvram"
    device = devices.device
    if getattr(device, "type", None) != "cuda" or next(sd_model.unet.parameters()).device.type == "cuda":
        return "normal"  # not a GPU, or the model is there already (it fitted)
    available = available_memory(device)
    mode = fitting_mode(sd_model, available)
    if mode != "normal":
        log.warning("The GPU has %.1f GiB free, too little for %s with room for a job: running it in %s mode "
                    "(as with --%s)", available / 2**30, sd_model.sd_checkpoint_info.name, mode, mode)
    return mode


def mode_of(sd_model: Any) -> str:
    return sd_model.extra.get(FLAG_KEY, "normal")


def is_enabled(sd_model: Any) -> bool:
    return mode_of(sd_model) != "normal"


def is_needed(sd_model: Any) -> bool:
    return requested_mode(sd_model) != "normal"


def _units(sd_model: Any, mode: str) -> tuple[list[tuple[Any, list[Any]]], list[Any]]:
    """(unit, the modules whose forward needs it) for every part that moves, and the modules that stay on the GPU."""
    units, resident = [], []
    for name in ("text_encoder", "text_encoder_2"):
        encoder = getattr(sd_model, name, None)
        if encoder is not None:
            units.append((encoder, [encoder]))
    vae = sd_model.vae
    units.append((vae, [m for m in (vae.encoder, vae.decoder, getattr(vae, "quant_conv", None),
                                    getattr(vae, "post_quant_conv", None)) if m is not None]))
    unet = sd_model.unet
    if mode == "medvram":
        units.append((unet, [unet]))
    else:
        blocks = [*unet.down_blocks, unet.mid_block, *unet.up_blocks]
        units.extend((block, [block]) for block in blocks if block is not None)
        resident = [child for name, child in unet.named_children() if name not in ("down_blocks", "mid_block", "up_blocks")]
    return units, resident


def apply(sd_model: Any, mode: str | None = None) -> None:
    """Set ``sd_model`` up for ``mode`` (default: what the command line asks): weights to RAM, hooks that bring each
    part to the GPU when it runs. Calling it again with another mode replaces the hooks."""
    mode = mode or requested_mode(sd_model)
    remove(sd_model)
    if mode == "normal":
        return
    import torch

    device = sd_model.device
    units, resident = _units(sd_model, mode)
    handles = []
    for unit, callers in units:
        _move(unit, torch.device("cpu"))
        for caller in callers:
            handles.append(caller.register_forward_pre_hook(lambda module, args, unit=unit: _bring(unit, device)))
    for module in resident:
        _move(module, device)
    sd_model.extra[FLAG_KEY] = mode
    sd_model.extra["memory_mode_hooks"] = handles
    sd_model.extra.pop("unet_graphs", None)  # the UNet's weights move: no graph may keep their old addresses


def remove(sd_model: Any) -> None:
    """Undo :func:`apply`: no hooks; the weights stay where they are until the model is moved."""
    for handle in sd_model.extra.pop("memory_mode_hooks", []):
        handle.remove()
    sd_model.extra.pop(FLAG_KEY, None)
    send_everything_to_cpu(sd_model.device)


def _bring(unit: Any, device: Any) -> None:
    where = placement(device)
    with where.lock:
        if where.in_gpu is unit:
            return
        if where.in_gpu is not None:
            _move(where.in_gpu, "cpu")
        _move(unit, device)
        where.in_gpu = unit


def send_everything_to_cpu(device: Any = None) -> None:
    """Move the part on ``device`` (default: on every GPU) back to RAM."""
    for where in list(_placements.values()) if device is None else [placement(device)]:
        with where.lock:
            if where.in_gpu is not None:
                _move(where.in_gpu, "cpu")
            where.in_gpu = None


def setup_for_low_vram(sd_model: Any, use_medvram: bool) -> None:
    """A1111's entry point."""
    apply(sd_model, "medvram" if use_medvram else "lowvram")


def lower(sd_model: Any) -> str | None:
    """Step ``sd_model`` down one mode (normal -> medvram -> lowvram) after the GPU ran out of memory; the new mode,
    or None when it is already in lowvram."""
    current = mode_of(sd_model)
    if current == "lowvram":
        return None
    new = MODES[MODES.index(current) + 1]
    apply(sd_model, new)
    log.warning("Out of GPU memory: the model now runs in %s mode (start with --%s to begin there)", new, new)
    return new
