"""A loaded language model (`genforge.load` of an LSTM/GRU or GPT run)."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path

import torch

import genforge.precision as prec
from genforge.errors import UserError
from genforge.generators.base import WEIGHTS_FILE, _Generator
from genforge.text_jobs import TextJob, joined, run_jobs


class TextGenerator(_Generator):
    """A loaded language model: `generate(prompt, ...)` -> str (or a list for a list of prompts), `stream(...)`.

    A prompt longer than the model's context is cropped to its last block (and the window slides as text
    is generated), and characters outside a char vocabulary become the unknown id: never an error. The
    unknown id is never generated.
    """

    modality = "text"
    PROBE_TOKENS = 16  # one probe step: a one-token prompt continued by this many tokens, batch 1

    def __init__(self, run_dir: Path, meta: dict, net: torch.nn.Module, tokenizer, device: torch.device,
                 weights_file: str = WEIGHTS_FILE, precision: str = "no"):
        self.run_dir, self.meta, self.net, self.tokenizer, self.device = run_dir, meta, net, tokenizer, device
        self.weights_file = weights_file
        self._cast: dict[torch.dtype, torch.nn.Module] = {}  # low-precision copies of the weights, cast once
        self._use_precision(precision)
        self._cast = {k: v for k, v in self._cast.items() if k == self.dtype}  # keep only the chosen copy

    def _net_in(self, dtype: torch.dtype | None) -> torch.nn.Module:
        """The network with its weights in `dtype` (a copy cast once and kept), or the fp32 one."""
        if dtype is None or dtype == next(self.net.parameters()).dtype:
            return self.net
        if dtype not in self._cast:
            self._cast[dtype] = copy.deepcopy(self.net).to(dtype)
        return self._cast[dtype]

    def _generation_steps(self, names):
        from genforge.models.sampling import generate_ids

        def step_in(dtype):
            net = self._net_in(dtype)

            def step():
                generate_ids(net, [[0]], self.PROBE_TOKENS, temperature=1.0, generator=torch.Generator().manual_seed(0),
                             dtype=dtype)
            return step

        return {name: step_in(prec.autocast_dtype(name)) for name in names}

    def run(self, jobs: list[TextJob], use_cache: bool = True, dtype: torch.dtype | None = None
            ) -> Iterator[list[str | None]]:
        """Generate every job as one batch, yielding per step each job's new text ("" while a multi-byte
        character or a possible stop string is incomplete; None once the job has ended). No stop string,
        nor anything after it, is ever handed out. Jobs carry their own limits, sampling settings and
        generator, so a job's text is the same whatever else shares its batch (the server's batching);
        each job's token counts and finish reason are filled in as it runs (`text_jobs.run_jobs`)."""
        from genforge.models.sampling import generate

        for job in jobs:
            if job.rng is None:
                job.rng = torch.Generator().manual_seed(int(torch.seed() % 2**63))
        dtype = self.dtype if dtype is None else dtype

        def bias(b: int, ids: list[int]):  # the earlier green-list mark (a logits bias)
            mark = jobs[b].mark
            return None if mark is None or not hasattr(mark, "bias") else mark.bias(ids)

        def reweight(b: int, ids: list[int], probs):  # the tournament mark (reweights the final distribution)
            mark = jobs[b].mark
            return None if mark is None or not hasattr(mark, "reweight") else mark.reweight(ids, probs)

        def id_steps(ids, should_stop, banned):
            return generate(self._net_in(dtype), ids, [j.max_new_tokens for j in jobs], [j.temperature for j in jobs],
                            [j.top_k for j in jobs], [j.top_p for j in jobs], generator=[j.rng for j in jobs],
                            should_stop=should_stop, use_cache=use_cache, dtype=dtype, banned_ids=banned,
                            bias=bias if any(hasattr(j.mark, "bias") for j in jobs) else None,
                            reweight=reweight if any(hasattr(j.mark, "reweight") for j in jobs) else None)

        yield from run_jobs(self.tokenizer, jobs, id_steps)

    def engine(self, capacity: int):
        """A running batch of up to `capacity` rows that join and leave between steps (the server's scheduler)."""
        from genforge.generators.text_engine import TorchTextEngine

        return TorchTextEngine(self._net_in(self.dtype), capacity, self.dtype)

    def jobs(self, prompts: list[str], max_new_tokens: int = 200, temperature: float = 0.8, top_k: int | None = None,
             top_p: float | None = None, seed: int | None = None, stop: list[str] | str | None = None,
             mark: bool = True) -> list[TextJob]:
        """One job per prompt, sharing one generator seeded by `seed`: what `generate` runs, and what a
        server request becomes. `mark`: the keyed text mark, when a key is set (`use_mark_key`)."""
        rng = torch.Generator().manual_seed(int(seed) if seed is not None else int(torch.seed() % 2**63))
        text_mark = self.text_mark(self.tokenizer.vocab_size) if mark else None
        return [TextJob(p, max_new_tokens, temperature, top_k, top_p, stop, rng, mark=text_mark) for p in prompts]

    def generate(self, prompt: str | list[str], max_new_tokens: int = 200, temperature: float = 0.8,
                 top_k: int | None = None, top_p: float | None = None, seed: int | None = None,
                 stop: list[str] | str | None = None, use_cache: bool = True,
                 dtype: torch.dtype | None = None, mark: bool = True) -> str | list[str]:
        """Continue `prompt` (or each prompt of a list, batched) by up to `max_new_tokens` tokens.

        temperature 0 is greedy; top_k / top_p filter the distribution; the same seed gives the same text.
        Generation of a row ends at the first of its `stop` strings, which is left out of the result.
        Returns only the new text, not the prompt. `mark=False`: no text mark even when a key is set.
        """
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        if not prompts:
            raise UserError("Give at least one prompt.")
        jobs = self.jobs(prompts, max_new_tokens, temperature, top_k, top_p, seed, stop, mark)
        texts = joined(self.run(jobs, use_cache, dtype), len(prompts))
        return texts[0] if isinstance(prompt, str) else texts

    def stream(self, prompt: str, max_new_tokens: int = 200, temperature: float = 0.8, top_k: int | None = None,
               top_p: float | None = None, seed: int | None = None, stop: list[str] | str | None = None,
               use_cache: bool = True, dtype: torch.dtype | None = None, mark: bool = True) -> Iterator[str]:
        """Like `generate` for one prompt, yielding text pieces as they are produced."""
        jobs = self.jobs([prompt], max_new_tokens, temperature, top_k, top_p, seed, stop, mark)
        for (piece,) in self.run(jobs, use_cache, dtype):
            if piece:
                yield piece
