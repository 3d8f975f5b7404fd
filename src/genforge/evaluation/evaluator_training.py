"""Training an image evaluator: a fixed seed, the dataset's recipe, stored atomically in the evaluator cache."""

from __future__ import annotations

import copy
import json
import math
import os
import shutil
import time
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

import genforge.precision as prec
from genforge.data import Augment, augment_batch, load_image_dataset, resolve_data_dir, to_model_range
from genforge.errors import UserError
from genforge.evaluation.evaluator_cache import (CONFIG_FILE, ROOT_ENV, VERSION, WEIGHTS_FILE, Evaluator, _open,
                                                 default_device, evaluator_name, evaluators_root, progress_bar)
from genforge.evaluation.evaluator_net import RECIPES, EvaluatorNet, Recipe, _FusedEvaluator, evaluator_domain
from genforge.evaluation.feature_cache import store_reference  # the test features are a free reference cache
from genforge.files import sha256_file


def _training_precision(net: nn.Module, x: torch.Tensor, y: torch.Tensor, lr: float) -> str:
    """fp32 or bf16 for the evaluator's training, by timing its step in both (genforge.precision): the
    faster depends on the processor, not on a flag. The probe trains a copy and restores the RNG."""
    dev = x.device
    with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
        probe = copy.deepcopy(net)
        opt = torch.optim.AdamW(probe.parameters(), lr=lr)

        def step_in(dtype):
            def step():
                with prec.autocast(dev.type, dtype):
                    loss = F.cross_entropy(probe(x).float(), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                float(loss)
            return step

        sig = prec.signature([list(p.shape) for p in net.parameters()], list(x.shape))
        verdict = prec.decide("auto", dev, "train evaluator", sig,
                              lambda names: {n: step_in(prec.autocast_dtype(n)) for n in names})
    return verdict.used


def _optimizer(recipe: Recipe, params) -> torch.optim.Optimizer:
    if recipe.optimizer == "sgd":
        return torch.optim.SGD(params, lr=recipe.max_lr, momentum=0.9, nesterov=True, weight_decay=recipe.weight_decay)
    return torch.optim.AdamW(params, lr=recipe.max_lr, weight_decay=recipe.weight_decay)


def train_evaluator(dataset: str, data_dir: str | Path | None = None, *, root: str | Path | None = None,
                    epochs: float | None = None, max_steps: int | None = None, train_subset: int | None = None,
                    seed: int = 0, device: str | torch.device | None = None, progress: bool = False,
                    force: bool = False) -> Evaluator:
    """Train `dataset`'s evaluator with a fixed seed and store it in the cache; returns it loaded.

    epochs / max_steps / train_subset shorten training (tests, quick checks); the stored config says
    what was done and the test accuracy reached, and the weights hash makes the id differ.
    The folder is written under a temporary name and renamed, so a killed run leaves no half evaluator.
    """
    domain, _ = evaluator_domain(dataset)
    recipe = RECIPES[domain]
    if (epochs is not None and not epochs > 0) or (max_steps is not None and max_steps < 1):
        raise UserError("epochs must be > 0 and max_steps >= 1.")
    data_dir = resolve_data_dir(data_dir)
    root_dir = evaluators_root(data_dir, root)
    target = root_dir / evaluator_name(domain)
    dev = default_device(device)
    if target.exists() and not force:
        return _open(target, domain, data_dir, dev)
    train_set = load_image_dataset(domain, data_dir, "train")
    test_set = load_image_dataset(domain, data_dir, "test")
    try:
        root_dir.mkdir(parents=True, exist_ok=True)
        tmp = root_dir / f".tmp-{evaluator_name(domain)}-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    except OSError as e:
        raise UserError(f"Cannot write the evaluator cache in {root_dir} ({e.strerror}). "
                        f"Fix: set ${ROOT_ENV} to a writable folder.") from None

    images, labels = train_set.images, train_set.labels
    if train_subset is not None:  # a seeded random subset: a dataset stored class by class has one class up front
        keep = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))[:train_subset]
        images, labels = images[keep], labels[keep]
    n, h, w, c = images.shape
    if n < recipe.batch_size:
        raise UserError(f"train_subset={n} is smaller than one batch ({recipe.batch_size} images).")
    torch.manual_seed(seed)
    net = EvaluatorNet(c, h, w, len(train_set.classes), recipe.widths, recipe.convs_per_stage, recipe.feature_dim,
                       recipe.stem, recipe.residual).to(dev).to(memory_format=torch.channels_last)
    steps_per_epoch = n // recipe.batch_size
    total = max_steps if max_steps is not None else math.ceil((epochs or recipe.epochs) * steps_per_epoch)
    total = max(int(total), 1)
    opt = _optimizer(recipe, net.parameters())
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=recipe.max_lr, total_steps=total, pct_start=recipe.warmup,
                                                anneal_strategy=recipe.anneal)
    augment = Augment(crop_padding=recipe.crop_padding, hflip=recipe.hflip)
    x_all, y_all = images.to(dev), labels.to(dev)
    first = torch.arange(recipe.batch_size, device=dev)
    bf16 = _training_precision(net, to_model_range(x_all[first]).contiguous(memory_format=torch.channels_last),
                               y_all[first], recipe.max_lr) == "bf16"
    t0 = time.perf_counter()
    perm, epoch = None, -1
    with progress_bar(progress, f"training the {domain} evaluator", total) as advance:
        for step in range(total):
            e, pos = divmod(step, steps_per_epoch)
            if e != epoch:
                epoch = e
                perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + e)).to(dev)
            idx = perm[pos * recipe.batch_size:(pos + 1) * recipe.batch_size]
            x = to_model_range(x_all[idx]).contiguous(memory_format=torch.channels_last)
            if augment.enabled():
                x = augment_batch(x, augment, torch.Generator().manual_seed(seed * 7_919 + step))
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
                logits = net(x)
            loss = F.cross_entropy(logits.float(), y_all[idx], label_smoothing=recipe.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            advance(1, f"loss {loss.item():.3f}" if step % 20 == 0 else None)
    seconds = time.perf_counter() - t0

    net.eval()
    save_file({k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}, str(tmp / WEIGHTS_FILE))
    config = {
        "genforge_evaluator": 1,
        "version": VERSION,
        "dataset": domain,
        "classes": list(train_set.classes),
        "image_shape": [h, w, c],
        "arch": recipe.arch(),
        "training": {**asdict(recipe), "widths": list(recipe.widths), "residual": list(recipe.residual), "seed": seed,
                     "steps": total, "epochs_done": round(total * recipe.batch_size / n, 3), "train_images": n,
                     "precision": "bf16" if bf16 else "fp32", "device": str(dev), "seconds": round(seconds, 1),
                     "torch": torch.__version__},
        "weights_sha256": sha256_file(tmp / WEIGHTS_FILE),
    }
    evaluator = Evaluator(domain, tmp, {**config, "test_accuracy": 0.0},
                          _FusedEvaluator(net).to(memory_format=torch.channels_last).requires_grad_(False), dev, data_dir)
    feats, logits = evaluator.extract(test_set.images)
    config["test_accuracy"] = round(float((logits.argmax(1) == test_set.labels).float().mean()), 5)
    (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
    store_reference(tmp, "test", feats, logits, test_set.labels, config["weights_sha256"])
    if target.exists():  # force: swap the old one out only once the new one is complete
        old = root_dir / f".old-{evaluator_name(domain)}-{os.getpid()}"
        os.replace(target, old)
        shutil.rmtree(old, ignore_errors=True)
    try:
        os.replace(tmp, target)
    except OSError:  # another process finished first: use its evaluator
        shutil.rmtree(tmp, ignore_errors=True)
    return _open(target, domain, data_dir, dev)
