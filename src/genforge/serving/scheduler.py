"""Step-level (continuous) batching for text: one running batch per text model, which requests' rows join
between decode steps (their prompts prefilled as one batch) and leave the step they finish, so a short
completion never waits for the batch's longest and a new one never waits for the batch to drain.

The model side is an engine (`TextGenerator.engine` on torch, `ExportedTextModel.engine` on onnxruntime) with
four methods: `admit` rows (prefill), `sample` one id per row, `advance` every row by its id (one decode step),
`drop` rows. Everything per row that is not the model (UTF-8 pieces, stop strings, cancellation, counts) is
`text_jobs.RowText`, the code the library's own `generate` runs. Rows draw their random numbers in admission
order, so a request's text is the one `generate` gives for the same seed, whatever shares the batch.

The loop runs on a thread of its own (torch and onnxruntime release the GIL while they compute); results reach
the event loop as one callback per step. A request is admitted when its estimated wait (a simulation of the
running rows and the queue, each row assumed to run to its max_tokens at the measured step time) is within the
bound: `max_queue_wait_s`, or by default the request's own estimated running time (and at least a quarter of a
second), so an admitted request takes at most about twice as long as it would on a full batch.
"""

from __future__ import annotations

import asyncio
import collections
import heapq
import threading
import time
from dataclasses import dataclass

from genforge.serving.batching import MIN_BOUND_S, Pending, QueueFull
from genforge.text_jobs import RowText, TextJob, prompt_ids


@dataclass(eq=False)
class _Row:
    pending: Pending
    index: int  # the row's place in its request
    job: TextJob
    text: RowText
    seq: int  # admission order: rows draw their random numbers in it
    ids: list[int]
    last: int = 0


class TextScheduler:
    def __init__(self, name: str, model, max_batch: int, max_queue: int, metrics=None, max_wait_s: float = 0.0):
        self.name, self.model, self.capacity, self.max_queue, self.metrics = name, model, max_batch, max_queue, metrics
        self.max_wait_s = max_wait_s  # 0: a request's own estimated running time
        self.waiting: collections.deque[Pending] = collections.deque()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = False
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.step_s = 0.0  # measured seconds per decode step of the running batch (EMA); 0 until measured
        self._remaining: list[int] = []  # tokens each running row may still take, for the wait estimate
        self._seq = 0
        self._gauged = 0.0
        self.busy_seconds = 0.0
        unk = model.tokenizer.unk_id
        self._banned = [] if unk is None else [unk]

    # -- on the event loop -------------------------------------------------------------------------------------
    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._run, name=f"genforge-{self.name}", daemon=True)
        self._thread.start()

    async def stop(self) -> None:
        self._stop = True
        self._wake.set()
        if self._thread is not None:
            await asyncio.get_running_loop().run_in_executor(None, self._thread.join, 30)

    @staticmethod
    def work(pending: Pending) -> int:
        """A request's work in row-tokens (each row at its max_tokens)."""
        return sum(job.max_new_tokens for job in pending.jobs)

    def estimate(self, pending: Pending | None = None) -> tuple[float, float]:
        """(estimated wait before `pending` starts, its estimated running time), in seconds: the running rows and
        the queue played forward on the batch's slots, each row taking its max_tokens steps."""
        step = self.step_s
        with self._lock:
            queue = [p for p in self.waiting if not p.cancelled]
        free = [r * step for r in self._remaining] + [0.0] * max(0, self.capacity - len(self._remaining))
        heapq.heapify(free)
        start = 0.0
        for p in [*queue, *([pending] if pending is not None else [])]:
            rows = min(p.rows, self.capacity)
            start = max(start, max(heapq.heappop(free) for _ in range(rows)))  # FIFO: never before those ahead
            for job in p.jobs[:rows]:
                heapq.heappush(free, start + job.max_new_tokens * step)
        run = max((job.max_new_tokens for job in pending.jobs), default=0) * step if pending is not None else 0.0
        return (start if pending is not None else free[0] if free else 0.0), run

    def submit(self, pending: Pending) -> None:
        with self._lock:
            live = sum(not p.cancelled for p in self.waiting)
        wait, run = self.estimate(pending)
        if live >= self.max_queue:
            raise QueueFull(self.name, live, wait)
        bound = self.max_wait_s or max(MIN_BOUND_S, run)
        if wait > bound:  # retry when the queue has moved on by the difference
            raise QueueFull(self.name, live, wait - bound, wait)
        with self._lock:
            self.waiting.append(pending)
        self._gauges()
        self._wake.set()

    def _gauges(self) -> None:
        self._gauged = time.perf_counter()
        if self.metrics is None:
            return
        with self._lock:
            queue = [p for p in self.waiting if not p.cancelled]
        self.metrics.queue_depth.labels(self.name).set(len(queue))
        self.metrics.queue_work.labels(self.name).set(sum(map(self.work, queue)) + sum(self._remaining))
        self.metrics.estimated_wait.labels(self.name).set(self.estimate()[0])

    # -- on the scheduler's thread -------------------------------------------------------------------------------
    def _deliver(self, events: list) -> None:
        if events and self._loop is not None:
            self._loop.call_soon_threadsafe(_put_all, events)

    def _admit(self, engine, room: int) -> list[_Row]:
        """The waiting requests that fit the free slots, in order (a request's rows join together)."""
        taken: list[Pending] = []
        with self._lock:
            while self.waiting and (self.waiting[0].cancelled or self.waiting[0].rows <= room):
                p = self.waiting.popleft()
                if not p.cancelled:
                    taken.append(p)
                    room -= p.rows
        rows = []
        for p in taken:
            for i, job in enumerate(p.jobs):
                row = _Row(p, i, job, RowText(self.model.tokenizer, job), self._seq, [])
                self._seq += 1
                rows.append(row)
        return rows

    def _run(self) -> None:
        engine = None
        while not self._stop:
            self._joining: list[_Row] = []
            try:
                engine = engine or self.model.engine(self.capacity)
                self._step(engine)
            except Exception as e:  # noqa: BLE001 - every running request answers with the error; a new engine
                rows = [*(engine.rows if engine is not None else []), *self._joining]
                failed = {id(r.pending): r.pending for r in rows}
                if engine is None:  # no engine at all: nothing waiting could ever run
                    with self._lock:
                        failed.update({id(p): p for p in self.waiting})
                        self.waiting.clear()
                    time.sleep(0.1)
                self._deliver([(p, ("error", e)) for p in failed.values()])
                engine, self._remaining = None, []

    def _step(self, engine) -> None:
        new = self._joining = self._admit(engine, self.capacity - len(engine.rows))
        if not engine.rows and not new:
            self._wake.wait(0.5)
            self._wake.clear()
            return
        began = time.perf_counter()
        events: list = []
        if new:
            prompts = [prompt_ids(self.model.tokenizer, r.job.prompt) for r in new]
            for r, ids in zip(new, prompts):
                r.job.prompt_tokens = len(ids)
            live = [(r, ids) for r, ids in zip(new, prompts) if r.job.max_new_tokens > 0]
            for r in new:
                if r.job.max_new_tokens <= 0:
                    r.text.take(final=True)
            engine.admit([r for r, _ in live], [r.job for r, _ in live], [ids for _, ids in live])
            for p in {id(r.pending): r.pending for r in new}.values():
                if all(job.ended for job in p.jobs):
                    events.append((p, ("done", None)))
        if engine.rows:
            rows = engine.rows
            order = sorted(range(len(rows)), key=lambda b: rows[b].seq)
            ids = engine.sample(order, self._banned)
            ended, pieces = [], {}
            for b, (r, token) in enumerate(zip(rows, ids)):
                r.ids.append(token)
                r.last = token
                final = r.text.push(r.ids) or len(r.ids) >= r.job.max_new_tokens
                piece = r.text.take(final=final)
                if final:
                    ended.append(b)
                if piece or final:
                    pieces.setdefault(id(r.pending), (r.pending, {}, []))
                    entry = pieces[id(r.pending)]
                    entry[1][r.index] = piece or ""
                    if final:
                        entry[2].append(r.index)
            for p, got, finished in pieces.values():
                step = [got.get(i) for i in range(len(p.jobs))]
                done = bool(finished) and all(job.ended for job in p.jobs)
                if not p.stream:  # a whole answer: its text waits here, one event at the end (not one per step)
                    p.buffer = [a + (b or "") for a, b in zip(p.buffer or [""] * len(step), step)]
                    p.finished = [*(p.finished or []), *finished]
                    if done:
                        events.append((p, ("pieces", (p.buffer, p.finished))))
                else:
                    events.append((p, ("pieces", (step, finished))))
                if done:
                    events.append((p, ("done", None)))
            if self.metrics is not None:
                self.metrics.tokens.labels(self.name).inc(len(ids))
                self.metrics.batch_rows.labels(self.name).observe(len(ids))
            engine.drop(ended)
            engine.advance([r.last for r in engine.rows])
            self._remaining = [r.job.max_new_tokens - len(r.ids) for r in engine.rows]
            dt = time.perf_counter() - began
            self.busy_seconds += dt
            self.step_s = dt if self.step_s == 0 else 0.9 * self.step_s + 0.1 * dt
        self._deliver(events)
        if time.perf_counter() - self._gauged > 0.05:  # a scrape every few seconds needs no fresher figures
            self._gauges()


def _put_all(events: list) -> None:
    for pending, event in events:
        pending.events.put_nowait(event)


__all__ = ["TextScheduler"]
