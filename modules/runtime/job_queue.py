"""The job queue that owns the devices: one worker thread per device (one by default, one per GPU with ``--gpus``),
each running one job at a time.

Each job has an id, progress (step, ETA, live preview) and a result that stays available after the
browser tab or HTTP client that asked for it has gone. The UI and the HTTP API submit here.

Fairness: every job belongs to a client (the UI, or an API caller by user name or address). Jobs of one
client run in the order they came; between clients the worker takes turns, so one client that queues
fifty jobs does not make another wait for all fifty.

With several workers (``set_workers``) an idle worker takes the next job; each binds its
``runtime.worker_context.Worker``, so the job's ``devices.device``, ``shared.state`` and loaded model are that
worker's.
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
from modules.runtime import heavy_imports, worker_context
from modules.shared import state
from modules.shared_state import State

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
    error_status: int | None = None  # the HTTP status an error class names (``status_code``: missing weights, 503)
    client: str = ""
    meta: dict = field(default_factory=dict)  # what the submitter needs to answer later (e.g. the API's echo)
    final_progress: dict | None = None
    worker: worker_context.Worker | None = None  # the worker that runs or ran it
    done_event: threading.Event = field(default_factory=threading.Event)

    def wait(self, timeout: float | None = None) -> bool:
        return self.done_event.wait(timeout)


class JobQueue:
    def __init__(self, max_pending: int = MAX_PENDING) -> None:
        self.max_pending = max_pending
        self._pending: "collections.OrderedDict[str, collections.deque[Job]]" = collections.OrderedDict()  # by client
        self._jobs: "collections.OrderedDict[str, Job]" = collections.OrderedDict()
        self._cond = threading.Condition()
        self._workers = [worker_context.Worker(0)]
        self._threads: dict[int, threading.Thread] = {}
        self._running: dict[int, Job] = {}  # worker index -> its job
        self._counter = itertools.count(1)

    def set_workers(self, device_names: list[str | None]) -> None:
        """One worker per entry (``--gpus 0,1`` gives ``["cuda:0", "cuda:1"]``; None: the configured device), before
        the first job. The first worker keeps the primary ``shared.state``; the others get their own."""
        if not device_names:
            raise ValueError("a queue needs at least one worker")
        with self._cond:
            if self._threads:
                raise RuntimeError("the queue's workers are chosen before its first job")
            self._workers = [worker_context.Worker(i, name, None if i == 0 else State())
                             for i, name in enumerate(device_names)]

    @property
    def workers(self) -> list[worker_context.Worker]:
        return list(self._workers)

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
            for worker in self._workers:
                thread = self._threads.get(worker.index)
                if thread is None or not thread.is_alive():
                    name = "job-queue" if worker.index == 0 else f"job-queue-{worker.index}"
                    thread = self._threads[worker.index] = threading.Thread(target=self._run, args=(worker,),
                                                                            name=name, daemon=True)
                    thread.start()
            self._cond.notify()
        return job

    def get(self, job_id: str) -> Job | None:
        return self._jobs.get(job_id)

    @property
    def current(self) -> Job | None:
        """The running job (the first worker's first, with several workers)."""
        running = self.running()
        return running[0] if running else None

    def running(self) -> list[Job]:
        """The jobs running now, by worker."""
        with self._cond:
            return [self._running[index] for index in sorted(self._running)]

    def state_of(self, job: Job) -> State:
        """The ``State`` with the job's progress and flags: that of the worker running it."""
        worker = job.worker
        return worker.state if worker is not None and worker.state is not None else state.primary

    def slot_of(self, job: Job) -> int:
        """The index of the worker that runs (or ran) the job; 0 before it started."""
        return job.worker.index if job.worker is not None else 0

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
            return ahead + len(self._running)

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
        """Interrupt the running job ``job_id`` (every running job when no id is given); cancel it if still
        queued."""
        if job_id is not None and self.cancel(job_id):
            return
        for job in self.running():
            if job_id is None or job.id == job_id:
                self.state_of(job).interrupt()

    def skip(self, job_id: str | None = None) -> None:
        for job in self.running():
            if job_id is None or job.id == job_id:
                self.state_of(job).skip()

    def progress(self, job: Job) -> dict:
        """Progress of a job: status, fraction 0..1, step/steps, ETA in seconds, queue position."""
        if job.worker is None or self._running.get(job.worker.index) is not job:
            return job.final_progress or {"status": job.status, "progress": 1.0 if job.finished else 0.0,
                                          "eta": None, "step": 0, "steps": 0, "queue_position": self.position(job)}
        job_state = self.state_of(job)
        steps = job_state.sampling_steps or 0
        fraction = 0.0
        if job_state.job_count > 0:
            fraction = job_state.job_no / job_state.job_count
            if steps:
                fraction += job_state.sampling_step / steps / job_state.job_count
        elapsed = time.time() - (job.started or time.time())
        eta = elapsed / fraction - elapsed if fraction > 0.01 else None
        return {"status": job.status, "progress": min(fraction, 1.0), "eta": eta, "step": job_state.sampling_step,
                "steps": steps, "job_no": job_state.job_no, "job_count": job_state.job_count, "queue_position": 0,
                "textinfo": job_state.textinfo}

    def _trim(self) -> None:
        finished = [j for j in self._jobs.values() if j.finished is not None]
        for job in finished[: max(0, len(finished) - KEEP_FINISHED)]:
            del self._jobs[job.id]

    def _run(self, worker: worker_context.Worker) -> None:
        worker_context.bind(worker)
        while True:
            with self._cond:
                while not self._pending:
                    self._cond.wait()
                client, jobs = next(iter(self._pending.items()))
                job = jobs.popleft()
                del self._pending[client]
                if jobs:  # the client's next job waits for the other clients' turns
                    self._pending[client] = jobs
                self._running[worker.index] = job
                job.worker = worker
                job.status = RUNNING
                job.started = time.time()
            try:
                heavy_imports.ensure()  # this thread imports torch and diffusers first; others wait for it
                if worker.device is None and worker.device_name is not None:
                    worker.device = devices.worker_device(worker.device_name)
                state.begin(job.description)
                job.result = job.func()
                job.status = DONE
            except Exception as e:
                job.status = FAILED
                job.error_is_user_input = isinstance(e, errors.UserInputError)
                job.error_out_of_memory = devices.is_out_of_memory(e)
                if type(e).__module__.startswith("modules."):  # only the project's errors name an HTTP status
                    job.error_status = getattr(e, "status_code", None)
                if job.error_out_of_memory:
                    job.error = (f"Out of memory ({(str(e).strip().splitlines() or [type(e).__name__])[0][:200]}). "
                                 f"The memory was freed; try a smaller size or batch size (the job had already tried "
                                 f"lower memory modes and VAE tiles where they apply).")
                    errors.report(f"job {job.id}: {job.error}")
                    devices.torch_gc()  # only here and on unload: what the failed job held goes back to the device
                else:
                    job.error = str(e) if job.error_is_user_input or job.error_status else f"{type(e).__name__}: {e}"
                if not job.error_is_user_input and not job.error_out_of_memory and not job.error_status:
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
                self._running.pop(self.slot_of(job), None)
            job.done_event.set()


queue = JobQueue()
