"""Outpainting (img2img): "Poor man's outpainting" (tile by tile, the new border filled and inpainted) and
"Outpainting mk2" (one side at a time, the new border seeded with noise shaped like the image's own spectrum and
colours, after g-diffuser-bot's matched noise). Uses only the public Script API."""
import math

import gradio as gr
import numpy as np
from PIL import Image, ImageDraw

import modules.scripts as scripts
from modules import images, masking, processing
from modules.errors import UserInputError
from modules.processing import Processed
from modules.shared import opts, state

DIRECTIONS = ["left", "right", "up", "down"]
FILL_MODES = ["fill", "original", "latent noise", "latent nothing"]


def border_sizes(width: int, height: int, pixels: int, directions) -> tuple[int, int, int, int]:
    """(left, right, up, down) pixels to add. An expanded axis grows to a multiple of 64, the extra shared out
    between its two sides in proportion; an axis with neither side chosen keeps its size."""
    unknown = [d for d in directions if d not in DIRECTIONS]
    if unknown or not directions:
        raise UserInputError(f"outpainting directions must be some of {', '.join(DIRECTIONS)}, got {list(directions)}")
    if not 8 <= int(pixels) <= 256:
        raise UserInputError(f"pixels to expand must be between 8 and 256, got {pixels}")
    sides = [int(pixels) if d in directions else 0 for d in DIRECTIONS]
    result = []
    for size, first, second in ((width, sides[0], sides[1]), (height, sides[2], sides[3])):
        if first + second == 0:
            result += [0, 0]
            continue
        extra = math.ceil((size + first + second) / 64) * 64 - size
        first = first * extra // (first + second)
        result += [first, extra - first]
    return result[0], result[1], result[2], result[3]


def fill_mode(value) -> int:
    if isinstance(value, str) and value in FILL_MODES:
        return FILL_MODES.index(value)
    if isinstance(value, int) and 0 <= value < len(FILL_MODES):
        return value
    raise UserInputError(f"masked content must be one of {', '.join(FILL_MODES)} (or its index), got {value!r}")


def border_mask(size: tuple[int, int], box: tuple[int, int, int, int]) -> Image.Image:
    """White (repaint) everywhere but the black ``box`` (left, top, right, bottom)."""
    mask = Image.new("L", size, 255)
    ImageDraw.Draw(mask).rectangle((box[0], box[1], box[2] - 1, box[3] - 1), fill=0)
    return mask


class PoorMansOutpainting(scripts.Script):
    def title(self):
        return "Poor man's outpainting"

    def show(self, is_img2img):
        return is_img2img

    def ui(self, is_img2img):
        pixels = gr.Slider(label="Pixels to expand", minimum=8, maximum=256, step=8, value=128,
                           elem_id=self.elem_id("pixels"))
        mask_blur = gr.Slider(label="Mask blur", minimum=0, maximum=64, step=1, value=4,
                              elem_id=self.elem_id("mask_blur"))
        inpainting_fill = gr.Radio(label="Masked content", choices=FILL_MODES, value="fill", type="index",
                                   elem_id=self.elem_id("inpainting_fill"))
        direction = gr.CheckboxGroup(label="Outpainting direction", choices=DIRECTIONS, value=list(DIRECTIONS),
                                     elem_id=self.elem_id("direction"))
        return [pixels, mask_blur, inpainting_fill, direction]

    def run(self, p, pixels, mask_blur, inpainting_fill, direction):
        source = p.init_images[0]
        left, right, up, down = border_sizes(source.width, source.height, pixels, direction)
        mask_blur = int(mask_blur)
        p.mask_blur, p.inpainting_fill, p.inpaint_full_res = mask_blur * 2, fill_mode(inpainting_fill), False
        width, height = source.width + left + right, source.height + up + down
        canvas = Image.new("RGB", (width, height))
        canvas.paste(source, (left, up))

        def mask_for(band: int) -> Image.Image:
            """The new border, reaching ``band`` px into the picture on the expanded sides."""
            return border_mask((width, height), (left + (band if left else 0), up + (band if up else 0),
                                                 width - right - (band if right else 0),
                                                 height - down - (band if down else 0)))

        tile_w, tile_h = min(p.width, width // 8 * 8), min(p.height, height // 8 * 8)
        overlap = min(int(pixels), tile_w - 8, tile_h - 8)
        grid = images.split_grid(canvas, tile_w, tile_h, overlap)
        grid_mask = images.split_grid(mask_for(mask_blur * 2), tile_w, tile_h, overlap)
        grid_latent_mask = images.split_grid(mask_for(mask_blur // 2), tile_w, tile_h, overlap)

        def inside(x, y, w, h) -> bool:
            return x >= left and x + w <= width - right and y >= up and y + h <= height - down

        work = [(tile, mask, latent) for (y, h, row), (_, _, mask_row), (_, _, latent_row)
                in zip(grid.tiles, grid_mask.tiles, grid_latent_mask.tiles)
                for tile, mask, latent in zip(row, mask_row, latent_row) if not inside(tile[0], y, tile[1], h)]
        saved = p.width, p.height, p.n_iter, p.batch_size, p.do_not_save_grid, p.do_not_save_samples
        p.width, p.height, p.n_iter, p.batch_size, p.do_not_save_grid, p.do_not_save_samples = \
            tile_w, tile_h, 1, 1, True, True
        processing.fix_seed(p)
        first_seed, first_info = p.seed, ""
        state.job_count = len(work)
        print(f"Poor man's outpainting will process a total of {len(work)} images tiled as "
              f"{len(grid.tiles[0][2])}x{len(grid.tiles)}.")
        try:
            for number, (tile, mask, latent) in enumerate(work):
                if state.interrupted or state.stopping_generation:
                    break
                state.job = f"Batch {number + 1} out of {len(work)}"
                p.init_images, p.image_mask, p.latent_mask = [tile[2]], mask[2], latent[2]
                processed = processing.process_images(p)
                if not processed.images:
                    break
                first_info = first_info or processed.info
                tile[2] = processed.images[0]
                p.seed = processed.seed + 1
        finally:
            p.width, p.height, p.n_iter, p.batch_size, p.do_not_save_grid, p.do_not_save_samples = saved
        result = images.combine_grid(grid)
        if opts.samples_save and not p.do_not_save_samples:
            images.save_image(result, p.outpath_samples, "", first_seed, p.prompt, opts.samples_format, info=first_info,
                              p=p)
        return Processed(p, [result], first_seed, first_info)


def _fft(data: np.ndarray) -> np.ndarray:
    """Centred 2D spectrum of each channel of an (H, W, C) array."""
    return np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(data, axes=(0, 1)), axes=(0, 1), norm="ortho"), axes=(0, 1))


def _ifft(spectrum: np.ndarray) -> np.ndarray:
    return np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(spectrum, axes=(0, 1)), axes=(0, 1), norm="ortho"), axes=(0, 1))


def _low_pass(height: int, width: int) -> np.ndarray:
    """A soft window over the centred spectrum: 1 at the lowest frequencies, 1/4 in the corners."""
    scale = min(width, height)
    x = (np.arange(width) / width * 2 - 1) * (width / scale)
    y = (np.arange(height) / height * 2 - 1) * (height / scale)
    return 1 / ((y[:, None] ** 2 + 1) * (x[None, :] ** 2 + 1))


def matched_noise(image: np.ndarray, mask: np.ndarray, falloff: float = 1.0, colour_variation: float = 0.05,
                  seed: int = 0) -> np.ndarray:
    """Fill the masked part of ``image`` (H, W, 3, values 0..1; ``mask`` (H, W), 1 = fill) with noise whose
    spectrum follows the picture's (``falloff``: the exponent of the picture's magnitude; lower keeps more
    detail), whose colours are grey noise mixed with ``colour_variation`` of colour noise, and whose histogram is
    the known pixels'. Known pixels are returned unchanged."""
    keep = 1 - mask[..., None]
    known = image * keep
    reference = mask < 1e-3
    if not reference.any():
        raise UserInputError("matched noise needs some known pixels to imitate")
    mean = image[reference].mean(axis=0)
    spectrum = _fft(known + mean * (1 - keep))
    magnitude = np.abs(spectrum)
    phase = spectrum / np.maximum(magnitude, 1e-12)

    noise = np.random.default_rng(seed).random(image.shape)
    noise = colour_variation * noise + (1 - colour_variation) * noise.mean(axis=2, keepdims=True)
    noise_spectrum = _fft(noise) * _low_pass(*image.shape[:2])[..., None]
    shaped = np.real(_ifft(np.abs(noise_spectrum) ** 2 * magnitude ** falloff * phase))
    shaped = (shaped - shaped.min()) / max(np.ptp(shaped), 1e-12)
    fill = mask > 1e-6
    known_colours = image[reference]
    shaped[fill] = np.stack([masking.match_histogram(shaped[fill][:, c], known_colours[:, c]) for c in range(3)], axis=1)
    return np.clip(known + shaped * (1 - keep), 0, 1)


class OutpaintingMk2(scripts.Script):
    def title(self):
        return "Outpainting mk2"

    def show(self, is_img2img):
        return is_img2img

    def ui(self, is_img2img):
        info = gr.HTML("<p>Recommended settings: Sampling steps 80-100, Sampler Euler a, Denoising strength 0.8</p>")
        pixels = gr.Slider(label="Pixels to expand", minimum=8, maximum=256, step=8, value=128,
                           elem_id=self.elem_id("pixels"))
        mask_blur = gr.Slider(label="Mask blur", minimum=0, maximum=64, step=1, value=8, elem_id=self.elem_id("mask_blur"))
        direction = gr.CheckboxGroup(label="Outpainting direction", choices=DIRECTIONS, value=list(DIRECTIONS),
                                     elem_id=self.elem_id("direction"))
        noise_q = gr.Slider(label="Fall-off exponent (lower=higher detail)", minimum=0.0, maximum=4.0, step=0.01,
                            value=1.0, elem_id=self.elem_id("noise_q"))
        color_variation = gr.Slider(label="Color variation", minimum=0.0, maximum=1.0, step=0.01, value=0.05,
                                    elem_id=self.elem_id("color_variation"))
        return [info, pixels, mask_blur, direction, noise_q, color_variation]

    def run(self, p, _, pixels, mask_blur, direction, noise_q, color_variation):
        source = p.init_images[0]
        left, right, up, down = border_sizes(source.width, source.height, pixels, direction)
        mask_blur = int(mask_blur)
        blur_x = mask_blur if left or right else 0
        blur_y = mask_blur if up or down else 0
        p.mask_blur, p.mask_blur_x, p.mask_blur_y = None, blur_x * 4, blur_y * 4
        p.inpaint_full_res, p.inpainting_fill = False, 1
        window_w, window_h = p.width, p.height
        repeats, batch_size = p.n_iter, p.batch_size
        saved = p.width, p.height, p.n_iter, p.do_not_save_grid, p.do_not_save_samples
        p.n_iter, p.do_not_save_grid, p.do_not_save_samples = 1, True, True
        processing.fix_seed(p)
        first = {}

        def expand(pictures: list, amount: int, side: str) -> list:
            """Add ``amount`` px on ``side`` of every picture: matched noise, then img2img of a window at that side."""
            horizontal = side in ("left", "right")
            grow_x, grow_y = (amount, 0) if horizontal else (0, amount)
            new_w, new_h = pictures[0].width + grow_x, pictures[0].height + grow_y
            canvas_w, canvas_h = math.ceil(new_w / 64) * 64, math.ceil(new_h / 64) * 64
            offset = (grow_x if side == "left" else 0, grow_y if side == "up" else 0)

            def kept(blurs: int) -> tuple[int, int, int, int]:
                """The picture's box less the new border and ``blurs`` mask blurs on the expanded side."""
                bx, by = amount + blurs * blur_x, amount + blurs * blur_y
                return (bx if side == "left" else 0, by if side == "up" else 0,
                        new_w - bx if side == "right" else new_w, new_h - by if side == "down" else new_h)

            mask = border_mask((canvas_w, canvas_h), kept(1))
            mask_array = np.asarray(mask, dtype=np.float64) / 255
            crop_w = min(window_w, canvas_w) if horizontal else canvas_w
            crop_h = canvas_h if horizontal else min(window_h, canvas_h)
            crop_x = 0 if side == "left" else canvas_w - crop_w
            crop_y = 0 if side == "up" else canvas_h - crop_h
            crop = (crop_x, crop_y, crop_x + crop_w, crop_y + crop_h)
            noised = []
            for picture in pictures:
                canvas = Image.new("RGB", (canvas_w, canvas_h))
                canvas.paste(picture, offset)
                filled = matched_noise(np.asarray(canvas, dtype=np.float64) / 255, mask_array, float(noise_q),
                                       float(color_variation))
                noised.append(Image.fromarray((filled * 255).round().astype(np.uint8), "RGB"))
            p.width, p.height = crop_w, crop_h
            p.init_images = [picture.crop(crop) for picture in noised]
            p.image_mask = mask.crop(crop)
            p.latent_mask = border_mask((canvas_w, canvas_h), kept(2)).crop(crop)
            processed = processing.process_images(p)
            results = processed.images[processed.index_of_first_image:]
            if len(results) < len(pictures):
                raise InterruptedError
            first.setdefault("seed", processed.seed)
            first.setdefault("info", processed.info)
            for canvas, result in zip(noised, results):
                canvas.paste(result, crop[:2])
            return [canvas.crop((0, 0, new_w, new_h)) for canvas in noised]

        sides = [(amount, side) for amount, side in zip((left, right, up, down), DIRECTIONS) if amount]
        state.job_count = repeats * len(sides)
        outputs = []
        try:
            for repeat in range(repeats):
                pictures = [source] * batch_size
                for amount, side in sides:
                    state.job = f"Batch {repeat + 1} out of {repeats}: {side}"
                    pictures = expand(pictures, amount, side)
                outputs += pictures
                p.seed = p.seed + batch_size if isinstance(p.seed, int) else p.seed
        except InterruptedError:
            pass
        finally:
            p.width, p.height, p.n_iter, p.do_not_save_grid, p.do_not_save_samples = saved
        result = list(outputs)
        if len(outputs) > 1 or not opts.grid_only_if_multiple:
            grid = images.image_grid(outputs)
            if opts.grid_save and not p.do_not_save_grid:
                images.save_image(grid, p.outpath_grids, "grid", first.get("seed"), p.prompt, opts.grid_format,
                                  info=first.get("info"), short_filename=not opts.grid_extended_filename, grid=True, p=p)
            if opts.return_grid:
                result = [grid, *outputs]
        if opts.samples_save and not p.do_not_save_samples:
            for picture in outputs:
                images.save_image(picture, p.outpath_samples, "", first.get("seed"), p.prompt, opts.samples_format,
                                  info=first.get("info"), p=p)
        return Processed(p, result, first.get("seed", -1), first.get("info", ""),
                         index_of_first_image=len(result) - len(outputs))
