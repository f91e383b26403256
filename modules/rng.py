"""Seeded noise: one CPU ``torch.Generator`` per image, so a seed gives the same image on any device.

Variation seeds blend by slerp; "resize seed from" keeps a seed's composition across sizes by pasting
noise generated at the old size into the centre of noise at the new size (or cropping it).
"""
from __future__ import annotations

import random

MAX_SEED = 4294967294


def get_fixed_seed(seed) -> int:
    """-1, None and "" mean a random seed (A1111 semantics)."""
    if seed is None or seed == "" or int(seed) == -1:
        return int(random.randrange(MAX_SEED))
    return int(seed)


def randn(seed: int, shape, generator=None):
    import torch

    generator = generator or torch.Generator("cpu").manual_seed(int(seed))
    return torch.randn(shape, generator=generator, device="cpu")


def slerp(val: float, low, high):
    """Spherical interpolation between two noise tensors of shape (C, H, W), normalised along dim 1.

    Nearly parallel inputs fall back to a plain linear mix ``low*(1-val) + high*val``. (A1111's fallback
    has the weights swapped; we keep the direction consistent with the slerp instead.)
    """
    import torch

    low_norm = low / torch.norm(low, dim=1, keepdim=True)
    high_norm = high / torch.norm(high, dim=1, keepdim=True)
    dot = (low_norm * high_norm).sum(1)
    if dot.mean() > 0.9995:
        return low * (1 - val) + high * val
    omega = torch.acos(dot)
    so = torch.sin(omega)
    return (torch.sin((1.0 - val) * omega) / so).unsqueeze(1) * low + (torch.sin(val * omega) / so).unsqueeze(1) * high


class ImageRNG:
    """Noise for a batch of images; ``first()`` gives the initial latent noise, ``generators`` then continue
    to supply each image's later noise (ancestral and SDE samplers)."""

    def __init__(self, shape, seeds, subseeds=None, subseed_strength=0.0, seed_resize_from_h=0, seed_resize_from_w=0,
                 noise_seed_delta: int = 0):
        import torch

        self.shape = tuple(shape)
        self.seeds = [int(s) for s in seeds]
        self.subseeds = [int(s) for s in subseeds] if subseeds is not None else None
        self.subseed_strength = float(subseed_strength or 0)
        self.seed_resize_from_h = int(seed_resize_from_h or 0)
        self.seed_resize_from_w = int(seed_resize_from_w or 0)
        self.generators = [torch.Generator("cpu").manual_seed(s) for s in self.seeds]
        self.noise_seed_delta = int(noise_seed_delta or 0)

    def first(self):
        import torch

        c, h, w = self.shape
        resized = self.seed_resize_from_h > 0 and self.seed_resize_from_w > 0
        noise_shape = (c, self.seed_resize_from_h // 8, self.seed_resize_from_w // 8) if resized else self.shape
        xs = []
        for i, (seed, generator) in enumerate(zip(self.seeds, self.generators)):
            subnoise = None
            if self.subseeds is not None and self.subseed_strength != 0:
                subseed = self.subseeds[i] if i < len(self.subseeds) else 0
                subnoise = randn(subseed, noise_shape)
            noise = randn(seed, noise_shape) if noise_shape != self.shape else randn(seed, self.shape, generator)
            if subnoise is not None:
                noise = slerp(self.subseed_strength, noise, subnoise)
            if noise_shape != self.shape:
                noise = _paste_centred(randn(seed, self.shape, generator), noise)
            xs.append(noise)
        if self.noise_seed_delta:
            # ENSD: later noise comes from generators reseeded with seed + delta
            self.generators = [torch.Generator("cpu").manual_seed(s + self.noise_seed_delta) for s in self.seeds]
        return torch.stack(xs)


def _paste_centred(target, source):
    """Paste ``source`` (C, h, w) into the centre of ``target`` (C, H, W), cropping whichever is larger."""
    _, th, tw = target.shape
    _, sh, sw = source.shape
    h, w = min(th, sh), min(tw, sw)
    ty, tx = (th - h) // 2, (tw - w) // 2
    sy, sx = (sh - h) // 2, (sw - w) // 2
    target[:, ty:ty + h, tx:tx + w] = source[:, sy:sy + h, sx:sx + w]
    return target
