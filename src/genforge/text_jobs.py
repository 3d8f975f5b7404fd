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


IdSteps = Callable[[list[list[int]], Callable[[int, list[int]], bool], list[int]], Iterator[list[int | None]]]


def run_jobs(tokenizer: Tokenizer, jobs: list[TextJob], id_steps: IdSteps) -> Iterator[list[str | None]]:
    """Generate every job as one batch, yielding per step each job's new text ("" while a multi-byte
    character or a possible stop string is incomplete; None once the job has ended).
    `id_steps(prompt_ids, should_stop, banned_ids)` produces the ids (see the module docstring)."""
    if not jobs:
        raise UserError("Give at least one prompt.")
    stops = [[job.stop] if isinstance(job.stop, str) else [s for s in (job.stop or []) if s] for job in jobs]
    decoders = [StreamDecoder(tokenizer) for _ in jobs]
    text = [""] * len(jobs)  # generated text so far, per row
    sent = [0] * len(jobs)  # how much of it was handed out; a stop string never starts before this
    done = [False] * len(jobs)

    def first_stop(b: int) -> int:
        return min((i for i in (text[b].find(s, sent[b]) for s in stops[b]) if i >= 0), default=-1)

    def on_token(b: int, ids: list[int]) -> bool:  # called by `id_steps` for each new id of a row
        jobs[b].completion_tokens = len(ids)
        text[b] += decoders[b].push(ids[-1])
        if first_stop(b) >= 0:
            jobs[b].finish_reason = "stop"
            return True
        if jobs[b].cancelled is not None and jobs[b].cancelled():
            jobs[b].finish_reason = "cancelled"
            return True
        return False

    def take(b: int, final: bool) -> str | None:
        if done[b]:
            return None
        cut = first_stop(b)
        if cut >= 0 or final:
            done[b] = jobs[b].ended = True
            jobs[b].finish_reason = jobs[b].finish_reason or ("stop" if cut >= 0 else "length")
            return text[b][sent[b]:cut if cut >= 0 else None]
        # Hold back the longest tail that could still grow into a stop string.
        tail = max((k for s in stops[b] for k in range(1, len(s)) if text[b].endswith(s[:k])), default=0)
        piece = text[b][sent[b]:len(text[b]) - tail]
        sent[b] += len(piece)
        return piece

    ids = [prompt_ids(tokenizer, job.prompt) for job in jobs]
    for job, row in zip(jobs, ids):
        job.prompt_tokens, job.completion_tokens, job.finish_reason, job.ended = len(row), 0, None, False
    unk = tokenizer.unk_id  # stands for no character: it would only print as U+FFFD
    for out in id_steps(ids, on_token, [] if unk is None else [unk]):
        for b, job in enumerate(jobs):  # a row that has ended hands out its last piece now, not with the batch
            if not done[b] and (out[b] is None or job.completion_tokens >= job.max_new_tokens):
                text[b] += decoders[b].flush()
        yield [take(b, final=out[b] is None or jobs[b].completion_tokens >= jobs[b].max_new_tokens)
               for b in range(len(jobs))]
    for b in range(len(jobs)):
        text[b] += decoders[b].flush()
    yield [take(b, final=True) for b in range(len(jobs))]


def joined(steps: Iterator[list[str | None]], rows: int) -> list[str]:
    """Each row's whole text from `run_jobs`' per-step pieces (what `generate` returns)."""
    pieces: list[list[str]] = [[] for _ in range(rows)]
    for step in steps:
        for row, piece in zip(pieces, step):
            if piece:
                row.append(piece)
    return ["".join(row) for row in pieces]
