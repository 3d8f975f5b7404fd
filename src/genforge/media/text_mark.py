"""The keyed text mark (green lists; see TextMark). numpy only."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from genforge.media.watermark import THRESHOLD_Z, MarkKey, normal_sf


@dataclass
class TextMark:
    """The keyed green-list text mark over a tokenizer's `vocab` ids. At each position the previous `context`
    ids (hashed with the key) pick a fraction `gamma` of the vocabulary as green; generation adds `delta` to
    their logits. Detection counts green tokens among the unique (context, token) pairs of a text: repeats in
    human text (' th', 'he ') would otherwise count one key-dependent coin many times."""

    key: MarkKey
    vocab: int
    gamma: float = 0.25
    delta: float = 1.5  # measured (benchmarks/RESULTS.md): z > 4 for 99% of 200-token texts at ~9% perplexity;
    # 1.25 reached only 92-94% (for 6-8%), Kirchenbauer's 2.0 100% (for 19%)
    context: int = 2

    def __post_init__(self):
        if not 0 < self.gamma < 1 or self.vocab < 2:
            raise ValueError(f"text mark: gamma must be in (0, 1) and vocab >= 2; got {self.gamma}, {self.vocab}")
        self._cache: dict[tuple, np.ndarray] = {}
        self._green = max(1, int(round(self.gamma * self.vocab)))

    def green(self, ctx: tuple[int, ...]) -> np.ndarray:
        """Boolean (vocab,) mask of the green ids after the context `ctx` (the previous `context` ids)."""
        mask = self._cache.get(ctx)
        if mask is None:
            rng = np.random.default_rng(self.key.seed("text-mark", self.vocab, *ctx))
            mask = np.zeros(self.vocab, bool)
            mask[rng.permutation(self.vocab)[:self._green]] = True
            if len(self._cache) > 200_000:
                self._cache.clear()
            self._cache[ctx] = mask
        return mask

    def bias(self, ids: list[int], width: int | None = None) -> np.ndarray | None:
        """float32 (width,) to add to the logits of the token after `ids` (None before `context` ids exist);
        `width` >= vocab pads for models whose output layer is wider than the tokenizer."""
        if len(ids) < self.context:
            return None
        out = np.zeros(width or self.vocab, np.float32)
        out[:self.vocab][self.green(tuple(ids[len(ids) - self.context:]))] = self.delta
        return out

    def score(self, ids: list[int], start: int = 0) -> dict:
        """z-score and one-sided p-value of the green count over the unique (context, token) pairs of ids[start:]
        (a prompt before `start` is context only)."""
        seen, green = set(), 0
        for i in range(max(start, self.context), len(ids)):
            pair = tuple(ids[i - self.context:i + 1])
            if pair in seen or not 0 <= ids[i] < self.vocab:
                continue
            seen.add(pair)
            green += bool(self.green(pair[:-1])[ids[i]])
        n = len(seen)
        if n == 0:
            return {"z": 0.0, "p_value": 1.0, "tokens_scored": 0, "green": 0, "detected": False, "key_id": self.key.id}
        z = (green - self.gamma * n) / math.sqrt(n * self.gamma * (1 - self.gamma))
        p = normal_sf(z)
        return {"z": round(z, 2), "p_value": p, "tokens_scored": n, "green": green, "detected": z > THRESHOLD_Z,
                "key_id": self.key.id}
