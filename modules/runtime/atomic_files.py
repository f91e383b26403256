"""Files written whole or not at all: images, config.json, styles.csv, cache.json, params.txt.

The content goes to a temporary file beside the target, which then replaces it in one ``os.replace``. A process
killed at any moment leaves either the old file or the new one, never a truncated one; a write that fails (a full
disk) removes its temporary file and leaves the old file as it was.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from typing import IO, Iterator


@contextlib.contextmanager
def atomic_file(path: str, mode: str = "w", **open_kwargs) -> Iterator[IO]:
    """``open(path, mode)`` whose content appears at ``path`` only when the block ends without an error."""
    folder = os.path.dirname(os.path.abspath(path))
    handle, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
        with os.fdopen(handle, mode, **open_kwargs) as f:
            yield f
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        if isinstance(e, OSError) and e.filename in (None, tmp):
            e.filename = path  # name the file the user knows, not the temporary one
        raise


def write_text(path: str, text: str) -> None:
    with atomic_file(path, "w", encoding="utf8") as f:
        f.write(text)
