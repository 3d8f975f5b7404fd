"""Scores of generated speech for `genforge eval`, through the spoken-digit evaluator (audio_classifier.py).

The same metrics as images, from the same helpers (metrics.py: torchmetrics' Fréchet distance, KID and IS on
precomputed features, k-NN precision/recall, the class histogram, the nearest-training-item copy detector):

- fid, kid: the evaluator's 32 features of the generated clips against the 300 real FSDD test clips;
  KID's subsets are half the smaller set (all of it would make every subset the same and its std 0);
- is: from the digit head, in n // 100 splits (1..10) so each split's marginal sees ~100 clips (is_std
  None for one split);
- precision, recall, density, coverage (k = 5) against the test clips;
- conditional_accuracy: share of clips the digit head hears as the digit asked for (conditional runs);
- classes_hit, class_entropy: the predicted-digit histogram;
- speaker_entropy: entropy of the predicted-speaker histogram / log(speakers): 1 = every voice equally, 0 = one
  voice; speakers_hit: speakers receiving at least a tenth of their even share;
- memorization: share of clips whose nearest training clip (in feature space) is closer than the 1st percentile
  of the real test clips' nearest-training-clip distances (reference.py's rule for images).

The floor is the same numbers for real data, following the image evaluator's convention that real held-out
data stands in for the samples: the real test clips are scored as if generated (conditional accuracy = the
evaluator's test accuracy, memorization ~1% by the threshold's definition), their FID/KID/PRDC taken against
as many training clips as clips were generated (drawn with the same digits), so both sides compare sets of
the same sizes and share the finite-sample bias.
"""

from __future__ import annotations

import contextlib
import os
import time
import warnings
from dataclasses import dataclass

import numpy as np
import torch

from genforge.errors import UserError
from genforge.evaluation.audio_classifier import AudioEvaluator, load_audio_evaluator, store_clip_reference
from genforge.evaluation.feature_cache import _path, read_reference
from genforge.evaluation.metrics import (class_statistics, fid, inception_score, kid, memorization,
                                         nearest_neighbour_distances, prdc)

MEMORIZATION_PERCENTILE = 1.0  # as reference.py for images
DEFAULT_N = 300  # 30 clips per digit: as many as the real test clips, so the floor has the same set sizes


@dataclass
class ClipReference:
    """The evaluator's outputs for one split of its dataset."""

    split: str
    features: torch.Tensor
    digit_logits: torch.Tensor
    speaker_logits: torch.Tensor
    labels: torch.Tensor
    speakers: torch.Tensor  # -1 where unknown

    def __len__(self) -> int:
        return len(self.features)


def clip_reference(evaluator: AudioEvaluator, split: str, progress: bool = False, batch_size: int = 500) -> ClipReference:
    """Evaluator outputs of the real `split` ("train" or "test"): cached beside the evaluator, computed once."""
    if split not in ("train", "test"):
        raise UserError(f"Unknown split '{split}'. Fix: use 'train' or 'test'.")
    if split in evaluator._cache:
        return evaluator._cache[split]
    sha = evaluator.config["weights_sha256"]
    data = read_reference(_path(evaluator.directory, split), sha)
    if data is None:
        from genforge.data.audio import load_audio_dataset

        ds = load_audio_dataset(evaluator.dataset, evaluator.data_dir, split=split, sample_rate=evaluator.sample_rate,
                                length=evaluator.length)
        feats, digit, speaker = evaluator.extract(ds.clips, batch_size=batch_size, progress=progress,
                                                  description=f"features of real {evaluator.dataset} {split}")
        labels = torch.as_tensor(np.asarray(ds.labels), dtype=torch.long)
        speakers = None if ds.speakers is None else torch.as_tensor(np.asarray(ds.speakers), dtype=torch.long)
        store_clip_reference(evaluator.directory, split, feats, digit, speaker, labels, speakers, sha)
        data = {"features": feats, "logits": torch.cat([digit, speaker], 1),
                "labels": torch.stack([labels, torch.full_like(labels, -1) if speakers is None else speakers], 1)}
    c = evaluator.num_classes
    ref = ClipReference(split, data["features"], data["logits"][:, :c], data["logits"][:, c:],
                        data["labels"][:, 0], data["labels"][:, 1])
    evaluator._cache[split] = ref
    return ref


def memorization_threshold(test_features: torch.Tensor, train_features: torch.Tensor) -> float:
    """The 1st percentile of real test clips' distances to their nearest training clip: a clip closer than this
    to a training clip is nearer than 99% of genuinely new recordings come (reference.py, for images)."""
    d = nearest_neighbour_distances(test_features, train_features)
    return float(torch.quantile(d.double(), MEMORIZATION_PERCENTILE / 100))


def speaker_statistics(speaker_logits: torch.Tensor) -> dict:
    """speaker_counts, speakers_hit, speaker_entropy: class_statistics of the speaker head."""
    s = class_statistics(speaker_logits)
    return {"speaker_counts": s["class_counts"], "speakers_hit": s["classes_hit"], "speaker_entropy": s["class_entropy"]}


def score_features(features: torch.Tensor, digit_logits: torch.Tensor, speaker_logits: torch.Tensor,
                   reference: torch.Tensor, train: torch.Tensor, threshold: float, requested=None,
                   seed: int = 0, k: int = 5) -> dict:
    """Every audio metric for one set of evaluator outputs, against `reference` features (FID, KID, PRDC) and
    `train` features (memorization at `threshold`): {"metrics": {...}, "details": {...}}."""
    n = len(features)
    if n <= 2 * k or len(reference) <= k:
        raise UserError(f"{n} clips against {len(reference)} reference clips are too few to measure anything; "
                        f"use at least {2 * k + 1}.")
    requested = None if requested is None else torch.as_tensor(np.asarray(requested), dtype=torch.long).reshape(-1)
    if requested is not None and len(requested) != n:
        raise UserError(f"Got {len(requested)} labels for {n} clips: give one requested digit per clip.")
    kid_size = max(2, min(n, len(reference)) // 2)
    kid_mean, kid_std = kid(reference, features, subset_size=kid_size, seed=seed)
    splits = min(10, max(1, n // 100))
    with warnings.catch_warnings():  # one split has no spread: its std is reported as None
        warnings.simplefilter("ignore", UserWarning)
        is_mean, is_std = inception_score(digit_logits, splits=splits, seed=seed)
    is_std = is_std if splits > 1 else None
    classes = class_statistics(digit_logits, requested)
    voices = speaker_statistics(speaker_logits)
    mem = memorization(features, train, threshold)
    metrics = {"fid": fid(reference, features), "kid": kid_mean, "is": is_mean, **prdc(reference, features, k)}
    if requested is not None:
        metrics["conditional_accuracy"] = classes["conditional_accuracy"]
    metrics.update(classes_hit=classes["classes_hit"], class_entropy=classes["class_entropy"],
                   speaker_entropy=voices["speaker_entropy"], speakers_hit=voices["speakers_hit"],
                   memorization=mem["memorization"])
    details = {"n": n, "reference_n": len(reference), "kid_std": kid_std, "kid_subset_size": kid_size,
               "is_std": is_std, "is_splits": splits, "k": k, "class_counts": classes["class_counts"],
               "speaker_counts": voices["speaker_counts"], "memorization_threshold": threshold,
               "train_n": len(train), "nearest_train_median": mem["nearest_train_median"]}
    return {"metrics": metrics, "details": details}


def _named(result: dict, evaluator: AudioEvaluator) -> dict:
    d = result["details"]
    d["class_counts"] = dict(zip(evaluator.classes, d["class_counts"]))
    d["speaker_counts"] = dict(zip(evaluator.speakers, d["speaker_counts"]))
    return result


def stratified_subset(labels: torch.Tensor, wanted, n: int, seed: int) -> torch.Tensor:
    """Indices of n distinct items of `labels`, as many of each class as `wanted` (the requested digits) holds, or
    a plain random draw when `wanted` is None; seeded."""
    g = torch.Generator().manual_seed(seed)
    if wanted is None:
        return torch.randperm(len(labels), generator=g)[:n]
    wanted = torch.as_tensor(np.asarray(wanted), dtype=torch.long).reshape(-1)
    picks = []
    for c in torch.unique(wanted).tolist():
        pool = torch.nonzero(labels == c).flatten()
        need = int((wanted == c).sum())
        if need > len(pool):
            raise UserError(f"The floor needs {need} real training clips of digit {c}, and there are {len(pool)}. "
                            f"Fix: evaluate at most {len(labels)} clips.")
        picks.append(pool[torch.randperm(len(pool), generator=g)[:need]])
    return torch.cat(picks)


def evaluate_clips(clips, evaluator: AudioEvaluator, *, labels=None, sample_rate: int | None = None, seed: int = 0,
                   k: int = 5, batch_size: int = 500, progress: bool = False, floor: bool = True) -> dict:
    """Every audio metric for a set of clips, (N, L) float in [-1, 1] at `sample_rate` (default: the evaluator's),
    against the real test clips; labels: the digit asked for per clip, or None. With `floor`, also
    {"floor": {"metrics", "details"}}: the same numbers for the real test clips (see the module's docstring)."""
    feats, digit, speaker = evaluator.extract(clips, sample_rate, batch_size, progress, "features of the clips")
    test = clip_reference(evaluator, "test", progress, batch_size)
    train = clip_reference(evaluator, "train", progress, batch_size)
    threshold = memorization_threshold(test.features, train.features)
    out = _named(score_features(feats, digit, speaker, test.features, train.features, threshold, labels, seed, k),
                 evaluator)
    if floor:
        if len(feats) > len(train):
            raise UserError(f"The real floor needs as many training clips as clips scored, and {evaluator.dataset} "
                            f"has {len(train)}. Fix: evaluate at most {len(train)} clips.")
        wanted = None if labels is None else np.asarray(labels).reshape(-1)
        pick = stratified_subset(train.labels, wanted, len(feats), seed)
        real = score_features(test.features, test.digit_logits, test.speaker_logits, train.features[pick],
                              train.features, threshold, None if labels is None else test.labels, seed, k)
        real["details"]["reference"] = f"{len(pick)} real training clips (the digits asked of the model)"
        out["floor"] = _named(real, evaluator)
    return out


@contextlib.contextmanager
def _status(enabled: bool, text: str):
    if not enabled:
        yield
        return
    from rich.console import Console

    with Console(stderr=True).status(text):
        yield


def audio_report(model, n: int | None, reference: str, data_dir, seed: int, batch_size: int, k: int, device,
                 evaluator_root, progress: bool, sample_options: dict) -> dict | None:
    """`genforge eval` of an audio run (runner.evaluate_run's audio branch): n clips (default 300, every digit in
    turn for conditional runs) generated with `seed` and scored with their real floor. None on helper processes."""
    t0 = time.perf_counter()
    n = DEFAULT_N if n is None else n
    if reference != "test":
        raise UserError(f"Audio runs are compared with the real test clips; --reference {reference} is for image runs.")
    if n < max(10, 2 * k + 1):
        raise UserError(f"n={n} clips are too few to measure anything; use at least {max(10, 2 * k + 1)} "
                        f"(the default {DEFAULT_N} matches the real test clips).")
    if int(os.environ.get("RANK", "0")) != 0:  # under `accelerate launch`: the main process does it all
        return None
    dataset = model.meta["data"]["dataset"]
    if dataset not in ("fsdd",):
        what = "a folder of audio" if str(dataset).startswith("folder:") else f"'{dataset}'"
        raise UserError(f"No audio evaluator for {what}: genforge's audio metrics need a classifier trained on the "
                        "same data, and it has one for fsdd (spoken digits).")
    evaluator = load_audio_evaluator(dataset, data_dir, root=evaluator_root, device=device, progress=progress)
    conditional = bool(getattr(model, "conditional", bool(model.classes)))
    if conditional and list(model.classes) != evaluator.classes:
        raise UserError(f"The model's classes {list(model.classes)[:5]}... differ from the {evaluator.dataset} "
                        f"evaluator's {evaluator.classes[:5]}...; conditional accuracy would be meaningless.")
    labels = [i % len(model.classes) for i in range(n)] if conditional else None
    t1 = time.perf_counter()
    with _status(progress, f"generating {n} clips"):
        clips = model.generate(n=n, labels=labels, seed=seed, **sample_options)
    t2 = time.perf_counter()
    result = evaluate_clips(clips, evaluator, labels=labels, sample_rate=model.sample_rate, seed=seed, k=k,
                            batch_size=batch_size, progress=progress)
    t3 = time.perf_counter()
    fl = result["floor"]["metrics"]
    return {
        "model": {"family": model.meta.get("family"), "name": model.meta.get("name"), "dataset": dataset,
                  "modality": "audio", "conditional": conditional, "step": model.meta.get("step"),
                  "weights": getattr(model, "weights_file", None), "sample_rate": model.sample_rate},
        "n": n,
        "seed": seed,
        "reference": reference,
        "evaluator": {"id": evaluator.id, "dataset": evaluator.dataset, "test_accuracy": evaluator.test_accuracy,
                      "feature_dim": evaluator.feature_dim,
                      "speaker_test_accuracy": evaluator.config.get("speaker_test_accuracy")},
        **result,
        "sample_options": sample_options,
        "summary": f"{n} clips{''.join(f', {k}={v}' for k, v in sample_options.items())} vs the "
                   f"{len(clip_reference(evaluator, 'test'))} real {evaluator.dataset} test clips; evaluator "
                   f"{evaluator.id} (test accuracy {evaluator.test_accuracy:.2%}), seed {seed}; real floor: "
                   f"fid {fl['fid']:.3g}, kid {fl['kid']:.3g}, is {fl['is']:.3g}",
        "seconds": {"setup": round(t1 - t0, 2), "generate": round(t2 - t1, 2), "evaluate": round(t3 - t2, 2)},
    }
