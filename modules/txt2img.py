"""Building a txt2img job from UI or API values (one definition both use)."""
from __future__ import annotations

from modules import processing
from modules.processing import StableDiffusionProcessingTxt2Img


def make_txt2img(prompt: str, negative_prompt: str, sampler_name: str, scheduler: str, steps: int, cfg_scale: float,
                 width: int, height: int, seed: int, subseed: int = -1, subseed_strength: float = 0.0,
                 seed_resize_from_w: int = 0, seed_resize_from_h: int = 0, batch_count: int = 1,
                 batch_size: int = 1, styles: list[str] | None = None, *, enable_hr: bool = False,
                 denoising_strength: float = 0.7, hr_scale: float = 2.0, hr_upscaler: str | None = None,
                 hr_second_pass_steps: int = 0, hr_resize_x: int = 0, hr_resize_y: int = 0,
                 hr_checkpoint_name: str | None = None, hr_sampler_name: str | None = None, hr_scheduler: str | None = None, hr_prompt: str = "",
                 hr_negative_prompt: str = "", override_settings: dict | None = None, restore_faces: bool | None = None,
                 refiner_checkpoint: str | None = None, refiner_switch_at: float | None = None,
                 ) -> StableDiffusionProcessingTxt2Img:
    """A validated processing object; bad values raise :class:`UserInputError` naming the field."""
    p = StableDiffusionProcessingTxt2Img(
        prompt=prompt or "", negative_prompt=negative_prompt or "", sampler_name=sampler_name, scheduler=scheduler,
        steps=as_int(steps), cfg_scale=float(cfg_scale), width=as_int(width), height=as_int(height),
        seed=as_int(seed), subseed=as_int(subseed), subseed_strength=float(subseed_strength or 0),
        seed_resize_from_w=as_int(seed_resize_from_w) or -1, seed_resize_from_h=as_int(seed_resize_from_h) or -1,
        n_iter=as_int(batch_count), batch_size=as_int(batch_size), styles=list(styles or []),
        enable_hr=bool(enable_hr), denoising_strength=float(denoising_strength), hr_scale=float(hr_scale),
        hr_upscaler=hr_upscaler, hr_second_pass_steps=max(as_int(hr_second_pass_steps), 0),
        hr_resize_x=max(as_int(hr_resize_x), 0), hr_resize_y=max(as_int(hr_resize_y), 0), hr_checkpoint_name=hr_checkpoint_name,
        hr_sampler_name=hr_sampler_name,
        hr_scheduler=hr_scheduler, hr_prompt=hr_prompt or "", hr_negative_prompt=hr_negative_prompt or "",
        override_settings=dict(override_settings or {}), restore_faces=restore_faces,
        refiner_checkpoint=refiner_checkpoint, refiner_switch_at=refiner_switch_at,
    )
    p.validate()
    return p


def as_int(value) -> int:
    """A UI or API number as an int (empty means -1); non-integers are kept for validate() to report."""
    if value is None or value == "":
        return -1
    number = float(value)
    return int(number) if number.is_integer() else number


def run(p: StableDiffusionProcessingTxt2Img) -> processing.Processed:
    return processing.process_with_scripts(p)
