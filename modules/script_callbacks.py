"""Callback registry for extensions (A1111 ``modules.script_callbacks``).

``on_<category>(callback, name=None)`` registers; the engine calls ``<category>_callback(...)``.
A failing callback is reported and the others still run.
"""
from __future__ import annotations

import inspect
from collections import namedtuple
from dataclasses import dataclass, field
from typing import Any, Callable

from modules import errors

ScriptCallback = namedtuple("ScriptCallback", ["script", "callback", "name"])


@dataclass
class ImageSaveParams:
    image: Any
    p: Any
    filename: str
    pnginfo: dict


@dataclass
class ImageGridLoopParams:
    imgs: list
    cols: int
    rows: int


@dataclass
class CFGDenoiserParams:
    x: Any
    image_cond: Any
    sigma: Any
    sampling_step: int
    total_sampling_steps: int
    text_cond: Any
    text_uncond: Any
    denoiser: Any = None


@dataclass
class CFGDenoisedParams:
    x: Any
    sampling_step: int
    total_sampling_steps: int
    inner_model: Any


@dataclass
class AfterCFGCallbackParams:
    x: Any
    sampling_step: int
    total_sampling_steps: int


@dataclass
class ExtraNoiseParams:
    noise: Any
    x: Any
    xi: Any


@dataclass
class BeforeTokenCounterParams:
    prompt: str
    steps: int
    styles: list = field(default_factory=list)
    is_positive: bool = True


CATEGORIES = [
    "app_started", "before_reload", "model_loaded", "ui_tabs", "ui_train_tabs", "ui_settings",
    "before_image_saved", "image_saved", "extra_noise", "cfg_denoiser", "cfg_denoised", "cfg_after_cfg",
    "before_component", "after_component", "image_grid", "infotext_pasted", "script_unloaded", "before_ui",
    "list_optimizers", "list_unets", "before_token_counter",
]
callback_map: dict[str, list[ScriptCallback]] = {f"callbacks_{c}": [] for c in CATEGORIES}


def _register(category: str, callback: Callable, name: str | None) -> None:
    caller = inspect.stack()[2].filename if len(inspect.stack()) > 2 else "unknown"
    callback_map[f"callbacks_{category}"].append(ScriptCallback(caller, callback, name or getattr(callback, "__name__", "callback")))


def _run(category: str, *args: Any, **kwargs: Any) -> list:
    results = []
    for c in list(callback_map[f"callbacks_{category}"]):
        try:
            results.append(c.callback(*args, **kwargs))
        except Exception as e:
            errors.display(e, f"{category} callback {c.name} ({c.script})")
    return results


def _make(category: str):
    def register(callback: Callable, *, name: str | None = None) -> None:
        _register(category, callback, name)

    def run(*args: Any, **kwargs: Any) -> list:
        return _run(category, *args, **kwargs)

    register.__name__ = f"on_{category}"
    run.__name__ = f"{category}_callback"
    return register, run


for _category in CATEGORIES:
    globals()[f"on_{_category}"], globals()[f"{_category}_callback"] = _make(_category)


def clear_callbacks() -> None:
    for callbacks in callback_map.values():
        callbacks.clear()


def remove_current_script_callbacks() -> None:
    caller = inspect.stack()[1].filename
    for key, callbacks in callback_map.items():
        callback_map[key] = [c for c in callbacks if c.script != caller]


def remove_callbacks_for_function(callback_func: Callable) -> None:
    for key, callbacks in callback_map.items():
        callback_map[key] = [c for c in callbacks if c.callback != callback_func]
