"""The job queue that owns the device: one worker thread, FIFO, one job at a time.

Each job has an id, progress (step, ETA, live preview) and a result that stays available after the
browser tab or HTTP client that asked for it has gone. The UI and the HTTP API submit here.

Fairness: every job belongs to a client (the UI, or an API caller by user name or address). Jobs of one
client run in the order they came; between clients the worker takes turns, so one client that queues
fifty jobs does not make another wait for all fifty.
"""
from __future__ import annotations

import collections
import itertools
import threading
import time
import traceback
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable

from modules import devices, errors
from modules.runtime import heavy_imports
from modules.shared import state

QUEUED, RUNNING, DONE, FAILED, CANCELLED = "queued", "running", "done", "failed", "cancelled"
KEEP_FINISHED = 100
MAX_PENDING = 64


class QueueFull(RuntimeError):
    """More jobs wait than the queue accepts (``JobQueue.max_pending``)."""


class DuplicateJobId(ValueError):
    """A job with the requested id exists already."""


@dataclass
class Job:
    id: str
    description: str
    func: Callable[[], Any]
    status: str = QUEUED
    created: float = field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None
    result: Any = None
    error: str | None = None
    error_is_user_input: bool = False
    error_out_of_memory: bool = False
    client: str = ""
    meta: dict = field(default_factory=dict)  # what the submitter needs to answer later (e.g. the API's echo)
    final_progress: dict | None = None
    done_event: threading.Event = field(default_factory=threading.Event)

    def wait(self, timeout: float | None = None) -> bool:
        return self.done_event.wait(timeout)


class JobQueue:
    def __init__(self, max_pending: int = MAX_PENDING) -> None:
        self.max_pending = max_pending
        self._pending: "collections.OrderedDict[str, collections.deque[Job]]" = collections.OrderedDict()  # by client
        self._jobs: "collections.OrderedDict[str, Job]" = collections.OrderedDict()
        self._cond = threading.Condition()
        self._worker: threading.Thread | None = None
        self._current: Job | None = None
        self._counter = itertools.count(1)

    def submit(self, func: Callable[[], Any], description: str = "", job_id: str | None = None, client: str = "",
               meta: dict | None = None) -> Job:
        """Queue ``func``; raises :class:`QueueFull` when ``max_pending`` jobs wait already and
        :class:`DuplicateJobId` when ``job_id`` is taken."""
        job = Job(job_id or f"task({uuid.uuid4().hex[:15]})", description or f"job {next(self._counter)}", func,
                  client=client, meta=dict(meta or {}))
        with self._cond:
            if job.id in self._jobs:
                raise DuplicateJobId(f"a job with id {job.id!r} exists already")
            waiting = sum(len(jobs) for jobs in self._pending.values())
            if waiting >= self.max_pending:
                raise QueueFull(f"the queue is full ({waiting} jobs waiting); try again when some have finished")
            self._jobs[job.id] = job
            self._pending.setdefault(client, collections.deque()).append(job)
            self._trim()
            if self._worker is None or not self._worker.is_alive():
                self._worker = threading.Thread(target=self._run, name="job-queue", daemon=True)
                self._worker.start()
            self._cond.notify()
        return job

    def get(self, job_id: str) -> Job | None:
        return self._jobs.get(job_id)

    @property
    def current(self) -> Job | None:
        return self._current

    def jobs(self) -> list[Job]:
        """Known jobs, oldest first: waiting, running and the last ``KEEP_FINISHED`` finished ones."""
        with self._cond:
            return list(self._jobs.values())

    def pending(self) -> list[Job]:
        """Waiting jobs in the order they will run (clients take turns)."""
        with self._cond:
            return self._run_order()

    def _run_order(self) -> list[Job]:
        queues = [list(jobs) for jobs in self._pending.values()]
        order = []
        for turn in range(max((len(q) for q in queues), default=0)):
            order += [q[turn] for q in queues if turn < len(q)]
        return order

    def position(self, job: Job) -> int:
        """0 while running or finished; n when n jobs run or wait ahead of it."""
        with self._cond:
            if job.status != QUEUED:
                return 0
            order = self._run_order()
            ahead = order.index(job) if job in order else 0
            return ahead + (1 if self._current is not None else 0)

    def cancel(self, job_id: str) -> bool:
        """Remove a job that has not started; returns False if it already runs or finished."""
        with self._cond:
            job = self._jobs.get(job_id)
            if job is None or job.status != QUEUED:
                return False
            self._pending[job.client].remove(job)
            if not self._pending[job.client]:
                del self._pending[job.client]
            job.status = CANCELLED
            job.finished = time.time()
            job.done_event.set()
            return True

    def interrupt(self, job_id: str | None = None) -> None:
        """Interrupt the running job (if it is ``job_id`` or no id is given); cancel it if still queued."""
        if job_id is not None and self.cancel(job_id):
            return
        if self._current is not None and (job_id is None or self._current.id == job_id):
            state.interrupt()

    def skip(self, job_id: str | None = None) -> None:
        if self._current is not None and (job_id is None or self._current.id == job_id):
            state.skip()

    def progress(self, job: Job) -> dict:
        """Progress of a job: status, fraction 0..1, step/steps, ETA in seconds, queue position."""
        if job is not self._current:
            return job.final_progress or {"status": job.status, "progress": 1.0 if job.finished else 0.0,
                                          "eta": None, "step": 0, "steps": 0, "queue_position": self.position(job)}
        steps = state.sampling_steps or 0
        fraction = 0.0
        if state.job_count > 0:
            fraction = state.job_no / state.job_count
            if steps:
                fraction += state.sampling_step / steps / state.job_count
        elapsed = time.time() - (job.started or time.time())
        eta = elapsed / fraction - elapsed if fraction > 0.01 else None
        return {"status": job.status, "progress": min(fraction, 1.0), "eta": eta, "step": state.sampling_step,
                "steps": steps, "job_no": state.job_no, "job_count": state.job_count, "queue_position": 0,
                "textinfo": state.textinfo}

    def _trim(self) -> None:
        finished = [j for j in self._jobs.values() if j.finished is not None]
        for job in finished[: max(0, len(finished) - KEEP_FINISHED)]:
            del self._jobs[job.id]

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._pending:
                    self._cond.wait()
                client, jobs = next(iter(self._pending.items()))
                job = jobs.popleft()
                del self._pending[client]
                if jobs:  # the client's next job waits for the other clients' turns
                    self._pending[client] = jobs
                self._current = job
                job.status = RUNNING
                job.started = time.time()
            try:
                heavy_imports.ensure()  # this thread imports torch and diffusers first; others wait for it
                state.begin(job.description)
                job.result = job.func()
                job.status = DONE
            except Exception as e:
                job.status = FAILED
                job.error_is_user_input = isinstance(e, errors.UserInputError)
                job.error_out_of_memory = devices.is_out_of_memory(e)
                if job.error_out_of_memory:
                    job.error = (f"Out of memory ({(str(e).strip().splitlines() or [type(e).__name__])[0][:200]}). "
                                 f"The memory was freed; try a smaller size or batch size (the job had already tried "
                                 f"lower memory modes and VAE tiles where they apply).")
                    errors.report(f"job {job.id}: {job.error}")
                    devices.torch_gc()  # only here and on unload: what the failed job held goes back to the device
                else:
                    job.error = str(e) if job.error_is_user_input else f"{type(e).__name__}: {e}"
                if not job.error_is_user_input and not job.error_out_of_memory:
                    errors.report(f"job {job.id} failed:\n{traceback.format_exc()}")
            finally:
                self._finish(job)

    def _finish(self, job: Job) -> None:
        """Record the outcome and wake the job's waiters, whatever happens here (a waiter has no timeout)."""
        try:
            job.final_progress = {**self.progress(job), "status": job.status, "progress": 1.0, "eta": 0}
            state.end()
        except Exception:  # noqa: BLE001 - progress is informative; the waiters must still be woken
            errors.report(f"job {job.id}: could not record its final progress:\n{traceback.format_exc()}")
            job.final_progress = {"status": job.status, "progress": 1.0, "eta": 0}
        finally:
            job.finished = time.time()
            with self._cond:
                self._current = None
            job.done_event.set()


queue = JobQueue()
