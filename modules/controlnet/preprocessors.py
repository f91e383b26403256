"""ControlNet preprocessors (the A1111 extension's "modules"): an input picture -> the hint image a ControlNet takes.

OpenCV ones here: ``none``, ``invert``, ``canny`` (thresholds A and B are OpenCV's low and high thresholds),
``scribble_xdog`` (difference of Gaussians, threshold A), ``lineart_standard`` (a picture's dark lines against its
blur), ``tile_resample`` (downsampled by threshold A), ``shuffle`` (content shuffle), ``blur_gaussian``,
``recolor_luminance``/``recolor_intensity`` (gamma-corrected lightness / value), ``threshold`` (binarised), ``inpaint``/``inpaint_only`` (the masked pixels marked -1,
the inpaint ControlNet's input rule: an RGBA hint whose transparent pixels are the masked ones). The neural ones
(depth, normal map, pose, segmentation) are in :mod:`modules.controlnet.annotators`. The picture is first scaled so
that its short side is the preprocessor resolution, as the extension does.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from modules.errors import UserInputError


@dataclass(frozen=True)
class Preprocessor:
    name: str
    run: Callable[..., np.ndarray]  # (H, W, 3) uint8 RGB, threshold a, b (masked: the mask) -> (H, W, 3 or 4) uint8
    uses_resolution: bool = True
    threshold_a: tuple[str, float, float, float] | None = None  # (label, minimum, maximum, default)
    threshold_b: tuple[str, float, float, float] | None = None
    masked: bool = False  # run takes (image, mask) instead: the inpaint rule
    embeds: bool = False  # an IP-Adapter image encoder: makes embeddings, not a hint image


def _canny(image: np.ndarray, low: float, high: float) -> np.ndarray:
    import cv2

    edges = cv2.Canny(image, int(low), int(high))
    return np.repeat(edges[:, :, None], 3, axis=2)


def _scribble_xdog(image: np.ndarray, threshold: float, _b: float) -> np.ndarray:
    """White where the difference of two Gaussian blurs (sigma 0.5 and 5) darkens a channel by more than half the
    threshold, black elsewhere."""
    import cv2

    pixels = image.astype(np.float32)
    fine, coarse = cv2.GaussianBlur(pixels, (0, 0), 0.5), cv2.GaussianBlur(pixels, (0, 0), 5.0)
    darkening = np.clip(-np.min(coarse - fine, axis=2), 0, 255).astype(np.uint8).astype(np.float32)
    lines = np.where(2 * darkening > threshold, 255, 0).astype(np.uint8)
    return np.repeat(lines[:, :, None], 3, axis=2)


def _lineart_standard(image: np.ndarray, _a: float, _b: float) -> np.ndarray:
    """How much darker each pixel is than its blur (sigma 6), scaled so the median line is mid-grey."""
    import cv2

    pixels = image.astype(np.float32)
    intensity = np.min(cv2.GaussianBlur(pixels, (0, 0), 6.0) - pixels, axis=2).clip(0, 255)
    lines = intensity[intensity > 8]
    intensity = intensity / max(16.0, float(np.median(lines)) if lines.size else 0.0) * 127
    return np.repeat(intensity.clip(0, 255).astype(np.uint8)[:, :, None], 3, axis=2)


def _tile_resample(image: np.ndarray, rate: float, _b: float) -> np.ndarray:
    import cv2

    if rate < 1.1:
        return image
    height, width = image.shape[:2]
    return cv2.resize(image, (max(1, int(width / rate)), max(1, int(height / rate))), interpolation=cv2.INTER_AREA)


def _blur(image: np.ndarray, sigma: float, _b: float) -> np.ndarray:
    import cv2

    return cv2.GaussianBlur(image, (0, 0), max(float(sigma), 0.01))


def _gamma_gray(values: np.ndarray, gamma: float) -> np.ndarray:
    corrected = (values.astype(np.float32) / 255.0) ** float(gamma)
    return np.repeat((corrected * 255.0).clip(0, 255).astype(np.uint8)[:, :, None], 3, axis=2)


def _recolor_luminance(image: np.ndarray, gamma: float, _b: float) -> np.ndarray:
    """The picture's lightness (L of L*a*b*), gamma-corrected: the recolor ControlNets' input."""
    import cv2

    return _gamma_gray(cv2.cvtColor(image, cv2.COLOR_RGB2LAB)[:, :, 0], gamma)


def _recolor_intensity(image: np.ndarray, gamma: float, _b: float) -> np.ndarray:
    """The picture's value (V of HSV: the brightest channel), gamma-corrected."""
    import cv2

    return _gamma_gray(cv2.cvtColor(image, cv2.COLOR_RGB2HSV)[:, :, 2], gamma)


def _threshold(image: np.ndarray, level: float, _b: float) -> np.ndarray:
    """White where every channel is above the level, black elsewhere."""
    result = np.zeros_like(image)
    result[np.min(image, axis=2) > level] = 255
    return result


def _smooth_noise(rng: np.random.Generator, height: int, width: int, cell: int) -> np.ndarray:
    """Noise varying smoothly over about ``cell`` pixels, scaled to 0..1."""
    import cv2

    coarse = rng.uniform(0, 1, size=(height // cell + 2, width // cell + 2)).astype(np.float32)
    noise = cv2.resize(coarse, (width + 2 * cell, height + 2 * cell), interpolation=cv2.INTER_CUBIC)
    noise = noise[cell:cell + height, cell:cell + width]
    noise -= noise.min()
    return noise / max(float(noise.max()), 1e-6)


def _shuffle(image: np.ndarray, _a: float, _b: float) -> np.ndarray:
    """The content shuffle ControlNet's input: the picture remapped through a smooth random flow (from a fixed seed,
    so that a job is reproducible)."""
    import cv2

    height, width = image.shape[:2]
    rng = np.random.default_rng(0)
    x = _smooth_noise(rng, height, width, 256) * float(width - 1)
    y = _smooth_noise(rng, height, width, 256) * float(height - 1)
    return cv2.remap(image, x, y, cv2.INTER_LINEAR)


def _inpaint(image: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """RGBA: the picture, transparent where the mask is set (the pixels the inpaint ControlNet gets as -1)."""
    alpha = np.full(image.shape[:2], 255, dtype=np.uint8)
    if mask is not None:
        alpha[mask > 127] = 0
    return np.concatenate([image[:, :, :3], alpha[:, :, None]], axis=2)


def _annotator(function: str, *arguments) -> Callable[[np.ndarray, float, float], np.ndarray]:
    def run(image: np.ndarray, a: float, _b: float) -> np.ndarray:
        from modules.controlnet import annotators

        return getattr(annotators, function)(image, *[a if argument is THRESHOLD_A else argument
                                                      for argument in arguments])
    return run


THRESHOLD_A = object()  # stands for threshold A in an annotator's arguments

PREPROCESSORS = {p.name: p for p in (
    Preprocessor("none", lambda image, a, b: image, uses_resolution=False),
    Preprocessor("invert (from white bg & black line)", lambda image, a, b: 255 - image),
    Preprocessor("canny", _canny, threshold_a=("Low Threshold", 1, 255, 100), threshold_b=("High Threshold", 1, 255, 200)),
    Preprocessor("depth_midas", _annotator("depth_map", "depth_midas")),
    Preprocessor("depth_anything_v2", _annotator("depth_map", "depth_anything_v2")),
    Preprocessor("normal_midas", _annotator("normal_map", THRESHOLD_A),
                 threshold_a=("Normal Background Threshold", 0, 1, 0.4)),
    Preprocessor("openpose", _annotator("openpose")),
    Preprocessor("seg_segformer_ade20k", _annotator("segmentation")),
    Preprocessor("softedge_hed", _annotator("soft_edges", False)),
    Preprocessor("softedge_hedsafe", _annotator("soft_edges", True)),
    Preprocessor("scribble_hed", _annotator("scribble")),
    Preprocessor("scribble_xdog", _scribble_xdog, threshold_a=("XDoG Threshold", 1, 64, 32)),
    Preprocessor("lineart_standard (from white bg & black line)", _lineart_standard),
    Preprocessor("lineart_realistic", _annotator("line_art", "realistic")),
    Preprocessor("lineart_coarse", _annotator("line_art", "coarse")),
    Preprocessor("tile_resample", _tile_resample, uses_resolution=False,
                 threshold_a=("Down Sampling Rate", 1, 8, 1)),
    Preprocessor("shuffle", _shuffle),
    Preprocessor("blur_gaussian", _blur, threshold_a=("Sigma", 0.01, 64, 9.0)),
    Preprocessor("recolor_luminance", _recolor_luminance, threshold_a=("Gamma Correction", 0.1, 2.0, 1.0)),
    Preprocessor("recolor_intensity", _recolor_intensity, threshold_a=("Gamma Correction", 0.1, 2.0, 1.0)),
    Preprocessor("threshold", _threshold, threshold_a=("Binarization Threshold", 0, 255, 127)),
    Preprocessor("inpaint", _inpaint, uses_resolution=False, masked=True),
    Preprocessor("inpaint_only", _inpaint, uses_resolution=False, masked=True),
    Preprocessor("ip-adapter_clip_h", lambda image, a, b: image, uses_resolution=False, embeds=True),
    Preprocessor("ip-adapter_clip_g", lambda image, a, b: image, uses_resolution=False, embeds=True),
)}
# the extension's other names for these; its seg_ofade20k (OneFormer) and seg_ufade20k (UniFormer) run SegFormer here,
# which paints the same ADE20k palette
ALIASES = {"invert": "invert (from white bg & black line)", "depth": "depth_midas", "normal_map": "normal_midas",
           "depth_anything": "depth_anything_v2", "segmentation": "seg_segformer_ade20k",
           "seg_ofade20k": "seg_segformer_ade20k", "seg_ufade20k": "seg_segformer_ade20k",
           "lineart_standard": "lineart_standard (from white bg & black line)", "hed": "softedge_hed", "fake_scribble": "scribble_hed",
           # the extension's IP-Adapter encoder names
           "ip-adapter_clip_sd15": "ip-adapter_clip_h", "ip-adapter_clip_sdxl_plus_vith": "ip-adapter_clip_h",
           "ip-adapter_clip_sdxl": "ip-adapter_clip_g", "ip-adapter_clip_bigg": "ip-adapter_clip_g"}


def find(name: str) -> Preprocessor:
    found = PREPROCESSORS.get(ALIASES.get(name, name))
    if found is None:
        raise UserInputError(f"preprocessor {name!r} is not available; available: {', '.join(PREPROCESSORS)}")
    return found


def scale_to_resolution(image: np.ndarray, resolution: int) -> np.ndarray:
    """Scale so that the short side is ``resolution`` (area filter down, cubic up)."""
    import cv2

    height, width = image.shape[:2]
    k = float(resolution) / min(height, width)
    size = (max(1, round(width * k)), max(1, round(height * k)))
    if size == (width, height):
        return image
    return cv2.resize(image, size, interpolation=cv2.INTER_CUBIC if k > 1 else cv2.INTER_AREA)


def thresholds(name: str, threshold_a: float | None, threshold_b: float | None) -> tuple[float, float]:
    """The thresholds a preprocessor runs with: the given ones, or its defaults for missing or negative ones."""
    preprocessor = find(name)
    a = threshold_a if threshold_a is not None and threshold_a >= 0 else (preprocessor.threshold_a or (0, 0, 0, 0))[3]
    b = threshold_b if threshold_b is not None and threshold_b >= 0 else (preprocessor.threshold_b or (0, 0, 0, 0))[3]
    return float(a), float(b)


def canonical(name: str) -> str:
    return find(name).name


def run(name: str, picture: Any, resolution: int = 512, threshold_a: float | None = None,
        threshold_b: float | None = None, mask: Any = None):
    """The hint image of ``picture`` (PIL) for preprocessor ``name``: PIL RGB, or RGBA for the inpaint ones
    (``mask``: PIL, white = masked)."""
    from PIL import Image

    preprocessor = find(name)
    if preprocessor.embeds:
        raise UserInputError(f"{preprocessor.name} makes image embeddings for an IP-Adapter model, not a hint image "
                             f"to preview")
    image = np.asarray(picture.convert("RGB"))
    if preprocessor.uses_resolution and resolution and resolution > 0:
        image = scale_to_resolution(image, int(resolution))
    if preprocessor.masked:
        size = (image.shape[1], image.shape[0])
        mask_array = None if mask is None else np.asarray(mask.convert("L").resize(size, Image.NEAREST))
        return Image.fromarray(np.ascontiguousarray(preprocessor.run(image, mask_array)), "RGBA")
    a, b = thresholds(name, threshold_a, threshold_b)
    return Image.fromarray(np.ascontiguousarray(preprocessor.run(image, a, b)))
