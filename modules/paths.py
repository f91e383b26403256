"""Path constants and the one helper that keeps user-influenced paths inside their root.

The data dir (``--data-dir``, default: the install dir) holds config.json, cache.json,
models/, outputs/ and extensions/. Values are set once at start-up by :func:`configure`.
"""
from __future__ import annotations

import os
from pathlib import Path

script_path = str(Path(__file__).resolve().parent.parent)
data_path = script_path
models_path = os.path.join(data_path, "models")
extensions_dir = os.path.join(data_path, "extensions")
extensions_builtin_dir = os.path.join(script_path, "extensions-builtin")
default_output_dir = os.path.join(data_path, "outputs")
configs_path = os.path.join(script_path, "modules", "configs")


class PathOutsideRoot(ValueError):
    """A path built from user input points outside the directory it must stay in."""


def configure(data_dir: str | None = None, models_dir: str | None = None) -> None:
    """Point the path constants at a data dir (and optionally a separate models dir)."""
    global data_path, models_path, extensions_dir, default_output_dir
    data_path = str(Path(data_dir or script_path).resolve())
    models_path = str(Path(models_dir).resolve()) if models_dir else os.path.join(data_path, "models")
    extensions_dir = os.path.join(data_path, "extensions")
    default_output_dir = os.path.join(data_path, "outputs")


def contained(root: str | os.PathLike, *parts: str) -> Path:
    """Join ``parts`` under ``root`` and return the resolved path, refusing anything that escapes ``root``
    (``..`` segments, absolute parts, symlinks pointing elsewhere)."""
    base = Path(root).resolve()
    candidate = base.joinpath(*parts).resolve()
    if candidate != base and base not in candidate.parents:
        raise PathOutsideRoot(f"path {os.path.join(*parts)!r} is outside {str(base)!r}")
    return candidate
