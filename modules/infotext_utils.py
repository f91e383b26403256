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


def txt2img_fields_from_infotext(params: dict[str, Any]) -> dict[str, Any]:
    """Values for the txt2img fields (``make_txt2img`` names) found in parsed infotext ``params``;
    fields the infotext does not mention, or whose values do not convert, are left out."""
    def number(key: str, kind: type):
        try:
            return kind(float(params[key])) if kind is int else kind(params[key])
        except (KeyError, TypeError, ValueError):
            return None

    fields = {
        "prompt": params.get("Prompt"), "negative_prompt": params.get("Negative prompt"),
        "steps": number("Steps", int), "cfg_scale": number("CFG scale", float),
        "width": number("Size-1", int), "height": number("Size-2", int), "seed": number("Seed", int),
        "subseed": number("Variation seed", int), "subseed_strength": number("Variation seed strength", float),
        "seed_resize_from_w": number("Seed resize from-1", int), "seed_resize_from_h": number("Seed resize from-2", int),
        "batch_size": number("Batch size", int),
    }
    from modules import sd_samplers, sd_schedulers

    if sd_samplers.find_sampler(params.get("Sampler") or "") is not None:
        fields["sampler_name"] = sd_samplers.find_sampler(params["Sampler"]).name
    schedule = next((s.label for s in sd_schedulers.schedulers
                     if params.get("Schedule type") in (s.label, s.name) and not s.unsupported), None)
    fields["scheduler"] = schedule
    fields["use_variation"] = bool(fields["subseed_strength"] or fields["seed_resize_from_w"])
    return {k: v for k, v in fields.items() if v is not None}
