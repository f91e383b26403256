"""The History index: every image under ``outputs/`` with the fields of its infotext, in SQLite (the standard
library's) in ``<data dir>/cache/history.sqlite3``, words searched with FTS5.

Images are recorded as they are saved (``images.save_image``) and the index is reconciled with the folder at start
and on refresh: files added or removed by hand are noticed (by path, size and modification time). A damaged index
file is set aside and rebuilt from the folder, never fatal.

Search text: words match the prompt (prefixes: ``cat`` finds "cats"); ``neg:word`` the negative prompt;
``seed:1234``, ``model:name`` (part of the name), ``sampler:"Euler a"``, ``size:512x768``, ``date:2026-11-30``,
``after:2026-11-01``, ``before:2026-12-01`` filter. Results are newest first, by page.
"""
from __future__ import annotations

import datetime
import logging
import os
import shlex
import shutil
import sqlite3
import threading
from dataclasses import dataclass
from typing import Any

from modules import paths
from modules.errors import UserInputError

log = logging.getLogger("webui")

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".avif")
SCHEMA = """
CREATE TABLE IF NOT EXISTS images (
    id INTEGER PRIMARY KEY, path TEXT UNIQUE NOT NULL, size INTEGER, mtime_ns INTEGER, created REAL,
    prompt TEXT, negative TEXT, seed TEXT, model TEXT, sampler TEXT, width INTEGER, height INTEGER, infotext TEXT);
CREATE INDEX IF NOT EXISTS images_created ON images(created);
CREATE VIRTUAL TABLE IF NOT EXISTS images_text USING fts5(prompt, negative, content='images', content_rowid='id');
CREATE TRIGGER IF NOT EXISTS images_added AFTER INSERT ON images BEGIN
    INSERT INTO images_text(rowid, prompt, negative) VALUES (new.id, new.prompt, new.negative); END;
CREATE TRIGGER IF NOT EXISTS images_removed AFTER DELETE ON images BEGIN
    INSERT INTO images_text(images_text, rowid, prompt, negative) VALUES ('delete', old.id, old.prompt, old.negative);
END;
"""
COLUMNS = ("path", "created", "prompt", "negative", "seed", "model", "sampler", "width", "height", "infotext")


@dataclass
class Entry:
    path: str
    created: float
    prompt: str
    negative: str
    seed: str
    model: str
    sampler: str
    width: int
    height: int
    infotext: str

    def as_dict(self) -> dict[str, Any]:
        return {"path": self.path, "created": self.created, "prompt": self.prompt, "negative_prompt": self.negative,
                "seed": self.seed, "model": self.model, "sampler": self.sampler, "width": self.width,
                "height": self.height, "infotext": self.infotext}


def fields(infotext: str | None) -> dict[str, Any]:
    """The searchable fields of an infotext (empty ones for an image without one)."""
    from modules import infotext_utils

    if not infotext:
        return {"prompt": "", "negative": "", "seed": "", "model": "", "sampler": "", "width": None, "height": None}
    params = infotext_utils.parse_generation_parameters(infotext)

    def number(key: str) -> int | None:
        try:
            return int(params.get(key))
        except (TypeError, ValueError):
            return None

    return {"prompt": params.get("Prompt", ""), "negative": params.get("Negative prompt", ""),
            "seed": str(params.get("Seed", "")), "model": str(params.get("Model", "")),
            "sampler": str(params.get("Sampler", "")), "width": number("Size-1"), "height": number("Size-2")}


def read_infotext(path: str) -> tuple[str | None, tuple[int, int] | None]:
    """(the infotext a saved image carries, its size), without decoding its pixels."""
    from PIL import Image

    from modules.imaging.png_info import read_info_from_image

    try:
        with Image.open(path) as image:
            info, _ = read_info_from_image(image)
            return info, image.size
    except (OSError, ValueError, SyntaxError):
        return None, None


class HistoryIndex:
    def __init__(self, db_path: str, root: str) -> None:
        self.db_path = db_path
        self.root = os.path.abspath(root)
        self._lock = threading.RLock()  # one writer at a time; SQLite's WAL lets readers go on
        self._set_aside_now = False  # a damaged file was just set aside: rebuild from the folder before using it
        self._checked = False  # the schema exists and the file reads: checked once, not at every saved image

    def _connect(self) -> sqlite3.Connection:
        os.makedirs(os.path.dirname(self.db_path), exist_ok=True)
        try:
            connection = self._open()
        except sqlite3.DatabaseError as e:  # not a database, damaged, or from another schema: set aside, rebuild
            if isinstance(e, sqlite3.OperationalError) and "malformed" not in str(e):
                raise  # locked, or a disk error: not a damaged file
            log.warning("History index %s is damaged (%s): rebuilding it from %s", self.db_path, e, self.root)
            self._set_aside()
            self._set_aside_now = True
            connection = self._open()
        return connection

    def _open(self) -> sqlite3.Connection:
        connection = sqlite3.connect(self.db_path, timeout=30, check_same_thread=False)
        if self._checked and os.path.exists(self.db_path):
            return connection
        try:
            connection.execute("PRAGMA journal_mode=WAL")
            connection.executescript(SCHEMA)
            connection.execute("SELECT count(*) FROM images_text").fetchone()  # reads the FTS index too
        except sqlite3.DatabaseError:
            connection.close()
            raise
        self._checked = True
        return connection

    def _set_aside(self) -> None:
        self._checked = False
        for suffix in ("", "-wal", "-shm"):
            if os.path.exists(self.db_path + suffix):
                os.replace(self.db_path + suffix, self.db_path + suffix + ".damaged")

    def _run(self, work):
        """``work(connection)`` in a transaction; a database error met on the way rebuilds the index once."""
        with self._lock:
            for attempt in range(2):
                connection = self._connect()
                if self._set_aside_now:
                    self._set_aside_now = False
                    connection.close()
                    self.reconcile()
                    connection = self._connect()
                try:
                    with connection:
                        return work(connection)
                except sqlite3.DatabaseError as e:
                    if attempt or (isinstance(e, sqlite3.OperationalError) and "malformed" not in str(e)):
                        raise
                    log.warning("History index %s failed (%s): rebuilding it", self.db_path, e)
                    connection.close()
                    self._set_aside()
                    self.reconcile()
                finally:
                    connection.close()

    def _inside(self, path: str) -> str | None:
        full = os.path.abspath(path)
        return full if os.path.commonpath([full, self.root]) == self.root else None

    def record(self, path: str, infotext: str | None = None) -> None:
        """Add (or update) one saved image; paths outside the indexed folder are ignored."""
        full = self._inside(path)
        if full is None or not full.lower().endswith(IMAGE_EXTENSIONS) or not os.path.isfile(full):
            return
        if infotext is None:
            infotext, _ = read_infotext(full)
        self._run(lambda connection: self._upsert(connection, full, infotext))

    def _upsert(self, connection: sqlite3.Connection, full: str, infotext: str | None) -> None:
        stat = os.stat(full)
        found = fields(infotext)
        connection.execute("DELETE FROM images WHERE path = ?", (full,))
        connection.execute(
            "INSERT INTO images(path, size, mtime_ns, created, prompt, negative, seed, model, sampler, width, height, "
            "infotext) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (full, stat.st_size, stat.st_mtime_ns, stat.st_mtime, found["prompt"], found["negative"], found["seed"],
             found["model"], found["sampler"], found["width"], found["height"], infotext or ""))

    def reconcile(self) -> tuple[int, int]:
        """Make the index match the folder: (images added or updated, images removed)."""
        on_disk = {}
        for folder, _, names in os.walk(self.root):
            for name in names:
                if name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith("."):
                    full = os.path.join(folder, name)
                    try:
                        stat = os.stat(full)
                    except OSError:
                        continue
                    on_disk[full] = (stat.st_size, stat.st_mtime_ns)

        def work(connection: sqlite3.Connection) -> tuple[int, int]:
            known = {path: (size, mtime) for path, size, mtime in
                     connection.execute("SELECT path, size, mtime_ns FROM images")}
            gone = [path for path in known if path not in on_disk]
            connection.executemany("DELETE FROM images WHERE path = ?", [(path,) for path in gone])
            changed = [path for path, signature in on_disk.items() if known.get(path) != signature]
            for path in changed:
                self._upsert(connection, path, read_infotext(path)[0])
            return len(changed), len(gone)

        return self._run(work)

    def search(self, query: str = "", page: int = 1, per_page: int = 36) -> tuple[int, list[Entry]]:
        """(how many images match, the ``page``-th ``per_page`` of them, newest first)."""
        where, values = parse_query(query)
        page, per_page = max(1, int(page)), max(1, min(int(per_page), 500))
        clause = f" WHERE {' AND '.join(where)}" if where else ""

        def work(connection: sqlite3.Connection):
            total = connection.execute(f"SELECT count(*) FROM images{clause}", values).fetchone()[0]
            rows = connection.execute(f"SELECT {', '.join(COLUMNS)} FROM images{clause} ORDER BY created DESC, id DESC "
                                      f"LIMIT ? OFFSET ?", [*values, per_page, (page - 1) * per_page]).fetchall()
            return total, [Entry(*row) for row in rows]

        return self._run(work)

    def entry(self, path: str) -> Entry | None:
        full = self._inside(path)
        if full is None:
            return None
        rows = self._run(lambda connection: connection.execute(
            f"SELECT {', '.join(COLUMNS)} FROM images WHERE path = ?", (full,)).fetchall())
        return Entry(*rows[0]) if rows else None

    def move_to_trash(self, path: str, trash: str) -> str:
        """Move an indexed image (and its .txt) into ``trash``, keeping its place under outputs/; never deletes."""
        full = self._inside(path)
        if full is None or self.entry(full) is None or not os.path.isfile(full):
            raise UserInputError(f"history: {path!r} is not an image of the history")
        target = os.path.join(trash, os.path.relpath(full, self.root))
        os.makedirs(os.path.dirname(target), exist_ok=True)
        stem, extension = os.path.splitext(target)
        number = 1
        while os.path.exists(target):
            target, number = f"{stem} ({number}){extension}", number + 1
        shutil.move(full, target)
        sidecar = os.path.splitext(full)[0] + ".txt"
        if os.path.isfile(sidecar):
            shutil.move(sidecar, os.path.splitext(target)[0] + ".txt")
        self._run(lambda connection: connection.execute("DELETE FROM images WHERE path = ?", (full,)))
        return target


FILTERS = {"seed", "model", "sampler", "size", "date", "after", "before", "neg", "negative"}


def _day(text: str, key: str) -> float:
    try:
        return datetime.datetime.strptime(text, "%Y-%m-%d").timestamp()
    except ValueError:
        raise UserInputError(f"history search: {key}:{text} is not a date (YYYY-MM-DD)") from None


def _words(text: str) -> str:
    """FTS5 terms: each word quoted (no operators from the user) and matched as a prefix."""
    return " ".join('"' + word.replace('"', '""') + '"*' for word in text.split() if word)


def parse_query(query: str) -> tuple[list[str], list[Any]]:
    """SQL conditions and their values for a search text (see the module docstring)."""
    try:
        tokens = shlex.split(query or "")
    except ValueError:
        tokens = (query or "").replace('"', " ").split()
    where, values, words, negative = [], [], [], []
    for token in tokens:
        key, sep, value = token.partition(":")
        key = key.lower()
        if not sep or key not in FILTERS or not value:
            words.append(token)
        elif key in ("neg", "negative"):
            negative.append(value)
        elif key == "seed":
            where.append("seed = ?")
            values.append(value)
        elif key in ("model", "sampler"):
            where.append(f"lower({key}) LIKE ?")
            values.append(f"%{value.lower()}%" if key == "model" else value.lower())
        elif key == "size":
            width, _, height = value.lower().partition("x")
            if not (width.isdigit() and height.isdigit()):
                raise UserInputError(f"history search: size:{value} is not WIDTHxHEIGHT")
            where.append("width = ? AND height = ?")
            values += [int(width), int(height)]
        elif key == "date":
            start = _day(value, key)
            where.append("created >= ? AND created < ?")
            values += [start, start + 86400]
        elif key == "after":
            where.append("created >= ?")
            values.append(_day(value, key))
        else:  # before
            where.append("created < ?")
            values.append(_day(value, key))
    text = []
    if words:
        text.append(f"prompt : ({_words(' '.join(words))})")
    if negative:
        text.append(f"negative : ({_words(' '.join(negative))})")
    if text:
        where.append("id IN (SELECT rowid FROM images_text WHERE images_text MATCH ?)")
        values.append(" AND ".join(text))
    return where, values


_index: HistoryIndex | None = None
_index_lock = threading.Lock()


def history() -> HistoryIndex:
    """The data dir's index (made on first use)."""
    global _index
    with _index_lock:
        db_path = os.path.join(paths.data_path, "cache", "history.sqlite3")
        if _index is None or _index.db_path != db_path:
            _index = HistoryIndex(db_path, paths.default_output_dir)
        return _index


def trash_dir() -> str:
    return os.path.join(paths.data_path, "trash")

