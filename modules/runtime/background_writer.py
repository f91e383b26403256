"""Writing a job's images on a worker thread, so PNG encoding (50-270 ms an image) overlaps the next batch's
sampling instead of adding to it. A job waits for its writes before it returns: the files its result names are on
disk, and nothing is lost if the process stops right after."""
from __future__ import annotations

import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable

_reserved: set[str] = set()  # files chosen but not written yet: the next file name must not take them
_reserved_lock = threading.Lock()


def reserve(path: str) -> None:
    with _reserved_lock:
        _reserved.add(path)


def release(path: str) -> None:
    with _reserved_lock:
        _reserved.discard(path)


def is_reserved(path: str) -> bool:
    with _reserved_lock:
        return path in _reserved


def reserved() -> list[str]:
    with _reserved_lock:
        return list(_reserved)


class BackgroundWriter:
    """One worker thread writing in submission order; ``join`` waits for everything and returns the errors."""

    def __init__(self) -> None:
        self._executor: ThreadPoolExecutor | None = None
        self._pending: list[tuple[str, Future]] = []

    def submit(self, what: str, write: Callable[[], object], path: str) -> None:
        """Run ``write`` (which creates ``path``) on the worker; ``path`` counts as taken until it is done."""
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="image-writer")
        reserve(path)

        def run() -> None:
            try:
                write()
            finally:
                release(path)

        self._pending.append((what, self._executor.submit(run)))

    def join(self) -> list[tuple[str, OSError]]:
        """Wait for every write; (what, error) for each that failed with an OSError (a full disk, permissions). Other
        errors are raised, as they would have been by a write on the job's own thread."""
        failures = []
        pending, self._pending = self._pending, []
        try:
            for what, future in pending:
                try:
                    future.result()
                except OSError as e:
                    failures.append((what, e))
        finally:
            if self._executor is not None:
                self._executor.shutdown(wait=True)
                self._executor = None
        return failures
