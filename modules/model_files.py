"""Opening model weight files. The format is decided by the file's first bytes, never by its extension;
pickles are only read through ``torch.load(weights_only=True)``."""
from __future__ import annotations

import json
import os
import struct
from typing import Any

from modules.errors import UserInputError

SAFETENSORS = "safetensors"
TORCH_ZIP = "torch-zip"
TORCH_PICKLE = "torch-pickle"
DIFFUSERS_FOLDER = "diffusers"


class UnsupportedModelFile(UserInputError):
    """The file is not a format we load (or not a model at all)."""


def detect_format(path: str) -> str:
    if os.path.isdir(path):
        if os.path.isfile(os.path.join(path, "model_index.json")) or os.path.isfile(os.path.join(path, "unet", "config.json")):
            return DIFFUSERS_FOLDER
        raise UnsupportedModelFile(f"{path}: folder is not a diffusers model (no model_index.json or unet/config.json)")
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(16)
    if len(head) >= 9:
        (header_len,) = struct.unpack("<Q", head[:8])
        if 2 <= header_len <= size - 8 and head[8:9] == b"{":
            return SAFETENSORS
    if head.startswith(b"PK\x03\x04"):
        return TORCH_ZIP
    if len(head) > 1 and head[0] == 0x80 and 2 <= head[1] <= 5:  # pickle protocol opcode
        return TORCH_PICKLE
    raise UnsupportedModelFile(
        f"{os.path.basename(path)}: not a safetensors, PyTorch or diffusers model (file starts with {head[:8]!r})")


def list_files(roots: list[str], extensions: tuple[str, ...]) -> tuple[tuple[str, int, float], ...]:
    """(path, size, mtime) of every file with one of ``extensions`` under ``roots`` (recursive, hidden
    entries skipped, sorted). Compare two results to see whether anything was added, changed or removed."""
    found = []
    for root in roots:
        for folder, dirs, files in os.walk(root, followlinks=True) if os.path.isdir(root) else ():
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for file in sorted(files):
                if file.lower().endswith(extensions) and not file.startswith("."):
                    path = os.path.join(folder, file)
                    try:
                        stat = os.stat(path)
                    except OSError:  # removed while we looked
                        continue
                    found.append((path, stat.st_size, stat.st_mtime))
    return tuple(found)


def read_safetensors_header(path: str) -> dict[str, Any]:
    """The JSON header of a safetensors file: key -> {dtype, shape, data_offsets} (plus ``__metadata__``)."""
    with open(path, "rb") as f:
        (header_len,) = struct.unpack("<Q", f.read(8))
        if header_len > 100_000_000:
            raise UnsupportedModelFile(f"{path}: safetensors header of {header_len} bytes is implausibly large")
        return json.loads(f.read(header_len))


def _unwrap(state: Any) -> dict:
    """The tensors of a checkpoint; Lightning keeps them under ``state_dict``, basicsr (ESRGAN, GFPGAN,
    CodeFormer) under ``params_ema`` or ``params``."""
    for key in ("state_dict", "params_ema", "params"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict):
        raise UnsupportedModelFile("checkpoint does not contain a state dict")
    return {k: v for k, v in state.items() if hasattr(v, "shape")}


def load_pickle(path: str) -> Any:
    """``torch.load(weights_only=True)`` of a ``.pt``/``.ckpt``/``.bin`` file: tensors and plain containers only."""
    import pickle

    import torch

    try:
        mmap = detect_format(path) == TORCH_ZIP  # the legacy (non-zip) format cannot be memory-mapped
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as e:
        raise UnsupportedModelFile(
            f"{os.path.basename(path)}: refused to load, the pickle contains objects other than tensors "
            f"({str(e).splitlines()[0]}); convert it to .safetensors") from e


def _torch_load(path: str) -> dict:
    return _unwrap(load_pickle(path))


def read_shapes(path: str) -> dict[str, tuple[int, ...]]:
    """Key -> shape for every tensor, without reading the tensor data where the format allows."""
    fmt = detect_format(path)
    if fmt == SAFETENSORS:
        return {k: tuple(v["shape"]) for k, v in read_safetensors_header(path).items() if k != "__metadata__"}
    if fmt in (TORCH_ZIP, TORCH_PICKLE):
        return {k: tuple(v.shape) for k, v in _torch_load(path).items()}
    raise UnsupportedModelFile(f"{path}: shapes are read from single-file checkpoints only")


def read_state_dict(path: str) -> dict:
    """All tensors of a single-file checkpoint, on the CPU."""
    fmt = detect_format(path)
    if fmt == SAFETENSORS:
        from safetensors.torch import load_file

        return load_file(path, device="cpu")
    if fmt in (TORCH_ZIP, TORCH_PICKLE):
        return _torch_load(path)
    raise UnsupportedModelFile(f"{path}: not a single-file checkpoint")
