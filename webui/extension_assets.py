"""The page's extra front-end code: ``javascript/*.js`` (classic) and ``*.mjs`` (module) of the install dir and of
every active extension go into ``<head>``; every ``style.css``, then the data dir's ``user.css``, into the page's
CSS. Both are inlined, so no extension folder has to be served over HTTP."""
from __future__ import annotations

import html
import os

from modules import errors, extensions, paths


def _roots() -> list[tuple[str, str]]:
    """(label, folder): the install dir, then the active extensions in load order."""
    return [("webui", paths.script_path)] + [(e.name, e.path) for e in extensions.active()]


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="utf8") as f:
            return f.read()
    except (OSError, UnicodeDecodeError) as e:
        errors.report(f"cannot read {path}: {e}")
        return None


def head_html() -> str:
    parts = []
    for label, root in _roots():
        folder = os.path.join(root, "javascript")
        if not os.path.isdir(folder):
            continue
        for name in sorted(os.listdir(folder)):
            kind = "module" if name.endswith(".mjs") else "text/javascript" if name.endswith(".js") else None
            text = _read(os.path.join(folder, name)) if kind else None
            if text is None:
                continue
            source = html.escape(f"{label}/javascript/{name}", quote=True)
            body = text.replace("</script", "<\\/script")
            parts.append(f'<script type="{kind}" data-source="{source}">\n{body}\n</script>')
    return "\n".join(parts)


def css() -> str:
    files = [os.path.join(root, "style.css") for _, root in _roots()] + [os.path.join(paths.data_path, "user.css")]
    return "\n".join(text for text in (_read(f) for f in files if os.path.isfile(f)) if text is not None)
