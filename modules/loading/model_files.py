"""Opening model weight files. The format is decided by the file's first bytes, never by its extension;
pickles are only read through ``torch.load(weights_only=True)``."""
from __future__ import annotations

import contextlib
import json
import os
import struct
from typing import Any

from modules import devices
from modules.errors import UnsupportedModelFile, UserInputError  # noqa: F401  (UnsupportedModelFile re-exported)

SAFETENSORS = "safetensors"
TORCH_ZIP = "torch-zip"
TORCH_PICKLE = "torch-pickle"
DIFFUSERS_FOLDER = "diffusers"


MAX_SAFETENSORS_HEADER = 100_000_000  # the safetensors library's own limit
SAFETENSORS_DTYPES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "I16": 2, "U16": 2, "F16": 2,
                      "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}


def detect_format(path: str) -> str:
    """The file's format from its first bytes; an empty, truncated or unknown file is an :class:`UnsupportedModelFile`."""
    name = os.path.basename(path)
    if os.path.isdir(path):
        if os.path.isfile(os.path.join(path, "model_index.json")) or os.path.isfile(os.path.join(path, "unet", "config.json")):
            return DIFFUSERS_FOLDER
        raise UnsupportedModelFile(f"{path}: folder is not a diffusers model (no model_index.json or unet/config.json)")
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError as e:
        raise UnsupportedModelFile(f"{name}: cannot be read ({e.strerror or e})") from None
    if size == 0:
        raise UnsupportedModelFile(f"{name}: the file is empty (0 bytes); it was probably not downloaded completely")
    if len(head) >= 9 and head[8:9] == b"{":
        (header_len,) = struct.unpack("<Q", head[:8])
        if header_len > MAX_SAFETENSORS_HEADER:
            raise UnsupportedModelFile(f"{name}: damaged safetensors file, its header claims {header_len} bytes "
                                       f"(more than the {MAX_SAFETENSORS_HEADER} allowed)")
        if header_len > size - 8:
            raise UnsupportedModelFile(f"{name}: truncated safetensors file: its header claims {header_len} bytes but "
                                       f"the file has only {size}; download it again")
        return SAFETENSORS
    if head.startswith(b"PK\x03\x04"):
        return TORCH_ZIP
    if len(head) > 1 and head[0] == 0x80 and 2 <= head[1] <= 5:  # pickle protocol opcode
        return TORCH_PICKLE
    raise UnsupportedModelFile(
        f"{name}: not a safetensors, PyTorch or diffusers model (wrong magic: the file starts with {head[:8]!r})")


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
    """The JSON header of a safetensors file: key -> {dtype, shape, data_offsets} (plus ``__metadata__``), checked
    against the file: every tensor's bytes must lie inside it and match its dtype and shape."""
    name = os.path.basename(path)
    if detect_format(path) != SAFETENSORS:
        raise UnsupportedModelFile(f"{name}: not a safetensors file")
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        (header_len,) = struct.unpack("<Q", f.read(8))
        raw = f.read(header_len)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, ValueError):
        header = None
    if not isinstance(header, dict):
        raise UnsupportedModelFile(f"{name}: damaged safetensors file: its header is not a JSON object")
    data_size = size - 8 - header_len
    for key, entry in header.items():
        if key == "__metadata__":
            continue
        problem = _tensor_entry_problem(entry, data_size)
        if problem:
            raise UnsupportedModelFile(f"{name}: damaged safetensors file: tensor {key!r} {problem}")
    return header


def _tensor_entry_problem(entry: Any, data_size: int) -> str | None:
    if not isinstance(entry, dict) or entry.get("dtype") not in SAFETENSORS_DTYPES:
        return f"has an unknown dtype {entry.get('dtype') if isinstance(entry, dict) else entry!r}"
    shape, offsets = entry.get("shape"), entry.get("data_offsets")
    if not isinstance(shape, list) or not all(isinstance(n, int) and n >= 0 for n in shape):
        return f"has an invalid shape {shape!r}"
    if (not isinstance(offsets, list) or len(offsets) != 2 or not all(isinstance(n, int) for n in offsets)
            or not 0 <= offsets[0] <= offsets[1]):
        return f"has invalid data offsets {offsets!r}"
    if offsets[1] > data_size:
        return f"lies beyond the end of the file ({offsets[1]} > {data_size} data bytes): the file is truncated"
    count = 1
    for n in shape:
        count *= n
    if offsets[1] - offsets[0] != count * SAFETENSORS_DTYPES[entry["dtype"]]:
        return f"has {offsets[1] - offsets[0]} bytes for shape {shape} of {entry['dtype']}"
    return None


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

    name = os.path.basename(path)
    mmap = detect_format(path) == TORCH_ZIP  # the legacy (non-zip) format cannot be memory-mapped
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as e:
        reason = _unpickler_reason(str(e))
        if reason.startswith("Unsupported operand") or "truncated" in reason or "ran out of input" in reason.lower():
            raise UnsupportedModelFile(f"{name}: damaged PyTorch file (not a valid pickle: {reason})") from e
        raise UnsupportedModelFile(
            f"{name}: refused to load, the pickle contains objects other than tensors "
            f"({reason}); convert it to .safetensors") from e
    except Exception as e:  # noqa: BLE001 - truncated zips, bad records: torch raises many kinds
        if devices.is_out_of_memory(e):
            raise
        raise UnsupportedModelFile(f"{name}: damaged PyTorch file ({type(e).__name__}: "
                                   f"{(str(e).splitlines() or [''])[0][:300]})") from e


def _unpickler_reason(message: str) -> str:
    """The line of torch's weights-only error that says what was found (``Unsupported global: GLOBAL os.system``)."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    for i, line in enumerate(lines):
        if line.endswith("WeightsUnpickler error:") and i + 1 < len(lines):
            return lines[i + 1][:300]
        if "WeightsUnpickler error:" in line:
            return line.split("WeightsUnpickler error:", 1)[1].strip()[:300]
    return (lines or [""])[0][:300]


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

        read_safetensors_header(path)  # a damaged file is named and explained, not a SafetensorError
        try:
            return load_file(path, device="cpu")
        except Exception as e:  # noqa: BLE001 - what the header check cannot see
            if devices.is_out_of_memory(e):
                raise
            raise UnsupportedModelFile(f"{os.path.basename(path)}: damaged safetensors file ({e})") from e
    if fmt in (TORCH_ZIP, TORCH_PICKLE):
        return _torch_load(path)
    raise UnsupportedModelFile(f"{path}: not a single-file checkpoint")


@contextlib.contextmanager
def loading(path: str, kind: str):
    """Report any failure to build a model from ``path`` as an :class:`UnsupportedModelFile` naming the file (tensors
    of the wrong shape, missing keys...); running out of memory stays what it is."""
    try:
        yield
    except UserInputError:
        raise
    except Exception as e:  # noqa: BLE001 - the file is what is wrong; the message says how
        if devices.is_out_of_memory(e):
            raise
        first_line = (str(e).strip().splitlines() or [""])[0][:300]
        raise UnsupportedModelFile(f"{os.path.basename(path.rstrip('/'))}: cannot be loaded as a {kind} "
                                   f"({type(e).__name__}: {first_line})") from e
