"""The Fréchet distance of generated clips as a training-curve metric, for image families trained on spectrograms:
what TrainingFID is for images (`train.eval_every`, `genforge tune`), in the spoken-digit evaluator's features.

The network renders spectrogram images; they are decoded through the run's codec (its statistics are fitted on
the same training clips the run fits them on, so they are equal) and scored against the real test clips, on the
same scale as `genforge eval`'s fid for audio runs."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import torch

from genforge.evaluation.audio_classifier import load_audio_evaluator
from genforge.evaluation.audio_metrics import clip_reference
from genforge.evaluation.metrics import FrechetDistance


class TrainingAudioFD:
    """FD of `n` fresh clips (decoded with 16 Griffin-Lim iterations, half of generation's, to keep evaluation
    cheap) against the real test split. Every call draws from the same seed."""

    def __init__(self, dataset: str, audio: dict, data_dir: str | Path | None = None, n: int = 500, seed: int = 0,
                 evaluator_root: str | Path | None = None, progress: bool = False, iters: int = 16):
        from genforge.data.spectrograms import codec_from_config, load_spectrogram_dataset

        self.n, self.seed, self.iters = n, seed, iters
        self.evaluator = load_audio_evaluator(dataset, data_dir, root=evaluator_root, progress=progress)
        self._fd = FrechetDistance(clip_reference(self.evaluator, "test").features)
        _, meta = load_spectrogram_dataset(dataset, audio, data_dir=data_dir, split="train")
        self.codec, self.stats = codec_from_config(audio), meta["codec"]["stats"]

    @torch.no_grad()
    def __call__(self, generate: Callable[[int, torch.Generator], torch.Tensor]) -> float:
        """generate(m, rng) -> m spectrogram images, float (m, 1, bins, frames) in [-1, 1] or uint8 (m, bins, frames, 1)."""
        rng = torch.Generator().manual_seed(self.seed)
        feats = []
        for start in range(0, self.n, 100):
            x = generate(min(100, self.n - start), rng)
            if x.dtype == torch.uint8:
                specs = x[..., 0].float().numpy() / 127.5 - 1.0
            else:  # as the generator stores them: rounded to the uint8 levels the model was trained on
                specs = np.rint((x[:, 0].float().clamp(-1, 1).cpu().numpy() + 1.0) * 127.5) / 127.5 - 1.0
            clips = self.codec.decode(specs.astype(np.float32), self.stats, iters=self.iters, seed=0)
            feats.append(self.evaluator.extract(clips, self.codec.sample_rate)[0])
        return self._fd(torch.cat(feats))


def training_evaluator(cfg, data_dir=None, progress: bool = False):
    """The in-training score of a run whose family does not score itself: FD of clips for audio data, the per-clip
    FD for video, FID of images otherwise."""
    from genforge.data.audio import is_audio_dataset
    from genforge.data.video import is_video_dataset

    if is_video_dataset(cfg.data.dataset):
        from genforge.evaluation.training_video import TrainingVideoFD

        return TrainingVideoFD(cfg.data.dataset, cfg.data.video.model_dump(), data_dir, n=min(cfg.train.eval_samples, 512),
                               seed=cfg.train.seed, progress=progress)

    if is_audio_dataset(cfg.data.dataset):
        return TrainingAudioFD(cfg.data.dataset, cfg.data.audio.model_dump(), data_dir, n=cfg.train.eval_samples,
                               seed=cfg.train.seed, progress=progress)
    from genforge.evaluation.training_fid import TrainingFID

    return TrainingFID(cfg.data.dataset, data_dir, n=cfg.train.eval_samples, seed=cfg.train.seed, progress=progress)
