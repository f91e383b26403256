"""Inpainting masks: binary masks from user images, blur, the crop around the mask for "Only masked",
the "fill" masked content, overlays that paste the untouched pixels back, and colour correction."""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageFilter, ImageOps


def create_binary_mask(image: Image.Image, round: bool = True) -> Image.Image:
    """An "L" mask (255 = repaint): the alpha channel when the image has real transparency, else its grey levels."""
    if image.mode == "RGBA" and image.getextrema()[-1] != (255, 255):
        image = image.split()[-1]
    else:
        image = image.convert("L")
    if round:
        image = image.point(lambda x: 255 if x > 128 else 0)
    return image


def mask_from_layers(editor: dict | None) -> Image.Image | None:
    """The painted strokes of a Gradio ImageEditor value as an "L" mask (255 where any layer is not transparent);
    None when nothing is painted."""
    from PIL import ImageChops

    mask = None
    for layer in (editor or {}).get("layers") or []:
        if layer is None:
            continue
        alpha = layer.convert("RGBA").getchannel("A")
        mask = alpha if mask is None else ImageChops.lighter(mask, alpha)
    if mask is None or mask.getbbox() is None:
        return None
    return mask.point(lambda v: 255 if v > 0 else 0)


def blur(mask: Image.Image, blur_x: int, blur_y: int) -> Image.Image:
    """Gaussian blur with separate horizontal and vertical strength (A1111 ``Mask blur``)."""
    if blur_x <= 0 and blur_y <= 0:
        return mask
    return mask.filter(ImageFilter.GaussianBlur(radius=(max(blur_x, 0), max(blur_y, 0))))


def get_crop_region(mask: Image.Image, pad: int = 0) -> tuple[int, int, int, int] | None:
    """The box (x1, y1, x2, y2) around the mask's non-zero pixels, widened by ``pad`` and kept inside the
    image; None for an empty mask."""
    box = mask.convert("L").getbbox()
    if box is None:
        return None
    x1, y1, x2, y2 = box
    return max(x1 - pad, 0), max(y1 - pad, 0), min(x2 + pad, mask.width), min(y2 + pad, mask.height)


def expand_crop_region(region: tuple[int, int, int, int], width: int, height: int, image_width: int,
                       image_height: int) -> tuple[int, int, int, int]:
    """Grow ``region`` to the aspect ratio width:height (so the crop scales to the render size without
    distortion), shifting it back inside the image where it would cross an edge."""
    x1, y1, x2, y2 = region
    if (x2 - x1) / (y2 - y1) > width / height:
        y1, y2 = _grow(y1, y2, (x2 - x1) * height / width, image_height)
    else:
        x1, x2 = _grow(x1, x2, (y2 - y1) * width / height, image_width)
    return x1, y1, x2, y2


def _grow(start: int, end: int, desired: float, limit: int) -> tuple[int, int]:
    extra = int(desired - (end - start))
    start -= extra // 2
    end += extra - extra // 2
    if end > limit:
        start -= end - limit
        end = limit
    if start < 0:
        end = min(end - start, limit)
        start = 0
    return start, end


def fill(image: Image.Image, mask: Image.Image) -> Image.Image:
    """Replace the masked area with blurred colours of its surroundings ("fill" masked content): premultiplied
    blurs of the unmasked pixels at falling radii, each composited over the last, then the original on top."""
    keep = ImageOps.invert(mask.convert("L"))
    source = Image.new("RGBa", image.size)
    source.paste(image.convert("RGBA").convert("RGBa"), mask=keep)
    result = Image.new("RGBA", image.size)
    for radius, repeats in ((256, 1), (64, 1), (16, 2), (4, 4), (2, 2), (0, 1)):
        blurred = source.filter(ImageFilter.GaussianBlur(radius)).convert("RGBA") if radius else source.convert("RGBA")
        for _ in range(repeats):
            result.alpha_composite(blurred)
    return result.convert("RGB")


def overlay(image: Image.Image, mask_for_overlay: Image.Image) -> Image.Image:
    """``image`` as RGBA, transparent where the mask says repaint: composited over a result, it restores the
    untouched pixels exactly."""
    masked = Image.new("RGBa", image.size)
    masked.paste(image.convert("RGBA").convert("RGBa"), mask=ImageOps.invert(mask_for_overlay.convert("L")))
    return masked.convert("RGBA")


def apply_overlay(image: Image.Image, paste_loc: tuple[int, int, int, int] | None, overlay_image: Image.Image | None) -> Image.Image:
    """Put a result back into the full picture: an "Only masked" crop is scaled into its box first, then the
    overlay of untouched pixels goes on top."""
    from modules import images

    if overlay_image is None:
        return image
    if paste_loc is not None:
        x, y, w, h = paste_loc
        base = Image.new("RGBA", overlay_image.size)
        base.paste(images.resize_image(1, image, w, h), (x, y))
        image = base
    image = image.convert("RGBA")
    image.alpha_composite(overlay_image)
    return image.convert("RGB")


def _lab_transforms():
    from PIL import ImageCms

    srgb, lab = ImageCms.createProfile("sRGB"), ImageCms.createProfile("LAB")
    return (ImageCms.buildTransformFromOpenProfiles(srgb, lab, "RGB", "LAB"),
            ImageCms.buildTransformFromOpenProfiles(lab, srgb, "LAB", "RGB"))


def setup_color_correction(image: Image.Image) -> np.ndarray:
    """The target for colour correction: the image's colours in Lab."""
    to_lab, _ = _lab_transforms()
    return np.asarray(to_lab.apply(image.convert("RGB")))


def match_histogram(source: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """``source``'s values mapped so that their distribution is ``reference``'s (one channel; any shapes)."""
    values, inverse, counts = np.unique(source.ravel(), return_inverse=True, return_counts=True)
    ref_values, ref_counts = np.unique(reference.ravel(), return_counts=True)
    quantiles = np.cumsum(counts) / source.size
    ref_quantiles = np.cumsum(ref_counts) / reference.size
    return np.interp(quantiles, ref_quantiles, ref_values)[inverse].reshape(source.shape)


def apply_color_correction(correction: np.ndarray, original_image: Image.Image) -> Image.Image:
    """Match the histogram of each Lab channel of ``original_image`` to ``correction`` (A1111's colour
    correction toward the init image)."""
    to_lab, to_rgb = _lab_transforms()
    lab = np.asarray(to_lab.apply(original_image.convert("RGB")))
    matched = np.stack([match_histogram(lab[..., c], correction[..., c]) for c in range(3)], axis=-1)
    return to_rgb.apply(Image.fromarray(np.clip(matched.round(), 0, 255).astype(np.uint8), "LAB"))
