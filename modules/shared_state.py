"""``shared.state``: the progress and control flags of the job that is running (A1111 ``State``).

Scripts attach their own attributes to it, so it accepts arbitrary attributes.
"""
from __future__ import annotations

import datetime
import threading
import time
from typing import Any

from modules.runtime import worker_context


class State:
    def __init__(self) -> None:
        self.skipped = False
        self.interrupted = False
        self.stopping_generation = False
        self.job = ""
        self.job_no = 0
        self.job_count = 0
        self.processing_has_refined_job_count = False
        self.job_timestamp = "0"
        self.sampling_step = 0
        self.sampling_steps = 0
        self.current_latent = None
        self.current_image = None
        self.current_image_sampling_step = 0
        self.id_live_preview = 0
        self.textinfo = None
        self.time_start: float | None = None
        self.server_start = time.time()
        self.server_command: str | None = None
        self._server_command_signal = threading.Event()

    def skip(self) -> None:
        self.skipped = True

    def interrupt(self) -> None:
        self.interrupted = True

    def stop_generating(self) -> None:
        self.stopping_generation = True

    def nextjob(self) -> None:
        self.job_no += 1
        self.sampling_step = 0
        self.current_image_sampling_step = 0

    def begin(self, job: str = "(unknown)") -> None:
        self.sampling_step = 0
        self.sampling_steps = 0
        self.job_count = -1
        self.processing_has_refined_job_count = False
        self.job_no = 0
        self.job_timestamp = datetime.datetime.now().strftime("%Y%m%d%H%M%S")
        self.current_latent = None
        self.current_image = None
        self.current_image_sampling_step = 0
        self.id_live_preview = 0
        self.skipped = False
        self.interrupted = False
        self.stopping_generation = False
        self.textinfo = None
        self.job = job
        self.time_start = time.time()

    def end(self) -> None:
        self.job = ""
        self.job_count = 0

    def set_current_image(self, image: Any, step: int) -> None:
        self.current_image = image
        self.current_image_sampling_step = step
        self.id_live_preview += 1

    assign_current_image = set_current_image

    def dict(self) -> dict[str, Any]:
        return {
            "skipped": self.skipped, "interrupted": self.interrupted,
            "stopping_generation": self.stopping_generation, "job": self.job,
            "job_count": self.job_count, "job_timestamp": self.job_timestamp, "job_no": self.job_no,
            "sampling_step": self.sampling_step, "sampling_steps": self.sampling_steps,
        }

    def request_restart(self) -> None:
        self.server_command = "restart"
        self._server_command_signal.set()

    def wait_for_server_command(self, timeout: float | None = None) -> str | None:
        if self._server_command_signal.wait(timeout):
            self._server_command_signal.clear()
            return self.server_command
        return None


class RoutedState:
    """``shared.state``: the :class:`State` of the queue worker running on this thread (see
    ``runtime.worker_context``), the primary one on any other thread and with a single worker. Scripts read and
    set attributes on it as on A1111's ``State``."""

    def __init__(self, primary: State) -> None:
        object.__setattr__(self, "primary", primary)

    def target(self) -> State:
        worker = worker_context.current()
        if worker is not None and worker.state is not None:
            return worker.state
        return object.__getattribute__(self, "primary")

    def __getattr__(self, name: str) -> Any:
        return getattr(self.target(), name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self.target(), name, value)

    def __delattr__(self, name: str) -> None:
        delattr(self.target(), name)
