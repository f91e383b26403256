"""Saving images (A1111 file names, PNG ``parameters`` chunk, atomic writes) and grids."""
from __future__ import annotations

import datetime
import hashlib
import math
import os
import re
from collections import namedtuple
from typing import Any

from PIL import Image, PngImagePlugin

from modules.imaging import grid_annotations
from modules.imaging.png_info import read_info_from_image  # noqa: F401  (A1111's name for it)
from modules.runtime import atomic_files, background_writer

# grid labels live in their own module; these are the A1111 names scripts import from here
GridAnnotation = grid_annotations.GridAnnotation
draw_grid_annotations = grid_annotations.draw_grid_annotations
draw_prompt_matrix = grid_annotations.draw_prompt_matrix
get_font = grid_annotations.get_font

invalid_filename_chars = '#<>:"/\\|?*\n\r\t'
invalid_filename_prefix = " "
invalid_filename_postfix = " ."
re_nonletters = re.compile(r"[\s\W_]+")
re_pattern = re.compile(r"(.*?)(?:\[([^\[\]]+)\]|$)")
re_pattern_arg = re.compile(r"(.*)<([^>]*)>$")


def sanitize_filename_part(text: Any, replace_spaces: bool = True) -> str | None:
    from modules.shared import cmd_opts

    if text is None:
        return None
    text = str(text)
    if replace_spaces:
        text = text.replace(" ", "_")
    bad = "/" if cmd_opts.unix_filenames_sanitization else invalid_filename_chars
    text = text.translate({ord(x): "_" for x in bad})
    text = text.lstrip(invalid_filename_prefix)[: cmd_opts.filenames_max_length]
    return text.rstrip(invalid_filename_postfix)


class FilenameGenerator:
    """Expands ``[tag]`` patterns (``[seed]``, ``[date]``, ``[prompt_words]`` ...); unknown tags stay literal."""

    def __init__(self, p: Any, seed: Any, prompt: str | None, image: Any, zip: bool = False, basename: str = ""):
        self.p = p
        self.seed = seed
        self.prompt = prompt
        self.image = image
        self.basename = basename
        self.replacements = {
            "basename": lambda: self.basename or "img",
            "seed": lambda: self.seed if self.seed is not None else "",
            "seed_first": lambda: self.seed if getattr(p, "batch_size", 1) == 1 else p.all_seeds[0],
            "seed_last": lambda: "NONE" if getattr(p, "batch_size", 1) == 1 else p.all_seeds[-1],
            "steps": lambda: getattr(p, "steps", None),
            "cfg": lambda: getattr(p, "cfg_scale", None),
            "width": lambda: self.image.width,
            "height": lambda: self.image.height,
            "styles": lambda: sanitize_filename_part(", ".join(getattr(p, "styles", []) or []) or "None", replace_spaces=False),
            "sampler": lambda: sanitize_filename_part(getattr(p, "sampler_name", None), replace_spaces=False),
            "sampler_scheduler": lambda: sanitize_filename_part(f"{p.sampler_name}_{p.scheduler}", replace_spaces=False),
            "scheduler": lambda: sanitize_filename_part(getattr(p, "scheduler", None), replace_spaces=False),
            "model_hash": lambda: getattr(p, "sd_model_hash", None),
            "model_name": lambda: sanitize_filename_part(getattr(p, "sd_model_name", None), replace_spaces=False),
            "date": lambda: datetime.datetime.now().strftime("%Y-%m-%d"),
            "datetime": self.datetime,
            "job_timestamp": lambda: getattr(p, "job_timestamp", None) or _state_timestamp(),
            "prompt": lambda: sanitize_filename_part(self.prompt),
            "prompt_no_styles": lambda: sanitize_filename_part(self.prompt),
            "prompt_spaces": lambda: sanitize_filename_part(self.prompt, replace_spaces=False),
            "prompt_words": self.prompt_words,
            "prompt_hash": lambda *args: self.string_hash(self.prompt, *args),
            "negative_prompt_hash": lambda *args: self.string_hash(getattr(p, "negative_prompt", ""), *args),
            "full_prompt_hash": lambda *args: self.string_hash(f"{self.prompt} {getattr(p, 'negative_prompt', '')}", *args),
            "clip_skip": lambda: getattr(p, "clip_skip", None),
            "batch_number": lambda: getattr(p, "batch_index", 0) + 1 if getattr(p, "batch_size", 1) > 1 else "NONE",
            "batch_size": lambda: getattr(p, "batch_size", 1),
            "generation_number": lambda: "NONE" if getattr(p, "n_iter", 1) == 1 and getattr(p, "batch_size", 1) == 1
            else getattr(p, "iteration", 0) * getattr(p, "batch_size", 1) + getattr(p, "batch_index", 0) + 1,
            "denoising": lambda: getattr(p, "denoising_strength", None) or "NONE",
            "user": lambda: getattr(p, "user", None),
            "image_hash": lambda *args: self.image_hash(*args),
            "none": lambda: "",
        }

    def datetime(self, *args: str) -> str:
        fmt = args[0] if args and args[0] else "%Y%m%d%H%M%S"
        try:
            return datetime.datetime.now().strftime(fmt)
        except (ValueError, TypeError):
            return datetime.datetime.now().strftime("%Y%m%d%H%M%S")

    def prompt_words(self) -> str:
        from modules.shared import opts

        words = [w for w in re_nonletters.split(self.prompt or "") if w] or ["empty"]
        return sanitize_filename_part(" ".join(words[: opts.directories_max_prompt_words]), replace_spaces=False)

    @staticmethod
    def string_hash(text: str | None, *args: str) -> str:
        length = int(args[0]) if args and args[0].isdigit() else 8
        return hashlib.sha256((text or "").encode()).hexdigest()[:length]

    def image_hash(self, *args: str) -> str:
        length = int(args[0]) if args and args[0].isdigit() else None
        return hashlib.sha256(self.image.tobytes()).hexdigest()[:length]

    def apply(self, pattern: str) -> str:
        result = ""
        for m in re_pattern.finditer(pattern):
            text, tag = m.groups()
            if tag is None:
                result += text
                continue
            args = []
            while True:
                arg = re_pattern_arg.match(tag)
                if arg is None:
                    break
                tag, value = arg.groups()
                args.insert(0, value)
            fun = self.replacements.get(tag.lower())
            if fun is not None:
                try:
                    replacement = fun(*args)
                except Exception:
                    replacement = None
                if replacement == "NONE":  # the tag and the text before it are dropped
                    continue
                if replacement is not None:
                    result += text + str(replacement)
                    continue
            result += f"{text}[{tag}]"
        return result


def _state_timestamp() -> str:
    from modules.shared import state

    return state.job_timestamp


def get_next_sequence_number(path: str, basename: str) -> int:
    """One more than the largest number prefix among the files in ``path`` (``basename-`` prefixed if given)."""
    result = -1
    if basename:
        basename = f"{basename}-"
    prefix_length = len(basename)
    if not os.path.isdir(path):
        return 0
    pending = [os.path.basename(name) for name in background_writer.reserved() if os.path.dirname(name) == path]
    for name in os.listdir(path) + pending:
        if name.startswith(basename):
            parts = os.path.splitext(name[prefix_length:])[0].split("-")
            try:
                result = max(int(parts[0]), result)
            except ValueError:
                pass
    return result + 1


def _pnginfo(info: str | None, existing: dict | None, section: str) -> PngImagePlugin.PngInfo:
    pnginfo = PngImagePlugin.PngInfo()
    for key, value in (existing or {}).items():
        if isinstance(key, str) and isinstance(value, str) and key != section:
            pnginfo.add_text(key, value)
    if info is not None:
        pnginfo.add_text(section, info)
    return pnginfo


IMAGE_FORMATS = {"jpg": "JPEG", "jpeg": "JPEG", "png": "PNG", "webp": "WEBP", "gif": "GIF", "avif": "AVIF"}


def write_image_with_geninfo(image: Image.Image, geninfo: str | None, fp, extension: str,
                             existing_pnginfo: dict | None = None, pnginfo_section_name: str = "parameters") -> None:
    """Encode ``image`` into ``fp`` (a path or a binary file) with its infotext: a PNG text chunk (plus the
    other string items of ``existing_pnginfo``), or EXIF UserComment for JPEG/WebP/AVIF."""
    from modules.shared import opts

    fmt = IMAGE_FORMATS.get(extension.lower().lstrip("."))
    if fmt is None:
        raise ValueError(f"unsupported image format {extension!r}")
    geninfo = geninfo if opts.enable_pnginfo else None
    if fmt == "PNG":
        image.save(fp, format="PNG", pnginfo=_pnginfo(geninfo, existing_pnginfo, pnginfo_section_name))
    elif fmt in ("JPEG", "WEBP", "AVIF"):
        if image.mode != "RGB":
            image = image.convert("RGB")
        exif = Image.Exif()
        if geninfo:
            exif[0x8769] = {0x9286: b"UNICODE\0" + geninfo.encode("utf-16-be")}  # Exif IFD: UserComment
        image.save(fp, format=fmt, quality=opts.jpeg_quality, exif=exif)
    else:
        image.save(fp, format=fmt, comment=geninfo or "")


def save_image_with_geninfo(image: Image.Image, geninfo: str | None, filename: str, extension: str | None = None,
                            existing_pnginfo: dict | None = None, pnginfo_section_name: str = "parameters") -> None:
    """Write ``image`` with its infotext (PNG text chunk, or EXIF UserComment for JPEG/WebP), atomically."""
    extension = extension or os.path.splitext(filename)[1]
    with atomic_files.atomic_file(filename, "wb") as f:
        write_image_with_geninfo(image, geninfo, f, extension, existing_pnginfo, pnginfo_section_name)


def save_failure_message(error: OSError, what: str) -> str:
    """What to tell the user when writing a result failed (full disk, permissions): the image itself is kept."""
    where = f" to {error.filename}" if error.filename else ""
    return f"Could not save the {what}{where}: {error.strerror or error}. It is kept in this result only."


def save_image(image: Image.Image, path: str, basename: str, seed: Any = None, prompt: str | None = None,
               extension: str = "png", info: str | None = None, short_filename: bool = False, no_prompt: bool = False,
               grid: bool = False, pnginfo_section_name: str = "parameters", p: Any = None,
               existing_info: dict | None = None, forced_filename: str | None = None, suffix: str = "",
               save_to_dirs: bool | None = None, writer: background_writer.BackgroundWriter | None = None,
               ) -> tuple[str, str | None]:
    """Save like A1111: ``<path>/<date>/<NNNNN>-<pattern>.png``; returns (full path, txt sidecar or None). With a
    ``writer`` the name is chosen (and reserved) now and the file is encoded and written on the writer's thread."""
    from modules import script_callbacks
    from modules.shared import opts

    namegen = FilenameGenerator(p, seed, prompt, image, basename=basename)
    if save_to_dirs is None:
        save_to_dirs = (grid and opts.grid_save_to_dirs) or (not grid and opts.save_to_dirs and not no_prompt)
    if save_to_dirs:
        dirname = namegen.apply(opts.directories_filename_pattern or "[prompt_words]").lstrip(" ").rstrip("\\ /")
        path = os.path.join(path, dirname)
    os.makedirs(path, exist_ok=True)

    if forced_filename is None:
        if short_filename or seed is None:
            file_decoration = ""
        elif opts.save_to_dirs:
            file_decoration = opts.samples_filename_pattern or "[seed]"
        else:
            file_decoration = opts.samples_filename_pattern or "[seed]-[prompt_spaces]"
        file_decoration = namegen.apply(file_decoration) + suffix
        if file_decoration and not file_decoration.startswith("-"):
            file_decoration = "-" + file_decoration
        add_number = opts.save_images_add_number or file_decoration == ""
        if add_number:
            basecount = get_next_sequence_number(path, basename)
            fullfn = ""
            for i in range(500):
                fn = f"{basecount + i:05}" if basename == "" else f"{basename}-{basecount + i:04}"
                fullfn = os.path.join(path, f"{fn}{file_decoration}.{extension}")
                if not os.path.exists(fullfn) and not background_writer.is_reserved(fullfn):
                    break
        else:
            fullfn = os.path.join(path, f"{file_decoration.lstrip('-')}.{extension}")
    else:
        fullfn = os.path.join(path, f"{forced_filename}.{extension}")

    params = script_callbacks.ImageSaveParams(image, p, fullfn, {"parameters": info} if info else {})
    script_callbacks.before_image_saved_callback(params)
    image, fullfn, info = params.image, params.filename, params.pnginfo.get(pnginfo_section_name, info)
    existing = dict(existing_info or getattr(image, "info", {}) or {})
    txt_fullfn = os.path.splitext(fullfn)[0] + ".txt" if opts.save_txt and info is not None else None

    def write() -> None:
        save_image_with_geninfo(image, info, fullfn, extension, existing, pnginfo_section_name)
        if txt_fullfn is not None:
            atomic_files.write_text(txt_fullfn, info + "\n")
        _record_in_history(fullfn, info)
        script_callbacks.image_saved_callback(params)

    image.already_saved_as = fullfn
    if writer is None:
        write()
    else:
        writer.submit("grid" if grid else "image", write, fullfn)
    return fullfn, txt_fullfn


def _record_in_history(path: str, info: str | None) -> None:
    """Add a saved image to the History index; an index that cannot be written never fails the save."""
    from modules import errors
    from modules.history import index

    try:
        index.history().record(path, info)
    except Exception as e:  # noqa: BLE001 - the image is saved; the History notices it at its next refresh
        errors.report(f"History index: could not record {path}: {type(e).__name__}: {e}")


MAX_IMAGE_PIXELS = 200_000_000  # A1111's img_max_size_mp default: 200 megapixels


def read(fp) -> Image.Image:
    """Open an image a user supplied: the format is checked by PIL, the size against a pixel limit
    before decoding (a clear error instead of a decompression bomb)."""
    from modules.errors import UserInputError

    try:
        image = Image.open(fp)
    except Image.DecompressionBombError as e:
        raise UserInputError(f"image: refused, it decodes to too many pixels ({e})") from None
    except (OSError, ValueError) as e:
        raise UserInputError(f"image: not a readable image ({e})") from None
    if image.width * image.height > MAX_IMAGE_PIXELS:
        raise UserInputError(f"image: {image.width}x{image.height} is larger than {MAX_IMAGE_PIXELS // 1_000_000} megapixels")
    try:
        image.load()
    except (OSError, ValueError) as e:
        raise UserInputError(f"image: the file is damaged or truncated ({e})") from None
    return image


def image_grid(imgs: list[Image.Image], batch_size: int = 1, rows: int | None = None) -> Image.Image:
    from modules import script_callbacks
    from modules.shared import opts

    if rows is None:
        if opts.n_rows > 0:
            rows = opts.n_rows
        elif opts.n_rows == 0:
            rows = batch_size
        else:
            rows = math.floor(math.sqrt(len(imgs)))
            while len(imgs) % rows != 0:
                rows -= 1
    cols = math.ceil(len(imgs) / rows)
    params = script_callbacks.ImageGridLoopParams(imgs, cols, rows)
    script_callbacks.image_grid_callback(params)
    w, h = map(max, zip(*(img.size for img in params.imgs)))
    grid = Image.new("RGB", size=(params.cols * w, params.rows * h), color="black")
    for i, img in enumerate(params.imgs):
        grid.paste(img, box=(i % params.cols * w, i // params.cols * h))
    return grid


class Grid(namedtuple("Grid", ["tiles", "tile_w", "tile_h", "image_w", "image_h", "overlap"])):
    """Tiles of an image: ``tiles = [[y, h, [[x, w, tile_image], ...]], ...]`` (A1111's layout)."""

    @property
    def tile_count(self) -> int:
        return sum(len(row) for _, _, row in self.tiles)


def _tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Evenly spread starts of tiles that cover ``length`` with at least ``overlap`` pixels shared."""
    count = max(math.ceil((length - overlap) / (tile - overlap)), 1)
    step = (length - tile) / (count - 1) if count > 1 else 0
    return [max(min(int(i * step), length - tile), 0) for i in range(count)]


def split_grid(image: Image.Image, tile_w: int = 512, tile_h: int = 512, overlap: int = 64) -> Grid:
    """Cut ``image`` into overlapping ``tile_w`` x ``tile_h`` crops (SD upscale, GOBIG)."""
    if not 0 <= overlap < min(tile_w, tile_h):
        raise ValueError(f"overlap {overlap} must be smaller than the tile size {tile_w}x{tile_h}")
    width, height = image.size
    tiles = []
    for y in _tile_starts(height, tile_h, overlap):
        row = [[x, tile_w, image.crop((x, y, x + tile_w, y + tile_h))] for x in _tile_starts(width, tile_w, overlap)]
        tiles.append([y, tile_h, row])
    return Grid(tiles, tile_w, tile_h, width, height, overlap)


def _ramp(width: int, height: int, overlap: int, horizontal: bool) -> Image.Image:
    """An "L" mask rising linearly from 0 to 255 across ``overlap`` pixels."""
    import numpy as np

    ramp = (np.arange(overlap, dtype=np.float32) * 255 / overlap).astype(np.uint8)
    return Image.fromarray(np.tile(ramp, (height, 1)) if horizontal else np.tile(ramp[:, None], (1, width)), "L")


def combine_grid(grid: Grid) -> Image.Image:
    """Reassemble (processed) tiles: each tile's first ``overlap`` columns, then each row's first ``overlap``
    rows, are blended over what is already there through a linear ramp; the rest is pasted opaque."""
    overlap = grid.overlap
    combined = Image.new("RGB", (grid.image_w, grid.image_h))
    for y, h, row in grid.tiles:
        strip = Image.new("RGB", (grid.image_w, h))
        for x, w, tile in row:
            if x == 0 or overlap == 0:
                strip.paste(tile, (x, 0))
                continue
            strip.paste(tile.crop((0, 0, overlap, h)), (x, 0), mask=_ramp(overlap, h, overlap, horizontal=True))
            strip.paste(tile.crop((overlap, 0, w, h)), (x + overlap, 0))
        if y == 0 or overlap == 0:
            combined.paste(strip, (0, y))
            continue
        combined.paste(strip.crop((0, 0, grid.image_w, overlap)), (0, y),
                       mask=_ramp(grid.image_w, overlap, overlap, horizontal=False))
        combined.paste(strip.crop((0, overlap, grid.image_w, h)), (0, y + overlap))
    return combined


RESIZE_MODES = ["Just resize", "Crop and resize", "Resize and fill", "Just resize (latent upscale)"]


def resize_image(resize_mode: int, im: Image.Image, width: int, height: int, upscaler_name: str | None = None) -> Image.Image:
    """Fit ``im`` to width x height. 0 stretches; 1 scales to cover and crops the centre; 2 scales to fit and
    fills the borders by stretching the image's edge rows or columns; 3 (latent upscale) resizes like 0 here.

    Enlarging goes through ``upscaler_name`` (a pixel upscaler such as Lanczos); masks and shrinking use Lanczos.
    """
    from modules import upscaler

    def resize(image: Image.Image, w: int, h: int) -> Image.Image:
        if not upscaler_name or upscaler_name == "None" or image.mode == "L":
            return image.resize((w, h), resample=Image.LANCZOS)
        if max(w / image.width, h / image.height) > 1.0:
            image = upscaler.find(upscaler_name).scaler.upscale(image, max(w / image.width, h / image.height))
        return image if image.size == (w, h) else image.resize((w, h), resample=Image.LANCZOS)

    if resize_mode not in (1, 2):
        return resize(im, width, height)
    ratio, src_ratio = width / height, im.width / im.height
    cover = (ratio > src_ratio) if resize_mode == 1 else (ratio < src_ratio)
    src_w, src_h = (width, im.height * width // im.width) if cover else (im.width * height // im.height, height)
    resized = resize(im, src_w, src_h)
    result = Image.new(im.mode if im.mode in ("L", "RGBA") else "RGB", (width, height))
    left, top = width // 2 - src_w // 2, height // 2 - src_h // 2
    result.paste(resized, box=(left, top))
    if resize_mode == 2:
        if top > 0:  # stretch the first and last rows over the empty bands
            result.paste(resized.resize((width, top), box=(0, 0, width, 0)), box=(0, 0))
            bottom = height - (top + src_h)
            if bottom > 0:
                result.paste(resized.resize((width, bottom), box=(0, src_h, width, src_h)), box=(0, top + src_h))
        if left > 0:
            result.paste(resized.resize((left, height), box=(0, 0, 0, height)), box=(0, 0))
            right = width - (left + src_w)
            if right > 0:
                result.paste(resized.resize((right, height), box=(src_w, 0, src_w, height)), box=(left + src_w, 0))
    return result


def flatten(img: Image.Image, bgcolor: str) -> Image.Image:
    """Composite an image with transparency over ``bgcolor``; opaque images are returned as RGB."""
    if img.mode == "RGBA" or (img.mode in ("LA", "P") and "transparency" in img.info) or img.mode == "LA":
        img = img.convert("RGBA")
        background = Image.new("RGBA", img.size, bgcolor)
        background.paste(img, mask=img)
        img = background
    return img.convert("RGB")
