"""The keys of the invisible marks, and what every mark shares. numpy + Pillow.

The marks themselves: images and video frames in media/image_mark.py (version 2: dither modulation of keyed
projections of each 8x8 luma block's low AC coefficients, found after crops and the JPEG/WebP range) and
media/legacy_mark.py (version 1, read only); text in media/text_mark.py (a distribution-preserving tournament
keyed by the context, and the older green list, read only); audio in media/audio_mark.py; the diffusion noise
mark in diffusion/noise_mark.py.

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
