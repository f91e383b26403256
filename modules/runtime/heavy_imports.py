"""torch, diffusers and transformers are imported here, once, by one thread at a time.

diffusers and transformers load their classes lazily on first attribute access. Two threads that touch such a
library while it is still importing can each see the other's half-initialised module: one of them then fails with
``ImportError: cannot import name 'AutoencoderKL' from 'diffusers'`` or ``AttributeError: module 'diffusers' has no
attribute 'DPMSolverMultistepScheduler'`` (seen on the first generation after start, when a request arrived while
the model was loading). :func:`ensure` imports every library and resolves every lazy name the engine uses under one
lock; every place that can reach these libraries outside the job queue's thread calls it first. Importing this
module imports nothing heavy.
"""
from __future__ import annotations

import importlib
import threading
from typing import Iterable

MODULES = ("torch", "safetensors.torch", "accelerate", "diffusers", "transformers",
           "diffusers.loaders.single_file_utils")
DIFFUSERS_NAMES = ("AutoencoderKL", "UNet2DConditionModel")
TRANSFORMERS_NAMES = ("CLIPTextConfig", "CLIPTextModel", "CLIPTokenizer")

_lock = threading.RLock()
_ready = threading.Event()
_resolved: set[str] = set()


def ensure(diffusers_names: Iterable[str] = ()) -> None:
    """Import the heavy libraries if that has not happened yet, and resolve ``diffusers_names`` (scheduler classes,
    say) too; other callers wait until it is complete."""
    names = set(diffusers_names)
    if _ready.is_set() and names <= _resolved:
        return
    with _lock:
        if not _ready.is_set():
            loaded = {name: importlib.import_module(name) for name in MODULES}
            for name in DIFFUSERS_NAMES:
                getattr(loaded["diffusers"], name)
            for name in TRANSFORMERS_NAMES:
                getattr(loaded["transformers"], name)
            _ready.set()
        import diffusers

        for name in names - _resolved:
            getattr(diffusers, name)
            _resolved.add(name)


def ready() -> bool:
    return _ready.is_set()
