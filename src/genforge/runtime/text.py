"""An exported language model: `generate` and `stream` as `genforge.load(run)` offers them, on onnxruntime.

The rows of a call step together through `engine()` (runtime/text_engine.py: one graph run per step for the
whole batch, each row's window sliding as `models/gpt.GPTSession`'s does, so greedy text equals PyTorch's token for
token however long it runs); stop strings and UTF-8-safe streaming are `text_jobs.run_jobs`, the same code the
torch path runs.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from genforge.errors import UserError
from genforge.marking import ExportedMarking
from genforge.music.compose import Composer
from genforge.runtime.text_engine import GPTEngine, RNNEngine, RowEngine, _GPTRow, _RNNRow, _select  # noqa: F401 (tests)
from genforge.text_jobs import TextJob, check_sampling_args, joined, run_jobs


class ExportedTextModel(ExportedMarking):
    modality = "text"

    def __init__(self, path, config: dict, sessions: dict, tokenizer):
        self.path, self.config, self.meta, self.tokenizer = path, config, config, tokenizer
        self.family_config = config["family_config"]
        self.gpt = self.family_config["architecture"] == "gpt"
        self.session = sessions["decoder" if self.gpt else "rnn"]
        self.masked = "attention_mask" in {i.name for i in self.session.get_inputs()}

    def engine(self, capacity: int):
        """A running batch of up to `capacity` rows that join and leave between steps (`admit`, `sample`,
        `advance`, `drop`: runtime/text_engine.py), what the server's step-level scheduler drives."""
        if not self.gpt:
            return RNNEngine(self.session, self.family_config, capacity)
        if self.masked:
            return GPTEngine(self.session, self.family_config, capacity)
        return RowEngine(self._row, capacity)  # exported before the attention mask: a row at a time

    def _row(self, prompt: list[int]):
        """One row stepping alone (batch 1 per run)."""
        if self.gpt:
            return _GPTRow(self.session, self.family_config, prompt, self.masked)
        return _RNNRow(self.session, self.family_config, prompt)

    def _id_steps(self, jobs: list[TextJob]):
        def id_steps(prompts, should_stop, banned) -> Iterator[list[int | None]]:
            engine = self.engine(len(jobs))
            live = [b for b, job in enumerate(jobs) if job.max_new_tokens > 0]
            engine.admit(live, [jobs[b] for b in live], [prompts[b] for b in live])
            generated: list[list[int]] = [[] for _ in jobs]
            while engine.rows:
                order = sorted(range(len(engine.rows)), key=engine.rows.__getitem__)  # rows draw in job order
                new = engine.sample(order, banned)
                out: list[int | None] = [None] * len(jobs)
                ended = []
                for i in order:
                    b = engine.rows[i]
                    out[b] = new[i]
                    generated[b].append(new[i])
                    if should_stop(b, generated[b]) or len(generated[b]) >= jobs[b].max_new_tokens:
                        ended.append(i)
                yield out
                engine.drop(ended)
                engine.advance([out[b] for b in engine.rows])
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
