"""The optional content filter (off by default): a prompt blocklist, and the CompVis safety checker that diffusers
ships as ``StableDiffusionSafetyChecker``, which replaces the images it flags with a notice image.

The checker's weights (``CompVis/stable-diffusion-safety-checker``: its config, image processor and
``model.safetensors``) live in ``models/safety_checker`` and are downloaded on first use, like the other official
weights (``download_official_weights``).
"""
from __future__ import annotations

import os
import re
import threading
from typing import Any

from modules import paths
from modules.errors import UserInputError

REPO = "CompVis/stable-diffusion-safety-checker"
REQUIRED_FILES = ("config.json", "preprocessor_config.json", "model.safetensors")
NOTICE = "Hidden by the content filter"
INFOTEXT_KEY = "Content filter"

_lock = threading.Lock()
_loaded: dict[str, Any] = {}  # folder -> (checker, image processor)


def folder() -> str:
    return os.path.join(paths.models_path, "safety_checker")


def blocked_words(prompt: str, blocklist: str) -> list[str]:
    """The blocklist's entries (comma-separated, case-insensitive, whole words) that ``prompt`` contains."""
    entries = [entry.strip() for entry in (blocklist or "").split(",") if entry.strip()]
    return [entry for entry in entries if re.search(rf"(?<!\w){re.escape(entry)}(?!\w)", prompt, re.IGNORECASE)]


def check_prompts(prompts: list[str], blocklist: str) -> None:
    """Refuse a job whose prompt contains a blocked word, naming it."""
    for prompt in prompts:
        found = blocked_words(prompt, blocklist)
        if found:
            raise UserInputError(f"prompt: contains {', '.join(map(repr, found))}, which the prompt blocklist setting "
                                 f"refuses")


def _load() -> tuple[Any, Any]:
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
    from transformers import CLIPImageProcessor

    from modules.loading import model_catalog

    where = folder()
    with _lock:
        if where in _loaded:
            return _loaded[where]
        missing = [name for name in REQUIRED_FILES if not os.path.isfile(os.path.join(where, name))]
        if missing and model_catalog.downloads_enabled():
            from huggingface_hub import snapshot_download

            try:
                snapshot_download(REPO, local_dir=where, allow_patterns=list(REQUIRED_FILES))
            except Exception as e:  # offline, hub unreachable, disk full
                raise UserInputError(f"Content filter: could not download the safety checker "
                                     f"(https://huggingface.co/{REPO}: {type(e).__name__}); save its "
                                     f"{', '.join(REQUIRED_FILES)} in {where}, or turn the content filter off") from None
            missing = [name for name in REQUIRED_FILES if not os.path.isfile(os.path.join(where, name))]
        if missing:
            raise UserInputError(f"Content filter: the safety checker's {', '.join(missing)} are missing in {where}; "
                                 f"get them from https://huggingface.co/{REPO} (downloaded on first use when "
                                 f"download_official_weights is on), or turn the content filter off")
        checker = StableDiffusionSafetyChecker.from_pretrained(where, local_files_only=True).eval()
        _loaded[where] = (checker, CLIPImageProcessor.from_pretrained(where, local_files_only=True))
        return _loaded[where]


def notice_image(size: tuple[int, int]):
    """What a flagged image becomes: grey, with the notice written on it."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", size, (96, 96, 96))
    ImageDraw.Draw(image).text((4, size[1] // 2 - 6), NOTICE, fill=(230, 230, 230))
    return image


def flagged(image) -> bool:
    """Whether the safety checker flags a PIL image (it runs on the CPU: one small CLIP vision pass)."""
    import numpy as np
    import torch

    checker, processor = _load()
    pixels = processor(images=image.convert("RGB"), return_tensors="pt").pixel_values
    with torch.no_grad():
        _, has_nsfw = checker(clip_input=pixels, images=[np.asarray(image.convert("RGB"))])
    return bool(has_nsfw[0])


def apply(image) -> tuple[Any, bool]:
    """(the image, or the notice image in its place when flagged; whether it was flagged)."""
    if not flagged(image):
        return image, False
    return notice_image(image.size), True
