"""Output filters: post-processing between generation and the file. Each is optional and reported in the
output's provenance (`Record.filters`).

- `drop_copies`: drop samples closer to a training image than 99% of real held-out images are (the per-sample
  form of `genforge eval`'s memorization test, same evaluator features and threshold).
- `min_confidence`: drop samples the dataset's evaluator classifier is unsure of (its top probability, or for a
  conditional model the probability of the asked class, below the bound): a cheap quality screen.
- `resize`: enlarge for display with Lanczos; the keyed mark is applied after resizing, at the size written.

Dropped samples are replaced by drawing again (their labels kept) for at most `max_rounds`; if the rounds run
out, fewer images come back and the report says so: a filter never returns fewer samples than asked silently.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from genforge.errors import UserError


@dataclass
class Filters:
    drop_copies: bool = False
    min_confidence: float | None = None
    resize: int | None = None  # longer side in pixels
    max_rounds: int = 8

    def __post_init__(self):
        if self.min_confidence is not None and not 0 < self.min_confidence < 1:
            raise UserError(f"--min-confidence must be in (0, 1), e.g. 0.9; got {self.min_confidence}.")
        if self.resize is not None and not 8 <= self.resize <= 4096:
            raise UserError(f"--resize must be 8-4096 pixels; got {self.resize}.")

    @property
    def screens(self) -> bool:
        return self.drop_copies or self.min_confidence is not None

    @property
    def active(self) -> bool:
        return self.screens or self.resize is not None


def _label_list(model, labels, n: int) -> list | None:
    if labels is None:
        return [i % len(model.classes) for i in range(n)] if model.conditional else None
    if isinstance(labels, (list, tuple, np.ndarray)):
        if len(labels) != n:
            raise UserError(f"labels: give one label or one per image ({n}); got {len(labels)}.")
        return [model.label_index(x) for x in labels]
    return [model.label_index(labels)] * n


def generate_filtered(model, n: int, filters: Filters, seed: int | None = None, labels=None,
                      data_dir=None, progress=None, **options) -> tuple[np.ndarray, list[dict]]:
    """`model.generate(n, seed, labels, **options)` through `filters`: (uint8 images, the filters' reports for the
    provenance record). Marks (when the model has a key) are applied last, after any resize."""
    import torch

    from genforge.evaluation import evaluator_domain, load_evaluator
    from genforge.evaluation.metrics import nearest_neighbour_distances
    from genforge.evaluation.reference import memorization_threshold, reference_features

    key = model.mark_key
    model.use_mark_key(False)
    try:
        wanted = _label_list(model, labels, n)
        kept: list[np.ndarray | None] = [None] * n
        reports: list[dict] = []
        drops = {"copies": 0, "low_confidence": 0}
        generated, rounds = 0, 0
        if filters.screens:
            evaluator_name, train_split = evaluator_domain(model.meta["data"]["dataset"])
            evaluator = load_evaluator(evaluator_name, data_dir)
            threshold = memorization_threshold(evaluator, train_split) if filters.drop_copies else None
            train = reference_features(evaluator, train_split).features if filters.drop_copies else None
        pending = list(range(n))
        rng = np.random.default_rng(seed)
        while pending and rounds < filters.max_rounds:
            round_seed = seed if rounds == 0 else int(rng.integers(2**62))
            lab = [wanted[i] for i in pending] if wanted is not None else None
            images = model.generate(len(pending), seed=round_seed, labels=lab, progress=progress, **options)
            generated += len(images)
            ok = np.ones(len(images), bool)
            if filters.screens:
                feats, logits = evaluator.extract(images)
                if filters.drop_copies:
                    copy = (nearest_neighbour_distances(feats, train) < threshold).numpy()
                    drops["copies"] += int((copy & ok).sum())
                    ok &= ~copy
                if filters.min_confidence is not None:
                    probs = torch.softmax(logits, -1).numpy()
                    if lab is not None and len(evaluator.classes) == len(model.classes):
                        conf = probs[np.arange(len(images)), lab]
                    else:
                        conf = probs.max(-1)
                    low = conf < filters.min_confidence
                    drops["low_confidence"] += int((low & ok).sum())
                    ok &= ~low
            still = []
            for pos, img, good in zip(pending, images, ok):
                if good:
                    kept[pos] = img
                else:
                    still.append(pos)
            pending, rounds = still, rounds + 1
        out = np.stack([img for img in kept if img is not None]) if any(k is not None for k in kept) \
            else np.zeros((0, *model.image_shape), np.uint8)
        if filters.drop_copies:
            reports.append({"filter": "drop_copies", "threshold": round(float(threshold), 4),
                            "dropped": drops["copies"]})
        if filters.min_confidence is not None:
            reports.append({"filter": "min_confidence", "bound": filters.min_confidence,
                            "dropped": drops["low_confidence"]})
        if filters.screens:
            reports.append({"filter": "summary", "asked": n, "generated": generated, "returned": len(out),
                            "rounds": rounds})
        if filters.resize is not None and len(out):
            out = resize_images(out, filters.resize)
            reports.append({"filter": "resize", "method": "lanczos", "size": list(out.shape[1:3])})
    finally:
        model.use_mark_key(key if key is not None else False)
    if key is not None and len(out):
        from genforge.media.image_mark import ImageMark

        out = ImageMark(key).embed(out)
    return out, reports


def resize_images(images: np.ndarray, longer_side: int) -> np.ndarray:
    """uint8 (N, H, W, C) enlarged or reduced (Lanczos) so that the longer side is `longer_side` pixels."""
    n, h, w, c = images.shape
    scale = longer_side / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    out = []
    for img in images:
        pil = Image.fromarray(img[..., 0] if c == 1 else img).resize(size, Image.LANCZOS)
        arr = np.asarray(pil)
        out.append(arr[..., None] if arr.ndim == 2 else arr)
    return np.stack(out)
