"""Keyed invisible marks: one for images, one for text. numpy only.

Image mark: quantization index modulation (dither modulation) of the lowest-frequency coefficients of each
8x8 luma block, the blocks JPEG itself codes. Each chosen coefficient is moved to the nearest point of a
lattice `step * Z + dither`, with the dither drawn from the key. A detector that knows the key measures how
close each coefficient lies to its lattice: unmarked content falls anywhere (cosine of the phase averages 0),
marked content falls on it (cosine 1), so the statistic is free of interference from the image itself; that is
what lets a mark live in a 28x28 digit, where a spread-spectrum mark drowns in the digit's own energy. JPEG at
quality 75 moves these coefficients by at most half its step (4-8 here), well under half the lattice step.

Text mark (media/text_mark.py): a green list per position (Kirchenbauer et al., 2023) seeded by an HMAC of the previous tokens under
a secret key, so neither detection nor forgery is possible without the key. Detection counts green tokens
over unique (context, token) pairs, a z-score against the fraction gamma, with its one-sided p-value.

Keys are bytes from a file or the environment (`GENFORGE_MARK_KEY` holds the key itself, or
`GENFORGE_MARK_KEY_FILE` a path); they are never written into outputs, runs or logs: outputs carry the key's
id, an HMAC of a fixed string, which names the key without revealing it.
"""

from __future__ import annotations

import hashlib
import io
import hmac
import math
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

KEY_ENV = "GENFORGE_MARK_KEY"
KEY_FILE_ENV = "GENFORGE_MARK_KEY_FILE"
THRESHOLD_Z = 4.0  # one-sided p = 3.2e-5 per test under the null; benchmarks/RESULTS.md has measured rates


class KeyError_(ValueError):
    """A mark key that cannot be read (a user error)."""


@dataclass(frozen=True)
class MarkKey:
    secret: bytes

    @property
    def id(self) -> str:
        """A public name for the key: the first 8 bytes of HMAC(key, 'genforge key id'), hex."""
        return hmac.new(self.secret, b"genforge key id", hashlib.sha256).hexdigest()[:16]

    def seed(self, *context: object) -> int:
        message = "|".join(str(c) for c in context).encode()
        return int.from_bytes(hmac.new(self.secret, message, hashlib.sha256).digest()[:8], "little")


def new_key_file(path: str | Path) -> MarkKey:
    """Write 32 random bytes (hex) to `path`, readable by its owner only; refuses to overwrite."""
    path = Path(path)
    if path.exists():
        raise KeyError_(f"{path} exists; a key file is never overwritten (choose another path or delete it).")
    path.parent.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_hex(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secret + "\n")
    return MarkKey(secret.encode())


def read_key(path: str | Path | None = None) -> MarkKey | None:
    """The key from `path`, else $GENFORGE_MARK_KEY_FILE, else $GENFORGE_MARK_KEY, else None."""
    if path is None and os.environ.get(KEY_FILE_ENV):
        path = os.environ[KEY_FILE_ENV]
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise KeyError_(f"mark key file {path} not found; create one with `genforge keygen {path}`.")
        secret = path.read_bytes().strip()
    else:
        secret = os.environ.get(KEY_ENV, "").strip().encode()
        if not secret:
            return None
    if len(secret) < 16:
        raise KeyError_(f"the mark key is {len(secret)} bytes; use at least 16 (`genforge keygen PATH` writes 64 hex "
                        "characters).")
    return MarkKey(secret)


# ----------------------------------------------------------------------------------------------- image mark

BLOCK = 8
ZIGZAG = sorted(((u, v) for u in range(BLOCK) for v in range(BLOCK)), key=lambda uv: (uv[0] + uv[1], uv[0]))


def _dct_matrix(n: int = BLOCK) -> np.ndarray:
    k = np.arange(n)
    m = np.cos(np.pi * (2 * k[None, :] + 1) * k[:, None] / (2 * n)) * math.sqrt(2 / n)
    m[0] /= math.sqrt(2)
    return m


_D = _dct_matrix()


def _blocks(y: np.ndarray) -> np.ndarray:
    """(N, H, W) -> (N, H//8, W//8, 8, 8) of the full blocks."""
    n, h, w = y.shape
    bh, bw = h // BLOCK, w // BLOCK
    return y[:, :bh * BLOCK, :bw * BLOCK].reshape(n, bh, BLOCK, bw, BLOCK).transpose(0, 1, 3, 2, 4)


def _luma(images: np.ndarray) -> np.ndarray:
    x = images.astype(np.float64)
    if x.shape[-1] == 3:
        return x @ np.array([0.299, 0.587, 0.114])
    return x[..., 0]


@dataclass(frozen=True)
class ImageMark:
    """The keyed image mark. `coefficients` per 8x8 block (DC and the lowest AC in zigzag order) and `step`, the
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
                "detected": p <= normal_sf(THRESHOLD_Z), "key_id": self.key.id}

    def detected(self, images: np.ndarray) -> np.ndarray:
        """detect(image)["detected"] for each of (N, H, W, C) (for benchmarks)."""
        return np.array([self.detect(img)["detected"] for img in images], bool)


def jpeg_round_trip(images: np.ndarray, quality: int) -> np.ndarray:
    """uint8 (N, H, W, C) through Pillow's JPEG encoder and decoder at `quality` (4:2:0 for colour, its default)."""
    out = np.empty_like(images)
    for i, img in enumerate(images):
        buf = io.BytesIO()
        Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img).save(buf, "JPEG", quality=quality)
        dec = np.asarray(Image.open(buf))
        out[i] = dec[..., None] if dec.ndim == 2 else dec
    return out


def _shrink(image: np.ndarray, k: int) -> np.ndarray:
    h, w, c = image.shape
    x = image.astype(np.float64).reshape(h // k, k, w // k, k, c).mean(axis=(1, 3))
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def normal_sf(z: float) -> float:
    """P(Z > z) for a standard normal."""
    return 0.5 * math.erfc(z / math.sqrt(2))


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * math.log10(255 ** 2 / mse)
