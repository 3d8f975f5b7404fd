"""The keyed text marks. numpy only.

TournamentMark (what generators apply): distribution-preserving tournament sampling keyed by the context.
TextMark: the earlier green-list mark (a logits bias), kept so that texts made with it still verify."""

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
    scheme = "text-green-list"  # what `verify` reports, and a record's mark_scheme names

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
            return {"z": 0.0, "p_value": 1.0, "tokens_scored": 0, "green": 0, "detected": False, "key_id": self.key.id,
                    "scheme": self.scheme}
        z = (green - self.gamma * n) / math.sqrt(n * self.gamma * (1 - self.gamma))
        p = normal_sf(z)
        return {"z": round(z, 2), "p_value": p, "tokens_scored": n, "green": green, "detected": z > THRESHOLD_Z,
                "key_id": self.key.id, "scheme": self.scheme}


@dataclass
class TournamentMark:
    """The keyed tournament text mark (SynthID-Text's sampler, Dathathri et al., Nature 2024), in closed form.

    Each of `layers` layers gives every token x after a context (the previous `context` ids) a keyed bit
    g_l(context, x) in {0, 1} (an HMAC of the context under the key seeds one random bit-vector over the vocabulary
    per layer). Generation reweights the final sampling distribution p (after temperature, top-k, top-p), layer
    after layer, to the law of the winner of a match between two independent draws from it (the one with g = 1
    wins; a tie at random):

        p'(x) = p(x) (1 + g(x) - G),    G = sum_y p(y) g(y).

    The token is then drawn from the result with the ordinary seeded generator, so texts still vary with the seed.
    p' is linear in g, so averaged over keys (or contexts) E[p'] = p, layer after layer: the marked text is
    distributed as the unmarked one and its expected perplexity cost is zero. (Matches among three or more draws
    carry more signal per layer but are not linear in g, and measurably move the distribution: not offered.)

    A context that already occurred earlier in the text (prompt included) is not marked (SynthID's repeated-context
    masking): its g-values are those that already steered the earlier choice, so marking it again would tie the
    text's distribution to the key. With it, every marked step's g-values are fresh coins independent of the
    history, and the text as a whole is distributed as unmarked text (on average over keys; one key's marked
    model differs from the plain one by a key-dependent few percent of perplexity either way, since common
    contexts recur across texts: benchmarks/text_mark.py measures it). It costs little detection: the first
    occurrences are ~93% of a 200-character text's positions at context 4.

    Detection needs only the tokenizer: over the marked positions, the first occurrence of each context, the
    weighted sum of the g-values, whose null law is known exactly (each g an independent fair coin):
    z = sum_i sum_l w_l (g_il - 1/2) / sqrt(n sum_l w_l^2 / 4). The weights fall linearly from 1 (first layer)
    to `last_weight`, since later layers act on an already sharpened p and carry less signal. Defaults (20
    layers, context 4, last weight 0.1) measured in benchmarks/text_mark.py. Greedy decoding (temperature 0) has
    nothing to reweight: its text carries no mark."""

    key: MarkKey
    vocab: int
    layers: int = 20
    context: int = 4  # 3 detected as well but one key's perplexity cost varied twice as much (benchmarks/text_mark.py)
    last_weight: float = 0.1
    mask_repeats: bool = True  # False: mark every position, detect over unique (context, token) pairs (measured)
    scheme = "text-tournament"  # what `verify` reports, and a record's mark_scheme names
    CACHE_BYTES = 64 << 20

    def __post_init__(self):
        if self.vocab < 2 or self.layers < 1 or self.context < 1 or self.last_weight < 0:
            raise ValueError(f"tournament mark: needs vocab >= 2, layers >= 1, context >= 1 and last_weight >= 0; "
                             f"got {self.vocab}, {self.layers}, {self.context}, {self.last_weight}")
        self._cache: dict[tuple, np.ndarray] = {}
        self._cache_max = max(16, self.CACHE_BYTES // (self.layers * self.vocab))
        self._bytes = (self.layers * self.vocab + 7) // 8
        self.weights = np.linspace(1.0, self.last_weight, self.layers) if self.layers > 1 else np.ones(1)

    def g(self, ctx: tuple[int, ...]) -> np.ndarray:
        """uint8 (layers, vocab) g-values of every token after the context `ctx` (the previous `context` ids)."""
        bits = self._cache.get(ctx)
        if bits is None:
            rng = np.random.default_rng(self.key.seed("text-tournament", self.vocab, self.layers, *ctx))
            bits = np.unpackbits(np.frombuffer(rng.bytes(self._bytes), np.uint8), count=self.layers * self.vocab)
            bits = bits.reshape(self.layers, self.vocab)
            if len(self._cache) >= self._cache_max:
                self._cache.clear()
            self._cache[ctx] = bits
        return bits

    def reweight(self, ids: list[int], probs: np.ndarray) -> np.ndarray | None:
        """The marked distribution of the token after `ids`, from its sampling distribution `probs` (any length
        >= vocab: ids beyond the tokenizer's count as g = 0); float64. None (sample `probs` as is) before
        `context` ids exist, or when the context occurred before in `ids` (`mask_repeats`)."""
        c = self.context
        if len(ids) < c:
            return None
        ctx = tuple(ids[len(ids) - c:])
        if self.mask_repeats and len(ids) > c:
            earlier = np.asarray(ids[:-1])
            if len(earlier) >= c and (np.lib.stride_tricks.sliding_window_view(earlier, c) == ctx).all(1).any():
                return None
        g = self.g(ctx)
        p = np.asarray(probs, np.float64)
        total = p.sum()
        if not total > 0:
            return None
        p = p / total
        head = p[:self.vocab]
        for layer in g:
            big = min(1.0, max(0.0, float(head @ layer) / float(p.sum())))  # G
            if p.size > self.vocab:
                p[self.vocab:] *= 1.0 - big
            head = head * ((1.0 - big) + layer)
            p[:self.vocab] = head
        return p / p.sum()

    def gvalues(self, ids: list[int], start: int = 0) -> np.ndarray:
        """uint8 (n, layers): the g-values of the marked positions of ids[start:] (a prompt before `start` is
        context only): each context's first occurrence (`mask_repeats`), else each unique (context, token) pair."""
        seen, rows = set(), []
        for i in range(self.context, len(ids)):
            pair = tuple(ids[i - self.context:i + 1])
            item = pair[:-1] if self.mask_repeats else pair
            if item in seen:
                continue
            seen.add(item)
            if i >= start and 0 <= ids[i] < self.vocab:
                rows.append(self.g(pair[:-1])[:, ids[i]])
        return np.asarray(rows, np.uint8).reshape(len(rows), self.layers)

    def z_of(self, g: np.ndarray) -> float:
        """The weighted z-score of g-values (n, layers) against fair coins."""
        n = len(g)
        if n == 0:
            return 0.0
        w = self.weights
        return float(((g - 0.5) @ w).sum() / math.sqrt(n * float(w @ w) / 4))

    def score(self, ids: list[int], start: int = 0) -> dict:
        """z-score and one-sided p-value of the weighted g-values over the marked positions of ids[start:] (a
        prompt before `start` is context only)."""
        g = self.gvalues(ids, start)
        n = len(g)
        if n == 0:
            return {"z": 0.0, "p_value": 1.0, "tokens_scored": 0, "detected": False, "key_id": self.key.id,
                    "scheme": self.scheme}
        z = self.z_of(g)
        return {"z": round(z, 2), "p_value": normal_sf(z), "tokens_scored": n, "g_mean": round(float(g.mean()), 4),
                "detected": z > THRESHOLD_Z, "key_id": self.key.id, "scheme": self.scheme}
