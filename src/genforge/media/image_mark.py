"""The keyed image mark, version 2: robust by construction rather than tuned to one codec setting. numpy + Pillow.

Each 8x8 luma block's 15 lowest AC DCT coefficients (zigzag order; DC is left out, so an offset in brightness
and a codec's DC error touch nothing) are projected onto 5
keyed orthonormal directions (spread-transform dither modulation, Chen & Wornell 2001), and each projection is
moved onto a keyed lattice `step * Z + dither`. The detector measures how close each projection lies to its
lattice (cosine of the phase): for an unmarked image the phase is uniform, so the statistic is N(0, 1) whatever
the image holds (no interference from the host, which is what lets a mark live in a 28x28 digit).

Why it survives what v1 (a lattice tuned to one JPEG-75 round trip) did not:
- No codec is assumed. The lattice step (30) is wide against the quantisation error of JPEG 50-95 and WebP on
  these low frequencies; spreading one lattice over three coefficients averages the error of any one of them.
- Keys are tied to the block's index, not to the image's size, and the detector searches the block grid's
  offset and the blocks lost off the top and left, so a crop of up to `max_crop` of each side is found (a
  Bonferroni factor pays for every try).
- The detector also reads the image shrunk back by 2, 3 and 4 (an enlargement for display).
- The points are then nudged so that JPEG round trips at 50, 75 and 90 and WebP at 60 land near them too (the
  mean of the five errors, as found and after each, is taken off, six times): a range of qualities, not one.
- Strength is set per image: the move onto the lattice is scaled down where it would cost more than
  `target_psnr` dB (saturated digits, where clipping at 0 and 255 makes the move expensive), so every image
  keeps its PSNR and the detector needs no side information.

Version 1 (media/legacy_mark.py) is still read for files that say they carry it (XMP `mark_scheme`) and for
files that say nothing.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image

from genforge.media.watermark import MarkKey, normal_sf

SCHEME = "image-v2"
BLOCK = 8
FALSE_POSITIVE_RATE = 1e-4  # per image, after the Bonferroni factor for every view and alignment tried
ZIGZAG = sorted(((u, v) for u in range(BLOCK) for v in range(BLOCK)), key=lambda uv: (uv[0] + uv[1], uv[0]))
_TABLE = 64  # keys are drawn for a 64x64-block tile (512 px) and repeat beyond it


def _dct_matrix(n: int = BLOCK) -> np.ndarray:
    k = np.arange(n)
    m = np.cos(np.pi * (2 * k[None, :] + 1) * k[:, None] / (2 * n)) * math.sqrt(2 / n)
    m[0] /= math.sqrt(2)
    return m


_D = _dct_matrix()


def luma(images: np.ndarray) -> np.ndarray:
    """uint8 (..., H, W, C) -> float64 (..., H, W) BT.601 luma (the channel itself for grey images)."""
    x = np.asarray(images).astype(np.float64)
    if x.shape[-1] == 3:
        return x @ np.array([0.299, 0.587, 0.114])
    return x[..., 0]


@lru_cache(maxsize=16)
def _tables(secret: bytes, coefficients: int, projections: int, step: float) -> tuple[np.ndarray, np.ndarray]:
    """Per block index (64x64 tile): orthonormal (K, P) directions and (P,) dithers, drawn from the key."""
    rng = np.random.default_rng(MarkKey(secret).seed("image-mark-v2", coefficients, projections, step))
    directions = np.linalg.qr(rng.standard_normal((_TABLE, _TABLE, coefficients, coefficients)))[0][..., :projections]
    return directions, rng.uniform(0, step, size=(_TABLE, _TABLE, projections))


@dataclass(frozen=True)
class Alignment:
    """Where the embedder's block grid lies in a found image: `top`/`left` pixels lost off those sides."""

    top: int = 0
    left: int = 0

    @property
    def offset(self) -> tuple[int, int]:
        return (-self.top) % BLOCK, (-self.left) % BLOCK

    @property
    def first_block(self) -> tuple[int, int]:
        return -(-self.top // BLOCK), -(-self.left // BLOCK)


@dataclass(frozen=True)
class ImageMark:
    """The keyed image mark (see the module docstring). `coefficients` per 8x8 block, `projections` lattices per
    block, `step` the lattice spacing in 8-bit luma units of the orthonormal DCT, `target_psnr` the most an image's
    mark may cost, `max_crop` the share of each side the detector assumes may have been cut off the top and left
    (bottom and right crops need no search), `flat` the luma spread under which a block is not scored (unmarked
    flat blocks all look alike, so they would not be independent observations)."""

    key: MarkKey
    coefficients: int = 15
    projections: int = 5
    step: float = 30.0
    target_psnr: float = 40.5
    max_crop: float = 0.1
    iterations: int = 15
    codecs: tuple[tuple[str, int], ...] = (("JPEG", 50), ("JPEG", 75), ("JPEG", 90), ("WEBP", 60))
    codec_rounds: int = 6
    flat: float = 0.5
    scheme = SCHEME
    false_positive_rate = FALSE_POSITIVE_RATE

    def _tables(self, rows: int, cols: int, first: tuple[int, int] = (0, 0)) -> tuple[np.ndarray, np.ndarray]:
        directions, dither = _tables(self.key.secret, self.coefficients, self.projections, self.step)
        r = (first[0] + np.arange(rows)) % _TABLE
        c = (first[1] + np.arange(cols)) % _TABLE
        return directions[r][:, c], dither[r][:, c]

    def _blocks(self, y: np.ndarray, offset: tuple[int, int] = (0, 0)) -> np.ndarray:
        """(N, H, W) -> (N, rows, cols, 8, 8): the full blocks of the grid starting at `offset`."""
        n, h, w = y.shape
        oy, ox = offset
        rows, cols = (h - oy) // BLOCK, (w - ox) // BLOCK
        return y[:, oy:oy + rows * BLOCK, ox:ox + cols * BLOCK].reshape(n, rows, BLOCK, cols, BLOCK).transpose(
            0, 1, 3, 2, 4)

    def _coefs(self, blocks: np.ndarray) -> np.ndarray:
        u, v = zip(*ZIGZAG[1:1 + self.coefficients])
        return (_D @ blocks @ _D.T)[..., list(u), list(v)]

    def _pixels(self, change: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
        """(N, rows, cols, K) coefficient changes -> (N, H, W) luma change on the grid at offset 0."""
        n, h, w = shape
        rows, cols = change.shape[1:3]
        u, v = zip(*ZIGZAG[1:1 + self.coefficients])
        full = np.zeros((n, rows, cols, BLOCK, BLOCK))
        full[..., list(u), list(v)] = change
        out = np.zeros((n, h, w))
        out[:, :rows * BLOCK, :cols * BLOCK] = (_D.T @ full @ _D).transpose(0, 1, 3, 2, 4).reshape(
            n, rows * BLOCK, cols * BLOCK)
        return out

    # ------------------------------------------------------------------------------------------------ embedding

    def embed(self, images: np.ndarray) -> np.ndarray:
        """uint8 (N, H, W, C) -> uint8 (N, H, W, C) marked. Images smaller than one block are returned as they are."""
        images = np.asarray(images)
        n, h, w, _ = images.shape
        if h < BLOCK or w < BLOCK or n == 0:
            return images.copy()
        directions, dither = self._tables(h // BLOCK, w // BLOCK)
        x = images.astype(np.float64)
        delta = np.zeros((n, h, w))
        for _ in range(self.iterations):  # onto the lattice, within [0, 255] (clipping pulls it off; repeat)
            coefs = self._coefs(self._blocks(luma(np.clip(x + delta[..., None], 0, 255))))
            proj = np.einsum("nijk,ijkp->nijp", coefs, directions)
            target = np.round((proj - dither) / self.step) * self.step + dither
            change = self._pixels(np.einsum("nijp,ijkp->nijk", target - proj, directions), (n, h, w))
            delta += change
            if np.abs(change).max() < 0.05:
                break
        marked = self._within_budget(x, delta)
        for _ in range(self.codec_rounds):  # move the points so that common re-encodes land near them too
            errors = []
            for codec in (None, *self.codecs):
                seen = marked if codec is None else round_trip(marked, *codec)
                coefs = self._coefs(self._blocks(luma(seen)))
                err = np.einsum("nijk,ijkp->nijp", coefs, directions) - target
                errors.append((err + self.step / 2) % self.step - self.step / 2)
            delta -= self._pixels(np.einsum("nijp,ijkp->nijk", np.mean(errors, axis=0), directions), (n, h, w))
            marked = self._within_budget(x, delta)
        return marked

    def _within_budget(self, x: np.ndarray, delta: np.ndarray) -> np.ndarray:
        """x + delta as uint8, each image's change scaled down where it would cost more than `target_psnr`."""
        budget = 255.0 ** 2 / 10 ** (self.target_psnr / 10)
        scale = np.ones(len(x))
        for _ in range(4):  # clipping and rounding make the cost not quite quadratic in the scale: settle it
            marked = np.clip(np.rint(x + delta[..., None] * scale[:, None, None, None]), 0, 255)
            mse = ((marked - x) ** 2).mean(axis=(1, 2, 3))
            if (mse <= budget).all():
                break
            scale = np.where(mse > budget, scale * np.sqrt(budget / np.maximum(mse, 1e-12)) * 0.995, scale)
        return marked.astype(np.uint8)

    # ------------------------------------------------------------------------------------------------ detection

    def observations(self, y: np.ndarray, alignment: Alignment = Alignment()) -> tuple[np.ndarray, np.ndarray,
                                                                                         np.ndarray]:
        """Of luma (N, H, W) read with `alignment`: (agreement (N, B, P): cos of each projection's phase against
        its lattice, 0 where not scored; projections (N, B, P); scored (N, B) bool), B the blocks read."""
        blocks = self._blocks(y, alignment.offset)
        n, rows, cols = blocks.shape[:3]
        directions, dither = self._tables(rows, cols, alignment.first_block)
        proj = np.einsum("nijk,ijkp->nijp", self._coefs(blocks), directions)
        live = blocks.std(axis=(-1, -2)) >= self.flat
        agree = np.cos(2 * np.pi * (proj - dither) / self.step) * live[..., None]
        return agree.reshape(n, -1, self.projections), proj.reshape(n, -1, self.projections), live.reshape(n, -1)

    def alignments(self, h: int, w: int) -> list[Alignment]:
        """The crops searched: every number of pixels up to `max_crop` of the original side lost off the top and
        the left (the original side is at most h / (1 - max_crop))."""
        top = min(math.ceil(self.max_crop * h / (1 - self.max_crop)), 4 * BLOCK - 1)
        left = min(math.ceil(self.max_crop * w / (1 - self.max_crop)), 4 * BLOCK - 1)
        return [Alignment(a, b) for a in range(top + 1) for b in range(left + 1)
                if h - Alignment(a, b).offset[0] >= BLOCK and w - Alignment(a, b).offset[1] >= BLOCK]

    def scores(self, images: np.ndarray, alignment: Alignment = Alignment()) -> tuple[np.ndarray, np.ndarray]:
        """(z, projections scored) per image of uint8 (N, H, W, C) at one alignment: z ~ N(0, 1) without the mark."""
        images = np.asarray(images)
        n, h, w, _ = images.shape
        if h < BLOCK or w < BLOCK:
            return np.zeros(n), np.zeros(n, int)
        agree, _, live = self.observations(luma(images), alignment)
        count = live.sum(axis=1) * self.projections
        z = agree.sum(axis=(1, 2)) / np.sqrt(np.maximum(count, 1) / 2)
        return np.where(count > 0, z, 0.0), count

    def views(self, image: np.ndarray) -> list[tuple[str, np.ndarray]]:
        """What the detector reads of one (H, W, C) image: as found, and shrunk back by 2, 3 and 4 when the sides
        allow (an enlargement for display). A thumbnail (an output shrunk) is not searched: enlarged back, its
        smooth blocks' phases are not uniform without the mark (measured: a heavy-tailed null), and the mark
        rarely survived the halving anyway (benchmarks/RESULTS.md)."""
        h, w = image.shape[:2]
        out = [("as found", image)]
        for k in (2, 3, 4):
            if h % k == 0 and w % k == 0 and h // k >= BLOCK and w // k >= BLOCK:
                out.append((f"x1/{k}", _shrink(image, k)))
        return out

    def detect(self, image: np.ndarray) -> dict:
        """One uint8 (H, W, C) image: the best z over views and alignments, its p-value corrected for the tries."""
        return self.detect_many([np.asarray(image)])[0]

    def detect_many(self, images) -> list[dict]:
        """detect() for each image of a list (or an (N, H, W, C) array); images of one size are scored together."""
        images = [np.asarray(img) for img in images]
        out: list[dict | None] = [None] * len(images)
        by_size: dict[tuple, list[int]] = {}
        for i, img in enumerate(images):
            by_size.setdefault(img.shape, []).append(i)
        for shape, idx in by_size.items():
            if shape[0] < BLOCK or shape[1] < BLOCK:
                for i in idx:
                    out[i] = self._verdict(0.0, 1.0, "too small to carry the mark", 1, 0)
                continue
            batch = np.stack([images[i] for i in idx])
            view_sets = [self.views(img) for img in batch]  # same names and shapes for one input shape
            best = [(-np.inf, "", 0)] * len(idx)
            tries = 0
            for v, (name, _) in enumerate(view_sets[0]):
                y = luma(np.stack([vs[v][1] for vs in view_sets]))
                for al in self.alignments(*y.shape[1:]):
                    agree, _, live = self.observations(y, al)
                    count = live.sum(axis=1) * self.projections
                    z = np.where(count > 0, agree.sum(axis=(1, 2)) / np.sqrt(np.maximum(count, 1) / 2), 0.0)
                    tries += 1
                    where = name if al == Alignment() else f"{name}, {al.top} px off the top and {al.left} off the left"
                    best = [b if b[0] >= zi else (float(zi), where, int(c)) for b, zi, c in zip(best, z, count)]
            for i, (z, where, count) in zip(idx, best):
                out[i] = self._verdict(z, min(1.0, normal_sf(z) * tries), where, tries, count)
        return out

    def detected(self, images: np.ndarray) -> np.ndarray:
        """detect(image)["detected"] for each of (N, H, W, C) (for benchmarks)."""
        return np.array([r["detected"] for r in self.detect_many(images)], bool)

    def _verdict(self, z: float, p: float, view: str, tries: int, count: int) -> dict:
        return {"z": round(z, 2), "p_value": p, "view": view, "tries": tries, "projections_scored": count,
                "detected": p <= FALSE_POSITIVE_RATE, "key_id": self.key.id, "scheme": SCHEME,
                "searched": self.searched()}

    def searched(self) -> str:
        """What the detector tries, in words (verify prints it)."""
        return (f"as found and shrunk by 2-4 (a display enlargement); block grid offsets and up to {self.max_crop:.0%} of each "
                "side cropped off the top and left (a crop's bottom and right need no search)")


def _shrink(image: np.ndarray, k: int) -> np.ndarray:
    h, w, c = image.shape
    x = image.astype(np.float64).reshape(h // k, k, w // k, k, c).mean(axis=(1, 3))
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def round_trip(images: np.ndarray, fmt: str, quality: int) -> np.ndarray:
    """uint8 (N, H, W, C) through Pillow's encoder and decoder (JPEG with its default 4:2:0, lossy WebP)."""
    out = np.empty_like(images)
    for i, img in enumerate(images):
        buf = io.BytesIO()
        Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img).save(buf, fmt, quality=quality)
        dec = np.asarray(Image.open(buf).convert("L" if img.shape[-1] == 1 else "RGB"))
        out[i] = dec[..., None] if dec.ndim == 2 else dec
    return out
