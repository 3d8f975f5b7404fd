"""FID as a training-curve metric: cheap enough to call every few thousand steps."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch

from genforge.evaluation.evaluator import load_evaluator
from genforge.evaluation.metrics import FrechetDistance
from genforge.evaluation.reference import reference_features


class TrainingFID:
    """FID of `n` fresh samples against the real test split, in the evaluator's feature space.

    Construction loads the evaluator (training it on first use) and fits the real statistics once;
    each call then costs n generations plus one cheap feature pass. Every call draws its noise from
    the same seed, so successive values differ only because the model changed. The values are on
    the same scale as `genforge eval`'s FID, though n=2,000 reads a little higher than n=10,000
    (FID is biased upwards for small n).
    """

    def __init__(self, dataset: str, data_dir: str | Path | None = None, n: int = 2000, seed: int = 0,
                 device: str | torch.device = "cpu", reference: str = "test", batch_size: int = 500,
                 evaluator_root: str | Path | None = None, progress: bool = False):
        self.n, self.seed, self.batch_size = n, seed, batch_size
        self.evaluator = load_evaluator(dataset, data_dir, root=evaluator_root, device=device, progress=progress)
        self._fid = FrechetDistance(reference_features(self.evaluator, reference, progress).features)

    @torch.no_grad()
    def __call__(self, generate: Callable[[int, torch.Generator], torch.Tensor]) -> float:
        """generate(m, rng) -> m images, uint8 (m, H, W, C) or float (m, C, H, W) in [-1, 1].

        It is called in batches of at most `batch_size` with one generator seeded from `seed`.
        """
        rng = torch.Generator().manual_seed(self.seed)
        feats = []
        for start in range(0, self.n, self.batch_size):
            m = min(self.batch_size, self.n - start)
            f, _ = self.evaluator.extract(generate(m, rng), batch_size=self.batch_size)
            feats.append(f)
        return self._fid(torch.cat(feats))
