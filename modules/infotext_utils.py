"""Infotext: the A1111 generation-parameters text stored in images (write and parse).

Format::

    <prompt, may span lines>
    Negative prompt: <negative prompt, may span lines>
    Steps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 1, Size: 512x512, ...
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Callable

re_param_code = r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)'
re_param = re.compile(re_param_code)
re_imagesize = re.compile(r"^(\d+)x(\d+)$")


def quote(text: Any) -> str:
    """Values containing ``,`` ``:`` or a newline are written as JSON strings (non-ASCII kept)."""
    text = str(text)
    if "," not in text and "\n" not in text and ":" not in text:
        return text
    return json.dumps(text, ensure_ascii=False)


def unquote(text: str) -> str:
    if len(text) == 0 or text[0] != '"' or text[-1] != '"':
        return text
    try:
        return json.loads(text)
    except ValueError:
        return text


def build_infotext(prompt: str, negative_prompt: str, params: dict[str, Any]) -> str:
    """Join prompt, negative prompt and the ``Key: value`` line; None values are left out, and a value
    equal to its key is written bare."""
    line = ", ".join(k if k == v else f"{k}: {quote(v)}" for k, v in params.items() if v is not None)
    negative = f"\nNegative prompt: {negative_prompt}" if negative_prompt else ""
    return f"{prompt}{negative}\n{line}".strip()


def parse_generation_parameters(x: str, skip_fields: list[str] | None = None) -> dict[str, Any]:
    """Parse an infotext into a dict: ``Prompt``, ``Negative prompt`` and every key of the parameter line
    (``WxH`` values also as ``Key-1``/``Key-2``), with A1111's defaults for absent keys."""
    res: dict[str, Any] = {}
    prompt = ""
    negative_prompt = ""
    done_with_prompt = False
    *lines, lastline = x.strip().split("\n")
    if len(re_param.findall(lastline)) < 3:
        lines.append(lastline)
        lastline = ""
    for line in lines:
        line = line.strip()
        if line.startswith("Negative prompt:"):
            done_with_prompt = True
            line = line[16:].strip()
        if done_with_prompt:
            negative_prompt += ("" if negative_prompt == "" else "\n") + line
        else:
            prompt += ("" if prompt == "" else "\n") + line
    for k, v in re_param.findall(lastline):
        try:
            if v and v[0] == '"' and v[-1] == '"':
                v = unquote(v)
            m = re_imagesize.match(v)
            if m is not None:
                res[f"{k}-1"] = m.group(1)
                res[f"{k}-2"] = m.group(2)
            else:
                res[k] = v
        except Exception:
            pass
    hypernet = res.pop("Hypernet", None)
    if hypernet:  # older A1111 images: the hypernetwork became a prompt tag
        strength = res.pop("Hypernet strength", "1.0")
        prompt += f"<hypernet:{hypernet}:{strength}>"
    res.pop("Hypernet hash", None)
    res["Prompt"] = prompt
    res["Negative prompt"] = negative_prompt
    defaults = {
        "Clip skip": "1", "Hires resize-1": 0, "Hires resize-2": 0, "Hires sampler": "Use same sampler",
        "Hires schedule type": "Use same scheduler", "Hires checkpoint": "Use same checkpoint",
        "Hires prompt": "", "Hires negative prompt": "", "Mask mode": "Inpaint masked",
        "Masked content": "original", "Inpaint area": "Whole picture", "Masked area padding": 32,
        "RNG": "GPU", "Schedule type": "Automatic", "Schedule max sigma": 0, "Schedule min sigma": 0,
        "Schedule rho": 0, "VAE Encoder": "Full", "VAE Decoder": "Full", "FP8 weight": "Disable",
        "Refiner switch by sampling steps": False,
    }
    for key, value in defaults.items():
        res.setdefault(key, value)
    _backcompat(res)
    _split_legacy_sampler(res)
    for key in skip_fields or []:
        res.pop(key, None)
    return res


def _split_legacy_sampler(res: dict) -> None:
    """``Sampler: DPM++ 2M Karras`` (before v1.9) becomes Sampler DPM++ 2M + Schedule type Automatic."""
    from modules import sd_samplers
    from modules.errors import UserInputError

    name = res.get("Sampler")
    if not name or sd_samplers.find_sampler(name) is not None:
        return
    try:
        sampler, schedule = sd_samplers.get_sampler_and_scheduler(name, res.get("Schedule type"))
    except UserInputError:
        return
    res["Sampler"], res["Schedule type"] = sampler, schedule


@dataclass
class PasteField:
    component: Any
    target: str | Callable
    api: str | None = None


@dataclass
class ParamBinding:
    paste_button: Any
    tabname: str
    source_text_component: Any = None
    source_image_component: Any = None
    source_tabname: str | None = None
    override_settings_component: Any = None
    paste_field_names: list | None = None


registered_param_bindings: list[ParamBinding] = []


def register_paste_params_button(binding: ParamBinding) -> None:
    registered_param_bindings.append(binding)


def _number(params: dict[str, Any], key: str, kind: type):
    try:
        return kind(float(params[key])) if kind is int else kind(params[key])
    except (KeyError, TypeError, ValueError):
        return None


def _common_fields(params: dict[str, Any]) -> dict[str, Any]:
    from modules import sd_samplers

    fields = {
        "prompt": params.get("Prompt"), "negative_prompt": params.get("Negative prompt"),
        "steps": _number(params, "Steps", int), "cfg_scale": _number(params, "CFG scale", float),
        "width": _number(params, "Size-1", int), "height": _number(params, "Size-2", int),
        "seed": _number(params, "Seed", int), "subseed": _number(params, "Variation seed", int),
        "subseed_strength": _number(params, "Variation seed strength", float),
        "seed_resize_from_w": _number(params, "Seed resize from-1", int),
        "seed_resize_from_h": _number(params, "Seed resize from-2", int), "batch_size": _number(params, "Batch size", int),
    }
    if sd_samplers.find_sampler(params.get("Sampler") or "") is not None:
        fields["sampler_name"] = sd_samplers.find_sampler(params["Sampler"]).name
    fields["scheduler"] = _schedule_label(params.get("Schedule type"))
    fields["use_variation"] = bool(fields["subseed_strength"] or fields["seed_resize_from_w"])
    fields.update(_postprocess_fields(params))
    return fields


def _postprocess_fields(params: dict[str, Any]) -> dict[str, Any]:
    """Restore faces (infotext ``Face restoration: <model>``) and the refiner (``Refiner``, ``Refiner switch at``:
    the checkpoint by its closest title)."""
    from modules import sd_models

    fields: dict[str, Any] = {"restore_faces": "Face restoration" in params}
    if "Face restoration" in params:
        fields["face_restoration_model"] = params["Face restoration"]
    fields["refiner_enabled"] = "Refiner" in params
    if "Refiner" in params:
        info = sd_models.get_closet_checkpoint_match(str(params["Refiner"]))
        if info is not None:
            fields["refiner_checkpoint"] = info.title
        switch_at = _number(params, "Refiner switch at", float)
        if switch_at is not None:
            fields["refiner_switch_at"] = switch_at
    return fields


def _version(text: Any) -> tuple[int, int, int] | None:
    match = re.match(r"v?(\d+)\.(\d+)\.(\d+)", str(text or ""))
    return tuple(int(part) for part in match.groups()) if match else None  # type: ignore[return-value]


def _backcompat(res: dict[str, Any]) -> None:
    """What images of older A1111 versions mean without saying it (A1111's infotext_versions.backcompat): before
    1.6.0 prompt editing used the old timelines, before 1.8.0 the refiner switched by sampling steps."""
    version = _version(res.get("Version"))
    if version is None:
        return
    if version < (1, 6, 0) and "[" in res.get("Prompt", ""):
        res["Old prompt editing timelines"] = True
    if version < (1, 8, 0) and res.get("Refiner"):
        res["Refiner switch by sampling steps"] = True


def _schedule_label(value: Any) -> str | None:
    from modules import sd_schedulers

    return next((s.label for s in sd_schedulers.schedulers if value in (s.label, s.name) and not s.unsupported), None)


def txt2img_fields_from_infotext(params: dict[str, Any]) -> dict[str, Any]:
    """Values for the txt2img fields (``make_txt2img`` names) found in parsed infotext ``params``;
    fields the infotext does not mention, or whose values do not convert, are left out."""
    from modules import sd_samplers

    fields = _common_fields(params)
    hires = "Denoising strength" in params and any(k in params for k in ("Hires upscale", "Hires upscaler", "Hires resize-1"))
    fields["enable_hr"] = hires
    if hires:
        from modules import sd_models

        checkpoint = params.get("Hires checkpoint")
        checkpoint_info = sd_models.get_closet_checkpoint_match(str(checkpoint)) if checkpoint else None
        sampler = sd_samplers.find_sampler(params.get("Hires sampler") or "")
        fields.update(
            denoising_strength=_number(params, "Denoising strength", float), hr_scale=_number(params, "Hires upscale", float),
            hr_upscaler=params.get("Hires upscaler"), hr_second_pass_steps=_number(params, "Hires steps", int) or 0,
            hr_resize_x=_number(params, "Hires resize-1", int), hr_resize_y=_number(params, "Hires resize-2", int),
            hr_checkpoint_name=checkpoint_info.title if checkpoint_info else "Use same checkpoint",
            hr_sampler_name=sampler.name if sampler else "Use same sampler",
            hr_scheduler=_schedule_label(params.get("Hires schedule type")) or "Use same scheduler",
            hr_prompt=params.get("Hires prompt", ""), hr_negative_prompt=params.get("Hires negative prompt", ""))
    return {k: v for k, v in fields.items() if v is not None}


def img2img_fields_from_infotext(params: dict[str, Any]) -> dict[str, Any]:
    """Values for the img2img fields (``make_img2img`` names), as :func:`txt2img_fields_from_infotext`."""
    fields = _common_fields(params)
    fields.update(
        denoising_strength=_number(params, "Denoising strength", float), mask_blur=_number(params, "Mask blur", int),
        inpainting_mask_invert=int(params.get("Mask mode") == "Inpaint not masked"),
        inpainting_fill=next((i for i, name in enumerate(("fill", "original", "latent noise", "latent nothing"))
                              if params.get("Masked content") == name), None),
        inpaint_full_res=params.get("Inpaint area") == "Only masked",
        inpaint_full_res_padding=_number(params, "Masked area padding", int),
        stochastic_freeze=str(params.get("Stochastic freeze", "")).lower() == "true",
        initial_noise_multiplier=_number(params, "Noise multiplier", float) or 1.0)
    return {k: v for k, v in fields.items() if v is not None}


# the checkpoint is matched by hash below; noise always comes from CPU generators, so "RNG: GPU" cannot be honoured;
# the noise multiplier is a field of the img2img tab (pasted there)
NOT_OVERRIDDEN = {"sd_model_checkpoint", "randn_source", "initial_noise_multiplier"}


def override_settings_from_infotext(params: dict[str, Any]) -> dict[str, Any]:
    """Settings an infotext records that differ from the current ones (A1111 "Override settings"):
    every option declared with ``infotext=`` whose key is present, and the checkpoint by its hash."""
    from modules import sd_models
    from modules.shared import opts

    result: dict[str, Any] = {}
    for name, info in opts.data_labels.items():
        key = info.infotext
        if not key or key not in params or name in NOT_OVERRIDDEN:
            continue
        value = _convert_like(params[key], info.default)
        if value is not None and value != getattr(opts, name):
            result[name] = value
    model_hash = params.get("Model hash")
    if model_hash:
        match = next((c for c in sd_models.checkpoints_list.values() if c.shorthash == model_hash or c.hash == model_hash), None)
        if match is not None and match.title != opts.sd_model_checkpoint:
            result["sd_model_checkpoint"] = match.title
    return result


def _convert_like(value: Any, default: Any) -> Any:
    try:
        if isinstance(default, bool):
            return str(value).lower() == "true"
        if isinstance(default, int):
            return int(float(value))
        if isinstance(default, float):
            return float(value)
    except (TypeError, ValueError):
        return None
    return value


def override_settings_labels(overrides: dict[str, Any]) -> list[str]:
    """``{"CLIP_stop_at_last_layers": 2}`` -> ``["Clip skip: 2"]`` (the UI's override-settings choices)."""
    from modules.shared import opts

    return [f"{opts.data_labels[name].infotext}: {value}" for name, value in overrides.items()]


def override_settings_from_labels(labels: list[str] | None) -> dict[str, Any]:
    """The inverse of :func:`override_settings_labels`; unknown keys are an error naming them."""
    from modules.errors import UserInputError
    from modules.shared import opts

    by_key = {info.infotext: name for name, info in opts.data_labels.items() if info.infotext}
    result: dict[str, Any] = {}
    for label in labels or []:
        key, _, value = str(label).partition(": ")
        if key not in by_key:
            raise UserInputError(f"override settings: unknown setting {key!r}")
        name = by_key[key]
        converted = _convert_like(value, opts.data_labels[name].default)
        result[name] = converted if converted is not None else value
    return result
