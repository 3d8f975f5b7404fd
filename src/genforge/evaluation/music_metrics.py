"""Scores of generated music for `genforge eval`: validity, musical statistics against real tunes, memorization.

- validity: the piece parses (ABC through music21, event text through the event codec) and its bars match the
  metre. Exempt from the length check: the first bar (a pickup) and the last; a bar beside a section boundary
  (a repeat sign, an ending bracket, a double or final bar line), which is conventionally short because its
  complement sits on the other side of the repeat; and a run of consecutive short bars that adds up to one full
  bar (a bar split by a bar line). A bar longer than the metre always fails (music21 reads an overfull ABC bar as
  a full bar plus an extra one with a time signature of its own: the two are joined back). M:none has no metre.
- features (MGEval's, Yang & Lerch 2018), per piece, on the melody (voice 0) of an ABC tune and on all voices
  of an event piece (intervals there are taken within each voice): pitch-class histogram entropy (bits), scale
  consistency, pitch range, notes per bar, interval histogram, duration histogram.
- overlap areas: MGEval's comparison of two sets. Per feature, the distances between pieces of the reference
  set (intra-set) and between generated and reference pieces (inter-set), each smoothed by a Gaussian kernel
  density; the area under the smaller of the two densities is 1 when generated pieces sit among the real ones
  like another real piece would, and 0 when they sit apart. Histograms are compared by Euclidean distance,
  scalars by absolute difference. One bandwidth (Scott's rule on the pooled distances) serves both densities, so
  two sets drawn alike score near 1 whatever their sizes (MGEval lets scipy pick one each).
- memorization: the share of pieces holding a run of `n_notes` notes whose pitch intervals (transposition-
  invariant; rhythm ignored, so a rhythmic variant of a copied phrase still counts) occur in a training melody
  (voice 0). Event pieces are also checked part by part below the top (a generated bass against training
  basses): a chorale's top part is a hymn tune Bach harmonised many times, so three in four held-out chorales
  share a 16-note run of it with the training chorales, against about one in ten for the lower parts.

The floor of the overlap areas is the same comparison for real training pieces against the test pieces; the floor
of memorization is the rate of the real held-out pieces (folk collections share tunes and stock phrases too).
"""

from __future__ import annotations

import hashlib
import math
import re
from collections import Counter
from dataclasses import dataclass

import numpy as np

from genforge.music.notes import MusicError, Score, score_from_stream
from genforge.music.validity import check_piece_text, is_valid, validity  # noqa: F401 (re-exported)

EPS = 1e-6
MATCH = "pitch intervals, transposition-invariant, rhythm ignored"
LOWER_VOICES = tuple(range(1, 8))  # every part below the top one, for event pieces
INDEX_VERSION = 1  # of the cached training phrase index: bump when _phrase_hashes changes
INTERVAL_CLIP = 12  # semitones: the interval histogram has bins -12..12, wider leaps land in the end bins
# durations (quarter notes) the rhythm histogram counts, each note going to the nearest on a log scale
DURATIONS = (0.125, 0.25, 1 / 3, 0.5, 2 / 3, 0.75, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)
_MAJOR = (0, 2, 4, 5, 7, 9, 11)  # also every natural minor scale (the relative major's notes)
_HARMONIC_MINOR = (0, 2, 3, 5, 7, 8, 11)
_SCALES = np.array([[(pc - root) % 12 in steps for pc in range(12)]
                    for steps in (_MAJOR, _HARMONIC_MINOR) for root in range(12)], dtype=np.float64)
FEATURES = ("pitch_class_entropy", "scale_consistency", "pitch_range", "note_density", "interval_histogram",
            "rhythm_histogram")


# ---------------------------------------------------------------------------------------------- features


def _voices(score: Score, kind: str) -> list[list]:
    """The note lines a piece is measured on: the melody of an ABC tune, every voice of an event piece."""
    if kind == "abc":
        return [score.melody(0)]
    return [score.melody(v) for v in sorted({n.voice for n in score.notes})]


def piece_features(score: Score, kind: str = "abc") -> dict[str, float | np.ndarray]:
    """MGEval's statistics of one piece (see the module docstring)."""
    lines = _voices(score, kind)
    notes = [n for line in lines for n in line]
    pitches = np.array([n.pitch for n in notes], dtype=np.int64)
    pcs = np.bincount(pitches % 12, minlength=12).astype(np.float64) if len(notes) else np.zeros(12)
    share = pcs / max(pcs.sum(), 1.0)
    nz = share[share > 0]
    intervals = np.concatenate([np.diff([n.pitch for n in line]) for line in lines if len(line) > 1] or [[]])
    ih = np.bincount(np.clip(intervals.astype(np.int64), -INTERVAL_CLIP, INTERVAL_CLIP) + INTERVAL_CLIP,
                     minlength=2 * INTERVAL_CLIP + 1).astype(np.float64)
    durations = np.array([n.duration for n in notes], dtype=np.float64)
    rh = np.zeros(len(DURATIONS))
    if len(durations):
        nearest = np.abs(np.log2(durations[:, None]) - np.log2(np.array(DURATIONS))[None, :]).argmin(1)
        rh = np.bincount(nearest, minlength=len(DURATIONS)).astype(np.float64)
    full = score.bar_quarters() or 4.0
    bars = len(score.bars) if score.bars else max(1, math.ceil(score.end / full - EPS))
    return {
        "pitch_class_entropy": float(-(nz * np.log2(nz)).sum()),
        "scale_consistency": float((_SCALES @ share).max()) if len(notes) else 0.0,
        "pitch_range": float(pitches.max() - pitches.min()) if len(notes) else 0.0,
        "note_density": len(notes) / bars,
        "interval_histogram": ih / max(ih.sum(), 1.0),
        "rhythm_histogram": rh / max(rh.sum(), 1.0),
    }


def features(scores: list[Score], kind: str = "abc") -> dict[str, np.ndarray]:
    """Each feature over the pieces: shape (pieces,) for scalars, (pieces, bins) for histograms."""
    per = [piece_features(s, kind) for s in scores]
    return {name: np.array([p[name] for p in per], dtype=np.float64) for name in FEATURES}


def _distances(a: np.ndarray, b: np.ndarray | None) -> np.ndarray:
    """Pairwise distances between the rows of a and b; within a (each pair once) when b is None."""
    a2 = a.reshape(len(a), -1)
    if b is None:
        d = np.sqrt(((a2[:, None, :] - a2[None, :, :]) ** 2).sum(-1))
        return d[np.triu_indices(len(a2), 1)]
    b2 = b.reshape(len(b), -1)
    return np.sqrt(((a2[:, None, :] - b2[None, :, :]) ** 2).sum(-1)).ravel()


def _density(x: np.ndarray, grid: np.ndarray, bandwidth: float) -> np.ndarray:
    """A Gaussian kernel density of x on an even grid: x binned linearly onto the grid, then smoothed (exact to
    the grid's resolution, and fast for the 10^5 distances of a few hundred pieces)."""
    step = grid[1] - grid[0]
    pos = np.clip((x - grid[0]) / step, 0, len(grid) - 1 - EPS)
    lo = np.floor(pos).astype(np.int64)
    frac = pos - lo
    mass = np.bincount(lo, 1 - frac, minlength=len(grid)) + np.bincount(lo + 1, frac, minlength=len(grid) + 1)[:-1]
    half = math.ceil(4 * bandwidth / step)
    kernel = np.exp(-0.5 * (np.arange(-half, half + 1) * step / bandwidth) ** 2)
    dens = np.convolve(mass, kernel / kernel.sum(), mode="same")
    return dens / (dens.sum() * step)


def overlap_area(intra: np.ndarray, inter: np.ndarray, points: int = 2048) -> float:
    """The area shared by the kernel densities of two samples of distances, in [0, 1]."""
    both = np.concatenate([intra, inter])
    spread = float(both.std())
    if spread <= EPS:  # all distances equal
        return 1.0 if abs(float(intra.mean()) - float(inter.mean())) <= EPS else 0.0
    lo, hi = float(both.min()), float(both.max())
    bandwidth = max(1.06 * spread * len(both) ** -0.2, (hi - lo) / 400)
    grid = np.linspace(lo - 4 * bandwidth, hi + 4 * bandwidth, points)
    p, q = _density(intra, grid, bandwidth), _density(inter, grid, bandwidth)
    return float(min(1.0, np.minimum(p, q).sum() * (grid[1] - grid[0])))


def overlap_areas(generated: dict[str, np.ndarray], reference: dict[str, np.ndarray]) -> dict[str, float]:
    """Per feature, the overlap of the reference's intra-set distances with the generated-to-reference ones."""
    out = {}
    for name, ref in reference.items():
        if len(ref) < 2 or len(generated[name]) < 1:
            raise ValueError(f"overlap areas need 2+ reference pieces and 1+ generated piece ({name})")
        out[name] = overlap_area(_distances(ref, None), _distances(generated[name], ref))
    return out


# ---------------------------------------------------------------------------------------------- memorization


def _phrase_hashes(score: Score, n_notes: int, voices: tuple[int, ...] = (0,)) -> np.ndarray:
    """64-bit hashes of every run of n_notes notes in each of these voices, by its n_notes - 1 pitch intervals
    and the voice (a bass line matches bass lines)."""
    powers = np.array([pow(1_000_003, k, 1 << 64) for k in range(n_notes)], dtype=np.uint64)
    out = [np.zeros(0, dtype=np.uint64)]
    for v in voices:
        pitches = np.array([n.pitch for n in score.melody(v)], dtype=np.int64)
        if len(pitches) < n_notes:
            continue
        codes = (np.clip(np.diff(pitches), -127, 127) + 128).astype(np.uint64)
        windows = np.lib.stride_tricks.sliding_window_view(codes, n_notes - 1)
        with np.errstate(over="ignore"):  # wraps modulo 2**64
            out.append((windows * powers[1:]).sum(axis=1, dtype=np.uint64) + np.uint64(v + 1) * powers[0])
    return np.concatenate(out)


@dataclass
class PhraseIndex:
    """The interval runs of the training pieces, sorted, for `memorization` to look up."""

    hashes: np.ndarray
    n_notes: int
    pieces: int
    voices: tuple[int, ...] = (0,)


def phrase_index(training: list[Score], n_notes: int = 16, voices: tuple[int, ...] = (0,)) -> PhraseIndex:
    """Every run of n_notes notes of the training pieces' voices (about a second for 12,000 tunes once parsed)."""
    if n_notes < 3:
        raise ValueError("n_notes must be 3 or more")
    hashes = np.unique(np.concatenate([_phrase_hashes(s, n_notes, voices) for s in training] +
                                      [np.zeros(0, np.uint64)]))
    return PhraseIndex(hashes, n_notes, len(training), tuple(voices))


def training_index(texts: list[str], kind: str = "abc", n_notes: int = 16,
                   voices: tuple[int, ...] = (0,)) -> PhraseIndex:
    """`phrase_index` of training texts, kept in the cache folder: parsing 12,000 ABC tunes takes ~10 minutes,
    the index a few MB, and every evaluation against the same corpus needs the same one."""
    import music21

    from genforge.cache import cache_dir

    h = hashlib.sha256(f"{INDEX_VERSION} {music21.__version__} {kind} {n_notes} {voices}\n".encode())
    for t in texts:
        h.update(t.encode("utf-8") + b"\0")
    path = cache_dir() / "music" / f"phrases-{h.hexdigest()[:24]}.npz"
    if path.exists():
        with np.load(path) as z:
            return PhraseIndex(z["hashes"], int(z["n_notes"]), int(z["pieces"]), tuple(int(v) for v in z["voices"]))
    index = phrase_index(_scores(texts, kind)[0], n_notes, voices)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, hashes=index.hashes, n_notes=index.n_notes, pieces=index.pieces, voices=np.array(voices))
    tmp.replace(path)
    return index


def memorization(generated: list[Score], training: list[Score] | PhraseIndex, n_notes: int = 16,
                 voices: tuple[int, ...] = (0,)) -> dict:
    """The share of pieces that copy a run of n_notes notes (by pitch intervals) from a training piece's voice.
    An index brings its own n_notes and voices."""
    index = training if isinstance(training, PhraseIndex) else phrase_index(training, n_notes, voices)
    copied = []
    for i, s in enumerate(generated):
        h = _phrase_hashes(s, index.n_notes, index.voices)
        if len(h) and len(index.hashes):
            pos = np.searchsorted(index.hashes, h).clip(0, len(index.hashes) - 1)
            if (index.hashes[pos] == h).any():
                copied.append(i)
    n = len(generated)
    return {"rate": len(copied) / n if n else 0.0, "copied": len(copied), "pieces": n,
            "n_notes": index.n_notes, "voices": list(index.voices), "training_pieces": index.pieces,
            "which": copied, "match": MATCH}


# ---------------------------------------------------------------------------------------------- the report


def subsample(items: list, n: int | None, seed: int = 0) -> list:
    """At most n items, the same ones on every run (a seeded draw, kept in their order)."""
    if n is None or len(items) <= n:
        return list(items)
    keep = np.sort(np.random.default_rng(seed).choice(len(items), n, replace=False))
    return [items[i] for i in keep]


def _scores(texts: list[str], kind: str) -> tuple[list[Score], list[dict]]:
    checked = [check_piece_text(t, kind) for t in texts]
    return [s for _, s in checked if s is not None], [v for v, _ in checked]


def music_report(generated: list[str], test: list[str], train: list[str], kind: str = "abc", n: int = 300,
                 n_train_memorization: int | None = None, n_notes: int = 16, seed: int = 0) -> dict:
    """Validity, overlap areas against the held-out pieces (with the real train-vs-test floor, as many training
    pieces as generated ones) and memorization of the generated and of the held-out real pieces. At most `n`
    pieces of each set are scored; memorization looks through `n_train_memorization` training pieces (None: all;
    the first time, ~50 ms a tune for ABC, then from the cache: `training_index`)."""
    gen_texts, test_texts = subsample(generated, n, seed), subsample(test, n, seed + 1)
    gen_scores, gen_verdicts = _scores(gen_texts, kind)
    test_scores, test_verdicts = _scores(test_texts, kind)
    if len(gen_scores) < 1 or len(test_scores) < 2:
        raise ValueError(f"too few pieces parse to compare: {len(gen_scores)} generated, {len(test_scores)} test")
    floor_scores, _ = _scores(subsample(train, len(gen_scores), seed + 2), kind)
    mem_train = subsample(train, n_train_memorization, seed + 3)
    index = training_index(mem_train, kind, n_notes)
    test_feats = features(test_scores, kind)
    overlap = overlap_areas(features(gen_scores, kind), test_feats)
    floor = overlap_areas(features(floor_scores, kind), test_feats) if len(floor_scores) else {}

    def valid_share(verdicts):
        return sum(v["parses"] and v["metre_ok"] for v in verdicts) / max(len(verdicts), 1)

    mean = float(np.mean(list(overlap.values())))
    floor_mean = float(np.mean(list(floor.values()))) if floor else None
    reasons = Counter("does not parse" if not v["parses"] else "a bar longer than the metre"
                      if "longer" in v["reason"] else "a short bar away from a repeat"
                      for v in gen_verdicts if not (v["parses"] and v["metre_ok"]))
    copies = {"generated": memorization(gen_scores, index)["rate"], "real_test": memorization(test_scores, index)["rate"],
              "n_notes": n_notes, "voices": "melody (voice 0)", "match": MATCH}
    if kind == "events":  # the melody of a chorale is a hymn tune harmonised many times: the lower parts are Bach's
        lower = training_index(mem_train, kind, n_notes, LOWER_VOICES)
        copies["lower_voices"] = {"generated": memorization(gen_scores, lower)["rate"],
                                  "real_test": memorization(test_scores, lower)["rate"]}
    return {
        "kind": kind,
        "counts": {"generated": len(gen_texts), "generated_parsed": len(gen_scores), "test": len(test_texts),
                   "test_parsed": len(test_scores), "train_floor": len(floor_scores), "train_memorization":
                   index.pieces},
        "validity": valid_share(gen_verdicts),
        "parses": sum(v["parses"] for v in gen_verdicts) / max(len(gen_verdicts), 1),
        "validity_real_test": valid_share(test_verdicts),
        "invalid_reasons": dict(reasons),
        "overlap": {**overlap, "mean": mean},
        "floor": {**floor, "mean": floor_mean},
        "overlap_vs_floor": mean / floor_mean if floor_mean else None,
        "memorization": copies,
        "features": "melody (voice 0)" if kind == "abc" else "all voices (intervals within each voice)",
    }
