"""GOBIG (the txt2imghd algorithm): upscale ×2 with the best available upscaler, cover the result with tiles of the
generation size laid out from the centre outward, re-render every tile with img2img at a low denoising strength
and paste it back through a feathered alpha mask, outermost tiles first so the centre ends on top. Passes repeat.

In txt2img the image is generated first; in img2img the input image is detailed. Uses only the public Script API.
"""
import numpy as np
from PIL import Image

import gradio as gr

import modules.scripts as scripts
from modules import images, processing, shared
from modules.errors import UserInputError
from modules.processing import Processed, StableDiffusionProcessingImg2Img
from modules.shared import opts, state

BEST_AVAILABLE = "Best available"
PREFERRED_UPSCALERS = ("R-ESRGAN 4x+", "ESRGAN_4x", "R-ESRGAN General 4xV3")
FEATHER_STEP = 4  # alpha gained per pixel inward from a tile edge (0 at the edge, 255 after 64 px)


def best_upscaler():
    """The preferred model upscaler when its weights are present, else any model upscaler, else Lanczos."""
    by_name = {u.name: u for u in shared.sd_upscalers}
    for name in PREFERRED_UPSCALERS:
        if name in by_name:
            return by_name[name]
    models = [u for u in shared.sd_upscalers if u.name not in ("None", "Lanczos", "Nearest")]
    return models[0] if models else by_name["Lanczos"]


def axis_positions(length: int, tile: int, overlap: int) -> list[tuple[int, int]]:
    """(start, ring) of the tiles along one axis: ring 0 is the centred tile, ring k the tiles k steps of
    ``tile - overlap`` away from it on either side, clamped inside the canvas, until both edges are covered."""
    if tile >= length:
        return [(0, 0)]
    step = tile - overlap
    left = right = (length - tile) // 2
    positions, ring = [(left, 0)], 0
    while left > 0 or right + tile < length:
        ring += 1
        left, right = max(0, left - step), min(length - tile, right + step)
        positions += [(x, ring) for x in dict.fromkeys((left, right)) if x not in [p for p, _ in positions]]
    return positions


def tile_layout(width: int, height: int, tile_w: int, tile_h: int, overlap: int) -> list[tuple[int, int, int, int]]:
    """Boxes (x, y, x + tile_w, y + tile_h) covering the canvas, outermost ring first and the centre tile last."""
    cells = [(max(rx, ry), x, y) for y, ry in axis_positions(height, tile_h, overlap)
             for x, rx in axis_positions(width, tile_w, overlap)]
    cells.sort(key=lambda cell: -cell[0])
    return [(x, y, x + tile_w, y + tile_h) for _, x, y in cells]


def feather_mask(box: tuple[int, int, int, int], width: int, height: int, overlap: int) -> Image.Image:
    """The tile's alpha: opaque, except along every edge that lies inside the canvas, where alpha rises from 0 at
    the edge by 4 per pixel (faster when the overlap is under 64 px, so it reaches 255 within the overlap).
    Edges on the canvas border stay opaque, so the image's own border is re-rendered too."""
    x0, y0, x1, y1 = box
    per_pixel = max(FEATHER_STEP, 255 / max(overlap, 1))

    def ramp(size: int, feather_start: bool, feather_end: bool) -> np.ndarray:
        distance = np.arange(size, dtype=np.float32)
        alpha = np.full(size, 255.0, dtype=np.float32)
        if feather_start and overlap:
            alpha = np.minimum(alpha, distance * per_pixel)
        if feather_end and overlap:
            alpha = np.minimum(alpha, distance[::-1] * per_pixel)
        return alpha

    alpha = np.minimum(ramp(y1 - y0, y0 > 0, y1 < height)[:, None], ramp(x1 - x0, x0 > 0, x1 < width)[None, :])
    return Image.fromarray(alpha.round().astype(np.uint8), "L")


def paste_tiles(canvas: Image.Image, tiles: list[tuple[tuple[int, int, int, int], Image.Image]], overlap: int) -> Image.Image:
    """Alpha-composite the re-rendered tiles onto ``canvas`` in list order."""
    result = canvas.copy()
    for box, tile in tiles:
        result.paste(tile.convert("RGB"), box[:2], feather_mask(box, canvas.width, canvas.height, overlap))
    return result


class Script(scripts.Script):
    def title(self):
        return "GOBIG"

    def show(self, is_img2img):
        return True

    def ui(self, is_img2img):
        gr.HTML("<p>Upscales ×2, then re-renders tiles of the width × height size from the centre outward and "
                "blends them back (txt2imghd).</p>")
        names = [BEST_AVAILABLE] + [u.name for u in shared.sd_upscalers if u.name != "None"]
        upscaler = gr.Dropdown(names, value=BEST_AVAILABLE, label="Upscaler", elem_id=self.elem_id("upscaler"))
        strength = gr.Slider(0.0, 1.0, value=0.3, step=0.01, label="Detail strength (denoising)",
                             elem_id=self.elem_id("strength"))
        overlap = gr.Slider(0, 256, value=128, step=8, label="Tile overlap", elem_id=self.elem_id("overlap"))
        passes = gr.Slider(1, 4, value=1, step=1, label="Passes", elem_id=self.elem_id("passes"))
        detail_steps = gr.Slider(0, 150, value=0, step=1, label="Detail steps (0 = same as sampling steps)",
                                 elem_id=self.elem_id("detail_steps"))
        return [upscaler, strength, overlap, passes, detail_steps]

    def run(self, p, upscaler_name, strength, overlap, passes, detail_steps):
        overlap, passes, strength = int(overlap), int(passes), float(strength)
        if not 0 <= overlap < min(p.width, p.height) // 2 + 1:
            raise UserInputError(f"GOBIG: tile overlap must be between 0 and half the tile size "
                                 f"({min(p.width, p.height) // 2}), got {overlap}")
        if not 1 <= passes <= 8:
            raise UserInputError(f"GOBIG: passes must be between 1 and 8, got {passes}")
        upscaler = self.upscaler(upscaler_name)
        processing.fix_seed(p)
        if isinstance(p, StableDiffusionProcessingImg2Img):
            sources = [images.flatten(image, opts.img2img_background_color) for image in p.init_images]
            infotexts = [""] * len(sources)
        else:
            first = processing.process_images(p)
            sources = first.images[first.index_of_first_image:]
            infotexts = first.infotexts[first.index_of_first_image:]
        results, result_infotexts = [], []
        for index, (image, infotext) in enumerate(zip(sources, infotexts)):
            for number in range(passes):
                if state.interrupted:
                    break
                image, infotext = self.detail(p, image, upscaler, strength, overlap, detail_steps, number, passes,
                                              p.seed + index)
            results.append(image)
            result_infotexts.append(infotext)
            if opts.samples_save and not p.do_not_save_samples:
                images.save_image(image, p.outpath_samples, "", p.seed + index, p.prompt, opts.samples_format,
                                  info=infotext, p=p, suffix="-gobig")
        return Processed(p, results, p.seed, result_infotexts[0] if result_infotexts else "", infotexts=result_infotexts)

    def upscaler(self, name):
        if not name or name == BEST_AVAILABLE:
            return best_upscaler()
        for candidate in shared.sd_upscalers:
            if candidate.name.lower() == str(name).lower():
                return candidate
        raise UserInputError(f"GOBIG: unknown upscaler {name!r}; choose {BEST_AVAILABLE!r} or one of: "
                             f"{', '.join(u.name for u in shared.sd_upscalers)}")

    def detail(self, p, image, upscaler, strength, overlap, detail_steps, number, passes, seed):
        """One pass: upscale ×2, re-render every tile, paste them back. Returns (image, infotext)."""
        canvas = upscaler.scaler.upscale(image, 2, upscaler.data_path)
        tile_w, tile_h = min(p.width, canvas.width // 8 * 8), min(p.height, canvas.height // 8 * 8)
        boxes = tile_layout(canvas.width, canvas.height, tile_w, tile_h, min(overlap, tile_w // 2, tile_h // 2))
        state.job_count = len(boxes) * passes
        rendered, infotext = [], ""
        for i, box in enumerate(boxes):
            if state.interrupted:
                break
            state.job = f"GOBIG pass {number + 1}/{passes}: tile {i + 1}/{len(boxes)}"
            tile_job = self.tile_job(p, canvas.crop(box), strength, detail_steps, seed + i)
            tile_job.extra_generation_params.update({"GOBIG upscaler": upscaler.name, "GOBIG overlap": overlap,
                                                    "GOBIG tiles": len(boxes), "GOBIG passes": passes})
            processed = processing.process_images(tile_job)
            rendered.append((box, processed.images[processed.index_of_first_image]))
            infotext = infotext or processed.infotexts[processed.index_of_first_image]
        if len(rendered) < len(boxes):
            return canvas, infotext
        return paste_tiles(canvas, rendered, overlap), infotext

    def tile_job(self, p, tile, strength, detail_steps, seed):
        """An img2img job for one tile with the job's prompt and sampler (scripts and saving left out)."""
        return StableDiffusionProcessingImg2Img(
            init_images=[tile], prompt=p.prompt, negative_prompt=p.negative_prompt, styles=list(p.styles),
            seed=seed, sampler_name=p.sampler_name, scheduler=p.scheduler, batch_size=1, n_iter=1,
            steps=int(detail_steps) or p.steps, cfg_scale=p.cfg_scale, width=tile.width, height=tile.height,
            denoising_strength=strength, do_not_save_samples=True, do_not_save_grid=True,
            override_settings=dict(p.override_settings), override_settings_restore_afterwards=True)
