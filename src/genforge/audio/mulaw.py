"""8-bit mu-law companding (ITU-T G.711's continuous curve), as WaveNet quantises its samples.

Numpy only, shared by the data layer (encode), the WaveNet method and the torch-free runtime (decode).
With mu = channels - 1, F(x) = sign(x) ln(1 + mu |x|) / ln(1 + mu) spends the ids on quiet samples, where
the ear is most sensitive, and ids are F(x) rounded onto `channels` even steps of [-1, 1].
"""

from __future__ import annotations

import numpy as np


def _mu(channels: int) -> float:
    if int(channels) < 2:
        raise ValueError(f"mu-law needs at least 2 channels, got {channels}")
    return float(int(channels) - 1)


def mulaw_encode(x, channels: int = 256) -> np.ndarray:
    """Samples in [-1, 1] (clipped) -> int64 ids in 0..channels-1; 0.0 maps to the middle of the range."""
    mu = _mu(channels)
    x = np.clip(np.asarray(x, dtype=np.float64), -1.0, 1.0)
    companded = np.sign(x) * np.log1p(mu * np.abs(x)) / np.log1p(mu)
    return np.rint((companded + 1.0) * (mu / 2.0)).astype(np.int64)


def mulaw_decode(ids, channels: int = 256) -> np.ndarray:
    """Ids in 0..channels-1 -> float32 samples in [-1, 1] (the exact inverse of the companding curve)."""
    mu = _mu(channels)
    y = np.asarray(ids, dtype=np.float64) * (2.0 / mu) - 1.0
    y = np.clip(y, -1.0, 1.0)
    return (np.sign(y) * np.expm1(np.abs(y) * np.log1p(mu)) / mu).astype(np.float32)
