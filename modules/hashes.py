"""File hashes with a persistent cache (``cache.json`` in the data dir), keyed by path, size and mtime."""
from __future__ import annotations

import hashlib
import json
import os
import threading

from modules import paths
from modules.runtime import atomic_files

_lock = threading.Lock()
CHUNK = 1 << 20


def _cache_file() -> str:
    return os.path.join(paths.data_path, "cache.json")


def _read_cache() -> dict:
    try:
        with open(_cache_file(), encoding="utf8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def _write_cache(cache: dict) -> None:
    with atomic_files.atomic_file(_cache_file(), "w", encoding="utf8") as f:
        json.dump(cache, f, indent=1)


def calculate_sha256(filename: str) -> str:
    digest = hashlib.sha256()
    with open(filename, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def sha256_from_cache(filename: str, title: str) -> str | None:
    """The cached sha256 if the file's size and mtime still match, else None."""
    entry = _read_cache().get("hashes", {}).get(title)
    stat = os.stat(filename)
    if entry and entry.get("mtime") == stat.st_mtime and entry.get("size") == stat.st_size:
        return entry["sha256"]
    return None


def sha256(filename: str, title: str) -> str:
    """Full sha256 of a file, computed once and then read from ``cache.json``."""
    cached = sha256_from_cache(filename, title)
    if cached:
        return cached
    return store_in_cache(filename, title, calculate_sha256(filename))


def store_in_cache(filename: str, title: str, value: str) -> str:
    """Remember ``value`` as the hash of ``filename`` (valid while its size and mtime stay the same)."""
    stat = os.stat(filename)
    with _lock:
        cache = _read_cache()
        cache.setdefault("hashes", {})[title] = {"mtime": stat.st_mtime, "size": stat.st_size, "sha256": value}
        _write_cache(cache)
    return value


def legacy_model_hash(filename: str) -> str:
    """A1111's old 8-hex hash: sha256 of the 64 KiB at offset 1 MiB."""
    with open(filename, "rb") as f:
        f.seek(0x100000)
        return hashlib.sha256(f.read(0x10000)).hexdigest()[:8]
