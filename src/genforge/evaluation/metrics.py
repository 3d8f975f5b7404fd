"""Sample-quality metrics on feature vectors.

FID, KID and IS are torchmetrics' implementations. Features are extracted once per image set by the
evaluator and handed to torchmetrics through an identity `feature` module, so the cached real
features and the generated features are computed once and shared by every metric here.

Written here because torchmetrics has no equivalent: k-nearest-neighbour precision / recall
(Kynkäänniemi et al. 2019) and density / coverage (Naeem et al. 2020), the class-histogram
statistics, and the nearest-training-image copy detector used for memorization. Distances are
Euclidean in feature space, computed with torch.cdist in row chunks so memory stays bounded.
"""

from __future__ import annotations

import contextlib
import math
import warnings

import torch
from torch import nn

_CHUNK_ELEMENTS = 1 << 24  # distance-matrix entries per chunk: 64 MB of float32


class Precomputed(nn.Module):
    """Identity `feature` module: torchmetrics receives feature vectors the evaluator already computed."""

    def __init__(self, num_features: int):
        super().__init__()
        self.num_features = num_features  # torchmetrics reads this instead of probing with a dummy image

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def _rows_per_chunk(n_cols: int) -> int:
    return max(1, _CHUNK_ELEMENTS // max(n_cols, 1))


def _as_float(x: torch.Tensor) -> torch.Tensor:
    return x.detach().to("cpu", torch.float32)


def nearest_neighbour_distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """For each row of `a`, the distance to its nearest row of `b`."""
    a, b = _as_float(a), _as_float(b)
    step = _rows_per_chunk(len(b))
    return torch.cat([torch.cdist(a[i:i + step], b).min(dim=1).values for i in range(0, len(a), step)])


def knn_radii(x: torch.Tensor, k: int) -> torch.Tensor:
    """Distance from each row of `x` to its k-th nearest other row (the row itself excluded)."""
    x = _as_float(x)
    if len(x) <= k:
        raise ValueError(f"need more than k={k} points for k-NN radii, got {len(x)}")
    step = _rows_per_chunk(len(x))
    out = []
    for i in range(0, len(x), step):
        d = torch.cdist(x[i:i + step], x)
        rows = torch.arange(len(d))
        d[rows, rows + i] = math.inf
        out.append(d.topk(k, dim=1, largest=False).values[:, -1])
    return torch.cat(out)


def prdc(real: torch.Tensor, fake: torch.Tensor, k: int = 5) -> dict[str, float]:
    """Precision, recall (Kynkäänniemi et al. 2019), density and coverage (Naeem et al. 2020).

    Each real point owns a ball reaching its k-th nearest real neighbour (and each fake point one to
    its k-th nearest fake neighbour). precision: share of fakes inside some real ball. recall: share
    of reals inside some fake ball. density: fakes-in-real-balls counted with multiplicity, / (k * M).
    coverage: share of real balls that hold at least one fake. Strict "<", as the reference code.
    """
    real, fake = _as_float(real), _as_float(fake)
    r_real, r_fake = knn_radii(real, k), knn_radii(fake, k)
    in_real_ball = torch.zeros(len(fake), dtype=torch.bool)
    inside_count = 0
    real_recalled = torch.zeros(len(real), dtype=torch.bool)
    real_nearest_fake = torch.full((len(real),), math.inf)
    step = _rows_per_chunk(len(real))
    for i in range(0, len(fake), step):
        d = torch.cdist(fake[i:i + step], real)  # (fakes, reals)
        hits = d < r_real[None, :]
        in_real_ball[i:i + step] = hits.any(dim=1)
        inside_count += int(hits.sum())
        real_recalled |= (d < r_fake[i:i + step, None]).any(dim=0)
        real_nearest_fake = torch.minimum(real_nearest_fake, d.min(dim=0).values)
    return {
        "precision": float(in_real_ball.float().mean()),
        "recall": float(real_recalled.float().mean()),
        "density": inside_count / (k * len(fake)),
        "coverage": float((real_nearest_fake < r_real).float().mean()),
    }


@contextlib.contextmanager
def _one_thread():
    """KID and IS run hundreds of tiny ops (1000x1000 kernels): a second thread only adds a barrier per
    op, which costs ~100x the op itself when other processes share the cores (measured: 14 s vs 0.1 s)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def _quiet(factory):
    with warnings.catch_warnings():  # "will save all extracted features in buffer": that is the intent here
        warnings.simplefilter("ignore", UserWarning)
        return factory()


class FrechetDistance:
    """torchmetrics' FID with the real statistics accumulated once; call it with fake features.

    Used by `fid` and by TrainingFID, which compares many sample sets against the same reference.
    """

    def __init__(self, real: torch.Tensor):
        from torchmetrics.image.fid import FrechetInceptionDistance

        real = _as_float(real)
        self.metric = FrechetInceptionDistance(feature=Precomputed(real.shape[1]), reset_real_features=False,
                                               sync_on_compute=False)
        self.metric.update(real, real=True)

    def __call__(self, fake: torch.Tensor) -> float:
        self.metric.reset()
        self.metric.update(_as_float(fake), real=False)
        return float(self.metric.compute())


def fid(real: torch.Tensor, fake: torch.Tensor) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (torchmetrics)."""
    return FrechetDistance(real)(fake)


def kid(real: torch.Tensor, fake: torch.Tensor, subsets: int = 100, subset_size: int = 1000,
        seed: int = 0) -> tuple[float, float]:
    """Kernel Inception Distance (torchmetrics): mean and std over random subsets, drawn from `seed`."""
    from torchmetrics.image.kid import KernelInceptionDistance

    real, fake = _as_float(real), _as_float(fake)
    size = min(subset_size, len(real), len(fake))
    metric = _quiet(lambda: KernelInceptionDistance(feature=Precomputed(real.shape[1]), subsets=subsets,
                                                    subset_size=size, sync_on_compute=False))
    metric.update(real, real=True)
    metric.update(fake, real=False)
    with torch.random.fork_rng(devices=[]), _one_thread():  # torchmetrics draws subsets from the global RNG
        torch.manual_seed(seed)
        mean, std = metric.compute()
    return float(mean), float(std)


def inception_score(logits: torch.Tensor, splits: int = 10, seed: int = 0) -> tuple[float, float]:
    """Inception Score (torchmetrics) from class logits: exp E[KL(p(y|x) || p(y))], mean and std over splits."""
    from torchmetrics.image.inception import InceptionScore

    logits = _as_float(logits)
    metric = _quiet(lambda: InceptionScore(feature=Precomputed(logits.shape[1]), splits=splits, sync_on_compute=False))
    metric.update(logits)
    with torch.random.fork_rng(devices=[]), _one_thread():
        torch.manual_seed(seed)
        mean, std = metric.compute()
    return float(mean), float(std)


def class_statistics(logits: torch.Tensor, requested: torch.Tensor | None = None) -> dict:
    """What the evaluator thinks the samples are.

    class_counts: predicted-class histogram. classes_hit: classes that receive at least a tenth of
    their uniform share (so a few stray misclassifications do not count as covering a mode).
    class_entropy: entropy of the histogram / log(classes); 1 = perfectly even, 0 = one class only.
    conditional_accuracy (when `requested` labels are given): share classified as the requested class.
    """
    logits = _as_float(logits)
    n, c = logits.shape
    pred = logits.argmax(dim=1)
    counts = torch.bincount(pred, minlength=c)
    p = counts.double() / max(n, 1)
    nz = p[p > 0]
    out = {
        "class_counts": counts.tolist(),
        "classes_hit": int((counts >= 0.1 * n / c).sum()),
        "class_entropy": max(0.0, float(-(nz * nz.log()).sum() / math.log(c))) if c > 1 else 1.0,
    }
    if requested is not None:
        out["conditional_accuracy"] = float((pred == torch.as_tensor(requested).cpu()).float().mean())
    return out


def memorization(fake: torch.Tensor, train: torch.Tensor, threshold: float) -> dict[str, float]:
    """Share of samples whose nearest training image is closer than `threshold` (a copy detector)."""
    d = nearest_neighbour_distances(fake, train)
    return {"memorization": float((d < threshold).float().mean()), "nearest_train_median": float(d.median())}
