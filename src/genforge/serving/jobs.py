"""Jobs that outlive their request (video clips): a bounded queue per model, one worker per model that runs its
jobs one at a time on a thread of its own (the event loop keeps answering polls), their status and integer
progress for polling, cancellation, expiry.

A job goes queued -> in_progress -> completed | failed. Deleting it cancels it: a queued job never runs, a
running one stops at its next progress report (the generator's progress callback raises), and its results are
dropped. A finished job and its results are kept `expiry_s` after it ends, and at most `max_kept` finished jobs
are kept (the oldest go first), so memory stays bounded. Jobs are held in memory by the process that took the
POST; each is visible only to the API key that created it.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import logging
import secrets
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from genforge.errors import UserError
from genforge.serving.batching import QueueFull

log = logging.getLogger("genforge.serving")

STATUSES = ("queued", "in_progress", "completed", "failed")


class JobCancelled(Exception):
    """Raised inside the generator (from its progress callback) to stop a job that was deleted."""


class JobTimeout(Exception):
    """Raised inside the generator (from its progress callback) when a job runs past the server's limit."""


def owner_of(authorization: str | None, keys: list[str]) -> str:
    """Who may see a job: a digest of the API key that created it ("" on a server without keys)."""
    if not keys or not authorization:
        return ""
    token = authorization.partition(" ")[2].strip() or authorization.strip()
    return hashlib.sha256(token.encode()).hexdigest()[:32]


@dataclass(eq=False)
class Job:
    id: str
    model: str
    owner: str
    params: dict  # what the model's runner needs (the route's checked request)
    seq: int  # creation order (created_at has whole seconds only)
    created_at: float = field(default_factory=time.time)
    status: str = "queued"
    progress: int = 0  # 0..100, never decreasing
    started_at: float | None = None
    completed_at: float | None = None
    expires_at: float | None = None
    error: dict | None = None  # {code, message} when failed
    result: Any = None  # the runner's return value once completed
    cancelled: bool = False
    timeout_s: float | None = None

    def report(self, done: float, total: float) -> None:
        """The generator's progress callback (on the worker thread): raises to stop a deleted or overdue job."""
        if self.cancelled:
            raise JobCancelled(self.id)
        if self.timeout_s is not None and self.started_at is not None and time.time() - self.started_at > self.timeout_s:
            raise JobTimeout(self.id)
        if total > 0:  # 0..95 while the generator runs; the rest once the files are written
            self.progress = max(self.progress, min(95, int(95 * done / total)))


class JobStore:
    """The jobs of one app. `runners`: {model: runner(job) -> result}, called on the model's worker thread;
    it passes `job.report` to the generator as its progress callback."""

    def __init__(self, runners: dict[str, Callable[[Job], Any]], max_queued: int, expiry_s: float, max_kept: int,
                 timeout_s: float | None, metrics=None, prefix: str = "job_"):
        self.runners, self.max_queued, self.expiry_s, self.max_kept = runners, max_queued, expiry_s, max_kept
        self.timeout_s, self.metrics, self.prefix = timeout_s, metrics, prefix
        self.jobs: dict[str, Job] = {}  # in creation order
        self.queues: dict[str, collections.deque[Job]] = {m: collections.deque() for m in runners}
        self._arrived: dict[str, asyncio.Event] = {}
        self._tasks: list[asyncio.Task] = []
        self._executors: dict[str, ThreadPoolExecutor] = {}
        self._last_run_s = dict.fromkeys(runners, 1.0)  # for Retry-After
        self._seq = 0

    # -- lifecycle (the app's lifespan) ------------------------------------------------------------------------
    def start(self) -> None:
        loop = asyncio.get_running_loop()
        for model in self.runners:
            self._arrived[model] = asyncio.Event()
            if self.queues[model]:
                self._arrived[model].set()
            self._executors[model] = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"genforge-jobs-{model}")
            self._tasks.append(loop.create_task(self._work(model), name=f"jobs-{model}"))
        if self.runners:
            self._tasks.append(loop.create_task(self._sweeper(), name="jobs-expiry"))

    async def stop(self) -> None:
        """Stop the workers; a running job is told to stop at its next progress report and is failed."""
        for job in self.jobs.values():
            if job.status == "in_progress":
                job.cancelled = True
                self._fail(job, "shutdown", "The server shut down while this job ran; create it again.")
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        for task in tasks:
            try:
                await task
            except asyncio.CancelledError:
                pass
        executors, self._executors = self._executors, {}
        for ex in executors.values():
            ex.shutdown(wait=True, cancel_futures=True)

    # -- what the routes do ------------------------------------------------------------------------------------
    def submit(self, model: str, owner: str, params: dict) -> Job:
        """A new queued job, or QueueFull when the model already has `max_queued` jobs waiting."""
        self.sweep()
        queue = self.queues[model]
        if len(queue) >= self.max_queued:
            if self.metrics is not None:
                self.metrics.rejected.labels(model).inc()
            running = any(j.status == "in_progress" and j.model == model for j in self.jobs.values())
            raise QueueFull(model, len(queue), max(1, round(self._last_run_s[model] * (len(queue) + running))))
        self._seq += 1
        job = Job(self.prefix + secrets.token_hex(16), model, owner, params, self._seq, timeout_s=self.timeout_s)
        self.jobs[job.id] = job
        queue.append(job)
        if model in self._arrived:
            self._arrived[model].set()
        self._update_metrics()
        return job

    def get(self, job_id: str, owner: str) -> Job | None:
        self.sweep()
        job = self.jobs.get(job_id)
        return job if job is not None and job.owner == owner else None

    def listing(self, owner: str, order: str = "desc", after: str | None = None,
                limit: int = 20) -> tuple[list[Job], bool]:
        """One page of `owner`'s jobs (newest first for "desc") after the job `after`, and whether more follow.
        KeyError when `after` is not one of theirs (deleted or expired)."""
        self.sweep()
        mine = [j for j in self.jobs.values() if j.owner == owner]
        if order == "desc":
            mine.reverse()
        if after is not None:
            ids = [j.id for j in mine]
            if after not in ids:
                raise KeyError(after)
            mine = mine[ids.index(after) + 1:]
        return mine[:limit], len(mine) > limit

    def delete(self, job_id: str, owner: str) -> Job | None:
        """Cancel and forget a job: a queued one never runs, a running one stops at its next progress report."""
        job = self.get(job_id, owner)
        if job is None:
            return None
        job.cancelled = True
        self._drop(job)
        if self.metrics is not None and job.status in ("queued", "in_progress"):
            self.metrics.jobs_finished.labels(job.model, "cancelled").inc()
        self._update_metrics()
        return job

    def sweep(self) -> None:
        """Forget expired jobs (and the oldest finished ones beyond `max_kept`) with their results."""
        now = time.time()
        finished = [j for j in self.jobs.values() if j.status in ("completed", "failed")]
        old = [j for j in finished if j.expires_at is not None and j.expires_at <= now]
        over = len(finished) - len(old) - self.max_kept
        if over > 0:
            old += sorted((j for j in finished if j not in old), key=lambda j: j.completed_at or 0)[:over]
        for job in old:
            self._drop(job)
            if self.metrics is not None:
                self.metrics.jobs_finished.labels(job.model, "expired").inc()
        if old:
            self._update_metrics()

    # -- the workers -------------------------------------------------------------------------------------------
    def _drop(self, job: Job) -> None:
        self.jobs.pop(job.id, None)
        job.result = None
        try:
            self.queues[job.model].remove(job)
        except ValueError:
            pass

    async def _work(self, model: str) -> None:
        loop = asyncio.get_running_loop()
        queue, arrived = self.queues[model], self._arrived[model]
        while True:
            if not queue:
                arrived.clear()
                await arrived.wait()
                continue
            job = queue.popleft()
            if job.cancelled:
                continue
            job.status, job.started_at = "in_progress", time.time()
            self._update_metrics()
            try:
                result = await loop.run_in_executor(self._executors[model], self.runners[model], job)
            except JobCancelled:
                continue  # deleted while it ran: already forgotten
            except JobTimeout:
                self._fail(job, "timeout", f"The job ran longer than this server's {self.timeout_s:g} s limit. Fix: "
                           "ask for fewer frames or fewer sampler steps.")
            except UserError as e:
                self._fail(job, "invalid_request", str(e))
            except Exception as e:  # a generator's failure fails its job, never the server
                log.exception("video job %s failed", job.id)
                self._fail(job, "generation_failed", f"Generation failed ({type(e).__name__}); the server is still up.")
            else:
                if job.cancelled:
                    continue
                job.result, job.progress, job.status = result, 100, "completed"
                self._end(job)
                if self.metrics is not None:
                    self.metrics.jobs_finished.labels(model, "completed").inc()
            finally:
                if job.started_at is not None:
                    self._last_run_s[model] = time.time() - job.started_at
                self._update_metrics()

    def _fail(self, job: Job, code: str, message: str) -> None:
        if job.status in ("completed", "failed"):
            return
        job.status, job.error = "failed", {"code": code, "message": message}
        self._end(job)
        if self.metrics is not None:
            self.metrics.jobs_finished.labels(job.model, "failed").inc()

    def _end(self, job: Job) -> None:
        job.completed_at = time.time()
        job.expires_at = job.completed_at + self.expiry_s

    async def _sweeper(self) -> None:
        while True:
            await asyncio.sleep(max(0.05, min(30.0, self.expiry_s / 4)))
            self.sweep()

    def _update_metrics(self) -> None:
        if self.metrics is None:
            return
        counts = collections.Counter((j.model, j.status) for j in self.jobs.values())
        for model in self.runners:
            for status in STATUSES:
                self.metrics.jobs.labels(model, status).set(counts[(model, status)])
            self.metrics.queue_depth.labels(model).set(len(self.queues[model]))


__all__ = ["Job", "JobCancelled", "JobStore", "JobTimeout", "QueueFull", "owner_of"]
