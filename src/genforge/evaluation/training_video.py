"""The per-clip Fréchet distance as a training-curve metric for video runs: what TrainingFID is for images
(`train.eval_every`, best-weights selection, `genforge tune`), in the Moving-MNIST evaluator's features and on the
same scale as `genforge eval`'s clip_fd."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import torch

from genforge.errors import UserError


class TrainingVideoFD:
    """clip_fd of `n` fresh clips against the real test clips; every call draws from the same seed."""

    def __init__(self, dataset: str, opts: dict, data_dir: str | Path | None = None, n: int = 256, seed: int = 0,
                 evaluator_root: str | Path | None = None, progress: bool = False):
        from genforge.data.video import is_moving_mnist
        from genforge.evaluation.video_evaluator import load_video_evaluator

        if not is_moving_mnist(dataset):
            raise UserError(f"In-training evaluation of clips (train.eval_every, genforge tune) needs moving-mnist, whose "
                            f"evaluator genforge trains; {dataset} has none. Fix: set train.eval_every to null.")
        self.opts, self.n, self.seed = opts, n, seed
        self.evaluator = load_video_evaluator(opts, data_dir, root=evaluator_root, progress=progress)

    @torch.no_grad()
    def __call__(self, generate: Callable[[int, torch.Generator], torch.Tensor]) -> float:
        """generate(m, rng) -> m clips, float (m, T, C, H, W) in [-1, 1]."""
        from genforge.evaluation.video_metrics import evaluate_video_clips
        from genforge.methods.clips import clips_from_model_range

        rng = torch.Generator().manual_seed(self.seed)
        clips = np.concatenate([clips_from_model_range(generate(min(64, self.n - s), rng)) for s in range(0, self.n, 64)])
        return float(evaluate_video_clips(clips, self.evaluator, self.opts, floor=False)["metrics"]["clip_fd"])
