"""The keyed, inaudible audio mark. numpy only (soxr for clips at another sample rate).

Quantization index modulation of short-time band energies, the audio twin of the image mark (watermark.py). The
clip is cut into Hann frames of 32 ms (hop 16 ms) at 8 kHz; each frame's 250-3500 Hz range into bands of 62.5 Hz.
The log energy of every band of every frame that carries sound ("cell") is moved to the nearest point of a lattice
`step * Z + dither`, the dither drawn from the key for that cell (frame index, band). A detector that knows the key
measures how close each cell lies to its lattice: in an unmarked clip the phase 2 pi (log E - dither) / step falls
anywhere, in a marked one on zero, so the host signal does not interfere (a blind spread-spectrum mark 30 dB
down in half a second of speech would drown in the speech itself: z ~ 1.5 by our estimate, where 4.5 is needed). The detector sums the cells' unit phasors; without the mark
the sum is a 2-D random walk, so |sum|^2 / sum(w^2) is exponential and its p-value exact. Taking the modulus makes
the test blind to a volume change (every cell's log energy moves alike).

Why the dither changes from frame to frame: with one dither per band repeated over frames, a clip marked under one
key lies on a lattice in every band, and any other key sees each band add up coherently: a wrong key "detected"
15% of marked clips in our measurements. A per-cell dither leaves a wrong key with noise, at the price of frame
alignment: a clip cut by a part of a hop no longer lines up, so the detector also searches sample offsets and frame
shifts (a crop or a padded start) and pays for the tries in its p-value (Bonferroni).

Robustness and cost were measured on the FSDD test clips (benchmarks/audio_mark.py, benchmarks/RESULTS.md): 16-bit
requantisation and 8->16->8 kHz resampling leave the phases untouched; white noise at 30 dB SNR reaches only the
weak cells, which the detector down-weights; the signal-to-mark ratio is capped at `smr_db`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from genforge.media.watermark import THRESHOLD_Z, MarkKey, normal_sf

MARK_RATE = 8000  # the mark lives below 3.5 kHz; other rates are resampled to this one (soxr) and back
BLOCK = 64  # dither rows are drawn in blocks of frames, so a clip's dither does not depend on its length
TINY = 1e-20  # band energies below this (digital silence) carry no mark


@lru_cache(maxsize=256)
def _dither_block(key: MarkKey, block: int, bands: int, step: float) -> np.ndarray:
    rng = np.random.default_rng(key.seed("audio-mark", block, bands, step))
    return rng.uniform(0.0, step, size=(BLOCK, bands))


@dataclass(frozen=True)
class AudioMark:
    """The keyed audio mark. `step`: lattice spacing of a cell's log energy (natural log of power; 0.2 = 0.87 dB,
    so a cell moves by at most +-0.43 dB); `smr_db`: the mark's power stays at least this far below the clip's;
    `floor`: cells weaker than this fraction of the clip's mean cell are neither marked nor scored. `search_frames`
    and `search_step`: the crop or padding (frames of 16 ms either way) and the sub-hop offsets (samples at 8 kHz)
    that `detect` tries when the clip is not aligned as written."""

    key: MarkKey
    step: float = 0.2
    low_hz: float = 250.0
    high_hz: float = 3500.0
    band_bins: int = 2
    hop: int = 128  # frames are 2 * hop samples long (Hann, 50% overlap: the windows sum to one)
    iterations: int = 8
    smr_db: float = 31.0
    floor: float = 0.25
    search_frames: int = 32
    search_step: int = 2
    search_seconds: float = 10.0

    # ------------------------------------------------------------------------------------------- analysis
    @property
    def n_fft(self) -> int:
        return 2 * self.hop

    @property
    def _bins(self) -> tuple[int, int]:
        lo = round(self.low_hz * self.n_fft / MARK_RATE)
        bands = (round(self.high_hz * self.n_fft / MARK_RATE) - lo) // self.band_bins
        return lo, bands

    def _window(self) -> np.ndarray:
        return 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(self.n_fft) / self.n_fft)

    def _stft(self, x: np.ndarray) -> np.ndarray:
        """Spectra (T, n_fft/2+1) of the full frames starting at sample 0, every `hop` samples."""
        t = len(x) // self.hop - 1
        if t < 1:
            return np.zeros((0, self.hop + 1), complex)
        seg = x[: (t + 1) * self.hop].reshape(t + 1, self.hop)
        return np.fft.rfft(np.concatenate([seg[:-1], seg[1:]], axis=1) * self._window(), axis=1)

    def _energies(self, spec: np.ndarray) -> np.ndarray:
        lo, bands = self._bins
        power = np.abs(spec[:, lo: lo + bands * self.band_bins]) ** 2
        return power.reshape(len(spec), bands, self.band_bins).sum(-1)

    def _weights(self, energy: np.ndarray) -> np.ndarray:
        """How much each cell counts: nothing below the floor; then more the louder it is, since noise moves a weak
        cell's log energy most (E / (E + mean): measured best of the saturating weights at 30 dB SNR)."""
        if energy.size == 0:
            return np.zeros(energy.shape)
        mean = float(energy.mean())
        if mean <= TINY:
            return np.zeros(energy.shape)
        live = (energy >= self.floor * mean) & (energy > TINY)
        return np.where(live, energy / (energy + mean), 0.0)

    def _dither(self, start: int, frames: int) -> np.ndarray:
        """(frames, bands) dither for frames start.. start+frames-1 (start >= 0)."""
        _, bands = self._bins
        if frames <= 0:
            return np.zeros((0, bands))
        first, last = start // BLOCK, (start + frames - 1) // BLOCK
        rows = np.concatenate([_dither_block(self.key, b, bands, self.step) for b in range(first, last + 1)])
        return rows[start - first * BLOCK: start - first * BLOCK + frames]

    # ------------------------------------------------------------------------------------------ embedding
    def embed(self, x: np.ndarray, rate: int = MARK_RATE) -> np.ndarray:
        """A mono float clip (L,) in [-1, 1] at `rate` -> the marked clip, float32, same length. Clips shorter than
        two frames (32 ms), and clips that already carry this key's mark as written, come back unchanged: a second
        pass would add its own distortion (31 -> 27 dB signal-to-mark measured) for nothing."""
        x = np.asarray(x, np.float64)
        if x.ndim != 1:
            raise ValueError(f"the audio mark takes one mono clip (L,), got shape {x.shape}")
        low = x if rate == MARK_RATE else _resample(x, rate, MARK_RATE)
        if self.scores(low)["p_value"] <= normal_sf(THRESHOLD_Z):
            return x.astype(np.float32)
        if rate == MARK_RATE:
            return self._embed(x).astype(np.float32)
        change = _resample(self._embed(low) - low, MARK_RATE, rate)
        change = np.pad(change, (0, max(0, len(x) - len(change))))[: len(x)]
        return np.clip(x + change, -1.0, 1.0).astype(np.float32)

    def _embed(self, x: np.ndarray) -> np.ndarray:
        original = np.clip(x, -1.0, 1.0)
        spec = self._stft(original)
        if len(spec) == 0:
            return original.copy()
        live = self._weights(self._energies(spec)) > 0
        dither = self._dither(0, len(spec))
        lo, bands = self._bins
        hi = lo + bands * self.band_bins
        y = original.copy()
        for _ in range(self.iterations):  # onto the lattice; overlapping frames pull each other off it: repeat
            spec = self._stft(y)
            log_e = np.log(self._energies(spec) + TINY)
            target = np.round((log_e - dither) / self.step) * self.step + dither
            gain = np.where(live, np.exp((target - log_e) / 2), 1.0)  # amplitude gain per cell
            change = np.zeros_like(spec)
            change[:, lo:hi] = spec[:, lo:hi] * (np.repeat(gain, self.band_bins, axis=1) - 1)
            y = np.clip(y + self._overlap_add(np.fft.irfft(change, n=self.n_fft, axis=1), len(y)), -1.0, 1.0)
        mark = y - original
        power, signal = float(np.sum(mark ** 2)), float(np.sum(original ** 2))
        limit = signal / 10 ** (self.smr_db / 10)
        if power > limit:  # the cap on the mark's power: scale it down (the cells then fall short of the lattice)
            y = original + mark * math.sqrt(limit / power)
        return y

    def _overlap_add(self, frames: np.ndarray, length: int) -> np.ndarray:
        seg = np.zeros((len(frames) + 1, self.hop))
        seg[:-1] += frames[:, : self.hop]
        seg[1:] += frames[:, self.hop:]
        out = np.zeros(length)
        flat = seg.ravel()[:length]
        out[: len(flat)] = flat
        return out

    # ------------------------------------------------------------------------------------------ detection
    def _phasors(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(weighted unit phasors of each cell's log energy over the lattice spacing, weights), each (T, bands)."""
        energy = self._energies(self._stft(x))
        weight = self._weights(energy)
        return weight * np.exp(2j * np.pi * np.log(energy + TINY) / self.step), weight

    def _score(self, phasor: np.ndarray, weight: np.ndarray) -> tuple[float, int]:
        """(r2 = |sum of phasor x dither phasor|^2 / sum(w^2), cells counted) with frames as written."""
        norm = float(np.sum(weight ** 2))
        if norm <= 0:
            return 0.0, 0
        dither = np.exp(-2j * np.pi * self._dither(0, len(phasor)) / self.step)
        return float(abs(np.sum(phasor * dither)) ** 2 / norm), int(np.count_nonzero(weight))

    def scores(self, x: np.ndarray, rate: int = MARK_RATE) -> dict:
        """The alignment as written only: {"z", "p_value", "cells"}. Without the mark (under this key) the weighted
        phasor sum is a 2-D random walk, so r2 = |sum|^2 / sum(w^2) is exponential: p = exp(-r2) exactly, and
        z = sqrt(2 r2) (the null's two components are N(0, 1); the threshold p = 3.2e-5 is z = 4.55)."""
        r2, cells = self._score(*self._phasors(_mono8(x, rate)))
        return {"z": math.sqrt(2 * r2), "p_value": math.exp(-r2), "cells": cells}

    def detect(self, x: np.ndarray, rate: int = MARK_RATE, search: bool = True) -> dict:
        """One clip (L,) or (L, C) at `rate`: the mark as written and, with `search` and when it is not found so,
        at every sub-hop offset and frame shift tried (the first `search_seconds`). The p-value is corrected for
        the tries (Bonferroni: half the threshold to the clip as found, half to the search over its tries), so
        detection (p <= the image and text marks' threshold, 3.2e-5) holds its false-positive rate either way."""
        y = _mono8(x, rate)
        r2, cells = self._score(*self._phasors(y))
        best = {"z": math.sqrt(2 * r2), "p_value": math.exp(-r2), "view": "as found", "shift_samples": 0,
                "cells": cells}
        alpha = normal_sf(THRESHOLD_Z)
        if search:
            best["p_value"] = min(1.0, 2 * best["p_value"])
            if best["p_value"] > alpha:  # not found as written: look for it at other alignments
                found = self._search(y[: int(self.search_seconds * MARK_RATE)])
                if found is not None and found["p_value"] < best["p_value"]:
                    best = found
        return {"z": round(best["z"], 2), "p_value": best["p_value"], "detected": best["p_value"] <= alpha,
                "view": best["view"], "shift_samples": best["shift_samples"], "cells": best["cells"],
                "key_id": self.key.id}

    def _search(self, x: np.ndarray) -> dict | None:
        """The best alignment over sub-hop offsets x frame shifts. Per offset, the shifts are one cross-correlation
        along time (FFT), summed over bands; the dither before frame 0 is zero (a padded start has no mark there)."""
        offsets = np.arange(0, self.hop, self.search_step)
        c = self.search_frames
        frames = (len(x) - int(offsets[-1])) // self.hop - 1  # the same frame count at every offset
        if frames < 1:
            return None
        size = 1 << math.ceil(math.log2(frames + 2 * c))
        padded = np.zeros((size, self._bins[1]), complex)
        padded[c: 2 * c + frames] = np.exp(-2j * np.pi * self._dither(0, frames + c) / self.step)
        dither_f = np.fft.fft(padded, axis=0)
        best, grid = None, np.arange(frames)[:, None] * self.hop + np.arange(self.n_fft)
        for chunk in np.array_split(offsets, max(1, len(offsets) * frames // 4096)):  # bounded memory
            spec = np.fft.rfft(x[chunk[:, None, None] + grid] * self._window(), axis=-1)  # (O, T, bins)
            lo, bands = self._bins
            band = spec[..., lo: lo + bands * self.band_bins]
            energy = (band.real ** 2 + band.imag ** 2).reshape(len(chunk), frames, bands, self.band_bins).sum(-1)
            weight = np.stack([self._weights(e) for e in energy])
            angle = (2 * np.pi / self.step) * np.log(energy + TINY)
            conj_phasor = (weight * np.cos(angle) - 1j * (weight * np.sin(angle))).transpose(0, 2, 1)  # (O, bands, T)
            spectra = np.fft.fft(conj_phasor, n=size, axis=-1)
            sums = np.fft.ifft(np.einsum("kb,obk->ok", dither_f, np.conj(spectra)), axis=1)[:, : 2 * c + 1]
            # sums[o, i]: the clip's frame t against the dither of frame t + i - c, over t and bands
            suffix = np.concatenate([np.cumsum(np.sum(weight ** 2, axis=2)[:, ::-1], axis=1)[:, ::-1],
                                     np.zeros((len(chunk), 1))], axis=1)
            kept = suffix[:, np.clip(c - np.arange(2 * c + 1), 0, frames)]  # shift -k leaves out the first k frames
            r2 = np.where(kept > 0, np.abs(sums) ** 2 / np.maximum(kept, 1e-300), 0.0)
            o, i = np.unravel_index(int(np.argmax(r2)), r2.shape)
            if best is None or r2[o, i] > best[0]:
                best = (float(r2[o, i]), int(np.count_nonzero(weight[o, max(0, c - i):])), int(chunk[o]), int(i - c))
        if best is None or best[1] == 0:
            return None
        r2, cells, offset, shift = best
        tries = len(offsets) * (2 * c + 1)
        removed = shift * self.hop - offset  # samples (at 8 kHz) cut from the start (negative: added)
        return {"z": math.sqrt(2 * r2), "p_value": min(1.0, 2 * tries * math.exp(-r2)), "cells": cells,
                "view": f"searched {tries} alignments: {abs(removed)} samples {'cut' if removed >= 0 else 'added'} "
                        "at the start (8 kHz)", "shift_samples": removed}


def _mono8(x: np.ndarray, rate: int) -> np.ndarray:
    x = np.asarray(x, np.float64)
    if x.ndim == 2:
        x = x.mean(axis=1)
    if x.ndim != 1:
        raise ValueError(f"expected a clip (L,) or (L, channels), got shape {x.shape}")
    return x if rate == MARK_RATE else _resample(x, rate, MARK_RATE)


def _resample(x: np.ndarray, rate: int, to: int) -> np.ndarray:
    import soxr

    return soxr.resample(np.asarray(x, np.float64), rate, to).astype(np.float64)


def signal_to_mark_db(original: np.ndarray, marked: np.ndarray) -> float:
    """10 log10(signal power / mark power) of a clip and its marked copy (for benchmarks and tests)."""
    original, marked = np.asarray(original, np.float64), np.asarray(marked, np.float64)
    mark = float(np.sum((marked - original) ** 2))
    return float("inf") if mark == 0 else 10 * math.log10(float(np.sum(original ** 2)) / mark)
