"""`genforge eval RUN --task inpaint|vary|upscale`: how well a run edits held-out images, beside classical baselines.

The inputs are n images of the run's dataset's test split (a seeded draw without replacement; mnist-mini's test
split is the images it trains on, which the report says). Every figure is computed for the model and for baselines
on the same images (edit_metrics.py has the masks, the metric definitions and the baselines):

- inpaint: three fixed masks, the centre square (half the side), the lower half and random strokes (25-35% of the
  pixels, seeded per image). Model vs OpenCV's Telea (radius 3) and the input with its hole filled with its own mean
  (the no-model floor): PSNR and SSIM over the whole image and over the masked pixels, FID and KID of the completed
  set against the real reference, and the evaluator's accuracy on the completed images against their true labels.
  The known pixels come back exactly from all three, so their FIDs differ only through the masked region.
- vary: for each strength, PSNR/SSIM to the input, FID/KID of the variations and the accuracy that keeps the class;
  the unedited input is the `real` row.
- upscale (a super-resolution run): the input is the test image area-downsampled to the model's low_res (as in
  training). Model vs Pillow's bicubic and nearest upscaling: PSNR/SSIM to the truth, FID/KID, accuracy, and
  consistency = PSNR of the output area-downsampled against the low-resolution input.

`real` is the true images' own FID/KID/accuracy (the ceiling). FID and KID use the dataset's evaluator features
against its reference split (test by default), as `genforge eval` does for samples; the inputs are part of that
split, so every FID here, the ceiling's included, is a little lower than against unseen images would be.

Each image's edit gets its own seed (seed * 1,000,003 + its index in the test split) and the jobs are rendered in
batches (`batch_size`): results do not depend on the batch size. The invisible mark is off: the metrics measure the
model, not the mark. Reports go to RUN_DIR/eval-<task>.json.
"""

from __future__ import annotations

import datetime
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

import genforge.edits as edits
from genforge.errors import UserError
from genforge.evaluation import edit_metrics as em
from genforge.evaluation.evaluator import default_device, evaluator_domain, load_evaluator, progress_bar
from genforge.evaluation.metrics import fid, kid
from genforge.evaluation.reference import reference_features

DEFAULT_N = 1000
DEFAULT_STRENGTHS = (0.25, 0.5, 0.75, 1.0)
GRID_EXAMPLES = 8
MIN_N = 10
BASELINES = {"inpaint": "Telea and a mean fill", "vary": "the unedited input", "upscale": "bicubic and nearest"}

# name -> (what it is, which way is better); "better" of psnr/ssim in vary is "-" (closeness to the input is a choice)
EDIT_METRIC_INFO: dict[str, tuple[str, str]] = {
    "psnr": ("PSNR to the true image (vary: the input), dB, mean over images; identical = 100", "higher"),
    "psnr_masked": ("PSNR over the masked pixels only, dB", "higher"),
    "ssim": ("SSIM to the true image (vary: the input), torchmetrics, 11x11 Gaussian window", "higher"),
    "ssim_masked": ("torchmetrics' SSIM map averaged over the masked pixels", "higher"),
    "consistency_psnr": ("PSNR of the output area-downsampled against the low-resolution input, dB", "higher"),
    "fid": ("Fréchet distance of evaluator features of the edited set to the real reference", "lower"),
    "kid": ("kernel distance of evaluator features to the real reference", "lower"),
    "accuracy": ("share the evaluator classifies as the image's true label", "higher"),
}


def report_file(task: str) -> str:
    return f"eval-{task}.json"


def image_seed(seed: int, index: int) -> int:
    return (int(seed) * 1_000_003 + int(index)) % 2**63


class _Scorer:
    """Scores sets of images against the real reference and the true labels (features through the evaluator)."""

    def __init__(self, evaluator, reference: str, labels, seed: int, batch_size: int, progress: bool):
        self.evaluator, self.seed, self.batch_size = evaluator, seed, batch_size
        self.ref = reference_features(evaluator, reference, progress, batch_size).features
        self.labels = torch.as_tensor(labels) if labels is not None else None

    def __call__(self, images: np.ndarray, truth=None, mask=None, low=None, low_res: int = 0) -> dict:
        m: dict[str, float | None] = {}
        if truth is not None:
            m["psnr"], m["ssim"] = em.mean_of(em.psnr(images, truth)), em.mean_of(em.ssim(images, truth))
            if mask is not None:
                m["psnr_masked"] = em.mean_of(em.psnr(images, truth, mask))
                m["ssim_masked"] = em.mean_of(em.ssim(images, truth, mask))
        if low is not None:
            m["consistency_psnr"] = em.mean_of(em.psnr(edits.area_downsample(images, low_res), low))
        feats, logits = self.evaluator.extract(images, self.batch_size)
        m["fid"] = fid(self.ref, feats)
        m["kid"] = kid(self.ref, feats, seed=self.seed)[0]
        if self.labels is not None:
            m["accuracy"] = float((logits.argmax(1) == self.labels).float().mean())
        return m


class _Editor:
    """The model's edits of the inputs: one job per image with its own seed, rendered batch_size at a time."""

    def __init__(self, model, task: str, options: dict, indices, labels, seed: int, batch_size: int, advance):
        self.model, self.task, self.options, self.indices = model, task, options, indices
        self.labels, self.seed, self.batch_size, self.advance = labels, seed, batch_size, advance
        self.seconds = 0.0

    def __call__(self, inputs: np.ndarray, masks=None, what: str = "", **extra) -> np.ndarray:
        out = []
        t = time.perf_counter()
        for s in range(0, len(inputs), self.batch_size):
            rows = range(s, min(s + self.batch_size, len(inputs)))
            jobs = [self.model.edit_job(self.task, inputs[i], None if masks is None else masks[i], n=1,
                                        seed=image_seed(self.seed, self.indices[i]),
                                        labels=None if self.labels is None else [int(self.labels[i])],
                                        **self.options, **extra) for i in rows]
            step = lambda d, total: self.advance(0, f"{what} step {d}/{total}")  # noqa: E731
            out.extend(self.model.run(jobs, step))
            self.advance(len(jobs))
        self.seconds += time.perf_counter() - t
        return np.concatenate(out)


def _test_images(model, data_dir, n: int, seed: int):
    from genforge.data import load_image_dataset

    meta = model.meta["data"]
    try:
        ds = load_image_dataset(meta["dataset"], data_dir, "test", image_size=meta["height"], channels=meta["channels"])
    except UserError as e:
        raise UserError(f"Editing is evaluated on held-out images, and {meta['dataset']} has none: {e}") from None
    if n > len(ds.images):
        raise UserError(f"--n {n} is more than the {len(ds.images)} test images of {meta['dataset']}.")
    idx = np.sort(np.random.default_rng(seed).choice(len(ds.images), n, replace=False))
    labels = ds.labels[idx].numpy() if ds.labels is not None else None
    return idx, ds.images[idx].numpy(), labels, list(ds.classes)


def _checked_options(model, task: str, options: dict | None, strengths) -> tuple[dict, dict]:
    """(the options given, checked against the edit's; all of them with the run's defaults filled in)."""
    opts = {k: v for k, v in (options or {}).items() if v is not None}
    if task == "vary" and "strength" in opts:
        raise UserError("vary is evaluated at each of --strengths; give the strengths there, not as an option.")
    known = model.edit_options(task)  # raises the UserError that says why the run cannot do `task`
    unknown = [k for k in opts if k not in known]
    if unknown:
        raise UserError(f"{', '.join(unknown)}: not an option of {task} with this {model.meta.get('family')} model. "
                        f"Its options: {', '.join(k for k in known if k != 'strength') or 'none'}.")
    for s in strengths if task == "vary" else ():
        model.checked_edit_options(task, {**opts, "strength": s})  # each strength's range, before any work
    resolved = {k: v for k, v in model.checked_edit_options(task, opts).items() if k != "task"}
    if task == "vary":
        resolved.pop("strength", None)
    return opts, resolved


def _inpaint(edit, score, truth, idx, h, w, seed, examples):
    results, masks_info, grid = {}, {}, []
    for kind in em.MASK_KINDS:
        masks = em.masks_for(kind, idx, h, w, seed)
        frac = masks.mean(axis=(1, 2))
        masks_info[kind] = {"mean_fraction": float(frac.mean()), "min_fraction": float(frac.min()),
                            "max_fraction": float(frac.max())}
        t = time.perf_counter()
        outputs = {"mean_fill": em.mean_fill(truth, masks), "telea": em.telea(truth, masks)}
        masks_info[kind]["baseline_seconds"] = round(time.perf_counter() - t, 3)
        outputs["model"] = edit(truth, masks, what=kind)
        results[kind] = {name: score(outputs[name], truth=truth, mask=masks) for name in ("model", "telea", "mean_fill")}
        k = slice(0, examples)
        grid += [em.overlay(truth[k], masks[k]), em.rgb(outputs["mean_fill"][k]), em.rgb(outputs["telea"][k]),
                 em.rgb(outputs["model"][k]), em.rgb(truth[k])]
    rows = [f"{kind}: {row}" for kind in em.MASK_KINDS for row in ("mask", "mean_fill", "telea", "model", "truth")]
    return results, {"masks": masks_info, "telea_radius": em.TELEA_RADIUS}, grid, rows


def _vary(edit, score, truth, strengths, examples):
    results, grid = {}, [truth[:examples]]
    for s in strengths:
        out = edit(truth, what=f"strength {s}", strength=s)
        results[f"strength={s:g}"] = {"model": score(out, truth=truth)}
        grid.append(out[:examples])
    return results, {"strengths": list(strengths)}, grid, ["input", *(f"strength={s:g}" for s in strengths)]


def _upscale(edit, score, truth, low_res, examples):
    h, w = truth.shape[1:3]
    low = edits.area_downsample(truth, low_res)
    outputs = {"model": edit(low, what=f"{low_res}->{h}"), "bicubic": em.resize(low, h, w, "bicubic"),
               "nearest": em.resize(low, h, w, "nearest")}
    setting = f"{low_res}->{h}"
    results = {setting: {name: score(outputs[name], truth=truth, low=low, low_res=low_res)
                         for name in ("model", "bicubic", "nearest")}}
    k = slice(0, examples)
    grid = [outputs["nearest"][k], outputs["bicubic"][k], outputs["model"][k], truth[k]]
    return results, {"low_res": low_res, "downsampling": "area (block mean, rounded)"}, grid, \
        ["low-res input (nearest)", "bicubic", "model", "truth"]


def _write_grid(grid: list[np.ndarray], path, height: int) -> str:
    from genforge.visual import save_grid

    if any(g.shape[-1] == 3 for g in grid):
        grid = [em.rgb(g) for g in grid]
    save_grid(np.concatenate(grid), path, nrow=len(grid[0]), scale=max(1, 64 // height))
    return str(path)


def evaluate_edits(run_dir: str | Path, task: str, n: int | None = None, data_dir: str | Path | None = None,
                   seed: int = 0, batch_size: int = 200, device: str | torch.device | None = None,
                   select: str | None = None, evaluator_root: str | Path | None = None, options: dict | None = None,
                   strengths=DEFAULT_STRENGTHS, true_labels: bool = False, reference: str = "test",
                   grid: str | Path | None = None, progress: bool = False, write: bool = True, model=None) -> dict:
    """Evaluate a run's `task` edits of n (default 1000) test images beside the baselines; writes
    RUN_DIR/eval-<task>.json (unless write=False) and, with `grid`, a PNG of examples. `options`: the edit's options
    (e.g. {"steps": 10, "jump": 5}; the run's defaults otherwise). true_labels: give a class-conditional model each
    image's true class (without it a conditional diffusion model edits unconditionally). `model`: an already loaded
    generator of run_dir (else it is loaded in fp32)."""
    from genforge.artifacts import load

    t0 = time.perf_counter()
    if task not in edits.TASKS:
        raise UserError(f"Unknown task {task!r}: one of {', '.join(edits.TASKS)}.")
    if reference not in ("test", "train"):
        raise UserError(f"Unknown reference '{reference}'. Fix: use 'test' (held-out real images) or 'train'.")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise UserError("The editing evaluation runs in one process: run `genforge eval --task` without accelerate.")
    n = DEFAULT_N if n is None else int(n)
    if n < MIN_N:
        raise UserError(f"n={n} images are too few for FID/KID; use at least {MIN_N} (1000 or more for figures).")
    if batch_size < 1:
        raise UserError("batch_size must be at least 1.")
    strengths = tuple(float(s) for s in strengths)
    if task == "vary" and not strengths:
        raise UserError("vary needs at least one strength.")
    run_dir = Path(run_dir)
    dev = default_device(device)
    if model is None:
        model = load(run_dir, dev, select=select, precision="no")
    if not callable(getattr(model, "edit_tasks", None)) or getattr(model, "modality", None) != "image":
        raise UserError(f"{run_dir} is not an image run: only image models edit (inpaint, vary, upscale).")
    family = model.meta.get("family", "?")
    edits.check_task(task, model.edit_tasks(), family)
    given, resolved = _checked_options(model, task, options, strengths)
    if model.conditional and not true_labels and family != "diffusion":
        raise UserError(f"This class-conditional {family} model needs each image's class to edit it: pass "
                        "--true-labels (true_labels=True) to give it the true class.")
    dataset = model.meta["data"]["dataset"]
    _, train_split = evaluator_domain(dataset)  # fails fast for datasets without an evaluator
    evaluator = load_evaluator(dataset, data_dir, root=evaluator_root, device=dev, progress=progress)
    idx, truth, labels, classes = _test_images(model, data_dir, n, seed)
    scored_labels = labels if labels is not None and classes == evaluator.classes else None
    score = _Scorer(evaluator, reference, scored_labels, seed, max(batch_size, 500), progress)
    model.use_mark_key(False)
    h, w, _ = model.image_shape
    examples = min(GRID_EXAMPLES, n)
    t1 = time.perf_counter()
    total = n * {"inpaint": len(em.MASK_KINDS), "vary": len(strengths), "upscale": 1}[task]
    with progress_bar(progress, f"{task} {n} test images", total) as advance:
        edit = _Editor(model, task, given, idx, labels if true_labels and model.conditional else None, seed,
                       batch_size, advance)
        if task == "inpaint":
            results, details, pictures, rows = _inpaint(edit, score, truth, idx, h, w, seed, examples)
        elif task == "vary":
            results, details, pictures, rows = _vary(edit, score, truth, strengths, examples)
        else:
            results, details, pictures, rows = _upscale(edit, score, truth, model.low_res, examples)
    real = score(truth)
    t2 = time.perf_counter()
    report = {
        "run_dir": str(run_dir),
        "task": task,
        "model": {"family": family, "name": model.meta.get("name"), "dataset": dataset,
                  "conditional": model.conditional, "step": model.meta.get("step"),
                  "weights": getattr(model, "weights_file", None)},
        "n": n,
        "seed": seed,
        "reference": reference,
        "evaluator": {"id": evaluator.id, "dataset": evaluator.dataset, "test_accuracy": evaluator.test_accuracy,
                      "feature_dim": evaluator.feature_dim},
        "data": {"dataset": dataset, "split": "test", "selection": f"{n} of the test split, drawn with seed {seed}",
                 "inputs_seen_in_training": train_split == "test", "labels": scored_labels is not None},
        "options": resolved,
        "labels_given_to_model": bool(true_labels and model.conditional),
        "results": results,
        "real": real,
        "details": {**details, "psnr_cap_db": em.PSNR_CAP, "mark": "off",
                    "model_seconds_per_image": round(edit.seconds / total, 4),
                    "ssim": "torchmetrics, Gaussian 11x11 sigma 1.5; masked: its full map averaged over the mask",
                    "psnr_masked": "MSE over the masked pixels (all channels) only"},
        "summary": (f"{task} of {n} {dataset} test images"
                    f"{''.join(f', {k}={v}' for k, v in resolved.items())} beside {BASELINES[task]}; evaluator {evaluator.id} "
                    f"(test accuracy {evaluator.test_accuracy:.2%}), seed {seed}"),
        "seconds": {"setup": round(t1 - t0, 2), "edit_and_score": round(t2 - t1, 2)},
    }
    if grid is not None:
        report["grid"] = {"path": _write_grid(pictures, grid, h), "rows": rows, "columns": examples}
    report["seconds"]["total"] = round(time.perf_counter() - t0, 2)
    report["created"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    if write:
        path = run_dir / report_file(task)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps(report, indent=2) + "\n")
        os.replace(tmp, path)
    return report
