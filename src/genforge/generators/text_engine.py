"""A running batch of text rows on torch, for a scheduler whose rows join and leave between decode steps (the
server's step-level batching, `serving/scheduler.py`). The runtime's twin (`runtime/text_engine.py`) has the same
four methods on onnxruntime, so the scheduler drives either without knowing which.

Each row samples exactly as `models/sampling.generate` samples it: its job's temperature, top-k, top-p and mark,
one uniform number from its job's generator per step, drawn in the order the caller gives (the order rows were
admitted), so rows sharing a generator (one request's n choices) draw as they would alone and a row's text does not
depend on who else is in the batch.
"""

from __future__ import annotations

import torch

from genforge.models.sampling import _Both, _biased, select_next_rows
from genforge.text_jobs import TextJob


class TorchTextEngine:
    def __init__(self, net: torch.nn.Module, capacity: int, dtype: torch.dtype | None = None):
        self.net, self.capacity = net, capacity
        self.low_precision = dtype in (torch.bfloat16, torch.float16)
        self.device_type, self.dtype = next(net.parameters()).device.type, dtype
        self.rows: list = []  # the caller's row objects, in slot order
        self.jobs: list[TextJob] = []
        self.session = None

    def _mode(self):
        if not self.low_precision:
            return torch.inference_mode()
        return _Both(torch.inference_mode(), torch.autocast(self.device_type, dtype=self.dtype))

    def admit(self, rows: list, jobs: list[TextJob], prompts: list[list[int]]) -> None:
        """Append rows (prefilled as one batch) after the running ones."""
        if not rows:
            return
        with self._mode():
            if self.session is None:
                self.net.eval()
                self.session = self.net.generation_session(prompts, use_cache=True, capacity=self.capacity)
            else:
                self.session.add(prompts)
        self.rows += rows
        self.jobs += jobs

    def sample(self, order: list[int], banned: list[int]) -> list[int]:
        """One new id per row (by row index), the rows drawing in `order`."""
        jobs, tokens = self.jobs, self.session.tokens
        logits = self.session.logits
        if any(hasattr(j.mark, "bias") for j in jobs):  # the earlier green-list mark (a logits bias)
            logits = _biased(logits, [j.mark.bias(tokens[b]) if hasattr(j.mark, "bias") else None
                                      for b, j in enumerate(jobs)])
        marked = any(hasattr(j.mark, "reweight") for j in jobs)

        def reweight(i: int, probs):  # the tournament mark; i indexes `order`
            b = order[i]
            mark = jobs[b].mark
            return mark.reweight(tokens[b], probs) if hasattr(mark, "reweight") else None

        with self._mode():
            picked = select_next_rows(
                logits[order], [jobs[b].temperature for b in order], [jobs[b].top_k for b in order],
                [jobs[b].top_p for b in order], [jobs[b].rng for b in order],
                torch.tensor(banned, dtype=torch.long, device=logits.device), reweight=reweight if marked else None)
        out = [0] * len(order)
        for b, t in zip(order, picked):
            out[b] = t
        return out

    def advance(self, tokens: list[int]) -> None:
        """Each row takes its new token; one decode step refreshes every row's logits."""
        if self.rows:
            with self._mode():
                self.session.push(tokens)

    def drop(self, indices: list[int]) -> None:
        if indices:
            with self._mode():
                order = self.session.drop(indices)
            self.rows = [self.rows[i] for i in order]
            self.jobs = [self.jobs[i] for i in order]
