"""A tiny random-weight SD 1.x checkpoint in the normal single-file format (other layouts for the tests).

Used when no real checkpoint is available (offline first start, ``--demo``) and by the tests. Its images
are noise-like patterns: it exercises every part of the program but is no image generator.
"""
from __future__ import annotations

import math
import os

from modules.families import sd1_layout

DEMO_NAME = "demo-random-weights"


def random_state_dict(arch: sd1_layout.SD1Arch = sd1_layout.TINY, seed: int = 0, shapes: dict | None = None) -> dict:
    """Random tensors for every key of ``shapes`` (default: the SD 1.x LDM layout of ``arch``): 1-D weights (norms)
    are 1, biases 0, embeddings N(0, 0.02), other weights N(0, 1/fan_in)."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in sorted((shapes or sd1_layout.checkpoint_shapes(arch)).items()):
        if key.endswith("bias"):
            tensor = torch.zeros(shape)
        elif len(shape) == 1:
            tensor = torch.ones(shape)
        elif "embedding" in key:
            tensor = torch.randn(shape, generator=generator) * 0.02
        else:
            fan_in = math.prod(shape[1:])
            tensor = torch.randn(shape, generator=generator) / math.sqrt(fan_in)
        state[key] = tensor.contiguous()
    return state


def write_checkpoint(path: str, arch: sd1_layout.SD1Arch = sd1_layout.TINY, seed: int = 0, shapes: dict | None = None,
                     extra: dict | None = None) -> str:
    """Write a random checkpoint atomically and return its path; ``extra`` tensors (marker keys such as
    ``v_pred``) are stored as given."""
    from safetensors.torch import save_file

    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = path + ".tmp"
    state = {**random_state_dict(arch, seed, shapes), **(extra or {})}
    save_file(state, tmp, metadata={"format": "pt", "note": "random weights, not a real model"})
    os.replace(tmp, path)
    return path


def ensure_demo_checkpoint(models_dir: str) -> str:
    path = os.path.join(models_dir, "Stable-diffusion", DEMO_NAME + ".safetensors")
    if not os.path.isfile(path):
        write_checkpoint(path)
    return path
