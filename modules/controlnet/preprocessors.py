"""ControlNet preprocessors (the A1111 extension's "modules"): an input picture -> the hint image a ControlNet takes.

Built so far: ``none``, ``invert (from white bg & black line)`` (alias ``invert``) and ``canny`` (OpenCV; thresholds
A and B are its low and high thresholds, 100 and 200 by default). The picture is first scaled so that its short side
is the preprocessor resolution, as the extension does.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from modules.errors import UserInputError


@dataclass(frozen=True)
class Preprocessor:
    name: str
    run: Callable[[np.ndarray, float, float], np.ndarray]  # (H, W, 3) uint8 RGB, threshold a, b -> (H, W, 3) uint8
    uses_resolution: bool = True
    threshold_a: tuple[str, float, float, float] | None = None  # (label, minimum, maximum, default)
    threshold_b: tuple[str, float, float, float] | None = None


def _canny(image: np.ndarray, low: float, high: float) -> np.ndarray:
    import cv2

    edges = cv2.Canny(image, int(low), int(high))
    return np.repeat(edges[:, :, None], 3, axis=2)


PREPROCESSORS = {p.name: p for p in (
    Preprocessor("none", lambda image, a, b: image, uses_resolution=False),
    Preprocessor("invert (from white bg & black line)", lambda image, a, b: 255 - image),
    Preprocessor("canny", _canny, threshold_a=("Low Threshold", 1, 255, 100), threshold_b=("High Threshold", 1, 255, 200)),
)}
ALIASES = {"invert": "invert (from white bg & black line)"}


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


def run(name: str, picture: Any, resolution: int = 512, threshold_a: float | None = None,
        threshold_b: float | None = None):
    """The hint image (PIL RGB) of ``picture`` (PIL) for preprocessor ``name``."""
    from PIL import Image

    preprocessor = find(name)
    image = np.asarray(picture.convert("RGB"))
    if preprocessor.uses_resolution and resolution and resolution > 0:
        image = scale_to_resolution(image, int(resolution))
    a, b = thresholds(name, threshold_a, threshold_b)
    return Image.fromarray(np.ascontiguousarray(preprocessor.run(image, a, b)))
