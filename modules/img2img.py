"""Building img2img jobs from UI or API values, and img2img over a folder of images."""
from __future__ import annotations

import copy
import os
from typing import Any

from modules import images, paths, processing
from modules.errors import UserInputError
from modules.processing import StableDiffusionProcessingImg2Img
from modules.shared import state
from modules.txt2img import as_int

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")


def make_img2img(prompt: str, negative_prompt: str, init_image: Any, mask: Any = None, *, sampler_name: str = "Euler a",
                 scheduler: str = "Automatic", steps: int = 20, cfg_scale: float = 7.0, width: int = 512, height: int = 512,
                 seed: int = -1, subseed: int = -1, subseed_strength: float = 0.0, seed_resize_from_w: int = 0,
                 seed_resize_from_h: int = 0, batch_count: int = 1, batch_size: int = 1, styles: list[str] | None = None,
                 resize_mode: int = 0, denoising_strength: float = 0.75, mask_blur: int = 4, inpainting_mask_invert: int = 0,
                 inpainting_fill: int = 1, inpaint_full_res: bool = False, inpaint_full_res_padding: int = 32,
                 initial_noise_multiplier: float | None = None, stochastic_freeze: bool = False,
                 override_settings: dict | None = None, restore_faces: bool | None = None,
                 refiner_checkpoint: str | None = None, refiner_switch_at: float | None = None,
                 validate: bool = True) -> StableDiffusionProcessingImg2Img:
    """An img2img processing object (UI defaults: "original" content, whole picture, padding 32), validated unless
    ``validate`` is False (a folder batch has no image yet; each image's job is validated when it runs)."""
    p = StableDiffusionProcessingImg2Img(
        prompt=prompt or "", negative_prompt=negative_prompt or "", sampler_name=sampler_name, scheduler=scheduler,
        steps=as_int(steps), cfg_scale=float(cfg_scale), width=as_int(width), height=as_int(height), seed=as_int(seed),
        subseed=as_int(subseed), subseed_strength=float(subseed_strength or 0),
        seed_resize_from_w=as_int(seed_resize_from_w) or -1, seed_resize_from_h=as_int(seed_resize_from_h) or -1,
        n_iter=as_int(batch_count), batch_size=as_int(batch_size), styles=list(styles or []),
        init_images=[init_image] if init_image is not None else [], mask=mask, resize_mode=as_int(resize_mode),
        denoising_strength=float(denoising_strength), mask_blur=as_int(mask_blur), inpainting_mask_invert=as_int(inpainting_mask_invert),
        inpainting_fill=as_int(inpainting_fill), inpaint_full_res=bool(inpaint_full_res),
        inpaint_full_res_padding=as_int(inpaint_full_res_padding), initial_noise_multiplier=initial_noise_multiplier,
        stochastic_freeze=bool(stochastic_freeze), override_settings=dict(override_settings or {}),
        restore_faces=restore_faces, refiner_checkpoint=refiner_checkpoint, refiner_switch_at=refiner_switch_at,
    )
    if validate:
        p.validate()
    return p


def batch_roots() -> list[str]:
    """Folders a batch may read from and write to: the data dir and every ``--img2img-batch-root``."""
    from modules import shared

    return [paths.data_path, *(getattr(shared.cmd_opts, "img2img_batch_root", None) or [])]


def resolve_batch_dir(folder: str, what: str, must_exist: bool = True) -> str:
    """``folder`` resolved (relative paths are under the data dir) and checked to lie under an allowed root."""
    from modules import shared

    if getattr(shared.cmd_opts, "webui_is_non_local", False):
        raise UserInputError("batch from folders is only available when the server is bound to this computer "
                             "(no --listen, --share or --server-name)")
    folder = (folder or "").strip()
    if not folder:
        raise UserInputError(f"{what}: no folder given")
    path = os.path.join(paths.data_path, os.path.expanduser(folder))
    for root in batch_roots():
        try:
            resolved = str(paths.contained(root, path))
        except paths.PathOutsideRoot:
            continue
        if must_exist and not os.path.isdir(resolved):
            raise UserInputError(f"{what}: {folder!r} is not a folder")
        return resolved
    raise UserInputError(f"{what}: {folder!r} is outside the allowed folders ({', '.join(batch_roots())}); "
                         "add a root with --img2img-batch-root")


def list_batch_images(folder: str) -> list[str]:
    return sorted(os.path.join(folder, name) for name in os.listdir(folder)
                  if name.lower().endswith(IMAGE_EXTENSIONS) and os.path.isfile(os.path.join(folder, name)))


def _masks_by_stem(mask_dir: str) -> dict[str, str]:
    return {os.path.splitext(os.path.basename(path))[0]: path for path in list_batch_images(mask_dir)}


def process_batch(p: StableDiffusionProcessingImg2Img, input_dir: str, output_dir: str, mask_dir: str = "") -> processing.Processed:
    """Run ``p`` on every image of ``input_dir`` (and its mask of the same name from ``mask_dir``), saving each
    result under its input's name in ``output_dir``. With stochastic freeze every image gets the same seed."""
    input_dir = resolve_batch_dir(input_dir, "input folder")
    output_dir = resolve_batch_dir(output_dir, "output folder", must_exist=False) if (output_dir or "").strip() else ""
    mask_dir = resolve_batch_dir(mask_dir, "mask folder") if (mask_dir or "").strip() else ""
    files = list_batch_images(input_dir)
    if not files:
        raise UserInputError(f"input folder: no images in {input_dir!r}")
    masks = _masks_by_stem(mask_dir) if mask_dir else {}
    if p.stochastic_freeze:
        processing.fix_seed(p)
    state.job_count = len(files) * p.n_iter
    outputs, infotexts, seeds, comments = [], [], [], {}
    for path in files:
        if state.interrupted or state.stopping_generation:
            break
        job = copy.copy(p)
        job.extra_generation_params = dict(p.extra_generation_params)
        job.override_settings = dict(p.override_settings)
        job.comments = dict(p.comments)
        with images.read(path) as image:
            job.init_images = [image.copy()]
        mask_path = masks.get(os.path.splitext(os.path.basename(path))[0])
        if mask_path is not None:
            with images.read(mask_path) as mask:
                job.image_mask = mask.copy()
        if output_dir:
            job.outpath_samples = output_dir
            several = job.n_iter * job.batch_size > 1
            job.override_settings.update(save_to_dirs=False, save_images_add_number=several,
                                         samples_filename_pattern=os.path.splitext(os.path.basename(path))[0])
        job.do_not_save_grid = True
        processed = processing.process_with_scripts(job)
        outputs += processed.images[processed.index_of_first_image:]
        infotexts += processed.infotexts[processed.index_of_first_image:]
        seeds.append(processed.seed)
        comments.update(dict.fromkeys(line for line in processed.comments.splitlines() if line))
    if not outputs:
        raise UserInputError("batch: no image was processed")
    return processing.Processed(p, outputs, seeds[0], infotexts[0], infotexts=infotexts,
                                comments="".join(f"{line}\n" for line in comments))


def run(p: StableDiffusionProcessingImg2Img) -> processing.Processed:
    return processing.process_with_scripts(p)
