"""Prompt styles from ``styles.csv`` (columns name, prompt, negative_prompt), as in A1111.

A style text containing ``{prompt}`` has the user's prompt put in its place; otherwise the style is
appended after a comma. ``--styles-file`` may be given several times and accepts glob patterns; new
styles are saved to the first file.
"""
from __future__ import annotations

import csv
import glob
import os
import threading
from dataclasses import dataclass

from modules.errors import UserInputError
from modules.runtime import atomic_files

FIELDS = ["name", "prompt", "negative_prompt"]


@dataclass
class PromptStyle:
    name: str
    prompt: str = ""
    negative_prompt: str = ""
    path: str | None = None


def merge_prompts(style_prompt: str, prompt: str) -> str:
    if "{prompt}" in style_prompt:
        return style_prompt.replace("{prompt}", prompt)
    return ", ".join(part for part in (prompt.strip(), style_prompt.strip()) if part)


def apply_styles_to_prompt(prompt: str, styles: list[str]) -> str:
    for style in styles:
        prompt = merge_prompts(style, prompt)
    return prompt


class StyleDatabase:
    def __init__(self, paths: list[str]):
        self.paths = paths
        self.styles: dict[str, PromptStyle] = {}
        self._lock = threading.Lock()
        self.reload()

    @property
    def default_path(self) -> str:
        return self.paths[0]

    def files(self) -> list[str]:
        found = []
        for pattern in self.paths:
            matches = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
            found += [m for m in matches if os.path.isfile(m)]
        return list(dict.fromkeys(found))

    def reload(self) -> None:
        styles: dict[str, PromptStyle] = {}
        for path in self.files():
            with open(path, encoding="utf-8-sig", newline="") as f:
                for row in csv.DictReader(f):
                    name = (row.get("name") or "").strip()
                    if name and name not in styles:
                        styles[name] = PromptStyle(name, row.get("prompt") or "", row.get("negative_prompt") or "", path)
        self.styles = styles

    def get_style_prompts(self, names: list[str]) -> list[str]:
        return [self.styles[name].prompt for name in names if name in self.styles]

    def get_negative_style_prompts(self, names: list[str]) -> list[str]:
        return [self.styles[name].negative_prompt for name in names if name in self.styles]

    def apply_styles_to_prompt(self, prompt: str, styles: list[str]) -> str:
        return apply_styles_to_prompt(prompt, self.get_style_prompts(styles))

    def apply_negative_styles_to_prompt(self, prompt: str, styles: list[str]) -> str:
        return apply_styles_to_prompt(prompt, self.get_negative_style_prompts(styles))

    def unknown(self, names: list[str]) -> list[str]:
        return [name for name in names if name not in self.styles]

    def save_style(self, style: PromptStyle) -> None:
        """Add or replace a style and write its file atomically."""
        name = style.name.strip()
        if not name:
            raise UserInputError("style name: must not be empty")
        if any(c in name for c in "\r\n"):
            raise UserInputError("style name: must be a single line")
        with self._lock:
            existing = self.styles.get(name)
            style = PromptStyle(name, style.prompt, style.negative_prompt, existing.path if existing else self.default_path)
            self.styles[name] = style
            self._write(style.path)

    def delete_style(self, name: str) -> None:
        with self._lock:
            style = self.styles.pop(name, None)
            if style is not None:
                self._write(style.path)

    def _write(self, path: str) -> None:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with atomic_files.atomic_file(path, "w", encoding="utf-8", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=FIELDS)
            writer.writeheader()
            for style in self.styles.values():
                if style.path == path:
                    writer.writerow({"name": style.name, "prompt": style.prompt, "negative_prompt": style.negative_prompt})
