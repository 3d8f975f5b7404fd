"""The spoken-digit evaluator's network (see audio_classifier.py for what it is for): the log-mel front end, the
recipe, the CNN with its digit and speaker heads, and the training augmentation.

Why these choices:
- log-mel input: the mel filterbank is written here (numpy), with no audio library. 64 mels over 0-4 kHz from
  a 512-point FFT of 32 ms Hann windows (zero-padded), hop 16 ms: a 512-point FFT spaces bins 15.6 Hz apart,
  so even the narrowest low-frequency mel triangle (~41 Hz wide) covers two bins and no filter is empty.
- 32 features: the Fréchet distance fits a covariance to them from the 300 FSDD test clips. By the
  Marchenko-Pastur law, a sample covariance of d dims from N samples spreads true-equal eigenvalues over
  (1 +- sqrt(d/N))^2: for d=32, N=300 that is 0.45-1.76x; 64 dims would give 0.29-2.1x, 128 dims 0.12-2.7x.
  32 is still ample for 10 digits x 6 speakers (the heads read only these features).
- augmentation (a time shift, gain, white noise, mu-law rounding) so that generated clips (Griffin-Lim phase,
  WaveNet's 8-bit output, a little offset or level change) are judged by what is said, not by artefacts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from genforge.evaluation.evaluator_net import EvaluatorNet, _FusedEvaluator


def hz_to_mel(f):
    """HTK mel scale: 2595 log10(1 + f / 700)."""
    return 2595.0 * np.log10(1.0 + np.asarray(f, dtype=np.float64) / 700.0)


def mel_to_hz(m):
    return 700.0 * (10.0 ** (np.asarray(m, dtype=np.float64) / 2595.0) - 1.0)


def mel_filterbank(n_mels: int, n_fft: int, sample_rate: int, fmin: float = 0.0, fmax: float | None = None) -> np.ndarray:
    """(n_mels, n_fft // 2 + 1) float32 triangular filters, peak 1, centres evenly spaced in mel from fmin to fmax.

    Filter i rises linearly from centre i-1 to centre i and falls to centre i+1 (in Hz, on the FFT bin
    frequencies). Raises ValueError when a filter would catch no bin (too many mels for the FFT's resolution).
    """
    fmax = sample_rate / 2 if fmax is None else fmax
    if not 0 <= fmin < fmax <= sample_rate / 2:
        raise ValueError(f"need 0 <= fmin < fmax <= sample_rate / 2, got fmin={fmin}, fmax={fmax}, rate {sample_rate}")
    edges = mel_to_hz(np.linspace(hz_to_mel(fmin), hz_to_mel(fmax), n_mels + 2))  # n_mels centres + two ends
    bins = np.arange(n_fft // 2 + 1) * sample_rate / n_fft
    lo, centre, hi = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (bins[None, :] - lo) / (centre - lo)
    falling = (hi - bins[None, :]) / (hi - centre)
    bank = np.clip(np.minimum(rising, falling), 0.0, None)
    empty = np.flatnonzero(bank.max(axis=1) <= 0)
    if len(empty):
        raise ValueError(f"mel filters {empty[:5].tolist()} catch no FFT bin: use a larger n_fft or fewer mels")
    return bank.astype(np.float32)


@dataclass(frozen=True)
class AudioRecipe:
    """Front end, network and training schedule of the spoken-digit evaluator.

    Front end: STFT of `win`-sample Hann windows every `hop` samples, zero-padded to `n_fft`; power / window
    energy, through `n_mels` mel filters, log(. + 1e-6); then per-mel standardisation by training-set statistics.
    Network: EvaluatorNet's conv stages (`widths`, each `convs_per_stage` conv-BN-ReLU and a 2x max pool) ->
    Linear-BN-ReLU to `feature_dim` features -> a digit head and a speaker head. Loss: digit cross-entropy +
    `speaker_weight` x speaker cross-entropy, both label-smoothed; AdamW under a one-cycle schedule.
    Augmentation per clip: a shift by up to `max_shift` samples either way (zeros fill; FSDD's clips are centred
    with ~0.1-0.6 s of silence on each side, so speech is rarely cut), a gain in `gain_db`, with probability `noise_p` white noise at an SNR drawn from
    `snr_db`, with probability `mulaw_p` rounding to 8-bit mu-law (what a WaveNet outputs).
    """

    sample_rate: int = 8000
    length: int = 8192
    n_fft: int = 512
    win: int = 256
    hop: int = 128
    n_mels: int = 64
    widths: tuple[int, ...] = (24, 48, 96)
    convs_per_stage: int = 1
    feature_dim: int = 32
    epochs: float = 10
    batch_size: int = 64
    max_lr: float = 3e-3
    weight_decay: float = 0.05
    label_smoothing: float = 0.1
    speaker_weight: float = 0.5
    max_shift: int = 1000
    gain_db: tuple[float, float] = (-12.0, 6.0)
    noise_p: float = 0.5
    snr_db: tuple[float, float] = (15.0, 40.0)
    mulaw_p: float = 0.25

    @property
    def frames(self) -> int:
        return self.length // self.hop + 1  # centred frames

    def frontend(self) -> dict:
        return {"sample_rate": self.sample_rate, "length": self.length, "n_fft": self.n_fft, "win": self.win,
                "hop": self.hop, "n_mels": self.n_mels}

    def arch(self) -> dict:
        return {"widths": list(self.widths), "convs_per_stage": self.convs_per_stage, "feature_dim": self.feature_dim}


AUDIO_RECIPES = {"fsdd": AudioRecipe()}


class LogMel(nn.Module):
    """(N, L) waveforms -> (N, 1, n_mels, frames) standardised log-mel power (see AudioRecipe)."""

    def __init__(self, sample_rate: int, n_fft: int, win: int, hop: int, n_mels: int, **_):
        super().__init__()
        self.n_fft, self.win, self.hop = n_fft, win, hop
        window = torch.hann_window(win, periodic=True, dtype=torch.float64)
        # not stored in the weights: rebuilt from the config, so the file holds only what training learned
        self.register_buffer("window", window.float(), persistent=False)
        self.register_buffer("mel", torch.from_numpy(mel_filterbank(n_mels, n_fft, sample_rate)), persistent=False)
        self.register_buffer("scale", torch.tensor(1.0 / float(window.sum()) ** 2), persistent=False)
        self.register_buffer("mean", torch.zeros(n_mels, 1))
        self.register_buffer("std", torch.ones(n_mels, 1))

    def log_mel(self, x: torch.Tensor) -> torch.Tensor:
        spec = torch.stft(x.float(), self.n_fft, self.hop, self.win, self.window, center=True, pad_mode="constant",
                          return_complex=True)
        power = spec.real.square() + spec.imag.square()
        return torch.log(torch.matmul(self.mel, power) * self.scale + 1e-6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ((self.log_mel(x) - self.mean) / self.std).unsqueeze(1)


class AudioEvaluatorNet(nn.Module):
    """LogMel -> EvaluatorNet's conv body and feature layer -> digit head (its `head`) and `speaker_head`."""

    def __init__(self, frontend: dict, arch: dict, num_classes: int, num_speakers: int):
        super().__init__()
        self.frontend = LogMel(**frontend)
        frames = frontend["length"] // frontend["hop"] + 1
        self.cnn = EvaluatorNet(1, frontend["n_mels"], frames, num_classes, tuple(arch["widths"]),
                                arch["convs_per_stage"], arch["feature_dim"])
        self.speaker_head = nn.Linear(arch["feature_dim"], max(num_speakers, 1))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        f = self.cnn.features(self.frontend(x))
        return f, self.cnn.head(f), self.speaker_head(f)


class _FusedAudioNet(nn.Module):
    """Inference copy: the conv body with BatchNorm folded in (evaluator._FusedEvaluator), same outputs."""

    def __init__(self, net: AudioEvaluatorNet):
        super().__init__()
        net = net.eval()
        self.frontend, self.cnn, self.speaker_head = net.frontend, _FusedEvaluator(net.cnn), net.speaker_head

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        f, logits = self.cnn(self.frontend(x))
        return f, logits, self.speaker_head(f)


def augment_clips(x: torch.Tensor, r: AudioRecipe, g: torch.Generator) -> torch.Tensor:
    """A randomly shifted, scaled, noised, mu-law-rounded copy of the (N, L) batch (see AudioRecipe); seeded by g."""
    n, length = x.shape
    shift = torch.randint(-r.max_shift, r.max_shift + 1, (n,), generator=g)
    idx = torch.arange(length)[None, :] - shift[:, None]  # out[t] = x[t - shift]
    x = torch.where((idx >= 0) & (idx < length), x.gather(1, idx.clamp(0, length - 1)), torch.zeros(()))
    gain_db = torch.empty(n, 1).uniform_(*r.gain_db, generator=g)
    x = (x * 10 ** (gain_db / 20)).clamp(-1, 1)
    rms = x.square().mean(1, keepdim=True).sqrt().clamp_min(1e-4)
    snr = torch.empty(n, 1).uniform_(*r.snr_db, generator=g)
    noisy = torch.rand(n, 1, generator=g) < r.noise_p
    x = x + noisy * torch.randn(n, length, generator=g) * rms * 10 ** (-snr / 20)
    mu = 255.0  # 8-bit mu-law: compand, round to 256 levels, expand
    y = torch.sign(x) * torch.log1p(mu * x.abs().clamp(max=1)) / math.log1p(mu)
    y = torch.round((y + 1) / 2 * mu) / mu * 2 - 1
    y = torch.sign(y) * ((1 + mu) ** y.abs() - 1) / mu
    return torch.where(torch.rand(n, 1, generator=g) < r.mulaw_p, y, x).clamp(-1, 1)
