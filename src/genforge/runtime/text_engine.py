"""A running batch of text rows on onnxruntime (`ExportedTextModel.engine`): rows join (`admit`) and leave
(`drop`) between decode steps, `sample` picks each row's next id and `advance` feeds them, one graph run for the
whole batch. The same four methods as `generators/text_engine.TorchTextEngine`, so the server's scheduler drives
either; the runtime's own `generate` drives it too, with every row admitted at once.

A GPT export with an `attention_mask` input keeps one KV cache for the batch, each row's past right-aligned
(left-padded) to the longest row's and its padding masked, with per-row position ids; a row's window slides
exactly as `models/gpt.GPTSession`'s does (to its last block_size // 2 tokens, that row's cache recomputed), so
greedy text equals PyTorch's token for token. An export made before the mask steps each row alone (RowEngine), as
the runtime always did. An RNN's state is per row already, (n_layer, B, hidden), so its rows batch as they are.
Sampling is numpy's (`_select`): temperature, top-k, top-p, one uniform per row and step from the job's generator.
"""

from __future__ import annotations

import numpy as np

from genforge.errors import UserError
from genforge.text_jobs import TextJob


def _select(logits: np.ndarray, temperature: float, top_k: int | None, top_p: float | None, rng,
            reweight=None) -> int:
    """One id from a row's logits, as `models/sampling.select_next_rows` picks it: argmax at temperature 0,
    else one uniform number through the filtered distribution's inverse CDF. `reweight(probs)` -> float64 array
    or None replaces the final distribution first (the tournament text mark; as `sampling._reweighted` does)."""
    if temperature == 0:
        return int(np.argmax(logits))
    u = rng.random()
    lg = logits.astype(np.float32) / np.float32(temperature)
    if top_k is not None and top_k < len(lg):
        keep = np.argsort(-lg, kind="stable")[:top_k]
        cut = np.full_like(lg, -np.inf)
        cut[keep] = lg[keep]
        lg = cut
    if top_p is not None and top_p < 1.0:
        probs = np.exp(lg - lg.max())
        probs /= probs.sum()
        order = np.argsort(-probs, kind="stable")
        mass_before = np.cumsum(probs[order]) - probs[order]
        drop = mass_before >= top_p
        drop[0] = False
        lg = lg.copy()
        lg[order[drop]] = -np.inf
    probs = np.exp(lg - lg.max())
    if reweight is not None:
        p = (probs / probs.sum()).astype(np.float64)
        new = reweight(p / p.sum())
        if new is not None:
            probs = np.asarray(new, np.float32)
    cdf = np.cumsum(probs / probs.sum())
    return int(min(np.sum(cdf < (1.0 - u) * cdf[-1]), len(cdf) - 1))


class _Engine:
    """What every engine shares: the rows' bookkeeping (caller's rows, jobs, each row's ids: prompt + generated),
    sampling, and swap-remove. A subclass keeps the graph state: `_prefill(prompts)` and `_step(tokens)` return
    the new rows' / every row's next-token logits (rows, vocab); `_keep(order)` reorders or drops its rows."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.rows: list = []  # the caller's row objects, in slot order
        self.jobs: list[TextJob] = []
        self.tokens: list[list[int]] = []  # each row's prompt and generated ids
        self.logits: np.ndarray | None = None  # (rows, vocab)

    def admit(self, rows: list, jobs: list[TextJob], prompts: list[list[int]]) -> None:
        """Append rows, their prompts prefilled (a prompt longer than a GPT's block keeps its last block)."""
        if not rows:
            return
        if len(self.rows) + len(rows) > self.capacity:
            raise ValueError(f"this engine holds {self.capacity} rows: {len(self.rows)} are running, "
                             f"{len(rows)} more cannot join")
        if any(len(p) == 0 for p in prompts):
            raise UserError("Every prompt needs at least one token. Fix: start from a non-empty prompt "
                            "(e.g. a newline encoded with the model's tokenizer).")
        prompts = [[int(t) for t in p] for p in prompts]
        logits = self._prefill(prompts)
        self.logits = np.concatenate([self.logits, logits]) if self.rows else logits
        self.rows, self.jobs, self.tokens = self.rows + list(rows), self.jobs + list(jobs), self.tokens + prompts

    def sample(self, order: list[int], banned: list[int]) -> list[int]:
        """One new id per row (index i -> the id for rows[i]); rows draw from their job's generator in `order`,
        so rows that share one (a request's n choices) draw as they would alone. The job's mark applies as
        `models/sampling` applies it: the tournament mark reweights the final distribution, the green-list mark
        biases the logits."""
        out = [0] * len(self.rows)
        for i in order:
            job, logits, ids = self.jobs[i], self.logits[i].copy(), self.tokens[i]
            reweight = None
            if hasattr(job.mark, "reweight"):  # the tournament mark
                reweight = lambda p, mark=job.mark, ids=ids: mark.reweight(ids, p)
            elif job.mark is not None:  # the earlier green-list mark
                add = job.mark.bias(ids)
                if add is not None:
                    logits[:len(add)] += add
            logits[banned] = -np.inf
            out[i] = _select(logits, job.temperature, job.top_k, job.top_p, job.rng, reweight)
        return out

    def advance(self, tokens: list[int]) -> None:
        """Each row takes its new token (in slot order); one batched step refreshes every row's logits."""
        if len(tokens) != len(self.rows):
            raise ValueError(f"advance wants one token per row: {len(self.rows)} rows, {len(tokens)} tokens")
        if not self.rows:
            return
        tokens = [int(t) for t in tokens]
        for ids, t in zip(self.tokens, tokens):
            ids.append(t)
        self.logits = self._step(tokens)

    def drop(self, indices: list[int]) -> None:
        """Remove these rows: each freed slot takes the last row (swap-remove), as `rows` then shows."""
        order = list(range(len(self.rows)))
        for i in sorted(set(indices), reverse=True):  # the rows after i are kept ones: the last moves into i
            order[i] = order[-1]
            order.pop()
        if len(order) == len(self.rows):
            return
        self.rows, self.jobs, self.tokens = ([xs[k] for k in order] for xs in (self.rows, self.jobs, self.tokens))
        self.logits = self.logits[order]
        self._keep(order)


class GPTEngine(_Engine):
    """One KV cache for the batch: (rows, n_head, P, head_dim) per layer, row i's past in its last filled[i]
    columns, P the longest. Newcomers' prompts are prefilled in one run, left-padded to the longest."""

    def __init__(self, session, cfg: dict, capacity: int):
        super().__init__(capacity)
        self.session, self.cfg = session, cfg
        self.block = cfg["block_size"]
        self.keep_last = max(1, self.block // 2)
        self.names = [f"past_key_values.{i}.{kv}" for i in range(cfg["n_layer"]) for kv in ("key", "value")]
        self.start: list[int] = []  # each row's window start in its tokens
        self.filled = np.zeros(0, np.int64)  # each row's cached positions
        self.past = self._empty(0, 0)

    def _empty(self, rows: int, width: int) -> dict[str, np.ndarray]:
        shape = (rows, self.cfg["n_head"], width, self.cfg["head_dim"])
        return {n: np.zeros(shape, np.float32) for n in self.names}

    def _run(self, ids: np.ndarray, positions: np.ndarray, lengths: np.ndarray, past: dict):
        """(logits at each row's last input, the new past) for input ids (rows, T) at `positions` after `past`;
        row i's last lengths[i] positions (past and input together) are real, the ones before them padding."""
        width = past[self.names[0]].shape[2] + ids.shape[1]
        mask = (np.arange(width)[None] >= width - lengths[:, None]).astype(np.int64)
        out = self.session.run(None, {"input_ids": ids, "position_ids": positions, "attention_mask": mask, **past})
        return out[0][:, -1], dict(zip(self.names, out[1:]))

    def _windows(self, windows: list[list[int]]):
        """Run windows from position 0, left-padded to the longest: (logits, past (rows, .., longest, ..))."""
        width = max(len(w) for w in windows)
        ids = np.array([[0] * (width - len(w)) + w for w in windows], np.int64)
        positions = np.array([[0] * (width - len(w)) + list(range(len(w))) for w in windows], np.int64)
        return self._run(ids, positions, np.array([len(w) for w in windows]), self._empty(len(windows), 0))

    def _prefill(self, prompts: list[list[int]]) -> np.ndarray:
        windows = [p[max(0, len(p) - self.block):] for p in prompts]
        logits, past = self._windows(windows)
        width = max(self.past[self.names[0]].shape[2], past[self.names[0]].shape[2])
        self.past = {n: np.concatenate([_left_pad(self.past[n], width), _left_pad(past[n], width)]) for n in self.names}
        self.start += [len(p) - len(w) for p, w in zip(prompts, windows)]
        self.filled = np.concatenate([self.filled, [len(w) for w in windows]]).astype(np.int64)
        return logits

    def _step(self, tokens: list[int]) -> np.ndarray:
        for i, ids in enumerate(self.tokens):
            if len(ids) - self.start[i] > self.block:  # the new token would overflow the block
                self.start[i] = len(ids) - self.keep_last
        slid = [i for i, ids in enumerate(self.tokens) if self.filled[i] != len(ids) - 1 - self.start[i]]
        if slid:
            self._refill(slid)
        logits, self.past = self._run(np.array(tokens, np.int64)[:, None], self.filled[:, None], self.filled + 1,
                                      self.past)
        self.filled = self.filled + 1
        return logits

    def _refill(self, slid: list[int]) -> None:
        """Recompute the cache of rows whose window slid, from the window minus its newest token (which the
        step then feeds like every other row's). Their windows have one length: one run, no padding."""
        windows = [self.tokens[i][self.start[i]:-1] for i in slid]
        n = len(windows[0])
        self.filled[slid] = n
        if n:
            _, past = self._windows(windows)
            for name in self.names:
                self.past[name] = _left_pad(self.past[name], n)
                self.past[name][slid, :, self.past[name].shape[2] - n:] = past[name]
        self._trim()

    def _keep(self, order: list[int]) -> None:
        self.start = [self.start[k] for k in order]
        self.filled = self.filled[order]
        self.past = {n: a[order] for n, a in self.past.items()}
        self._trim()

    def _trim(self) -> None:
        """Drop the leading columns that are padding in every row (after a slide or a drop)."""
        cut = self.past[self.names[0]].shape[2] - int(self.filled.max(initial=0))
        if cut > 0:
            self.past = {n: np.ascontiguousarray(a[:, :, cut:]) for n, a in self.past.items()}


def _left_pad(a: np.ndarray, width: int) -> np.ndarray:
    """A past (rows, n_head, P, head_dim) widened to `width` columns by zeros on the left."""
    extra = width - a.shape[2]
    return a if extra <= 0 else np.pad(a, ((0, 0), (0, 0), (extra, 0), (0, 0)))


class RNNEngine(_Engine):
    """The recurrent state (n_layer, rows, hidden) holds each row's whole past. Newcomers are prefilled in groups
    of equal prompt length: the graph has no mask and returns the state after the last input only, so padding
    would run through the recurrence; a group needs none (a request's n choices share one prompt)."""

    def __init__(self, session, cfg: dict, capacity: int):
        super().__init__(capacity)
        self.session, self.cfg = session, cfg
        self.state_names = ["h", "c"] if cfg["architecture"] == "lstm" else ["h"]
        self.state = self._zeros(0)

    def _zeros(self, rows: int) -> dict[str, np.ndarray]:
        return {k: np.zeros((self.cfg["n_layer"], rows, self.cfg["hidden"]), np.float32) for k in self.state_names}

    def _run(self, ids: np.ndarray, state: dict):
        out = self.session.run(None, {"input_ids": ids, **state})
        return out[0][:, -1], dict(zip(self.state_names, out[1:]))

    def _prefill(self, prompts: list[list[int]]) -> np.ndarray:
        logits, state = [None] * len(prompts), self._zeros(len(prompts))
        for length in dict.fromkeys(len(p) for p in prompts):
            group = [i for i, p in enumerate(prompts) if len(p) == length]
            lg, st = self._run(np.array([prompts[i] for i in group], np.int64), self._zeros(len(group)))
            for j, i in enumerate(group):
                logits[i] = lg[j]
            for k in self.state_names:
                state[k][:, group] = st[k]
        self.state = {k: np.concatenate([self.state[k], state[k]], 1) for k in self.state_names}
        return np.stack(logits)

    def _step(self, tokens: list[int]) -> np.ndarray:
        logits, self.state = self._run(np.array(tokens, np.int64)[:, None], self.state)
        return logits

    def _keep(self, order: list[int]) -> None:
        self.state = {k: v[:, order] for k, v in self.state.items()}


class RowEngine(_Engine):
    """Each row steps its own graph state, batch 1 per run (`make_row(prompt)` -> an object with `logits` and
    `push(token)`): the path for GPT exports made before the attention mask (their rows must share one past
    length), and the baseline `benchmarks/runtime_text_batch.py` measures."""

    def __init__(self, make_row, capacity: int):
        super().__init__(capacity)
        self.make_row = make_row
        self.steppers: list = []

    def _prefill(self, prompts: list[list[int]]) -> np.ndarray:
        new = [self.make_row(p) for p in prompts]
        self.steppers += new
        return np.stack([r.logits for r in new])

    def _step(self, tokens: list[int]) -> np.ndarray:
        for row, t in zip(self.steppers, tokens):
            row.push(t)
        return np.stack([r.logits for r in self.steppers])

    def _keep(self, order: list[int]) -> None:
        self.steppers = [self.steppers[k] for k in order]


class _GPTRow:
    def __init__(self, session, cfg: dict, prompt: list[int], masked: bool):
        self.session, self.cfg, self.masked = session, cfg, masked
        self.block = cfg["block_size"]
        self.keep = max(1, self.block // 2)
        self.names = [f"past_key_values.{i}.{kv}" for i in range(cfg["n_layer"]) for kv in ("key", "value")]
        self.tokens = list(prompt)
        self.start = max(0, len(prompt) - self.block)  # a long prompt keeps its last block
        self.logits = self._prefill(self.tokens[self.start:])

    def _empty(self):
        shape = (1, self.cfg["n_head"], 0, self.cfg["head_dim"])
        return {n: np.zeros(shape, np.float32) for n in self.names}

    def _run(self, ids: list[int], first_position: int, past: dict) -> np.ndarray:
        feed = {"input_ids": np.array([ids], np.int64),
                "position_ids": np.arange(first_position, first_position + len(ids), dtype=np.int64)[None], **past}
        if self.masked:
            feed["attention_mask"] = np.ones((1, first_position + len(ids)), np.int64)
        out = self.session.run(None, feed)
        self.past = dict(zip(self.names, out[1:]))
        self.filled = first_position + len(ids)
        return out[0][0, -1]

    def _prefill(self, window: list[int]) -> np.ndarray | None:
        if not window:
            self.past, self.filled = self._empty(), 0
            return None
        return self._run(window, 0, self._empty())

    def push(self, token: int) -> None:
        self.tokens.append(token)
        if len(self.tokens) - self.start > self.block:
            self.start = len(self.tokens) - self.keep
        if self.filled != len(self.tokens) - 1 - self.start:  # the window slid: recompute its cache
            self._prefill(self.tokens[self.start:-1])
        self.logits = self._run([token], self.filled, self.past)


class _RNNRow:
    def __init__(self, session, cfg: dict, prompt: list[int]):
        self.session = session
        self.state_names = ["h", "c"] if cfg["architecture"] == "lstm" else ["h"]
        self.state = {k: np.zeros((cfg["n_layer"], 1, cfg["hidden"]), np.float32) for k in self.state_names}
        self.logits = self._run(list(prompt))

    def _run(self, ids: list[int]) -> np.ndarray:
        out = self.session.run(None, {"input_ids": np.array([ids], np.int64), **self.state})
        self.state = dict(zip(self.state_names, out[1:]))
        return out[0][0, -1]

    def push(self, token: int) -> None:
        self.logits = self._run([token])
