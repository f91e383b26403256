"""A1111's ``--medvram`` / ``--lowvram`` (and ``--medvram-sdxl``): keep the model's weights in RAM and move one part
at a time to the GPU, just before it runs.

- medvram: the parts are the text encoders, the UNet and the VAE (about a third of the VRAM a model needs).
- lowvram: the text encoders and the VAE as in medvram, and the UNet block by block (each down block, the middle
  block, each up block); its small input and output layers stay on the GPU. While a block computes, the next one is
  copied to the GPU on a side CUDA stream (so two blocks are there at a time), from page-locked RAM.

Forward pre-hooks move the parts, as in A1111, so every caller (the sampling loop, scripts calling the UNet) works
unchanged; the model's ``device`` stays the compute device, where inputs are made. CUDA graphs need weights at fixed
addresses, so the UNet fast path is off in these modes. The public names (``setup_for_low_vram``, ``is_enabled``,
``send_everything_to_cpu``, ``is_needed``, ``apply``) are A1111's.
"""
from __future__ import annotations

import logging
import threading
import weakref
from typing import Any

log = logging.getLogger("webui")

MODES = ("normal", "medvram", "lowvram")
FLAG_KEY = "memory_mode"  # in SDModel.extra: the mode the model was set up for


class _Placement:
    """The part that is on a GPU now (A1111's ``module_in_gpu``), and in lowvram mode the next UNet block on its way."""

    def __init__(self) -> None:
        self.in_gpu: Any = None
        self.prefetched: Any = None
        self.ready: Any = None  # the CUDA event the prefetch's copy records (None off CUDA: it is there already)
        self.lock = threading.Lock()


_placements: dict[str, _Placement] = {}  # by device: with --gpus each GPU holds one part of its worker's model
_host_buffers: "weakref.WeakKeyDictionary[Any, dict]" = weakref.WeakKeyDictionary()  # module -> its page-locked RAM
_copy_streams: dict[str, Any] = {}  # by device: the side stream prefetches copy on


def placement(device: Any) -> _Placement:
    return _placements.setdefault(str(device), _Placement())


def _move(module: Any, device: Any) -> None:
    """Move ``module`` to ``device``; to RAM, with CUDA there, into page-locked buffers kept for the module (allocated
    once), so that its next copy to the GPU can run beside computation."""
    import torch

    if str(device) != "cpu" or not torch.cuda.is_available():
        module.to(device, non_blocking=str(device) != "cpu")
        return
    buffers = _host_buffers.setdefault(module, {})
    for key, tensor in [*module.named_parameters(), *module.named_buffers()]:
        host = buffers.get(key)
        if host is None or host.shape != tensor.shape or host.dtype != tensor.dtype:
            host = buffers[key] = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
        if tensor.data_ptr() != host.data_ptr():
            host.copy_(tensor.detach())  # blocking: the GPU memory is given back right after
            tensor.data = host


def _prefetch(unit: Any, device: Any) -> Any:
    """Start copying ``unit`` to ``device``; returns the CUDA event to wait for (None: the copy is done)."""
    import torch

    if torch.device(device).type != "cuda":
        _move(unit, device)
        return None
    stream = _copy_streams.get(str(device))
    if stream is None:
        stream = _copy_streams[str(device)] = torch.cuda.Stream(device)
    with torch.cuda.stream(stream):
        _move(unit, device)
        ready = torch.cuda.Event()
        ready.record(stream)
    return ready


def _wait(ready: Any, device: Any) -> None:
    if ready is not None:
        import torch

        torch.cuda.current_stream(device).wait_event(ready)


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
    blocks = [unit for unit, _ in units if mode == "lowvram" and _is_unet_block(sd_model.unet, unit)]
    following = {id(block): after for block, after in zip(blocks, blocks[1:] + blocks[:1])}  # the last: next step's first
    handles = []
    for unit, callers in units:
        _move(unit, torch.device("cpu"))
        for caller in callers:
            handles.append(caller.register_forward_pre_hook(
                lambda module, args, unit=unit, after=following.get(id(unit)): _bring(unit, device, after)))
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


def _is_unet_block(unet: Any, unit: Any) -> bool:
    return unit is unet.mid_block or any(unit is block for block in [*unet.down_blocks, *unet.up_blocks])


def _bring(unit: Any, device: Any, following: Any = None) -> None:
    """Make ``unit`` the part on ``device`` before it runs; with ``following`` (lowvram's next UNet block) start
    copying that one too, on a side stream, so it is there when its turn comes."""
    where = placement(device)
    with where.lock:
        if where.in_gpu is not unit:
            if where.in_gpu is not None:
                _move(where.in_gpu, "cpu")
            if where.prefetched is unit:
                _wait(where.ready, device)
                where.prefetched = where.ready = None
            else:
                _drop_prefetched(where)
                _move(unit, device)
            where.in_gpu = unit
        if following is not None and following is not unit and where.prefetched is not following:
            _drop_prefetched(where)
            where.ready = _prefetch(following, device)
            where.prefetched = following


def _drop_prefetched(where: _Placement) -> None:
    if where.prefetched is not None:
        if where.ready is not None:
            where.ready.synchronize()  # its copy is complete before that GPU memory is given back
        _move(where.prefetched, "cpu")
    where.prefetched = where.ready = None


def send_everything_to_cpu(device: Any = None) -> None:
    """Move the parts on ``device`` (default: on every GPU) back to RAM."""
    for where in list(_placements.values()) if device is None else [placement(device)]:
        with where.lock:
            if where.in_gpu is not None:
                _move(where.in_gpu, "cpu")
            _drop_prefetched(where)
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
