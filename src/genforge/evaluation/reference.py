"""Cached evaluator features of real data, and the memorization threshold derived from them.

Extracting features of 60,000 training images takes a while on a CPU, and every evaluation needs
them, so they are stored once per (evaluator, split) as `features-<split>.safetensors` next to the
evaluator. The file records the weights hash it was computed with; a retrained evaluator recomputes.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import torch

from genforge.data import load_image_dataset
from genforge.data.registry import check_split
from genforge.evaluation.evaluator import Evaluator
from genforge.evaluation.feature_cache import _path, read_reference, store_reference  # noqa: F401 (re-exported)
from genforge.evaluation.metrics import nearest_neighbour_distances

MEMORIZATION_FILE = "memorization.json"
MEMORIZATION_PERCENTILE = 1.0
HELDOUT_CAP = 10_000


@dataclass
class Reference:
    """Features, logits and labels of one split of the evaluator's dataset."""

    split: str
    features: torch.Tensor
    logits: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.features)


def reference_features(evaluator: Evaluator, split: str, progress: bool = False, batch_size: int = 500) -> Reference:
    """Evaluator features of the real `split` ("train" or "test"), from the cache or computed and cached."""
    check_split(split)
    if split in evaluator._cache:
        return evaluator._cache[split]
    sha = evaluator.config["weights_sha256"]
    path = _path(evaluator.directory, split)
    data = read_reference(path, sha) if path.exists() else None
    if data is None:
        ds = load_image_dataset(evaluator.dataset, evaluator.data_dir, split)
        feats, logits = evaluator.extract(ds.images, batch_size, progress, f"features of real {evaluator.dataset} {split}")
        data = {"features": feats, "logits": logits, "labels": ds.labels}
        store_reference(evaluator.directory, split, feats, logits, ds.labels, sha)
    ref = Reference(split, data["features"], data["logits"], data["labels"])
    evaluator._cache[split] = ref
    return ref


def memorization_threshold(evaluator: Evaluator, train_split: str = "train", progress: bool = False) -> float:
    """Distance below which a sample counts as a copy of a training image (in evaluator feature space).

    It is the 1st percentile of the nearest-training-image distances of held-out real images (the
    other split, at most 10,000 of them): only 1% of genuinely new real images come that close to a
    training image, while a copy sits at distance ~0. Cached in memorization.json per training split.
    """
    heldout_split = "test" if train_split == "train" else "train"
    sha = evaluator.config["weights_sha256"]
    path = evaluator.directory / MEMORIZATION_FILE
    try:
        cached = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        cached = {}
    if cached.get("weights_sha256") != sha:
        cached = {"weights_sha256": sha, "percentile": MEMORIZATION_PERCENTILE, "by_train_split": {}}
    entry = cached["by_train_split"].get(train_split)
    if entry is not None:
        return float(entry["threshold"])
    train = reference_features(evaluator, train_split, progress)
    heldout = reference_features(evaluator, heldout_split, progress).features
    if len(heldout) > HELDOUT_CAP:
        heldout = heldout[torch.randperm(len(heldout), generator=torch.Generator().manual_seed(0))[:HELDOUT_CAP]]
    d = nearest_neighbour_distances(heldout, train.features)
    threshold = float(torch.quantile(d.double(), MEMORIZATION_PERCENTILE / 100))
    cached["by_train_split"][train_split] = {"threshold": threshold, "heldout_split": heldout_split,
                                             "heldout_n": len(heldout), "train_n": len(train),
                                             "heldout_nn_median": float(d.median())}
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps(cached, indent=2) + "\n")
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)
    return threshold
