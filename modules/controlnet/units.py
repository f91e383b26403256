"""ControlNet units as the A1111 extension's API takes them (``alwayson_scripts: {"controlnet": {"args": [unit, ...]}}``):
the fields, the value names and indices real clients send, sizing the hint to the job, and the infotext entry."""
from __future__ import annotations

import re
from dataclasses import dataclass, field, fields
from typing import Any

from modules.errors import UserInputError

RESIZE_MODES = ("Just Resize", "Crop and Resize", "Resize and Fill")
RESIZE_ALIASES = {"Envelope (Outer Fit)": "Resize and Fill", "Scale to Fit (Inner Fit)": "Crop and Resize",
                  "Inner Fit (Scale to Fit)": "Crop and Resize", "Outer Fit (Shrink to Fit)": "Resize and Fill"}
CONTROL_MODES = ("Balanced", "My prompt is more important", "ControlNet is more important")
HR_OPTIONS = ("Both", "Low res only", "High res only")  # which hires fix passes a unit applies to
MAX_PROCESSOR_RES = 4096  # the page's slider stops at 2048; larger only costs memory


@dataclass
class UnitRequest:
    enabled: bool = True
    module: str = "none"
    model: str = "None"
    weight: float = 1.0
    image: Any = None  # a PIL image (decoded), or None: the img2img input
    mask: Any = None
    resize_mode: str = "Crop and Resize"
    processor_res: int = 512
    threshold_a: float = -1
    threshold_b: float = -1
    guidance_start: float = 0.0
    guidance_end: float = 1.0
    control_mode: str = "Balanced"
    pixel_perfect: bool = False
    low_vram: bool = False
    hr_option: str = "Both"
    save_detected_map: bool = True  # the preprocessor's output is appended to the job's images
    extra: dict = field(default_factory=dict)  # fields of newer extension versions, accepted and not used

    @property
    def uses_model(self) -> bool:
        return self.enabled and str(self.model or "None") != "None"

    def applies_to(self, hires_pass: bool) -> bool:
        return self.hr_option == "Both" or (self.hr_option == "High res only") == hires_pass


def _choice(value: Any, names: tuple, aliases: dict, what: str) -> str:
    if isinstance(value, bool):
        raise UserInputError(f"{what} must be one of {', '.join(names)} (or its index)")
    if isinstance(value, (int, float)) and int(value) == value and 0 <= int(value) < len(names):
        return names[int(value)]
    text = aliases.get(str(value), str(value))
    for name in names:
        if text.lower() == name.lower():
            return name
    raise UserInputError(f"{what} {value!r} is not one of {', '.join(names)} (or its index)")


def parse(value: Any, index: int, decode_image) -> UnitRequest | None:
    """A unit from an API value (a dict with the extension's field names, or None); ``decode_image`` turns the
    base64 text into a PIL image. Errors name the unit and the field."""
    if value is None:
        return None
    if isinstance(value, UnitRequest):
        return value
    if not isinstance(value, dict):
        raise UserInputError(f"controlnet unit {index}: must be an object with the extension's fields")
    where = f"controlnet unit {index}"
    data = dict(value)
    if "input_image" in data and data.get("image") is None:
        data["image"] = data.pop("input_image")
    data.pop("input_image", None)
    if "guessmode" in data:  # the extension's oldest API: guess mode is "ControlNet is more important"
        data.setdefault("control_mode", 2 if data.pop("guessmode") else 0)
    known = {f.name for f in fields(UnitRequest)} - {"extra"}
    unit = UnitRequest(extra={key: data[key] for key in data if key not in known})
    for key in known & set(data):
        raw = data[key]
        try:
            if key in ("enabled", "pixel_perfect", "low_vram", "save_detected_map"):
                setattr(unit, key, bool(raw))
            elif key in ("weight", "threshold_a", "threshold_b", "guidance_start", "guidance_end"):
                setattr(unit, key, float(raw))
            elif key == "processor_res":
                setattr(unit, key, int(raw))
            elif key in ("module", "model"):
                setattr(unit, key, "None" if raw is None and key == "model" else str(raw or "none"))
        except (TypeError, ValueError):
            raise UserInputError(f"{where}: {key} {raw!r} is not a {'number' if key != 'enabled' else 'boolean'}") from None
    unit.resize_mode = _choice(data.get("resize_mode", unit.resize_mode), RESIZE_MODES, RESIZE_ALIASES,
                               f"{where}: resize_mode")
    unit.control_mode = _choice(data.get("control_mode", unit.control_mode), CONTROL_MODES, {},
                                f"{where}: control_mode")
    unit.hr_option = _choice(data.get("hr_option", unit.hr_option), HR_OPTIONS, {}, f"{where}: hr_option")
    if unit.processor_res <= 0:  # clients send -1 for "the default"
        unit.processor_res = 512
    if unit.processor_res > MAX_PROCESSOR_RES:
        raise UserInputError(f"{where}: processor_res {unit.processor_res} is above {MAX_PROCESSOR_RES}")
    if not 0 <= unit.guidance_start <= unit.guidance_end <= 1:
        raise UserInputError(f"{where}: guidance_start {unit.guidance_start} and guidance_end {unit.guidance_end} must "
                             f"satisfy 0 <= start <= end <= 1")
    image = data.get("image")
    if isinstance(image, dict) and "background" in image:  # the page's image editor: the picture and painted mask
        from modules.masking import mask_from_layers

        data["mask"] = data.get("mask") or mask_from_layers(image)
        image = image.get("background")
    elif isinstance(image, dict):  # the extension's {"image": ..., "mask": ...}
        data["mask"] = data.get("mask") or image.get("mask")
        image = image.get("image")
    unit.image = _picture(image, f"{where}: image", decode_image)
    unit.mask = _picture(data.get("mask"), f"{where}: mask", decode_image)
    return unit


def _picture(value: Any, field: str, decode_image) -> Any:
    """A PIL image from the page (already one) or the API (base64 text); None when there is none."""
    if isinstance(value, str):
        return decode_image(value, field) if value else None
    return value if hasattr(value, "convert") else None


def pixel_perfect_resolution(picture_size: tuple[int, int], target: tuple[int, int], resize_mode: str) -> int:
    """The preprocessor resolution at which the hint has the job's pixel size (the extension's "Pixel Perfect")."""
    (raw_w, raw_h), (target_w, target_h) = picture_size, target
    k_h, k_w = target_h / raw_h, target_w / raw_w
    if resize_mode == "Resize and Fill":
        scale = min(k_h, k_w)
    elif resize_mode == "Crop and Resize":
        scale = max(k_h, k_w)
    else:
        scale = (k_h + k_w) / 2
    return int(round(scale * min(raw_w, raw_h)))


def fit(hint: Any, width: int, height: int, resize_mode: str):
    """The hint (PIL) at the job's size: stretched (Just Resize), covering then centre-cropped (Crop and Resize) or
    fitted inside on black (Resize and Fill)."""
    from PIL import Image

    if hint.size == (width, height):
        return hint
    if resize_mode == "Just Resize":
        return hint.resize((width, height), Image.LANCZOS)
    scale = (max if resize_mode == "Crop and Resize" else min)(width / hint.width, height / hint.height)
    size = (max(1, round(hint.width * scale)), max(1, round(hint.height * scale)))
    resized = hint.resize(size, Image.LANCZOS)
    canvas = Image.new(hint.mode, (width, height))  # RGBA: the filled border is transparent, masked (outpainting)
    canvas.paste(resized, ((width - size[0]) // 2, (height - size[1]) // 2))
    return canvas


def infotext(unit: UnitRequest, model_title: str, preprocessor: Any, processor_res: int) -> str:
    """The extension's ``ControlNet N`` value (quoted by the infotext writer), with only the fields that took effect:
    no resolution or Pixel Perfect for a preprocessor without a resolution, no thresholds it does not have, no
    control mode for an IP-Adapter (``preprocessor.embeds``)."""
    parts = [("Module", unit.module), ("Model", model_title), ("Weight", unit.weight),
             ("Resize Mode", unit.resize_mode)]
    if preprocessor.uses_resolution:
        parts.append(("Processor Res", processor_res))
    parts += [(name, value) for name, value, slider in (("Threshold A", unit.threshold_a, preprocessor.threshold_a),
                                                        ("Threshold B", unit.threshold_b, preprocessor.threshold_b))
              if slider is not None]
    parts += [("Guidance Start", unit.guidance_start), ("Guidance End", unit.guidance_end)]
    if preprocessor.uses_resolution:
        parts.append(("Pixel Perfect", unit.pixel_perfect))
    if not preprocessor.embeds:
        parts.append(("Control Mode", unit.control_mode))
    parts.append(("Hr Option", unit.hr_option))
    return ", ".join(f"{key}: {value}" for key, value in parts)


INFOTEXT_FIELDS = {"Module": "module", "Model": "model", "Weight": "weight", "Resize Mode": "resize_mode",
                   "Processor Res": "processor_res", "Threshold A": "threshold_a", "Threshold B": "threshold_b",
                   "Guidance Start": "guidance_start", "Guidance End": "guidance_end", "Pixel Perfect": "pixel_perfect",
                   "Control Mode": "control_mode", "Hr Option": "hr_option"}
_ENTRY_PART = re.compile(r"\s*([A-Za-z][A-Za-z ]*?):\s*(.*?)\s*(?:,(?=\s*[A-Za-z][A-Za-z ]*:)|$)")


def from_infotext(entry: Any) -> dict | None:
    """The API unit (the extension's field names) a ``ControlNet N`` infotext value describes; None when there is no
    entry. Values stay text where the unit parser takes text; unknown parts are ignored, as the extension does."""
    if not entry:
        return None
    unit: dict[str, Any] = {"enabled": True}
    for key, value in _ENTRY_PART.findall(str(entry)):
        field_name = INFOTEXT_FIELDS.get(key.strip())
        if field_name is None:
            continue
        if field_name == "pixel_perfect":
            unit[field_name] = value.lower() == "true"
        elif field_name in ("weight", "processor_res", "threshold_a", "threshold_b", "guidance_start", "guidance_end"):
            try:
                unit[field_name] = float(value) if field_name != "processor_res" else int(float(value))
            except ValueError:
                continue
        else:
            unit[field_name] = value
    return unit
