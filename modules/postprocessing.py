"""The Extras pipeline: upscale (one or two upscalers blended), GFPGAN and CodeFormer with visibility, on one
image, a list of images or a folder. The source's PNG info is kept and the extras parameters are added
(``postprocessing`` text chunk, and ``extras`` when saved), as A1111 does.

Field names are those of A1111's ``/sdapi/v1/extra-single-image`` request.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from modules import errors, images, infotext_utils, upscaler
from modules.errors import UserInputError

MAX_SIDE = 16384


@dataclass
class ExtrasParams:
    resize_mode: int = 0  # 0 = scale by upscaling_resize, 1 = scale to upscaling_resize_w x upscaling_resize_h
    upscaling_resize: float = 2.0
    upscaling_resize_w: int = 512
    upscaling_resize_h: int = 512
    upscaling_crop: bool = True
    upscaler_1: str = "None"
    upscaler_2: str = "None"
    extras_upscaler_2_visibility: float = 0.0
    gfpgan_visibility: float = 0.0
    codeformer_visibility: float = 0.0
    codeformer_weight: float = 0.0
    upscale_first: bool = False

    def validate(self) -> None:
        if self.resize_mode not in (0, 1):
            raise UserInputError("resize_mode: 0 (scale by) or 1 (scale to)")
        if self.resize_mode == 0 and not 0 < self.upscaling_resize <= 8:
            raise UserInputError(f"upscaling_resize: {self.upscaling_resize} is outside 0 < x <= 8")
        if self.resize_mode == 1:
            for name in ("upscaling_resize_w", "upscaling_resize_h"):
                if not 1 <= getattr(self, name) <= MAX_SIDE:
                    raise UserInputError(f"{name}: {getattr(self, name)} is outside 1..{MAX_SIDE}")
        for name in ("extras_upscaler_2_visibility", "gfpgan_visibility", "codeformer_visibility", "codeformer_weight"):
            if not 0 <= getattr(self, name) <= 1:
                raise UserInputError(f"{name}: {getattr(self, name)} is outside 0..1")
        for name in ("upscaler_1", "upscaler_2"):
            upscaler.find(getattr(self, name) or "None")


def _upscale(image: Image.Image, params: ExtrasParams, info: dict[str, Any]) -> Image.Image:
    first = upscaler.find(params.upscaler_1 or "None")
    second = upscaler.find(params.upscaler_2 or "None")
    if first.name == "None" and (second.name == "None" or params.extras_upscaler_2_visibility == 0):
        return image
    if params.resize_mode == 1:
        scale = max(params.upscaling_resize_w / image.width, params.upscaling_resize_h / image.height)
        info["Postprocess upscale to"] = f"{params.upscaling_resize_w}x{params.upscaling_resize_h}"
    else:
        scale = params.upscaling_resize
        info["Postprocess upscale by"] = int(scale) if float(scale).is_integer() else scale

    def run(choice: upscaler.UpscalerData) -> Image.Image:
        result = choice.scaler.upscale(image, scale, choice.data_path)
        if params.resize_mode == 1 and params.upscaling_crop:
            result = ImageOps.fit(result, (params.upscaling_resize_w, params.upscaling_resize_h), Image.LANCZOS)
        return result

    result = run(first)
    info["Postprocess upscaler"] = first.name
    if second.name != "None" and params.extras_upscaler_2_visibility > 0:
        other = run(second)
        if other.size != result.size:
            other = other.resize(result.size, Image.LANCZOS)
        result = Image.blend(result.convert("RGB"), other.convert("RGB"), params.extras_upscaler_2_visibility)
        info["Postprocess upscaler 2"] = second.name
        info["Postprocess upscaler 2 visibility"] = round(params.extras_upscaler_2_visibility, 3)
    if params.resize_mode == 1 and params.upscaling_crop:
        info["Postprocess crop to"] = f"{result.width}x{result.height}"
    return result


def _restore(image: Image.Image, params: ExtrasParams, info: dict[str, Any]) -> Image.Image:
    from modules import face_restoration

    if params.gfpgan_visibility <= 0 and params.codeformer_visibility <= 0:
        return image
    rgb = image.convert("RGB")
    if params.gfpgan_visibility > 0:
        restored = Image.fromarray(face_restoration.find("GFPGAN").restore(np.asarray(rgb)))
        rgb = Image.blend(rgb, restored, params.gfpgan_visibility)
        info["GFPGAN visibility"] = round(params.gfpgan_visibility, 3)
    if params.codeformer_visibility > 0:
        codeformer = face_restoration.find("CodeFormer")
        restored = Image.fromarray(codeformer.restore_with_weight(np.asarray(rgb), params.codeformer_weight))
        rgb = Image.blend(rgb, restored, params.codeformer_visibility)
        info["CodeFormer visibility"] = round(params.codeformer_visibility, 3)
        info["CodeFormer weight"] = round(params.codeformer_weight, 3)
    return rgb


def process_image(image: Image.Image, params: ExtrasParams) -> tuple[Image.Image, str]:
    """One image through the pipeline. Returns the result (its ``info`` holds the source's PNG text plus
    ``postprocessing``) and the extras infotext."""
    source_info = dict(getattr(image, "info", {}) or {})
    info: dict[str, Any] = {}
    steps = (_upscale, _restore) if params.upscale_first else (_restore, _upscale)
    result = image
    for step in steps:
        result = step(result, params, info)
    text = ", ".join(f"{k}: {infotext_utils.quote(v)}" for k, v in info.items())
    result.info = {k: v for k, v in source_info.items() if isinstance(v, str)}
    if text:
        result.info["postprocessing"] = text
    return result, text


def output_dir() -> str:
    from modules import paths
    from modules.shared import opts

    base = opts.outdir_samples or opts.outdir_extras_samples
    return base if os.path.isabs(base) else os.path.join(paths.data_path, base)


def save(image: Image.Image, text: str, outdir: str | None = None, forced_filename: str | None = None) -> str:
    """Write one result (no date folder, short name as A1111's extras) and return its path."""
    from modules.shared import opts

    path, _ = images.save_image(image, outdir or output_dir(), "", extension=opts.samples_format, info=text or None,
                                short_filename=True, no_prompt=True, pnginfo_section_name="extras",
                                existing_info=dict(image.info), forced_filename=forced_filename)
    return path


def run(sources: list[tuple[Image.Image, str | None]], params: ExtrasParams, outdir: str | None = None,
        save_results: bool = True) -> tuple[list[Image.Image], str]:
    """Process (image, original name) pairs; a name keeps the input's file stem in the output folder."""
    from modules.shared import state

    params.validate()
    results, text = [], ""
    state.job_count = len(sources)
    for image, name in sources:
        if state.interrupted:
            break
        state.textinfo = name or "extras"
        result, text = process_image(image, params)
        if save_results:
            try:
                save(result, text, outdir, os.path.splitext(os.path.basename(name))[0] if name else None)
            except OSError as e:
                problem = images.save_failure_message(e, "result")
                errors.report(problem)
                text = f"{text}\n{problem}" if text else problem
        results.append(result)
        state.nextjob()
    return results, text
