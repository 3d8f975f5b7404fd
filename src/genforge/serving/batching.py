"""Dynamic batching for one-pass work (images, edits, spoken digits): requests for one model wait in a bounded
queue; a worker takes the first, gathers what else has arrived (up to `max_batch` rows, waiting at most
`max_wait_s`) and runs them as one batch on a thread of its own, so the event loop keeps answering while the
model works. Text is batched per decode step instead (`scheduler.py`).

Rows are images (an image request of n images is n rows) or spoken digits (a speech request of d digits is d
rows); requests share a batch only when their keys (the kind of request and the family options) are equal. A
cancelled request (client gone, timeout) leaves the queue.

Admission: a request's work is its rows x network calls per row; the seconds per unit of work are measured on
the batches run. A request whose estimated wait (the running batch's rest and the queued work ahead) exceeds the
bound (`max_queue_wait_s`, or by default two full batches' time: one running, one forming, and at least a
quarter of a second) is refused at once
(`QueueFull`, a 429 whose Retry-After is when the wait would be back under the bound), as is one beyond
`max_queue` requests.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Hashable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field


# The default admission bound is never under this: a shorter wait costs less than a refusal and a retry (two HTTP
# exchanges), and nobody notices it.
MIN_BOUND_S = 0.25


class QueueFull(Exception):
    """Refused for now: `retry_after` seconds (a float) until the server expects to admit it."""

    def __init__(self, model: str, depth: int, retry_after: float, wait: float | None = None):
        why = (f"its estimated wait, {wait:.1f} s, is over this server's bound" if wait is not None
               else f"the queue is full ({depth} requests waiting)")
        super().__init__(f"Model '{model}' is busy: {why}. Retry after {max(retry_after, 0.001):.1f} s.")
        self.retry_after = max(retry_after, 0.001)


@dataclass(eq=False)
class Pending:
    """One request in the queue: its jobs (TextJob rows, or one image or audio job) and where results go."""

    jobs: list
    rows: int
    key: Hashable
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    run_options: dict = field(default_factory=dict)  # passed to the model's run (equal for requests of one key)
    stream: bool = True  # text: pieces as they come; False: the whole text in one event at the end
    buffer: list | None = None  # text not streamed: each row's text so far
    finished: list | None = None
    cancelled: bool = False


class Batcher:
    def __init__(self, name: str, model, max_batch: int, max_wait_s: float, max_queue: int, metrics=None,
                 max_queue_wait_s: float = 0.0):
        self.name, self.model = name, model
        self.max_batch, self.max_wait_s, self.max_queue = max_batch, max_wait_s, max_queue
        self.max_queue_wait_s = max_queue_wait_s  # 0: two full batches' time
        self.metrics = metrics
        self.waiting: collections.deque[Pending] = collections.deque()
        self.busy_seconds = 0.0
        self._arrived = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"genforge-{name}")
        self._task: asyncio.Task | None = None
        self.unit_s = 0.0  # measured seconds per unit of work (EMA); 0 until the first batch
        self._running: tuple[float, float] = (0.0, 0.0)  # the running batch: (start on the loop's clock, est. s)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop(), name=f"batcher-{self.name}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        self._executor.shutdown(wait=True, cancel_futures=True)

    @staticmethod
    def work(pending: Pending) -> float:
        """A request's work in rows x network calls per row."""
        job = pending.jobs[0]
        return pending.rows * max(1, getattr(job, "calls", pending.rows) // max(1, pending.rows))

    def estimate(self, pending: Pending | None = None) -> tuple[float, float]:
        """(estimated wait before `pending` starts, the bound on it), in seconds."""
        start, est = self._running
        rest = max(0.0, start + est - asyncio.get_running_loop().time()) if est else 0.0
        ahead = sum(self.work(p) for p in self.waiting if not p.cancelled)
        per_row = self.work(pending) / pending.rows if pending is not None else 1
        bound = self.max_queue_wait_s or max(MIN_BOUND_S, 2 * self.max_batch * per_row * self.unit_s)  # 2 batches
        return rest + ahead * self.unit_s, bound

    def submit(self, pending: Pending) -> None:
        live = sum(not p.cancelled for p in self.waiting)
        wait, bound = self.estimate(pending)
        if live >= self.max_queue:
            raise QueueFull(self.name, live, wait)
        if wait > bound:  # retry when the queue has moved on by the difference
            raise QueueFull(self.name, live, wait - bound, wait)
        self.waiting.append(pending)
        self._depth()
        self._arrived.set()

    def _depth(self) -> None:
        if self.metrics is not None:
            live = [p for p in self.waiting if not p.cancelled]
            self.metrics.queue_depth.labels(self.name).set(len(live))
            self.metrics.queue_work.labels(self.name).set(sum(self.work(p) for p in live))
            self.metrics.estimated_wait.labels(self.name).set(self.estimate()[0])

    def _take(self, batch: list[Pending], rows: int) -> int:
        """Move the waiting requests that fit (same key, rows left) into the batch, keeping the others' order."""
        keep: collections.deque[Pending] = collections.deque()
        while self.waiting:
            p = self.waiting.popleft()
            if p.cancelled:
                continue
            if (not batch or p.key == batch[0].key) and rows + p.rows <= self.max_batch:
                batch.append(p)
                rows += p.rows
            else:
                keep.append(p)
        self.waiting = keep
        self._depth()
        return rows

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self.waiting:
                self._arrived.clear()
                await self._arrived.wait()
            batch: list[Pending] = []
            rows = self._take(batch, 0)
            if not batch:
                continue
            deadline = loop.time() + self.max_wait_s
            while rows < self.max_batch and (left := deadline - loop.time()) > 0:
                self._arrived.clear()
                try:
                    await asyncio.wait_for(self._arrived.wait(), left)
                except asyncio.TimeoutError:
                    break
                rows = self._take(batch, rows)
            if self.metrics is not None:
                self.metrics.batch_rows.labels(self.name).observe(rows)
            units = sum(self.work(p) for p in batch)
            t = loop.time()
            self._running = (t, units * self.unit_s)
            self._depth()
            await loop.run_in_executor(self._executor, self._run, batch, loop)
            took = loop.time() - t
            self._running = (0.0, 0.0)
            self.unit_s = took / units if self.unit_s == 0 else 0.8 * self.unit_s + 0.2 * took / units
            self.busy_seconds += took
            self._depth()

    def _run(self, batch: list[Pending], loop: asyncio.AbstractEventLoop) -> None:
        """On the worker thread: one forward pass (or one sampler run) for the batch."""

        def send(p: Pending, event) -> None:
            loop.call_soon_threadsafe(p.events.put_nowait, event)

        try:  # one job per request; the generator renders them together and splits the result
            results = self.model.run([p.jobs[0] for p in batch], **batch[0].run_options)
            for p, arr in zip(batch, results):
                send(p, ("result", arr))
            for p in batch:
                send(p, ("done", None))
        except Exception as e:  # noqa: BLE001 - handed to each request, which answers with an error
            for p in batch:
                send(p, ("error", e))


__all__ = ["Batcher", "Pending", "QueueFull"]
