"""Which job-queue worker the running thread is, so that the Script API's shared objects mean that worker's.

With one worker (the default) nothing here is set and everything is as in A1111. With ``--gpus 0,1`` the queue has a
worker thread per GPU; each binds its :class:`Worker` here, and then ``devices.device``, ``shared.state``,
``shared.sd_model`` and the memory modes' placement are that worker's: two jobs run at once, each on its own GPU
with its own loaded model and its own progress and interrupt flags. Other threads (the page, the HTTP API) see the
first worker's, or ask the queue which worker runs a job.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any


@dataclass(eq=False)
class Worker:
    index: int
    device_name: str | None = None  # None: the device the command line chose (devices.configure)
    state: Any = None  # its shared.state (a shared_state.State); None for the first worker: the primary one
    device: Any = None  # the torch.device, once the worker's thread has imported torch

    @property
    def label(self) -> str:
        return f"worker {self.index}" + (f" ({self.device_name})" if self.device_name else "")


_local = threading.local()


def current() -> Worker | None:
    return getattr(_local, "worker", None)


def bind(worker: Worker | None) -> None:
    """Make ``worker`` the one this thread is (called once by each worker thread)."""
    _local.worker = worker


def slot() -> int:
    """The index of this thread's worker; 0 (the first worker's) on any other thread."""
    worker = current()
    return worker.index if worker is not None else 0
