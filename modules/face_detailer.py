"""Face detailer: after generation, find the faces and re-render each one with inpaint "only masked" at the
job's full resolution, so a face that covered 60 pixels gets all 512 (what users do by hand with img2img).

The infotext records the options (``Face detailer: True``, ``Face detailer denoising strength`` ...); the
paste button reads them back through :func:`params_from_infotext`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from modules.imaging import face_detection

INFOTEXT_KEYS = {
    "denoising_strength": "Face detailer denoising strength",
    "prompt": "Face detailer prompt",
    "negative_prompt": "Face detailer negative prompt",
    "padding": "Face detailer padding",
    "mask_blur": "Face detailer mask blur",
}


@dataclass
class FaceDetailerParams:
    enabled: bool = False
    denoising_strength: float = 0.4
    prompt: str = ""  # empty: the image's own prompt
    negative_prompt: str = ""
    padding: int = 32
    mask_blur: int = 4

    def infotext_params(self) -> dict[str, Any]:
        params: dict[str, Any] = {"Face detailer": True}
        for name, key in INFOTEXT_KEYS.items():
            value = getattr(self, name)
            if value != "":
                params[key] = value
        return params


def params_from_infotext(params: dict[str, str]) -> FaceDetailerParams:
    """The detailer options an infotext records (disabled when it has none)."""
    result = FaceDetailerParams(enabled=str(params.get("Face detailer", "")).lower() == "true")
    for name, key in INFOTEXT_KEYS.items():
        if key in params:
            default = getattr(result, name)
            setattr(result, name, type(default)(float(params[key])) if isinstance(default, (int, float)) else params[key])
    return result


def face_mask(size: tuple[int, int], face: face_detection.Face, grow: float = 0.1) -> Image.Image:
    """White where the face is: its box grown by ``grow`` of its size on every side."""
    x, y, w, h = face.box
    dx, dy = int(w * grow), int(h * grow)
    mask = Image.new("L", size, 0)
    ImageDraw.Draw(mask).rectangle((x - dx, y - dy, x + w + dx - 1, y + h + dy - 1), fill=255)
    return mask


def detail(p: Any, index: int, image: Image.Image) -> Image.Image:
    """Re-render every face found in ``image`` (result ``index`` of job ``p``) and return the blended result."""
    from modules import processing

    params: FaceDetailerParams = p.face_detailer
    for face in face_detection.detect(np.asarray(image.convert("RGB"))):
        inpaint = processing.StableDiffusionProcessingImg2Img(
            prompt=params.prompt or p.all_prompts[index],
            negative_prompt=params.negative_prompt or p.all_negative_prompts[index],
            sampler_name=p.sampler_name, scheduler=p.scheduler, steps=p.steps, cfg_scale=p.cfg_scale,
            width=p.width, height=p.height, seed=p.all_seeds[index], init_images=[image],
            mask=face_mask(image.size, face), mask_blur=params.mask_blur, inpainting_fill=1, inpaint_full_res=True,
            inpaint_full_res_padding=params.padding, denoising_strength=params.denoising_strength,
            restore_faces=False, do_not_save_samples=True, do_not_save_grid=True,
        )
        inpaint.nested_job = True
        processed = processing.process_images_inner(inpaint)
        if processed.images:
            image = processed.images[0]
    return image

