"""Settings: typed options with defaults, persisted in ``config.json`` (A1111 ``Options``/``OptionInfo``)."""
from __future__ import annotations

import contextlib
import json
import os
import threading
from dataclasses import dataclass
from typing import Any, Callable

from modules.runtime import atomic_files


@dataclass
class OptionInfo:
    default: Any = None
    label: str = ""
    component: Any = None
    component_args: Any = None
    onchange: Callable | None = None
    section: tuple[str, str] | None = None
    refresh: Callable | None = None
    infotext: str | None = None
    restrict_api: bool = False
    comment_before: str = ""
    comment_after: str = ""
    requires: str = ""  # what makes a change take effect: "" (at once), "Reload UI" or "restart"

    def info(self, text: str) -> "OptionInfo":
        self.comment_after += f" ({text})"
        return self

    def needs_reload_ui(self) -> "OptionInfo":
        self.requires = "Reload UI"
        return self

    def needs_restart(self) -> "OptionInfo":
        self.requires = "restart"
        return self


def options_section(section_identifier: tuple[str, str], options_dict: dict[str, OptionInfo]) -> dict[str, OptionInfo]:
    for value in options_dict.values():
        value.section = section_identifier
    return options_dict


@dataclass
class OptionHTML(OptionInfo):
    text: str = ""


class _SettingsData(dict):
    """``opts.data``: the stored settings; reading a key through ``[]`` or ``get`` on a thread running a job with
    ``override_settings`` gives the job's value, as A1111's set-and-restore did (saving writes the stored ones)."""

    def __init__(self, values: dict, job_values: threading.local) -> None:
        super().__init__(values)
        self.job_values = job_values

    def __getitem__(self, key: str) -> Any:
        overlay = getattr(self.job_values, "values", None)
        if overlay is not None and key in overlay:
            return overlay[key]
        return super().__getitem__(key)

    def get(self, key: str, default: Any = None) -> Any:
        return self[key] if key in self else default


class Options:
    """Attribute access to settings; reading an unset key returns its default."""

    def __init__(self, templates: dict[str, OptionInfo]):
        job_values = threading.local()  # per thread: the running job's override_settings (see overridden)
        object.__setattr__(self, "data_labels", dict(templates))
        object.__setattr__(self, "data", _SettingsData({k: v.default for k, v in templates.items()}, job_values))
        object.__setattr__(self, "_lock", threading.Lock())
        object.__setattr__(self, "_onchange", {})

    def __getattr__(self, item: str) -> Any:
        data = object.__getattribute__(self, "data")
        if item in data:
            return data[item]
        labels = object.__getattribute__(self, "data_labels")
        if item in labels:
            return labels[item].default
        raise AttributeError(f"unknown setting {item!r}")

    def __setattr__(self, key: str, value: Any) -> None:
        if key not in self.data_labels:
            raise AttributeError(f"unknown setting {key!r}")
        self.set(key, value)

    def add_option(self, key: str, info: OptionInfo) -> None:
        self.data_labels[key] = info
        self.data.setdefault(key, info.default)

    def get_default(self, key: str) -> Any:
        info = self.data_labels.get(key)
        return None if info is None else info.default

    def cast_value(self, key: str, value: Any) -> Any:
        default = self.get_default(key)
        if value is None or default is None:
            return value
        if isinstance(default, bool):
            if isinstance(value, str):
                return value.strip().lower() in ("1", "true", "yes", "on")
            return bool(value)
        if isinstance(default, int):
            return int(value)
        if isinstance(default, float):
            return float(value)
        if isinstance(default, str):
            return str(value)
        return value

    def set(self, key: str, value: Any, is_api: bool = False) -> bool:
        info = self.data_labels.get(key)
        if info is None:
            return False
        if is_api and info.restrict_api:
            return False
        value = self.cast_value(key, value)
        overlay = getattr(self.data.job_values, "values", None)
        if overlay is not None and key in overlay:  # a job's own setting stays the job's
            changed = overlay[key] != value
            overlay[key] = value
            return changed
        old = dict.get(self.data, key)
        if old == value:
            return False
        self.data[key] = value
        for func in [info.onchange, *self._onchange.get(key, [])]:
            if func is not None:
                func()
        return True

    @contextlib.contextmanager
    def overridden(self, values: dict[str, Any]):
        """Within the block, on this thread only, the known settings in ``values`` read as given (a job's
        ``override_settings``): two jobs running at once on two GPUs each see their own, and nothing is saved."""
        previous = getattr(self.data.job_values, "values", None)
        layer = dict(previous or {})
        layer.update({key: self.cast_value(key, value) for key, value in values.items() if key in self.data_labels})
        self.data.job_values.values = layer
        try:
            yield
        finally:
            self.data.job_values.values = previous

    def onchange(self, key: str, func: Callable, call: bool = True) -> None:
        self._onchange.setdefault(key, []).append(func)
        if call:
            func()

    def save(self, filename: str) -> None:
        with self._lock, atomic_files.atomic_file(filename, "w", encoding="utf8") as f:
            json.dump(self.data, f, indent=4, ensure_ascii=False)

    def load(self, filename: str) -> None:
        if not os.path.isfile(filename):
            return
        with open(filename, encoding="utf8") as f:
            stored = json.load(f)
        for key, value in stored.items():
            self.data[key] = self.cast_value(key, value) if key in self.data_labels else value
