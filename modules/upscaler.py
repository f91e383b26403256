"""Pixel upscalers by name (A1111 ``Upscaler``/``UpscalerData``): None, Lanczos and Nearest are built in;
model upscalers register more entries in ``shared.sd_upscalers``."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from PIL import Image

from modules import shared
from modules.errors import UserInputError


class Upscaler:
    """One upscaling method. ``upscale`` implements A1111's size rule: the result is exactly
    ``floor(w*scale/8)*8`` x ``floor(h*scale/8)*8``, reached by up to three model passes and a final Lanczos resize."""
    name = "None"
    scale = 1.0

    def do_upscale(self, img: Image.Image, selected_model: str | None) -> Image.Image:
        return img

    def upscale(self, img: Image.Image, scale: float, selected_model: str | None = None) -> Image.Image:
        self.scale = scale
        dest_w = int((img.width * scale) // 8 * 8)
        dest_h = int((img.height * scale) // 8 * 8)
        for _ in range(3):
            if img.width >= dest_w and img.height >= dest_h:
                break
            before = img.size
            img = self.do_upscale(img, selected_model)
            if img.size == before:
                break
        if img.size != (dest_w, dest_h):
            img = img.resize((dest_w, dest_h), resample=Image.LANCZOS)
        return img


class UpscalerNone(Upscaler):
    name = "None"


class _PILUpscaler(Upscaler):
    resample: int = Image.LANCZOS

    def do_upscale(self, img: Image.Image, selected_model: str | None) -> Image.Image:
        return img.resize((int(img.width * self.scale), int(img.height * self.scale)), resample=self.resample)


class UpscalerLanczos(_PILUpscaler):
    name = "Lanczos"
    resample = Image.LANCZOS


class UpscalerNearest(_PILUpscaler):
    name = "Nearest"
    resample = Image.NEAREST


@dataclass
class UpscalerData:
    name: str
    data_path: str | None
    scaler: Upscaler
    scale: float = 4
    model: Any = None


def builtin_upscalers() -> list[UpscalerData]:
    return [UpscalerData(cls.name, None, cls()) for cls in (UpscalerNone, UpscalerLanczos, UpscalerNearest)]


ModelSource = Callable[[], list[UpscalerData]]
model_sources: list[ModelSource] = []
"""Functions that list the upscalers of one model kind (one entry per weights file); ``modules.initialize``
registers the built-in ESRGAN one, extensions may add theirs."""


def register_model_source(source: ModelSource) -> None:
    if source not in model_sources:
        model_sources.append(source)


def all_upscalers() -> list[UpscalerData]:
    """``shared.sd_upscalers``: None, Lanczos, Nearest, then each model source's upscalers. The list is
    rebuilt in place when weight files were added or removed."""
    models = [upscaler for source in model_sources for upscaler in source()]
    current = [(u.name, u.data_path) for u in shared.sd_upscalers[3:]]
    if not shared.sd_upscalers or current != [(u.name, u.data_path) for u in models]:
        loaded = {u.data_path: u for u in shared.sd_upscalers[3:]}
        models = [loaded.get(u.data_path) if u.data_path in loaded and loaded[u.data_path].name == u.name else u
                  for u in models]
        shared.sd_upscalers[:] = builtin_upscalers() + models
    return shared.sd_upscalers


def find(name: str) -> UpscalerData:
    for upscaler in all_upscalers():
        if upscaler.name == name:
            return upscaler
    names = ", ".join(u.name for u in all_upscalers())
    raise UserInputError(f"Unknown upscaler {name!r}; choose one of: {names}")
