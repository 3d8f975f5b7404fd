"""An exported language model: `generate` and `stream` as `genforge.load(run)` offers them, on onnxruntime.

Each row steps its own graph state (a GPT's KV cache as Optimum-layout tensors, an RNN's hidden state): a
device generates one text at a time, and rows of different lengths need no padding. A GPT row's context
slides exactly as `models/gpt.GPTSession`'s does (to its last block_size // 2 tokens, the cache recomputed
from them), so greedy text equals PyTorch's token for token however long it runs. Sampling is numpy's
(temperature, top-k, top-p, one uniform per row and step from the job's generator); stop strings and
UTF-8-safe streaming are `text_jobs.run_jobs`, the same code the torch path runs.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from genforge.errors import UserError
from genforge.marking import ExportedMarking
from genforge.music.compose import Composer
from genforge.text_jobs import TextJob, check_sampling_args, joined, run_jobs


class _GPTRow:
    def __init__(self, session, cfg: dict, prompt: list[int]):
        self.session, self.cfg = session, cfg
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
        out = self.session.run(None, {"input_ids": np.array([ids], np.int64),
                                      "position_ids": np.arange(first_position, first_position + len(ids), dtype=np.int64)[None],
                                      **past})
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


class ExportedTextModel(ExportedMarking):
    modality = "text"

    def __init__(self, path, config: dict, sessions: dict, tokenizer):
        self.path, self.config, self.meta, self.tokenizer = path, config, config, tokenizer
        self.family_config = config["family_config"]
        self.gpt = self.family_config["architecture"] == "gpt"
        self.session = sessions["decoder" if self.gpt else "rnn"]

    def _row(self, prompt: list[int]):
        return (_GPTRow if self.gpt else _RNNRow)(self.session, self.family_config, prompt)

    def _id_steps(self, jobs: list[TextJob]):
        def id_steps(prompts, should_stop, banned) -> Iterator[list[int | None]]:
            limits = [j.max_new_tokens for j in jobs]
            if max(limits) <= 0:
                return
            rows = [self._row(p) for p in prompts]
            generated: list[list[int]] = [[] for _ in prompts]
            done = [limit <= 0 for limit in limits]
            for step in range(max(limits)):
                out: list[int | None] = []
                for b, (row, job) in enumerate(zip(rows, jobs)):
                    if done[b]:
                        out.append(None)
                        continue
                    logits = row.logits.copy()
                    reweight = None
                    if hasattr(job.mark, "reweight"):  # the tournament mark
                        ids = prompts[b] + generated[b]
                        reweight = lambda p, mark=job.mark, ids=ids: mark.reweight(ids, p)
                    elif job.mark is not None:  # the earlier green-list mark
                        add = job.mark.bias(prompts[b] + generated[b])
                        if add is not None:
                            logits[:len(add)] += add
                    logits[banned] = -np.inf
                    t = _select(logits, job.temperature, job.top_k, job.top_p, job.rng, reweight)
                    generated[b].append(t)
                    out.append(t)
                    if should_stop(b, generated[b]) or len(generated[b]) >= limits[b]:
                        done[b] = True
                if all(t is None for t in out):
                    return
                yield out
                if all(done):
                    return
                for row, t, d in zip(rows, out, done):
                    if not d:
                        row.push(t)
        return id_steps

    def jobs(self, prompts: list[str], max_new_tokens: int = 200, temperature: float = 0.8, top_k: int | None = None,
             top_p: float | None = None, seed: int | None = None, stop: list[str] | str | None = None,
             mark: bool = True) -> list[TextJob]:
        """One job per prompt, sharing one numpy generator seeded by `seed`; `mark` as in `genforge.load`'s."""
        check_sampling_args(temperature, top_k, top_p)
        rng = np.random.default_rng(seed)
        text_mark = self.text_mark(self.tokenizer.vocab_size) if mark else None
        return [TextJob(p, max_new_tokens, temperature, top_k, top_p, stop, rng, mark=text_mark) for p in prompts]

    def run(self, jobs: list[TextJob]) -> Iterator[list[str | None]]:
        if not jobs:
            raise UserError("Give at least one prompt.")
        yield from run_jobs(self.tokenizer, jobs, self._id_steps(jobs))

    def generate(self, prompt: str | list[str], max_new_tokens: int = 200, temperature: float = 0.8,
                 top_k: int | None = None, top_p: float | None = None, seed: int | None = None,
                 stop: list[str] | str | None = None, mark: bool = True) -> str | list[str]:
        """Continue `prompt` (or each prompt of a list) by up to `max_new_tokens` tokens; only the new text."""
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        texts = joined(self.run(self.jobs(prompts, max_new_tokens, temperature, top_k, top_p, seed, stop, mark)),
                       len(prompts))
        return texts[0] if isinstance(prompt, str) else texts

    def stream(self, prompt: str, max_new_tokens: int = 200, temperature: float = 0.8, top_k: int | None = None,
               top_p: float | None = None, seed: int | None = None, stop: list[str] | str | None = None,
               mark: bool = True) -> Iterator[str]:
        """Like `generate` for one prompt, yielding text pieces as they are produced."""
        for (piece,) in self.run(self.jobs([prompt], max_new_tokens, temperature, top_k, top_p, seed, stop, mark)):
            if piece:
                yield piece


class ExportedMusicModel(Composer, ExportedTextModel):
    """An exported language model of music: `compose(...)` as `genforge.load`'s, on onnxruntime."""
