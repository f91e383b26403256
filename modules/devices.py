"""Device and dtype selection. torch is imported on first use, not at import time."""
from __future__ import annotations

import contextlib
import sys
from typing import Any

from modules.runtime import worker_context

_device: Any = None
_dtype: Any = None
_requested: tuple[str | None, str, int | None] = (None, "autocast", None)


class NansException(Exception):
    """The model produced NaNs (usually half precision overflow)."""


def best_device_name() -> str:
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def request(device_name: str | None, precision: str, device_id: int | None = None) -> None:
    """Remember the wanted device, precision and CUDA device index; torch is only imported when they are first
    used."""
    global _requested, _device, _dtype
    _requested = (device_name, precision, device_id)
    _device = _dtype = None


def configure(device_name: str | None = None, precision: str = "autocast", device_id: int | None = None) -> None:
    """Pick the device (``None`` = best available; ``device_id``: which CUDA device, A1111's ``--device-id``) and
    the model dtype (float16 on GPUs unless precision=full)."""
    from modules.runtime import heavy_imports

    heavy_imports.ensure()
    import torch

    global _device, _dtype
    name = device_name or best_device_name()
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda was given but torch reports no CUDA device")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise RuntimeError("--device mps was given but torch reports MPS unavailable")
    if device_id is not None:
        if name != "cuda":
            raise RuntimeError(f"--device-id {device_id} selects a CUDA device, but the device is {name}")
        if not 0 <= device_id < torch.cuda.device_count():
            raise RuntimeError(f"--device-id {device_id}: torch sees {torch.cuda.device_count()} CUDA device(s), "
                               "numbered from 0 (CUDA_VISIBLE_DEVICES changes which)")
        torch.cuda.set_device(device_id)
        name = f"cuda:{device_id}"
    _device = torch.device(name)
    _dtype = torch.float16 if _device.type != "cpu" and precision != "full" else torch.float32


def _ensure() -> None:
    if _device is None:
        configure(*_requested)


def __getattr__(name: str) -> Any:
    # module attributes A1111 scripts read: devices.device, devices.dtype, devices.cpu
    if name == "device":
        worker = worker_context.current()
        if worker is not None and worker.device is not None:
            return worker.device  # with --gpus, each queue worker computes on its own GPU
        _ensure()
        return _device
    if name in ("dtype", "dtype_unet", "dtype_vae"):
        _ensure()
        return _dtype
    if name == "cpu":
        import torch

        return torch.device("cpu")
    raise AttributeError(name)


def is_out_of_memory(error: BaseException) -> bool:
    """True for host or device out-of-memory errors (torch's older ones are RuntimeErrors saying so)."""
    if isinstance(error, MemoryError):
        return True
    torch = sys.modules.get("torch")  # an out-of-memory error from torch means torch is imported
    if torch is not None and isinstance(error, getattr(torch, "OutOfMemoryError", ())):
        return True
    return isinstance(error, RuntimeError) and "out of memory" in str(error).lower()


def torch_gc() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


@contextlib.contextmanager
def autocast(disable: bool = False):
    """Kept for scripts; models already run in their own dtype, so this does nothing."""
    yield


def test_for_nans(x: Any, where: str) -> None:
    import torch

    if torch.isnan(x).any():
        raise NansException(f"A tensor with NaNs was produced in {where}.")


def worker_device(name: str) -> Any:
    """The torch device of a queue worker (``--gpus``), made this thread's current CUDA device so that streams,
    graphs and memory statistics without an explicit device are that GPU's."""
    import torch

    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available() or (device.index or 0) >= torch.cuda.device_count():
            raise RuntimeError(f"--gpus: {name} is not a CUDA device torch sees "
                               f"({torch.cuda.device_count() if torch.cuda.is_available() else 0} visible)")
        torch.cuda.set_device(device)
    return device


def gpu_worker_devices(spec: str) -> list[str]:
    """``--gpus``: ``all`` or CUDA indices like ``0,1`` -> one device name per queue worker."""
    from modules.runtime import heavy_imports

    heavy_imports.ensure()
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if spec.strip().lower() == "all":
        indices = list(range(count))
    else:
        try:
            indices = [int(part) for part in spec.split(",") if part.strip()]
        except ValueError:
            raise RuntimeError(f"--gpus {spec!r}: give CUDA device numbers separated by commas (0,1) or 'all'") from None
    if not indices:
        raise RuntimeError(f"--gpus {spec!r}: torch sees no CUDA device")
    wrong = [i for i in indices if not 0 <= i < count]
    if wrong or len(set(indices)) != len(indices):
        raise RuntimeError(f"--gpus {spec!r}: torch sees {count} CUDA device(s), numbered from 0, each listed once")
    return [f"cuda:{i}" for i in indices]
