"""Prompts in, text pieces out: the part of text generation every generator shares (torch-free).

A generator (`genforge.load`'s TextGenerator on torch, the runtime's on onnxruntime) supplies `id_steps`, which
yields one list of new token ids per step (None for a row that has ended) and calls `should_stop(row, ids)`
after each id, as `models/sampling.generate` does. `run_jobs` turns those ids into text: UTF-8-safe streaming
(a multi-byte character or BPE piece is handed out whole), stop strings (never handed out, nor anything after
them, even when they span several tokens), cancellation, and each job's token counts and finish reason.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from genforge.errors import UserError
from genforge.tokenizers import StreamDecoder, Tokenizer


@dataclass
class TextJob:
    """One row of a batched text generation: its prompt, limits, sampling and random generator (torch's or
    numpy's, whichever its generator draws from), and (filled in by `run_jobs`) its token counts and why it
    ended: "stop", "length" or "cancelled"."""

    prompt: str
    max_new_tokens: int = 200
    temperature: float = 0.8
    top_k: int | None = None
    top_p: float | None = None
    stop: list[str] | str | None = None
    rng: Any = None
    cancelled: Callable[[], bool] | None = None  # polled after each token; True ends the row
    mark: Any = None  # this row's keyed text mark, or None: a media.text_mark.TournamentMark (reweights the final
    # sampling distribution) or the earlier TextMark (biases the logits)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str | None = None
    ended: bool = False  # its last piece has been handed out


def check_sampling_args(temperature: float, top_k: int | None, top_p: float | None) -> None:
    if temperature < 0:
        raise UserError(f"temperature must be >= 0 (0 = greedy); got {temperature}. Fix: use e.g. 0.8.")
    if top_k is not None and top_k < 1:
        raise UserError(f"top_k must be >= 1 or unset; got {top_k}. Fix: use e.g. 50, or leave it unset.")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise UserError(f"top_p must be in (0, 1] or unset; got {top_p}. Fix: use e.g. 0.9, or leave it unset.")


def prompt_ids(tokenizer: Tokenizer, prompt: str) -> list[int]:
    if not isinstance(prompt, str):
        raise UserError(f"A prompt must be a string, got {type(prompt).__name__}.")
    ids = tokenizer.encode(prompt)
    if not ids:  # an empty prompt starts from a newline, as a fresh document would
        ids = tokenizer.encode("\n")
    return ids


class RowText:
    """One job's text as its ids arrive (the part of `run_jobs` that is per row, so a scheduler whose rows join
    and leave a running batch shares it): UTF-8-safe pieces, stop strings never handed out, cancellation, and the
    job's token counts, finish reason and `ended` flag."""

    def __init__(self, tokenizer: Tokenizer, job: TextJob):
        self.job = job
        self.stops = [job.stop] if isinstance(job.stop, str) else [s for s in (job.stop or []) if s]
        self.decoder = StreamDecoder(tokenizer)
        self.text = ""  # generated text so far
        self.sent = 0  # how much of it was handed out; a stop string never starts before this
        self.done = False
        job.completion_tokens, job.finish_reason, job.ended = 0, None, False

    def _first_stop(self) -> int:
        return min((i for i in (self.text.find(s, self.sent) for s in self.stops) if i >= 0), default=-1)

    def push(self, ids: list[int]) -> bool:
        """The row's ids so far (the newest last); True when the row must end (a stop string, or cancelled)."""
        job = self.job
        job.completion_tokens = len(ids)
        self.text += self.decoder.push(ids[-1])
        if self._first_stop() >= 0:
            job.finish_reason = "stop"
            return True
        if job.cancelled is not None and job.cancelled():
            job.finish_reason = "cancelled"
            return True
        return False

    def take(self, final: bool = False) -> str | None:
        """The text that may be handed out now; `final`: the row has ended, so all of it (None once taken)."""
        if self.done:
            return None
        if final:
            self.text += self.decoder.flush()
        cut = self._first_stop()
        if cut >= 0 or final:
            self.done = self.job.ended = True
            self.job.finish_reason = self.job.finish_reason or ("stop" if cut >= 0 else "length")
            return self.text[self.sent:cut if cut >= 0 else None]
        # Hold back the longest tail that could still grow into a stop string.
        tail = max((k for s in self.stops for k in range(1, len(s)) if self.text.endswith(s[:k])), default=0)
        piece = self.text[self.sent:len(self.text) - tail]
        self.sent += len(piece)
        return piece


IdSteps = Callable[[list[list[int]], Callable[[int, list[int]], bool], list[int]], Iterator[list[int | None]]]


def run_jobs(tokenizer: Tokenizer, jobs: list[TextJob], id_steps: IdSteps) -> Iterator[list[str | None]]:
    """Generate every job as one batch, yielding per step each job's new text ("" while a multi-byte
    character or a possible stop string is incomplete; None once the job has ended).
    `id_steps(prompt_ids, should_stop, banned_ids)` produces the ids (see the module docstring)."""
    if not jobs:
        raise UserError("Give at least one prompt.")
    ids = [prompt_ids(tokenizer, job.prompt) for job in jobs]
    rows = [RowText(tokenizer, job) for job in jobs]
    for job, row in zip(jobs, ids):
        job.prompt_tokens = len(row)
    unk = tokenizer.unk_id  # stands for no character: it would only print as U+FFFD
    for out in id_steps(ids, lambda b, row_ids: rows[b].push(row_ids), [] if unk is None else [unk]):
        # a row that has ended hands out its last piece now, not with the batch
        yield [row.take(final=out[b] is None or row.job.completion_tokens >= row.job.max_new_tokens)
               for b, row in enumerate(rows)]
    yield [row.take(final=True) for row in rows]


def joined(steps: Iterator[list[str | None]], rows: int) -> list[str]:
    """Each row's whole text from `run_jobs`' per-step pieces (what `generate` returns)."""
    pieces: list[list[str]] = [[] for _ in range(rows)]
    for step in steps:
        for row, piece in zip(pieces, step):
            if piece:
                row.append(piece)
    return ["".join(row) for row in pieces]
