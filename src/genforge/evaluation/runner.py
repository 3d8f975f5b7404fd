"""`genforge eval`: the one home of run evaluation. It loads the run and dispatches on what it is:

- image models: samples against real data through an evaluator network (FID, KID, IS, PR/D&C, ...);
  and when the family has a likelihood (a VAE), the held-out NLL, ELBO and reconstruction error too
  (likelihood.py);
- text models: held-out loss, perplexity, bits per unit, Python parse rate (text.py);
- music models (`modality == "music"`): the text scores on the held-out pieces, and composed pieces' validity,
  musical statistics against the real floor and memorization (music_eval.py, music_metrics.py);
- audio models (`modality == "audio"`): generated clips through the spoken-digit evaluator, with the same
  numbers for real test clips as the floor (audio_metrics.py).
- video models (`modality == "video"`, Moving MNIST): generated clips through a frame CNN genforge trains on
  Moving MNIST (Fréchet distances per frame and per clip, identity, labels, motion physics; not FVD), with the
  same numbers for real test clips as the floor (video_metrics.py).
- with a task (`--task inpaint|vary|upscale`): how well an image run edits held-out test images, beside classical
  baselines (editing.py, edit_metrics.py); written to RUN_DIR/eval-<task>.json.

Everything lands in RUN_DIR/eval.json with the same top-level keys (metrics, details, seconds, ...).
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

from genforge.errors import UserError
from genforge.evaluation.evaluator import Evaluator, as_uint8_nhwc, default_device, evaluator_domain, load_evaluator
from genforge.evaluation.metrics import class_statistics, fid, inception_score, kid, memorization, prdc
from genforge.evaluation.reference import (Reference, memorization_threshold, read_reference, reference_features,
                                           store_reference)

REFERENCES = ("test", "train")
EVAL_FILE = "eval.json"

# name -> (what it is, which way is better); the CLI table and the docs use these.
METRIC_INFO: dict[str, tuple[str, str]] = {
    "fid": ("Fréchet distance of evaluator features to the real reference", "lower"),
    "kid": ("kernel (MMD) distance of evaluator features, mean over subsets", "lower"),
    "is": ("Inception Score from the evaluator's class logits (max = classes)", "higher"),
    "precision": ("share of samples inside the real data's k-NN manifold", "higher"),
    "recall": ("share of real images inside the samples' k-NN manifold", "higher"),
    "density": ("how many real k-NN balls hold each sample, / k (~1 for real data)", "higher"),
    "coverage": ("share of real k-NN balls that hold a sample", "higher"),
    "conditional_accuracy": ("share of samples classified as the class asked for", "higher"),
    "classes_hit": ("classes receiving at least a tenth of their even share", "higher"),
    "class_entropy": ("evenness of the predicted-class histogram (1 = even)", "higher"),
    "memorization": ("share of samples closer to a training image than 99% of real test images are", "lower"),
    "speaker_entropy": ("evenness of the predicted-speaker histogram of clips (1 = every voice equally)", "higher"),
    "speakers_hit": ("speakers receiving at least a tenth of their even share of clips", "higher"),
    "nll_nats": ("test negative log-likelihood per image, importance-sampled (k in details)", "lower"),
    "nll_bpd": ("test negative log-likelihood, bits per dimension, importance-sampled", "lower"),
    "neg_elbo_nats": ("test negative ELBO per image: rec + kl (an upper bound on nll)", "lower"),
    "neg_elbo_bpd": ("test negative ELBO, bits per dimension", "lower"),
    "rec_nats": ("ELBO's reconstruction term, -E_q log p(x|z)", "lower"),
    "rec_bpd": ("ELBO's reconstruction term, bits per dimension", "lower"),
    "kl_nats": ("ELBO's KL(q(z|x) || p(z)): information kept in z", "-"),
    "kl_bpd": ("ELBO's KL term, bits per dimension", "-"),
    "reconstruction_mse": ("mean squared error of test images and their reconstructions, pixels in [0, 1]", "lower"),
    "val_loss": ("held-out next-token cross-entropy (nats)", "lower"),
    "perplexity": ("exp(val_loss)", "lower"),
    "bits_per_char": ("held-out bits per character", "lower"),
    "bits_per_byte": ("held-out bits per UTF-8 byte", "lower"),
    "python_parse_rate": ("share of generated Python snippets that parse", "higher"),
    "bits_per_event": ("held-out bits per note-event word (music as events)", "lower"),
    "validity": ("music: share of composed pieces that end, parse and whose bars fit the metre", "higher"),
    "validity_real_test": ("music: the same share for real held-out pieces (the ceiling a model can meet)", "higher"),
    "complete": ("music: share of composed pieces that ended within the token limit", "higher"),
    "overlap_mean": ("music: mean MGEval overlap area of 6 musical statistics with the held-out pieces", "higher"),
    "overlap_floor_mean": ("music: the same for real training pieces (the floor a model is measured against)", "higher"),
    "overlap_vs_floor": ("music: overlap_mean / overlap_floor_mean (1 = as close as real music)", "higher"),
    "copied_phrases": ("music: share of composed pieces with a 16-note run copied from training (any key)", "lower"),
    "copied_phrases_real_test": ("music: the same share for real held-out pieces (folk tunes share phrases)", "-"),
    "frame_fd": ("Fréchet distance of frame features to real test clips' frames (Moving MNIST; not FVD)", "lower"),
    "clip_fd": ("Fréchet distance of clip features (frame features' mean, std, mean step; standardised)", "lower"),
    "identity_consistency": ("share of a clip's frames showing its majority digit(s), mean over clips", "higher"),
    "label_accuracy": ("share of clips whose majority digit(s) is the label asked for", "higher"),
    "mean_speed": ("mean digit displacement per frame, canvas px (compare with the real floor)", "-"),
    "speed_jitter": ("std of |dx|, |dy| between bounces, px/frame (real: the evaluator's noise)", "lower"),
    "off_wall_reflections": ("velocity reversals away from the walls, per clip", "lower"),
    "frozen_clips": ("share of clips whose digit moves < 0.5 px/frame on average", "lower"),
    "teleports": ("jumps faster than the data's top speed (+ tolerance), per clip", "lower"),
}


def _check_n(n: int, k: int) -> None:
    if n < max(10, 2 * k + 1):
        raise UserError(f"n={n} samples are too few to measure anything; use at least {max(10, 2 * k + 1)} "
                        "(10,000 for figures comparable with published FIDs).")


def _check_reference(reference: str) -> None:
    if reference not in REFERENCES:
        raise UserError(f"Unknown reference '{reference}'. Fix: use 'test' (held-out real images) or 'train'.")


def _inception_reference(inception, evaluator: Evaluator, split: str, progress: bool) -> Reference:
    directory = evaluator.directory.parent / inception.id / evaluator.dataset
    data = read_reference(directory / f"features-{split}.safetensors", inception.weights_sha256)
    if data is None:
        from genforge.data import load_image_dataset

        ds = load_image_dataset(evaluator.dataset, evaluator.data_dir, split)
        feats, logits = inception.extract(ds.images, progress=progress, description=f"inception features of {split}")
        data = {"features": feats, "logits": logits, "labels": ds.labels}
        with contextlib.suppress(OSError):
            directory.mkdir(parents=True, exist_ok=True)
        store_reference(directory, split, feats, logits, ds.labels, inception.weights_sha256)
    return Reference(split, data["features"], data["logits"], data["labels"])


def evaluate_images(images, evaluator: Evaluator, *, labels=None, reference: str = "test", train_split: str = "train",
                    seed: int = 0, k: int = 5, batch_size: int = 500, progress: bool = False,
                    inception=None) -> dict:
    """Every metric for a set of images: {"metrics": {...}, "details": {...}[, "inception": {...}]}.

    images: uint8 (N, H, W, C) or float (N, C, H, W) in [-1, 1]. labels: the class asked for per
    image (conditional models) or None. reference: real split for FID/KID/precision/recall. train_split:
    the split whose images the model was trained on (memorization compares against it). The seed
    fixes the real subset for precision/recall and the KID / IS subsets, so results repeat exactly.
    """
    _check_reference(reference)
    images = as_uint8_nhwc(images).cpu()
    _check_n(len(images), k)
    fake_f, fake_l = evaluator.extract(images, batch_size, progress, "features of samples")
    ref = reference_features(evaluator, reference, progress, batch_size)
    train = reference_features(evaluator, train_split, progress, batch_size)
    threshold = memorization_threshold(evaluator, train_split, progress)

    n = len(fake_f)
    g = torch.Generator().manual_seed(seed)
    real_sub = ref.features if n >= len(ref) else ref.features[torch.randperm(len(ref), generator=g)[:n]]
    requested = torch.as_tensor(np.asarray(labels), dtype=torch.long).reshape(-1) if labels is not None else None
    if requested is not None and len(requested) != n:
        raise UserError(f"Got {len(requested)} labels for {n} images: give one requested class per image.")
    kid_mean, kid_std = kid(ref.features, fake_f, seed=seed)
    is_mean, is_std = inception_score(fake_l, seed=seed)
    classes = class_statistics(fake_l, requested)
    mem = memorization(fake_f, train.features, threshold)
    metrics = {"fid": fid(ref.features, fake_f), "kid": kid_mean, "is": is_mean, **prdc(real_sub, fake_f, k)}
    if requested is not None:
        metrics["conditional_accuracy"] = classes["conditional_accuracy"]
    metrics.update(classes_hit=classes["classes_hit"], class_entropy=classes["class_entropy"],
                   memorization=mem["memorization"])
    out = {
        "metrics": metrics,
        "details": {
            "kid_std": kid_std, "kid_subset_size": min(1000, n, len(ref)), "is_std": is_std, "is_splits": 10,
            "k": k, "prdc_real_n": len(real_sub), "reference_n": len(ref),
            "class_counts": dict(zip(evaluator.classes, classes["class_counts"])),
            "memorization_threshold": threshold, "memorization_train_split": train_split, "train_n": len(train),
            "nearest_train_median": mem["nearest_train_median"],
        },
    }
    if inception is not None:
        inc_f, inc_l = inception.extract(images, progress=progress, description="inception features of samples")
        inc_ref = _inception_reference(inception, evaluator, reference, progress)
        inc_kid, inc_kid_std = kid(inc_ref.features, inc_f, seed=seed)
        inc_is, inc_is_std = inception_score(inc_l, seed=seed)
        out["inception"] = {"id": inception.id, "weights_sha256": inception.weights_sha256,
                            "fid": fid(inc_ref.features, inc_f), "kid": inc_kid, "kid_std": inc_kid_std,
                            "is": inc_is, "is_std": inc_is_std}
    return out


@contextlib.contextmanager
def _status(enabled: bool, text: str):
    if not enabled:
        yield
        return
    from rich.console import Console

    with Console(stderr=True).status(text):
        yield


def evaluate_run(run_dir: str | Path, n: int | None = None, reference: str = "test", data_dir: str | Path | None = None,
                 seed: int = 0, batch_size: int = 500, k: int = 5, device: str | torch.device | None = None,
                 inception_weights: str | Path | None = None, evaluator_root: str | Path | None = None,
                 select: str | None = None, progress: bool = False, write: bool = True,
                 likelihood_k: int = 100, likelihood_n: int | None = 1000, sample_options: dict | None = None,
                 task: str | None = None, edit: dict | None = None) -> dict:
    """Evaluate a run directory and write `eval.json` there; returns the report.

    Image runs: n samples (default 10,000, seeded) against real data; the evaluator for the run's dataset is
    trained on first use; conditional models are asked for every class in turn (label i % classes).
    Families with a likelihood also get the test NLL from `likelihood_k` importance samples on the first
    `likelihood_n` test images (None: all), the ELBO's terms and the reconstruction error.
    `sample_options`: the family's generation options for the samples (e.g. {"temperature": 0.5} for a VAE).
    Text runs: held-out loss etc.; n is the number of Python snippets for python_parse_rate (default 50).
    Audio runs: n clips (default 300; conditional runs every digit in turn) against the real test clips, and the
    real floor (report["floor"]); see audio_metrics.py.
    Video runs (Moving MNIST): n clips (default 256; conditional runs every class in turn) against real test clips,
    and the real floor (report["floor"]); see video_metrics.py.
    Under `accelerate launch` the image samples are split over the processes (the same images as one process
    makes); the main process scores them and returns the report, the others return None.
    select: "best", "last" or None, as for `genforge.load` (None: the best in-training weights when kept).
    task: "inpaint", "vary" or "upscale": how well the run edits n test images (default 1000) beside classical
    baselines instead (editing.py; `sample_options` are then the edit's options, `edit` the rest of
    `evaluate_edits`' arguments: strengths, true_labels, grid); writes RUN_DIR/eval-<task>.json.
    """
    from genforge.artifacts import TextGenerator, load

    if task is not None:
        from genforge.evaluation.editing import evaluate_edits

        if inception_weights is not None:
            raise UserError("--inception-weights is for sample evaluation; the editing evaluation (--task) uses the "
                            "dataset's evaluator.")
        return evaluate_edits(run_dir, task, n=n, data_dir=data_dir, seed=seed, batch_size=batch_size, device=device,
                              select=select, evaluator_root=evaluator_root, options=sample_options, reference=reference,
                              progress=progress, write=write, **(edit or {}))

    t0 = time.perf_counter()
    run_dir = Path(run_dir)
    dev = default_device(device)
    # fp32: a score must not depend on which precision this machine happens to generate fastest in
    model = load(run_dir, dev, select=select, precision="no")
    if getattr(model, "modality", None) == "video":  # before the image branch, as audio
        from genforge.evaluation.video_metrics import video_report

        if inception_weights is not None:
            raise UserError("--inception-weights is for image runs; video runs are scored by a Moving-MNIST evaluator.")
        report = video_report(model, n, reference, data_dir, seed, batch_size, k, dev, evaluator_root, progress,
                              sample_options or {})
        if report is None:  # a helper process under `accelerate launch`
            return None
    elif getattr(model, "modality", None) == "audio":  # before the image branch: an audio generator is an image one too
        from genforge.evaluation.audio_metrics import audio_report

        if inception_weights is not None:
            raise UserError("--inception-weights is for image runs; audio runs are scored by the spoken-digit evaluator.")
        report = audio_report(model, n, reference, data_dir, seed, batch_size, k, dev, evaluator_root, progress,
                              sample_options or {})
        if report is None:  # a helper process under `accelerate launch`
            return None
    elif getattr(model, "modality", None) == "music":  # before the text branch: a music model is a text one too
        from genforge.evaluation.music_eval import music_run_report

        report = music_run_report(model, data_dir, n, seed, progress)
    elif isinstance(model, TextGenerator):
        report = _text_report(model, data_dir, n, seed)
    else:
        report = _image_report(model, 10_000 if n is None else n, reference, data_dir, seed, batch_size, k, dev,
                               inception_weights, evaluator_root, progress, sample_options or {})
        if report is None:  # a helper process of a distributed evaluation
            return None
        from genforge.evaluation.likelihood import has_likelihood, likelihood_metrics

        if has_likelihood(model):
            t = time.perf_counter()
            metrics, details = likelihood_metrics(model, data_dir, likelihood_k, likelihood_n, seed, progress=progress)
            report["metrics"].update(metrics)
            report["details"].update(details)
            report["seconds"]["likelihood"] = round(time.perf_counter() - t, 2)
            report["summary"] += f"; test likelihood from k={likelihood_k} importance samples of {details['likelihood_n']} images"
    report = {"run_dir": str(run_dir), **report}
    report["seconds"]["total"] = round(time.perf_counter() - t0, 2)
    report["created"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    if write:
        path = run_dir / EVAL_FILE
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps(report, indent=2) + "\n")
        os.replace(tmp, path)
    return report


def _text_report(model, data_dir, n: int | None, seed: int) -> dict:
    from genforge.evaluation.text import SNIPPET_PROMPT, text_metrics

    t = time.perf_counter()
    metrics = text_metrics(model, data_dir, n_snippets=n, seed=seed)
    snippets = (f"; {metrics['python_snippets']} snippets from {SNIPPET_PROMPT!r}, seed {seed}"
                if "python_parse_rate" in metrics else "")
    return {
        "model": {"family": model.meta.get("family"), "name": model.meta.get("name"),
                  "dataset": model.meta["data"]["dataset"], "step": model.meta.get("step"), "weights": model.weights_file},
        "seed": seed,
        "metrics": metrics,
        "details": {},
        "summary": f"held-out text of {model.meta['data']['dataset']}{snippets}",
        "seconds": {"evaluate": round(time.perf_counter() - t, 2)},
    }


def _image_report(model, n, reference, data_dir, seed, batch_size, k, dev, inception_weights, evaluator_root,
                  progress, sample_options: dict) -> dict:
    t0 = time.perf_counter()
    _check_reference(reference)
    _check_n(n, k)
    sample_options = model._options(sample_options)  # an unknown option fails before any work
    labels = [i % len(model.classes) for i in range(n)] if model.conditional else None
    if int(os.environ.get("RANK", "0")) != 0:  # under `accelerate launch`: only help generate; rank 0 scores
        model.generate_across_processes(n, seed=seed, labels=labels, batch_size=batch_size, **sample_options)
        return None
    dataset = model.meta["data"]["dataset"]
    _, train_split = evaluator_domain(dataset)  # fails fast, before any work, for datasets without an evaluator
    inception = None
    if inception_weights is not None:
        from genforge.evaluation.features import InceptionExtractor

        inception = InceptionExtractor(inception_weights, dev)
    evaluator = load_evaluator(dataset, data_dir, root=evaluator_root, device=dev, progress=progress)
    if model.conditional and list(model.classes) != evaluator.classes:
        raise UserError(f"The model's classes {model.classes[:5]}... differ from the {evaluator.dataset} "
                        f"evaluator's {evaluator.classes[:5]}...; conditional accuracy would be meaningless.")
    t1 = time.perf_counter()
    with _status(progress, f"generating {n} samples"):
        images = model.generate_across_processes(n, seed=seed, labels=labels, batch_size=batch_size, **sample_options)
    t2 = time.perf_counter()
    result = evaluate_images(images, evaluator, labels=labels, reference=reference, train_split=train_split,
                             seed=seed, k=k, batch_size=batch_size, progress=progress, inception=inception)
    t3 = time.perf_counter()
    return {
        "model": {"family": model.meta.get("family"), "name": model.meta.get("name"), "dataset": dataset,
                  "conditional": model.conditional, "step": model.meta.get("step"), "weights": model.weights_file},
        "n": n,
        "seed": seed,
        "reference": reference,
        "evaluator": {"id": evaluator.id, "dataset": evaluator.dataset, "test_accuracy": evaluator.test_accuracy,
                      "feature_dim": evaluator.feature_dim},
        **result,
        "sample_options": sample_options,
        "summary": f"{n} samples{''.join(f', {k}={v}' for k, v in sample_options.items())} vs real "
                   f"{evaluator.dataset} {reference} split; evaluator {evaluator.id} "
                   f"(test accuracy {evaluator.test_accuracy:.2%}), seed {seed}",
        "seconds": {"setup": round(t1 - t0, 2), "generate": round(t2 - t1, 2), "evaluate": round(t3 - t2, 2)},
    }
