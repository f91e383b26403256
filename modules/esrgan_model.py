"""Model upscalers: ESRGAN and Real-ESRGAN weights found in ``models/ESRGAN`` and ``models/RealESRGAN``.

Official files get A1111's names (``R-ESRGAN 4x+`` ...); any other file is listed by its file name.
Inference is tiled (``ESRGAN_tile``, ``ESRGAN_tile_overlap``) so large images fit in memory.
"""
from __future__ import annotations

import os
import re
import threading
from typing import Any

from PIL import Image

from modules.loading import model_catalog, model_files
from modules.upscaler import Upscaler, UpscalerData

EXTENSIONS = (".pth", ".pt", ".safetensors")
FOLDERS = ("ESRGAN", "RealESRGAN")
_run_lock = threading.Lock()  # with --gpus, one worker at a time moves a network to its GPU and runs it


def tiled_upscale(model: Any, image: Image.Image, tile: int = 192, overlap: int = 8) -> Image.Image:
    """Run ``model`` over ``tile``-pixel squares that overlap by ``overlap`` pixels; overlapping outputs are
    averaged. ``tile`` <= 0 runs the whole image at once. An interrupt between tiles returns a Lanczos resize."""
    import numpy as np
    import torch

    from modules import devices, shared

    array = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    source = torch.from_numpy(array).permute(2, 0, 1).unsqueeze(0)
    _, _, height, width = source.shape
    scale = model.scale
    device = devices.device
    model.to(device)
    if tile <= 0 or (height <= tile and width <= tile):
        with torch.no_grad():
            result = model(source.to(device)).float().cpu()
    else:
        result = torch.zeros(1, 3, height * scale, width * scale)
        weight = torch.zeros(1, 1, height * scale, width * scale)
        for top in _tile_starts(height, tile, overlap):
            for left in _tile_starts(width, tile, overlap):
                if shared.state.interrupted:  # end the job quickly: a plain resize of the right size
                    return image.resize((width * scale, height * scale), Image.LANCZOS)
                part = source[:, :, top:top + tile, left:left + tile].to(device)
                with torch.no_grad():
                    out = model(part).float().cpu()
                rows = slice(top * scale, top * scale + out.shape[2])
                cols = slice(left * scale, left * scale + out.shape[3])
                result[:, :, rows, cols] += out
                weight[:, :, rows, cols] += 1
        result /= weight
    pixels = (result[0].clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    return Image.fromarray(pixels)


def _tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    if length <= tile:
        return [0]
    stride = max(tile - overlap, 1)
    starts = list(range(0, length - tile, stride))
    return starts + [length - tile]


class UpscalerESRGAN(Upscaler):
    """One weights file; the network is loaded on first use and kept."""

    def __init__(self, name: str, path: str, official: model_catalog.OfficialWeights | None = None):
        self.name = name
        self.path = path
        self.official = official
        self.model: Any = None

    def load(self):
        if self.model is None:
            from modules.arch import esrgan as esrgan_arch

            if not os.path.exists(self.path):
                if self.official is None:
                    raise FileNotFoundError(f"{self.name}: weights file {self.path} is missing")
                model_catalog.ensure(self.official)
            with model_files.loading(self.path, "ESRGAN upscaler"):
                self.model = esrgan_arch.build(model_files.read_state_dict(self.path))
        return self.model

    def do_upscale(self, img: Image.Image, selected_model: str | None) -> Image.Image:
        from modules import shared

        with _run_lock:
            return tiled_upscale(self.load(), img, int(shared.opts.ESRGAN_tile), int(shared.opts.ESRGAN_tile_overlap))


def _scale_from_name(filename: str, default: int = 4) -> int:
    """A listing shows a scale before the network is loaded; files named like ``x2``/``2x`` say theirs."""
    match = re.search(r"(?:^|[^0-9a-z])(?:x(\d)|(\d)x)(?:[^0-9a-z]|plus|$)", filename.lower())
    return int(match.group(1) or match.group(2)) if match else default


def model_upscalers() -> list[UpscalerData]:
    """One entry per weights file present; official files that are missing are listed only when first-use
    downloads are enabled."""
    official_by_path = {os.path.normcase(os.path.abspath(w.path())): w for w in model_catalog.UPSCALERS}
    found: dict[str, UpscalerData] = {}
    roots = [model_catalog.folder_path(folder) for folder in FOLDERS]
    for path, _, _ in model_files.list_files(roots, EXTENSIONS):
        official = official_by_path.get(os.path.normcase(os.path.abspath(path)))
        name = official.name if official else os.path.splitext(os.path.basename(path))[0]
        scaler = UpscalerESRGAN(name, path, official)
        found.setdefault(name, UpscalerData(name, path, scaler, _scale_from_name(os.path.basename(path))))
    if model_catalog.downloads_enabled():
        for weights in model_catalog.UPSCALERS:
            if weights.name not in found:
                scaler = UpscalerESRGAN(weights.name, weights.path(), weights)
                found[weights.name] = UpscalerData(weights.name, weights.path(), scaler, _scale_from_name(weights.filename))
    return [found[name] for name in sorted(found, key=str.lower)]
