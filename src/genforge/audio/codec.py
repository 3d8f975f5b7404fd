"""The spectrogram codec: a clip <-> a fixed-size normalised log-magnitude image, and back by fast Griffin-Lim.

Numpy only, and nothing else from genforge, so data/ (encode), media/ (decode), the torch path and the torch-free
runtime share one implementation, as they share diffusion/samplers.py.

Framing. The STFT uses a periodic Hann window of n_fft samples every `hop` samples (n_fft a multiple of hop).
The clip is zero-padded by (n_fft - hop) / 2 on each side, so a clip of `hop * frames` samples gives exactly
`frames` frames, each centred on its own hop-sized block; ISTFT is the least-squares overlap-add (divided by the
summed squared window), which inverts that STFT exactly, so encode -> decode is length-exact.

Values. log(|X| + eps) per bin, normalised per frequency by the mean and std fitted on training clips, clipped to
+-clip_std and divided by clip_std: an array in [-1, 1] whose row 0 is the LOWEST frequency. The Nyquist bin is
dropped (n_fft / 2 rows, an image-friendly 128 for n_fft 256) and is zero on inversion.

Griffin-Lim with momentum is Perraudin, Balazs & Sondergaard 2013 ("A fast Griffin-Lim algorithm"):
    c_n = P1(P2(t_{n-1})),   t_n = c_n + alpha (c_n - c_{n-1})
with P2 = STFT(ISTFT(.)) (the nearest consistent spectrogram) and P1 = keep the phase, impose the target
magnitude. alpha = 0 is the classic algorithm of Griffin & Lim 1984. Every step is batched over N clips.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import numpy as np

_TINY = 1e-12


def hann(n_fft: int) -> np.ndarray:
    """Periodic Hann window (the DFT-even one, whose squared overlaps sum to a constant at hop n_fft/4)."""
    return (0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n_fft) / n_fft)).astype(np.float32)


def _check_framing(n_fft: int, hop: int) -> None:
    if hop <= 0 or n_fft <= 0 or n_fft % hop or (n_fft - hop) % 2:
        raise ValueError(f"n_fft ({n_fft}) must be a positive multiple of hop ({hop}) with n_fft - hop even")


def n_frames(length: int, hop: int) -> int:
    """Frames for a clip of `length` samples: one per started hop."""
    return -(-int(length) // hop)


def stft(x: np.ndarray, n_fft: int, hop: int) -> np.ndarray:
    """(N, L) real -> (N, n_fft // 2 + 1, ceil(L / hop)) complex64, frequency along axis 1 (low first)."""
    _check_framing(n_fft, hop)
    x = np.asarray(x, dtype=np.float32)
    n, length = x.shape
    frames = n_frames(length, hop)
    side = (n_fft - hop) // 2
    padded = np.zeros((n, frames * hop + n_fft - hop), dtype=np.float32)
    padded[:, side:side + length] = x
    windows = np.lib.stride_tricks.sliding_window_view(padded, n_fft, axis=1)[:, ::hop]  # (N, frames, n_fft)
    spec = np.fft.rfft(windows * hann(n_fft), axis=-1)
    return spec.transpose(0, 2, 1).astype(np.complex64, copy=False)


def _overlap_add(segments: np.ndarray, hop: int) -> np.ndarray:
    """(N, frames, n_fft) -> (N, (frames - 1) * hop + n_fft): sum of the frames placed every `hop` samples."""
    n, frames, n_fft = segments.shape
    r = n_fft // hop
    out = np.zeros((n, frames + r - 1, hop), dtype=segments.dtype)
    blocks = segments.reshape(n, frames, r, hop)
    for k in range(r):
        out[:, k:k + frames] += blocks[:, :, k]
    return out.reshape(n, -1)


def _window_norm(frames: int, n_fft: int, hop: int) -> np.ndarray:
    w2 = np.broadcast_to(hann(n_fft) ** 2, (1, frames, n_fft))
    total = _overlap_add(np.ascontiguousarray(w2), hop)[0]
    return np.where(total > 1e-6, 1.0 / np.maximum(total, 1e-6), 0.0).astype(np.float32)


def istft(spec: np.ndarray, n_fft: int, hop: int, length: int) -> np.ndarray:
    """Least-squares inverse of `stft`: (N, bins, frames) complex -> (N, length) float32.

    `bins` may be n_fft // 2 (the Nyquist bin is then taken as zero) or n_fft // 2 + 1."""
    _check_framing(n_fft, hop)
    spec = np.asarray(spec)
    _, bins, frames = spec.shape
    if bins not in (n_fft // 2, n_fft // 2 + 1):
        raise ValueError(f"a spectrogram for n_fft {n_fft} has {n_fft // 2} or {n_fft // 2 + 1} bins, not {bins}")
    if frames != n_frames(length, hop):
        raise ValueError(f"{frames} frames do not make a clip of {length} samples at hop {hop}")
    segments = np.fft.irfft(spec.transpose(0, 2, 1), n=n_fft, axis=-1).astype(np.float32, copy=False)
    signal = _overlap_add(segments * hann(n_fft), hop) * _window_norm(frames, n_fft, hop)
    side = (n_fft - hop) // 2
    return np.ascontiguousarray(signal[:, side:side + length])


def griffin_lim(magnitude: np.ndarray, n_fft: int, hop: int, length: int, iters: int = 32,
                momentum: float = 0.99, rng: np.random.Generator | None = None) -> np.ndarray:
    """Waveforms (N, length) float32 whose STFT magnitude approaches `magnitude` (N, bins, frames).

    Starts from random phases drawn from `rng`, the same for every clip of the batch (zero phase when rng is None); `momentum` is alpha of the fast
    algorithm (0.99 as recommended by Perraudin et al.; 0 is plain Griffin-Lim)."""
    mag = np.asarray(magnitude, dtype=np.float32)
    if mag.ndim != 3:
        raise ValueError(f"magnitude must be (N, bins, frames), got shape {mag.shape}")
    if mag.shape[1] == n_fft // 2:  # the dropped Nyquist bin comes back as zero
        mag = np.concatenate([mag, np.zeros_like(mag[:, :1])], axis=1)
    if rng is None:
        coeffs = mag.astype(np.complex64)
    else:
        # one phase array for every clip: a clip's waveform must not depend on its place in a batch (a server
        # merges requests; `generate` splits n into batches)
        coeffs = (mag * np.exp(2j * np.pi * rng.random(mag.shape[1:]))).astype(np.complex64)
    previous = coeffs
    target = coeffs
    for _ in range(int(iters)):
        projected = stft(istft(target, n_fft, hop, length), n_fft, hop)
        current = mag * (projected / np.maximum(np.abs(projected), _TINY))
        target = current + momentum * (current - previous) if momentum else current
        previous = current
    return istft(previous, n_fft, hop, length)


def spectral_convergence(reference_mag: np.ndarray, estimate_mag: np.ndarray) -> float:
    """||ref - est||_F / ||ref||_F over magnitudes (0 is perfect). For a batch (N, bins, frames), the mean of
    the per-clip values, so loud clips do not dominate."""
    ref = np.asarray(reference_mag, dtype=np.float64)
    est = np.asarray(estimate_mag, dtype=np.float64)
    if ref.shape != est.shape:
        raise ValueError(f"shapes differ: {ref.shape} vs {est.shape}")
    if ref.ndim < 3:
        ref, est = ref[None], est[None]
    axes = tuple(range(1, ref.ndim))
    num = np.sqrt(((ref - est) ** 2).sum(axis=axes))
    den = np.sqrt((ref ** 2).sum(axis=axes))
    return float(np.mean(num / np.maximum(den, _TINY)))


def log_spectral_distance(reference_mag: np.ndarray, estimate_mag: np.ndarray, floor: float = 1e-4) -> float:
    """Mean over frames of the RMS over bins of 20 log10(ref / est), in dB (magnitudes floored at `floor`)."""
    ref = np.maximum(np.asarray(reference_mag, dtype=np.float64), floor)
    est = np.maximum(np.asarray(estimate_mag, dtype=np.float64), floor)
    if ref.shape != est.shape:
        raise ValueError(f"shapes differ: {ref.shape} vs {est.shape}")
    diff_db = 20.0 * np.log10(ref / est)
    return float(np.mean(np.sqrt(np.mean(diff_db ** 2, axis=-2))))


@dataclass(frozen=True)
class SpectrogramCodec:
    """Clip (hop * frames samples) <-> (bins, frames) array in [-1, 1]; see the module docstring."""

    sample_rate: int = 8000
    n_fft: int = 256
    hop: int = 64
    frames: int = 128
    clip_std: float = 3.0  # normalised values beyond this many standard deviations are clipped
    eps: float = 1e-4  # log(|X| + eps): about the level of 16-bit quantisation noise in one bin

    def __post_init__(self):
        _check_framing(self.n_fft, self.hop)
        if self.frames <= 0 or self.sample_rate <= 0 or self.clip_std <= 0 or self.eps <= 0:
            raise ValueError(f"invalid codec settings: {self}")

    @property
    def bins(self) -> int:
        return self.n_fft // 2

    @property
    def length(self) -> int:
        return self.hop * self.frames

    def _clips(self, clips) -> np.ndarray:
        x = np.asarray(clips, dtype=np.float32)
        if x.ndim == 1:
            x = x[None]
        if x.ndim != 2 or x.shape[1] != self.length:
            raise ValueError(f"clips must be (N, {self.length}) samples, got shape {x.shape}")
        return x

    def magnitude(self, clips) -> np.ndarray:
        """|STFT| without the Nyquist bin: (N, length) -> (N, bins, frames) float32."""
        return np.abs(stft(self._clips(clips), self.n_fft, self.hop)[:, :self.bins])

    def log_magnitude(self, clips) -> np.ndarray:
        """(N, length) float -> (N, bins, frames) float32 log(|X| + eps)."""
        return np.log(self.magnitude(clips) + np.float32(self.eps))

    def fit_stats(self, logmags) -> dict:
        """Per-frequency mean and std of log-magnitudes (N, bins, frames), as JSON-able lists."""
        lm = np.asarray(logmags, dtype=np.float64)
        if lm.ndim != 3 or lm.shape[1] != self.bins:
            raise ValueError(f"log-magnitudes must be (N, {self.bins}, frames), got shape {lm.shape}")
        mean = lm.mean(axis=(0, 2))
        std = np.maximum(lm.std(axis=(0, 2)), 1e-3)
        return {"mean": [float(v) for v in mean], "std": [float(v) for v in std]}

    def _stats(self, stats: dict) -> tuple[np.ndarray, np.ndarray]:
        try:
            mean = np.asarray(stats["mean"], dtype=np.float32).reshape(-1, 1)
            std = np.asarray(stats["std"], dtype=np.float32).reshape(-1, 1)
        except (KeyError, TypeError) as exc:
            raise ValueError(f"codec stats need 'mean' and 'std' lists ({exc})") from None
        if mean.shape[0] != self.bins or std.shape[0] != self.bins:
            raise ValueError(f"codec stats must hold {self.bins} values each, got {mean.shape[0]} and {std.shape[0]}")
        return mean, std

    def normalise(self, logmags, stats: dict) -> np.ndarray:
        """Log-magnitudes -> [-1, 1], per frequency."""
        mean, std = self._stats(stats)
        z = (np.asarray(logmags, dtype=np.float32) - mean) / (std * np.float32(self.clip_std))
        return np.clip(z, -1.0, 1.0).astype(np.float32, copy=False)

    def denormalise(self, specs, stats: dict) -> np.ndarray:
        """[-1, 1] -> magnitudes (N, bins, frames) float32 (inverse of normalise up to the clipping)."""
        mean, std = self._stats(stats)
        s = np.clip(np.asarray(specs, dtype=np.float32), -1.0, 1.0)
        return np.maximum(np.exp(s * (std * np.float32(self.clip_std)) + mean) - np.float32(self.eps), 0.0)

    def encode(self, clips, stats: dict) -> np.ndarray:
        """(N, length) waveforms -> (N, bins, frames) float32 in [-1, 1]."""
        return self.normalise(self.log_magnitude(clips), stats)

    def decode(self, specs, stats: dict, iters: int = 32, momentum: float = 0.99, seed: int = 0) -> np.ndarray:
        """(N, bins, frames) in [-1, 1] -> (N, length) float32 waveforms in [-1, 1], all N clips at once."""
        s = np.asarray(specs, dtype=np.float32)
        if s.ndim == 2:
            s = s[None]
        if s.ndim != 3 or s.shape[1:] != (self.bins, self.frames):
            raise ValueError(f"spectrograms must be (N, {self.bins}, {self.frames}), got shape {s.shape}")
        mag = self.denormalise(s, stats)
        wave = griffin_lim(mag, self.n_fft, self.hop, self.length, iters, momentum, np.random.default_rng(seed))
        return np.clip(wave, -1.0, 1.0)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> SpectrogramCodec:
        """Build from a run's codec entry; keys that are not settings ("kind", "stats") are ignored."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def to_uint8(specs) -> np.ndarray:
    """[-1, 1] spectrograms -> uint8 0..255 (what the image families train on): round((s + 1) / 2 * 255)."""
    s = np.clip(np.asarray(specs, dtype=np.float32), -1.0, 1.0)
    return np.rint((s + 1.0) * 127.5).astype(np.uint8)


def from_uint8(images) -> np.ndarray:
    """uint8 0..255 -> float32 [-1, 1], the inverse of to_uint8 up to its rounding."""
    return (np.asarray(images, dtype=np.float32) / 127.5 - 1.0).astype(np.float32, copy=False)
