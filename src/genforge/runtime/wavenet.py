"""An exported WaveNet's fast generation loop in numpy around its one ONNX step graph (no torch).

The runtime's side of `methods/wavenet.WaveNetMethod.draw` and `render`, with the interface of
`runtime/families.Family` (a duck-typed sibling rather than a subclass, so this module needs nothing from
families.py and families.py can register it without an import cycle). The step graph
(`models/wavenet.WaveNetStep`) takes one id per clip, the clips' labels, speakers and position, and the
packed per-layer queues `state`; it returns one array, the logits then the new state. The loop here is
`models/wavenet.fast_generate`'s: the queues start as after an endless silence, then one step per sample, one
uniform number per sample through the inverse CDF of softmax(logits / temperature). Given the same drawn
uniforms the ids equal the torch path's, up to float rounding at a CDF boundary (tests/test_wavenet.py).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from genforge.audio.mulaw import mulaw_decode

Graph = Callable[..., np.ndarray]  # graph(**inputs) -> the graph's first (here: only) output


def select_ids(logits: np.ndarray, u: np.ndarray, temperature: float) -> np.ndarray:
    """One id per row: `models/wavenet.select_ids` in numpy."""
    if temperature == 0:
        return logits.argmax(-1)
    z = logits.astype(np.float32) / np.float32(temperature)
    p = np.exp(z - z.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    cdf = np.cumsum(p, -1)
    return np.minimum((cdf < u[:, None] * cdf[:, -1:]).sum(-1), logits.shape[-1] - 1)


class WaveNetFamily:
    """draw: the uniforms (and the speakers when none is asked for) from a numpy Generator; render: the loop."""

    def __init__(self, config: dict, graphs: dict[str, Graph]):
        self.config, self.graphs = config, graphs
        self.num_classes = int(config.get("num_classes") or 0)
        self.num_speakers = int(config.get("num_speakers") or 0)
        self.q = int(config["quantization"])
        self.c = int(config["residual_channels"])
        # each layer's queue: its slice of the packed state, (queue length, C)
        sizes = [n * self.c for n in config["queue_lengths"]]
        self.segments = list(zip(np.cumsum([0, *sizes[:-1]]).tolist(), config["queue_lengths"]))

    def draw(self, n: int, labels, rng: np.random.Generator, speakers=None, length: int | None = None,
             **options) -> dict[str, np.ndarray]:
        """As the torch path draws: the labels (every class in turn when None), the speakers, then the uniforms."""
        drawn = {}
        if self.num_classes:
            drawn["labels"] = (np.arange(n) % self.num_classes if labels is None else np.asarray(labels)).astype(np.int64)
        if self.num_speakers:
            drawn["speakers"] = (rng.integers(self.num_speakers, size=n) if speakers is None
                                 else np.broadcast_to(np.asarray(speakers), (n,))).astype(np.int64)
        drawn["u"] = rng.random((n, int(length or self.config["length"])), dtype=np.float32)
        return drawn

    def network_calls(self, n: int, **options) -> int:
        return n

    def _step(self, ids: np.ndarray, position: int, state: np.ndarray, cond: dict) -> tuple[np.ndarray, np.ndarray]:
        inputs = {"ids": ids, **cond, "state": state}
        if self.config.get("position_buckets"):
            inputs["position"] = np.full(len(ids), position, np.int64)
        out = self.graphs["step"](**inputs)
        return out[:, :self.q], out[:, self.q:]

    def _silence_state(self, batch: int, cond: dict) -> np.ndarray:
        """The queues after an endless silence (`WaveNet.silence_queues`): n_layers steps, each queue refilled
        with its newest entry."""
        state = np.zeros((batch, int(self.config["state_size"])), np.float32)
        silence = np.full(batch, int(self.config["silence_id"]), np.int64)
        for _ in self.segments:
            _, new = self._step(silence, -1, state, cond)
            state = np.empty_like(new)
            for start, n in self.segments:
                end = start + n * self.c
                last = new[:, end - self.c:end]
                state[:, start:end] = np.tile(last, (1, n))
        return state

    def ids(self, drawn: dict[str, np.ndarray], temperature: float = 1.0, progress=None) -> np.ndarray:
        """Mu-law ids (N, L) from drawn inputs: one step graph call per sample, for all clips at once."""
        u = np.asarray(drawn["u"], np.float32)
        B, L = u.shape
        cond = {k: np.ascontiguousarray(drawn[k], dtype=np.int64) for k in ("labels", "speakers") if k in drawn}
        state = self._silence_state(B, cond)
        ids = np.full(B, int(self.config["silence_id"]), np.int64)
        out = np.empty((B, L), np.int64)
        for t in range(L):
            logits, state = self._step(ids, t - 1, state, cond)
            ids = select_ids(logits, u[:, t], temperature).astype(np.int64)
            out[:, t] = ids
            if progress is not None and ((t + 1) % 1024 == 0 or t + 1 == L):
                progress(t + 1, L)
        return out

    def render(self, drawn: dict[str, np.ndarray], progress=None, temperature: float = 1.0, **options) -> np.ndarray:
        """Waveforms (N, L) float32 in [-1, 1]."""
        return mulaw_decode(self.ids(drawn, temperature, progress), self.q)
