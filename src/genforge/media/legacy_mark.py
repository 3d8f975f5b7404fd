"""Version 1 of the keyed image mark, kept so that files written with it still verify (media/image_mark.py is
version 2, what is written now). numpy + Pillow.

Quantization index modulation (dither modulation) of the 6 lowest DCT coefficients of each 8x8 luma block, lattice
step 16, placed so that it lands on its lattice after a JPEG-75 round trip, and scored as found and after that
round trip. It met the one attack it was tuned to (metadata stripped, then JPEG 75: 99.7-100%) and failed the
handling of everyday life (JPEG 90: 51-56% on MNIST, JPEG 50 and WebP 80: 0-30%, any crop: 0%), which is why
version 2 replaced it (docs/design-notes.md, "Marks that survive everyday handling").
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from genforge.media.image_mark import BLOCK, ZIGZAG, _dct_matrix, luma
from genforge.media.watermark import (
    THRESHOLD_Z,
    MarkKey,
    _shrink,
    jpeg_round_trip,
    normal_sf,
)

SCHEME = "image-v1"

_D = _dct_matrix()  # the 8x8 DCT and zigzag order are version 2's (media/image_mark.py)


def _blocks(y: np.ndarray) -> np.ndarray:
    """(N, H, W) -> (N, H//8, W//8, 8, 8) of the full blocks."""
    n, h, w = y.shape
    bh, bw = h // BLOCK, w // BLOCK
    return y[:, :bh * BLOCK, :bw * BLOCK].reshape(n, bh, BLOCK, bw, BLOCK).transpose(0, 1, 3, 2, 4)


_luma = luma


@dataclass(frozen=True)
class ImageMarkV1:
    """Version 1 of the keyed image mark (read, no longer written). `coefficients` per 8x8 block (DC and the lowest AC in zigzag order) and `step`, the
    lattice spacing in 8-bit luma units of the orthonormal DCT, set visibility and robustness (measured in
    benchmarks/RESULTS.md). `jpeg_quality`: the mark is placed so that it lands on the lattice after a JPEG
    round trip at this quality, and the detector scores each image as found and after that same round trip
    (re-encoding at one quality is nearly idempotent), so one mark holds for the file as written and after a
    re-encode at that quality."""

    key: MarkKey
    coefficients: int = 6
    step: float = 16.0  # chosen by measurement (benchmarks/RESULTS.md): 2x JPEG-75's DC step; 14, 18, 20 did worse
    jpeg_quality: int = 75
    rounds: int = 6
    iterations: int = 12
    flat: float = 0.5  # blocks whose luma spread is below this are not scored: unmarked flat blocks are all alike
    scheme = SCHEME
    false_positive_rate = normal_sf(THRESHOLD_Z)

    def _dither(self, shape: tuple[int, int]) -> np.ndarray:
        h, w = shape
        rng = np.random.default_rng(self.key.seed("image-mark", h, w, self.coefficients))
        return rng.uniform(0, self.step, size=(h // BLOCK, w // BLOCK, self.coefficients))

    def _coefs(self, y: np.ndarray) -> np.ndarray:
        """(N, H, W) luma -> (N, bh, bw, K) chosen coefficients of each full block."""
        c = _D @ _blocks(y) @ _D.T
        u, v = zip(*ZIGZAG[:self.coefficients])
        return c[..., list(u), list(v)]

    def _pixels(self, coef_change: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
        """(N, bh, bw, K) coefficient changes -> (N, H, W) luma change."""
        n, h, w = shape
        bh, bw = h // BLOCK, w // BLOCK
        u, v = zip(*ZIGZAG[:self.coefficients])
        full = np.zeros((n, bh, bw, BLOCK, BLOCK))
        full[..., list(u), list(v)] = coef_change
        change = np.zeros((n, h, w))
        change[:, :bh * BLOCK, :bw * BLOCK] = (_D.T @ full @ _D).transpose(0, 1, 3, 2, 4).reshape(n, bh * BLOCK,
                                                                                                  bw * BLOCK)
        return change

    def embed(self, images: np.ndarray) -> np.ndarray:
        """uint8 (N, H, W, C) -> uint8 (N, H, W, C) marked. Images smaller than one block are returned as they are."""
        images = np.asarray(images)
        n, h, w, ch = images.shape
        if h < BLOCK or w < BLOCK or n == 0:
            return images.copy()
        dither = self._dither((h, w))
        x = images.astype(np.float64)
        delta = np.zeros((n, h, w))
        for _ in range(self.iterations):  # onto the lattice, within [0, 255] (clipping pulls it off; repeat)
            c = self._coefs(_luma(np.clip(x + delta[..., None], 0, 255)))
            change = self._pixels(np.round((c - dither) / self.step) * self.step + dither - c, (n, h, w))
            if np.abs(change).max() < 0.05:
                break
            delta += change
        marked = np.clip(np.rint(x + delta[..., None]), 0, 255).astype(np.uint8)
        if not self.jpeg_quality:
            return marked
        target = np.round((self._coefs(_luma(marked)) - dither) / self.step) * self.step + dither
        for _ in range(self.rounds):  # move the lattice points to where the JPEG round trip lands them
            err = self._coefs(_luma(jpeg_round_trip(marked, self.jpeg_quality))) - target
            err = (err + self.step / 2) % self.step - self.step / 2
            delta -= self._pixels(err, (n, h, w))
            marked = np.clip(np.rint(x + delta[..., None]), 0, 255).astype(np.uint8)
        return marked

    def scores(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(z, coefficients scored) per image of uint8 (N, H, W, C), as found: z ~ N(0, 1) without the mark."""
        images = np.asarray(images)
        n, h, w, _ = images.shape
        if h < BLOCK or w < BLOCK:
            return np.zeros(n), np.zeros(n, int)
        y = _luma(images)
        live = _blocks(y).std(axis=(-1, -2)) >= self.flat  # (N, bh, bw)
        phase = 2 * np.pi * (self._coefs(y) - self._dither((h, w))) / self.step
        agree = np.cos(phase) * live[..., None]
        count = live.sum(axis=(1, 2)) * self.coefficients
        z = agree.sum(axis=(1, 2, 3)) / np.sqrt(np.maximum(count, 1) / 2)
        return np.where(count > 0, z, 0.0), count

    def views(self, image: np.ndarray) -> list[tuple[str, np.ndarray]]:
        """What the detector scores of one (H, W, C) image: as found and after the JPEG round trip, each also
        shrunk back by 2, 3 and 4 when the sides allow (a display enlargement)."""
        out = []
        for k in (1, 2, 3, 4):
            if k > 1 and (image.shape[0] % k or image.shape[1] % k or image.shape[0] // k < BLOCK):
                continue
            img = image if k == 1 else _shrink(image, k)
            out.append((f"x1/{k}" if k > 1 else "as found", img))
            if self.jpeg_quality:
                out.append((f"x1/{k}, JPEG {self.jpeg_quality}" if k > 1 else f"JPEG {self.jpeg_quality}",
                            jpeg_round_trip(img[None], self.jpeg_quality)[0]))
        return out

    def detect(self, image: np.ndarray) -> dict:
        """One uint8 (H, W, C) image: the best z over `views`, its p-value corrected for the tries (Bonferroni)."""
        views = self.views(np.asarray(image))
        z, view = max(((float(self.scores(img[None])[0][0]), name) for name, img in views), key=lambda t: t[0])
        p = min(1.0, normal_sf(z) * len(views))
        return {"z": round(z, 2), "p_value": p, "view": view, "tries": len(views),
                "detected": p <= normal_sf(THRESHOLD_Z), "key_id": self.key.id, "scheme": SCHEME}

    def detected(self, images: np.ndarray) -> np.ndarray:
        """detect(image)["detected"] for each of (N, H, W, C) (for benchmarks)."""
        return np.array([self.detect(img)["detected"] for img in images], bool)


def clip_scores(mark: ImageMarkV1, frames: np.ndarray) -> tuple[float, np.ndarray, int]:
    """(pooled z, per-frame z, observations) of uint8 (T, H, W, C) frames under `mark`'s key.

    Per frame, the image mark's statistic: cos of each live coefficient's phase against the key's lattice,
    summed, over sqrt(count / 2) (z ~ N(0, 1) without the mark, ImageMarkV1.scores). Pooled: the same sum over all
    frames, over the square root of its variance without the mark when a coefficient that moved less than one
    lattice step between two frames counts as the same observation (fully correlated: its phase against the
    shared dither barely moves) and one that moved farther as a new one. Naive pooling (all frames independent)
    would turn a still clip into T copies of one frame's evidence (measured: z up to 8 on unmarked still clips);
    this gives a still clip exactly one frame's z, and evidence accrues only where content moves. On Moving MNIST
    that gain is small: most of a marked clip's evidence lies in its static background, which the mark makes
    textured, so the best single frame often scores as high (detect_clip_mark tries both)."""
    t, h, w, _ = frames.shape
    y = _luma(frames)
    live = np.broadcast_to((_blocks(y).std(axis=(-1, -2)) >= mark.flat)[..., None],
                           (t, h // 8, w // 8, mark.coefficients)).reshape(t, -1)
    coefs = mark._coefs(y).reshape(t, -1)
    agree = np.where(live, np.cos(2 * np.pi * (coefs - mark._dither((h, w)).reshape(-1)) / mark.step), 0.0)
    counts = live.sum(axis=1)
    per_frame = np.where(counts > 0, agree.sum(axis=1) / np.sqrt(np.maximum(counts, 1) / 2), 0.0)
    var = 0.0
    for i in range(t):  # sum over frame pairs of the coefficients that count as one observation
        var += float(((np.abs(coefs - coefs[i]) < mark.step) & live & live[i]).sum())
    pooled = float(agree.sum() / math.sqrt(var / 2)) if var > 0 else 0.0
    return pooled, per_frame, int(counts.sum())


def detect_clip_mark_v1(mark: ImageMarkV1, clip: np.ndarray, scale: int | None = None) -> dict:
    """The keyed image mark in one uint8 (T, H, W, C) clip, its evidence pooled over the frames.

    Two statistics per view: the pooled z (see clip_scores; its null model: a coefficient within one lattice
    step of another frame's is the same observation, one farther away a new, independent one), and the best
    frame's z with a Bonferroni factor T (valid however the frames depend on each other); the clip's p is twice the
    smaller p. Views as ImageMarkV1.detect: as found and after its JPEG round trip, each also shrunk back by 2, 3 and
    4 when `scale` is None (unknown); a known `scale` (the record's) is undone first and only those two views are
    tried. The p-value is corrected for every try (Bonferroni), and the clip is detected when p <= 3.2e-5
    (THRESHOLD_Z's one-sided rate): the false-positive rate per clip is at most that for the best-frame statistic,
    and for the pooled one where its null model holds. Measured on 420 unmarked clips under random keys (Moving
    MNIST raw and through MP4, still, still plus noise, slow and fast pans of a smooth texture, raw and MP4):
    none detected, P(p <= 0.05) = 0.019 and P(p <= 0.01) = 0.002 (conservative), the pooled z's sd 0.3-0.7 per
    kind."""
    frames = np.asarray(clip)  # (T, H, W, C), checked by media.video.detect_clip_mark
    t, h, w, _ = frames.shape
    if scale and scale > 1 and h % scale == 0 and w % scale == 0:
        frames = np.stack([_shrink(f, scale) for f in frames])
        h, w = h // scale, w // scale
    shrinks = [1] if scale else [k for k in (1, 2, 3, 4) if k == 1 or (h % k == 0 and w % k == 0 and h // k >= 8
                                                                      and w // k >= 8)]
    results = []
    for k in shrinks:
        base = frames if k == 1 else np.stack([_shrink(f, k) for f in frames])
        for jpeg in ([False, True] if mark.jpeg_quality else [False]):
            view = (f"x1/{k}" if k > 1 else "as found") + (f", JPEG {mark.jpeg_quality}" if jpeg else "")
            views = jpeg_round_trip(base, mark.jpeg_quality) if jpeg else base
            results.append((view, *clip_scores(mark, views)))
    tries = len(results) * (2 if t > 1 else 1)
    best = None
    for view, pooled, per_frame, scored in results:
        candidates = [(normal_sf(pooled), pooled, "pooled over frames")]
        if t > 1:
            top = int(np.argmax(per_frame))
            candidates.append((min(1.0, normal_sf(per_frame[top]) * t), float(per_frame[top]), f"frame {top}"))
        p, z, how = min(candidates, key=lambda c: c[0])
        if best is None or p < best[0]:
            best = (p, z, f"{view}, {how}", pooled, per_frame, scored)
    p, z, view, pooled, per_frame, scored = best
    p = min(1.0, p * tries)
    return {"z": round(z, 2), "p_value": p, "view": view, "tries": tries, "frames": t,
            "frames_over_threshold": int((per_frame > THRESHOLD_Z).sum()), "z_pooled": round(pooled, 2),
            "z_best_frame": round(float(per_frame.max()), 2), "coefficients_scored": scored,
            "detected": p <= normal_sf(THRESHOLD_Z), "key_id": mark.key.id, "scheme": SCHEME}
