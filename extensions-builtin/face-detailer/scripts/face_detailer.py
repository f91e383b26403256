"""Face detailer (an always-on script, as ADetailer is for A1111): after generation, find the faces and re-render
each one with inpaint "only masked" at the job's full resolution, so a face that covered 60 pixels gets all 512
(what users do by hand with img2img). Written on the public Script API, plus the engine's face detection
(``modules.imaging.face_detection``) and ``p.nested_job``, which keeps the inner inpaint job out of the queue's
counting and params.txt.

The infotext records the options (``Face detailer: True``, ``Face detailer denoising strength`` ...); the paste
button reads them back through the script's ``infotext_fields``. From the HTTP API:
``"alwayson_scripts": {"Face detailer": {"args": [true, 0.4, "", "", 32, 4]}}`` (enabled, denoising strength,
prompt, negative prompt, padding, mask blur; a dict with those names works too).
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import gradio as gr
import numpy as np
from PIL import Image, ImageDraw

from modules import processing, scripts
from modules.errors import UserInputError
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

    @classmethod
    def from_args(cls, args: tuple) -> FaceDetailerParams:
        """The script's arguments in ``ui()`` order, checked (the HTTP API sends them as given)."""
        names = [f.name for f in fields(cls)]
        if len(args) > len(names):
            raise UserInputError(f"Face detailer takes at most {len(names)} arguments ({', '.join(names)})")
        params = cls(**dict(zip(names, args)))
        params.enabled = bool(params.enabled)
        try:
            params.denoising_strength = float(params.denoising_strength)
            params.padding, params.mask_blur = int(params.padding), int(params.mask_blur)
        except (TypeError, ValueError):
            raise UserInputError("Face detailer: denoising strength, padding and mask blur must be numbers") from None
        if not 0 <= params.denoising_strength <= 1:
            raise UserInputError(f"Face detailer: denoising strength must be between 0 and 1, "
                                 f"got {params.denoising_strength}")
        if not 0 <= params.padding <= 256 or not 0 <= params.mask_blur <= 64:
            raise UserInputError("Face detailer: padding must be 0..256 and mask blur 0..64")
        params.prompt, params.negative_prompt = str(params.prompt or ""), str(params.negative_prompt or "")
        return params

    def infotext_params(self) -> dict[str, Any]:
        params: dict[str, Any] = {"Face detailer": True}
        for name, key in INFOTEXT_KEYS.items():
            value = getattr(self, name)
            if value != "":
                params[key] = value
        return params


def face_mask(size: tuple[int, int], face: face_detection.Face, grow: float = 0.1) -> Image.Image:
    """White where the face is: its box grown by ``grow`` of its size on every side."""
    x, y, w, h = face.box
    dx, dy = int(w * grow), int(h * grow)
    mask = Image.new("L", size, 0)
    ImageDraw.Draw(mask).rectangle((x - dx, y - dy, x + w + dx - 1, y + h + dy - 1), fill=255)
    return mask


def detail(p: Any, params: FaceDetailerParams, index: int, image: Image.Image) -> Image.Image:
    """Re-render every face found in ``image`` (image ``index`` of the batch ``p`` is on) and return the result."""
    for face in face_detection.detect(np.asarray(image.convert("RGB"))):
        inpaint = processing.StableDiffusionProcessingImg2Img(
            prompt=params.prompt or p.prompts[index],
            negative_prompt=params.negative_prompt or p.negative_prompts[index],
            sampler_name=p.sampler_name, scheduler=p.scheduler, steps=p.steps, cfg_scale=p.cfg_scale,
            width=p.width, height=p.height, seed=p.seeds[index], init_images=[image],
            mask=face_mask(image.size, face), mask_blur=params.mask_blur, inpainting_fill=1, inpaint_full_res=True,
            inpaint_full_res_padding=params.padding, denoising_strength=params.denoising_strength,
            restore_faces=False, do_not_save_samples=True, do_not_save_grid=True,
        )
        inpaint.nested_job = True
        processed = processing.process_images_inner(inpaint)
        if processed.images:
            image = processed.images[0]
    return image


class Script(scripts.Script):
    def title(self):
        return "Face detailer"

    def show(self, is_img2img):
        return scripts.AlwaysVisible

    def ui(self, is_img2img):
        defaults = FaceDetailerParams()
        with gr.Accordion("Face detailer", open=False, elem_id=self.elem_id("accordion")):
            enabled = gr.Checkbox(False, label="Face detailer: re-render each face at full resolution",
                                  elem_id=self.elem_id("enabled"))
            with gr.Row():
                strength = gr.Slider(0, 1, value=defaults.denoising_strength, step=0.01,
                                     label="Detailer denoising strength", elem_id=self.elem_id("denoising_strength"))
                padding = gr.Slider(0, 256, value=defaults.padding, step=4, label="Detailer padding, pixels",
                                    elem_id=self.elem_id("padding"))
                mask_blur = gr.Slider(0, 64, value=defaults.mask_blur, step=1, label="Detailer mask blur",
                                      elem_id=self.elem_id("mask_blur"))
            with gr.Row():
                prompt = gr.Textbox(label="Detailer prompt", lines=1, elem_id=self.elem_id("prompt"),
                                    placeholder="Leave empty to use the image's prompt")
                negative_prompt = gr.Textbox(label="Detailer negative prompt", lines=1,
                                             elem_id=self.elem_id("negative_prompt"),
                                             placeholder="Leave empty to use the image's negative prompt")
        self.infotext_fields = [(enabled, lambda params: str(params.get("Face detailer", "")).lower() == "true"),
                                (strength, INFOTEXT_KEYS["denoising_strength"]), (prompt, INFOTEXT_KEYS["prompt"]),
                                (negative_prompt, INFOTEXT_KEYS["negative_prompt"]),
                                (padding, INFOTEXT_KEYS["padding"]), (mask_blur, INFOTEXT_KEYS["mask_blur"])]
        return [enabled, strength, prompt, negative_prompt, padding, mask_blur]

    def setup(self, p, *args):
        FaceDetailerParams.from_args(args)  # bad arguments are refused before the job is queued

    def process(self, p, *args):
        params = FaceDetailerParams.from_args(args)
        if params.enabled:
            p.extra_generation_params.update(params.infotext_params())

    def postprocess_image(self, p, pp, *args):
        params = FaceDetailerParams.from_args(args)
        if params.enabled:
            pp.image = detail(p, params, p.batch_index, pp.image)
