"""Checkpoint registry and loaded models: discovery, identity (title and hashes), loading with an LRU.

Titles are ``"<relative path> [<sha256[:10]>]"`` (the bracket once the sha256 is known). Switching models
keeps the last ``opts.sd_checkpoint_cache`` loaded models in RAM so switching back is fast.

Loaded models belong to a job-queue worker (``runtime.worker_context``): with ``--gpus`` each worker has its current
model and RAM cache on its own GPU; with one worker there is one of each, as in A1111.
"""
from __future__ import annotations

import collections
import gc
import logging
import os
import threading
from dataclasses import dataclass, field
from typing import Any, Callable

from modules import hashes, paths, script_callbacks
from modules.errors import UserInputError
from modules.families import detection
from modules.loading import model_files
from modules.loading.model_loader import Components
from modules.runtime import worker_context

CHECKPOINT_EXTENSIONS = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")
checkpoints_list: dict[str, "CheckpointInfo"] = {}
checkpoint_aliases: dict[str, "CheckpointInfo"] = {}
_slots: "dict[int, _Slot]" = {}  # queue worker index -> its models
_failures: dict[str, tuple[tuple, str]] = {}  # filename -> (size and mtime when it failed, why)
# what the UI and every job's answer say while the setting's checkpoint could not be loaded and another one is used
load_problems: list[str] = []
log = logging.getLogger("webui")


class CheckpointInfo:
    def __init__(self, filename: str, root: str | None = None):
        self.filename = os.path.abspath(filename)
        root = root or os.path.dirname(self.filename)
        relative = os.path.relpath(self.filename, root) if self.filename.startswith(os.path.abspath(root)) else os.path.basename(filename)
        self.name = relative.replace("\\", "/")
        self.name_for_extra = os.path.splitext(os.path.basename(filename))[0] if os.path.isfile(filename) else os.path.basename(filename)
        self.model_name = os.path.splitext(self.name.replace("/", "_"))[0] if os.path.isfile(filename) else self.name.replace("/", "_")
        self.is_folder = os.path.isdir(filename)
        self.hash = None if self.is_folder else hashes.legacy_model_hash(filename)
        self.sha256 = hashes.sha256_from_cache(self.filename, self._hash_key) if not self.is_folder else None
        self.shorthash = self.sha256[:10] if self.sha256 else None
        self.metadata: dict = {}
        self._family: Any = None

    @property
    def family(self) -> Any:
        """The checkpoint's model family (``families.spec.ModelFamily``), read from its header once: safetensors
        files and diffusers folders at once, pickled files only when loaded. None while unknown or unreadable."""
        if self._family is None:
            try:  # a damaged file is unknown here; loading it says what is wrong
                readable = self.is_folder or model_files.detect_format(self.filename) == model_files.SAFETENSORS
                self._family = detection.detect_family(self.filename) if readable else None
            except (UserInputError, OSError, ValueError, KeyError):
                self._family = detection.UNKNOWN
        return self._family if self._family is not detection.UNKNOWN else None

    @property
    def config(self) -> str | None:
        """A ``<stem>.yaml`` next to the file (A1111's per-checkpoint config; it decides v-prediction), if any."""
        path = os.path.splitext(self.filename)[0] + ".yaml"
        return path if os.path.isfile(path) else None

    @property
    def _hash_key(self) -> str:
        return "checkpoint/" + self.name

    @property
    def title(self) -> str:
        return f"{self.name} [{self.shorthash}]" if self.shorthash else self.name

    @property
    def short_title(self) -> str:
        return f"{self.name_for_extra} [{self.shorthash}]" if self.shorthash else self.name_for_extra

    @property
    def ids(self) -> list[str]:
        ids = [self.model_name, self.name, self.name_for_extra, self.title]
        if self.hash:
            ids += [self.hash, f"{self.name} [{self.hash}]"]
        if self.sha256:
            ids += [self.sha256, self.shorthash]
        return ids

    def calculate_shorthash(self) -> str | None:
        """Compute (or read from cache.json) the full sha256 of a single-file checkpoint."""
        if self.is_folder:
            return None
        if self.sha256 is None:
            old_title = self.title
            self.sha256 = hashes.sha256(self.filename, self._hash_key)
            self.shorthash = self.sha256[:10]
            _retitle(old_title, self)
        return self.shorthash


def register(info: CheckpointInfo) -> None:
    checkpoints_list[info.title] = info
    for key in info.ids:
        checkpoint_aliases[key] = info


def _retitle(old_title: str, info: CheckpointInfo) -> None:
    """Replace a checkpoint's entry under its new title (now with the hash), keeping the list order."""
    entries = [(info.title, info) if title == old_title else (title, i) for title, i in checkpoints_list.items()]
    checkpoints_list.clear()
    checkpoints_list.update(entries)
    for key in info.ids:
        checkpoint_aliases[key] = info


def _candidates(root: str):
    if not os.path.isdir(root):
        return
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        for d in list(dirnames):
            full = os.path.join(dirpath, d)
            if os.path.isfile(os.path.join(full, "model_index.json")) or os.path.isfile(os.path.join(full, "unet", "config.json")):
                dirnames.remove(d)  # a diffusers folder is one model, not a tree to scan
                yield full
        for f in sorted(filenames):
            if f.lower().endswith(CHECKPOINT_EXTENSIONS) and not f.startswith("."):
                yield os.path.join(dirpath, f)


def model_dir() -> str:
    return os.path.join(paths.models_path, "Stable-diffusion")


def list_models() -> None:
    """Rescan the checkpoint folders (models/Stable-diffusion, --ckpt-dir) and --ckpt."""
    from modules.shared import cmd_opts

    checkpoints_list.clear()
    checkpoint_aliases.clear()
    roots = [model_dir()] + ([cmd_opts.ckpt_dir] if cmd_opts.ckpt_dir else [])
    for root in roots:
        for path in sorted(_candidates(root), key=lambda p: p.lower()):
            register(CheckpointInfo(path, root))
    if cmd_opts.ckpt and os.path.exists(cmd_opts.ckpt):
        register(CheckpointInfo(cmd_opts.ckpt, os.path.dirname(os.path.abspath(cmd_opts.ckpt))))


refresh_checkpoints = list_models


def checkpoint_tiles(use_short: bool = False) -> list[str]:
    return [info.short_title if use_short else info.title for info in checkpoints_list.values()]


def get_closet_checkpoint_match(search: str) -> CheckpointInfo | None:
    """Find a checkpoint by title, name, stem or hash (name kept as A1111 spells it)."""
    if not search:
        return None
    info = checkpoint_aliases.get(search)
    if info is not None:
        return info
    found = sorted((i for i in checkpoints_list.values() if search in i.title), key=lambda i: len(i.title))
    if found:
        return found[0]
    bare = search.split(" [")[0]
    return checkpoint_aliases.get(bare)


def select_checkpoint() -> CheckpointInfo | None:
    from modules.shared import opts

    info = get_closet_checkpoint_match(opts.sd_model_checkpoint or "")
    if info is None and checkpoints_list:
        info = next(iter(checkpoints_list.values()))
    return info


@dataclass
class SDModel(Components):
    """A loaded SD model: diffusers components plus the attributes A1111 scripts read."""
    sd_checkpoint_info: CheckpointInfo | None = None
    device: Any = None
    dtype: Any = None
    loaded_vae_file: str | None = None  # a separate VAE file in use (sd_vae); None: the checkpoint's own
    loaded_vae_hash: str | None = None  # its sha256[:10], read once when it is loaded
    own_vae_state: dict | None = None  # the checkpoint's own VAE weights, kept once another VAE is loaded
    host_copies: dict = field(default_factory=dict, repr=False)  # tensor -> its page-locked RAM copy (see park)

    is_ssd = False

    # A1111's model attributes, from the family spec
    @property
    def is_sd1(self) -> bool:
        return self.family.base == "sd1"

    @property
    def is_sd2(self) -> bool:
        return self.family.base == "sd2"

    @property
    def is_sdxl(self) -> bool:
        return self.family.base == "sdxl"

    @property
    def latent_channels(self) -> int:
        return self.family.latent.channels

    @property
    def vae_scale_factor(self) -> int:
        return self.family.latent.downscale

    @property
    def sd_model_checkpoint(self) -> str:
        return self.sd_checkpoint_info.filename

    @property
    def sd_model_hash(self) -> str | None:
        return self.sd_checkpoint_info.shorthash

    def to(self, device) -> "SDModel":
        from modules import lowvram

        if lowvram.is_enabled(self) and str(device) != "cpu":  # --medvram/--lowvram: parts move when they run
            self.device = device
            lowvram.apply(self, lowvram.mode_of(self))
            return self
        if lowvram.is_enabled(self):
            lowvram.send_everything_to_cpu(self.device)
        # From page-locked RAM (park) a copy to the GPU can be asynchronous; a copy into RAM must be complete before
        # anything reads it, so that one never is.
        to_device = str(device) != "cpu"
        for name in self.family.components:
            getattr(self, name).to(device, non_blocking=to_device)
        self.device = device
        return self

    def _tensors(self) -> dict[str, Any]:
        """Every weight and buffer of the model's components by ``component.name``."""
        return {f"{name}.{key}": tensor for name in self.family.components
                for key, tensor in [*getattr(self, name).named_parameters(), *getattr(self, name).named_buffers()]}

    def _host_copy(self, slot: str, tensor: Any, pin: bool) -> Any:
        """The RAM kept for ``slot`` (allocated on first use, page-locked when ``pin``) holding a copy of ``tensor``."""
        import torch

        host = self.host_copies.get(slot)
        if host is None or host.shape != tensor.shape or host.dtype != tensor.dtype:
            host = self.host_copies[slot] = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=pin)
        host.copy_(tensor.detach(), non_blocking=pin)
        return host

    def park(self, on_device: Callable[[Any], bool] = lambda tensor: tensor.device.type != "cpu") -> "SDModel":
        """Move the weights into RAM kept for this model, page-locked when CUDA is there: switching back copies them
        to the GPU at the bus's full speed (about 55 GB/s against 6 on an H200) without pinning anything then.
        The RAM is allocated once per model and reused at every later park."""
        import torch

        from modules import lowvram

        if lowvram.is_enabled(self):
            return self.to("cpu")
        self.extra.pop("unet_graphs", None)  # graphs of the weights' GPU addresses, which are given back now
        pin = torch.cuda.is_available()
        for slot, tensor in self._tensors().items():
            if on_device(tensor):
                tensor.data = self._host_copy(slot, tensor, pin)
        if pin:
            torch.cuda.synchronize()  # the copies into RAM are complete before anything reads or reuses it
        self.device = torch.device("cpu")
        return self

    def hand_device_memory_to(self, other: "SDModel") -> bool:
        """Switch from this model to ``other`` (in RAM) without allocating or freeing GPU memory: each of this
        model's tensors is copied into its RAM (as by :meth:`park`), then ``other``'s into the same GPU tensor, which
        ``other`` keeps; ``other``'s page-locked RAM stays its copy for its next park. False, with nothing changed,
        unless the two have the same tensors (names, shapes, dtypes) and neither is in a memory mode."""
        import torch

        from modules import lowvram

        if lowvram.is_enabled(self) or lowvram.is_enabled(other):
            return False
        mine, theirs = self._tensors(), other._tensors()
        if [(k, t.shape, t.dtype) for k, t in mine.items()] != [(k, t.shape, t.dtype) for k, t in theirs.items()]:
            return False
        if len({t.device for t in mine.values()}) != 1 or len({t.device for t in theirs.values()}) != 1:
            return False  # a part elsewhere (a VAE on the CPU): moved the usual way
        pin = torch.cuda.is_available()
        self.extra.pop("unet_graphs", None)
        other.extra.pop("unet_graphs", None)
        for slot, tensor in mine.items():
            device_tensor, incoming = tensor.data, theirs[slot].data
            if slot in self.host_copies and self.host_copies[slot].data_ptr() == device_tensor.data_ptr():
                del self.host_copies[slot]  # the weights are in that RAM already (no GPU): it cannot be their copy
            host = self._host_copy(slot, tensor, pin)
            device_tensor.copy_(incoming, non_blocking=pin)  # after the copy out, in the same stream's order
            if not pin or incoming.is_pinned():
                other.host_copies[slot] = incoming
            theirs[slot].data = device_tensor
            tensor.data = host
        if pin:
            torch.cuda.synchronize()
        other.device, self.device = self.device, torch.device("cpu")
        return True


@dataclass
class _Slot:
    """One queue worker's models: the current one and the RAM cache (file name -> model, oldest first)."""
    current: "SDModel | None" = None
    loaded: "collections.OrderedDict[str, SDModel]" = field(default_factory=collections.OrderedDict)
    lock: Any = field(default_factory=threading.RLock)


def _here(slot: int | None = None) -> _Slot:
    """The models of worker ``slot`` (default: the worker running on this thread, else the first)."""
    index = worker_context.slot() if slot is None else slot
    found = _slots.get(index)
    if found is None:
        found = _slots.setdefault(index, _Slot())
    return found


def load_model(info: CheckpointInfo, beside: tuple = (), before_device: Callable[[SDModel], None] | None = None
               ) -> SDModel:
    """Load (or take from the RAM cache) a checkpoint and put it on the compute device. The models in ``beside``
    (the current one, while a refiner is loaded next to it) are never evicted by this load; ``before_device`` runs
    once the model is in RAM, before it goes to the device."""
    from modules import devices, lowvram
    from modules.loading import model_loader
    from modules.shared import cmd_opts, opts

    if not cmd_opts.no_hashing:
        info.calculate_shorthash()
    loaded = _here().loaded
    cached = loaded.pop(info.filename, None)
    if cached is None:
        components = model_loader.load_components(info.filename, devices.dtype)
        cached = SDModel(**vars(components), sd_checkpoint_info=info, dtype=devices.dtype)
        info._family = components.family
        if getattr(cmd_opts, "no_half_vae", False):
            import torch

            cached.vae.to(torch.float32)  # SDXL's VAE overflows in float16: skip the half-precision try
    loaded[info.filename] = cached
    if before_device is not None:
        before_device(cached)
    if not lowvram.is_enabled(cached) and lowvram.is_needed(cached):
        cached.device = devices.device
        lowvram.apply(cached)  # before anything goes to the GPU: only the parts that run will
    keep = max(1, int(opts.sd_checkpoint_cache or 1))
    for filename in list(loaded)[:-1]:  # oldest first
        if len(loaded) <= keep:
            break
        if not any(loaded[filename] is model for model in beside):
            loaded.pop(filename).to("cpu")
    return cached.to(devices.device)


def reload_model_weights(sd_model: Any = None, info: CheckpointInfo | None = None) -> SDModel:
    """Make ``info`` the current model. A checkpoint asked for by name (``info``) that fails to load is an error and
    changes nothing. Without ``info`` the ``sd_model_checkpoint`` setting is used, and when that file cannot be
    loaded the current model stays (or, with none loaded, the first checkpoint that loads, or with ``--demo`` the
    demo model): the setting then names the model in use and :data:`load_problems` says what happened."""
    slot = _here()
    with slot.lock:
        explicit = info is not None
        info = info or select_checkpoint()
        if info is None:
            raise model_files.UnsupportedModelFile(
                f"No checkpoint found. Put a .safetensors file in {model_dir()} or start with --demo.")
        if slot.current is not None and slot.current.sd_checkpoint_info.filename == info.filename:
            return slot.current
        if not explicit and _known_failure(info) is not None:
            return _fall_back(info)
        try:
            model = _load_and_activate(info)
        except UserInputError as e:
            _remember_failure(info, e)
            if explicit:
                raise
            return _fall_back(info)
        load_problems.clear()
        return model


def _load_and_activate(info: CheckpointInfo) -> SDModel:
    from modules import devices
    from modules.shared import opts

    slot = _here()
    previous = slot.current
    parked = []

    def park_previous(model: SDModel) -> None:  # before the new model takes the VRAM: one of them at a time there
        if previous is not None and previous is not model and opts.sd_checkpoints_keep_in_cpu:
            if not (_on_gpu(previous) and not _on_gpu(model) and previous.hand_device_memory_to(model)):
                previous.park()
            parked.append(previous)

    try:
        model = load_model(info, before_device=park_previous)  # raises before anything changes if the file is bad
    except BaseException:
        if parked:
            previous.to(devices.device)
        raise
    _failures.pop(info.filename, None)
    slot.current = model
    opts.set("sd_model_checkpoint", info.title)
    script_callbacks.model_loaded_callback(model)
    return model


def _on_gpu(model: SDModel) -> bool:
    return next(model.unet.parameters()).device.type != "cpu"


def _signature(path: str) -> tuple:
    try:
        stat = os.stat(path)
        return stat.st_size, stat.st_mtime_ns
    except OSError:
        return ()


def _remember_failure(info: CheckpointInfo, error: Exception) -> None:
    _failures[info.filename] = (_signature(info.filename), str(error))


def _known_failure(info: CheckpointInfo) -> str | None:
    """Why ``info`` failed to load before, while the file is unchanged (a replaced file is tried again)."""
    failure = _failures.get(info.filename)
    return failure[1] if failure and failure[0] == _signature(info.filename) else None


def _fall_back(failed: CheckpointInfo) -> SDModel:
    """The setting names a checkpoint that cannot be loaded: keep the current model, else load the first one that
    works (the demo model last, with ``--demo``), and say so; the setting then names the model in use."""
    from modules.shared import cmd_opts, opts

    reason = _known_failure(failed) or "it could not be loaded"
    current = _here().current
    if current is not None:
        replacement = current
        opts.set("sd_model_checkpoint", replacement.sd_checkpoint_info.title)
    else:
        replacement = None
        for candidate in _fallback_candidates(cmd_opts):
            if candidate.filename == failed.filename or _known_failure(candidate) is not None:
                continue
            try:
                replacement = _load_and_activate(candidate)
                break
            except UserInputError as e:
                _remember_failure(candidate, e)
        if replacement is None:
            problems = "; ".join(message for _, message in _failures.values())
            raise model_files.UnsupportedModelFile(f"No checkpoint could be loaded: {problems}")
    message = (f"Checkpoint {failed.name} could not be loaded ({reason}); "
               f"using {replacement.sd_checkpoint_info.name} instead.")
    if message not in load_problems:
        log.warning(message)
        load_problems[:] = [message]
    return replacement


def _fallback_candidates(cmd_opts) -> Any:
    yield from list(checkpoints_list.values())
    if cmd_opts.demo:
        from modules.loading.demo_model import DEMO_NAME, ensure_demo_checkpoint

        ensure_demo_checkpoint(paths.models_path)
        list_models()
        yield from [i for i in checkpoints_list.values() if DEMO_NAME in i.name]


def unload_model_weights() -> None:
    """Forget every loaded model (the RAM cache included) so their memory is freed; the next job loads
    the ``sd_model_checkpoint`` setting again."""
    from modules import devices, lowvram

    lowvram.send_everything_to_cpu()
    for slot in list(_slots.values()):
        with slot.lock:
            slot.loaded.clear()
            slot.current = None
    gc.collect()
    if devices.device.type == "cuda":
        devices.torch_gc()


def load_beside_current(title: str, in_use: tuple = ()) -> SDModel | None:
    """A second checkpoint for one job (the refiner, the hires pass's), ``title`` being any name
    ``get_closet_checkpoint_match`` resolves, loaded next to the current model without changing the setting; None
    when it is the current model (no switch, as in A1111). Neither the current model nor those ``in_use`` are
    evicted from the device by this load."""
    info = get_closet_checkpoint_match(title)
    if info is None:
        raise UserInputError(f"Could not find checkpoint with name {title}")
    slot = _here()
    with slot.lock:
        if slot.current is not None and slot.current.sd_checkpoint_info.filename == info.filename:
            return None
        return load_model(info, beside=(slot.current, *in_use))


def loaded_model_with(unet: Any) -> SDModel | None:
    """The loaded model (current, cached, a refiner) whose UNet ``unet`` is."""
    slot = _here()
    return next((model for model in [slot.current, *slot.loaded.values()] if model is not None and model.unet is unet),
                None)


def get_sd_model() -> SDModel:
    current = _here().current
    return current if current is not None else reload_model_weights()


def current_model(slot: int | None = None) -> SDModel | None:
    """The current model of worker ``slot`` (default: this thread's worker, else the first); None before one loads."""
    return _here(slot).current


def model_hash(filename: str) -> str:
    return hashes.legacy_model_hash(filename)
