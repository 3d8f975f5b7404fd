"""Audio as images: the encode side of the spectrogram codec, so GANs, VAEs and diffusion models train on clips
unchanged. A clip becomes a 1-channel uint8 image whose rows are frequencies (row 0 the lowest) and whose
columns are STFT frames; the per-frequency statistics that normalise it are fitted on the training split and
stored in the run, so that the test split and generation use the same ones.

uint8 is the image families' storage format; at 256 levels over +-3 standard deviations per frequency it
adds less error than Griffin-Lim removes (see tests/test_audio_codec.py for the measured round trip).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from genforge.audio.codec import SpectrogramCodec
from genforge.data.audio import load_audio_dataset
from genforge.data.dataset import ImageDataset


def codec_from_config(audio: dict) -> SpectrogramCodec:
    return SpectrogramCodec(sample_rate=int(audio["sample_rate"]), n_fft=int(audio["n_fft"]), hop=int(audio["hop"]),
                            frames=int(audio["length"]) // int(audio["hop"]))


def to_images(specs: np.ndarray) -> torch.Tensor:
    """(N, bins, frames) in [-1, 1] -> uint8 (N, bins, frames, 1), rounded as the image families quantise."""
    q = np.clip(np.rint((specs + 1.0) * 127.5), 0, 255).astype(np.uint8)
    return torch.from_numpy(q[..., None]).contiguous()


def load_spectrogram_dataset(name: str, audio: dict, data_dir: str | Path | None = None, split: str = "train",
                             stats: dict | None = None) -> tuple[ImageDataset, dict]:
    """The clips of `name` as spectrogram images, and the "data" metadata a run stores: the codec with its
    statistics (fitted here on this split when `stats` is None), the clips' speakers, rate and licence."""
    clips = load_audio_dataset(name, data_dir=data_dir, split=split, sample_rate=int(audio["sample_rate"]),
                               length=int(audio["length"]))
    codec = codec_from_config(audio)
    if stats is None:
        stats = codec.fit_stats(codec.log_magnitude(clips.clips))
    images = to_images(codec.encode(clips.clips, stats))
    dataset = ImageDataset(clips.name, images, torch.as_tensor(clips.labels, dtype=torch.long), list(clips.classes),
                           dict(clips.report))
    meta = {"codec": {"kind": "spectrogram", **codec.to_dict(), "length": codec.length, "stats": stats},
            "sample_rate": codec.sample_rate, "license": clips.license}
    return dataset, meta
