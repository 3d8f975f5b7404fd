"""Issue 26's baselines for the folk-abc language models: held-out bits per character of a character n-gram model
and of xz, on the same train/test split the models use.

    python benchmarks/music_baselines.py [--orders 5,6,7,8,9] [--json benchmarks/music_baselines.json]

Texts: `load_music_corpus("folk-abc")` (cleaned, normalised tunes, split by tune); each side is its tunes joined
by a blank line, as the models read them, and every character of the test text is scored (the blank lines too).

- n-gram: a character model with interpolated modified Kneser-Ney smoothing (Chen & Goodman 1999: three
  discounts per order from the count-of-counts, continuation counts below the top order, a uniform floor over the
  training characters plus one for unseen ones). Counts are kept as sorted integer keys (7 bits a character), so
  a 7-gram over the 2.5 M training characters takes seconds in numpy. Each side starts after n-1 newlines, the
  context a tune has after the blank line before it.
- xz: `xz -9e` (liblzma through Python's lzma, preset 9 | PRESET_EXTREME): compressed size of train + test minus
  that of train alone, in bits per test character, so the compressor has read the training tunes first, as a
  model has; beside it, the test text compressed alone.

Writes benchmarks/music_baselines.json (or --json); the figures do not depend on the machine.
"""

from __future__ import annotations

import argparse
import json
import lzma
import math
import time
from collections import Counter
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
BITS = 7  # per character in an n-gram key: up to 126 distinct training characters, 127 = unseen
UNSEEN = (1 << BITS) - 1
SEPARATOR = "\n\n"


def encode(train: str, test: str) -> tuple[np.ndarray, np.ndarray, int]:
    """Both texts as character codes 1..126 (by training frequency), unseen characters as UNSEEN; and V, the
    vocabulary the uniform floor spreads over (training characters + one for the unseen)."""
    chars = [c for c, _ in Counter(train).most_common()]
    if len(chars) >= UNSEEN:
        raise SystemExit(f"{len(chars)} distinct training characters: the n-gram keys hold at most {UNSEEN - 1}")
    table = {c: i + 1 for i, c in enumerate(chars)}
    return (np.array([table[c] for c in train], dtype=np.int64),
            np.array([table.get(c, UNSEEN) for c in test], dtype=np.int64), len(chars) + 1)


def gram_keys(codes: np.ndarray, k: int, start: int) -> np.ndarray:
    """The k-gram ending at each position from `start` on, as one integer: the predicted character in the low
    bits, the oldest context character in the high ones (so key >> BITS is the context, and key & mask the
    (k-1)-gram one shorter)."""
    key = np.zeros(len(codes) - start, dtype=np.int64)
    for j in range(k):
        key |= codes[start - j:len(codes) - j] << (BITS * j)
    return key


class KneserNey:
    """An interpolated modified Kneser-Ney character model of one order."""

    def __init__(self, train: np.ndarray, order: int, vocab: int):
        if order * BITS > 63:
            raise SystemExit(f"order {order} does not fit a 64-bit key")
        self.order, self.vocab = order, vocab
        self.tables = []  # per order 1..n: (gram keys, counts, context keys, totals, gamma numerators, discounts)
        upper = None
        for k in range(order, 0, -1):
            if k == order:
                grams, counts = np.unique(gram_keys(train, k, order - 1), return_counts=True)
            else:  # continuation counts: how many distinct characters precede the k-gram
                grams, counts = np.unique(upper & ((1 << (BITS * k)) - 1), return_counts=True)
            upper = grams
            d = discounts(counts)
            ctx, inverse = np.unique(grams >> BITS, return_inverse=True)
            totals = np.bincount(inverse, counts).astype(np.float64)
            gamma = np.bincount(inverse, d[np.minimum(counts, 3)])
            self.tables.insert(0, (grams, counts, ctx, totals, gamma, d))

    def probabilities(self, test: np.ndarray) -> np.ndarray:
        """P(each test character | the order-1 characters before it); test starts with order-1 context codes."""
        p = np.full(len(test) - self.order + 1, 1.0 / self.vocab)
        for k, (grams, counts, ctx, totals, gamma, d) in enumerate(self.tables, start=1):
            key = gram_keys(test, k, self.order - 1)
            c = _lookup(grams, counts, key)
            i = np.searchsorted(ctx, key >> BITS).clip(0, len(ctx) - 1)
            seen = ctx[i] == key >> BITS
            total, g = np.where(seen, totals[i], 1.0), np.where(seen, gamma[i], 0.0)
            mixed = (np.maximum(c - d[np.minimum(c, 3)], 0) + g * p) / total
            p = np.where(seen, mixed, p)
        return p


def discounts(counts: np.ndarray) -> np.ndarray:
    """[0, D1, D2, D3+] from the count-of-counts (Chen & Goodman's estimates); where a count-of-count is zero (the
    few unigram types) or an estimate leaves (0, r), the single Kneser-Ney discount n1 / (n1 + 2 n2) instead."""
    n = [max(int((counts == r).sum()), 0) for r in (1, 2, 3, 4)]
    y = n[0] / (n[0] + 2 * n[1]) if n[0] + n[1] else 0.5
    d = [0.0]
    for r in (1, 2, 3):
        est = r - (r + 1) * y * n[r] / n[r - 1] if n[r - 1] else -1.0
        d.append(est if 0 < est < r else min(max(y, 0.05), 0.95))
    return np.array(d)


def _lookup(keys: np.ndarray, values: np.ndarray, query: np.ndarray) -> np.ndarray:
    i = np.searchsorted(keys, query).clip(0, len(keys) - 1)
    return np.where(keys[i] == query, values[i], 0)


def ngram_bits(train: np.ndarray, test: np.ndarray, order: int, vocab: int, newline: int) -> dict:
    pad = np.full(order - 1, newline, dtype=np.int64)
    t0 = time.perf_counter()
    model = KneserNey(np.concatenate([pad, train]), order, vocab)
    p = model.probabilities(np.concatenate([pad, test]))
    return {"bits_per_char": round(float(-np.log2(p).mean()), 4), "grams": len(model.tables[-1][0]),
            "discounts": [round(float(x), 3) for x in model.tables[-1][5][1:]],
            "seconds": round(time.perf_counter() - t0, 1)}


def xz_bits(train: str, test: str) -> dict:
    def size(text: str) -> int:
        return len(lzma.compress(text.encode("utf-8"), format=lzma.FORMAT_XZ, preset=9 | lzma.PRESET_EXTREME))
    t0 = time.perf_counter()
    base = size(train)
    return {"bits_per_char": round(8 * (size(train + SEPARATOR + test) - base) / len(test), 4),
            "test_alone_bits_per_char": round(8 * size(test) / len(test), 4),
            "seconds": round(time.perf_counter() - t0, 1)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="folk-abc")
    p.add_argument("--orders", default="5,6,7,8,9", help="n-gram orders to report (7 is the issue's baseline)")
    p.add_argument("--json", default=str(HERE / "music_baselines.json"))
    a = p.parse_args()
    from genforge.data.music import load_music_corpus

    t0 = time.perf_counter()
    corpus = load_music_corpus(a.dataset)
    train, test = SEPARATOR.join(corpus.train), SEPARATOR.join(corpus.test)
    train_codes, test_codes, vocab = encode(train, test)
    newline = int(train_codes[train.index("\n")])
    unseen = int((test_codes == UNSEEN).sum())
    ngram = {}
    for order in (int(x) for x in a.orders.split(",")):
        ngram[str(order)] = ngram_bits(train_codes, test_codes, order, vocab, newline)
        print(f"{order}-gram Kneser-Ney: {ngram[str(order)]['bits_per_char']:.4f} bits per character "
              f"({ngram[str(order)]['seconds']} s)")
    xz = xz_bits(train, test)
    print(f"xz -9e: {xz['bits_per_char']:.4f} bits per test character after the training text "
          f"({xz['test_alone_bits_per_char']:.4f} alone)")
    result = {
        "dataset": a.dataset,
        "texts": {"train_tunes": len(corpus.train), "test_tunes": len(corpus.test), "train_chars": len(train),
                  "test_chars": len(test), "vocabulary": vocab - 1, "unseen_test_chars": unseen,
                  "joined_by": "a blank line", "report": corpus.report},
        "ngram_kneser_ney": ngram,
        "xz_9e": xz,
        "issue_figures": {"7-gram": 1.92, "xz": 1.75},
        "seconds": round(time.perf_counter() - t0, 1),
    }
    if not math.isfinite(ngram[max(ngram, key=int)]["bits_per_char"]):
        raise SystemExit("a probability of zero: the model is broken")
    Path(a.json).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {a.json} ({result['seconds']} s)")


if __name__ == "__main__":
    main()
