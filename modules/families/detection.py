"""Which model family a checkpoint is, from its tensor names and shapes (never its size or file name).

Each family says whether a checkpoint is one of its own (``ModelFamily.matches_checkpoint`` / ``matches_diffusers``);
``modules.initialize`` registers the families, and detection asks each in turn.
"""
from __future__ import annotations

import json
import os

from modules.families.spec import ModelFamily
from modules.loading import model_files

registry: list[ModelFamily] = []
UNKNOWN = ModelFamily("unknown", "unknown", lambda shapes: False, lambda config: False, supported=False,
                      note="not a Stable Diffusion checkpoint we recognise")


def register(*families: ModelFamily) -> None:
    for family in families:
        if family not in registry:
            registry.append(family)


def family_from_shapes(shapes: dict[str, tuple]) -> ModelFamily:
    return next((family for family in registry if family.matches_checkpoint(shapes)), UNKNOWN)


def family_from_diffusers_folder(path: str) -> ModelFamily:
    """From the UNet's config.json, with ``_subfolders`` added: the folder's components (SDXL base has
    ``text_encoder`` and ``text_encoder_2``, the refiner only the second)."""
    with open(os.path.join(path, "unet", "config.json"), encoding="utf8") as f:
        unet = json.load(f)
    unet["_subfolders"] = sorted(entry for entry in os.listdir(path) if os.path.isdir(os.path.join(path, entry)))
    return next((family for family in registry if family.matches_diffusers(unet)), UNKNOWN)


def detect_family(path: str) -> ModelFamily:
    if model_files.detect_format(path) == model_files.DIFFUSERS_FOLDER:
        return family_from_diffusers_folder(path)
    return family_from_shapes(model_files.read_shapes(path))


def find(key: str) -> ModelFamily | None:
    return next((family for family in registry if family.key == key), None)
