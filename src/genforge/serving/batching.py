"""Dynamic batching: requests for one model wait in a bounded queue; a worker takes the first, gathers
what else has arrived (up to `max_batch` rows, waiting at most `max_wait_s`) and runs them as one batch on
a thread of its own, so the event loop keeps answering while the model works.

Rows are images (an image request of n images is n rows), spoken digits (a speech request of d digits is d
rows) or text choices (prompts x n). Text rows of any length and sampling settings share a batch (the
library pads them; each row samples from its request's own generator); image and speech requests share
one only when their keys (the kind of request and the family options) are equal. A full
queue refuses at once (`QueueFull`, a 429 upstream) instead of growing. A cancelled request (client gone,
timeout) leaves the queue, or its rows end at their next token, which frees the slot.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Hashable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field


class QueueFull(Exception):
    def __init__(self, model: str, depth: int, retry_after: int):
        super().__init__(f"The queue for model '{model}' is full ({depth} requests waiting). Retry after "
                         f"{retry_after} s.")
        self.retry_after = retry_after


@dataclass(eq=False)
class Pending:
    """One request in the queue: its jobs (TextJob rows, or one image or audio job) and where results go."""

    jobs: list
    rows: int
    key: Hashable
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    cancelled: bool = False


class Batcher:
    def __init__(self, name: str, model, max_batch: int, max_wait_s: float, max_queue: int, metrics=None):
        self.name, self.model = name, model
        self.max_batch, self.max_wait_s, self.max_queue = max_batch, max_wait_s, max_queue
        self.metrics = metrics
        self.waiting: collections.deque[Pending] = collections.deque()
        self.busy_seconds = 0.0
        self._arrived = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"genforge-{name}")
        self._task: asyncio.Task | None = None
        self._last_batch_s = 1.0  # for Retry-After: how long the queue might take to move

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

    def submit(self, pending: Pending) -> None:
        live = sum(not p.cancelled for p in self.waiting)
        if live >= self.max_queue:
            raise QueueFull(self.name, live, max(1, round(self._last_batch_s)))
        self.waiting.append(pending)
        self._depth()
        self._arrived.set()

    def _depth(self) -> None:
        if self.metrics is not None:
            self.metrics.queue_depth.labels(self.name).set(sum(not p.cancelled for p in self.waiting))

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
            t = loop.time()
            await loop.run_in_executor(self._executor, self._run, batch, loop)
            self._last_batch_s = loop.time() - t
            self.busy_seconds += self._last_batch_s

    def _run(self, batch: list[Pending], loop: asyncio.AbstractEventLoop) -> None:
        """On the worker thread: one forward pass (images, clips) or one decoding loop (text) for the batch."""

        def send(p: Pending, event) -> None:
            loop.call_soon_threadsafe(p.events.put_nowait, event)

        try:
            if self.model.modality in ("text", "music"):  # a music model is a text model: its rows are text jobs
                jobs = [job for p in batch for job in p.jobs]
                spans, start = [], 0
                for p in batch:
                    spans.append((p, start, start + len(p.jobs)))
                    start += len(p.jobs)
                finished: set[int] = set()
                for step in self.model.run(jobs):
                    for i, (p, a, b) in enumerate(spans):
                        pieces = step[a:b]
                        if any(piece for piece in pieces):
                            send(p, ("pieces", pieces))
                        if i not in finished and all(job.ended for job in p.jobs):
                            finished.add(i)  # answered now, not when the batch's longest row ends
                            send(p, ("done", None))
                batch = [p for i, (p, _, _) in enumerate(spans) if i not in finished]
                if self.metrics is not None:  # cancelled rows included: what the model really did
                    self.metrics.tokens.labels(self.name).inc(sum(job.completion_tokens for job in jobs))
            else:  # one job per request; the generator renders them together and splits the result
                results = self.model.run([p.jobs[0] for p in batch])
                for p, arr in zip(batch, results):
                    send(p, ("result", arr))
            for p in batch:
                send(p, ("done", None))
        except Exception as e:  # noqa: BLE001 - handed to each request, which answers with an error
            for p in batch:
                send(p, ("error", e))


__all__ = ["Batcher", "Pending", "QueueFull"]
